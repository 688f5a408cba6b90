"""The trust diagnostic's cheap paths (issue 14): displacement through the kernel's image,
the factored kernel, and the probe's extraction built once.

References: the function-space simulation (:func:`sktt.dynamics.simulate`, one path)
for the displacement's recorded outputs; the dense kernel's report for the factored
one (same projection and seed: the same Θ̃, so the same report to round-off).
"""

import warnings

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from sktt import TrainingTimePredictor
from sktt.dynamics import simulate
from sktt.dynamics import _displacement
from sktt.dynamics._displacement import stage_displacement
from sktt.dynamics._losses import loss_value
from sktt.dynamics._recipe import TrainingRecipe
from sktt.dynamics._simulate import LinearizedProblem
from sktt.gram._kernels import DenseKernel, FactoredKernel

RECIPES = [dict(), dict(momentum=0.9), dict(momentum=0.5, dampening=0.3, nesterov=False,
                                              weight_decay=0.02),
           dict(momentum=0.9, nesterov=True)]


def _tanh_net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def _data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 6, generator=g)
    return X, (X[:, :3] + 0.3 * torch.randn(n, 3, generator=g)).argmax(1)


@pytest.fixture(scope="module")
def linearized():
    rng = np.random.default_rng(0)
    n, c, d = 24, 3, 40
    rows = rng.normal(size=(n * c, d)) / np.sqrt(d)
    f0 = rng.normal(size=(n, c))
    return rows, f0, rng.integers(0, c, n), rng.normal(size=(n, c))


@pytest.mark.parametrize("factored", [False, True])
@pytest.mark.parametrize("batch_size", [None, 5])
@pytest.mark.parametrize("terms", RECIPES)
def test_displacement_outputs_are_the_simulated_ones(linearized, factored, batch_size, terms):
    """F_t recorded by the displacement (batch rows only per step) = the simulation's F_t:
    its loss equals the simulated curve, and F_t = F0 + Θ c_t + α_t Φ0 from c_t itself."""
    rows, f0, y, jw0 = linearized
    n, c = f0.shape
    kernel = FactoredKernel(rows, c) if factored else DenseKernel(rows @ rows.T, c)
    T = 30
    recipe = TrainingRecipe(lr=0.5, n_steps=T, batch_size=batch_size, **terms)
    problem = LinearizedProblem(f0=f0, targets=y, loss="cross_entropy",
                                jw0=jw0 if recipe.weight_decay else None)
    rng = np.random.default_rng(1)
    batches = None if batch_size is None else [
        rng.choice(n, batch_size, replace=False)[None] for _ in range(T)]
    steps = [0, 7, T]
    d = stage_displacement(kernel, problem, recipe, batches=batches, record_steps=steps)
    curve = simulate(kernel, problem, recipe.replace(solver="discrete", n_paths=1),
                     batches=batches)["loss"][0]
    for s in steps:
        F, _ = d.recorded[s]
        assert_allclose(loss_value(F[None], y, "cross_entropy")[0], curve[s], rtol=1e-12)
    F, coef = d.recorded[T]
    assert_allclose(coef, d.coef, rtol=0, atol=0)
    direct = f0 + (rows @ (rows.T @ coef.ravel())).reshape(n, c) + d.alpha * jw0
    assert_allclose(F, direct, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("settings", [dict(lr=0.5, n_steps=25),
                                      dict(lr=0.2, n_steps=30, batch_size=8, momentum=0.9),
                                      dict(lr=0.3, n_steps=20, weight_decay=0.05)])
def test_factored_trust_report_equals_the_dense_one(settings):
    """ntk="factored" keeps the rows J̃ instead of Θ̃ = J̃J̃ᵀ: the same kernel, so the
    same displacement, probe and stability ratio to round-off."""
    X, y = _data()
    reports = {}
    for ntk in ("dense", "factored"):
        ttp = TrainingTimePredictor(_tanh_net(), projection="countsketch", projection_dim=128,
                                    ntk=ntk, random_state=0, **settings)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the level's warning is not what is tested
            ttp.fit(X, y)
        assert ttp.ntk_mode_ == ntk
        reports[ntk] = ttp.trust_
    dense, factored = reports["dense"], reports["factored"]
    assert dense.level == factored.level
    for key in ("trace_ratio", "lambda_ratio", "stability_ratio", "relative_displacement"):
        assert_allclose(getattr(factored, key), getattr(dense, key), rtol=1e-9, err_msg=key)
    assert dense.trace_ratio != 1.0  # a non-linear net: the probe measured something
    for name, value in dense.group_displacement.items():
        assert_allclose(factored.group_displacement[name], value, rtol=1e-9)



def _conv_net(seed=0):
    torch.manual_seed(seed)
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Flatten(), nn.Linear(4 * 5 * 5, 3))
    net[1].running_mean.uniform_(-0.1, 0.1)  # non-trivial running statistics
    return net.eval()


