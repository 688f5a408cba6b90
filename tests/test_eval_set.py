"""Held-out curves: ``fit(X, y, eval_set=(X_val, y_val))``, ``on="eval"``, ``predict_best_step``.

A model linear in its parameters is its own linearisation, so the predicted
held-out loss and error must equal real torch training's at every step (to
round-off). The data are over-parametrised (60 features, 20 samples) with noisy
labels, so the held-out loss falls, then turns upward: the best step is interior.
"""

import functools

import numpy as np
import pytest
import torch
from conftest import RandomFeatureHead
from numpy.testing import assert_allclose
from torch.optim.lr_scheduler import CosineAnnealingLR

from sktt import TrainingTimePredictor
from sktt.exceptions import MemoryBudgetError, NotFittedError
from sktt.validation import run_real_training

T = 150
# (batch_size, momentum, lr) per loss: GD and minibatch SGD with momentum, both
# with an interior minimum of the held-out loss
SETTINGS = {
    ("cross_entropy", "gd"): dict(batch_size=None, momentum=0.0, lr=0.03),
    ("cross_entropy", "sgd"): dict(batch_size=5, momentum=0.9, lr=0.003),
    ("mse", "gd"): dict(batch_size=None, momentum=0.0, lr=0.1),
    ("mse", "sgd"): dict(batch_size=5, momentum=0.9, lr=0.01),
}


def _noisy(n, g):
    X = torch.randn(n, 6, generator=g, dtype=torch.float64)
    y = (X[:, 0] > 0).long() + (X[:, 1] > 0.5).long()
    flip = torch.rand(n, generator=g) < 0.3
    return X, torch.where(flip, torch.randint(0, 3, (n,), generator=g), y)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(3)
    X, y = _noisy(20, g)
    X_val, y_val = _noisy(40, g)
    return X, y, X_val, y_val


def _targets(y, loss):
    return y if loss == "cross_entropy" else torch.nn.functional.one_hot(y, 3).double()


def _fit_and_train(data, loss, params, **extra):
    X, y, X_val, y_val = data
    t, t_val = _targets(y, loss), _targets(y_val, loss)
    model = RandomFeatureHead(n_features=60)
    ttp = TrainingTimePredictor(model, loss=loss, n_steps=T, n_paths=1, random_state=0,
                                trust_check=False, **params, **extra)
    ttp.fit(X, t, eval_set=(X_val, t_val))
    real = run_real_training(model, X, t, loss=loss, n_steps=T, seed=ttp.dataloader_seed(0),
                             eval_set=(X_val, t_val), **params, **extra)
    return ttp, real


@pytest.mark.parametrize("loss,kind", sorted(SETTINGS))
def test_eval_curves_equal_real_training(data, loss, kind):
    ttp, real = _fit_and_train(data, loss, SETTINGS[loss, kind])
    assert_allclose(ttp.predict_curve(on="eval"), real.eval_loss, rtol=1e-10, atol=1e-13)
    assert_allclose(ttp.predict_curve("error", on="eval"), real.eval_error, atol=1e-9)
    assert_allclose(ttp.predict_curve(), real.loss, rtol=1e-10, atol=1e-13)  # train unchanged
    best = ttp.predict_best_step()
    assert best.step == int(np.argmin(real.eval_loss))
    assert 0 < best.step < T  # the held-out loss turns upward: the test is not vacuous
    assert_allclose(best.value, real.eval_loss.min(), rtol=1e-10)
    assert ttp.predict_best_step("error").step == int(np.argmin(real.eval_error))


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_eval_curves_with_weight_decay_and_scheduler(data, loss):
    params = dict(SETTINGS[loss, "sgd"], weight_decay=0.05, nesterov=True,
                  lr_scheduler=functools.partial(CosineAnnealingLR, T_max=T))
    ttp, real = _fit_and_train(data, loss, params)
    assert_allclose(ttp.predict_curve(on="eval"), real.eval_loss, rtol=1e-10, atol=1e-13)
    assert_allclose(ttp.predict_curve("error", on="eval"), real.eval_error, atol=1e-9)
    assert ttp.predict_best_step().step == int(np.argmin(real.eval_loss))


