"""Open-loop stages: re-linearise at the predicted weights (issue 15).

References: a model linear in its parameters is its own linearisation at every
point, so the staged prediction equals the plain one to round-off; with a cut
after every step the staged prediction of a non-linear net *is* real full-batch
``torch.optim.SGD`` (every recipe term), so it equals
:func:`sktt.validation.run_real_training` to round-off.
"""

import functools
import warnings

import numpy as np
import pytest
import torch
from conftest import RandomFeatureHead, tiny_cnn
from numpy.testing import assert_allclose
from torch.optim.lr_scheduler import CosineAnnealingLR

from sktt import TrainingTimePredictor
from sktt.datasets import load_demo
from sktt.estimators import _relinearize
from sktt.estimators._relinearize import adaptive_cut, stage_boundaries
from sktt.validation import run_real_training

RECIPES = {
    "gd": dict(),
    "momentum-weight-decay": dict(momentum=0.8, weight_decay=0.03),
    "nesterov": dict(momentum=0.7, nesterov=True),
    "dampening-weight-decay": dict(momentum=0.6, dampening=0.3, weight_decay=0.02),
    "cosine": dict(momentum=0.5, lr_scheduler=functools.partial(CosineAnnealingLR, T_max=10)),
}


@pytest.fixture(scope="module")
def cnn_data():
    g = torch.Generator().manual_seed(2)
    X = torch.randn(10, 1, 6, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (10,), generator=g)
    return X, y


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_a_cut_after_every_step_is_real_gradient_descent(cnn_data, name):
    X, y = cnn_data
    model = tiny_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    T = 10
    ttp = TrainingTimePredictor(model, lr=0.5, n_steps=T, random_state=0, trust_check=False,
                                **RECIPES[name]).fit(X, y)
    staged = ttp.predict_curve(relinearize=T)
    staged_error = ttp.predict_curve("error", relinearize=T)
    real = run_real_training(model, X, y, lr=0.5, n_steps=T, **RECIPES[name])
    assert_allclose(staged, real.loss, rtol=0, atol=1e-9)
    assert_allclose(staged_error, real.error, rtol=0, atol=1e-9)
    plain = ttp.predict_curve()
    assert np.abs(plain - real.loss).max() > 1e-3  # the reference is not trivially linear
    for k, v in model.state_dict().items():  # the user's model is untouched
        assert torch.equal(v, before[k])


@pytest.mark.parametrize("batch_size", [None, 5])
@pytest.mark.parametrize("name", ["gd", "momentum-weight-decay", "nesterov"])
def test_linear_model_staged_equals_plain(name, batch_size):
    g = torch.Generator().manual_seed(1)
    X = torch.randn(24, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (24,), generator=g)
    recipe = {k: v for k, v in RECIPES[name].items()}
    ttp = TrainingTimePredictor(RandomFeatureHead(), lr=0.3, n_steps=20, batch_size=batch_size,
                                n_paths=3, random_state=0, **recipe).fit(X, y)
    plain = ttp.predict_curve(return_band=True).paths
    for k in (1, 4, 20):
        staged = ttp.predict_curve(relinearize=k, return_band=True).paths
        assert_allclose(staged, plain, rtol=0, atol=1e-12)
    report = ttp.trust_report(relinearize=4).relinearize
    assert report["stages"] == 4 and len(report["cut_points"]) == 4
    assert_allclose(report["kernel_trace_ratios"], 1.0, rtol=1e-10)
    assert report["curve_change"] < 1e-12


def test_auto_is_off_for_a_linear_model():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(24, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (24,), generator=g)
    ttp = TrainingTimePredictor(RandomFeatureHead(), lr=0.3, n_steps=20, random_state=0,
                                relinearize="auto").fit(X, y)
    assert_allclose(ttp.predict_curve(), ttp.predict_curve(relinearize=None), rtol=0, atol=0)
    info = ttp.trust_report().relinearize
    assert info["stages"] == 0 and info["auto_kernel_level"] == "ok"


