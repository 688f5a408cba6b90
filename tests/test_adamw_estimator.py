"""AdamW through the estimator: exact vs real ``torch.optim.AdamW`` on a model linear in its
parameters, the approximate mode, the refresh with the real Adam state, and bad inputs named.
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
from sktt.dynamics import TrainingRecipe
from sktt.exceptions import LinearizationWarning
from sktt.validation import run_real_training

T = 25
LR = 0.05


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(5)
    X = torch.randn(24, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (24,), generator=g)
    return X, y


def _targets(y, loss):
    return y if loss == "cross_entropy" else torch.nn.functional.one_hot(y, 3).double()


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize("batch_size", [None, 5])
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
@pytest.mark.parametrize("scheduler", [None, "cosine"])
def test_adamw_prediction_equals_real_adamw(data, loss, batch_size, weight_decay, scheduler):
    X, y = data
    targets = _targets(y, loss)
    sched = functools.partial(CosineAnnealingLR, T_max=T) if scheduler else None
    recipe = dict(optimizer="adamw", lr=LR, betas=(0.8, 0.99), adam_eps=1e-7,
                  weight_decay=weight_decay, lr_scheduler=sched)
    model = RandomFeatureHead()
    ttp = TrainingTimePredictor(model, loss=loss, batch_size=batch_size, n_steps=T, n_paths=1,
                                random_state=0, trust_check=False, **recipe)
    ttp.fit(X, targets)
    curve = ttp.predict_curve()
    assert ttp.adamw_mode_ == "exact"
    real = run_real_training(model, X, targets, loss=loss, n_steps=T, batch_size=batch_size,
                             seed=ttp.dataloader_seed(0), **recipe)
    assert_allclose(curve, real.loss, rtol=1e-8, atol=0)
    assert_allclose(ttp.predict_curve(metric="error"), real.error, atol=1e-9)
    assert curve[-1] < 0.9 * curve[0]  # it trains: the comparison is not vacuous
    # the SGD prediction of the same lr is a different curve
    assert not np.allclose(ttp.predict_curve(optimizer="sgd"), curve, rtol=1e-3)


@pytest.mark.parametrize("batch_size", [None, 6])
def test_approximate_mode_is_close_not_exact(data, batch_size):
    X, y = data
    model = RandomFeatureHead()
    ttp = TrainingTimePredictor(model, optimizer="adamw", lr=LR, weight_decay=0.01,
                                batch_size=batch_size, n_steps=T, n_paths=1, random_state=0,
                                trust_check=False).fit(X, y)
    exact = ttp.predict_curve()
    with pytest.warns(LinearizationWarning, match="approximate mode.*docs/adamw.rst"):
        approx = ttp.predict_curve(adamw_mode="approximate")
    assert ttp.adamw_mode_ == "approximate"
    gap = np.abs(approx - exact).max() / (exact[0] - exact[-1])
    assert 1e-6 < gap < 0.25, gap
    report = ttp.trust_report(adamw_mode="approximate")
    assert report.adamw_mode == "approximate" and report.level == "doubtful"
    assert "approximate" in report.reason


def test_auto_mode_falls_back_to_the_approximation_beyond_max_memory(data):
    _, y = data
    X = torch.randn(24, 1, 6, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    # D = 30 + 392 + 27 weights, N·C = 72 rows: J is 258 624 bytes, its largest layer 225 792
    ttp = TrainingTimePredictor(tiny_cnn(), optimizer="adamw", lr=1e-2, n_steps=T,
                                trust_check=False).fit(X, y)
    ttp.set_params(max_memory=240_000)
    curve = ttp.predict_curve()
    assert curve[-1] < curve[0]
    assert ttp.adamw_mode_ == "approximate"
    with pytest.raises(Exception, match="adamw_mode='exact' keeps the exact Jacobian rows"):
        ttp.predict_curve(adamw_mode="exact")


def test_trust_report_of_the_exact_mode(data):
    X, y = data
    ttp = TrainingTimePredictor(RandomFeatureHead(), optimizer="adamw", lr=LR, n_steps=T,
                                random_state=0).fit(X, y)
    report = ttp.trust_
    assert report.adamw_mode == "exact"
    assert report.trace_ratio == pytest.approx(1.0, rel=1e-9)  # linear model: Θ constant
    assert report.relative_displacement > 0


@pytest.mark.parametrize("batch_size", [None, 6])
def test_refresh_carries_the_adam_state(data, batch_size):
    X, y = data
    model = RandomFeatureHead()
    ttp = TrainingTimePredictor(model, optimizer="adamw", lr=LR, weight_decay=0.02,
                                batch_size=batch_size, n_steps=T, n_paths=1, random_state=0,
                                trust_check=False).fit(X, y)
    plain = ttp.predict_curve()
    refreshed = ttp.predict_curve(refresh_steps=7)
    assert_allclose(refreshed, plain, rtol=1e-8)
    with pytest.raises(ValueError, match="need adamw_mode='exact'"):
        ttp.predict_curve(refresh_steps=7, adamw_mode="approximate")


def test_measure_step_time_with_adamw(data):
    X, y = data
    ttp = TrainingTimePredictor(RandomFeatureHead(), optimizer="adamw", lr=LR, n_steps=T,
                                trust_check=False).fit(X, y)
    ttp.measure_step_time(X, y, batch_size=8, n_repeats=2, n_warmup=1)
    assert ttp.predict_time(eps=0.05, unit="seconds", batch_size=8) >= 0


@pytest.mark.parametrize("params, error, match", [
    (dict(optimizer="adam"), ValueError, r"optimizer"),
    (dict(optimizer="adamw", momentum=0.9), ValueError, r"\['momentum'\].*torch.optim.SGD settings"),
    (dict(optimizer="adamw", nesterov=True, momentum=0.9), ValueError, r"SGD settings"),
    (dict(optimizer="adamw", betas=(0.9, 1.0)), ValueError, r"betas=\(0.9, 1.0\); accepted: a pair"),
    (dict(optimizer="adamw", betas=0.9), ValueError, r"betas=0.9; accepted"),
    # unordered: {0.999, 0.9} has no (beta1, beta2) order, a dict's keys are not values
    (dict(optimizer="adamw", betas={0.9, 0.999}), ValueError, r"betas=\{.*\}; accepted: a pair"),
    (dict(optimizer="adamw", betas={0.9: 0, 0.999: 1}), ValueError, r"betas=\{.*\}; accepted"),
    (dict(optimizer="adamw", adam_eps=0.0), ValueError, r"adam_eps"),
    (dict(optimizer="adamw", adamw_mode="fast"), ValueError, r"adamw_mode"),
    (dict(optimizer="adamw", solver="ode"), ValueError, r"solver='auto' or 'discrete'"),
])
def test_bad_adamw_parameters_are_named(data, params, error, match):
    X, y = data
    ttp = TrainingTimePredictor(RandomFeatureHead(), lr=0.1, n_steps=T, trust_check=False)
    with pytest.raises(error, match=match):
        ttp.set_params(**params).fit(X, y)


def test_sgd_only_helpers_refuse_adamw():
    recipe = TrainingRecipe.from_params({"optimizer": "adamw"})
    with pytest.raises(ValueError, match="optimizer='sgd' only"):
        recipe.stability_ratio(1.0)
    with pytest.raises(ValueError, match="optimizer='sgd' only"):
        recipe.effective_learning_rates()
    assert "adamw" in recipe.describe()


class _WithUnusedHead(RandomFeatureHead):
    """A second, trainable head the forward never calls (a multi-task checkpoint, a head
    kept for later): torch gives it no gradient and its optimiser keeps no state for it."""

    def __init__(self):
        super().__init__()
        self.spare = torch.nn.Linear(12, 3, dtype=torch.float64)


def test_trainable_parameter_unused_by_the_forward(data):
    # the approximate mode's squared gradients raised autograd's "appears to not have been
    # used in the graph", then its empty layer's 0/0 rescaling made the curve NaN; the exact
    # refresh read torch's missing Adam state ("KeyError: 'exp_avg'")
    X, y = data
    plain, spare = RandomFeatureHead(), _WithUnusedHead()
    kw = dict(optimizer="adamw", lr=LR, weight_decay=0.01, batch_size=5, n_steps=T,
              random_state=0, trust_check=False)
    for mode in ("approximate", "exact"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LinearizationWarning)  # "approximate mode"
            expected = TrainingTimePredictor(plain, adamw_mode=mode, **kw).fit(X, y)
            got = TrainingTimePredictor(spare, adamw_mode=mode, **kw).fit(X, y)
            assert_allclose(got.predict_curve(), expected.predict_curve(), rtol=1e-10)
    ttp = TrainingTimePredictor(spare, adamw_mode="exact", **kw).fit(X, y)
    real = run_real_training(spare, X, y, optimizer="adamw", lr=LR, weight_decay=0.01,
                             batch_size=5, n_steps=T, seed=ttp.dataloader_seed(0))
    assert_allclose(ttp.predict_curve(refresh_steps=3, n_paths=1), real.loss, rtol=1e-9)
