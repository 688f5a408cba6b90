"""Start-up cost: ``import sktt`` and what a script really imports, against ``import torch``.

Each statement runs in a fresh interpreter (no module cache shared), ``--repeat`` times;
the table shows the median wall time, its ratio to ``import torch``, and which heavy
optional modules the statement loaded. ``import sktt`` imports its public names on first
use, ``sktt.gradients`` (what joblib workers import) needs torch and joblib only, and an
estimator adds scikit-learn — which itself imports scipy.stats and pandas (scikit-learn
>= 1.7), the part of the start-up sktt cannot make lazy while its estimators subclass
``BaseEstimator``.

    OMP_NUM_THREADS=1 python benchmarks/bench_import.py [--repeat 3]
"""

import argparse
import os
import statistics
import subprocess
import sys

STATEMENTS = [
    "import torch",
    "import sklearn",
    "import torch, sklearn",
    "import sktt",
    "import sktt.gradients",
    "from sktt import TrainingTimePredictor",
    "from sktt import TrainingTimePredictor; import sktt.plotting",
]
WATCH = ["torch", "sklearn", "scipy.stats", "scipy.integrate", "pandas", "matplotlib", "dask"]

_PROBE = """
import sys, time
t = time.perf_counter()
{stmt}
dt = time.perf_counter() - t
print(dt, ",".join(m for m in {watch!r} if m in sys.modules))
"""


def measure(stmt, repeat):
    times, loaded = [], ""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-c", _PROBE.format(stmt=stmt, watch=WATCH)],
                             capture_output=True, text=True, check=True, env=env,
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        dt, loaded = out.stdout.split()[-2:] if " " in out.stdout.strip() else (
            out.stdout.split()[-1], "")
        times.append(float(dt))
    return statistics.median(times), min(times), max(times), loaded


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
          f"{args.repeat} fresh interpreters per row (median [min, max])")
    base = None
    for stmt in STATEMENTS:
        med, lo, hi, loaded = measure(stmt, args.repeat)
        base = med if base is None else base
        print(f"{stmt:<62s} {med:6.2f} s [{lo:5.2f}, {hi:5.2f}]  {med / base:4.2f}x torch  "
              f"loads: {loaded or '-'}")


if __name__ == "__main__":
    main()
