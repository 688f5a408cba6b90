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
from sktt.estimators._relinearize import stage_boundaries
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


@pytest.mark.parametrize("params, match", [
    (dict(relinearize=11), r"relinearize=11 exceeds n_steps=10"),
    (dict(relinearize="often"), r"relinearize='often'; accepted"),
    (dict(relinearize=2, refresh_steps=3), r"use one of them"),
    (dict(relinearize=2, solver="ode"), r"needs solver='discrete'"),
])
def test_bad_relinearize(cnn_data, params, match):
    X, y = cnn_data
    ttp = TrainingTimePredictor(tiny_cnn(), lr=0.1, n_steps=10, random_state=0,
                                trust_check=False).fit(X, y)
    with pytest.raises(ValueError, match=match):
        ttp.predict_curve(**params)
