"""GramSpectrum validation: predict N-sample MSE training from a subset of N0, against the exact Θ.

Task: the demo convnet (37,957 parameters, C = 5 outputs), squared error on
one-hot targets, N samples from ``sktt.datasets.make_augmented_digits(N,
random_state=0)`` (896 real digits of classes 5-9 in random order, then shifted
+ noisy copies). For every N:

1. full path (in a child process, for its own peak memory): the kernel of all N
   samples (``TrainingTimePredictor(loss="mse").fit``: Jacobians, Θ, eigh), its
   eigenvalues λ_k and projections p_k, and the gradient-flow loss curve;
2. subset path, for N0 ∈ {N/10, N/4} and several random subsets: the kernel of
   N0 samples, extrapolated by ``GramSpectrum`` with ‖δy‖² from a forward pass
   over all N samples. Compared with 1: relative error of λ̂_k by band of k, the
   loss curve (max over t of the relative error), and T_ε for ε = L0·{10, 3, 1,
   0.3, 0.1} %.
3. time and peak memory (RSS of a child process) of the subset path vs the full
   path for the largest N, printed as ratios.

Both paths use the same kernel (exact, or the same ``--projection`` with the
same seed, in which case the subset kernel is a principal sub-matrix of the
full one), so the errors are those of the extrapolation alone.

Run:  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_spectrum.py --n 1000 2000
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

DYNAMICS = {"lr": 1e-3, "momentum": 0.9, "n_steps": 1000}  # η̃ = 0.01, as a fine-tuning run
EPS_FRACTIONS = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3)
BANDS = ((1, 10), (11, 100), (101, 1000), (1001, None))


def _setup(threads):
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def _data(n):
    import torch

    from sktt.datasets import load_demo_model, make_augmented_digits

    X, y = make_augmented_digits(n, random_state=0)
    Y = torch.nn.functional.one_hot(y, 5).to(torch.float32)
    return load_demo_model(), X, Y


def _peak_rss_mb():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _rss_mb():
    """Current resident set size (Linux), the baseline the peak is compared with."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return float(line.split()[1]) / 1024.0
    return float("nan")


def _kernel_kwargs(args):
    if args.projection == "none":
        return {"projection": None}
    return {"projection": args.projection, "projection_dim": args.dim}


# ---------------------------------------------------------------------- children
def child_full(args):
    """Full-N path: Θ of all N samples, its eigendecomposition and the curve."""
    import numpy as np

    from sktt import TrainingTimePredictor

    model, X, Y = _data(args.n)
    base = _rss_mb()
    start = time.perf_counter()
    ttp = TrainingTimePredictor(model, loss="mse", solver="ode", max_memory=args.max_memory,
                                random_state=0, trust_check=False, **_kernel_kwargs(args),
                                **DYNAMICS)
    ttp.fit(X, Y)
    curve = ttp.predict_curve()
    seconds = time.perf_counter() - start
    residual = (ttp.f0_ - ttp.targets_).ravel()
    np.savez(args.out, eigenvalues=ttp.eigenvalues_, curve=curve,
             projections=(ttp.eigenvectors_.T @ residual) ** 2, seconds=seconds,
             peak_rss_mb=_peak_rss_mb(), base_rss_mb=base)


def child_subset(args):
    """Subset path: ‖δy‖² by forward passes over all N, Θ of N0 samples, extrapolation, curve."""
    import numpy as np

    from sktt import GramSpectrum
    from sktt.gradients import residual_sq_norm

    model, X, Y = _data(args.n)
    idx = np.random.default_rng(args.seed).choice(args.n, args.n0, replace=False)
    base = _rss_mb()
    start = time.perf_counter()
    norm = residual_sq_norm(model, X, Y)
    spec = GramSpectrum.from_model(model, X[idx], Y[idx], n_samples=args.n,
                                   residual_sq_norm=norm, max_memory=args.max_memory,
                                   random_state=0, **_kernel_kwargs(args),
                                   **DYNAMICS)
    spec.predict_curve()
    seconds = time.perf_counter() - start
    np.savez(args.out, seconds=seconds, peak_rss_mb=_peak_rss_mb(), base_rss_mb=base)


def _run_child(kind, args, **extra):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.npz")
        cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, "--out", out,
               "--threads", str(args.threads), "--projection", args.projection,
               "--dim", str(args.dim), "--max-memory", args.max_memory]
        for key, value in extra.items():
            cmd += [f"--{key}", str(value)]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        subprocess.run(cmd, check=True, env=env)
        import numpy as np

        with np.load(out) as data:
            return {k: data[k] for k in data.files}


