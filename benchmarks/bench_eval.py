"""Predicted vs real held-out curves and early-stopping step on the demo convnet.

The demo convnet (pre-trained on digits 0-4, fresh head) is fine-tuned on digits 5-9
whose training labels are partly corrupted (``--noise``, default 30 %), so the
held-out loss falls and then turns upward as the net fits the wrong labels. One
predictor is fitted with ``eval_set`` (clean held-out digits); for each setting the
real fine-tuning (:func:`sktt.validation.compare_with_real`, SGD on the prediction's
own batch order) records the held-out loss and error after every step. Printed per
setting: the predicted and real best step (lowest held-out loss, and error), the
held-out loss there, the final held-out loss, and the largest relative gap between
the predicted and real held-out loss curves (up to the real best step, median and
maximum over all steps), and the trust level of the setting (docs/trust.rst).
Numbers feed docs/held_out.rst.

    OMP_NUM_THREADS=1 python benchmarks/bench_eval.py [--n-samples 150] [--n-eval 300]
"""

import argparse
import time

import numpy as np
import torch

from sktt import TrainingTimePredictor
from sktt.datasets import load_demo
from sktt.validation import compare_with_real


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=150)
    parser.add_argument("--n-eval", type=int, default=300)
    parser.add_argument("--n-steps", type=int, default=300)
    parser.add_argument("--noise", type=float, default=0.3,
                        help="fraction of training labels replaced by random classes")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    demo = load_demo(args.n_samples + args.n_eval)
    X, y = demo.X[:args.n_samples], demo.y[:args.n_samples].clone()
    X_val, y_val = demo.X[args.n_samples:], demo.y[args.n_samples:]
    rng = np.random.default_rng(0)
    flip = rng.random(args.n_samples) < args.noise
    y[flip] = torch.as_tensor(rng.integers(0, 5, int(flip.sum())))
    t0 = time.perf_counter()
    ttp = TrainingTimePredictor(demo.model, n_steps=args.n_steps, random_state=0,
                                trust_check=False, n_paths=4)
    ttp.fit(X, y, eval_set=(X_val, y_val))
    print(f"torch {torch.__version__}, 1 thread; demo convnet ({ttp.n_params_:,} trainable "
          f"parameters), N={args.n_samples} ({int(flip.sum())} labels corrupted), "
          f"N_val={args.n_eval} clean, T={args.n_steps}; fit with eval_set "
          f"{time.perf_counter() - t0:.1f} s (exact Θ and cross-kernel)")
    settings = [dict(lr=0.008, momentum=0.0, batch_size=None),
                dict(lr=0.008, momentum=0.9, batch_size=None),
                dict(lr=0.005, momentum=0.9, batch_size=32),
                dict(lr=0.05, momentum=0.0, batch_size=None)]  # past the stability edge
    print(f"{'lr':>5} {'mom':>4} {'batch':>5} | {'best step (loss)':>16} | "
          f"{'eval loss at best':>17} | {'final eval loss':>15} | {'best step (err)':>15} | "
          f"{'eval err at best':>16} | {'rel gap, eval loss':>24} | trust")
    print(f"{'':>17}| {'pred / real':>16} | {'pred / real':>17} | {'pred / real':>15} | "
          f"{'pred / real':>15} | {'pred / real':>16} | {'max ≤best / median / max':>24}")
    for s in settings:
        res = compare_with_real(ttp, X, y, eps=0.01, **s)
        run = res.real_runs[0]
        pred = res.predicted_curves["eval_loss"]
        pred_err = res.predicted_curves["eval_error"]
        b_pred, b_real = res.predicted_best_step, int(res.real_best_steps[0])
        err = res.evaluate(metric="error")
        e_pred, e_real = err.predicted_best_step, int(err.real_best_steps[0])
        gap = np.abs(pred - run.eval_loss) / run.eval_loss
        gaps = f"{gap[:b_real + 1].max():.3f} / {np.median(gap):.3f} / {gap.max():.3f}"
        batch = "full" if s["batch_size"] is None else s["batch_size"]
        print(f"{s['lr']:>5g} {s['momentum']:>4g} {batch:>5} | {b_pred:>7} / {b_real:<6} | "
              f"{pred[b_pred]:>7.4f} / {run.eval_loss[b_real]:<7.4f} | "
              f"{pred[-1]:>6.4f} / {run.eval_loss[-1]:<6.4f} | {e_pred:>6} / {e_real:<6} | "
              f"{pred_err[e_pred]:>6.2f} / {run.eval_error[e_real]:<6.2f}  | {gaps:>24} | "
              f"{ttp.trust_report(**s).level}")
    print(f"(SGD: the prediction for the real run's batch order; total "
          f"{time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
