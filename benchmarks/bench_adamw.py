"""AdamW predictions (exact and approximate modes) vs real ``torch.optim.AdamW`` fine-tuning.

    OMP_NUM_THREADS=1 python benchmarks/bench_adamw.py [--cases convnet resnet tanh_mlp minilm]

Cases (pre-trained → fine-tuned, :mod:`trust_cases` where shared):

* ``convnet``: the demo DigitsConvNet (:func:`sktt.datasets.load_demo`), all 37 957 weights.
* ``resnet``: a residual convnet (conv stem, two residual blocks, pooled linear head),
  pre-trained here on digits 0-4 (Adam), fresh head, fine-tuned on 5-9.
* ``tanh_mlp``: the 64-128-128-5 tanh MLP of :mod:`trust_cases`.
* ``minilm``: MiniLM-L6 + mean pooling + fresh head, last transformer block + head
  trainable (1.8M weights), N = 32 sentences; with ``max_memory="1GB"`` its exact
  Jacobian (N·C·D·8 = 1.8 GB) does not fit, so only the approximate mode runs.

Per case: AdamW, lr ∈ {1e-4, 3e-4, 1e-3}, betas (0.9, 0.999), weight decay 0.01,
T = 150, full batch and b = 32 (one batch order, the prediction's path 0 =
``ttp.dataloader_seed(0)``, ``n_paths=1``). Reported: median / p90 over
(case, lr, batch, ε ∈ {0.01, 0.03, 0.1}) of the relative loss-T_ε error
|T̂ − T| / max(T, 1), the mean absolute loss-curve error, and the cost ratio
(fit + all predictions of the mode) / (all real runs of the case). All figures
are measured in this run.
"""

import argparse
import os
import sys
import time

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
import trust_cases  # noqa: E402

from sktt import TrainingTimePredictor  # noqa: E402
from sktt.dynamics import epsilon_training_time  # noqa: E402
from sktt.validation import run_real_training  # noqa: E402

LRS = (1e-4, 3e-4, 1e-3)
BATCHES = (None, 32)
EPS = (0.01, 0.03, 0.1)
T, WD, BETAS = 150, 0.01, (0.9, 0.999)


class ResidualBlock(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x):
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


class ResidualConvNet(nn.Module):
    def __init__(self, width=16, n_classes=5):
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        self.blocks = nn.Sequential(ResidualBlock(width), ResidualBlock(width))
        self.head = nn.Linear(width, n_classes)

    def forward(self, x):
        h = self.blocks(torch.relu(self.stem(x)))
        return self.head(h.mean(dim=(2, 3)))


def resnet():
    torch.manual_seed(0)
    model = ResidualConvNet()
    Xp, yp = trust_cases._digits((0, 1, 2, 3, 4), 600, 1)
    trust_cases._pretrain(model, Xp, yp, steps=200)
    trust_cases._fresh_head(model.head, 0)
    X, y = trust_cases._digits((5, 6, 7, 8, 9), trust_cases.N_SAMPLES, 0)
    return model, X, y, {}


def convnet():
    model, X, y, _, _ = trust_cases.convnet()
    return model, X, y, {}


def tanh_mlp():
    model, X, y, _, _ = trust_cases.tanh_mlp()
    return model, X, y, {}


def minilm():
    model, X, y, _, _ = trust_cases.transformer(n_samples=32)
    return model, X, y, {"max_memory": "1GB"}


CASES = {"convnet": convnet, "resnet": resnet, "tanh_mlp": tanh_mlp, "minilm": minilm}


def rel_errors(pred, real):
    t_hat = epsilon_training_time(pred, np.array(EPS))
    t = epsilon_training_time(real, np.array(EPS))
    return np.abs(t_hat - t) / np.maximum(t, 1), t, t_hat


def run_case(name):
    model, X, y, kwargs = CASES[name]()
    d = sum(p.numel() for p in model.parameters() if p.requires_grad)
    t0 = time.perf_counter()
    ttp = TrainingTimePredictor(model, optimizer="adamw", lr=LRS[0], betas=BETAS,
                                weight_decay=WD, n_steps=T, n_paths=1, random_state=0,
                                trust_check=False, **kwargs).fit(X, y)
    fit_s = time.perf_counter() - t0
    n, c = ttp.f0_.shape
    modes = ("exact", "approximate") if ttp._adamw_resolved_mode(ttp.get_recipe()) == "exact" \
        else ("approximate",)
    rows, seconds = [], {m: fit_s for m in modes}
    real_s = 0.0
    for b in BATCHES:
        for lr in LRS:
            t1 = time.perf_counter()
            real = run_real_training(model, X, y, optimizer="adamw", lr=lr, betas=BETAS,
                                     weight_decay=WD, n_steps=T, batch_size=b,
                                     seed=ttp.dataloader_seed(0)).loss
            real_s += time.perf_counter() - t1
            for mode in modes:
                t1 = time.perf_counter()
                pred = ttp.predict_curve(lr=lr, batch_size=b, adamw_mode=mode)
                seconds[mode] += time.perf_counter() - t1
                err, t, t_hat = rel_errors(pred, real)
                rows.append(dict(case=name, mode=mode, lr=lr, b=b, err=err, t=t, t_hat=t_hat,
                                 dl=float(np.mean(np.abs(pred - real))), l0=real[0],
                                 lT=real[-1]))
                print(f"  {name:8s} {mode:11s} lr={lr:g} b={b} L: {real[0]:.3f}→{real[-1]:.3f} "
                      f"(pred {pred[-1]:.3f})  T_ε real {t.tolist()} pred {t_hat.tolist()}  "
                      f"|dL| {rows[-1]['dl']:.4f}", flush=True)
    cost = {m: seconds[m] / real_s for m in modes}
    print(f"  {name}: N={n}, C={c}, D={d}, modes {modes}, fit {fit_s:.1f} s, real runs "
          f"{real_s:.1f} s, cost ratio " + ", ".join(f"{m} {cost[m]:.2f}" for m in modes),
          flush=True)
    return rows, cost, dict(n=n, c=c, d=d)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    rows, costs, sizes = [], {}, {}
    for name in args.cases:
        r, cost, size = run_case(name)
        rows += r
        costs[name], sizes[name] = cost, size
    print("\nrelative loss-T_ε error |T̂−T|/max(T,1), ε ∈ {0.01, 0.03, 0.1}, "
          "over lr ∈ {1e-4, 3e-4, 1e-3} and b ∈ {full, 32}")
    print(f"{'case':9s} {'N·C × D':>16s} {'mode':12s} {'median':>7s} {'p90':>7s} "
          f"{'|dL|':>7s} {'cost':>6s}")
    for name in args.cases:
        for mode in costs[name]:
            sel = [r for r in rows if r["case"] == name and r["mode"] == mode]
            err = np.concatenate([r["err"] for r in sel])
            dl = np.mean([r["dl"] for r in sel])
            s = sizes[name]
            print(f"{name:9s} {s['n'] * s['c']:>6d} × {s['d']:<8d} {mode:12s} "
                  f"{np.median(err):7.3f} {np.quantile(err, 0.9):7.3f} {dl:7.4f} "
                  f"{costs[name][mode]:6.2f}")
    for mode in ("exact", "approximate"):
        sel = [r for r in rows if r["mode"] == mode]
        if sel:
            err = np.concatenate([r["err"] for r in sel])
            print(f"{'all':9s} {'':16s} {mode:12s} {np.median(err):7.3f} "
                  f"{np.quantile(err, 0.9):7.3f} {np.mean([r['dl'] for r in sel]):7.4f}")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
