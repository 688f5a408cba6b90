"""sktt.validation: the paper's metrics and compare_with_real against hand-written loops."""

import json
import pickle
import warnings

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from torch import nn

from sktt import TrainingTimePredictor
from sktt.dynamics import epsilon_training_time
from sktt.exceptions import ValidationWarning
from sktt.utils import derive_seed
from sktt.validation import (RealTrainingResult, ValidationResult, compare_with_real,
                             dataloader_batches, time_prediction_errors)


def test_time_prediction_errors_by_hand():
    rel, frac = time_prediction_errors([90, 40, 0, 7, 5], [100, 50, 0, 0, -1], n_steps=200)
    assert_allclose(rel[:4], [0.1, 0.2, 0.0, 7.0])  # T_eps = 0 counts as one step
    assert_allclose(frac[:4], [10 / 200, 10 / 200, 0.0, 7 / 200])
    assert np.isnan(rel[4]) and np.isnan(frac[4])  # undefined real time
    rel, frac = time_prediction_errors([[10, 20]], [[12, 20], [8, 25]], n_steps=50)
    assert rel.shape == (2, 2)
    assert_allclose(rel, [[2 / 12, 0.0], [2 / 8, 5 / 25]])
    with pytest.raises(ValueError, match="n_steps"):
        time_prediction_errors([1], [1], n_steps=0)


def _fake_run(loss, error):
    loss, error = np.asarray(loss, float), np.asarray(error, float)
    return RealTrainingResult(loss=loss, error=error, batches=[], seconds_per_step=0.01)


def test_validation_result_on_hand_made_curves():
    # Predicted loss gets within 0.1 of its end (0.0) at step 3; the real runs at 4 and 2.
    pred = np.array([1.0, 0.6, 0.3, 0.05, 0.02, 0.0])
    real_a = np.array([1.0, 0.8, 0.5, 0.3, 0.08, 0.0])
    real_b = np.array([1.0, 0.5, 0.09, 0.05, 0.02, 0.01])
    err = np.array([50.0, 40, 30, 20, 10, 0])
    res = ValidationResult(
        eps=[0.1, 0.35], metric="loss",
        params=dict(lr=0.1, momentum=0.0, batch_size=2, n_steps=5, solver="discrete"),
        seeds=[1, 2], predicted_curves={"loss": pred, "error": err},
        predicted_bands={"loss": None, "error": None},
        real_runs=[_fake_run(real_a, err), _fake_run(real_b, err)])
    assert_array_equal(res.predicted_times, [3, 2])
    assert_array_equal(res.real_times, [[4, 3], [2, 2]])
    assert_allclose(res.relative_error, [[1 / 4, 1 / 3], [1 / 2, 0.0]])
    assert_allclose(res.delta_over_T, [[1 / 5, 1 / 5], [1 / 5, 0.0]])
    s = res.summary()
    assert s["predicted_time"] == [3, 2] and s["real_time"] == [3.0, 2.5]
    assert_allclose(s["relative_error"], [(0.25 + 0.5) / 2, (1 / 3 + 0.0) / 2])
    # Re-scoring on the error with other eps needs no training.
    e = res.evaluate(eps=[15.0], metric="error")
    assert_array_equal(e.predicted_times, [epsilon_training_time(err, 15.0)])
    assert_array_equal(e.real_times, [[4], [4]])
    assert res.metric == "loss"  # the original is unchanged
    doc = json.loads(json.dumps(res.to_dict(include_curves=True)))
    assert doc["real_times"] == [[4, 3], [2, 2]]
    assert doc["real_curves"]["loss"][1] == real_b.tolist()
    # A diverged prediction gives -1 and NaN errors, not fake numbers.
    bad = res.evaluate()
    bad.predicted_curves = {"loss": np.array([1.0, np.inf, np.nan, 1, 1, 1]), "error": err}
    bad = bad.evaluate()
    assert_array_equal(bad.predicted_times, [-1, -1])
    assert np.all(np.isnan(bad.relative_error))
    assert bad.to_dict()["relative_error"][0] == [None, None]


def _hand_loop(model, X, y, lr, momentum, batches):
    """A plain torch loop: SGD on a copy, full-set eval-mode loss after every step."""
    net = type(model)()
    net.load_state_dict(model.state_dict())
    net.eval()
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
    losses, errors = [], []

    def record():
        with torch.no_grad():
            out = net(X)
            losses.append(float(nn.functional.cross_entropy(out, y)))
            errors.append(100.0 * float((out.argmax(1) != y).double().mean()))

    record()
    for idx in batches:
        idx = torch.as_tensor(idx)
        opt.zero_grad()
        nn.functional.cross_entropy(net(X[idx]), y[idx]).backward()
        opt.step()
        record()
    return np.array(losses), np.array(errors)


@pytest.fixture
def fitted(linear_problem):
    model, X, y = linear_problem
    ttp = TrainingTimePredictor(model, lr=0.3, momentum=0.5, batch_size=5, n_steps=25,
                                solver="discrete", random_state=3).fit(X, y)
    return ttp, model, X, y


