"""Numerics: rank-deficient kernels, LSODA failures and divergent settings (docs/reliability.rst).

References are independent: duplicating every sample leaves full-batch training
unchanged (same mean loss, same gradient), a model linear in its parameters trains
exactly as its linearisation, and MSE gradient descent diverges exactly past
η·λ_max(HΘ)/(2(1+m)) = 1 with H = 2I/(N·C).
"""

import copy
import warnings

import numpy as np
import pytest
import torch
from conftest import RandomFeatureHead
from numpy.testing import assert_allclose

from sktt import TrainingTimePredictor
from conftest import run_flow as solve_gradient_flow
from sktt.exceptions import DivergenceError, DivergenceWarning, SolverError, SpectrumWarning
from sktt.gram import ntk_eigh


def _data(n=12):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,),
                                                                             generator=g)


def _real_gd(model, X, y, lr, n_steps, loss="cross_entropy"):
    net = copy.deepcopy(model)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    fn = torch.nn.functional.cross_entropy if loss == "cross_entropy" else \
        torch.nn.functional.mse_loss
    out = []
    for _ in range(n_steps + 1):
        opt.zero_grad()
        value = fn(net(X), y)
        out.append(value.item())
        value.backward()
        opt.step()
    return np.array(out)


def _fit(model, X, y, **kw):
    kw.setdefault("trust_check", False)
    return TrainingTimePredictor(model, **kw).fit(X, y)


