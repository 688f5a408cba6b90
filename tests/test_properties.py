"""Property-based tests (hypothesis) of the pure-numpy parts."""

import warnings

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from numpy.testing import assert_allclose

from conftest import run_discrete as simulate_discrete
from sktt.dynamics import epsilon_training_time, threshold_training_time
from sktt.estimators._sgd import curve_band, time_distribution
from sktt.exceptions import InfeasibleTailError
from sktt.gram import (
    extrapolate_eigenvalues,
    extrapolated_exponent,
    fit_power_law,
    fit_projection_tail,
    select_fit_range,
)

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(curve=arrays(np.float64, st.integers(2, 60), elements=finite),
       eps=st.lists(st.floats(1e-6, 1e4), min_size=2, max_size=8))
def test_epsilon_time_is_non_increasing_in_eps(curve, eps):
    eps = np.sort(np.array(eps))
    times = epsilon_training_time(curve, eps)
    assert np.all(np.diff(times) <= 0)
    assert np.all((times >= 0) & (times <= len(curve) - 1))
    # definition: within eps at T_eps, not within eps just before... only the first hit counts
    for e, t in zip(eps, times):
        assert abs(curve[t] - curve[-1]) < e
        assert np.all(np.abs(curve[:t] - curve[-1]) >= e)


@settings(max_examples=100, deadline=None)
@given(curve=arrays(np.float64, st.integers(2, 40), elements=finite), level=finite)
def test_threshold_time_is_first_crossing_or_minus_one(curve, level):
    t = threshold_training_time(curve, level)
    if t < 0:
        assert np.all(curve > level)
    else:
        assert curve[t] <= level and np.all(curve[:t] > level)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 8), c=st.integers(1, 4),
       d=st.integers(1, 40), frac=st.floats(0.01, 0.99))
def test_mse_gd_below_the_stability_edge_never_increases_the_loss(seed, n, c, d, frac):
    rng = np.random.default_rng(seed)
    J = rng.standard_normal((n * c, d))
    ntk = J @ J.T
    lam = np.linalg.eigvalsh(ntk).max()
    # GD on MSE: r <- (I - 2η/(NC) Θ) r; monotone while 2η/(NC)·λ_max < 1
    lr = frac * n * c / (2 * lam)
    F0, Y = rng.standard_normal((n, c)), rng.standard_normal((n, c))
    loss = simulate_discrete(ntk, F0, Y, loss="mse", lr=lr, momentum=0.0, n_steps=30)["loss"][0]
    assert np.all(np.diff(loss) <= 1e-12 * loss[0])


# ---------------------------------------------------------------------- power laws and bands
@settings(max_examples=100, deadline=None)
@given(log_c=st.floats(-6, 6), s=st.floats(0.05, 4.0), m=st.integers(8, 400),
       lo_frac=st.floats(0.0, 0.5), noise_seed=st.integers(0, 2**32 - 1))
def test_power_law_fit_recovers_planted_parameters(log_c, s, m, lo_frac, noise_seed):
    c = 10.0 ** log_c
    k = np.arange(1, m + 1, dtype=np.float64)
    lam = c * k ** -s
    k_lo = 1 + int(lo_frac * (m - 2))
    c_hat, s_hat = fit_power_law(lam, k_lo, m)
    assert_allclose([np.log(c_hat), s_hat], [np.log(c), s], rtol=1e-8, atol=1e-8)
    # the auto range lies inside the positive spectrum and the fit holds there too
    lo, hi = select_fit_range(lam, n_outputs=1)
    assert 1 <= lo < hi <= m
    assert_allclose(fit_power_law(lam, lo, hi), (c, s), rtol=1e-7)
    # multiplicative noise of 1 % moves the exponent by little
    rng = np.random.default_rng(noise_seed)
    _, s_noisy = fit_power_law(lam * np.exp(0.01 * rng.standard_normal(m)), 1, m)
    assert abs(s_noisy - s) < 0.05
    # N = N0: no extrapolation; the exponent correction vanishes and the law is kept
    assert extrapolated_exponent(s, 0.15, m, m) == s
    out = extrapolate_eigenvalues(lam, coef=c, exponent=s, new_exponent=s, k_lo=1, scale=1.0,
                                  n_components=m)
    assert_allclose(out, lam, rtol=1e-10)


@settings(max_examples=150, deadline=None)
@given(head=arrays(np.float64, st.integers(0, 30), elements=st.floats(1e-6, 1e3)),
       anchor=st.floats(1e-6, 1e3), extra=st.floats(1e-3, 1e4), k0=st.integers(1, 50),
       tail_len=st.integers(2, 3000))
