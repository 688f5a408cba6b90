"""The scikit-learn contract of TrainingTimePredictor and Θ reuse across settings."""

import pickle

import joblib
import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose
from sklearn.base import clone

import sktt.estimators._predictor as predictor_module
from sktt import TrainingTimePredictor
from sktt.exceptions import DivergenceError, NotFittedError, ThresholdNotReachedError


def test_get_set_params_and_clone(linear_problem):
    model, X, y = linear_problem
    ttp = TrainingTimePredictor(model, lr=0.1, momentum=0.5, n_steps=30, random_state=0)
    params = ttp.get_params()
    assert params["lr"] == 0.1 and params["model"] is model
    ttp.set_params(lr=0.2)
    assert ttp.lr == 0.2
    cloned = clone(ttp)
    assert cloned.lr == 0.2 and cloned.model is not model  # deep-copied module
    assert not hasattr(cloned, "ntk_")
    a = ttp.fit(X, y).predict_curve()
    b = cloned.fit(X, y).predict_curve()
    assert_allclose(a, b, rtol=1e-14)


def test_fit_parameters_changed_after_fit_are_refused_until_refit(linear_problem):
    # loss and model are read again by predictions (the loss of the fitted targets, the model
    # of trust / refresh): set after fit, they would be mixed with the old fit's kernel
    from conftest import RandomFeatureHead
    from sktt.validation import compare_with_real

    model, X, y = linear_problem
    ttp = TrainingTimePredictor(model, lr=0.1, n_steps=10, trust_check=False).fit(X, y)
    ttp.predict_curve()  # cached: the refusal may not depend on the cache
    ttp.set_params(loss="mse")
    for call in (lambda: ttp.predict_curve(), lambda: ttp.predict_curve("error", lr=0.2),
                 lambda: ttp.predict_time(0.01, lr=0.3), lambda: ttp.trust_report(),
                 lambda: ttp.extrapolate(48), lambda: compare_with_real(ttp, X, y)):
        with pytest.raises(ValueError, match=r"loss='mse' was set after fit, which used "
                                             r"loss='cross_entropy'.*Call fit again"):
            call()
    ttp.set_params(loss="cross_entropy")  # set back: the fit is valid again
    ttp.predict_time(0.01)
    ttp.set_params(model=RandomFeatureHead(n_features=7))  # another architecture
    for call in (lambda: ttp.trust_report(), lambda: ttp.predict_curve(refresh_steps=2),
                 lambda: ttp.predict_curve(weight_decay=0.1)):
        with pytest.raises(ValueError, match=r"trainable parameters changed since fit .*"
                                             r"head.weight.*Call fit again"):
            call()
    mse = ttp.set_params(loss="mse").fit(X, torch.nn.functional.one_hot(y, 3).double())
    assert mse.predict_curve().shape == (11,)  # a new fit adopts both


@pytest.mark.parametrize("params, exc, match", [
    (dict(chunk_size=-5), ValueError, r"chunk_size=-5 is out of range"),  # was torch.cat([])
    (dict(chunk_size=2.5), TypeError, r"chunk_size must be an integer, got 2.5"),
    (dict(n_jobs=0), ValueError, r"n_jobs=0 is invalid"),  # was joblib's message, or ignored
    (dict(jacobian_method="bad"), ValueError, r"jacobian_method='bad' is not supported"),
])
def test_fit_parameters_set_invalid_after_fit_are_refused_by_predictions(linear_problem, params,
                                                                         exc, match):
    # the model's passes at predict time (weight decay, refresh, stages, exact AdamW) read
    # these again: validated there as at fit, not passed on to torch / joblib
    model, X, y = linear_problem
    ttp = TrainingTimePredictor(model, lr=0.1, n_steps=6, trust_check=False).fit(X, y)
    ttp.set_params(**params)
    for kw in (dict(weight_decay=0.1), dict(refresh_steps=2), dict(relinearize=1),
               dict(optimizer="adamw", adamw_mode="exact")):
        with pytest.raises(exc, match=match):
            ttp.predict_curve(**kw)


@pytest.mark.parametrize("dump", ["pickle", "joblib"])
def test_pickle_round_trip(linear_problem, tmp_path, dump):
    model, X, y = linear_problem
    ttp = TrainingTimePredictor(model, lr=0.3, n_steps=20).fit(X, y)
    curve = ttp.predict_curve()
    if dump == "pickle":
        restored = pickle.loads(pickle.dumps(ttp))
    else:
        joblib.dump(ttp, tmp_path / "ttp.joblib")
        restored = joblib.load(tmp_path / "ttp.joblib")
    assert_allclose(restored.ntk_, ttp.ntk_)
    assert_allclose(restored.predict_curve(), curve)
    assert restored.predict_time(0.01) == ttp.predict_time(0.01)


