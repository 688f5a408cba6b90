"""Exact AdamW on the linearised model vs real ``torch.optim.AdamW`` training.

The model is linear in its trainable parameters (a linear head on frozen tanh
features), so the linearisation is the model and the simulation must equal
real training to floating-point precision at every step.
"""

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose
from torch import nn
from torch.func import functional_call, jacrev, vmap

from sktt.dynamics import check_batches
from sktt.dynamics._adamw import check_adamw_params, simulate_adamw
from sktt.dynamics._adamw_kernel import adamw_kernels, simulate_adamw_kernel
from sktt.dynamics._losses import loss_value_and_gradient

N, N_VAL, N_IN, K, C, T = 24, 10, 6, 8, 3, 30


def _model(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(N_IN, K), nn.Tanh(), nn.Linear(K, C)).double()
    for p in model[0].parameters():  # frozen feature layer: only the head trains
        p.requires_grad_(False)
    return model


def _data(loss, seed=1):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N + N_VAL, N_IN, generator=g, dtype=torch.float64)
    if loss == "cross_entropy":
        y = torch.randint(0, C, (N + N_VAL,), generator=g)
    else:
        y = torch.randn(N + N_VAL, C, generator=g, dtype=torch.float64)
    return X[:N], y[:N], X[N:], y[N:]


