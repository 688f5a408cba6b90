"""Trust diagnostic and closed-loop refresh (issue 9).

References: exact cases (a model linear in its parameters has a constant kernel,
so its trust ratios are exactly 1 and its refreshed curve equals the plain
prediction), a deliberately non-linear model whose kernel grows with its weights,
and real ``torch.optim.SGD`` runs (:func:`sktt.validation.run_real_training`)
for the measured part of a refreshed curve.
"""

import copy
import pickle
import warnings

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal

from sktt import TrainingTimePredictor
from sktt.datasets import load_demo
from sktt.exceptions import LinearizationWarning
from sktt.validation import run_real_training



class ScaledHead(torch.nn.Module):
    """Deliberately non-linear in its parameters: f(x) = (a·s) W x with a small trainable gain a.

    The Jacobian with respect to W is proportional to a, so as training grows a
    the kernel grows quadratically: the fixed-kernel prediction is too slow.
    """

    def __init__(self, n_in=5, n_out=3, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = torch.nn.Parameter(torch.randn(n_out, n_in, generator=g, dtype=torch.float64))
        self.a = torch.nn.Parameter(torch.full((n_out,), 0.05, dtype=torch.float64))

    def forward(self, x):
        return self.a * (x @ self.W.T)


class TokenBag(torch.nn.Module):
    """Integer token ids -> embedding mean -> linear: inputs are int64, not floats."""

    def __init__(self, vocab=20, dim=6, n_out=3, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = torch.nn.Embedding(vocab, dim, dtype=torch.float64)
        self.hidden = torch.nn.Linear(dim, dim, dtype=torch.float64)
        self.head = torch.nn.Linear(dim, n_out, dtype=torch.float64)

    def forward(self, ids):
        return self.head(torch.tanh(self.hidden(self.emb(ids).mean(1))))


def _teacher_data(n=30):
    """Labels a linear teacher can fit: ScaledHead learns them by growing its gain."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 5, generator=g, dtype=torch.float64)
    return X, (X @ torch.randn(5, 3, generator=g, dtype=torch.float64)).argmax(1)


def _state(model):
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            [(p.requires_grad, None if p.grad is None else p.grad.clone())
             for p in model.parameters()],
            [m.training for m in model.modules()])


def _assert_same_state(model, before):
    params, flags, modes = before
    for k, v in model.state_dict().items():
        assert_array_equal(v.numpy(), params[k].numpy())
    for p, (rg, grad) in zip(model.parameters(), flags):
        assert p.requires_grad == rg
        assert (p.grad is None) == (grad is None)
        if grad is not None:
            assert_array_equal(p.grad.numpy(), grad.numpy())
    assert [m.training for m in model.modules()] == modes


# ---------------------------------------------------------------- diagnostic
def test_linear_model_is_ok_with_kernel_ratio_exactly_one(linear_problem):
    model, X, y = linear_problem
    with warnings.catch_warnings():
        warnings.simplefilter("error", LinearizationWarning)
        ttp = TrainingTimePredictor(model, lr=0.05, n_steps=40, random_state=0).fit(X, y)
    assert ttp.trust_.level == "ok", str(ttp.trust_)
    assert_allclose(ttp.linearity_score_, 1.0, rtol=1e-12)
    assert_allclose(ttp.kernel_lambda_ratio_, 1.0, rtol=1e-12)
    assert ttp.trust_.direction == ""
    # the predicted displacement is real: the head moves, by J^T c
    assert ttp.trust_.relative_displacement > 1e-3
    assert set(ttp.relative_displacement_) == {"head.weight", "head.bias"}


def test_displacement_equals_linear_model_training(linear_problem):
    """‖Δw‖ of the diagnostic = the displacement of real SGD on a linear model."""
    model, X, y = linear_problem
    ttp = TrainingTimePredictor(model, lr=0.05, n_steps=30, random_state=0).fit(X, y)
    net = copy.deepcopy(model)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    for _ in range(30):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(X), y).backward()
        opt.step()
    trained = dict(net.named_parameters())
    for name, p0 in model.named_parameters():
        moved = float((trained[name].detach() - p0.detach()).norm() / p0.detach().norm())
        assert_allclose(ttp.relative_displacement_[name], moved, rtol=1e-8)


def test_demo_convnet_is_ok():
    demo = load_demo(n_samples=60)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LinearizationWarning)
        ttp = TrainingTimePredictor(demo.model, lr=0.01, n_steps=60, random_state=0).fit(
            demo.X, demo.y)
    assert ttp.trust_.level == "ok", str(ttp.trust_)
    assert 0.5 < ttp.linearity_score_ < 1.2
    assert ttp.trust_seconds_ > 0


def test_nonlinear_model_is_flagged_with_overestimate_and_refresh_hint():
    X, y = _teacher_data()
    model = ScaledHead()
    with pytest.warns(LinearizationWarning, match="over-estimate") as record:
        ttp = TrainingTimePredictor(model, lr=0.2, n_steps=100, random_state=0).fit(X, y)
    assert ttp.trust_.level in ("doubtful", "unreliable")
    assert ttp.linearity_score_ > 1.5
    assert ttp.trust_.direction == "over-estimate"
    assert any("refresh_steps=" in str(w.message) for w in record)
    # and it is right: real training reaches the loss level sooner than predicted
    real = run_real_training(model, X, y, lr=0.2, n_steps=100)
    level = 0.5 * (real.loss[0] + real.loss[-1])
    assert np.argmax(real.loss <= level) < np.argmax(ttp.predict_curve() <= level)


def test_stability_edge_is_flagged(linear_problem):
    model, X, y = linear_problem
    with pytest.warns(LinearizationWarning, match="stability edge"):
        ttp = TrainingTimePredictor(model, lr=1e3, n_steps=20, random_state=0,
                                    loss="cross_entropy").fit(X, y)
    assert ttp.trust_.level == "unreliable"
    assert ttp.stability_ratio_ > 1


def test_overrides_are_diagnosed_lazily_and_cached():
    X, y = _teacher_data()
    model = ScaledHead()
    with warnings.catch_warnings():
        warnings.simplefilter("error", LinearizationWarning)
        ttp = TrainingTimePredictor(model, lr=1e-3, n_steps=20, random_state=0).fit(X, y)
    assert ttp.trust_.level == "ok"
    # An override runs only the O(1) stability check (grids stay cheap): no kernel probe.
    ttp.predict_curve(lr=0.2, n_steps=100)
    assert ttp._trust_key(ttp._setting(dict(lr=0.2, n_steps=100))) not in ttp._trust_cache
    # ... and warns when the setting is past the stability edge
    edge = 2.0 / ttp._curvature(ttp.get_recipe(), sgd=False)
    with pytest.warns(LinearizationWarning, match="stability edge"):
        ttp.predict_curve(lr=10 * edge, n_steps=100)
    report = ttp.trust_report(lr=0.2, n_steps=100)
    assert report.level != "ok" and report.settings["lr"] == 0.2
    assert ttp.trust_report(lr=0.2, n_steps=100) is report  # cached
    with warnings.catch_warnings():  # each setting warns once
        warnings.simplefilter("error", LinearizationWarning)
        ttp.predict_time(0.01, lr=0.2, n_steps=100)
    # the model was changed in place after fit: the snapshot is used, not the new weights
    with torch.no_grad():
        model.a.mul_(100)
    again = ttp.trust_report(lr=1.0, n_steps=100)
    assert again.linearity_score < 100
    clone = pickle.loads(pickle.dumps(ttp))
    assert clone.trust_report(lr=0.2, n_steps=100).level == report.level


def test_trust_check_false_skips_the_diagnostic(linear_problem):
    model, X, y = linear_problem
    ttp = TrainingTimePredictor(model, lr=1e3, n_steps=5, trust_check=False).fit(X, y)
    assert not hasattr(ttp, "trust_")
    with warnings.catch_warnings():
        warnings.simplefilter("error", LinearizationWarning)
        ttp.predict_curve()


# ---------------------------------------------------------------- refresh
@pytest.mark.parametrize("momentum,batch_size", [(0.0, None), (0.9, 4)])
def test_refresh_first_points_equal_real_sgd(cnn_problem, momentum, batch_size):
    model, X, y = cnn_problem
    k, T = 4, 12
    ttp = TrainingTimePredictor(model, lr=0.05, momentum=momentum, batch_size=batch_size,
                                n_steps=T, random_state=3, refresh_steps=k).fit(X, y)
    curve = ttp.predict_curve()
    err = ttp.predict_curve(metric="error")
    p = ttp.get_recipe()
    batches = None if batch_size is None else [b[0] for b in ttp._batch_sequence(p)]
    real = run_real_training(model, X, y, lr=0.05, momentum=momentum, n_steps=T,
                             batch_size=batch_size, batches=batches)
    assert_allclose(curve[:k + 1], real.loss[:k + 1], rtol=1e-10)
    assert_allclose(err[:k + 1], real.error[:k + 1])
    info = ttp.trust_report().refresh
    assert info["steps"] == k and info["kernel_trace_ratio"] > 0
    # the rest is a prediction from w_k: close to, but not the same as, the real run
    assert not np.allclose(curve[k + 1:], real.loss[k + 1:], rtol=1e-10, atol=0)
    plain = ttp.predict_curve(refresh_steps=0)
    assert not np.allclose(plain[1:k + 1], curve[1:k + 1], rtol=1e-10, atol=0)


@pytest.mark.parametrize("momentum,batch_size", [(0.0, None), (0.9, None), (0.5, 5)])
def test_refresh_of_linear_model_equals_plain_prediction(linear_problem, momentum, batch_size):
    model, X, y = linear_problem
    ttp = TrainingTimePredictor(model, lr=0.1, momentum=momentum, batch_size=batch_size,
                                n_steps=25, n_paths=1, random_state=0).fit(X, y)
    plain = ttp.predict_curve()
    refreshed = ttp.predict_curve(refresh_steps=7)
    assert_allclose(refreshed, plain, rtol=1e-9)
    assert_allclose(ttp.predict_curve("error", refresh_steps=7), ttp.predict_curve("error"))
    assert_allclose(ttp.trust_report(refresh_steps=7).refresh["kernel_trace_ratio"], 1.0,
                    rtol=1e-10)


def test_refresh_leaves_the_model_untouched(cnn_problem):
    model, X, y = cnn_problem
    model.train()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    list(model.parameters())[0].requires_grad_(False)
    before = _state(model)
    rng = torch.get_rng_state()
    ttp = TrainingTimePredictor(model, lr=0.05, momentum=0.9, n_steps=8, refresh_steps=3,
                                random_state=0).fit(X, y)
    ttp.predict_curve()
    ttp.predict_time(0.01, refresh_steps=5)
    _assert_same_state(model, before)
    assert_array_equal(torch.get_rng_state().numpy(), rng.numpy())
    # frozen parameters stay frozen in the refresh too: only trainable ones enter
    assert ttp.trainable_parameter_names_ == [n for n, p in model.named_parameters()
                                              if p.requires_grad]


def test_refresh_by_time_budget(cnn_problem):
    model, X, y = cnn_problem
    ttp = TrainingTimePredictor(model, lr=0.05, n_steps=10, refresh_seconds=1e-9,
                                random_state=0).fit(X, y)
    ttp.predict_curve()
    assert ttp.trust_report().refresh["steps"] == 1  # at least one step, then out of budget
    ttp.set_params(refresh_seconds=60.0, refresh_steps=3)
    ttp.predict_curve()
    assert ttp.trust_report().refresh["steps"] == 3


def test_refresh_covering_all_steps_is_the_real_curve(cnn_problem):
    model, X, y = cnn_problem
    ttp = TrainingTimePredictor(model, lr=0.05, n_steps=6, refresh_steps=6,
                                random_state=0).fit(X, y)
    real = run_real_training(model, X, y, lr=0.05, n_steps=6)
    assert_allclose(ttp.predict_curve(), real.loss, rtol=1e-10)


@pytest.mark.parametrize("bad", [-1, 11, 2.5])
def test_refresh_steps_validation(linear_problem, bad):
    model, X, y = linear_problem
    ttp = TrainingTimePredictor(model, lr=0.1, n_steps=10).fit(X, y)
    with pytest.raises((ValueError, TypeError), match="refresh_steps"):
        ttp.predict_curve(refresh_steps=bad)
    with pytest.raises(ValueError, match="refresh_seconds"):
        ttp.predict_curve(refresh_seconds=-1.0)


# ---------------------------------------------------------------- any input dtype
def test_integer_token_inputs_diagnostic_and_refresh():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 20, (16, 7), generator=g)
    y = torch.randint(0, 3, (16,), generator=g)
    model = TokenBag()
    for projection in (None, "countsketch"):
        ttp = TrainingTimePredictor(model, lr=0.2, momentum=0.5, batch_size=4, n_steps=10,
                                    projection=projection, projection_dim=64, refresh_steps=3,
                                    random_state=0).fit(ids, y)
        assert np.isfinite(ttp.linearity_score_)
        curve = ttp.predict_curve()
        p = ttp.get_recipe()
        real = run_real_training(model, ids, y, lr=0.2, momentum=0.5, n_steps=10,
                                 batches=[b[0] for b in ttp._batch_sequence(p)])
        assert_allclose(curve[:4], real.loss[:4], rtol=1e-10)
    assert ids.dtype == torch.int64


def test_refresh_with_mse_and_the_ode_solver(linear_problem):
    model, X, y = linear_problem
    Y = torch.nn.functional.one_hot(y, 3).to(torch.float64)
    ttp = TrainingTimePredictor(model, loss="mse", lr=0.2, n_steps=20, random_state=0).fit(X, Y)
    assert ttp.trust_.level == "ok"
    # discrete: the linear model's refreshed curve is the plain one
    assert_allclose(ttp.predict_curve(refresh_steps=5), ttp.predict_curve(), rtol=1e-9)
    # ode: measured head (discrete real steps), then the flow from F_5
    real = run_real_training(model, X, Y, loss="mse", lr=0.2, n_steps=20)
    ode = ttp.predict_curve(solver="ode", refresh_steps=5)
    assert_allclose(ode[:6], real.loss[:6], rtol=1e-10)
    assert_allclose(ode, ttp.predict_curve(solver="ode"), rtol=0.1)  # discrete vs flow: ~5 %