@pytest.mark.parametrize("kind", ["gd", "sgd"])
def test_refresh_with_eval_set_equals_plain_prediction(data, kind):
    params = dict(SETTINGS["cross_entropy", kind], weight_decay=0.02)
    ttp, _ = _fit_and_train(data, "cross_entropy", params)
    plain = ttp.predict_curve(on="eval")
    refreshed = ttp.predict_curve(on="eval", refresh_steps=7)
    assert_allclose(refreshed, plain, rtol=1e-9, atol=1e-12)
    assert_allclose(ttp.predict_curve("error", on="eval", refresh_steps=7),
                    ttp.predict_curve("error", on="eval"), atol=1e-9)


def test_eval_time_band_and_solvers(data):
    ttp, _ = _fit_and_train(data, "cross_entropy", dict(SETTINGS["cross_entropy", "sgd"]))
    band = ttp.predict_curve(on="eval", return_band=True, n_paths=4)
    assert band.paths.shape == (4, T + 1)
    assert np.all(band.lower <= band.upper)
    assert 0 <= ttp.predict_time(eps=0.05, on="eval") <= T
    flow = ttp.predict_curve(on="eval", solver="ode", batch_size=None, lr=0.03, momentum=0.0)
    gd = ttp.predict_curve(on="eval", batch_size=None, lr=0.03, momentum=0.0)
    assert_allclose(flow, gd, rtol=0.05)  # small lr: the flow is close to GD
    with pytest.raises(ValueError, match="solver='sde' cannot predict held-out"):
        ttp.predict_curve(on="eval", solver="sde")
    ttp.predict_curve(solver="sde", sde_noise="full", n_paths=2)  # its train curve works


def test_fit_with_eval_set_leaves_the_model_untouched(data):
    X, y, X_val, y_val = data
    model = RandomFeatureHead(n_features=60)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ttp = TrainingTimePredictor(model, weight_decay=0.01, momentum=0.5, n_steps=10,
                                trust_check=False).fit(X, y, eval_set=(X_val, y_val))
    ttp.predict_curve(on="eval", refresh_steps=3)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert all(p.grad is None for p in model.parameters())


def test_on_eval_needs_an_eval_set(data):
    X, y, _, _ = data
    ttp = TrainingTimePredictor(RandomFeatureHead(), n_steps=5, trust_check=False).fit(X, y)
    assert ttp.eval_f0_ is None and ttp.n_eval_samples_ == 0
    with pytest.raises(NotFittedError, match="eval_set"):
        ttp.predict_curve(on="eval")
    with pytest.raises(ValueError, match="on='val'"):
        ttp.predict_curve(on="val")


def test_best_step_takes_dynamics_parameters_only(data):
    # predict_curve's own options changed what the curve is: steps=[0, 5] reported the index
    # 1 of the minimum as "step 1", return_band / on failed with numpy / Python TypeErrors
    X, y, X_val, y_val = data
    ttp = TrainingTimePredictor(RandomFeatureHead(), lr=0.5, n_steps=8, trust_check=False).fit(
        X, y, eval_set=(X_val, y_val))
    for bad in (dict(steps=[0, 5]), dict(return_band=True), dict(on="train")):
        with pytest.raises(TypeError, match=rf"unexpected keyword\(s\) \[{next(iter(bad))!r}\]; "
                                            r"predict methods accept the dynamics parameters"):
            ttp.predict_best_step(**bad)
    assert ttp.predict_best_step(lr=0.2).step == int(np.argmin(ttp.predict_curve(on="eval",
                                                                                 lr=0.2)))


def test_projected_cross_kernel_uses_the_training_projection(data):
    X, y, X_val, y_val = data
    model = RandomFeatureHead(n_features=60)
    params = dict(projection="gaussian", projection_dim=32, random_state=1, trust_check=False)
    ttp = TrainingTimePredictor(model, **params).fit(X, y, eval_set=(X_val, y_val))
    both = TrainingTimePredictor(model, **params).fit(torch.cat([X, X_val]),
                                                      torch.cat([y, y_val]))
    n = 3 * len(X)
    assert_allclose(ttp.cross_ntk_, both.ntk_[:n, n:], rtol=1e-10, atol=1e-12)
    assert_allclose(ttp.ntk_, both.ntk_[:n, :n], rtol=1e-10, atol=1e-12)


def test_cross_kernel_respects_max_memory(data):
    X, y, X_val, y_val = data
    rows = 3 * len(X)
    budget = rows * rows * 8 * 2  # Θ fits, the joint kernel does not
    ttp = TrainingTimePredictor(RandomFeatureHead(), max_memory=budget, trust_check=False)
    ttp.fit(X, y)
    with pytest.raises(MemoryBudgetError, match=r"cross-kernel Θ\(train, eval\).*max_memory"):
        ttp.fit(X, y, eval_set=(X_val, y_val))


