"""AdamW predictions vs real ``torch.optim.AdamW`` fine-tuning: exact and approximate modes.

Two pre-trained -> fine-tuned tasks, all parameters trainable, float64:

* ``convnet``: the embedded demo (:func:`sktt.datasets.load_demo`, fresh head, ~38k weights);
* ``tanh-mlp``: a 64-128-128-5 tanh MLP pre-trained here (Adam, seeded) on digits 0-4,
  fresh head, fine-tuned on digits 5-9 (~25k weights).

For lr ∈ {1e-4, 3e-4, 1e-3}, T=150 steps of batch 25 (N=100, a fixed seeded batch order
shared by the real run and every mode), weight decay 0.01, constant lr:

* ``exact``: :func:`sktt.dynamics._adamw.simulate_adamw` on the exact Jacobian rows;
* ``sketch-D0``: the same on count-sketched rows ``J S`` (``S`` D×D0, ±1 entries), and
  ``sketch-D0-scaled`` with lr·sqrt(D/D0) (Adam is not rotation invariant: a sketch
  coordinate pools ~D/D0 weights, so its normalised step moves each pooled weight by
  ~lr with a sign only weakly correlated with its own gradient);
* ``precond``: :func:`sktt.dynamics._adamw_kernel.simulate_adamw_kernel`, frozen
  P = diag(1/(sqrt(v̂0)+eps)) from K=8 seeded minibatch gradients at w0 (one group);
* ``precond-layer``: the same per layer with the per-layer coordinate-uniform rescaling
  ρ_{g,t} (ρ from ‖P g‖², kernels J P² Jᵀ; the recommended mode);
* ``precond-global``: one group with that rescaling;
* ``precond-layer-plain``: per layer, ρ from the plain ‖g‖² (kernels J Jᵀ).

Printed: median and p90 of |T̂_ε − T_ε| / T_ε on the loss, ε ∈ {0.01, 0.03, 0.1}, over
(task, lr, ε) against the real run and against ``exact``, and the mean absolute curve
error. Runtime ~2 min on one thread.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/bench_adamw_modes.py
"""

import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.sparse import csr_matrix  # noqa: E402
from torch import nn  # noqa: E402
from torch.func import functional_call, jacrev, vmap  # noqa: E402

from digits_task import digits_finetuning_task  # noqa: E402
from sktt.datasets import load_demo  # noqa: E402
from sktt.dynamics import check_batches, epsilon_training_time  # noqa: E402
from sktt.dynamics._adamw import simulate_adamw  # noqa: E402
from sktt.dynamics._losses import loss_value_and_gradient  # noqa: E402
from sktt.dynamics._adamw_kernel import adamw_kernels, simulate_adamw_kernel  # noqa: E402

LOSS_EPS = (0.01, 0.03, 0.1)
LRS = (1e-4, 3e-4, 1e-3)
N, T, BATCH, WD, K_CAL = 100, 150, 25, 0.01, 8
SKETCH_DIMS = (2048, 8192)