def test_auto_turns_on_where_the_kernel_moves(cnn_data):
    X, y = cnn_data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ttp = TrainingTimePredictor(tiny_cnn(), lr=2.0, n_steps=30, random_state=0).fit(X, y)
        assert not ttp.trust_.ok
        ttp.predict_curve(relinearize="auto")
    info = ttp.trust_report(relinearize="auto").relinearize
    assert info["stages"] > 0 and info["auto_kernel_level"] != "ok"


@pytest.mark.parametrize("n_steps, k", [(100, 2), (100, 8), (10, 9), (10, 10), (5, 5), (50, 0)])
def test_stage_boundaries_are_increasing_and_inside(n_steps, k):
    cuts = stage_boundaries(n_steps, k)
    assert len(cuts) == k
    assert all(0 < a < b for a, b in zip(cuts, cuts[1:]))
    assert not cuts or (cuts[0] >= 1 and cuts[-1] <= n_steps)
    if k == n_steps:
        assert cuts == list(range(1, n_steps + 1))


def test_adaptive_linear_model_places_no_cut():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(24, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (24,), generator=g)
    for batch_size in (None, 5):
        ttp = TrainingTimePredictor(RandomFeatureHead(), lr=0.3, n_steps=20,
                                    batch_size=batch_size, n_paths=3, momentum=0.8,
                                    weight_decay=0.03, random_state=0).fit(X, y)
        plain = ttp.predict_curve(return_band=True).paths
        staged = ttp.predict_curve(relinearize=8, relinearize_tol=1e-6, return_band=True).paths
        assert_allclose(staged, plain, rtol=0, atol=1e-12)
        info = ttp.trust_report(relinearize=8, relinearize_tol=1e-6).relinearize
        # one probe (at the horizon) finds no kernel change: no cut, no extra kernel
        assert info["rule"] == "adaptive" and info["cut_points"] == [] and info["probes"] == 1


@pytest.mark.parametrize("change, tol, expected", [
    (lambda t: 0.01 * t, 0.1, 10),      # linear growth: the cut where the change reaches tol
    (lambda t: 0.0, 0.1, 100),          # no change: no cut, one probe
    (lambda t: np.inf, 0.1, 1),         # overflow everywhere: the next step
    (lambda t: 0.05 * (t - 40) if t > 40 else 0.0, 0.5, 50),
])
def test_adaptive_cut_rule(change, tol, expected):
    stop, probes = adaptive_cut(change, 0, 100, tol)
    assert stop == expected
    assert probes[0][0] == 100  # the horizon first: free where the kernel does not move
    if expected == 100:
        assert len(probes) == 1
    # from a later start the same rule, relative to the start
    stop, _ = adaptive_cut(lambda t: change(t - 30), 30, 130, tol)
    assert stop == expected + 30


def test_adaptive_cuts_on_a_nonlinear_net(cnn_data):
    """Tolerance below the per-step kernel change: a cut after every step, so every point
    but the last is real gradient descent; larger tolerances place fewer cuts."""
    X, y = cnn_data
    model = tiny_cnn()
    T = 12
    ttp = TrainingTimePredictor(model, lr=0.5, n_steps=T, momentum=0.5, random_state=0,
                                trust_check=False).fit(X, y)
    real = run_real_training(model, X, y, lr=0.5, momentum=0.5, n_steps=T)
    staged = ttp.predict_curve(relinearize=T, relinearize_tol=1e-4)
    info = ttp.trust_report(relinearize=T, relinearize_tol=1e-4).relinearize
    assert info["cut_points"] == list(range(1, T))
    assert_allclose(staged[:-1], real.loss[:-1], rtol=0, atol=1e-9)
    counts = []
    for tol in (0.02, 0.1, 0.5, 1e3):
        info = ttp.trust_report(relinearize=T, relinearize_tol=tol).relinearize
        cuts = info["cut_points"]
        assert all(a < b for a, b in zip([0] + cuts, cuts + [T])) and cuts[-1:] < [T]
        counts.append(len(cuts))
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1] == 0
    plain_err = np.abs(ttp.predict_curve() - real.loss).max()
    tight_err = np.abs(ttp.predict_curve(relinearize=T, relinearize_tol=0.02)
                       - real.loss).max()
    assert tight_err < 0.5 * plain_err