def test_compare_with_real_scores_the_eval_curves(data):
    from sktt.validation import compare_with_real

    ttp, real = _fit_and_train(data, "cross_entropy", dict(SETTINGS["cross_entropy", "sgd"]))
    X, y, _, _ = data
    res = compare_with_real(ttp, X, y, eps=0.05)
    assert_allclose(res.predicted_curves["eval_loss"], real.eval_loss, rtol=1e-10)
    assert_allclose(res.real_runs[0].eval_loss, real.eval_loss, rtol=1e-12)
    assert res.predicted_best_step == res.real_best_steps[0] == int(np.argmin(real.eval_loss))
    assert res.summary()["predicted_best_step"] == res.predicted_best_step
    assert res.evaluate(metric="error").real_best_steps[0] == int(np.argmin(real.eval_error))


def test_compare_table_has_eval_columns(data):
    from sktt import compare

    X, y, X_val, y_val = data
    result = compare(RandomFeatureHead(n_features=60),
                     {"quad": (X, y, X_val, y_val), "dict": {"X": X, "y": y,
                                                            "eval_set": (X_val, y_val)},
                      "none": (X, y)},
                     {"lr": [0.03]}, n_steps=T, random_state=0, trust_check=False)
    rows = {r["dataset"]: r for r in result._rows}
    ttp, _ = _fit_and_train(data, "cross_entropy", dict(SETTINGS["cross_entropy", "gd"]))
    best = ttp.predict_best_step()
    for name in ("quad", "dict"):
        assert rows[name]["best_step"] == best.step
        assert_allclose(rows[name]["best_eval_loss"], best.value, rtol=1e-10)
    assert np.isnan(rows["none"]["best_step"])


def test_cli_eval_data(tmp_path, capsys):
    from sktt.cli import main
    from sktt.datasets import load_demo

    demo = load_demo(90)
    np.savez(tmp_path / "train.npz", X=demo.X[:60].numpy(), y=demo.y[:60].numpy())
    np.savez(tmp_path / "val.npz", X=demo.X[60:].numpy(), y=demo.y[60:].numpy())
    torch.jit.save(torch.jit.script(demo.model), str(tmp_path / "model.pt"))
    args = [str(tmp_path / "model.pt"), str(tmp_path / "train.npz"), "--eval-data",
            str(tmp_path / "val.npz"), "--n-steps", "20", "--lr", "0.05", "--threads", "1",
            "--no-trust"]
    assert main(["predict", *args, "--no-seconds"]) == 0
    out = capsys.readouterr().out
    assert "best step" in out and "eval loss" in out
    assert main(["validate", *args]) == 0
    assert "real best" in capsys.readouterr().out


def test_held_out_display_marks_the_best_step(data):
    import matplotlib

    matplotlib.use("Agg")
    from sktt.plotting import HeldOutCurveDisplay

    ttp, real = _fit_and_train(data, "cross_entropy", dict(SETTINGS["cross_entropy", "sgd"]))
    disp = HeldOutCurveDisplay.from_estimator(ttp, real=real)
    assert disp.best_step_ == ttp.predict_best_step().step
    assert disp.real_best_step_ == int(np.argmin(real.eval_loss))
    assert {"train", "eval", "real train", "real eval"} <= set(disp.lines_)
    with pytest.raises(ValueError, match="no held-out curves"):
        plain = TrainingTimePredictor(RandomFeatureHead(), n_steps=5, trust_check=False)
        from sktt.validation import compare_with_real
        X, y, _, _ = data
        HeldOutCurveDisplay.from_validation(compare_with_real(plain.fit(X, y), X, y))


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize("params", [dict(), dict(batch_size=5, momentum=0.9, n_paths=3),
                                    dict(momentum=0.5, weight_decay=0.01, nesterov=True)])