def _rows(model, X):
    """Sample-major Jacobian rows of the trainable parameters, (n·C, D)."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters() if n in names}
    frozen = {n: p.detach() for n, p in model.named_parameters() if n not in names}

    def f(params, x):
        return functional_call(model, {**params, **frozen}, (x[None],))[0]

    jac = vmap(jacrev(f), in_dims=(None, 0))(params, X)  # name -> (n, C, *shape)
    blocks = [jac[n].reshape(X.shape[0], C, -1) for n in names]
    w0 = torch.cat([params[n].reshape(-1) for n in names])
    return torch.cat(blocks, dim=2).reshape(X.shape[0] * C, -1).numpy(), w0.numpy()


def _schedule(kind, lr):
    def make(opt):
        if kind == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=T)
        if kind == "warmup":
            return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 8))
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    # per-step lrs from a throwaway optimiser, as the engine will get them
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched, lrs = make(opt), []
    for _ in range(T):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return make, np.array(lrs)


def _train(model, X, y, X_val, y_val, loss, lr, wd, make_sched, batches):
    lossfn = nn.CrossEntropyLoss() if loss == "cross_entropy" else nn.MSELoss()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
    sched = make_sched(opt)
    curve, val_curve = [], []
    for t in range(T + 1):
        with torch.no_grad():
            curve.append(lossfn(model(X), y).item())
            val_curve.append(lossfn(model(X_val), y_val).item())
        if t == T:
            break
        idx = torch.arange(N) if batches is None else torch.as_tensor(batches[t])
        opt.zero_grad()
        lossfn(model(X[idx]), y[idx]).backward()
        opt.step()
        sched.step()
    return np.array(curve), np.array(val_curve), torch.cat([p.detach().reshape(-1) for p in params])


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize("wd", [0.0, 0.01])
@pytest.mark.parametrize("schedule", ["constant", "cosine", "warmup"])
@pytest.mark.parametrize("minibatch", [False, True])
def test_adamw_matches_torch(loss, wd, schedule, minibatch):
    model = _model()
    X, y, X_val, y_val = _data(loss)
    lr = 0.05
    make_sched, lrs = _schedule(schedule, lr)
    rng = np.random.default_rng(0)
    batches = [rng.choice(N, size=6, replace=False) for _ in range(T)] if minibatch else None
    with torch.no_grad():
        F0, F0_val = model(X).numpy(), model(X_val).numpy()
    rows, w0 = _rows(model, X)
    eval_rows, _ = _rows(model, X_val)
    real, real_val, w_real = _train(model, X, y, X_val, y_val, loss, lr, wd, make_sched, batches)

    labels = y.numpy() if loss == "cross_entropy" else None
    sim = simulate_adamw(rows, w0, F0, y.numpy(), loss=loss, lrs=lrs, weight_decay=wd,
                         batches=None if batches is None else check_batches(batches, N, T),
                         labels=labels, eval_rows=eval_rows, eval_F0=F0_val,
                         eval_targets=y_val.numpy())
    assert sim["loss"].shape == (1, T + 1)
    assert real[-1] < 0.8 * real[0]  # it trained: the comparison is not vacuous
    assert_allclose(sim["loss"][0], real, rtol=1e-10, atol=0)
    assert_allclose(sim["eval_loss"][0], real_val, rtol=1e-10, atol=0)
    assert_allclose(sim["weights"][0], w_real.numpy(), rtol=1e-10, atol=1e-13)
    assert (sim["error"] is None) == (labels is None)
    assert sim["diverged_at"][0] == -1


def test_float32_rows_and_paths():
    """float32 storage gives float64 math on those rows; P paths = P separate runs."""
    model = _model()
    X, y, _, _ = _data("cross_entropy")
    with torch.no_grad():
        F0 = model(X).numpy()
    rows, w0 = _rows(model, X)
    rows32 = rows.astype(np.float32)
    lrs = np.full(T, 0.05)
    rng = np.random.default_rng(3)
    paths = [np.stack([rng.choice(N, 5, replace=False) for _ in range(2)]) for _ in range(T)]
    both = simulate_adamw(rows32, w0, F0, y.numpy(), loss="cross_entropy", lrs=lrs,
                          batches=check_batches(paths, N, T))
    for p in range(2):
        one = simulate_adamw(rows32.astype(np.float64), w0, F0, y.numpy(), loss="cross_entropy",
                             lrs=lrs, batches=check_batches([b[p] for b in paths], N, T))
        assert_allclose(both["loss"][p], one["loss"][0], rtol=1e-12)


def test_divergence_is_reported():
    model = _model()
    X, y, _, _ = _data("mse")
    with torch.no_grad():
        F0 = model(X).numpy()
    rows, w0 = _rows(model, X)
    out = simulate_adamw(rows * 1e150, w0, F0, y.numpy(), loss="mse", lrs=np.full(T, 1e160))
    assert out["diverged_at"][0] > 0
    assert np.isinf(out["loss"][0, -1])


@pytest.mark.parametrize("kwargs, name", [
    (dict(betas=(1.0, 0.999)), "betas\\[0\\]"),
    (dict(betas=(0.9, -0.1)), "betas\\[1\\]"),
    (dict(betas=0.9), "betas"),
    (dict(eps=0.0), "eps"),
    (dict(eps=-1e-8), "eps"),
    (dict(weight_decay=-0.01), "weight_decay"),
    (dict(lrs=[1e-3] * 3, n_steps=5), "lrs"),
    (dict(lrs=[1e-3, -1.0], n_steps=2), "lrs"),
    (dict(lrs=[1e-3], n_steps=-1), "n_steps"),
])
def test_bad_params_name_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        check_adamw_params(**kwargs)


def test_simulate_rejects_short_lrs():
    rows, w0, F0 = np.ones((6, 4)), np.zeros(4), np.zeros((2, 3))
    with pytest.raises(ValueError, match="lrs"):
        simulate_adamw(rows, w0, F0, np.array([0, 1]), loss="cross_entropy", lrs=[0.1],
                       n_steps=3)
    with pytest.raises(ValueError, match="w0"):
        simulate_adamw(rows, np.zeros(5), F0, np.array([0, 1]), loss="cross_entropy",
                       lrs=[0.1])


# ---------------------------------------------------------------------------------------------
# frozen-preconditioner kernel mode (sktt.dynamics._adamw_kernel)



def _frozen_adam_reference(rows, w0, F0, y, loss, lrs, v0, groups, wd, batches, rescale,
                           betas=(0.9, 0.999), eps=1e-8):
    """Parameter-space Adam with frozen denominators √(ρ_{g,t} v̂0) (the kernel mode's model)."""
    b1, b2 = betas
    n, c = F0.shape
    P = 1.0 / (np.sqrt(v0) + eps)
    w, m = w0.copy(), np.zeros_like(w0)
    ema = np.zeros(len(groups))
    refs = np.array([np.sum(v0[s] * P[s] ** 2) for s in groups])
    curve = []
    for t in range(len(lrs) + 1):
        F = F0 + (rows @ (w - w0)).reshape(n, c)
        value, grad = loss_value_and_gradient(F, y, loss)
        curve.append(value)
        if t == len(lrs):
            break
        idx = np.arange(n) if batches is None else batches[t]
        gb = loss_value_and_gradient(F[idx], y[idx], loss)[1].reshape(-1)
        r = (idx[:, None] * c + np.arange(c)).reshape(-1)
        g = gb @ rows[r]
        w = w * (1 - lrs[t] * wd)
        m = b1 * m + (1 - b1) * g
        step = P * m * lrs[t] / (1 - b1 ** (t + 1))
        if rescale:
            for k, s in enumerate(groups):
                ema[k] = b2 * ema[k] + (1 - b2) * np.sum((P[s] * g[s]) ** 2)
                step[s] /= np.sqrt(ema[k] / (1 - b2 ** (t + 1)) / refs[k])
        w = w - step
    return np.array(curve)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize("rescale", ["none", "group"])
@pytest.mark.parametrize("minibatch", [False, True])
def test_kernel_mode_is_frozen_preconditioned_adam(loss, rescale, minibatch):
    rng = np.random.default_rng(0)
    n, c, d = 12, 3, 40
    rows = rng.standard_normal((n * c, d))
    w0, F0 = rng.standard_normal(d), rng.standard_normal((n, c))
    y = rng.integers(0, c, n) if loss == "cross_entropy" else rng.standard_normal((n, c))
    v0 = rng.uniform(0.01, 1.0, d)
    groups = [slice(0, 15), slice(15, d)]
    lrs = np.linspace(0.01, 0.002, 25)
    batches = [rng.choice(n, 4, replace=False) for _ in range(25)] if minibatch else None
    ref = _frozen_adam_reference(rows, w0, F0, y, loss, lrs, v0, groups, 0.01, batches,
                                 rescale == "group")
    kp, kp2, refs = adamw_kernels(rows, v0, groups)
    sim_batches = None if batches is None else check_batches(batches, n, 25)
    out = simulate_adamw_kernel(kp, F0, y, loss=loss, lrs=lrs, weight_decay=0.01,
                                jw0=rows @ w0, rescale=rescale, rescale_kernels=kp2,
                                rescale_refs=refs, batches=sim_batches)
    assert_allclose(out["loss"][0], ref, rtol=1e-10)


def test_kernel_mode_bad_inputs():
    kp, F0, y = np.eye(6), np.zeros((2, 3)), np.array([0, 1])
    with pytest.raises(ValueError, match="jw0"):
        simulate_adamw_kernel(kp, F0, y, loss="cross_entropy", lrs=[0.1], weight_decay=0.1)
    with pytest.raises(ValueError, match="rescale"):
        simulate_adamw_kernel(kp, F0, y, loss="cross_entropy", lrs=[0.1], rescale="layer")
    with pytest.raises(ValueError, match="rescale_kernels"):
        simulate_adamw_kernel(kp, F0, y, loss="cross_entropy", lrs=[0.1], rescale="group")
    with pytest.raises(ValueError, match="betas"):
        simulate_adamw_kernel(kp, F0, y, loss="cross_entropy", lrs=[0.1], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="v0"):
        adamw_kernels(np.ones((6, 4)), -np.ones(4))