def test_auto_pays_nothing_on_a_good_case(monkeypatch):
    """The demo convnet at a moderate lr: the diagnostic (computed in fit) is ok, so
    relinearize="auto" is the plain prediction and computes no kernel or probe."""
    demo = load_demo(n_samples=60)
    ttp = TrainingTimePredictor(demo.model, lr=0.003, n_steps=60, random_state=0,
                                relinearize="auto").fit(demo.X, demo.y)
    assert ttp.trust_.ok

    def forbidden(*args, **kwargs):
        raise AssertionError("relinearize='auto' re-linearised a good case")

    monkeypatch.setattr(_relinearize, "linearize_at", forbidden)
    monkeypatch.setattr(_relinearize, "_KernelProbe", forbidden)
    calls = []
    monkeypatch.setattr(ttp, "_trust_for", lambda s, f=ttp._trust_for: calls.append(1) or f(s))
    auto = ttp.predict_curve()
    assert_allclose(auto, ttp.predict_curve(relinearize=None), rtol=0, atol=0)
    info = ttp.trust_report().relinearize
    assert info["stages"] == 0 and info["auto_kernel_level"] == "ok"
    assert len(ttp._trust_cache) == 1  # the diagnostic of fit, reused


@pytest.mark.parametrize("params, match", [
    (dict(relinearize_tol=0.0), r"relinearize_tol=0.0; accepted: None .* or a finite number > 0"),
    (dict(relinearize_tol=-1), r"relinearize_tol=-1; accepted"),
    (dict(relinearize_tol=float("inf")), r"relinearize_tol=inf; accepted"),
    (dict(relinearize_tol="small"), r"relinearize_tol='small'; accepted"),
    (dict(relinearize_tol=True), r"relinearize_tol=True; accepted"),
    (dict(relinearize=11), r"relinearize=11 exceeds n_steps=10"),
    (dict(relinearize="often"), r"relinearize='often'; accepted"),
    (dict(relinearize=2, refresh_steps=3), r"use one of them"),
    (dict(relinearize=2, solver="ode"), r"needs solver='discrete'"),
    (dict(relinearize=2, optimizer="adamw", lr=1e-3),
     r"relinearize is not supported with optimizer='adamw' \(yet\).*refresh_steps"),
])
def test_bad_relinearize(cnn_data, params, match):
    X, y = cnn_data
    ttp = TrainingTimePredictor(tiny_cnn(), lr=0.1, n_steps=10, random_state=0,
                                trust_check=False).fit(X, y)
    with pytest.raises(ValueError, match=match):
        ttp.predict_curve(**params)


# ---------------------------------------------------------------- held-out rows (eval_set)
@pytest.fixture(scope="module")
def cnn_eval_data():
    g = torch.Generator().manual_seed(5)
    X = torch.randn(6, 1, 6, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (6,), generator=g)
    return X, y


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_a_cut_after_every_step_is_real_gradient_descent_on_held_out_rows(cnn_data,
                                                                          cnn_eval_data, name):
    X, y = cnn_data
    eval_set = cnn_eval_data
    model = tiny_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    T = 10
    ttp = TrainingTimePredictor(model, lr=0.5, n_steps=T, random_state=0, trust_check=False,
                                **RECIPES[name]).fit(X, y, eval_set=eval_set)
    real = run_real_training(model, X, y, lr=0.5, n_steps=T, eval_set=eval_set, **RECIPES[name])
    assert_allclose(ttp.predict_curve(on="eval", relinearize=T), real.eval_loss, rtol=0,
                    atol=1e-9)
    assert_allclose(ttp.predict_curve("error", on="eval", relinearize=T), real.eval_error,
                    rtol=0, atol=1e-9)
    assert_allclose(ttp.predict_curve(relinearize=T), real.loss, rtol=0, atol=1e-9)
    plain = ttp.predict_curve(on="eval")
    assert np.abs(plain - real.eval_loss).max() > 1e-3  # the reference is not trivially linear
    for k, v in model.state_dict().items():  # the user's model is untouched
        assert torch.equal(v, before[k])


