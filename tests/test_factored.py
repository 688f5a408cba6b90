"""The factored kernel J̃ (never Θ = J̃J̃ᵀ) against the dense Θ̃ built from the same rows.

The sketch-space simulation (sktt.dynamics._factored) is the same recursion as the
dense one (sktt.dynamics._discrete) in other coordinates, so every curve, T_ε and
band must agree to round-off, for every recipe term.
"""

import os

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from sktt import TrainingTimePredictor
from sktt.dynamics import (LinearizedProblem, TrainingRecipe, check_batches,
                           epsilon_training_time, simulate, threshold_training_time,
                           training_times)
from sktt.exceptions import MemoryBudgetError
from sktt.gram import DenseKernel, FactoredKernel, _kernels, ntk_eigh

RECIPES = {
    "gd": dict(lr=0.5),
    "sgd": dict(lr=0.5, batch_size=8),
    "momentum": dict(lr=0.2, momentum=0.9, batch_size=8),
    "weight_decay": dict(lr=0.3, momentum=0.5, weight_decay=0.05, batch_size=8),
    "nesterov": dict(lr=0.2, momentum=0.8, nesterov=True, batch_size=8),
    "dampening": dict(lr=0.2, momentum=0.8, dampening=0.3, batch_size=8),
    "schedule": dict(lr=0.5, lr_schedule=True, batch_size=8),
    "gd_wd_nesterov": dict(lr=0.3, momentum=0.7, nesterov=True, weight_decay=0.02),
}


def _problem(rng, n, c, n_eval, loss, d):
    rows = rng.standard_normal(((n + n_eval) * c, d)).astype(np.float32) / np.sqrt(d)
    f0 = rng.standard_normal((n + n_eval, c))
    jw0 = rng.standard_normal((n + n_eval, c))
    if loss == "cross_entropy":
        y = rng.integers(0, c, n + n_eval)
        labels = y
    else:
        y = rng.standard_normal((n + n_eval, c))
        labels = np.argmax(y, axis=1)
    problem = LinearizedProblem(f0[:n], y[:n], loss, labels=labels[:n], jw0=jw0[:n],
                                eval_f0=f0[n:] if n_eval else None,
                                eval_targets=y[n:] if n_eval else None,
                                eval_labels=labels[n:] if n_eval else None,
                                eval_jw0=jw0[n:] if n_eval else None)
    train, held = rows[:n * c], rows[n * c:] if n_eval else None
    t64 = train.astype(np.float64)
    dense = DenseKernel(t64 @ t64.T, c,
                        cross=None if held is None else t64 @ held.astype(np.float64).T)
    # tiny blocks so that the blocked products cross many block boundaries
    factored = FactoredKernel(train, c, eval_rows=held, block_bytes=4096)
    return problem, dense, factored


def _recipe_and_batches(rng, name, n, T, n_paths):
    """The recipe ``RECIPES[name]`` over T steps (a schedule decays 0.5 → 0.05 over them) and,
    for minibatches, ``n_paths`` random batch sequences."""
    params = dict(RECIPES[name])
    schedule = None
    if params.pop("lr_schedule", False):  # a linear decay over the T steps
        schedule = list(np.linspace(0.5, 0.05, T))
    recipe = TrainingRecipe.from_params(dict(n_steps=T, solver="discrete", **params),
                                        learning_rates=schedule)
    batches = None
    if recipe.batch_size is not None:
        batches = check_batches([np.stack([rng.choice(n, recipe.batch_size, replace=False)
                                           for _ in range(n_paths)]) for _ in range(T)], n, T)
    return recipe, batches


@pytest.mark.parametrize("name", sorted(RECIPES))
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_factored_simulation_equals_dense(name, loss):
    rng = np.random.default_rng(0)
    n, c, n_eval, d, T = 24, 3, 7, 40, 40
    problem, dense, factored = _problem(rng, n, c, n_eval, loss, d)
    recipe, batches = _recipe_and_batches(rng, name, n, T, n_paths=3)
    a = simulate(dense, problem, recipe, batches=batches)
    b = simulate(factored, problem, recipe, batches=batches)
    for key in ("loss", "error", "eval_loss", "eval_error"):
        assert a[key] is not None and a[key].shape == b[key].shape
        assert_allclose(b[key], a[key], rtol=1e-9, atol=1e-10, err_msg=key)
    assert_allclose(b["diverged_at"], a["diverged_at"])


def _full_times(paths, values, kind):
    """The reference: training times on the full curves (every step computed)."""
    find = epsilon_training_time if kind == "eps" else threshold_training_time
    return find(paths.mean(axis=0), values), find(paths, values)


