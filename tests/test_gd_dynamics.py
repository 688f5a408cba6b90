"""Gradient-descent dynamics against independent references (pure numpy: no torch)."""

import numpy as np
import pytest
from numpy.testing import assert_allclose

from conftest import run_discrete as simulate_discrete
from conftest import run_flow as solve_gradient_flow
from sktt.dynamics import (epsilon_training_time, loss_gradient, loss_value, mse_closed_form,
                           smooth_curve, threshold_training_time)
from sktt.dynamics._losses import cross_entropy_single, loss_value_and_gradient
from sktt.gram import ntk_eigh


def _problem(rng, n=12, c=3, d=30):
    J = rng.standard_normal((n * c, d)) / np.sqrt(d)
    F0 = rng.standard_normal((n, c))
    labels = rng.integers(0, c, n)
    return J @ J.T, F0, labels, np.eye(c)[labels]


def test_loss_gradient_matches_finite_differences(rng):
    F = rng.standard_normal((5, 3))
    labels = rng.integers(0, 3, 5)
    for loss, targets in [("cross_entropy", labels), ("mse", np.eye(3)[labels])]:
        g = loss_gradient(F, targets, loss)
        fd = np.zeros_like(F)
        for idx in np.ndindex(F.shape):
            e = np.zeros_like(F)
            e[idx] = 1e-6
            fd[idx] = (loss_value(F + e, targets, loss) - loss_value(F - e, targets, loss)) / 2e-6
        assert_allclose(g, fd, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("scale", [1.0, 400.0])  # the unshifted and the shifted forms
def test_cross_entropy_matches_torch_with_path_axes(rng, scale):
    """Value and gradient of the mean cross-entropy equal torch's (autograd) for outputs
    with leading path axes, labels shared by the paths or per path, at small logits and at
    logits large enough that exp(F) would overflow without the per-sample shift."""
    torch = pytest.importorskip("torch")
    F = rng.standard_normal((2, 4, 7, 5)) * scale
    for labels, F in ((rng.integers(0, 5, 7), F), (rng.integers(0, 5, (2, 4, 7)), F),
                      (rng.integers(0, 5, 7), np.asfortranarray(F))):  # any memory layout
        value, grad = loss_value_and_gradient(F, labels, "cross_entropy")
        Ft = torch.tensor(F, requires_grad=True)
        yt = torch.as_tensor(np.broadcast_to(labels, F.shape[:-1]).copy())
        ref = torch.nn.functional.cross_entropy(Ft.reshape(-1, 5), yt.reshape(-1),
                                                reduction="none").reshape(2, 4, 7).mean(-1)
        ref.sum().backward()
        assert_allclose(value, ref.detach().numpy(), rtol=1e-12, atol=1e-12)
        assert_allclose(grad, Ft.grad.numpy(), rtol=1e-12, atol=1e-15)
        assert_allclose(loss_value(F, labels, "cross_entropy"), value, rtol=0, atol=0)


@pytest.mark.parametrize("scale", [0.0, 1.0, 5.0, 400.0])
def test_single_precision_cross_entropy_is_within_its_error_bound(rng, scale):
    """The mean cross-entropy from float32 exponentials lies within its bound of the float64
    value, which stays small (a few 1e-6 plus 6e-8·max|F|); outputs past the float32 form's
    range (scale 400) are computed in float64, error 0. Labels shared by the paths or not."""
    F = rng.standard_normal((3, 2, 500, 10)) * scale
    for labels in (rng.integers(0, 10, 500), rng.integers(0, 10, (3, 2, 500))):
        value, error = cross_entropy_single(F, labels)
        exact = loss_value(F, labels, "cross_entropy")
        assert value.shape == error.shape == (3, 2)
        assert np.all(np.abs(value - exact) <= error)
        if scale < 30:
            assert np.all(error > 0) and np.all(error < 1e-5 + 1e-7 * np.abs(F).max())
            assert scale == 0 or np.any(value != exact)  # float32 rounding shows
        else:
            assert np.all(error == 0) and np.array_equal(value, exact)


def test_mse_closed_form_equals_lsoda(rng):
    ntk, F0, labels, Y = _problem(rng)
    w, v = ntk_eigh(ntk)
    closed = mse_closed_form(w, v, F0, Y, lr_eff=3.0, n_steps=80, labels=labels)
    ode = solve_gradient_flow(ntk, F0, Y, loss="mse", lr_eff=3.0, n_steps=80, labels=labels)
    assert closed["loss"][-1] < 0.5 * closed["loss"][0]
    assert_allclose(closed["loss"], ode["loss"], rtol=1e-6)
    assert_allclose(closed["error"], ode["error"])


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_ode_is_the_small_learning_rate_limit_of_discrete_gd(rng, loss):
    """At fixed horizon lr·T, the discrete GD curve converges to the flow as lr → 0."""
    ntk, F0, labels, Y = _problem(rng)
    targets = labels if loss == "cross_entropy" else Y
    horizon = 20.0
    gaps = []
    for lr in (1.0, 0.25, 0.0625):
        steps = int(horizon / lr)
        disc = simulate_discrete(ntk, F0, targets, loss=loss, lr=lr, momentum=0.0,
                                 n_steps=steps)["loss"][0]
        ode = solve_gradient_flow(ntk, F0, targets, loss=loss, lr_eff=lr, n_steps=steps)["loss"]
        gaps.append(np.abs(disc - ode).max())
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < gaps[0] / 10  # first-order convergence: 16x smaller lr, ~16x smaller gap


def test_momentum_flow_uses_effective_learning_rate(rng):
    """With momentum m, discrete heavy ball approaches the flow with lr/(1-m) as lr → 0."""
    ntk, F0, labels, Y = _problem(rng)
    lr, m = 0.01, 0.9
    disc = simulate_discrete(ntk, F0, Y, loss="mse", lr=lr, momentum=m, n_steps=400)["loss"][0]
    ode = solve_gradient_flow(ntk, F0, Y, loss="mse", lr_eff=lr / (1 - m), n_steps=400)["loss"]
    no_mom = solve_gradient_flow(ntk, F0, Y, loss="mse", lr_eff=lr, n_steps=400)["loss"]
    # after the ~1/(1-m)-step warm-up the effective-rate flow tracks the heavy ball
    assert np.abs(disc[100:] - ode[100:]).max() < 0.1 * np.abs(disc[100:] - no_mom[100:]).max()


def test_discrete_mse_gd_matches_spectral_recursion(rng):
    """Plain GD on MSE: r_t = (I - 2η/(NC) Θ)^t r_0, computed independently in the eigenbasis."""
    ntk, F0, labels, Y = _problem(rng)
    lr, steps = 2.0, 30
    w, v = np.linalg.eigh(ntk)
    proj = v.T @ (F0 - Y).ravel()
    n_rows = F0.size
    expected = [np.sum((proj * (1 - 2 * lr * w / n_rows) ** t) ** 2) / n_rows for t in range(steps + 1)]
    disc = simulate_discrete(ntk, F0, Y, loss="mse", lr=lr, momentum=0.0, n_steps=steps)["loss"][0]
    assert_allclose(disc, expected, rtol=1e-10)


def test_divergence_is_reported(rng):
    ntk, F0, labels, Y = _problem(rng)
    lam = np.linalg.eigvalsh(ntk).max()
    lr = 5 * F0.size / lam  # far beyond the 2/(2λ/NC) stability edge
    out = simulate_discrete(ntk, F0, Y, loss="mse", lr=lr, momentum=0.0, n_steps=2000)
    assert out["diverged_at"][0] > 0
    assert not np.isfinite(out["loss"][0, -1])


def test_epsilon_training_time_definition():
    curve = np.array([5.0, 3.0, 2.0, 1.5, 1.2, 1.1, 1.05, 1.0])
    assert epsilon_training_time(curve, 0.11) == 5  # |1.1 - 1.0| = 0.1 < 0.11 first at t=5
    assert epsilon_training_time(curve, 0.1) == 6  # strict inequality
    assert_allclose(epsilon_training_time(curve, [10.0, 0.21, 1e-9]), [0, 4, 7])
    paths = np.stack([curve, curve[::-1]])
    assert epsilon_training_time(paths, 0.5).tolist() == [4, 7]


def test_threshold_time_and_unreachable():
    curve = np.array([5.0, 3.0, 2.0, 1.5])
    assert threshold_training_time(curve, 2.0) == 2
    assert threshold_training_time(curve, 1.0) == -1
    assert threshold_training_time(curve, [3.5, 1.0]).tolist() == [1, -1]


def test_smoothing_keeps_constant_curves_and_averages_noise(rng):
    assert_allclose(smooth_curve(np.full(10, 2.0), 5), 2.0)
    noisy = 1.0 + 0.1 * rng.standard_normal(400)
    assert smooth_curve(noisy, 21).std() < noisy.std() / 3
