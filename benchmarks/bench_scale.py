"""Scale: fit and a grid of settings at N = 1 000 .. 20 000 samples, C = 10 (issue 14).

For each N, in its own child process (so the peak RSS is that N's), on a small
convnet over random-but-fixed 3×32×32 inputs (seeded), labelled by a
teacher (``--labels teacher``, default: the argmax of the standardised logits of
the same architecture with perturbed seeded weights, so there is something to
learn, as in fine-tuning, and the ten classes are balanced)
or uniformly at random (``--labels random``: the loss barely moves from
log C and T_ε sits in the SGD noise), this measures

* ``fit``: ``TrainingTimePredictor.fit`` with ``projection="countsketch"``,
  ``projection_dim=1024``, ``ntk="auto"`` (the mode it picked is printed), the
  trust diagnostic included (its cost printed apart, and its share of the fit
  without it: the issue's measure);
* ``grid``: six settings (lr × momentum) of SGD with b = 32, T = 1000 steps,
  4 simulated paths, each ``predict_curve(steps=[0, T])`` (the ends of the
  curve) and ``predict_time`` at ε = 10 % of that setting's predicted loss
  drop, with the setting as overrides: seconds per setting, and of those the
  sketch-space steps alone (the simulation, cached for the two calls). With the
  factored kernel ``predict_time`` computes the curve only where the convexity
  bounds say it may cross (``sktt.dynamics._factored.FactoredCurves``).
  A setting whose ε is below the SGD noise of its final loss (``predict_time``'s
  ``EpsilonWarning``: T_ε is then a chance crossing) is marked, and each
  setting is run again from scratch (its cached simulation dropped) at
  ε = max(10 % of the drop, 2 s), s the standard error of the paths' final
  losses: a time rather than a chance crossing, timed apart;
* ``full curve``: then ``predict_curve()`` of the first setting, every step of
  every path (what a plot needs), timed apart;
* ``real``: one real 1000-step SGD run (b = 32, ``torch.optim.SGD``, the same
  batches a DataLoader would draw) of a copy of the model, timed in the same
  process — what one setting costs without sktt (no evaluation passes);
* ``peak RSS``: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of the child.

``--dataset`` feeds ``fit`` a ``torch.utils.data.Dataset`` that generates sample i
from seed i when asked (nothing held), instead of one (N, 3, 32, 32) tensor: the
fit streams it a chunk at a time (:mod:`sktt.gradients._streaming`), and the
real run collates its batches from it. The peak RSS then holds no copy of the
inputs (a tensor would be N × 12 KiB: 0.23 GiB at N = 20 000).

It prints one line per N and how fit and grid time grow with N. Targets (issue
14) at N = 20 000: peak RSS ≤ 4 GiB, fit + 6-setting grid ≤ 10 min on the
2-core development machine, every setting's dynamics cheaper than its real run.

Usage::

    python benchmarks/bench_scale.py                      # N = 1000, 5000, 20000
    python benchmarks/bench_scale.py --sizes 1000 --steps 200   # a quick look
    python benchmarks/bench_scale.py --dataset --sizes 1000 5000 --steps 200  # streamed

Threads: one torch/BLAS thread by default (``--threads``), as the other
benchmarks on the shared development cores.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

GRID = [(0.05, 0.0), (0.1, 0.0), (0.3, 0.0), (0.01, 0.9), (0.03, 0.9), (0.1, 0.5)]
EPS_FRACTION = 0.1  # ε = this fraction of the predicted loss drop L_0 − L_T of each setting


def _model(torch, n_classes):
    torch.manual_seed(0)
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        nn.Flatten(), nn.Linear(128, n_classes)).eval()


def _generated_image(torch, batch=None):
    """Image i (3×32×32) from seed i: ``image(i)``, or the stacked images of ``batch=(s, e)``."""
    def image(i):
        return torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(int(i)))

    if batch is not None:
        return torch.stack([image(i) for i in range(*batch)])
    return image


def _labels(torch, model, images, n, n_classes, kind):
    """Teacher labels (balanced, learnable) or uniform random ones, (n,) int64."""
    if kind == "random":
        return torch.randint(0, n_classes, (n,), generator=torch.Generator().manual_seed(0))
    teacher = _model(torch, n_classes)
    gt = torch.Generator().manual_seed(1)
    teacher.load_state_dict({k: v + 0.5 * torch.randn(v.shape, generator=gt)
                             for k, v in model.state_dict().items()})
    with torch.no_grad():
        z = torch.cat([teacher(images(s, min(s + 1000, n))) for s in range(0, n, 1000)])
    return ((z - z.mean(0)) / z.std(0)).argmax(1)  # standardised logits: balanced classes


def _generated(torch, image, y):
    """A Dataset generating sample i (image i, label y[i]) when asked."""

    class Generated(torch.utils.data.Dataset):
        def __len__(self):
            return len(y)

        def __getitem__(self, i):
            return image(i), int(y[i])

    return Generated()


def _child(args):
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import numpy as np
    import torch

    from sktt import TrainingTimePredictor
    from sktt.dynamics import epsilon_flags, final_value_noise
    from sktt.exceptions import DivergenceError
    from sktt.utils._batches import dataloader_batches

    torch.set_num_threads(args.threads)
    n, c = args.n, args.classes
    model = _model(torch, c)
    image = _generated_image(torch)
    if args.dataset:  # streamed: fit(dataset), the real run collates its batches
        images = lambda s, e: torch.stack([image(i) for i in range(s, e)])  # noqa: E731
    else:
        X = torch.cat([_generated_image(torch, batch=(s, min(s + 1000, n)))
                       for s in range(0, n, 1000)])
        images = lambda s, e: X[s:e]  # noqa: E731
    y = _labels(torch, model, images, n, c, args.labels)
    if args.dataset:
        X = _generated(torch, image, y)
        batch_of = lambda idx: torch.utils.data.default_collate(  # noqa: E731
            [X[int(i)] for i in idx])
        y_fit = None
    else:
        batch_of = lambda idx: (X[idx], y[idx])  # noqa: E731
        y_fit = y
    out = {"n": n, "n_params": sum(p.numel() for p in model.parameters())}

    ttp = TrainingTimePredictor(model, lr=GRID[0][0], batch_size=args.batch, n_steps=args.steps,
                                n_paths=args.paths, projection="countsketch",
                                projection_dim=args.dim, max_memory=args.max_memory,
                                random_state=0)
    t0 = time.perf_counter()
    ttp.fit(X, y_fit)
    out["fit_s"] = time.perf_counter() - t0
    out["trust_s"] = getattr(ttp, "trust_seconds_", float("nan"))
    out["mode"] = ttp.ntk_mode_
    out["rss_after_fit_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    grid = []
    for lr, m in GRID:
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # divergence, trust and ε warnings: reported below
            # the sketch-space steps alone (cached: the calls below reuse them)
            ttp._curves(ttp._setting(dict(lr=lr, momentum=m)))
            simulated = time.perf_counter() - t0
            band = ttp.predict_curve(steps=[0, args.steps], lr=lr, momentum=m, return_band=True)
            ends, finals = band.mean, band.paths[:, -1]
            eps = EPS_FRACTION * abs(ends[0] - ends[-1])
            try:
                steps = int(ttp.predict_time(eps=eps, lr=lr, momentum=m)) if eps > 0 else 0
            except DivergenceError:
                steps = -1
        seconds = time.perf_counter() - t0
        # the share of the steps the search computed (the cached result of this setting)
        setting = ttp._setting(dict(lr=lr, momentum=m))
        computed = getattr(ttp._curves(setting), "computed_fraction", 1.0)
        # ε below the noise of L_T: T_ε is a chance crossing (predict_time's EpsilonWarning)
        noisy = epsilon_flags(eps, ends[0], ends[-1], finals) == "eps_below_noise"
        # The same setting from scratch (its cached run dropped) at an ε that is a time,
        # not a chance crossing: at least twice the standard error of the paths' L_T.
        noise = final_value_noise(finals)
        ttp._cache.pop(setting.key)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            eps_above = max(eps, 2 * noise)
            try:
                steps_above = int(ttp.predict_time(eps=eps_above, lr=lr, momentum=m))
            except DivergenceError:
                steps_above = -1
        seconds_above = time.perf_counter() - t0
        grid.append({"lr": lr, "momentum": m, "seconds": seconds, "simulated": simulated,
                     "T_eps": steps, "eps_below_noise": bool(noisy), "noise": noise,
                     "eps_above": eps_above, "T_eps_above": steps_above,
                     "seconds_above": seconds_above,
                     "L0": float(ends[0]), "LT": float(ends[-1]), "computed": computed})
    out["grid"] = grid
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ttp.predict_curve(lr=GRID[0][0], momentum=GRID[0][1])  # every step of every path
    out["full_curve_s"] = time.perf_counter() - t0

    # one real run of the first setting: torch SGD on the batches of a shuffling DataLoader
    net = _model(torch, c).train()
    net.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(net.parameters(), lr=GRID[0][0])
    batches = dataloader_batches(n, args.batch, args.steps, seed=ttp.dataloader_seed(0))
    lossf = torch.nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    for idx in batches:
        xb, yb = batch_of(torch.as_tensor(np.asarray(idx)))
        opt.zero_grad()
        lossf(net(xb), yb).backward()
        opt.step()
    out["real_s"] = time.perf_counter() - t0
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("RESULT " + json.dumps(out), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--paths", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-memory", default="3GB")
    parser.add_argument("--labels", choices=("teacher", "random"), default="teacher")
    parser.add_argument("--dataset", action="store_true",
                        help="fit a lazily generating Dataset instead of a tensor")
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    if args.n is not None:
        return _child(args)
    print(f"convnet on 3x32x32, C={args.classes}, countsketch D0={args.dim}, SGD b={args.batch}, "
          f"T={args.steps}, {args.paths} paths, {len(GRID)} settings, {args.threads} thread(s), "
          f"max_memory={args.max_memory}, {args.labels} labels, inputs: "
          f"{'a Dataset generating samples on demand' if args.dataset else 'one tensor'}",
          flush=True)
    rows = []
    for n in args.sizes:
        cmd = [sys.executable, __file__, "--n", str(n)] + [
            a for k, v in vars(args).items() if k not in ("n", "sizes", "dataset")
            for a in (f"--{k.replace('_', '-')}", str(v))] + (["--dataset"] * args.dataset)
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        line = [s for s in proc.stdout.splitlines() if s.startswith("RESULT ")]
        if proc.returncode or not line:
            print(f"N={n}: failed (rc {proc.returncode})\n{proc.stderr[-3000:]}", flush=True)
            continue
        r = json.loads(line[0][7:])
        rows.append(r)
        grid_s = [s["seconds"] for s in r["grid"]]
        print(f"N={n:6d} ({r['n_params']} params) mode={r['mode']:8s} fit {r['fit_s']:7.1f} s "
              f"(trust {r['trust_s']:.1f} s = {100 * r['trust_s'] / (r['fit_s'] - r['trust_s']):.1f} "
              "% of the fit without it), grid "
              f"{sum(grid_s):7.1f} s ({min(grid_s):.1f}-{max(grid_s):.1f} s/setting), "
              f"fit+grid {r['fit_s'] + sum(grid_s):7.1f} s, full curve of one setting "
              f"{r['full_curve_s']:.1f} s, real {args.steps}-step run "
              f"{r['real_s']:6.1f} s, peak RSS {r['peak_rss_gib']:.2f} GiB (after fit "
              f"{r['rss_after_fit_gib']:.2f} GiB)", flush=True)
        print("        (lr, momentum): L_0 -> L_T, T_eps at eps = 10 % of the drop: " + ", ".join(
            f"({s['lr']:g}, {s['momentum']:g}): {s['L0']:.4f} -> {s['LT']:.4f}, {s['T_eps']}"
            f"{' (eps below the SGD noise of L_T)' if s['eps_below_noise'] else ''} "
            f"[{s['seconds']:.1f} s, of which steps {s['simulated']:.1f} s; "
            f"{100 * s['computed']:.0f} % of steps computed]"
            for s in r["grid"]), flush=True)
        print("        the same from scratch at eps = max(10 % of the drop, 2 x the standard error "
              "s of the paths' L_T): " + ", ".join(
                  f"({s['lr']:g}, {s['momentum']:g}): s = {s['noise']:.2g}, eps = "
                  f"{s['eps_above']:.2g}, T_eps {s['T_eps_above']} [{s['seconds_above']:.1f} s]"
                  for s in r["grid"]), flush=True)
    for a, b in zip(rows, rows[1:]):
        ratio = b["n"] / a["n"]
        grow = lambda key: b[key] / a[key]  # noqa: E731
        grid_a = sum(s["seconds"] for s in a["grid"])
        grid_b = sum(s["seconds"] for s in b["grid"])
        print(f"N {a['n']} -> {b['n']} (x{ratio:g}): fit x{grow('fit_s'):.2f}, grid "
              f"x{grid_b / grid_a:.2f}, peak RSS x{grow('peak_rss_gib'):.2f}")


if __name__ == "__main__":
    main()