def _lazy_runs(seed, loss, name, *, n_eval=0, T=120, n_paths=3):
    """``run()`` simulating recipe ``name`` afresh (a lazy factored result) on a 30-sample,
    C = 3, D0 = 40 problem, and the full result of one such run."""
    rng = np.random.default_rng(seed)
    problem, _, factored = _problem(rng, 30, 3, n_eval, loss, 40)
    recipe, batches = _recipe_and_batches(rng, name, 30, T, n_paths=n_paths)

    def run():
        return simulate(factored, problem, recipe, batches=batches)

    return run, run()


@pytest.mark.parametrize("name", ["gd", "sgd", "momentum", "weight_decay", "schedule"])
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_bounded_training_times_equal_the_full_curves(name, loss):
    """T_ε and threshold times found through the convexity bounds (few steps computed) are
    the times of the full curves, for every ε / τ, the mean curve and every path, on the
    noisy (non-monotone) SGD curves and the held-out loss."""
    T = 120
    run, full = _lazy_runs(1, loss, name, n_eval=9, T=T, n_paths=4)
    lazy = run()
    for key in ("loss", "eval_loss"):
        paths = np.asarray(full[key])
        mean = paths.mean(axis=0)
        drop = abs(mean[0] - mean[-1])
        eps = drop * np.array([0.002, 0.01, 0.05, 0.2, 0.6])
        # levels half-way between attained values: no tie decided by round-off
        levels = np.unique(paths)
        mid = (levels[:-1] + levels[1:]) / 2
        taus = mid[np.linspace(0, len(mid) - 1, 5).astype(int)]
        for kind, values in (("eps", eps), ("threshold", taus)):
            times, path_times, first, last, finals = training_times(
                lazy, key, values, kind=kind, per_path=True)
            ref, ref_paths = _full_times(paths, values, kind)
            np.testing.assert_array_equal(times, ref, err_msg=f"{key} {kind}")
            np.testing.assert_array_equal(path_times, ref_paths, err_msg=f"{key} {kind} paths")
            assert_allclose([first, last], mean[[0, -1]], rtol=1e-12)
            assert_allclose(finals, paths[:, -1], rtol=1e-12)  # each path's L_T
            scalar = training_times(lazy, key, values[1], kind=kind)[0]
            assert scalar == ref[1] and np.ndim(scalar) == 0
    assert_allclose(lazy.at("loss", [0, 7, T]), np.asarray(full["loss"])[:, [0, 7, T]],
                    rtol=1e-12)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_refined_bounds_stay_below_the_curve(loss):
    """Every anchor added by ``refine`` only raises the bounds, which stay below the exact
    curve everywhere (weight decay and momentum: the state carries fixed directions) and
    meet it at the anchors up to the float32 round-off bounds; the refined values, and the
    values computed without a plane, lie within their error bars, which are small; on the
    training and the held-out loss."""
    run, full = _lazy_runs(4, loss, "weight_decay", n_eval=9, T=150)
    lazy = run()
    rng = np.random.default_rng(14)  # the steps to refine
    for key in ("loss", "eval_loss"):
        exact = np.asarray(full[key])
        before = lazy.loss_lower_bounds(key).copy()
        steps = rng.choice(151, 12, replace=False)
        values, errors = lazy.refine(key, steps)
        assert np.all(np.abs(values - exact[:, steps]) <= errors)
        assert np.all(errors > 0) and np.all(errors < 1e-4 * np.abs(exact[:, steps]))
        after = lazy.loss_lower_bounds(key)
        assert np.all(after >= before) and np.any(after > before + 1e-6)
        assert np.all(after <= exact + 1e-10)
        assert_allclose(after[:, steps], exact[:, steps], rtol=1e-4)
        others = np.setdiff1d(np.arange(151), steps)[::5]  # values without planes
        values, errors = lazy.approximate(key, others)
        assert np.all(np.abs(values - exact[:, others]) <= errors)
        assert np.all(errors > 0) and np.all(errors < 2e-4 * np.abs(exact[:, others]))
        assert np.array_equal(lazy.loss_lower_bounds(key), after)  # no anchor added


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_near_ties_are_decided_exactly(loss):
    """Thresholds and ε 1e-10 either side of an attained loss: the float32 error bars of
    the search straddle them, so the exact values decide, as on the full curve."""
    run, full = _lazy_runs(5, loss, "momentum", T=150)
    full = np.asarray(full["loss"])
    mean = full.mean(axis=0)
    for t in (5, 40, 90):
        for side in (-1, 1):
            lazy = run()
            tau = mean[t] + side * 1e-10
            eps = abs(mean[t] - mean[-1]) + side * 1e-10
            for kind, value in (("threshold", tau), ("eps", eps)):
                times, path_times, *_ = training_times(lazy, "loss", value, kind=kind,
                                                       per_path=True)
                ref, ref_paths = _full_times(full, value, kind)
                assert times == ref and np.array_equal(path_times, ref_paths), (t, side, kind)
            assert lazy._points("train")["known"].sum() > 2  # exact values beyond the ends