@pytest.mark.parametrize("batch_size", [None, 5])
@pytest.mark.parametrize("name", ["gd", "momentum-weight-decay", "nesterov"])
def test_linear_model_staged_held_out_curves_equal_plain(name, batch_size):
    g = torch.Generator().manual_seed(1)
    X = torch.randn(24, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (24,), generator=g)
    X_val = torch.randn(15, 6, generator=g, dtype=torch.float64)
    y_val = torch.randint(0, 3, (15,), generator=g)
    ttp = TrainingTimePredictor(RandomFeatureHead(), lr=0.3, n_steps=20, batch_size=batch_size,
                                n_paths=3, random_state=0, **RECIPES[name]).fit(
        X, y, eval_set=(X_val, y_val))
    for metric in ("loss", "error"):
        plain = ttp.predict_curve(metric, on="eval", return_band=True).paths
        for k in (1, 4, 20):
            staged = ttp.predict_curve(metric, on="eval", relinearize=k, return_band=True).paths
            assert_allclose(staged, plain, rtol=0, atol=1e-12 if metric == "loss" else 1e-9)


@pytest.mark.parametrize("restart", ["own", "mean"])
def test_sgd_paths_with_an_eval_set(cnn_data, cnn_eval_data, monkeypatch, restart):
    """SGD paths carry their held-out rows through the stages; the training curves are
    those of the same predictor fitted without an eval set."""
    monkeypatch.setattr(_relinearize, "SGD_RESTART", restart)
    X, y = cnn_data
    T, P = 12, 3
    params = dict(lr=0.5, n_steps=T, batch_size=4, n_paths=P, momentum=0.5, weight_decay=0.01,
                  random_state=0, trust_check=False)
    with_eval = TrainingTimePredictor(tiny_cnn(), **params).fit(X, y, eval_set=cnn_eval_data)
    without = TrainingTimePredictor(tiny_cnn(), **params).fit(X, y)
    for k in (2, 4):
        for metric in ("loss", "error"):
            band = with_eval.predict_curve(metric, on="eval", relinearize=k, return_band=True)
            assert band.paths.shape == (P, T + 1)
            assert np.all(np.isfinite(band.paths))
            train = with_eval.predict_curve(metric, relinearize=k, return_band=True).paths
            assert_allclose(train, without.predict_curve(metric, relinearize=k,
                                                         return_band=True).paths,
                            rtol=0, atol=1e-9)
        # the held-out curves move with the stages: not the plain ones
        assert np.abs(band.paths - with_eval.predict_curve(
            "error", on="eval", return_band=True).paths).max() + np.abs(
            with_eval.predict_curve(on="eval", relinearize=k)
            - with_eval.predict_curve(on="eval")).max() > 1e-6


@pytest.mark.parametrize("model", ["linear", "cnn"])
def test_dense_and_factored_staged_held_out_curves(cnn_data, cnn_eval_data, model):
    """ntk='factored' re-linearises with the held-out rows of the same projection: the
    staged held-out curves equal the dense ones. (Not the plain ones, even for a linear
    model: the stages move the weights by the exact Jacobian, the projected kernel only
    sketches it.)"""
    if model == "linear":
        g = torch.Generator().manual_seed(1)
        X, X_val = (torch.randn(n, 6, generator=g, dtype=torch.float64) for n in (20, 12))
        y, y_val = (torch.randint(0, 3, (n,), generator=g) for n in (20, 12))
        make = lambda: RandomFeatureHead(n_features=60)  # noqa: E731
    else:
        (X, y), (X_val, y_val) = cnn_data, cnn_eval_data
        make = tiny_cnn
    fits = {mode: TrainingTimePredictor(
        make(), n_steps=15, ntk=mode, lr=0.3, momentum=0.5, weight_decay=0.01,
        projection="countsketch", projection_dim=24, random_state=2, trust_check=False).fit(
        X, y, eval_set=(X_val, y_val)) for mode in ("dense", "factored")}
    assert fits["factored"].ntk_mode_ == "factored"
    for metric in ("loss", "error"):
        curves = {mode: fit.predict_curve(metric, on="eval", relinearize=4)
                  for mode, fit in fits.items()}
        assert curves["dense"].shape == (16,) and np.all(np.isfinite(curves["dense"]))
        assert_allclose(curves["factored"], curves["dense"], rtol=1e-6, atol=1e-8)


