"""The training recipe: every torch.optim.SGD term and LR schedule, exact in function space.

A model linear in its parameters is its own linearisation, so the discrete
prediction must equal real ``torch.optim.SGD`` (+ scheduler) training at every
step to round-off — for weight decay, Nesterov, dampening, cosine annealing and
a warm-up ``LambdaLR``, full batch and minibatch, cross-entropy and MSE.
"""

import functools

import numpy as np
import pytest
import torch
from conftest import RandomFeatureHead
from numpy.testing import assert_allclose
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, StepLR

from sktt import TrainingTimePredictor
from sktt.dynamics import TrainingRecipe, simulate
from sktt.training import scheduled_learning_rates
from sktt.validation import run_real_training

T = 25


def _warmup(opt):
    return LambdaLR(opt, lambda t: min(1.0, (t + 1) / 6))


RECIPES = {
    "weight-decay": dict(momentum=0.0, weight_decay=0.05),
    "momentum-weight-decay": dict(momentum=0.8, weight_decay=0.02),
    "nesterov": dict(momentum=0.7, nesterov=True),
    "nesterov-weight-decay": dict(momentum=0.9, nesterov=True, weight_decay=0.01),
    "dampening": dict(momentum=0.6, dampening=0.3),
    "dampening-weight-decay": dict(momentum=0.5, dampening=0.9, weight_decay=0.03),
    "cosine": dict(momentum=0.5, lr_scheduler=functools.partial(CosineAnnealingLR, T_max=T)),
    "warmup": dict(momentum=0.9, nesterov=True, weight_decay=0.01, lr_scheduler=_warmup),
    "step": dict(momentum=0.3, lr_scheduler=functools.partial(StepLR, step_size=7, gamma=0.5)),
    "explicit-rates": dict(lr_scheduler=np.linspace(0.4, 0.05, T)),
}


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(5)
    X = torch.randn(24, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (24,), generator=g)
    return X, y


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize("batch_size", [None, 5])
@pytest.mark.parametrize("name", sorted(RECIPES))
def test_discrete_prediction_equals_real_sgd_for_every_recipe_term(data, name, batch_size, loss):
    X, y = data
    targets = y if loss == "cross_entropy" else torch.nn.functional.one_hot(y, 3).double()
    recipe = RECIPES[name]
    lr = 0.3 if loss == "cross_entropy" else 0.2
    model = RandomFeatureHead()
    ttp = TrainingTimePredictor(model, loss=loss, lr=lr, batch_size=batch_size, n_steps=T,
                                n_paths=1, random_state=0, trust_check=False, **recipe)
    ttp.fit(X, targets)
    curve = ttp.predict_curve()
    error = ttp.predict_curve(metric="error")
    real = run_real_training(model, X, targets, loss=loss, lr=lr, n_steps=T,
                             batch_size=batch_size, seed=ttp.dataloader_seed(0), **recipe)
    assert_allclose(curve, real.loss, rtol=1e-10, atol=1e-13)
    assert_allclose(error, real.error, atol=1e-9)
    assert curve[-1] < curve[0]  # the recipe trains: the test is not vacuous


def test_terms_change_the_prediction(data):
    """Each term moves the curve (so the exactness above tests the term, not its absence)."""
    X, y = data
    ttp = TrainingTimePredictor(RandomFeatureHead(), lr=0.3, momentum=0.6, n_steps=T,
                                trust_check=False).fit(X, y)
    plain = ttp.predict_curve()
    for change in (dict(weight_decay=0.05), dict(nesterov=True), dict(dampening=0.5),
                   dict(lr_scheduler=functools.partial(CosineAnnealingLR, T_max=T))):
        assert np.max(np.abs(ttp.predict_curve(**change) - plain)) > 1e-4, change


def test_schedule_reads_torch_rates_exactly():
    rates = scheduled_learning_rates(0.1, functools.partial(CosineAnnealingLR, T_max=10), 12)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = CosineAnnealingLR(opt, T_max=10)
    expected = []
    for _ in range(12):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert_allclose(rates, expected, rtol=0, atol=0)
    assert scheduled_learning_rates(0.1, None, 5) is None