def test_float64_planes_where_float32_could_overflow():
    """States or outputs too large for float32 products: the planes are computed in float64
    (exact values, no error bars) and the search gives the full curve's times as before."""
    run, full = _lazy_runs(6, "cross_entropy", "sgd")
    full, lazy = np.asarray(full["loss"]), run()
    lazy._single_safe = False  # as if |z| or |F| could reach float32's range
    values, errors = lazy.refine("loss", [3, 50, 99])
    assert np.all(errors == 0)
    assert_allclose(values, full[:, [3, 50, 99]], rtol=1e-12)
    eps = abs(full.mean(axis=0)[0] - full.mean(axis=0)[-1]) * np.array([0.01, 0.1, 0.5])
    times, path_times, *_ = training_times(lazy, "loss", eps, kind="eps", per_path=True)
    ref, ref_paths = _full_times(full, eps, "eps")
    np.testing.assert_array_equal(times, ref)
    np.testing.assert_array_equal(path_times, ref_paths)
    assert not lazy._approx  # no float32 value was used


def _flat_noisy_run(seed=0, T=300, n_paths=3):
    """``run()`` simulating an SGD run whose mean loss is flat and noisy (a 16-dimensional
    sketch of 60 samples × 3 classes, lr 2, batches of 4: it falls by 8e-4 over 300 steps
    while consecutive steps differ by ~8e-3), and the full curves of one such run."""
    rng = np.random.default_rng(seed)
    n, c, d, b = 60, 3, 16, 4
    rows = rng.standard_normal((n * c, d)).astype(np.float32) / np.sqrt(d)
    y = rng.integers(0, c, n)
    problem = LinearizedProblem(0.1 * rng.standard_normal((n, c)), y, "cross_entropy",
                                labels=y)
    factored = FactoredKernel(rows, c, block_bytes=4096)
    recipe = TrainingRecipe.from_params(dict(n_steps=T, solver="discrete", lr=2.0,
                                             batch_size=b))
    batches = check_batches([np.stack([rng.choice(n, b, replace=False)
                                       for _ in range(n_paths)]) for _ in range(T)], n, T)

    def run():
        return simulate(factored, problem, recipe, batches=batches)

    return run, np.asarray(run()["loss"])


def _valued_only(lazy):
    """Steps whose loss the search computed as a value (no anchor, no exact value)."""
    points = lazy._points("train")
    return lazy._valued("train") & ~lazy._anchored["train"] & ~points["known"]


def test_flat_noisy_curve_is_searched_by_values():
    """A flat, noisy curve: the tangent planes stop ruling steps out, the search computes
    the open steps as values (no plane) and finds the full curve's times, for every ε and
    τ, on the mean curve and every path."""
    run, full = _flat_noisy_run()
    mean = full.mean(axis=0)
    drop = abs(mean[0] - mean[-1])
    levels = np.unique(full)
    mid = (levels[:-1] + levels[1:]) / 2
    for kind, values, n_values in (
            ("eps", drop * np.array([0.02, 0.05, 0.1, 0.3]), 200),
            ("threshold", mid[np.linspace(0, len(mid) - 1, 6).astype(int)], 20)):
        lazy = run()
        times, path_times, *_ = training_times(lazy, "loss", values, kind=kind,
                                               per_path=True)
        ref, ref_paths = _full_times(full, values, kind)
        np.testing.assert_array_equal(times, ref, err_msg=kind)
        np.testing.assert_array_equal(path_times, ref_paths, err_msg=kind)
        assert _valued_only(lazy).sum() > n_values, kind  # steps computed without a plane
    lazy = run()
    eps = 0.05 * drop
    assert training_times(lazy, "loss", eps, kind="eps")[0] == epsilon_training_time(mean, eps)
    values, errors = lazy.approximate("loss", np.flatnonzero(_valued_only(lazy)))
    exact = full[:, _valued_only(lazy)]
    assert np.all(np.abs(values - exact) <= errors) and np.all(errors < 1e-3 * exact)
    # at z = 0 the float32 products are exact: the float32 exponentials' bound is the error
    values, errors = run().approximate("loss", [0, 1, 150])
    assert np.all(np.abs(values - full[:, [0, 1, 150]]) <= errors) and np.all(errors > 0)
    assert np.any(values[:, 0] != full[:, 0])