def test_probe_reuses_the_fits_layerwise_plan(monkeypatch):
    """The probe's kernel at w_T runs on the fit's layer-wise plan (mapped onto its copy of
    the model): one plan per fit instead of two, and the same Θ block, bit for bit, as a
    probe that resolves its own plan; a module replaced after fit makes it resolve anew."""
    import sktt.estimators._predictor as predictor_module
    import sktt.gradients._extraction as extraction_module
    from sktt.estimators._trust import _probe_samples, _subset_kernel

    calls = []
    for module in (predictor_module, extraction_module):
        inner = module.resolve_layerwise_plan

        def counted(*args, _inner=inner, **kwargs):
            calls.append(1)
            return _inner(*args, **kwargs)

        monkeypatch.setattr(module, "resolve_layerwise_plan", counted)
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(30, 2, 5, 5, generator=g), torch.randint(0, 3, (30,), generator=g)
    ttp = TrainingTimePredictor(_conv_net(), projection="countsketch", projection_dim=256,
                                lr=0.5, n_steps=20, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the level's warning is not what is tested
        ttp.fit(X, y)
    assert len(calls) == 1  # the fit's; the probe reused it
    assert ttp._trust_state["plan"] is not None
    assert ttp.trust_.trace_ratio != 1.0  # a non-linear net: the probe measured something
    sub = _probe_samples(ttp)
    w1 = {k: w.to(torch.float64) * 1.1 for k, w in ttp._trust_state["weights"].items()}
    reused = _subset_kernel(ttp, w1, sub)
    assert len(calls) == 1
    plan, ttp._trust_state["plan"] = ttp._trust_state["plan"], None  # as if none was kept
    resolved = _subset_kernel(ttp, w1, sub)
    assert len(calls) == 2
    assert np.array_equal(reused, resolved)
    ttp._trust_state["plan"] = plan
    ttp.model[4] = torch.nn.Linear(4 * 5 * 5, 3)  # the plan's Linear is no longer the model's
    replaced = _subset_kernel(ttp, w1, sub)
    assert len(calls) == 3  # resolved on the model as it is
    assert np.array_equal(replaced, resolved)  # the snapshot's weights, the same structure
    with warnings.catch_warnings():  # the joint extraction with eval_set takes the plan too
        warnings.simplefilter("ignore")
        ttp.fit(X[:20], y[:20], eval_set=(X[20:], y[20:]))
    assert len(calls) == 4 and ttp._trust_state["plan"] is not None


class _BatchCentred(torch.nn.Module):
    """Subtracts the batch mean in eval mode: samples are not independent, so "auto" takes
    the torch.func path."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(x - 0.1 * x.mean(0, keepdim=True))


def test_probe_takes_the_fits_torch_func_path_without_probing(monkeypatch):
    """Where the fit's plan was None (torch.func), the probe runs torch.func directly: the
    model is probed once per fit, and the report is that of a probe resolving its path."""
    import sktt.gradients._extraction as extraction_module
    from sktt.estimators._trust import _probe_samples, _subset_kernel

    calls = []
    inner = extraction_module.plan_layerwise

    def counted(*args, **kwargs):
        calls.append(1)
        return inner(*args, **kwargs)

    monkeypatch.setattr(extraction_module, "plan_layerwise", counted)
    X, y = _data()
    torch.manual_seed(0)
    ttp = TrainingTimePredictor(_BatchCentred().eval(), projection="countsketch",
                                projection_dim=128, lr=0.5, n_steps=20, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ttp.fit(X, y)
    assert len(calls) == 1 and ttp._trust_state["plan"] is None
    assert ttp._trust_state["path"] == "functorch"
    sub = _probe_samples(ttp)
    w1 = {k: w.to(torch.float64) * 1.1 for k, w in ttp._trust_state["weights"].items()}
    direct = _subset_kernel(ttp, w1, sub)
    assert len(calls) == 1
    ttp._trust_state["path"] = None  # as before: the probe resolves its own path
    resolved = _subset_kernel(ttp, w1, sub)
    assert len(calls) == 2
    assert np.array_equal(direct, resolved)


@pytest.mark.parametrize("streamed", [False, True])
def test_vjp_skips_samples_with_zero_cotangents(monkeypatch, streamed):
    """Jᵀv over only the samples whose cotangents are not all zero (an SGD displacement
    shorter than an epoch leaves the others untouched) equals the product over every
    sample, computed by autograd on the whole set; the skipped samples are never run."""
    from sktt.gradients import as_inputs
    from sktt.gradients._probes import JacobianOperator

    torch.manual_seed(3)
    model = _tanh_net().double().eval()
    X, y = _data(n=30)
    X = X.double()
    rng = np.random.default_rng(4)
    cot = rng.normal(size=(2, 30, 3))
    cot[:, [0, 4, 5, 17, 29]] = 0.0  # untouched samples (both cotangents)
    cot[0, 9] = 0.0  # zero in one cotangent only: still run
    data = torch.utils.data.TensorDataset(X, y) if streamed else X
    inputs, _ = as_inputs(data, None if streamed else y, float_dtype=torch.float64)
    names = [n for n, _ in model.named_parameters()]
    op = JacobianOperator(model, names, inputs, chunk_size=7)
    seen = []
    run = op._loop_vjp
    monkeypatch.setattr(op, "_loop_vjp", lambda x, c: seen.append(len(c[0])) or run(x, c))
    out = op.vjp(cot)
    assert sum(seen) == 25 and max(seen) == 7
    for k in range(2):
        f = model(X)
        ref = torch.autograd.grad((f * torch.as_tensor(cot[k])).sum(), list(model.parameters()))
        for n, r in zip(names, ref):
            assert_allclose(out[k][n].numpy(), r.numpy(), rtol=1e-12, atol=1e-14)
    assert all(float(g.abs().sum()) == 0 for g in op.vjp(np.zeros((30, 3))).values())


class _StridedFlatten(torch.nn.Module):
    """Flattens by reading the storage in NCHW order (as_strided): a model that relies on
    its input's strides, silently wrong on channels-last tensors."""

    def forward(self, x):
        return x.as_strided((x.shape[0], x[0].numel()), (x[0].numel(), 1))


class _ViewFlatten(torch.nn.Module):
    """Flattens with ``.view``, which raises on a channels-last conv output."""

    def forward(self, x):
        return x.view(x.shape[0], -1)


def _convnet(flatten):
    torch.manual_seed(0)
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), flatten,
                         nn.Linear(4 * 4 * 4, 3)).double().eval()