def test_changing_dynamics_parameters_reuses_the_kernel(linear_problem, monkeypatch):
    model, X, y = linear_problem
    ttp = TrainingTimePredictor(model, lr=0.1, n_steps=40).fit(X, y)
    ntk = ttp.ntk_

    def forbidden(*args, **kwargs):
        raise AssertionError("Jacobians recomputed after fit")

    monkeypatch.setattr(predictor_module, "ntk_from_model", forbidden)
    monkeypatch.setattr("sktt.gradients._extraction.chunk_jacobian", forbidden)
    base = ttp.predict_curve()
    faster = ttp.set_params(lr=0.4).predict_curve()
    assert faster[-1] < base[-1]
    assert_allclose(ttp.predict_curve(lr=0.1), base)  # keyword override, same numbers
    ttp.predict_curve(momentum=0.9, n_steps=60, solver="ode")
    ttp.predict_time([0.01, 0.1], metric="error", batch_size=8)
    assert ttp.ntk_ is ntk
    assert ttp.lr == 0.4  # overrides do not change the estimator


def test_grid_of_100_settings_on_one_fit(linear_problem):
    model, X, y = linear_problem
    ttp = TrainingTimePredictor(model, n_steps=50).fit(X, y)
    times = [ttp.predict_time(0.01, lr=lr, momentum=m)
             for lr in np.geomspace(0.01, 1.0, 25) for m in (0.0, 0.5, 0.9, 0.95)]
    assert len(times) == 100
    assert all(0 <= t <= 50 for t in times)
    # Larger lr reaches a lower final loss (T_eps itself need not be monotone in lr:
    # a slow curve also ends higher, closer to where it started).
    finals = [ttp.predict_curve(lr=lr)[-1] for lr in np.geomspace(0.01, 1.0, 25)]
    assert np.all(np.diff(finals) < 0)


def test_predict_before_fit_raises_not_fitted(linear_problem):
    model, _, _ = linear_problem
    with pytest.raises(NotFittedError):
        TrainingTimePredictor(model).predict_curve()


def test_predict_time_shapes_and_threshold(linear_problem):
    model, X, y = linear_problem
    ttp = TrainingTimePredictor(model, lr=0.5, n_steps=50).fit(X, y)
    curve = ttp.predict_curve()
    assert isinstance(ttp.predict_time(0.01), int)
    times = ttp.predict_time(np.array([0.001, 0.01, 0.1]))
    assert times.shape == (3,) and np.all(np.diff(times) <= 0)
    level = float(curve[10])
    assert ttp.predict_time(threshold=level) <= 10
    with pytest.raises(ThresholdNotReachedError, match="not reached within n_steps=50"):
        ttp.predict_time(threshold=curve[-1] / 2)
    with pytest.raises(ValueError, match="exactly one of eps"):
        ttp.predict_time()
    with pytest.raises(ValueError, match="eps="):
        ttp.predict_time(-0.1)


def test_divergent_learning_rate_is_reported_not_timed(linear_problem):
    model, X, y = linear_problem
    ttp = TrainingTimePredictor(model, loss="mse", n_steps=300).fit(
        X, torch.nn.functional.one_hot(y, 3).double())
    lr = 10 * ttp.n_samples_ * ttp.n_outputs_ / ttp.eigenvalues_[0]
    with pytest.warns(UserWarning, match="diverges"):
        ttp.predict_curve(lr=lr)
    with pytest.raises(DivergenceError, match="smaller lr"):
        ttp.predict_time(0.01, lr=lr)


@pytest.mark.parametrize("params, match", [
    (dict(lr=0.0), "lr=0.0"),
    (dict(lr=float("nan")), "lr=nan"),
    (dict(momentum=1.0), r"momentum=1.0.*\[0.0, 1.0\)"),
    (dict(n_steps=0), "n_steps=0"),
    (dict(batch_size=0), "batch_size=0"),
    (dict(batch_size=1000), r"batch_size=1000.*\[1, 24\]"),
    (dict(loss="crossentropy"), "Did you mean 'cross_entropy'"),
    (dict(solver="odee"), "Did you mean 'ode'"),
    (dict(projection="countsketh"), "Did you mean 'countsketch'"),
    (dict(projection_dim=0), "projection_dim=0"),
])
def test_bad_parameters_are_named(linear_problem, params, match):
    model, X, y = linear_problem
    with pytest.raises(ValueError, match=match):
        TrainingTimePredictor(model, **params).fit(X, y)
