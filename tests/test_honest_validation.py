"""compare_with_real never hides a broken run: curve error, run status, degenerate ε-times."""

import json
import warnings

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from sktt import TrainingTimePredictor
from sktt.cli import main
from sktt.datasets import load_demo
from sktt.exceptions import EpsilonWarning, ValidationWarning
from sktt.validation import compare_with_real
from sktt.validation._flags import curve_error, curve_status, time_flags


@pytest.mark.parametrize("curve, status", [
    ([1.39, 0.67, 16.1, 8.07], "diverged"),            # ends above its start (issue #16)
    ([1.0, 0.5, np.nan, 0.2], "diverged"),             # not finite
    ([3.13, 6.26, 5.57, 1.96, 0.25], "oscillates"),    # rose above its start, recovered
    ([1.0, 0.2, 0.8, 0.1], "oscillates"),              # climbed back 0.6 of a 0.9 drop
    ([1.0, 0.6, 0.65, 0.3, 0.32, 0.1], "ok"),          # minibatch-sized bumps
    ([1.0, 1.0, 1.0], "ok"),                           # flat
])
def test_curve_status_definition(curve, status):
    assert curve_status(curve) == status


def test_time_flags_and_curve_error_by_hand():
    flags = time_flags([[0, 3, 10, -1]], n_steps=10)
    assert flags.tolist() == [["eps_exceeds_drop", "ok", "not_reached", "undefined"]]
    med, mx = curve_error([1.0, 0.5, 0.3], [[1.0, 0.4, 0.3], [2.0, 0.5, np.inf]])
    assert_allclose(med, [0.0, 0.5])
    assert_allclose(mx, [0.25, np.inf])


@pytest.fixture(scope="module")
def demo():
    return load_demo(n_samples=40)


def test_oscillating_real_run_is_flagged_and_warned(demo):
    # lr = 0.05 is past the stability edge of the demo convnet (full batch): the real loss
    # climbs above its start before it falls (3.1 -> 6.3 -> ...).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the predictor's own trust warning
        ttp = TrainingTimePredictor(demo.model, lr=0.05, n_steps=20, random_state=0).fit(
            demo.X, demo.y)
    with pytest.warns(ValidationWarning, match=r"real run\(s\) \[0\] oscillates"):
        res = compare_with_real(ttp, demo.X, demo.y, eps=[0.03])
    real = res.real_runs[0].loss
    assert real.max() > real[0] and res.real_status == ["oscillates"]
    # the curve error is the plain definition, and it is large here
    rel = np.abs(res.predicted_curves["loss"] - real) / real
    assert_allclose(res.curve_error_median, [np.median(rel)])
    assert_allclose(res.curve_error_max, [rel.max()])
    assert res.curve_error_max[0] > 1.0
    doc = json.loads(json.dumps(res.to_dict()))
    assert doc["real_status"] == ["oscillates"]
    assert any("oscillates" in p for p in doc["problems"])
    assert res.summary()["real_status"] == "oscillates"


def test_stable_run_is_ok_and_silent(demo):
    ttp = TrainingTimePredictor(demo.model, lr=0.005, n_steps=20, random_state=0).fit(
        demo.X, demo.y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ValidationWarning)
        res = compare_with_real(ttp, demo.X, demo.y, eps=[0.1])
    assert res.real_status == ["ok"] and res.predicted_status == "ok"
    assert res.predicted_time_flags.tolist() == ["ok"]
    assert res.problems() == []
    assert res.curve_error_max[0] < 0.2


def test_diverged_real_run_on_a_linear_model(linear_problem):
    # MSE on a model linear in its parameters at 100x the stability edge: both the real and
    # the predicted loss explode; the times are undefined, not fake numbers.
    model, X, y = linear_problem
    Y = torch.nn.functional.one_hot(y, 3).double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ttp = TrainingTimePredictor(model, loss="mse", lr=200.0, n_steps=15).fit(X, Y)
    with pytest.warns(ValidationWarning, match="diverged"):
        res = compare_with_real(ttp, X, Y, eps=[0.01])
    assert res.real_status == ["diverged"] and res.predicted_status == "diverged"
    assert res.real_time_flags.tolist() in ([["undefined"]], [["ok"]], [["not_reached"]])
    assert res.to_dict()["real_status"] == ["diverged"]


def test_exact_model_has_zero_curve_error_and_degenerate_times_flagged(linear_problem):
    model, X, y = linear_problem
    ttp = TrainingTimePredictor(model, lr=0.3, n_steps=10).fit(X, y)
    drop = ttp.predict_curve()[0] - ttp.predict_curve()[-1]
    with pytest.warns(ValidationWarning) as rec:
        res = compare_with_real(ttp, X, y, eps=[1e-9, 2 * drop])
    assert res.curve_error_max[0] < 1e-10  # linear in its parameters: exact
    assert res.predicted_time_flags.tolist() == ["not_reached", "eps_exceeds_drop"]
    assert res.real_time_flags.tolist() == [["not_reached", "eps_exceeds_drop"]]
    msg = str(rec[0].message)
    assert "is 0: ε exceeds the whole change" in msg and "is T=10" in msg
    assert res.summary()["predicted_time_flag"] == ["not_reached", "eps_exceeds_drop"]


def test_predict_time_warns_when_eps_exceeds_the_predicted_drop(linear_problem):
    model, X, y = linear_problem
    ttp = TrainingTimePredictor(model, lr=0.3, n_steps=10).fit(X, y)
    curve = ttp.predict_curve()
    drop = abs(curve[0] - curve[-1])
    with pytest.warns(EpsilonWarning, match="larger than the whole predicted change"):
        assert ttp.predict_time(eps=1.5 * drop) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", EpsilonWarning)
        assert ttp.predict_time(eps=0.5 * drop) > 0


def test_cli_validate_reports_flags(capsys):
    assert main(["demo", "--real", "--json", "--n-samples", "40", "--n-steps", "20",
                 "--lr", "0.005", "0.05", "--momentum", "0", "--no-seconds"]) == 0
    doc = json.loads(capsys.readouterr().out)
    ok, bad = doc["rows"]
    assert ok["real_status"] == "ok" and bad["real_status"] == "oscillates"
    assert bad["curve_error_max"] > 1.0 > ok["curve_error_max"]
    assert any("oscillates" in p for p in bad["problems"])
    assert main(["demo", "--real", "--n-samples", "40", "--n-steps", "20", "--lr", "0.05",
                 "--momentum", "0", "--no-seconds"]) == 0
    out = capsys.readouterr().out
    assert "curve err" in out and "oscillates" in out and "note for lr=0.05" in out