def make_tanh_mlp_task(n_samples, seed=0):
    """A 64-128-128-5 tanh MLP pre-trained on digits 0-4 (float64); fine-tuning data from
    digits 5-9."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 128), nn.Tanh(),
                        nn.Linear(128, 5))
    return digits_finetuning_task(net, n_samples, seed, dtype=torch.float64)


def jacobian(model, X):
    """Rows (N·C, D), w0 (D,), and column slices per layer (module)."""
    names = [n for n, p in model.named_parameters()]
    params = {n: p.detach() for n, p in model.named_parameters()}

    def f(p, x):
        return functional_call(model, p, (x[None],))[0]

    jac = vmap(jacrev(f), in_dims=(None, 0))(params, X)
    n, c = X.shape[0], jac[names[0]].shape[1]
    blocks = [jac[k].reshape(n, c, -1) for k in names]
    rows = torch.cat(blocks, 2).reshape(n * c, -1).numpy()
    w0 = torch.cat([params[k].reshape(-1) for k in names]).numpy()
    layers, start = {}, 0
    for k, b in zip(names, blocks):
        layer = k.rsplit(".", 1)[0]
        s, e = layers.get(layer, (start, start))
        layers[layer] = (s, start + b.shape[2])
        start += b.shape[2]
    return rows, w0, [slice(s, e) for s, e in layers.values()]


def real_adamw(model, X, y, lr, batches):
    model = __import__("copy").deepcopy(model)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=WD)
    curve = []
    for t in range(T + 1):
        with torch.no_grad():
            curve.append(nn.functional.cross_entropy(model(X), y).item())
        if t == T:
            break
        idx = torch.as_tensor(batches[t])
        opt.zero_grad()
        nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
        opt.step()
    return np.array(curve)


def count_sketch(d, d0, seed):
    rng = np.random.default_rng(seed)
    return csr_matrix((rng.choice([-1.0, 1.0], d), (np.arange(d), rng.integers(0, d0, d))),
                      shape=(d, d0))


def batch_order(n, n_steps, seed):
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(n) for _ in range(-(-n_steps * BATCH // n) + 1)])
    return [order[t * BATCH:(t + 1) * BATCH] for t in range(n_steps)]


def squared_gradient_mean(rows, F0, y, batches, c):
    """v̂0: mean over K minibatches of the squared weight gradient at w0, (D,)."""
    v = np.zeros(rows.shape[1])
    for idx in batches:
        gb = loss_value_and_gradient(F0[idx], y[idx], "cross_entropy")[1].reshape(-1)
        r = (idx[:, None] * c + np.arange(c)).reshape(-1)
        v += (gb @ rows[r]) ** 2
    return v / len(batches)


def modes_for_task(model, X, y):
    """Predicted curves of every mode, per lr, plus the real curves."""
    t0 = time.perf_counter()
    rows, w0, layers = jacobian(model, X)
    with torch.no_grad():
        F0 = model(X).numpy()
    yn = y.numpy()
    n, c = F0.shape
    d = rows.shape[1]
    batches = batch_order(n, T, seed=0)
    sim_batches = check_batches(batches, n, T)
    cal = batch_order(n, K_CAL, seed=123)
    v0 = squared_gradient_mean(rows, F0, yn, cal, c)
    jw0 = rows @ w0
    kp_layers, kp2_layers, refs = adamw_kernels(rows, v0, layers)
    # the plain-norm rescaling (ρ from ‖g‖², dominated by large-gradient coordinates)
    k_layers = [rows[:, s] @ rows[:, s].T for s in layers]
    v0_layers = [v0[s].sum() for s in layers]
    sketches = {d0: (rows @ count_sketch(d, d0, seed=d0)) for d0 in SKETCH_DIMS}
    sketch_w0 = {d0: count_sketch(d, d0, seed=d0).T @ w0 for d0 in SKETCH_DIMS}
    print(f"  D={d}, N·C={n * c}, {len(layers)} layers; setup {time.perf_counter() - t0:.1f}s")
    out = {}
    for lr in LRS:
        lrs = np.full(T, lr)
        curves = {"real": real_adamw(model, X, y, lr, batches)}
        common = dict(loss="cross_entropy", lrs=lrs, batches=sim_batches)
        curves["exact"] = simulate_adamw(rows, w0, F0, yn, weight_decay=WD, **common)["loss"][0]
        for d0 in SKETCH_DIMS:
            r = sketches[d0]
            curves[f"sketch-{d0}"] = simulate_adamw(r, sketch_w0[d0], F0, yn, weight_decay=WD,
                                                    **common)["loss"][0]
            curves[f"sketch-{d0}-scaled"] = simulate_adamw(
                r, sketch_w0[d0], F0, yn, weight_decay=WD, loss="cross_entropy",
                lrs=lrs * np.sqrt(d / d0), batches=sim_batches)["loss"][0]
        kw = dict(weight_decay=WD, jw0=jw0, **common)
        curves["precond"] = simulate_adamw_kernel(sum(kp_layers), F0, yn, **kw)["loss"][0]
        curves["precond-global"] = simulate_adamw_kernel(
            sum(kp_layers), F0, yn, rescale="group", rescale_kernels=[sum(kp2_layers)],
            rescale_refs=[refs.sum()], **kw)["loss"][0]
        curves["precond-layer"] = simulate_adamw_kernel(
            kp_layers, F0, yn, rescale="group", rescale_kernels=kp2_layers, rescale_refs=refs,
            **kw)["loss"][0]
        curves["precond-layer-plain"] = simulate_adamw_kernel(
            kp_layers, F0, yn, rescale="group", rescale_kernels=k_layers,
            rescale_refs=v0_layers, **kw)["loss"][0]
        out[lr] = curves
    return out


def rel_errors(pred, ref):
    tp = epsilon_training_time(pred, np.array(LOSS_EPS))
    tr = epsilon_training_time(ref, np.array(LOSS_EPS))
    return np.abs(tp - tr) / np.maximum(tr, 1)


def main():
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    demo = load_demo(N, dtype=torch.float64)
    tasks = {"convnet": (demo.model, demo.X, demo.y), "tanh-mlp": make_tanh_mlp_task(N)}
    print(f"torch {torch.__version__}, 1 thread; N={N}, T={T}, batch {BATCH}, wd {WD}, "
          f"lrs {LRS}, loss eps {LOSS_EPS}")
    results = {}
    for name, (model, X, y) in tasks.items():
        print(f"{name}:")
        results[name] = modes_for_task(model, X, y)
        for lr, curves in results[name].items():
            tr = epsilon_training_time(curves["real"], np.array(LOSS_EPS))
            print(f"  lr={lr:g}: real L0={curves['real'][0]:.3f} L_T={curves['real'][-1]:.3f} "
                  f"T_eps={tr.tolist()}; exact L_T={curves['exact'][-1]:.3f} T_eps="
                  f"{epsilon_training_time(curves['exact'], np.array(LOSS_EPS)).tolist()}; "
                  f"precond-layer L_T={curves['precond-layer'][-1]:.3f}")
    modes = [m for m in next(iter(next(iter(results.values())).values())) if m != "real"]
    print(f"\n{'mode':22s} {'vs real: med':>12s} {'p90':>6s} {'|dL|':>7s}   "
          f"{'vs exact: med':>13s} {'p90':>6s} {'|dL|':>7s}")
    for mode in modes:
        vr, ve, cr, ce = [], [], [], []
        for task in results.values():
            for curves in task.values():
                vr.extend(rel_errors(curves[mode], curves["real"]))
                ve.extend(rel_errors(curves[mode], curves["exact"]))
                cr.append(np.mean(np.abs(curves[mode] - curves["real"])))
                ce.append(np.mean(np.abs(curves[mode] - curves["exact"])))
        print(f"{mode:22s} {np.median(vr):12.3f} {np.quantile(vr, 0.9):6.3f} {np.mean(cr):7.4f}"
              f"   {np.median(ve):13.3f} {np.quantile(ve, 0.9):6.3f} {np.mean(ce):7.4f}")
    print("\nmean |loss error| vs exact per setting (task, lr):")
    print(f"{'mode':22s} " + " ".join(f"{t[:4]}/{lr:g}".rjust(11) for t in results
                                      for lr in results[t]))
    for mode in modes:
        print(f"{mode:22s} " + " ".join(
            f"{np.mean(np.abs(c[mode] - c['exact'])):11.4f}"
            for task in results.values() for c in task.values()))
    print(f"\n(n={len(vr)} per mode; |dL| = mean absolute loss-curve error) "
          f"total {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