def test_a_cut_past_its_own_edge_is_refused(cnn_data, cnn_eval_data, monkeypatch):
    """A cut whose kernel puts the rest of the schedule past its own stability edge, where
    the linearised loss then rises, is refused (the current linearisation goes on):
    refusing every cut gives the plain prediction, held-out rows included; past the edge
    without a rise, the cut is taken."""
    X, y = cnn_data
    T = 10
    ttp = TrainingTimePredictor(tiny_cnn(), lr=0.5, n_steps=T, momentum=0.5, random_state=0,
                                trust_check=False).fit(X, y, eval_set=cnn_eval_data)
    info = ttp.trust_report(relinearize=4).relinearize
    assert info["refused_cuts"] == [] and len(info["cut_points"]) == 4
    ratios = info["stage_stability_ratios"]
    assert len(ratios) == 5 and all(0 < r < 1 for r in ratios)  # w0 and each cut
    ratio_at_w0 = ttp._stability(ttp.get_recipe(batch_size=None), sgd=False)
    assert_allclose(ratios[0], ratio_at_w0, rtol=1e-3)  # the fit's check, Lanczos to 1e-4
    plain = {on: ttp.predict_curve(on=on) for on in ("train", "eval")}
    staged = ttp.predict_curve(relinearize=3)
    monkeypatch.setattr(_relinearize._StagedRun, "stability", lambda *a: 1.5)  # all past
    ttp._cache.clear()
    assert_allclose(ttp.predict_curve(relinearize=3), staged, rtol=0, atol=1e-12)  # no rise
    assert ttp.trust_report(relinearize=3).relinearize["refused_cuts"] == []
    monkeypatch.setattr(_relinearize._StagedRun, "rises", lambda *a: True)
    ttp._cache.clear()
    for on in ("train", "eval"):
        assert_allclose(ttp.predict_curve(on=on, relinearize=3), plain[on], rtol=0, atol=1e-12)
    info = ttp.trust_report(relinearize=3).relinearize
    assert info["cut_points"] == [] and info["refused_cuts"] == [(t, 1.5) for t in
                                                                 stage_boundaries(T, 3)]
    assert info["stage_stability_ratios"] == [1.5]


def test_momentum_refresh_with_a_trainable_parameter_the_forward_never_uses():
    # torch's SGD keeps no momentum buffer for a parameter without gradient: the refresh
    # read it anyway ("KeyError: 'momentum_buffer'"); its share of the buffer is 0
    class WithSpare(RandomFeatureHead):
        def __init__(self):
            super().__init__()
            self.spare = torch.nn.Linear(12, 3, dtype=torch.float64)

    g = torch.Generator().manual_seed(0)
    X = torch.randn(20, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (20,), generator=g)
    model = WithSpare()
    ttp = TrainingTimePredictor(model, lr=0.1, momentum=0.9, weight_decay=0.01, n_steps=12,
                                random_state=0, trust_check=False).fit(X, y)
    real = run_real_training(model, X, y, lr=0.1, momentum=0.9, weight_decay=0.01, n_steps=12)
    assert_allclose(ttp.predict_curve(refresh_steps=3), real.loss, rtol=1e-9)
