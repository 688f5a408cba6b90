"""Display objects, headless (Agg): the expected artists and labels, and an image on disk."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from numpy.testing import assert_allclose, assert_array_equal  # noqa: E402

from sktt import TrainingTimePredictor  # noqa: E402
from sktt.plotting import (PredictedVsRealDisplay, TrainingCurveDisplay,  # noqa: E402
                           TrainingTimeDisplay)
from sktt.validation import compare_with_real  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def fitted(linear_problem):
    model, X, y = linear_problem
    ttp = TrainingTimePredictor(model, lr=0.3, batch_size=6, n_steps=20, solver="discrete",
                                random_state=0).fit(X, y)
    return ttp, X, y


def _saved(fig, tmp_path, name):
    path = tmp_path / name
    fig.savefig(path)
    assert path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return path


def test_training_curve_display_from_estimator(fitted, tmp_path):
    ttp, X, y = fitted
    res = compare_with_real(ttp, X, y, seeds=[1, 2])
    disp = TrainingCurveDisplay.from_estimator(ttp, real=res, eps=0.05)
    assert disp.ax_.get_xlabel() == "step"
    assert disp.ax_.get_ylabel() == "train loss"
    assert_allclose(disp.line_.get_ydata(), ttp.predict_curve())
    assert_array_equal(disp.line_.get_xdata(), np.arange(21))
    assert disp.line_.get_label() == "predicted (discrete)"
    assert len(disp.real_lines_) == 2
    assert_allclose(disp.real_lines_[1].get_ydata(), res.real_runs[1].loss)
    # SGD: the band over the predictor's simulated batch orders is drawn under the curve.
    band = ttp.predict_curve(return_band=True)
    assert disp.band_ in disp.ax_.collections
    assert_allclose(disp.band_.get_paths()[0].vertices[:, 1].max(), band.upper.max())
    assert len(disp.eps_lines_) == 2
    labels = [t.get_text() for t in disp.ax_.get_legend().get_texts()]
    assert labels[:3] == ["predicted band", "predicted (discrete)", "real"]
    # Full batch: deterministic, no band.
    assert TrainingCurveDisplay.from_estimator(ttp, batch_size=None).band_ is None
    _saved(disp.figure_, tmp_path, "curve.png")


def test_training_curve_display_band_and_error_metric(fitted, tmp_path):
    ttp, X, y = fitted
    disp = TrainingCurveDisplay.from_estimator(ttp, solver="sde", sde_noise="full", batch_size=4)
    assert disp.band_ is not None and disp.band_ in disp.ax_.collections
    assert disp.line_.get_label() == "predicted (sde)"
    assert disp.real_lines_ == []
    fig, ax = plt.subplots()
    disp = TrainingCurveDisplay.from_estimator(ttp, metric="error", ax=ax, lr=0.1,
                                               real=np.ones(21))
    assert disp.ax_ is ax and disp.figure_ is fig
    assert disp.ax_.get_ylabel() == "train error (%)"
    assert_allclose(disp.line_.get_ydata(), ttp.predict_curve("error", lr=0.1))
    # from_validation uses the result's metric and its real runs.
    res = compare_with_real(ttp, X, y, metric="error", eps=[5.0])
    disp = TrainingCurveDisplay.from_validation(res)
    assert disp.ax_.get_ylabel() == "train error (%)"
    assert_allclose(disp.real_lines_[0].get_ydata(), res.real_runs[0].error)
    _saved(disp.figure_, tmp_path, "curve_error.png")


def test_training_time_display(fitted, tmp_path):
    ttp, X, y = fitted
    eps = [0.01, 0.03, 0.1, 0.3]
    disp = TrainingTimeDisplay.from_estimator(ttp, eps=eps)
    assert_array_equal(disp.line_.get_ydata(), ttp.predict_time(eps))
    assert_allclose(disp.line_.get_xdata(), eps)
    assert disp.ax_.get_xscale() == "log"
    assert disp.ax_.get_xlabel() == "ε (loss units)"
    assert "steps" in disp.ax_.get_ylabel()
    assert disp.real_line_ is None
    # Default grid, seconds.
    ttp.measure_step_time(X, y, n_repeats=1)
    disp = TrainingTimeDisplay.from_estimator(ttp, unit="seconds")
    assert "seconds" in disp.ax_.get_ylabel()
    assert np.all(np.asarray(disp.line_.get_ydata()) >= 0)
    # With real runs: median line and range band.
    res = compare_with_real(ttp, X, y, seeds=[0, 1, 2])
    disp = TrainingTimeDisplay.from_validation(res, eps=eps)
    assert_allclose(disp.real_line_.get_ydata(), np.median(res.evaluate(eps=eps).real_times, 0))
    assert disp.real_band_ in disp.ax_.collections
    assert [t.get_text() for t in disp.ax_.get_legend().get_texts()] == [
        "predicted", "real", "real (range over runs)"]
    _saved(disp.figure_, tmp_path, "times.png")


def test_predicted_vs_real_display(fitted, tmp_path):
    disp = PredictedVsRealDisplay.from_predictions([10, 50, 100, -1], [10, 40, 200, 30],
                                                   eps=[0.1, 0.1, 0.2, 0.2])
    assert len(disp.scatter_) == 2  # one per eps; the diverged point is dropped
    offsets = np.concatenate([s.get_offsets() for s in disp.scatter_])
    assert_allclose(sorted(offsets[:, 0]), [10, 40, 200])  # x = real
    assert_allclose(disp.within_tolerance_, 1 / 3)  # only the exact point is within ±20 %
    assert_allclose(disp.line_.get_xdata(), disp.line_.get_ydata())  # y = x
    assert disp.band_ in disp.ax_.collections
    assert disp.ax_.get_xlabel() == "real $T_\\varepsilon$ (steps)"
    assert disp.ax_.get_ylabel() == "predicted $T_\\varepsilon$ (steps)"
    assert [t.get_text() for t in disp.ax_.get_legend().get_texts()] == [
        "±20%", "y = x", "ε = 0.1", "ε = 0.2"]
    _saved(disp.figure_, tmp_path, "scatter.png")

    ttp, X, y = fitted
    disp = PredictedVsRealDisplay.from_estimator(
        ttp, X, y, settings=[{"lr": 0.3}, {"lr": 0.1, "momentum": 0.5}], eps=[0.01, 0.05])
    assert len(disp.results_) == 2
    n_points = sum(len(s.get_offsets()) for s in disp.scatter_)
    assert n_points == 4
    # The random-feature model is linear in its parameters: predictions are exact.
    assert disp.within_tolerance_ == 1.0
    with pytest.raises(ValueError, match="mix metrics"):
        PredictedVsRealDisplay.from_results(
            [disp.results_[0], disp.results_[1].evaluate(metric="error", eps=[5.0])])
    with pytest.raises(ValueError, match="different sizes"):
        PredictedVsRealDisplay.from_predictions([1, 2], [1])