# ---------------------------------------------------------------------- comparison
def _band_errors(pred, full):
    import numpy as np

    out = {}
    positive = full > 1e-10 * full[0]
    for lo, hi in BANDS:
        hi_ = len(full) if hi is None else min(hi, len(full))
        if lo > hi_:
            continue
        sl = slice(lo - 1, hi_)
        ok = positive[sl]
        rel = np.abs(pred[sl][ok] - full[sl][ok]) / full[sl][ok]
        out[f"{lo}-{hi_}"] = float(np.median(rel))
    return out


def _compare(spec, full, eps):
    import numpy as np

    from sktt.dynamics import epsilon_training_time

    curve = spec.predict_curve()
    t_full = epsilon_training_time(full["curve"], eps)
    t_pred = epsilon_training_time(curve, eps)
    return {
        "eig_rel_median": _band_errors(spec.predicted_eigenvalues_, full["eigenvalues"]),
        "curve_max_rel": float(np.max(np.abs(curve - full["curve"]) / full["curve"])),
        "final_loss_rel": float(curve[-1] / full["curve"][-1] - 1.0),
        "T_full": t_full.tolist(),
        "T_pred": t_pred.tolist(),
        "T_rel": ((t_pred - t_full) / np.maximum(t_full, 1)).tolist(),
    }


def _variants():
    return {
        "default (α=0.15, window 21)": {},
        "α=0": {"alpha": 0.0},
        "α=0.2": {"alpha": 0.2},
        "paper anchor (width 1)": {"anchor_width": 1},
        "p scaled by N/N0": {"projection_scale": "samples"},
    }