def test_factored_held_out_curves_equal_the_dense_ones(data, loss, params):
    """ntk='factored' keeps the held-out rows of the same projection: same eval curves."""
    X, y, X_val, y_val = data
    t, t_val = _targets(y, loss), _targets(y_val, loss)
    fits = {}
    for mode in ("dense", "factored"):
        fits[mode] = TrainingTimePredictor(
            RandomFeatureHead(n_features=60), loss=loss, n_steps=T, ntk=mode,
            lr=0.3 if loss == "cross_entropy" else 0.05,
            projection="countsketch", projection_dim=48, random_state=2, trust_check=False,
            **params).fit(X, t, eval_set=(X_val, t_val))
    dense, factored = fits["dense"], fits["factored"]
    assert dense.ntk_mode_ == "dense" and factored.ntk_mode_ == "factored"
    assert factored.cross_ntk_ is None  # never formed
    for metric in ("loss", "error"):
        assert_allclose(factored.predict_curve(metric, on="eval"),
                        dense.predict_curve(metric, on="eval"), rtol=1e-8, atol=1e-10)
    assert factored.predict_best_step().step == dense.predict_best_step().step
    curve = dense.predict_curve(on="eval")
    assert np.isfinite(curve).all() and curve.min() < curve[0]  # a real, trained curve


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize("batch_size", [None, 5])
def test_adamw_eval_curves_equal_real_training(data, loss, batch_size):
    # AdamW never passed the held-out rows to its simulation: on="eval", predict_best_step
    # and compare_with_real of a predictor fitted with eval_set raised numpy's AxisError.
    # The exact mode moves them with the simulated weights: real AdamW's curve, to round-off.
    from sktt.validation import compare_with_real

    params = dict(optimizer="adamw", lr=0.01, weight_decay=0.01, batch_size=batch_size)
    ttp, real = _fit_and_train(data, loss, params)
    assert_allclose(ttp.predict_curve(on="eval"), real.eval_loss, rtol=1e-9, atol=1e-12)
    assert_allclose(ttp.predict_curve("error", on="eval"), real.eval_error, atol=1e-9)
    assert_allclose(ttp.predict_curve(), real.loss, rtol=1e-9, atol=1e-12)
    assert ttp.predict_best_step().step == int(np.argmin(real.eval_loss))
    X, y, _, _ = data
    res = compare_with_real(ttp, X, _targets(y, loss), eps=0.05)
    assert_allclose(res.predicted_curves["eval_loss"], real.eval_loss, rtol=1e-9)


def test_adamw_without_held_out_rows_refuses_on_eval(data):
    ttp, _ = _fit_and_train(data, "cross_entropy", dict(optimizer="adamw", lr=0.01))
    with pytest.raises(ValueError, match="held-out curves with optimizer='adamw' need "
                                         "adamw_mode='exact'"):
        ttp.predict_curve(on="eval", adamw_mode="approximate")
    with pytest.raises(ValueError, match="refresh_steps .* with optimizer='adamw' resume the "
                                         "training rows only"):
        ttp.predict_best_step(refresh_steps=2)
    rows = (20 + 40) * 3 * ttp.n_params_ * 8
    with pytest.raises(ValueError, match=r"\(N \+ N_val\)·C·D = 180·.*more than max_memory"):
        ttp.set_params(max_memory=rows - 8).predict_curve(on="eval")  # train rows fit
    ttp.set_params(max_memory=None)
    from sktt.validation import compare_with_real

    X, y, _, _ = data  # the training curves are still compared, without held-out ones
    res = compare_with_real(ttp, X, y, eps=0.05, adamw_mode="approximate")
    assert "eval_loss" not in res.predicted_curves or res.predicted_curves["eval_loss"] is None


def test_token_inputs_padded_to_another_length_say_how_to_pad():
    # a validation set tokenized apart is padded to its own longest sentence: the refusal
    # said only "shaped like the training inputs", not that padding is the cause and cure
    class Bag(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.emb = torch.nn.Embedding(10, 4, dtype=torch.float64)
            self.head = torch.nn.Linear(4, 3, dtype=torch.float64)

        def forward(self, ids):
            return self.head(self.emb(ids).mean(1))

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 10, (8, 5), generator=g)
    ids_val = torch.randint(0, 10, (4, 7), generator=g)  # its own, longer padding
    y = torch.arange(8) % 3
    hint = r"Token ids padded to different lengths .* padding='max_length', max_length=L\)"
    with pytest.raises(ValueError, match=r"per-sample shape \(7,\) but X has \(5,\).*" + hint):
        TrainingTimePredictor(Bag(), trust_check=False).fit(ids, y, eval_set=(ids_val, y[:4]))
    with pytest.raises(ValueError, match=r"per-sample shape \(7,\) but X has \(5,\)\. " + hint):
        run_real_training(Bag(), ids, y, lr=0.1, n_steps=1, eval_set=(ids_val, y[:4]))
