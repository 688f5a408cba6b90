"""The command line, through subprocesses (as a user runs it) and in-process for the details."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from sktt import TrainingTimePredictor
from sktt.cli import main
from sktt.datasets import load_demo
from sktt.exceptions import DivergenceError
from sktt.utils._files import load_model_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N, STEPS = 40, 30


def _run(*args, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-m", "sktt", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    demo = load_demo(N)
    paths = {"data": str(tmp / "data.npz"), "state_dict": str(tmp / "weights.pt"),
             "script": str(tmp / "script.pt"), "export": str(tmp / "program.pt2")}
    np.savez(paths["data"], X=demo.X.numpy(), y=demo.y.numpy())
    torch.save(demo.model.state_dict(), paths["state_dict"])
    torch.jit.save(torch.jit.script(demo.model), paths["script"])
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(demo.model, (demo.X[:2],), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, paths["export"])
    (tmp / "garbage.npz").write_bytes(b"this is not an archive")
    paths["garbage"] = str(tmp / "garbage.npz")
    np.savez(tmp / "objects.npz", X=np.array([{"a": 1}] * 3, dtype=object), y=np.arange(3))
    paths["objects"] = str(tmp / "objects.npz")
    np.savez(tmp / "keys.npz", inputs=demo.X.numpy(), labels=demo.y.numpy())
    paths["keys"] = str(tmp / "keys.npz")
    paths["demo"] = demo
    return paths


def test_help(capsys):
    out = _run("--help")
    assert out.returncode == 0
    for word in ("demo", "predict", "validate", "Exit codes"):
        assert word in out.stdout
    with pytest.raises(SystemExit) as exc:
        main(["predict", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "--model-class" in text and "--json" in text and "state_dict" in text


@pytest.mark.slow
def test_demo_default_runs_and_prints_a_table(capsys):
    # What `make demo` runs (in-process here; the subprocess path is tested below).
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "T(ε=0.01)" in out and "time(ε=0.03)" in out
    rows = [ln.split() for ln in out.splitlines() if " full " in ln]
    assert [r[:2] for r in rows] == [["0.01", "0"], ["0.01", "0.9"], ["0.05", "0"],
                                     ["0.05", "0.9"]]  # lr x momentum
    assert all(r[6] in ("s", "ms") for r in rows)  # "1.75 s": predicted seconds


def test_demo_real_json():
    out = _run("demo", "--real", "--json", "--n-samples", str(N), "--n-steps", str(STEPS),
               "--lr", "0.05", "--momentum", "0", "0.9")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["command"] == "demo" and doc["fit"]["n_samples"] == N
    assert len(doc["rows"]) == 2
    for row in doc["rows"]:
        assert len(row["predicted_steps"]) == len(row["real_steps"]) == 2
        assert all(0 <= t <= STEPS for t in row["predicted_steps"] + row["real_steps"])
        assert row["seconds_per_step"] > 0
        assert row["predicted_seconds"][0] == pytest.approx(
            row["predicted_steps"][0] * row["seconds_per_step"])
        assert all(e is None or e >= 0 for e in row["relative_error"])


def test_predict_torchscript_matches_the_api(files):
    out = _run("predict", files["script"], files["data"], "--json", "--n-steps", str(STEPS),
               "--lr", "0.05", "0.1", "--batch-size", "8", "full", "--threads", "1",
               "--no-trust")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["fit"] == {**doc["fit"], "n_samples": N, "n_outputs": 5, "n_params": 37957}
    assert [(r["lr"], r["batch_size"]) for r in doc["rows"]] == [
        (0.05, 8), (0.05, None), (0.1, 8), (0.1, None)]
    # The same model file loaded in-process gives the same predictions.
    demo = files["demo"]
    model = load_model_file(files["script"])
    ttp = TrainingTimePredictor(model, n_steps=STEPS, random_state=0, trust_check=False)
    ttp.fit(demo.X, demo.y)
    for row in doc["rows"]:
        try:
            expected = ttp.predict_time([0.01, 0.03], lr=row["lr"],
                                        batch_size=row["batch_size"]).tolist()
        except DivergenceError:  # past the stability edge, not trained by step T
            expected = [None, None]
        assert row["predicted_steps"] == expected
        assert row["diverged"] == (expected == [None, None])
        assert row["seconds_per_step"] > 0
    assert not all(row["diverged"] for row in doc["rows"])


def test_predict_state_dict_table(files, capsys):
    assert main(["predict", files["state_dict"], files["data"], "--model-class",
                 "sktt.datasets:DigitsConvNet", "--model-kwargs", '{"n_classes": 5}',
                 "--n-steps", str(STEPS), "--lr", "0.05", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "37,957 trainable parameters" in out
    assert "seconds per step measured here" in out


def test_bad_files_exit_2_with_a_clear_message(files):
    out = _run("predict", files["script"], files["garbage"])
    assert out.returncode == 2
    assert "not a .npz (zip) archive" in out.stderr and "Traceback" not in out.stderr


def test_in_process_inputs_errors(files, capsys):
    def code(*args):
        try:
            return main(list(args))
        except SystemExit as exc:  # argparse usage errors
            return exc.code

    assert code("predict", files["garbage"], files["data"]) == 2
    assert "is not a TorchScript archive" in capsys.readouterr().err
    assert code("predict", files["script"], files["objects"]) == 2
    assert "without pickles" in capsys.readouterr().err
    assert code("predict", files["script"], files["keys"]) == 2
    assert "--x-key" in capsys.readouterr().err
    assert code("predict", files["script"], os.path.join(ROOT, "missing.npz")) == 2
    assert "does not exist" in capsys.readouterr().err
    assert code("predict", files["state_dict"], files["data"], "--model-class", "nope:Net") == 2
    assert "cannot import 'nope'" in capsys.readouterr().err
    assert code("predict", files["state_dict"], files["data"], "--model-class",
                "sktt.datasets:DigitsConvNet", "--model-kwargs", '{"n_classes": 3}') == 2
    assert "does not fit" in capsys.readouterr().err
    assert code("predict", files["script"], files["data"], "--lr", "-1") == 2
    assert code("predict", files["script"], files["data"], "--batch-size", "500") == 2
    assert "larger than the 40 samples" in capsys.readouterr().err
    assert code("predict", files["script"], files["data"], "--loss", "mse") == 2
    assert code("predict", files["state_dict"], files["data"]) == 2
    assert "pass --model-class" in capsys.readouterr().err
    assert code() == 2  # no command: help and exit 2
    # a device torch does not know, or this machine lacks: named as such (it was reported as
    # an unreadable TorchScript archive)
    assert code("predict", files["script"], files["data"], "--device", "blah") == 2
    assert "argument --device: 'blah' is not a torch device" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert code("predict", files["script"], files["data"], "--device", "cuda") == 2
        assert "'cuda' is not a torch device usable here" in capsys.readouterr().err


def test_in_process_export_and_validate(files, capsys):
    assert main(["predict", files["export"], files["keys"], "--x-key", "inputs", "--y-key",
                 "labels", "--n-steps", str(STEPS), "--lr", "0.05", "--json",
                 "--no-seconds"]) == 0
    doc = json.loads(capsys.readouterr().out)
    demo = files["demo"]
    ttp = TrainingTimePredictor(demo.model, n_steps=STEPS, random_state=0,
                                trust_check=False).fit(demo.X, demo.y)
    assert doc["rows"][0]["predicted_steps"] == ttp.predict_time([0.01, 0.03], lr=0.05).tolist()
    assert doc["rows"][0]["predicted_seconds"] == [None, None]
    assert main(["validate", files["script"], files["data"], "--n-steps", "15", "--lr", "0.05",
                 "--batch-size", "8", "--seeds", "1", "2", "--eps", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "real" in out and "err" in out


def test_torchscript_wrapper_is_exact_and_mse(tmp_path, capsys, linear_problem):
    # A float64 model with a buffer: the wrapped TorchScript graph gives the same Θ.
    model, X, y = linear_problem
    path = str(tmp_path / "head.pt")
    torch.jit.save(torch.jit.script(model), path)
    wrapped = load_model_file(path)
    assert [n for n, _ in wrapped.named_parameters()] == [n for n, _ in model.named_parameters()]
    assert torch.equal(wrapped.proj, model.proj)
    a = TrainingTimePredictor(model, loss="mse", n_steps=10).fit(X, torch.eye(3)[y].double())
    b = TrainingTimePredictor(wrapped, loss="mse", n_steps=10).fit(X, torch.eye(3)[y].double())
    np.testing.assert_allclose(b.ntk_, a.ntk_, rtol=1e-12, atol=1e-12)
    data = str(tmp_path / "reg.npz")
    np.savez(data, X=X.numpy(), y=torch.eye(3)[y].numpy())
    assert main(["predict", path, data, "--loss", "mse", "--lr", "0.3", "--n-steps", "10",
                 "--eps", "0.001", "--json", "--no-seconds", "--no-trust"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["rows"][0]["predicted_steps"] == [int(a.predict_time(0.001, lr=0.3))]
    # cross-entropy with float targets is a clear usage error
    assert main(["predict", path, data, "--n-steps", "10", "--no-seconds"]) == 2
    assert "integer class labels" in capsys.readouterr().err


def test_keyword_inputs_from_several_arrays(tmp_path, capsys):
    """--x-key a,b passes the arrays as keyword inputs (a tokenizer's dict), dict output."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from keyword_model import KeywordNet

    torch.manual_seed(0)
    model = KeywordNet()
    ids = torch.randint(0, 20, (24, 7))
    mask = (torch.rand(24, 7) > 0.2).long()
    y = torch.randint(0, 3, (24,))
    np.savez(tmp_path / "tokens.npz", input_ids=ids.numpy(), attention_mask=mask.numpy(),
             y=y.numpy())
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    model_class = f"{os.path.dirname(os.path.abspath(__file__))}/keyword_model.py:KeywordNet"
    assert main(["predict", str(tmp_path / "weights.pt"), str(tmp_path / "tokens.npz"),
                 "--model-class", model_class, "--x-key", "input_ids,attention_mask",
                 "--n-steps", "20", "--lr", "0.5", "--no-seconds", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    ttp = TrainingTimePredictor(model, lr=0.5, n_steps=20, trust_check=False).fit(
        {"input_ids": ids, "attention_mask": mask}, y)
    expected = [int(t) for t in ttp.predict_time(doc["eps"])]
    assert doc["rows"][0]["predicted_steps"] == expected


def test_chance_crossings_are_marked(capsys):
    """An ε below the SGD noise of the predicted final loss: "~" before that T(ε), a
    footnote, and ``eps_flags`` in the JSON (what predict_time would warn of); GD rows and
    a larger ε are not marked."""
    args = ["demo", "--n-samples", "60", "--n-steps", "40", "--lr", "0.01", "--momentum", "0",
            "--batch-size", "10", "full", "--eps", "1e-5", "0.05", "--no-seconds", "--no-trust"]
    assert main(args + ["--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["eps_flags"] for r in rows] == [["eps_below_noise", "ok"], ["ok", "ok"]]
    assert main(args) == 0
    text = capsys.readouterr().out
    sgd, gd = (line.split() for line in text.splitlines() if line.startswith("0.01"))
    assert sgd[3].startswith("~") and not sgd[4].startswith("~")
    assert not any(cell.startswith("~") for cell in gd)
    assert "~ = a chance crossing: ε is below the SGD noise" in text