def accuracy(args, n, full):
    """Subset fits for N0 ∈ {N/10, N/4} and ``args.seeds`` subsets; returns rows of results."""
    import numpy as np

    from sktt import TrainingTimePredictor
    from sktt.exceptions import InfeasibleTailError
    from sktt.gradients import residual_sq_norm

    model, X, Y = _data(n)
    norm = residual_sq_norm(model, X, Y)
    eps = np.asarray(EPS_FRACTIONS) * full["curve"][0]
    rows, scaling = [], {}
    for n0 in (n // 10, n // 4):
        for seed in range(args.seeds):
            idx = np.random.default_rng(seed).choice(n, n0, replace=False)
            ttp = TrainingTimePredictor(model, loss="mse", solver="ode",
                                        max_memory=args.max_memory, random_state=0,
                                        trust_check=False, **_kernel_kwargs(args),
                                        **DYNAMICS).fit(X[idx], Y[idx])
            if seed == 0:
                residual = (ttp.f0_ - ttp.targets_).ravel()
                p_sub = (ttp.eigenvectors_.T @ residual) ** 2
                scaling[n0] = (ttp.eigenvalues_ / n0, np.cumsum(p_sub) / p_sub.sum())
            for name, params in _variants().items():
                try:
                    spec = ttp.extrapolate(n, residual_sq_norm=norm, **params)
                except InfeasibleTailError:
                    rows.append({"n": n, "n0": n0, "seed": seed, "variant": name,
                                 "infeasible": True})
                    continue
                res = _compare(spec, full, eps)
                res.update(n=n, n0=n0, seed=seed, variant=name, infeasible=False,
                           s=spec.power_law_exponent_, s_n=spec.predicted_exponent_,
                           b=spec.projection_tail_exponent_, fit_range=spec.fit_range_)
                rows.append(res)
    p_full = full["projections"]
    scaling[n] = (full["eigenvalues"] / n, np.cumsum(p_full) / p_full.sum())
    return rows, scaling


def _print_accuracy(rows, n):
    import numpy as np

    print(f"\n=== N = {n}: subset prediction vs exact full-N (gradient flow, η̃ = 0.01, "
          f"T = {DYNAMICS['n_steps']}) ===")
    for n0 in sorted({r["n0"] for r in rows if r["n"] == n}):
        print(f"\n-- N0 = {n0} (N/{n // n0}) --")
        for variant in _variants():
            sel = [r for r in rows if r["n"] == n and r["n0"] == n0 and r["variant"] == variant]
            ok = [r for r in sel if not r["infeasible"]]
            line = f"{variant:30s} feasible {len(ok)}/{len(sel)}"
            if ok:
                bands = ok[0]["eig_rel_median"].keys()
                eig = " ".join(f"{b}:{np.mean([r['eig_rel_median'][b] for r in ok]):.2f}"
                               for b in bands)
                curve = [r["curve_max_rel"] for r in ok]
                t_rel = np.abs(np.array([r["T_rel"] for r in ok]))
                line += (f" | λ median rel err by k band {eig}"
                         f" | curve max rel err mean {np.mean(curve):.3f} worst {np.max(curve):.3f}"
                         f" | |T_ε rel err| mean by ε {np.round(t_rel.mean(axis=0), 3).tolist()}"
                         f" worst {t_rel.max():.3f}")
            print(line)
        d = [r for r in rows if r["n"] == n and r["n0"] == n0
             and r["variant"].startswith("default") and not r["infeasible"]]
        if d:
            print(f"   T_ε full {d[0]['T_full']}; predicted per subset: "
                  f"{[r['T_pred'] for r in d]}; s = {[round(r['s'], 3) for r in d]}, "
                  f"b = {[round(r['b'], 3) for r in d]}, fit range {d[0]['fit_range']}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 2000])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--projection", default="none",
                        choices=["none", "countsketch", "gaussian", "achlioptas"])
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-memory", default="10GB")
    parser.add_argument("--json", default=None, help="write all results here")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--child", choices=["full", "subset"], default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--n0", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    _setup(args.threads)
    if args.child is not None:
        args.n = args.n[0]
        return child_full(args) if args.child == "full" else child_subset(args)

    import numpy as np

    print(f"kernel: {args.projection}{'' if args.projection == 'none' else f' D0={args.dim}'}; "
          f"threads: {args.threads}; seeds per N0: {args.seeds}")
    report = {"rows": [], "timing": {}, "scaling": {}}
    for n in args.n:
        full = _run_child("full", args, n=n)
        full_extra = float(full["peak_rss_mb"] - full["base_rss_mb"])
        print(f"\nfull path N={n}: {float(full['seconds']):.1f} s, peak RSS "
              f"{float(full['peak_rss_mb']):.0f} MB ({full_extra:.0f} MB above the "
              f"{float(full['base_rss_mb']):.0f} MB after imports and data)")
        report["timing"][f"full_{n}"] = {"seconds": float(full["seconds"]),
                                         "peak_rss_mb": float(full["peak_rss_mb"]),
                                         "extra_rss_mb": full_extra}
        rows, scaling = accuracy(args, n, full)
        report["rows"] += rows
        _print_accuracy(rows, n)
        ks = [k for k in (1, 5, 10, 50, 100, 200, 400) if k <= len(scaling[min(scaling)][0])]
        print("\nscaling check (subset seed 0 and full): λ_k/N at k = " + str(ks)
              + "; fraction of ‖δy‖² in the top 10 / 100 modes")
        for size, (lam, frac) in sorted(scaling.items()):
            print(f"  N={size:5d}: " + " ".join(f"{lam[k - 1]:.4g}" for k in ks)
                  + f" | {frac[9]:.4f} {frac[99]:.4f}")
            report["scaling"][f"{n}:{size}"] = {
                "k": ks, "lambda_over_n": [float(lam[k - 1]) for k in ks],
                "top10": float(frac[9]), "top100": float(frac[99])}
        if not args.skip_timing and n == max(args.n):
            print(f"\n=== time and memory, N = {n} ===")
            for n0 in (n // 10, n // 4):
                sub = _run_child("subset", args, n=n, n0=n0)
                sub_extra = float(sub["peak_rss_mb"] - sub["base_rss_mb"])
                ratio_t = float(full["seconds"]) / float(sub["seconds"])
                ratio_m = float(full["peak_rss_mb"]) / float(sub["peak_rss_mb"])
                ratio_x = full_extra / max(sub_extra, 1.0)
                print(f"subset path N0={n0}: {float(sub['seconds']):.2f} s, peak RSS "
                      f"{float(sub['peak_rss_mb']):.0f} MB ({sub_extra:.0f} MB above baseline)"
                      f"  ->  full/subset: time {ratio_t:.1f}x, peak RSS {ratio_m:.1f}x, "
                      f"memory above baseline {ratio_x:.1f}x")
                report["timing"][f"subset_{n}_{n0}"] = {
                    "seconds": float(sub["seconds"]), "peak_rss_mb": float(sub["peak_rss_mb"]),
                    "extra_rss_mb": sub_extra, "time_ratio": ratio_t, "memory_ratio": ratio_m,
                    "extra_memory_ratio": ratio_x}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1, default=lambda o: np.asarray(o).tolist())


if __name__ == "__main__":
    main()