# ---------------------------------------------------------------------- rank-deficient Θ
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_duplicated_samples_end_to_end(loss):
    """Every sample twice: Θ has rank <= half its size, and nothing changes for GD."""
    X, y = _data()
    model = RandomFeatureHead()  # linear in its parameters: the prediction is exact
    if loss == "mse":
        y = torch.nn.functional.one_hot(y, 3).double()
    X2, y2 = torch.cat([X, X]), torch.cat([y, y])
    lr = 0.5 if loss == "cross_entropy" else 0.2
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpectrumWarning)  # round-off negatives: clipped silently
        single = _fit(model, X, y, loss=loss, lr=lr, n_steps=40)
        double = _fit(model, X2, y2, loss=loss, lr=lr, n_steps=40)
    n_rows = double.ntk_.shape[0]
    assert np.all(double.eigenvalues_ >= 0)
    rank = int(np.sum(double.eigenvalues_ > 1e-10 * double.eigenvalues_[0]))
    assert rank <= min(n_rows // 2, double.n_params_)  # duplicated rows, and N·C > D here
    assert np.sum(double.eigenvalues_ == 0.0) > 0  # clipped to exactly 0
    # the mean loss and its gradient are those of the single copy: same curves
    assert_allclose(double.predict_curve(), single.predict_curve(), rtol=1e-10)
    assert_allclose(double.predict_curve(), _real_gd(model, X2, y2, lr, 40, loss), rtol=1e-10)
    assert double.predict_time(1e-3) == single.predict_time(1e-3)
    # SGD on the duplicated set and the ODE run and stay finite
    assert np.all(np.isfinite(double.predict_curve(batch_size=6, n_paths=3)))
    assert np.all(np.isfinite(double.predict_curve(solver="ode")))


def test_negative_round_off_beyond_the_warning_threshold_is_clipped_with_a_warning():
    X, y = _data()
    ttp = _fit(RandomFeatureHead(), X, y)
    w, v = ttp.eigenvalues_, ttp.eigenvectors_
    bent = w.copy()
    bent[-3:] = -1e-8 * w[0]  # three modes pushed to -1e-8 λ_max: past the warning threshold
    with pytest.warns(SpectrumWarning, match="clipped negative eigenvalues"):
        w2, _ = ntk_eigh((v * bent) @ v.T)
    assert_allclose(w2[-3:], 0.0, atol=0)
    assert_allclose(w2[:-3], w[:-3], rtol=1e-8)
    with pytest.raises(ValueError, match="beyond round-off"):  # -1e-5 λ_max is not round-off
        bent[-3:] = -1e-5 * w[0]
        ntk_eigh((v * bent) @ v.T)


# ---------------------------------------------------------------------- LSODA failure
class _FailedSolution:
    success = False
    message = "Excess work done on this call (perhaps wrong Dfun type)."
    t = np.array([0.0, 1.0, 2.0])
    y = np.zeros((1, 3))


def test_lsoda_failure_is_reported_with_advice(monkeypatch):
    import sktt.dynamics._ode as ode

    monkeypatch.setattr(ode, "solve_ivp", lambda *a, **k: _FailedSolution())
    rng = np.random.default_rng(0)
    J = rng.standard_normal((6, 10))
    with pytest.raises(SolverError, match=r"LSODA failed after t=2 of 10 steps: Excess work "
                                          r"done.*try solver='discrete', a smaller lr"):
        solve_gradient_flow(J @ J.T, rng.standard_normal((3, 2)), np.array([0, 1, 0]),
                            loss="cross_entropy", lr_eff=0.1, n_steps=10)
    # through the estimator: a clear error, no partial curve cached
    X, y = _data()
    ttp = _fit(RandomFeatureHead(), X, y, solver="ode", n_steps=10)
    with pytest.raises(SolverError, match="try solver='discrete'"):
        ttp.predict_curve()
    with pytest.raises(SolverError, match="try solver='discrete'"):
        ttp.predict_time(0.01)
    monkeypatch.undo()
    curve = ttp.predict_curve()  # the failure was not cached
    assert curve.shape == (11,) and np.all(np.isfinite(curve))


def test_lsoda_non_finite_solution_is_a_failure(monkeypatch):
    import sktt.dynamics._ode as ode

    class _NaN(_FailedSolution):
        success = True
        t = np.arange(11.0)
        y = np.full((6, 11), np.nan)

    monkeypatch.setattr(ode, "solve_ivp", lambda *a, **k: _NaN())
    rng = np.random.default_rng(0)
    J = rng.standard_normal((6, 10))
    with pytest.raises(SolverError, match="LSODA failed"):
        solve_gradient_flow(J @ J.T, rng.standard_normal((3, 2)), np.array([0, 1, 0]),
                            loss="cross_entropy", lr_eff=0.1, n_steps=10)


# ---------------------------------------------------------------------- divergence
@pytest.fixture(scope="module")
def mse_fit():
    X, y = _data()
    Y = torch.nn.functional.one_hot(y, 3).double()
    return _fit(RandomFeatureHead(), X, Y, loss="mse", n_steps=20)


@pytest.mark.parametrize("solver", ["discrete", "ode"])
def test_mse_gd_past_the_edge_is_divergent_even_before_it_shows(mse_fit, solver):
    ttp = mse_fit
    n_rows = ttp.n_samples_ * ttp.n_outputs_
    edge = n_rows / ttp.eigenvalues_[0]  # η·(2λ/(NC))/2 = 1
    for momentum in (0.0, 0.5):
        below, above = 0.95 * edge * (1 + momentum), 1.05 * edge * (1 + momentum)
        t = ttp.predict_time(1e-3, lr=below, momentum=momentum, solver=solver)
        assert 0 <= t <= 20
        if momentum == 0:
            with pytest.warns(DivergenceWarning, match="past its stability edge"):
                curve = ttp.predict_curve(lr=above, solver="discrete", n_steps=8)
            assert curve[-1] < curve[0]  # 8 steps do not show the growth yet ...
        with pytest.raises(DivergenceError, match=r"past (its|the) stability edge \(η·λ_max"
                                                  r"\(HΘ\)/\(2\(1\+m\)\) = 1.05"):
            ttp.predict_time(1e-3, lr=above, momentum=momentum, solver=solver, n_steps=8)
        with pytest.warns(DivergenceWarning, match="diverges"):
            ttp.predict_curve(lr=above, momentum=momentum, solver=solver)


@pytest.fixture(scope="module")
def ce_fit():
    # N·C = 72 > D = 39: the classes are not separable by the linear model, so a huge lr
    # makes the loss grow (with N = 12 it would reach 0 -- exactly, as the real model does)
    X, y = _data(24)
    return _fit(RandomFeatureHead(), X, y, n_steps=15, random_state=0)


@pytest.mark.parametrize("setting", [
    dict(solver="discrete"),
    dict(solver="discrete", batch_size=4),
    dict(solver="ode"),  # the flow converges; gradient descent does not
    dict(solver="sde", batch_size=4, sde_noise="full"),
    dict(solver="sde"),
    dict(solver="discrete", refresh_steps=3),  # real steps, then the linearised rest
], ids=["gd", "sgd", "ode", "sde", "sde-full-batch", "refresh"])
def test_cross_entropy_far_past_the_edge_is_reported_as_divergent(ce_fit, setting):
    with pytest.raises(DivergenceError, match="diverges, so no training time exists"):
        ce_fit.predict_time(0.01, lr=1e4, **setting)
    with pytest.warns(DivergenceWarning, match="the predicted training diverges"):
        ce_fit.predict_curve(lr=1e4, **setting)
    assert ce_fit.predict_time(0.05, lr=0.5, **setting) >= 0  # a sane lr is fine


def test_sgd_noise_floor_is_not_divergence():
    """At the minimum, SGD's noise lifts the mean loss above L_0: below the edge that is
    the noise floor, not divergence."""
    X, y = _data()
    model = RandomFeatureHead()
    Y = model(X).detach()  # targets = outputs: L_0 = 0 exactly for MSE
    Y = Y + 1e-3 * torch.randn(Y.shape, generator=torch.Generator().manual_seed(0),
                               dtype=Y.dtype)
    ttp = _fit(model, X, Y, loss="mse", n_steps=30, random_state=0)
    edge = ttp.n_samples_ * ttp.n_outputs_ / ttp.eigenvalues_[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DivergenceWarning)
        curve = ttp.predict_curve(lr=0.3 * edge, batch_size=2, n_paths=4)
    assert np.all(np.isfinite(curve))
    assert ttp.predict_time(1e-6, lr=0.3 * edge, batch_size=2, n_paths=4) >= 0