@example(head=np.ones(30), anchor=1.0, extra=1e-3, k0=31, tail_len=922)  # underflows
def test_projection_tail_meets_its_constraints(head, anchor, extra, k0, tail_len):
    head = head[:k0 - 1]
    k0 = head.size + 1
    n = k0 + tail_len - 1
    total = head.sum() + anchor * (1.0 + extra)  # feasible: the tail target exceeds the anchor
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a tail that must grow (b < 0) warns
        tail, a, b = fit_projection_tail(head, anchor, total, k0=k0, n_components=n)
    assert tail.shape == (n - k0 + 1,)
    assert_allclose(tail[0], anchor, rtol=1e-12)  # p̂_k0 = anchor
    assert_allclose(head.sum() + tail.sum(), total, rtol=1e-9)  # Σ p̂_k = ‖δy‖²
    steps = np.diff(tail)
    assert np.all(steps <= 0) if b >= 0 else np.all(steps >= 0)  # a monotone power law
    k = np.arange(k0, n + 1, dtype=np.float64)
    reference = anchor * (k / k0) ** -b
    assert_allclose(tail, reference, rtol=1e-9)
    # positive wherever float64 can hold the value (a steep tail underflows to 0, as its
    # reference does: b ≈ 218 over k/k0 up to 31 in the example above)
    assert np.all(tail >= 0) and np.all(tail[reference > 0] > 0)
    normal = np.abs(b * np.log(k)) < 650  # k**-b neither overflows nor goes subnormal
    if np.isfinite(a) and a > 0:  # the (a, b) form, to the round-off of k**-b for steep b
        assert_allclose(tail[normal], a * k[normal] ** -b, rtol=1e-7 * max(1.0, abs(b)))
    # a target at or below head + anchor has no solution, and says so
    with pytest.raises(InfeasibleTailError):
        fit_projection_tail(head, anchor, head.sum() + anchor * 0.999, k0=k0, n_components=n)


@settings(max_examples=150, deadline=None)
@given(paths=arrays(np.float64, st.tuples(st.integers(1, 12), st.integers(1, 30)),
                    elements=st.floats(-1e6, 1e6)),
       lo=st.floats(0.0, 0.5), hi=st.floats(0.5, 1.0))
def test_bands_are_ordered(paths, lo, hi):
    # a band's levels straddle the median (lower <= 0.5 <= upper); lower < upper
    if lo == hi:
        lo = 0.0
    band = curve_band(paths, (lo, hi))
    tol = 1e-9 * (1.0 + np.abs(paths).max())
    assert np.all(paths.min(0) - tol <= band.lower)
    assert np.all(band.lower <= band.median + tol) and np.all(band.median <= band.upper + tol)
    assert np.all(band.upper <= paths.max(0) + tol)
    assert np.all(paths.min(0) - tol <= band.mean) and np.all(band.mean <= paths.max(0) + tol)
    wider = curve_band(paths, (0.0, 1.0))  # the widest band holds every band
    assert np.all(wider.lower <= band.lower + tol) and np.all(band.upper <= wider.upper + tol)
    times = np.round(np.abs(paths[:, :3])).astype(np.int64) - 1  # -1 = never reached
    dist = time_distribution(times, (lo, hi), point=0)
    assert np.all(dist.lower <= dist.median) and np.all(dist.median <= dist.upper)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), b=st.integers(1, 5), momentum=st.floats(0.0, 0.9),
       q=st.floats(0.0, 0.45))
def test_simulated_sgd_bands_are_ordered(seed, b, momentum, q):
    from sktt.dynamics import check_batches

    rng = np.random.default_rng(seed)
    n, c, paths, steps = 6, 2, 5, 12
    J = rng.standard_normal((n * c, 8))
    ntk = J @ J.T
    lr = 0.5 * n * (1 + momentum) / np.linalg.eigvalsh(ntk).max()
    batches = check_batches([np.stack([rng.choice(n, b, replace=False) for _ in range(paths)])
                             for _ in range(steps)], n, steps)
    out = simulate_discrete(ntk, rng.standard_normal((n, c)), rng.integers(0, c, n),
                            loss="cross_entropy", lr=lr, momentum=momentum, n_steps=steps,
                            batches=batches, labels=rng.integers(0, c, n))
    for key in ("loss", "error"):
        band = curve_band(out[key], (q, 1 - q))
        assert np.all(band.lower <= band.median + 1e-12)
        assert np.all(band.median <= band.upper + 1e-12)
