"""Predicted vs real SGD training times: the paper's SDE against the exact minibatch simulation.

Two pre-trained -> fine-tuned tasks:

* ``demo``: the embedded default (:func:`sktt.datasets.load_demo`: a convnet
  pre-trained on digits 0-4, fine-tuned with a fresh head on digits 5-9);
* ``mlp``: a 64-128-64-5 ReLU MLP pre-trained here (Adam, seeded) on
  standardised, flattened digits 0-4, fine-tuned with a fresh head on 5-9.

For every (batch ∈ {25, 50}) × (momentum ∈ {0, 0.9}) × (3 learning rates), the
real fine-tuning (:func:`sktt.validation.run_real_training`, ``torch.optim.SGD``,
shuffling-DataLoader order seeded 0..S-1, *not* the predictor's orders) is run S
times and compared with each solver's prediction (n_paths=16):

* ``discrete``: exact minibatch simulation of the linearised model;
* ``sde``: the paper's SDE with the diagonal gradient covariance (exact Jacobian);
* ``sde-full``: the same SDE with the full covariance;
* ``ode``: the deterministic gradient flow (reference).

For ε on the loss ({0.01, 0.03, 0.1}) and on the train error ({2, 5} percentage
points) it prints the median, p90 and p95 of |T̂_ε − T_ε| / T_ε over all
(setting, ε, real run) and the fraction within 13 % and 20 %, for the point
prediction (T_ε of the mean curve) and for the median of the per-path T_ε; and
the fraction of steps at which the real loss lies inside the predicted 5-95 %
band. Numbers feed docs/sgd.rst.

    OMP_NUM_THREADS=1 python benchmarks/bench_sgd_accuracy.py [--quick]
"""

import argparse
import os
import time
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from sktt import TrainingTimePredictor  # noqa: E402
from digits_task import digits_finetuning_task  # noqa: E402
from sktt.datasets import load_demo  # noqa: E402
from sktt.dynamics import epsilon_training_time  # noqa: E402
from sktt.validation import run_real_training  # noqa: E402

LOSS_EPS = (0.01, 0.03, 0.1)
ERROR_EPS = (2.0, 5.0)
SOLVERS = {"discrete": dict(solver="discrete"), "sde": dict(solver="sde", sde_noise="diagonal"),
           "sde-full": dict(solver="sde", sde_noise="full"), "ode": dict(solver="ode")}
LRS = {"demo": {0.0: (0.005, 0.01, 0.02), 0.9: (0.0005, 0.001, 0.002)},
       "mlp": {0.0: (0.01, 0.02, 0.05), 0.9: (0.001, 0.002, 0.005)}}