@pytest.mark.parametrize("flatten, channels_last", [(torch.nn.Flatten(), True),
                                                    (_ViewFlatten(), False),
                                                    (_StridedFlatten(), False)])
def test_vjp_runs_convnets_on_channels_last_images_when_outputs_agree(monkeypatch, flatten,
                                                                      channels_last):
    """A convnet's image chunks run channels-last (faster on the CPU) when the model gives
    the same outputs that way; a model that raises on those strides (``.view``) or reads
    them wrongly (``as_strided``) keeps its inputs as they are. Jᵀv equals autograd on
    the NCHW inputs either way."""
    from sktt.gradients._probes import JacobianOperator

    model = _convnet(flatten)
    X = torch.randn(20, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cot = np.random.default_rng(2).normal(size=(20, 3))
    names = [n for n, _ in model.named_parameters()]
    op = JacobianOperator(model, names, X, chunk_size=8)
    layouts = []
    run = op._loop_vjp
    monkeypatch.setattr(op, "_loop_vjp", lambda x, c: layouts.append(
        x.args[0].is_contiguous(memory_format=torch.channels_last)) or run(x, c))
    out = op.vjp(cot)
    assert op._channels_last is channels_last and layouts == [channels_last] * 3
    f = model(X)
    ref = torch.autograd.grad((f * torch.as_tensor(cot)).sum(), list(model.parameters()))
    for n, r in zip(names, ref):
        assert_allclose(out[n].numpy(), r.numpy(), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("factored", [False, True])
@pytest.mark.parametrize("batch_size", [None, 4])
@pytest.mark.parametrize("terms", RECIPES + [dict(momentum=0.8, weight_decay=0.05, resumed=True),
                                             dict(momentum=0.7, nesterov=True, resumed=True,
                                                  schedule=True)])
def test_displacement_is_torch_sgd_on_a_linear_model(monkeypatch, factored, batch_size, terms):
    """c_T, α_T, γ_T and the buffer's coefficients, kept as weights of a few vectors re-based
    every 3 batch gradients here, give torch.optim.SGD's own w_T − w_s and momentum buffer on
    a model linear in its parameters (f = b + J w), to round-off: momentum, dampening,
    Nesterov, weight decay, an inherited buffer, a schedule, a batch repeating a sample."""
    monkeypatch.setattr(_displacement, "_SLOTS", 3)
    terms = dict(terms)
    resumed, schedule = terms.pop("resumed", False), terms.pop("schedule", False)
    rng = np.random.default_rng(3)
    n, c, d, T = 10, 3, 14, 17
    J = rng.normal(size=(n * c, d)) / np.sqrt(d)
    w_s, bias, buf_s = rng.normal(size=d), rng.normal(size=n * c), rng.normal(size=d)
    y = rng.integers(0, c, n)
    lrs = rng.uniform(0.2, 0.6, T) if schedule else np.full(T, 0.4)
    recipe = TrainingRecipe(lr=0.4, n_steps=T, batch_size=batch_size,
                            lr_schedule=tuple(lrs) if schedule else None, **terms)
    batches = None if batch_size is None else [
        np.array([1, 1, 5, 7])[None] if t == 4 else rng.choice(n, batch_size, replace=False)[None]
        for t in range(T)]
    problem = LinearizedProblem(f0=(bias + J @ w_s).reshape(n, c), targets=y, loss="cross_entropy",
                                jw0=(J @ w_s).reshape(n, c) if recipe.weight_decay else None)
    kernel = FactoredKernel(J, c) if factored else DenseKernel(J @ J.T, c)
    got = stage_displacement(kernel, problem, recipe, batches=batches,
                             momentum_buffer=J @ buf_s if resumed else None)

    w = torch.tensor(w_s, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.4, **terms)
    if resumed:
        opt.state[w]["momentum_buffer"] = torch.tensor(buf_s)
    Jt, bt, yt = torch.tensor(J), torch.tensor(bias), torch.as_tensor(y)
    for t in range(T):
        idx = torch.arange(n) if batches is None else torch.as_tensor(batches[t][0])
        rows = (idx[:, None] * c + torch.arange(c)).reshape(-1)
        F = (bt[rows] + Jt[rows] @ w).reshape(-1, c)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(F, yt[idx]).backward()
        opt.param_groups[0]["lr"] = float(lrs[t])
        opt.step()
    moved = J.T @ got.coef.ravel() + got.alpha * w_s + got.gamma * buf_s
    assert_allclose(moved, w.detach().numpy() - w_s, rtol=1e-10, atol=1e-12)
    if recipe.momentum:
        buffer = J.T @ got.buffer_coef.ravel() + got.buffer_alpha * w_s + got.buffer_gamma * buf_s
        assert_allclose(buffer, opt.state[w]["momentum_buffer"].numpy(), rtol=1e-10, atol=1e-12)
    else:
        assert got.buffer_coef is None