def test_ode_with_schedule_and_weight_decay_matches_its_definition(data):
    """MSE closed form with a schedule = LSODA on the same piecewise-constant flow."""
    X, y = data
    Y = torch.nn.functional.one_hot(y, 3).double()
    sched = functools.partial(StepLR, step_size=5, gamma=0.5)
    ttp = TrainingTimePredictor(RandomFeatureHead(), loss="mse", lr=0.2, momentum=0.5,
                                n_steps=T, lr_scheduler=sched, trust_check=False).fit(X, Y)
    closed = ttp.predict_curve(solver="ode")
    recipe = ttp.get_recipe(solver="ode")
    from sktt.dynamics import solve_gradient_flow

    lsoda = solve_gradient_flow(ttp._kernel, ttp._problem(recipe), recipe)["loss"]
    assert_allclose(closed, lsoda, rtol=1e-7)
    # a small constant lr: the discrete steps approach the flow (with weight decay)
    fine = dict(lr=0.002, n_steps=400, weight_decay=0.05, lr_scheduler=None, momentum=0.0)
    assert_allclose(ttp.predict_curve(solver="ode", **fine),
                    ttp.predict_curve(solver="discrete", **fine), rtol=2e-3)


@pytest.mark.parametrize("params, error, match", [
    (dict(nesterov=True), ValueError, r"nesterov=True needs momentum > 0 and dampening=0"),
    (dict(momentum=0.5, dampening=0.1, nesterov=True), ValueError, r"nesterov=True needs"),
    (dict(dampening=1.5), ValueError, r"dampening=1.5 is invalid; accepted: a number in \[0.0, 1.0\]"),
    (dict(weight_decay=-0.1), ValueError, r"weight_decay=-0.1 is invalid; accepted: a finite number >= 0"),
    (dict(nesterov="yes"), TypeError, r"nesterov must be a bool"),
    (dict(lr_scheduler=[0.1, 0.2]), ValueError, r"lr_scheduler as an array must be 1-D with at least n_steps=25"),
    (dict(lr_scheduler=np.full(T, -1.0)), ValueError, r"lr_scheduler holds learning rates outside"),
    (dict(lr_scheduler=lambda opt: 3), TypeError, r"lr_scheduler returned int"),
    # an instance (not a factory) was refused as "an array must be 1-D", naming no fix
    (dict(lr_scheduler=StepLR(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1), 3)),
     TypeError, r"lr_scheduler is a StepLR instance, bound to the optimizer .* accepted: a "
                r"factory taking the optimizer \(e.g. functools.partial\(StepLR, ...\)"),
    (dict(lr_scheduler=lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, 1.0, total_steps=40)),
     ValueError, r"lr_scheduler changes the momentum"),
])
def test_bad_recipe_parameters_are_named(data, params, error, match):
    X, y = data
    ttp = TrainingTimePredictor(RandomFeatureHead(), lr=0.1, n_steps=T, trust_check=False)
    with pytest.raises(error, match=match):
        ttp.set_params(**params).fit(X, y)


def test_recipe_is_hashable_and_validated_once():
    a = TrainingRecipe.from_params(dict(lr=0.1, momentum=0.9, nesterov=True, n_steps=10))
    b = TrainingRecipe.from_params(dict(lr=0.1, momentum=0.9, nesterov=True, n_steps=10))
    assert a == b and hash(a) == hash(b)
    assert a.replace(lr=0.2) != a
    assert_allclose(a.momentum_gain, 1.0 / (1 - 0.9))
    heavy = TrainingRecipe.from_params(dict(lr=1.0, momentum=0.5))
    nesterov = heavy.replace(nesterov=True)
    assert heavy.stability_ratio(2 * 1.5) == pytest.approx(1.0)  # η h = 2(1+m)
    assert nesterov.stability_ratio(2 * 1.5 / 2) == pytest.approx(1.0)  # edge 2(1+m)/(1+2m)
    with pytest.raises(TypeError, match=r"unexpected recipe parameter"):
        TrainingRecipe.from_params(dict(learning_rate=0.1))


def test_stability_edge_of_each_recipe_is_where_the_linear_recursion_diverges():
    """On a 1-D quadratic (Θ = h), the recipe's ratio 1 separates decay from growth."""
    from sktt.dynamics import LinearizedProblem
    from sktt.gram import DenseKernel

    h = 3.0  # MSE on one output: curvature 2/(NC)·Θ = 2·Θ/1 → Θ = h/2
    kernel = DenseKernel(np.array([[h / 2]]), 1)
    problem = LinearizedProblem(np.array([[1.0]]), np.array([[0.0]]), "mse",
                                jw0=np.array([[0.4]]))
    for params in (dict(momentum=0.0), dict(momentum=0.7), dict(momentum=0.7, nesterov=True),
                   dict(momentum=0.7, dampening=0.5), dict(momentum=0.5, weight_decay=0.2)):
        unit = TrainingRecipe.from_params(dict(params, lr=1.0, n_steps=400, solver="discrete"))
        edge_lr = 1.0 / unit.stability_ratio(h)
        for factor, grows in ((0.97, False), (1.03, True)):
            recipe = unit.replace(lr=factor * edge_lr)
            loss = simulate(kernel, problem, recipe)["loss"][0]
            assert (loss[-1] > loss[0]) == grows, (params, factor)