def make_mlp_task(n_samples, seed=0):
    """A 64-128-64-5 ReLU MLP pre-trained on digits 0-4; fine-tuning data from digits 5-9."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                        nn.Linear(64, 5))
    return digits_finetuning_task(net, n_samples, seed, dtype=torch.float32)


def summarise(rel):
    rel = np.asarray(rel, dtype=np.float64)
    return (f"{np.median(rel):6.3f} {np.quantile(rel, 0.9):6.3f} {np.quantile(rel, 0.95):6.3f}"
            f" {np.mean(rel <= 0.13):7.2f} {np.mean(rel <= 0.20):7.2f}  (n={rel.size})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="demo task only, N=100, T=100, one lr per momentum, 2 real runs")
    parser.add_argument("--n-samples", type=int, default=None)
    parser.add_argument("--n-steps", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=None, help="real runs per setting")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # trust / divergence warnings: the numbers say it
    n = args.n_samples or (100 if args.quick else 150)
    T = args.n_steps or (100 if args.quick else 150)
    n_seeds = args.seeds or (2 if args.quick else 3)
    tasks = ["demo"] if args.quick else ["demo", "mlp"]
    print(f"torch {torch.__version__}, 1 thread; N={n}, T={T}, {n_seeds} real runs per "
          f"setting, n_paths=16; loss eps {LOSS_EPS}, error eps {ERROR_EPS} pp")

    # rel[solver][kind][metric] -> list of |T̂-T|/T; kind: "mean" (mean curve) or "median"
    rel = {s: {k: {"loss": [], "error": []} for k in ("mean", "median")} for s in SOLVERS}
    coverage = {s: [] for s in SOLVERS}
    curve_err = {s: {"early": [], "all": []} for s in SOLVERS}
    seconds = {s: [] for s in SOLVERS}
    start = time.perf_counter()
    for task in tasks:
        if task == "demo":
            demo = load_demo(n_samples=n)
            model, X, y = demo.model, demo.X, demo.y
        else:
            model, X, y = make_mlp_task(n)
        t0 = time.perf_counter()
        ttp = TrainingTimePredictor(model, n_steps=T, solver="sde", random_state=0,
                                    trust_check=False).fit(X, y)
        print(f"\n[{task}] fit (exact Θ + diagonal Σ) {time.perf_counter() - t0:.1f} s; "
              f"λ_max(Θ) = {ttp.eigenvalues_[0]:.4g}")
        print(f"{'b':>3} {'m':>4} {'lr':>7} {'solver':>9} {'sec':>5} {'cover':>5} | "
              f"T̂/T loss ε={LOSS_EPS} (mean-curve; real runs) | error ε={ERROR_EPS}")
        for b in (25, 50):
            for m in (0.0, 0.9):
                lrs = LRS[task][m][1:2] if args.quick else LRS[task][m]
                for lr in lrs:
                    reals = [run_real_training(model, X, y, lr=lr, momentum=m, batch_size=b,
                                               n_steps=T, seed=s) for s in range(n_seeds)]
                    real = {"loss": np.array([r.loss for r in reals]),
                            "error": np.array([r.error for r in reals])}
                    real_t = {"loss": epsilon_training_time(real["loss"], LOSS_EPS),
                              "error": epsilon_training_time(real["error"], ERROR_EPS)}
                    for name, kw in SOLVERS.items():
                        t0 = time.perf_counter()
                        params = dict(lr=lr, momentum=m, batch_size=b, **kw)
                        band = ttp.predict_curve("loss", return_band=True, **params)
                        cells = []
                        for metric, eps in (("loss", LOSS_EPS), ("error", ERROR_EPS)):
                            try:
                                dist = ttp.predict_time(eps, metric, return_distribution=True,
                                                        **params)
                                point, median = dist.point, dist.median
                            except ValueError:  # diverged prediction: count as T̂ = T
                                point = median = np.full(len(eps), T)
                            rt = real_t[metric]
                            rel[name]["mean"][metric].extend((np.abs(point - rt) / rt).ravel())
                            rel[name]["median"][metric].extend((np.abs(median - rt) / rt).ravel())
                            cells.append(f"{'/'.join(map(str, np.asarray(point).tolist()))}; "
                                         + " ".join('/'.join(map(str, r)) for r in rt.tolist()))
                        seconds[name].append(time.perf_counter() - t0)
                        inside = ((real["loss"] >= band.lower) & (real["loss"] <= band.upper))
                        coverage[name].append(inside[:, 1:].mean())
                        # mean predicted vs mean real loss curve, relative, steps 1..20 and 1..T
                        gap = np.abs(band.mean - real["loss"].mean(0)) / real["loss"].mean(0)
                        curve_err[name]["early"].append(gap[1:21].mean())
                        curve_err[name]["all"].append(gap[1:].mean())
                        print(f"{b:>3} {m:>4} {lr:>7g} {name:>9} {seconds[name][-1]:5.1f} "
                              f"{coverage[name][-1]:5.2f} | {cells[0]:<28} | {cells[1]}",
                              flush=True)

    print(f"\nTotal {time.perf_counter() - start:.0f} s.")
    print("\n|T̂_ε − T_ε| / T_ε over all settings, ε and real runs")
    print(f"{'solver':>9} {'point':>11} {'metric':>6} | {'median':>6} {'p90':>6} {'p95':>6} "
          f"{'<=13%':>7} {'<=20%':>7}")
    for name in SOLVERS:
        for kind in ("mean", "median"):
            if name == "ode" and kind == "median":
                continue
            for metric in ("loss", "error", "both"):
                values = (rel[name][kind]["loss"] + rel[name][kind]["error"] if metric == "both"
                          else rel[name][kind][metric])
                label = "mean curve" if kind == "mean" else "path median"
                print(f"{name:>9} {label:>11} {metric:>6} | {summarise(values)}")
    print("\nShare of steps with the real loss inside the predicted 5-95 % band "
          "(median over settings and runs; min); relative gap between the predicted mean "
          "loss curve and the mean real one, averaged over steps 1-20 and 1-T (median, p90 "
          "over settings); seconds per prediction (median)")
    for name in SOLVERS:
        early, whole = np.array(curve_err[name]["early"]), np.array(curve_err[name]["all"])
        print(f"{name:>9}: coverage {np.median(coverage[name]):.2f} (min "
              f"{np.min(coverage[name]):.2f}); curve gap 1-20 {np.median(early):.3f} "
              f"(p90 {np.quantile(early, 0.9):.3f}), 1-T {np.median(whole):.3f} "
              f"(p90 {np.quantile(whole, 0.9):.3f}); {np.median(seconds[name]):.2f} s")


if __name__ == "__main__":
    main()
