"""Fit time with n_jobs=1 and n_jobs=2 on the demo convnet: the small-job threshold at work.

For each N, times ``TrainingTimePredictor(demo.model, n_jobs=...).fit(X, y)`` (exact Θ,
the default) with ``n_jobs=1``, ``n_jobs=2`` as shipped (jobs under
``MIN_PARALLEL_ENTRIES`` Jacobian entries N·C·D run serially), and ``n_jobs=2`` with the
threshold disabled (the process workers start whatever the size: what ``n_jobs=2`` cost
before). Each fit runs ``--repeats`` times in this process; the median is printed, with the
ratio to ``n_jobs=1``. Figures feed docs/parallel.rst; they depend on the machine and its load.

    OMP_NUM_THREADS=1 python benchmarks/bench_n_jobs.py [--sizes 60 150 300] [--repeats 3]
"""

import argparse
import time

import numpy as np
import torch

import sktt.gradients._parallel as parallel
from sktt import TrainingTimePredictor
from sktt.datasets import load_demo


def fit_seconds(demo, n_jobs, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        TrainingTimePredictor(demo.model, n_jobs=n_jobs, trust_check=False).fit(demo.X, demo.y)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[60, 150, 300])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    shipped = parallel.MIN_PARALLEL_ENTRIES
    print(f"threshold MIN_PARALLEL_ENTRIES = {shipped:.0e} Jacobian entries (N·C·D); "
          f"torch threads 1; median of {args.repeats} fits")
    print(f"{'N':>5} {'N·C·D':>9} {'n_jobs=1':>9} {'n_jobs=2':>9} {'ratio':>6} "
          f"{'2, no threshold':>16} {'ratio':>6}")
    for n in args.sizes:
        demo = load_demo(n_samples=n)
        n_params = sum(p.numel() for p in demo.model.parameters() if p.requires_grad)
        entries = n * 5 * n_params
        fit_seconds(demo, 1, 1)  # warm-up (first-call costs)
        one = fit_seconds(demo, 1, args.repeats)
        two = fit_seconds(demo, 2, args.repeats)
        parallel.MIN_PARALLEL_ENTRIES = 0
        try:
            forced = fit_seconds(demo, 2, args.repeats)
        finally:
            parallel.MIN_PARALLEL_ENTRIES = shipped
        print(f"{n:>5} {entries:>9.2e} {one:>8.2f}s {two:>8.2f}s {two / one:>6.2f} "
              f"{forced:>15.2f}s {forced / one:>6.2f}")


if __name__ == "__main__":
    main()