def test_near_ties_between_values_are_decided_exactly():
    """ε and τ 1e-10 either side of the value of a step the search computes without a plane:
    its error bar straddles them, the exact value decides, as on the full curve (an error
    bar ignored, or a straddling step taken as failing or qualifying, gives another time)."""
    run, full = _flat_noisy_run()
    mean = full.mean(axis=0)
    probe = run()
    training_times(probe, "loss", 0.05 * abs(mean[0] - mean[-1]), kind="eps")
    valued = np.flatnonzero(_valued_only(probe))
    for t in valued[[0, len(valued) // 2, -1]]:
        for side in (-1, 1):
            eps = abs(mean[t] - mean[-1]) + side * 1e-10
            tau = mean[t] + side * 1e-10
            for kind, value in (("eps", eps), ("threshold", tau)):
                lazy = run()
                times, path_times, *_ = training_times(lazy, "loss", value, kind=kind,
                                                       per_path=True)
                ref, ref_paths = _full_times(full, value, kind)
                assert times == ref and np.array_equal(path_times, ref_paths), (t, side, kind)


def test_bounded_search_is_tight_on_a_smooth_curve():
    """Gradient descent: the bounds exclude all but a few steps before the crossing."""
    rng = np.random.default_rng(2)
    n, c, T = 40, 3, 400
    problem, _, factored = _problem(rng, n, c, 0, "cross_entropy", 50)
    recipe = TrainingRecipe.from_params(dict(n_steps=T, solver="discrete", lr=0.5))
    lazy = simulate(factored, problem, recipe)
    curve = np.asarray(simulate(factored, problem, recipe)["loss"])[0]
    eps = 0.05 * (curve[0] - curve[-1])
    times = training_times(lazy, "loss", eps, kind="eps")[0]
    assert times == epsilon_training_time(curve, eps)
    computed = round(lazy.computed_fraction * (T + 1))
    assert computed <= 17 + 8 + 16, computed  # the anchors and at most two chunks


def test_factored_curves_mapping_and_fallback():
    """The lazy result reads like every simulate result; outputs that may overflow fall back
    to the full curves and the dense divergence bookkeeping."""
    rng = np.random.default_rng(3)
    problem, dense, factored = _problem(rng, 10, 2, 0, "mse", 30)
    ok = simulate(factored, problem, TrainingRecipe.from_params(dict(n_steps=20, lr=0.1)))
    assert set(ok) == {"loss", "error", "eval_loss", "eval_error", "diverged_at"}
    assert ok["eval_loss"] is None and ok.at("eval_loss", [0]) is None
    ok["divergence"] = None
    assert "divergence" in ok and ok["divergence"] is None
    with pytest.raises(KeyError, match="computed from the stored states"):
        ok["loss"] = np.zeros(3)
    assert ok.certainly_finite and list(ok["diverged_at"]) == [-1]
    wild = TrainingRecipe.from_params(dict(n_steps=200, lr=1e4))
    a, b = simulate(dense, problem, wild), simulate(factored, problem, wild)
    assert not b.certainly_finite and a["diverged_at"][0] > 0
    assert_allclose(b["diverged_at"], a["diverged_at"])
    assert training_times(b, "loss", 1.0, kind="eps")[0] == training_times(
        a, "loss", 1.0, kind="eps")[0]


def test_factored_momentum_buffer_and_divergence():
    rng = np.random.default_rng(1)
    n, c = 20, 2
    problem, dense, factored = _problem(rng, n, c, 0, "mse", 30)
    buf = rng.standard_normal(n * c)
    recipe = TrainingRecipe.from_params(dict(lr=0.1, momentum=0.9, n_steps=30,
                                                  solver="discrete"))
    a = simulate(dense, problem, recipe, momentum_buffer=buf)
    b = simulate(factored, problem, recipe, momentum_buffer=buf)
    assert_allclose(b["loss"], a["loss"], rtol=1e-9)
    # far past the stability edge: both overflow at the same step
    wild = recipe.replace(lr=1e4, n_steps=200)
    a, b = simulate(dense, problem, wild), simulate(factored, problem, wild)
    assert a["diverged_at"][0] > 0
    assert_allclose(b["diverged_at"], a["diverged_at"])
    assert_allclose(b["loss"], a["loss"], rtol=1e-6)


def test_kernel_operations_match_dense():
    rng = np.random.default_rng(2)
    n, c = 30, 4
    _, dense, factored = _problem(rng, n, c, 5, "mse", 50)
    idx = rng.choice(n, 9, replace=False)
    assert_allclose(factored.block(idx), dense.block(idx), rtol=1e-12)
    v = rng.standard_normal(n * c)
    assert_allclose(factored.matvec(v), dense.ntk @ v, rtol=1e-10)
    g = rng.standard_normal((2, n * c))
    assert_allclose(factored.full_product(g), dense.full_product(g), rtol=1e-10, atol=1e-12)
    gb, ib = rng.standard_normal((2, 6, c)), np.stack([rng.choice(n, 6, replace=False)] * 2)
    assert_allclose(factored.batch_product(gb, ib), dense.batch_product(gb, ib), rtol=1e-10,
                    atol=1e-12)
    assert_allclose(factored.trace(), dense.trace(), rtol=1e-12)
    assert_allclose(factored.dense(), dense.ntk, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("width", [1, 5, 40])
def test_float64_blocks_reuse_one_buffer_and_give_exact_products(monkeypatch, dtype, width):
    """Stored rows copied to float64 in small blocks (a buffer of 2 samples' rows here,
    inside 64-byte-per-column ``row_blocks``): whole samples, every row once and in
    order, and the kernel's products through them equal those of the float64 rows."""
    monkeypatch.setattr(_kernels, "_COPY_BYTES", 2 * 3 * 8 * 7)
    rng = np.random.default_rng(4)
    n, n_eval, c, d = 11, 5, 3, 7
    rows = rng.standard_normal((n * c, d)).astype(dtype)
    eval_rows = rng.standard_normal((n_eval * c, d)).astype(dtype)
    kernel = FactoredKernel(rows, c, eval_rows, block_bytes=8 * 7 * 3 * 4)
    r64, e64 = rows.astype(np.float64), eval_rows.astype(np.float64)
    for part, is_eval in ((r64, False), (e64, True)):
        blocks = [(s, e, b.copy()) for s, e, b in kernel.float64_blocks(width, eval_rows=is_eval)]
        assert len(blocks) > 1 and all(s % c == 0 and e % c == 0 for s, e, _ in blocks)
        assert [s for s, _, _ in blocks] == [0] + [e for _, e, _ in blocks[:-1]]
        assert_allclose(np.concatenate([b for _, _, b in blocks]), part, rtol=0, atol=0)
    u, g = rng.standard_normal((width, d)), rng.standard_normal((width, n * c))
    assert_allclose(kernel.apply(u), u @ np.concatenate([r64, e64]).T, rtol=1e-13)
    assert_allclose(kernel.transpose_product(g), g @ r64, rtol=1e-13)
    assert_allclose(kernel.gram(), r64.T @ r64, rtol=1e-13)
    assert_allclose(kernel.trace(), np.square(r64).sum(), rtol=1e-13)
    assert_allclose(kernel.max_row_norm(eval_rows=True), np.linalg.norm(e64, axis=1).max())
    assert_allclose(kernel.abs_column_sums(), np.abs(r64).sum(axis=0), rtol=1e-13)
    assert not list(FactoredKernel(rows, c).float64_blocks(eval_rows=True))  # none held out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gather_refills_a_buffer_of_the_right_size_only(dtype):
    """``gather(idx, buffer=...)`` gives the rows of whole samples in float64 (repeated
    samples too), fills the buffer of an earlier call when its size fits (one array in a
    loop), and returns a fresh array, leaving the buffer alone, when it does not."""
    rng = np.random.default_rng(5)
    n, c, d = 9, 3, 4
    rows = rng.standard_normal((n * c, d)).astype(dtype)
    kernel = FactoredKernel(rows, c)
    per_sample = rows.astype(np.float64).reshape(n, c, d)
    first = kernel.gather(np.array([4, 0, 4]))
    assert first.dtype == np.float64 and first.shape == (9, d)
    assert_allclose(first, per_sample[[4, 0, 4]].reshape(9, d), rtol=0, atol=0)
    again = kernel.gather(np.array([8, 1, 2]), buffer=first)
    assert np.shares_memory(again, first)
    assert_allclose(first, per_sample[[8, 1, 2]].reshape(9, d), rtol=0, atol=0)
    paths = np.array([[3], [5], [3]])  # (P, b): the same size, another shape
    both = kernel.gather(paths, buffer=again)
    assert both.shape == (3, 3, d) and np.shares_memory(both, first)
    assert_allclose(both, per_sample[paths].reshape(3, 3, d), rtol=0, atol=0)
    kept = first.copy()
    fresh = kernel.gather(np.array([1, 2]), buffer=first)  # another size: a new array
    assert not np.shares_memory(fresh, first)
    assert_allclose(first, kept, rtol=0, atol=0)
    assert_allclose(fresh, per_sample[[1, 2]].reshape(6, d), rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(40, 3, 500), (200, 5, 100), (10, 2, 8)])
def test_lanczos_lambda_max_matches_eigh(shape):
    n, c, d = shape
    rng = np.random.default_rng(3)
    rows = (rng.standard_normal((n * c, d)) * np.linspace(3, 0.1, d)).astype(np.float32)
    r64 = rows.astype(np.float64)
    exact = ntk_eigh(r64 @ r64.T)[0][0]
    assert_allclose(FactoredKernel(rows, c).lambda_max, exact, rtol=1e-9)
    assert_allclose(DenseKernel(r64 @ r64.T, c).lambda_max, exact, rtol=1e-9)


@pytest.fixture(scope="module")
def demo():
    from sktt.datasets import load_demo

    return load_demo(n_samples=40)


@pytest.mark.parametrize("params", [dict(lr=0.05), dict(lr=0.005, batch_size=8, n_paths=3),
                                    dict(lr=0.001, momentum=0.9, nesterov=True, batch_size=8,
                                         weight_decay=0.01, n_paths=2)])
def test_estimator_dense_and_factored_agree(demo, params):
    common = dict(projection="countsketch", projection_dim=256, n_steps=30, random_state=0,
                  trust_check=False, **params)
    dense = TrainingTimePredictor(demo.model, ntk="dense", **common).fit(demo.X, demo.y)
    fact = TrainingTimePredictor(demo.model, ntk="factored", **common).fit(demo.X, demo.y)
    assert (dense.ntk_mode_, fact.ntk_mode_) == ("dense", "factored")
    assert "_eigh" not in vars(fact) and fact._kernel._eigh is None  # nothing decomposed
    assert_allclose(fact.projected_jacobian_, dense.projected_jacobian_)
    a, b = dense.predict_curve(return_band=True), fact.predict_curve(return_band=True)
    for key in ("mean", "lower", "upper", "paths"):
        assert_allclose(b[key], a[key], rtol=1e-9, err_msg=key)
    assert_allclose(fact.predict_curve("error"), dense.predict_curve("error"), rtol=1e-9)
    eps = [0.01, 0.05]
    assert_allclose(fact.predict_time(eps=eps), dense.predict_time(eps=eps))
    a = dense.predict_time(eps=0.01, return_distribution=True)
    b = fact.set_params(n_steps=30).predict_time(eps=0.01, return_distribution=True)
    assert a.point == b.point and np.array_equal(a.times, b.times)
    # a few steps only: computed alone on the factored run, read from the curve on the dense one
    fresh = TrainingTimePredictor(demo.model, ntk="factored", **common).fit(demo.X, demo.y)
    part = fresh.predict_curve(steps=[0, 7, 30], return_band=True)
    assert fresh._curves(fresh._setting({})).computed_fraction < 1
    assert_allclose(part.paths, dense.predict_curve(return_band=True).paths[:, [0, 7, 30]],
                    rtol=1e-9)
    for bad in ([], [[1]], [0.5], [31], [-1]):
        with pytest.raises(ValueError, match="steps"):
            fresh.predict_curve(steps=bad)
    # Θ on request equals the dense one; the spectrum is lazily computed
    assert_allclose(fact.ntk_, dense.ntk_, rtol=1e-12)
    assert_allclose(fact.eigenvalues_[:5], dense.eigenvalues_[:5], rtol=1e-9)


def test_trust_on_factored_form(demo):
    common = dict(projection="countsketch", projection_dim=256, n_steps=30, random_state=0,
                  lr=0.005, batch_size=8, n_paths=2)
    dense = TrainingTimePredictor(demo.model, ntk="dense", **common).fit(demo.X, demo.y)
    fact = TrainingTimePredictor(demo.model, ntk="factored", **common).fit(demo.X, demo.y)
    for attr in ("linearity_score_", "kernel_lambda_ratio_", "stability_ratio_"):
        assert_allclose(getattr(fact, attr), getattr(dense, attr), rtol=1e-6, err_msg=attr)
    assert fact.trust_.level == dense.trust_.level


def test_auto_mode_and_memory_errors(demo):
    ttp = TrainingTimePredictor(demo.model, projection="countsketch", projection_dim=64,
                                n_steps=50, trust_check=False, random_state=0)
    assert ttp.fit(demo.X, demo.y).ntk_mode_ == "dense"  # N·C <= 50·16: forming Θ pays
    assert ttp.set_params(n_steps=5).fit(demo.X, demo.y).ntk_mode_ == "factored"
    big = ttp.set_params(n_steps=50, max_memory=600_000)  # rows fit, Θ not in half the budget
    assert big.fit(demo.X, demo.y).ntk_mode_ == "factored"
    with pytest.raises(ValueError, match="ntk='factored'.*needs a projection"):
        TrainingTimePredictor(demo.model, ntk="factored").fit(demo.X, demo.y)
    with pytest.raises(ValueError, match="ntk"):
        TrainingTimePredictor(demo.model, ntk="sparse").fit(demo.X, demo.y)
    with pytest.raises(MemoryBudgetError, match=r"Θ for N=40 .*ntk='factored'.*GramSpectrum"):
        TrainingTimePredictor(demo.model, max_memory=1000).fit(demo.X, demo.y)
    with pytest.raises(MemoryBudgetError, match=r"projected Jacobian .*projection_dim"):
        TrainingTimePredictor(demo.model, projection="countsketch", projection_dim=64,
                              ntk="dense", max_memory=330_000).fit(demo.X, demo.y)
    # a prediction whose paths do not fit next to the rows
    fitted = TrainingTimePredictor(demo.model, projection="countsketch", projection_dim=64,
                                   ntk="factored", n_steps=5, trust_check=False,
                                   random_state=0).fit(demo.X, demo.y)
    fitted.set_params(max_memory=2 * 1024**2)
    with pytest.raises(MemoryBudgetError, match=r"paths × 100000 steps.*n_paths"):
        fitted.predict_curve(n_steps=100000, batch_size=4, n_paths=4)


def test_rows_beyond_the_budget_go_to_a_memmap(demo):
    common = dict(projection="countsketch", projection_dim=256, ntk="factored", n_steps=20,
                  lr=0.005, batch_size=8, n_paths=2, trust_check=False, random_state=0)
    ram = TrainingTimePredictor(demo.model, **common).fit(demo.X, demo.y)
    rows_bytes = ram.projected_jacobian_.nbytes
    disk = TrainingTimePredictor(demo.model, max_memory=int(1.5 * rows_bytes),
                                 **common).fit(demo.X, demo.y)
    assert isinstance(disk.projected_jacobian_, np.memmap)
    assert not isinstance(ram.projected_jacobian_, np.memmap)
    disk.set_params(max_memory=None)  # the prediction's paths need more than that tiny budget
    # the smaller budget changes the chunking, so rows can differ in their float32 rounding
    assert_allclose(disk.predict_curve(), ram.predict_curve(), rtol=1e-6)


def test_the_memmap_goes_to_temp_folder(demo, tmp_path):
    # the rows' memmap went to $TMPDIR only; a user directory (a large local disk) is a
    # parameter, and the file is unlinked at once there too
    common = dict(projection="countsketch", projection_dim=256, ntk="factored", n_steps=20,
                  lr=0.005, batch_size=8, n_paths=2, trust_check=False, random_state=0)
    n_outputs = demo.model(torch.as_tensor(demo.X[:1])).shape[1]
    rows_bytes = demo.X.shape[0] * n_outputs * 256 * 4  # N·C float32 rows of D0 = 256
    disk = TrainingTimePredictor(demo.model, max_memory=int(1.5 * rows_bytes),
                                 temp_folder=tmp_path, **common).fit(demo.X, demo.y)
    assert isinstance(disk.projected_jacobian_, np.memmap)
    assert os.path.dirname(disk.projected_jacobian_.filename) == str(tmp_path)
    assert os.listdir(tmp_path) == []  # unlinked as soon as mapped
    assert disk.get_params()["temp_folder"] == tmp_path


def _mlp_problem(n=400, c=4, d=8, seed=0):
    import torch

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(d, 16), torch.nn.ReLU(), torch.nn.Linear(16, c))
    rng = np.random.default_rng(seed)
    return model, rng.standard_normal((n, d)).astype(np.float32), rng.integers(0, c, n)


def test_a_dense_fit_stays_within_max_memory():
    import tracemalloc

    model, X, y = _mlp_problem()
    n_rows, dim = 400 * 4, 64
    theta, rows32, rows64 = n_rows**2 * 8, n_rows * dim * 4, n_rows * dim * 8
    common = dict(projection="countsketch", projection_dim=dim, ntk="dense", n_steps=5,
                  trust_check=False, random_state=0)
    # Θ, the float32 rows, the float64 copy Θ is formed from, and room for the chunks and
    # the kernel check's blocks (a few MiB): numpy's peak (what tracemalloc sees) stays
    # below the budget -- the kernel's check and symmetrisation make no copy of Θ
    budget = theta + rows32 + rows64 + 16 * 1024**2
    tracemalloc.start()
    try:
        fitted = TrainingTimePredictor(model, max_memory=budget, **common).fit(X, y)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert fitted.ntk_mode_ == "dense"
    assert peak <= budget, (peak, budget)
    # Θ and the float32 rows fit, but not the float64 copy next to them
    with pytest.raises(MemoryBudgetError, match=r"projected Jacobian .*float64 copy of the rows"
                                                r".*projection_dim.*ntk='factored'"):
        TrainingTimePredictor(model, max_memory=theta + rows32 + rows64 // 2,
                              **common).fit(X, y)


def test_a_prediction_counts_its_minibatch_orders():
    model, X, y = _mlp_problem(n=100)
    fitted = TrainingTimePredictor(model, projection="countsketch", projection_dim=32,
                                   ntk="dense", n_steps=5, trust_check=False,
                                   random_state=0).fit(X, y)
    # 200 paths × 2 000 steps of 16 indices: ~150 MiB of batch index arrays, next to a
    # few MiB of curves and solver state
    fitted.set_params(max_memory="64MiB")
    with pytest.raises(MemoryBudgetError, match=r"200 paths × 2000 steps.*minibatch orders "
                                                r"1\d\d\.\d MiB.*n_paths"):
        fitted.predict_curve(n_steps=2000, batch_size=16, n_paths=200)


def test_cached_predictions_stay_within_max_memory():
    from sktt.estimators._scale import cached_bytes, check_predict_memory

    model, X, y = _mlp_problem(n=100)
    ttp = TrainingTimePredictor(model, projection="countsketch", projection_dim=32, ntk="dense",
                                n_steps=200, batch_size=2, n_paths=50, lr=0.05,
                                trust_check=False, random_state=0).fit(X, y)
    _, need = check_predict_memory(ttp._kernel, ttp.get_recipe(), 50, 400, 2**40)
    budget = need + 400_000  # room for about two settings' cached curves (160 kB each)
    ttp.set_params(max_memory=budget)
    first = ttp.predict_curve(lr=0.01)
    for lr in np.linspace(0.015, 0.05, 8):
        ttp.predict_curve("error", lr=lr)
        # a grid of settings: the oldest cached curves make room for the next prediction
        held = sum(cached_bytes(v) for v in ttp._cache.values())
        latest = cached_bytes(ttp._cache[ttp._setting({"lr": lr}).key])
        assert held - latest <= budget - need, (held, latest, budget - need)
    assert len(ttp._cache) < 9
    assert_allclose(ttp.predict_curve(lr=0.01), first, rtol=0)  # recomputed alike


def test_a_long_factored_prediction_takes_smaller_blocks_within_max_memory():
    import tracemalloc

    model, X, y = _mlp_problem(n=100)
    common = dict(projection="countsketch", projection_dim=32, n_steps=1000, batch_size=10,
                  n_paths=8, lr=0.05, trust_check=False, random_state=0)
    dense = TrainingTimePredictor(model, ntk="dense", **common).fit(X, y)
    fact = TrainingTimePredictor(model, ntk="factored", **common).fit(X, y)
    # 8 008 stored states: the default 64 MiB blocks would need ~150 MiB; 32 MiB is
    # enough with smaller ones
    budget = 32 * 1024**2
    fact.set_params(max_memory=budget)
    tracemalloc.start()
    try:
        band = fact.predict_curve(return_band=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= budget, (peak, budget)
    assert_allclose(band.paths, dense.predict_curve(return_band=True).paths, rtol=1e-9)
    assert fact._kernel.block_bytes == 64 * 1024**2  # the fitted kernel is left as it was


def test_a_factored_fit_holds_its_chunks_rows_within_max_memory(monkeypatch):
    import weakref

    from sktt.gradients import _extraction

    alive = {"bytes": 0, "peak": 0}
    task = _extraction._chunk_rows_task

    def died(nbytes):
        alive["bytes"] -= nbytes

    def counted(*args, **kwargs):  # the bytes of the chunks' finished rows alive at once
        out = task(*args, **kwargs)
        rows = out[0] if isinstance(out, tuple) else out
        alive["bytes"] += rows.nbytes
        alive["peak"] = max(alive["peak"], alive["bytes"])
        weakref.finalize(rows, died, rows.nbytes)
        return out

    monkeypatch.setattr(_extraction, "_chunk_rows_task", counted)
    model, X, y = _mlp_problem()
    budget = 8 * 1024**2  # the rows (1 600 × 2 048 float32 = 12.5 MiB) go to a memmap
    fitted = TrainingTimePredictor(model, projection="countsketch", projection_dim=2048,
                                   ntk="factored", n_steps=5, trust_check=False,
                                   random_state=0, max_memory=budget).fit(X, y)
    assert isinstance(fitted.projected_jacobian_, np.memmap)
    # the chunks whose projected rows are held before they are written (4 at a time, 64 KiB
    # per sample in float64) take at most a quarter of the budget
    assert 0 < alive["peak"] <= budget // 4, alive