def test_compare_with_real_reproduces_hand_loop_with_the_predictions_batches(fitted):
    ttp, model, X, y = fitted
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    rng = torch.get_rng_state()
    res = compare_with_real(ttp, X, y, eps=[0.01, 0.05])
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is untouched
    # Same batches as the prediction's path 0: a DataLoader seeded dataloader_seed(0).
    assert ttp.dataloader_seed(0) == derive_seed(ttp.seed_, 0)
    expected = dataloader_batches(24, 5, 25, seed=ttp.dataloader_seed(0))
    assert res.seeds == [ttp.dataloader_seed(0)] and res.same_batches
    for got, exp in zip(res.real_runs[0].batches, expected):
        assert_array_equal(got, exp)
    loader = torch.utils.data.DataLoader(range(24), batch_size=5, shuffle=True,
                                         generator=torch.Generator().manual_seed(res.seeds[0]))
    first = [b.numpy() for b in loader][:4]
    for got, exp in zip(res.real_runs[0].batches, first):
        assert_array_equal(got, exp)
    loss, error = _hand_loop(model, X, y, 0.3, 0.5, expected)
    assert_allclose(res.real_curves[0], loss, rtol=1e-12)
    assert_allclose(res.real_runs[0].error, error, rtol=1e-12)
    # The prediction is made for exactly these batches ...
    assert_allclose(res.predicted_curve, ttp.predict_curve(batches=expected), rtol=0, atol=0)
    assert_array_equal(res.predicted_times, ttp.predict_time([0.01, 0.05], batches=expected))
    # ... and the model is linear in its parameters, so it is exact.
    assert_allclose(res.predicted_curve, loss, rtol=1e-9)
    assert_array_equal(res.predicted_times, res.real_times[0])
    assert_allclose(res.relative_error, 0.0)
    # The band is the spread over the predictor's own simulated batch orders.
    band = ttp.predict_curve(return_band=True)
    assert_allclose(res.predicted_band, [band.lower, band.upper])
    # The user's model is untouched.
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert all(p.grad is None for p in model.parameters())


def test_compare_with_real_seeds_overrides_and_gd(fitted):
    ttp, model, X, y = fitted
    res = compare_with_real(ttp, X, y, seeds=[1, 2], lr=0.1, momentum=0.0)
    assert res.seeds == [1, 2] and res.real_curves.shape == (2, 26)
    assert not res.same_batches
    # Independent runs are compared with the predictor's own prediction.
    assert_allclose(res.predicted_curve, ttp.predict_curve(lr=0.1, momentum=0.0))
    assert_array_equal(res.predicted_times, ttp.predict_time([0.01, 0.03], lr=0.1, momentum=0.0))
    assert_array_equal(res.evaluate(eps=[0.2]).predicted_times,
                       ttp.predict_time([0.2], lr=0.1, momentum=0.0))
    again = pickle.loads(pickle.dumps(res))  # results can be stored (joblib, pickle)
    assert_array_equal(again.evaluate(eps=[0.2]).predicted_times,
                       res.evaluate(eps=[0.2]).predicted_times)
    assert res.params["lr"] == 0.1 and res.params["momentum"] == 0.0
    for run, seed in zip(res.real_runs, [1, 2]):
        for got, exp in zip(run.batches, dataloader_batches(24, 5, 25, seed=seed)):
            assert_array_equal(got, exp)
        loss, _ = _hand_loop(model, X, y, 0.1, 0.0, run.batches)
        assert_allclose(run.loss, loss, rtol=1e-12)
    assert res.relative_error.shape == (2, 2)
    # Full batch: one deterministic run whatever the seeds; y=None reuses targets_.
    gd = compare_with_real(ttp, X, batch_size=None, n_steps=10, seeds=[4, 5])
    assert gd.seeds == [None] and gd.real_curves.shape == (1, 11)
    loss, _ = _hand_loop(model, X, y, 0.3, 0.5, [np.arange(24)] * 10)
    assert_allclose(gd.real_curves[0], loss, rtol=1e-12)


def test_compare_with_real_input_errors(fitted):
    ttp, model, X, y = fitted
    with pytest.raises(ValueError, match="fitted on 24"):
        compare_with_real(ttp, X[:10], y[:10])
    with pytest.warns(UserWarning, match="not the data the predictor was fitted on"):
        compare_with_real(ttp, X + 1.0, y, n_steps=2)
    with pytest.raises(ValueError, match="eps"):
        compare_with_real(ttp, X, y, eps=-1)
    with pytest.raises(ValueError, match="metric"):
        compare_with_real(ttp, X, y, metric="accuracy")
    with pytest.raises(TypeError, match="unexpected keyword"):
        compare_with_real(ttp, X, y, learning_rate=0.1)
    with pytest.raises(TypeError, match="fitted"):
        compare_with_real(TrainingTimePredictor(model), X, y)


def test_compare_with_real_mse_and_error_metric(linear_problem):
    model, X, y = linear_problem
    Y = nn.functional.one_hot(y, 3).double()
    ttp = TrainingTimePredictor(model, loss="mse", lr=0.2, n_steps=15,
                                solver="discrete").fit(X, Y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # the error curve still moves at step 14: T_ε = T is flagged (tests/test_honest_validation)
        warnings.simplefilter("ignore", ValidationWarning)
        res = compare_with_real(ttp, X, Y, eps=[2.0, 5.0], metric="error")
    assert_allclose(res.predicted_curves["loss"], res.real_runs[0].loss, rtol=1e-9)
    assert_allclose(res.predicted_curve, res.real_runs[0].error, atol=1e-9)
