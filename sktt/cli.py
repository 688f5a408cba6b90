"""Command line: ``python -m sktt`` / ``sktt`` with ``demo``, ``predict`` and ``validate``.

A thin layer over the public API: :class:`~sktt.TrainingTimePredictor` (fit once,
predict a grid of lr × momentum × batch size), its ``measure_step_time`` for
seconds, and :func:`sktt.validation.compare_with_real` for real fine-tuning.

Exit codes: 0 success; 2 bad usage or bad input (unreadable file, wrong shapes,
invalid parameter values); 1 any other failure.
"""

import argparse
import itertools
import json
import math
import os
import sys
import time
import warnings

__all__ = ["main", "build_parser"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class _UsageError(Exception):
    """Bad input detected by the CLI itself (reported with exit code 2)."""


# ---------------------------------------------------------------------- arguments
def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number > 0")
    return value


def _momentum(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be in [0, 1)")
    return value


def _batch_size(text):
    if text.lower() in ("full", "none", "n"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer or 'full'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


def _device(text):
    import torch

    try:
        device = torch.device(text)
        torch.empty(0, device=device)  # an unknown type, or one this machine lacks
    except Exception as exc:  # noqa: BLE001 - RuntimeError, or AssertionError without CUDA
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a torch device usable here ({str(exc).splitlines()[0]}); "
            "accepted: cpu, or cuda / cuda:N / mps where available") from None
    return text


def _add_dynamics_args(p, *, lr, momentum, threads=None):
    g = p.add_argument_group("fine-tuning settings (several values make a grid)")
    g.add_argument("--lr", type=_positive_float, nargs="+", default=lr, metavar="LR",
                   help=f"learning rate(s) of torch.optim.SGD (default: {' '.join(map(str, lr))})")
    g.add_argument("--momentum", type=_momentum, nargs="+", default=momentum, metavar="M",
                   help="SGD momentum value(s) in [0, 1) (default: "
                        f"{' '.join(map(str, momentum))})")
    g.add_argument("--batch-size", type=_batch_size, nargs="+", default=[None], metavar="B",
                   help="minibatch size(s); 'full' = full-batch gradient descent (default: full)")
    g.add_argument("--n-steps", type=int, default=150, metavar="T",
                   help="step budget T; T_eps is measured against the loss at step T "
                        "(default: 150)")
    g.add_argument("--eps", type=_positive_float, nargs="+", default=[0.01, 0.03],
                   help="epsilon(s) in the metric's units (default: 0.01 0.03)")
    g.add_argument("--metric", choices=("loss", "error"), default="loss",
                   help="curve T_eps is measured on: 'loss' (torch mean units) or 'error' "
                        "(train error, eps in percentage points) (default: loss)")
    g.add_argument("--solver", choices=("auto", "ode", "discrete", "sde"), default="auto",
                   help="dynamics solver (default: auto)")
    e = p.add_argument_group("estimation")
    e.add_argument("--projection", choices=("none", "auto", "achlioptas", "gaussian",
                                            "countsketch", "tensorsketch"),
                   default="none", help="random projection of the gradients (default: none = "
                                        "exact kernel; auto: exact when cheap, else a sketch)")
    e.add_argument("--projection-dim", type=int, default=2048, metavar="D0",
                   help="projected dimension (default: 2048)")
    e.add_argument("--random-state", type=int, default=0, metavar="SEED",
                   help="seed of projections and minibatch order (default: 0)")
    e.add_argument("--n-jobs", type=int, default=None, metavar="J",
                   help="joblib workers for the Jacobians (default: 1)")
    e.add_argument("--no-trust", action="store_true",
                   help="skip the trust diagnostic (does the fixed kernel describe this "
                        "fine-tuning?); it costs a few forward/backward passes per setting")
    e.add_argument("--threads", type=int, default=threads, metavar="K",
                   help="torch intra-op threads (default: "
                        f"{'torch default' if threads is None else threads}; small models run "
                        "fastest with 1 on shared machines)")
    o = p.add_argument_group("output")
    o.add_argument("--json", action="store_true", help="print one JSON document instead of "
                                                       "a table")
    o.add_argument("--debug", action="store_true", help="show the traceback of a failure")


def _add_file_args(p):
    p.add_argument("model", help="model file: a TorchScript archive (torch.jit.save), a "
                                 "torch.export program (.pt2), or a state_dict (.pt, needs "
                                 "--model-class)")
    p.add_argument("data", help=".npz file with arrays X (inputs, first axis = samples) and y "
                                "(class indices, or (N, C) targets with --loss mse)")
    p.add_argument("--logits", metavar="KEY", default=None,
                   help="which part of the model's output are the logits: an attribute or key "
                        "name, or an integer index (default: a tensor as is, .logits, "
                        "['logits'] or element 0)")
    p.add_argument("--model-class", metavar="MODULE:CLASS",
                   help="architecture of a state_dict: 'package.module:Class' or "
                        "'path/to/file.py:Class'")
    p.add_argument("--model-kwargs", metavar="JSON", default=None,
                   help="constructor arguments of --model-class as a JSON object")
    p.add_argument("--x-key", default="X",
                   help="name of the inputs in the .npz (default: X); several comma-separated "
                        "names (e.g. input_ids,attention_mask) are passed to the model as "
                        "keyword inputs")
    p.add_argument("--y-key", default="y", help="name of the targets in the .npz (default: y)")
    p.add_argument("--loss", choices=("cross_entropy", "mse"), default="cross_entropy",
                   help="training loss, torch's mean reduction (default: cross_entropy)")
    p.add_argument("--device", type=_device, default="cpu", help="torch device (default: cpu)")
    p.add_argument("--eval-data", metavar="NPZ", default=None,
                   help="held-out .npz (same --x-key / --y-key): adds the predicted "
                        "early-stopping step and the held-out metric there to the table")


def build_parser():
    """The argument parser of the ``sktt`` command."""
    parser = argparse.ArgumentParser(
        prog="sktt",
        description="Predict how many steps (and seconds) fine-tuning a pre-trained PyTorch "
                    "model takes, without training it: the model is linearised around its "
                    "weights and its neural tangent kernel drives the predicted SGD dynamics.",
        epilog="Exit codes: 0 ok, 2 bad usage or input, 1 other failure. "
               "Run 'sktt COMMAND --help' for the options of a command.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo", help="predict on the embedded default (a pre-trained digits convnet)",
        epilog="example: sktt demo --real --lr 0.005 0.01 --momentum 0 0.9",
        description="Fine-tuning the bundled digits convnet (pre-trained on digits 0-4) on "
                    "digits 5-9: predicted T_eps in steps and seconds for a grid of "
                    "lr x momentum; --real also runs the real fine-tuning and compares.")
    demo.add_argument("--n-samples", type=int, default=150, metavar="N",
                      help="training samples, 1..896 (default: 150)")
    demo.add_argument("--real", action="store_true",
                      help="also run the real fine-tuning of every setting and compare")
    _add_dynamics_args(demo, lr=[0.01, 0.05], momentum=[0.0, 0.9], threads=1)
    demo.add_argument("--no-seconds", action="store_true",
                      help="skip measuring seconds per step")
    demo.set_defaults(func=_cmd_demo)

    predict = sub.add_parser(
        "predict", help="predict training times for your model and data",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  sktt predict model.pt data.npz --lr 1e-3 1e-2 --momentum 0 0.9\n"
               "  sktt predict weights.pt data.npz --model-class mypkg.nets:Net "
               "--batch-size 32 full --json\n"
               "  sktt predict program.pt2 data.npz --eps 1 5 --metric error",
        description="Fit the kernel of MODEL on DATA once and predict T_eps (steps, and\n"
                    "seconds measured on this machine) for every setting of the grid.")
    _add_file_args(predict)
    _add_dynamics_args(predict, lr=[1e-3], momentum=[0.0])
    predict.add_argument("--no-seconds", action="store_true",
                         help="skip measuring seconds per step")
    predict.set_defaults(func=_cmd_predict)

    validate = sub.add_parser(
        "validate", help="compare predictions with real fine-tuning of your model",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n"
               "  sktt validate model.pt data.npz --lr 1e-2 --batch-size 32 --seeds 0 1 2",
        description="Predict T_eps for every setting, run the real fine-tuning (torch.optim.SGD\n"
                    "on a copy of the model, same batches as the prediction) and report\n"
                    "|T_pred - T_real| / T_real and |T_pred - T_real| / T.")
    _add_file_args(validate)
    _add_dynamics_args(validate, lr=[1e-3], momentum=[0.0])
    validate.add_argument("--seeds", type=int, nargs="+", default=None,
                          help="DataLoader seeds of independent real SGD runs (default: the "
                               "prediction's own batch order)")
    validate.set_defaults(func=_cmd_validate)
    return parser


# ---------------------------------------------------------------------- work
def _settings(args):
    return [dict(lr=lr, momentum=m, batch_size=b) for lr, m, b in
            itertools.product(args.lr, args.momentum, args.batch_size)]


def _predictor_params(args, loss):
    """TrainingTimePredictor parameters of the command line (the grid's dynamics aside)."""
    return dict(loss=loss, n_steps=args.n_steps, solver=args.solver,
                projection=None if args.projection == "none" else args.projection,
                projection_dim=args.projection_dim, n_jobs=args.n_jobs,
                random_state=args.random_state, output=_logits_selector(args))


def _logits_selector(args):
    """--logits as the estimators' ``output``: an int index, else an attribute/key name."""
    key = getattr(args, "logits", None)
    if key is None:
        return None
    return int(key) if key.lstrip("-").isdigit() else key


def _trust(ttp, setting):
    """Trust level, reason and direction of one setting."""
    report = ttp.trust_report(**setting)
    return {"level": report.level, "reason": report.reason, "direction": report.direction}


def _check_settings(n, settings):
    for s in settings:
        if s["batch_size"] is not None and s["batch_size"] > n:
            raise _UsageError(f"--batch-size {s['batch_size']} is larger than the {n} samples; "
                              f"accepted: 1..{n} or 'full'.")


def _predict_rows(model, X, y, args, loss, seconds, eval_set=None):
    """Fit once and predict the grid with :func:`sktt.compare`: ``(predictor, rows)``.

    One row per (lr, momentum, batch size) setting, with the predicted steps
    (and seconds) for every ε, the divergence flag and the trust verdict.
    """
    from ._compare import compare
    from .gradients._inputs import as_inputs

    settings = _settings(args)
    _check_settings(len(as_inputs(X, y, float_dtype=_float_dtype(model))[0]), settings)
    grid = {"lr": args.lr, "momentum": args.momentum, "batch_size": args.batch_size,
            "eps": list(args.eps)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # divergence and trust are columns of the table
        data = (X, y) if eval_set is None else (X, y, *eval_set)
        table = compare(model, {"data": data}, grid, metric=args.metric,
                        measure_time=seconds, **_predictor_params(args, loss))
    ttp = table.predictors_["data"]
    by_setting = {}
    for r in table.to_records():
        by_setting.setdefault((r["lr"], r["momentum"], r["batch_size"]), {})[r["eps"]] = r
    rows = []
    for s in settings:
        per_eps = by_setting[(s["lr"], s["momentum"], s["batch_size"])]
        first = per_eps[args.eps[0]]
        row = {**s, "n_steps": args.n_steps, "solver": args.solver,
               "seconds_per_step": first.get("seconds_per_step") if seconds else None,
               "diverged": bool(first["diverged"])}
        row["predicted_steps"] = [None if row["diverged"] else int(per_eps[e]["t_eps"])
                                  for e in args.eps]
        row["eps_flags"] = [per_eps[e]["eps_flag"] for e in args.eps]  # sktt.compare's
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            row["trust"] = None if args.no_trust else _trust(ttp, s)
        row["predicted_seconds"] = [
            None if (t is None or row["seconds_per_step"] is None) else t * row["seconds_per_step"]
            for t in row["predicted_steps"]]
        if getattr(ttp, "eval_f0_", None) is not None and args.solver != "sde":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                best = ttp.predict_best_step(args.metric, **s)
            row["best_step"], row["best_eval"] = best.step, best.value
        rows.append(row)
    return ttp, rows


def _float_dtype(model):
    from .utils._torch import model_device_dtype

    return model_device_dtype(model)[1]


def _validate_rows(ttp, X, y, args, rows, seeds=None):
    from .exceptions import ValidationWarning
    from .validation import compare_with_real

    for row in rows:
        s = {k: row[k] for k in ("lr", "momentum", "batch_size")}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", ValidationWarning)  # listed under the table instead
            res = compare_with_real(ttp, X, y, eps=args.eps, metric=args.metric, seeds=seeds, **s)
        real = res.real_times  # (runs, E)
        row["real_steps"] = [None if t < 0 else float(t) for t in _median(real)]
        row["relative_error"] = [_finite(v) for v in _nanmedian(res.relative_error)]
        row["delta_over_T"] = [_finite(v) for v in _nanmedian(res.delta_over_T)]
        row["real_seconds_per_step"] = res.real_seconds_per_step
        row["real_loss_final"] = float(res.real_runs[0].loss[-1])
        row["real_status"] = "+".join(dict.fromkeys(res.real_status))
        row["curve_error_median"] = _finite(float(_median(res.curve_error_median)))
        row["curve_error_max"] = _finite(float(res.curve_error_max.max()))
        row["real_time_flags"] = [_join(col) for col in res.real_time_flags.T]
        row["predicted_time_flags"] = res.predicted_time_flags.tolist()
        row["problems"] = res.problems()
        if res.real_best_steps is not None:
            row["real_best_step"] = float(_median(res.real_best_steps))
    return rows


def _join(flags):
    return "+".join(dict.fromkeys(str(f) for f in flags))


def _median(a):
    import numpy as np

    return np.median(a, axis=0)


def _nanmedian(a):
    import numpy as np

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(a, axis=0)


def _finite(v):
    return float(v) if v is not None and math.isfinite(v) else None


# ---------------------------------------------------------------------- output
def _fmt(v, kind):
    if v is None:
        return "-"
    if kind == "int":
        return f"{int(round(v))}"
    if kind == "sec":
        return f"{v:.3g} s" if v >= 1e-3 else f"{v * 1e3:.3g} ms"
    if kind == "pct":
        return f"{100 * v:.0f}%"
    return f"{v:g}"


def _table(rows, eps, metric, real):
    unit = "" if metric == "loss" else " pp"
    header = ["lr", "momentum", "batch"]
    for e in eps:
        header.append(f"T(ε={e:g}{unit})")
        if real:
            header += ["real", "err"]
    if not real:
        header += [f"time(ε={e:g})" for e in eps]
    held_out = any("best_step" in r for r in rows)
    if held_out:
        header += ["best step", f"eval {metric}"] + (["real best"] if real else [])
    if real:
        header += ["curve err", "real run"]
    trust = any(r.get("trust") for r in rows)
    if trust:
        header.append("trust")
    lines = [header]
    for r in rows:
        line = [_fmt(r["lr"], "g"), _fmt(r["momentum"], "g"),
                "full" if r["batch_size"] is None else str(r["batch_size"])]
        for k in range(len(eps)):
            chance = "~" if r["eps_flags"][k] == "eps_below_noise" else ""
            line.append("diverges" if r["diverged"]
                        else chance + _fmt(r["predicted_steps"][k], "int"))
            if real:
                line += [_fmt(r["real_steps"][k], "int"), _fmt(r["relative_error"][k], "pct")]
        if not real:
            line += [_fmt(v, "sec") for v in r["predicted_seconds"]]
        if held_out:
            line += [_fmt(r.get("best_step"), "int"), _fmt(r.get("best_eval"), "g")]
            if real:
                line.append(_fmt(r.get("real_best_step"), "int"))
        if real:
            line += [f"{_fmt(r['curve_error_median'], 'pct')}/{_fmt(r['curve_error_max'], 'pct')}",
                     r["real_status"]]
        if trust:
            line.append(r["trust"]["level"] if r.get("trust") else "-")
        lines.append(line)
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    out = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def _report(doc, args, real):
    if args.json:
        print(json.dumps(doc, indent=2))
        return
    m = doc["fit"]
    print(f"model: {doc['model']}  ({m['n_params']:,} trainable parameters)")
    print(f"data: N={m['n_samples']} samples, C={m['n_outputs']} outputs; loss={doc['loss']}; "
          f"kernel fitted in {m['fit_seconds']:.1f} s")
    print(f"T(ε) = first step within ε of the {args.metric} at step T={args.n_steps} "
          f"({'loss units' if args.metric == 'loss' else 'percentage points'}), predicted with "
          f"solver={args.solver}")
    print()
    print(_table(doc["rows"], args.eps, args.metric, real))
    print()
    if any("eps_below_noise" in r["eps_flags"] for r in doc["rows"]):
        print("~ = a chance crossing: ε is below the SGD noise of the predicted final "
              f"{args.metric} (the standard error of its mean over the simulated paths), so "
              "T(ε) says where the fluctuating curve first fell within ε; use a larger ε "
              "(docs/sgd.rst).")
        print()
    doubts = [r for r in doc["rows"] if r.get("trust") and r["trust"]["level"] != "ok"]
    for r in doubts:
        b = "full" if r["batch_size"] is None else r["batch_size"]
        print(f"trust {r['trust']['level']} for lr={r['lr']:g}, momentum={r['momentum']:g}, "
              f"batch={b}: {r['trust']['reason']}")
    if doubts:
        print()
    if real:
        flagged = [r for r in doc["rows"] if r.get("problems")]
        for r in flagged:
            b = "full" if r["batch_size"] is None else r["batch_size"]
            print(f"note for lr={r['lr']:g}, momentum={r['momentum']:g}, batch={b}: "
                  + "; ".join(r["problems"]) + ".")
        if flagged:
            print()
        print("real = the real fine-tuning (torch.optim.SGD on a copy, same batches), "
              "err = |predicted - real| / real; curve err = median/max over steps of "
              "|predicted - real| / real loss; real run = ok, oscillates or diverged "
              "(docs/validation.rst).")
    elif any(r["seconds_per_step"] is not None for r in doc["rows"]):
        sps = sorted({(r["batch_size"] or m["n_samples"], r["seconds_per_step"])
                      for r in doc["rows"] if r["seconds_per_step"] is not None})
        per = ", ".join(f"b={b}: {_fmt(s, 'sec')}/step" for b, s in sps)
        print(f"time = predicted steps × seconds per step measured here ({per}); "
              "excludes data loading and evaluation.")


def _document(command, ttp, model_name, loss, args, rows):
    return {
        "command": command,
        "model": model_name,
        "loss": loss,
        "metric": args.metric,
        "eps": list(args.eps),
        "n_steps": args.n_steps,
        "solver": args.solver,
        "fit": {"n_samples": int(ttp.n_samples_), "n_outputs": int(ttp.n_outputs_),
                "n_params": int(ttp.n_params_), "fit_seconds": float(ttp.fit_seconds_)},
        "rows": rows,
    }


# ---------------------------------------------------------------------- commands
def _cmd_demo(args):
    from .datasets import load_demo

    if not 1 <= args.n_samples <= 896:
        raise _UsageError(f"--n-samples {args.n_samples} is out of range; accepted: 1..896.")
    demo = load_demo(args.n_samples)
    if not args.json:
        print("sktt demo: fine-tuning a convnet pre-trained on digits 0-4 (scikit-learn's 8x8 "
              "digits) on digits 5-9.", flush=True)
    ttp, rows = _predict_rows(demo.model, demo.X, demo.y, args, "cross_entropy",
                              seconds=not args.no_seconds)
    if args.real:
        rows = _validate_rows(ttp, demo.X, demo.y, args, rows)
    _report(_document("demo", ttp, "DigitsConvNet (bundled)", "cross_entropy", args, rows),
            args, args.real)
    return EXIT_OK


def _load_user(args):
    from .utils._files import load_model_file

    model = load_model_file(args.model, model_class=args.model_class,
                            model_kwargs=args.model_kwargs, device=args.device)
    X, y = _load_xy(args.data, args)
    eval_set = None if args.eval_data is None else _load_xy(args.eval_data, args, "--eval-data ")
    name = os.path.basename(args.model)
    return model, X, y, name, eval_set


def _load_xy(path, args, what=""):
    """Inputs and targets of one .npz file, as tensors on ``--device``."""
    import torch

    from .utils._files import load_data_file

    X, y = load_data_file(path, x_key=args.x_key, y_key=args.y_key)
    X = ({k: torch.as_tensor(v).to(args.device) for k, v in X.items()} if isinstance(X, dict)
         else torch.as_tensor(X).to(args.device))
    if args.loss == "cross_entropy":
        if not (y.ndim == 1 and (y.dtype.kind in "iub" or (y == y.round()).all())):
            raise _UsageError(f"{what}--loss cross_entropy needs integer class labels y of shape "
                              f"(N,); got dtype {y.dtype}, shape {y.shape}.")
        y = torch.as_tensor(y.astype("int64"))
    else:
        y = torch.as_tensor(y, dtype=torch.float64)
    return X, y.to(args.device)


def _cmd_predict(args):
    model, X, y, name, eval_set = _load_user(args)
    ttp, rows = _predict_rows(model, X, y, args, args.loss, seconds=not args.no_seconds,
                              eval_set=eval_set)
    _report(_document("predict", ttp, name, args.loss, args, rows), args, False)
    return EXIT_OK


def _cmd_validate(args):
    model, X, y, name, eval_set = _load_user(args)
    ttp, rows = _predict_rows(model, X, y, args, args.loss, seconds=False, eval_set=eval_set)
    rows = _validate_rows(ttp, X, y, args, rows, seeds=args.seeds)
    _report(_document("validate", ttp, name, args.loss, args, rows), args, True)
    return EXIT_OK


def main(argv=None):
    """Run the command line; returns the exit code (0 ok, 2 bad input, 1 failure)."""
    parser = build_parser()
    args = parser.parse_args(argv)  # exits with 2 on a usage error
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if args.n_steps < 1:
        parser.error(f"--n-steps {args.n_steps} is invalid; accepted: an integer >= 1.")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads {args.threads} is invalid; accepted: an integer >= 1.")
        import torch

        torch.set_num_threads(args.threads)
    # torch internals warn about their own deprecations when copying exported programs.
    warnings.filterwarnings("ignore", category=FutureWarning)
    from .utils._files import InputFileError

    start = time.perf_counter()
    try:
        code = args.func(args)
    except (_UsageError, InputFileError, ValueError, TypeError) as exc:
        if args.debug:
            raise
        print(f"sktt {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"sktt {args.command}: interrupted", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as exc:  # noqa: BLE001 - the CLI reports every failure with exit code 1
        if args.debug:
            raise
        print(f"sktt {args.command}: failed: {type(exc).__name__}: {exc} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        return EXIT_FAILURE
    if not args.json:
        print(f"done in {time.perf_counter() - start:.1f} s")
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
