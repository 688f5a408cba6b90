"""How much cheaper is predicting fine-tuning than doing it? (issue 7)

For each model, in one run on one machine, this measures

* ``train``: real full-batch gradient-descent steps (``torch.optim.SGD``,
  cross-entropy, eval mode as the prediction linearises) -- the cost of the
  ``T = 150`` steps being predicted is 150 × the measured seconds per step;
* ``floor``: one batched forward + C batched backward passes over the same N
  samples (``out[:, c].sum().backward()``, parameter gradients included) -- the
  least any per-sample Jacobian method can cost;
* ``predict``: the full prediction, ``TrainingTimePredictor.fit`` (f0,
  Jacobians, Θ, eigh) + ``predict_curve`` + ``predict_time`` (the dynamics),
  with the Jacobian extraction (``ntk_from_model``) timed inside it;
* ``reference`` (optional): the ``torch.func`` path on a few samples, seconds
  per Jacobian row.

and prints the ratios ``150 steps / prediction`` and ``extraction / floor``,
and the peak memory of each phase. Every phase runs in its own child process
(so peak RSS is per phase) with ``torch.set_num_threads(--threads)``.

Threads: on the 2 shared cores of the development machine, tiny convolutions ran
~40x slower with 2 threads than with 1 when other processes were busy, so the
default is 1 thread for every phase (training included: the ratio compares like
with like). Pass ``--threads`` to change it.

Usage::

    python benchmarks/bench_prediction_cost.py            # demo convnet + ResNet-18-like, N=150
    python benchmarks/bench_prediction_cost.py --quick    # smaller N, fewer steps
    python benchmarks/bench_prediction_cost.py --device cuda --models resnet18
    # issue 14's case: the ~0.3 M-parameter residual convnet, count-sketch D0 = 4096,
    # the trust diagnostic on (its seconds are printed apart)
    python benchmarks/bench_prediction_cost.py --models rescnn --projection countsketch \
        --projection-dim 4096 --trust-check --train-steps 10 --reference-samples 0

The training time is extrapolated from ``--train-steps`` measured steps (after
one warm-up step): every full-batch step does the same work, and 150 real
ResNet steps take about half an hour on the development CPU.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

T_STEPS = 150


# ----------------------------------------------------------------------------- set-up
def _setup(args):
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.model == "demo":
        from sktt.datasets import load_demo

        demo = load_demo(n_samples=args.n_samples)
        model, X, y = demo.model, torch.as_tensor(np.asarray(demo.X)), torch.as_tensor(
            np.asarray(demo.y))
    else:
        from sktt.datasets import resnet18_like

        model = _rescnn(torch, 5) if args.model == "rescnn" else resnet18_like(num_classes=5)
        g = torch.Generator().manual_seed(0)
        X = torch.randn(args.n_samples, 3, 32, 32, generator=g)
        y = torch.randint(0, 5, (args.n_samples,), generator=g)
    model = model.to(args.device).eval()
    return torch, model, X.float(), y.long()


def _rescnn(torch, n_classes):
    """A ~0.3 M-parameter residual convnet for 3×32×32 inputs (issue 14's cost case): a
    32-channel stem, one BasicBlock per stage at 32, 64, 128 channels (strides 1, 2, 2),
    BatchNorm, global average pooling and a linear head; seeded."""
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
            self.shortcut = nn.Sequential() if stride == 1 and cin == cout else nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            return torch.relu(self.body(x) + self.shortcut(x))

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                         Block(32, 32, 1), Block(32, 64, 2), Block(64, 128, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, n_classes))


def _sync(torch, device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak(torch, device):
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    gpu = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
    return rss, gpu


def _start_profile(args):
    if not args.profile:
        return None
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    return profiler


def _stop_profile(profiler, args):
    if profiler is None:
        return
    import io
    import pstats

    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
    with open(args.profile, "w") as fh:
        fh.write(text.getvalue())


# ----------------------------------------------------------------------------- phases
def phase_train(args):
    torch, model, X, y = _setup(args)
    X, y = X.to(args.device), y.to(args.device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3)
    loss_fn = torch.nn.functional.cross_entropy
    if args.loss == "mse":
        y = torch.nn.functional.one_hot(y, 5).to(X.dtype)
        loss_fn = torch.nn.functional.mse_loss
    rss0, _ = _peak(torch, args.device)
    times = []
    for step in range(args.train_steps + 1):  # step 0 warms up (allocations, kernels)
        _sync(torch, args.device)
        t0 = time.perf_counter()
        opt.zero_grad()
        loss_fn(model(X), y).backward()
        opt.step()
        _sync(torch, args.device)
        if step:
            times.append(time.perf_counter() - t0)
    rss, gpu = _peak(torch, args.device)
    return {"seconds_per_step": float(sum(times) / len(times)), "steps_measured": len(times),
            "rss_base": rss0, "rss_peak": rss, "gpu_peak": gpu}


def phase_floor(args):
    torch, model, X, y = _setup(args)
    X = X.to(args.device)
    rss0, _ = _peak(torch, args.device)
    best = None
    for _ in range(2):  # the second run is the measurement (the first allocates)
        model.zero_grad()
        _sync(torch, args.device)
        t0 = time.perf_counter()
        out = model(X)
        for c in range(out.shape[1]):
            out[:, c].sum().backward(retain_graph=c < out.shape[1] - 1)
        _sync(torch, args.device)
        best = time.perf_counter() - t0
        del out
    rss, gpu = _peak(torch, args.device)
    return {"seconds": best, "rss_base": rss0, "rss_peak": rss, "gpu_peak": gpu}


def phase_predict(args):
    torch, model, X, y = _setup(args)
    import sktt.estimators._predictor as predictor_module
    from sktt import TrainingTimePredictor

    timings = {"extraction": 0.0}

    def timed(inner):
        def run(*a, **k):
            _sync(torch, args.device)
            t0 = time.perf_counter()
            out = inner(*a, **k)
            _sync(torch, args.device)
            timings["extraction"] += time.perf_counter() - t0
            return out

        return run

    # the extraction: the layer-wise plan (resolved by fit, reused by the trust probe) and
    # the Jacobian rows and Θ
    for name in ("resolve_layerwise_plan", "ntk_from_model"):
        setattr(predictor_module, name, timed(getattr(predictor_module, name)))
    rss0, _ = _peak(torch, args.device)
    projection = None if args.projection == "none" else args.projection
    ttp = TrainingTimePredictor(model, lr=1e-3, n_steps=T_STEPS, projection=projection,
                                projection_dim=args.projection_dim, random_state=0,
                                max_memory=args.max_memory, trust_check=args.trust_check,
                                jacobian_method=args.jacobian_method)
    # Warm-up on a few samples: one-off costs of a process (CUDA/cuDNN/cuFFT handles,
    # kernel selection) are not the prediction's, as the training phase discards step 0.
    TrainingTimePredictor(**ttp.get_params()).fit(X[:8], y[:8]).predict_curve()
    timings["extraction"] = 0.0
    profiler = _start_profile(args)
    _sync(torch, args.device)
    t0 = time.perf_counter()
    ttp.fit(X, y)
    t_fit = time.perf_counter() - t0
    curve = ttp.predict_curve()
    ttp.predict_time(eps=0.01)
    _sync(torch, args.device)
    total = time.perf_counter() - t0
    _stop_profile(profiler, args)
    rss, gpu = _peak(torch, args.device)
    from sktt.gradients import resolve_layerwise_plan

    names = [n for n, p in model.named_parameters() if p.requires_grad]
    plan = resolve_layerwise_plan(model.eval(), X[:3].to(args.device), names,
                                  args.jacobian_method)
    path = "functorch" if plan is None else (
        "layerwise" + (f" ({len(plan.fallback)} parameters by torch.func)" if plan.fallback
                       else ""))
    return {"seconds": total, "fit_seconds": t_fit, "extraction_seconds": timings["extraction"],
            "trust_seconds": getattr(ttp, "trust_seconds_", None), "path": path,
            "final_loss": float(curve[-1]), "rss_base": rss0, "rss_peak": rss, "gpu_peak": gpu,
            "n_params": ttp.n_params_, "theta_trace": float(ttp.ntk_.trace())}


def phase_subset(args):
    """GramSpectrum: Θ of N0 = N/4 samples (MSE), the residual norm of all N, extrapolation."""
    torch, model, X, y = _setup(args)
    from sktt import TrainingTimePredictor
    from sktt.gradients import residual_sq_norm

    Y = torch.nn.functional.one_hot(y, 5).to(X.dtype)
    n0 = args.n_samples // 4
    rss0, _ = _peak(torch, args.device)
    projection = None if args.projection == "none" else args.projection
    warm = TrainingTimePredictor(model, loss="mse", projection=projection,
                                 projection_dim=args.projection_dim, trust_check=False,
                                 jacobian_method=args.jacobian_method)
    warm.fit(X[:8], Y[:8]).predict_curve()  # one-off process costs, as in phase_predict
    _sync(torch, args.device)
    t0 = time.perf_counter()
    norm = residual_sq_norm(model, X, Y)
    ttp = TrainingTimePredictor(model, loss="mse", lr=1e-3, n_steps=T_STEPS,
                                projection=projection, projection_dim=args.projection_dim,
                                random_state=0, max_memory=args.max_memory, trust_check=False,
                                jacobian_method=args.jacobian_method).fit(X[:n0], Y[:n0])
    spectrum = ttp.extrapolate(args.n_samples, residual_sq_norm=norm)
    curve = spectrum.predict_curve()
    spectrum.predict_time(eps=0.01)
    _sync(torch, args.device)
    total = time.perf_counter() - t0
    rss, gpu = _peak(torch, args.device)
    return {"seconds": total, "n0": n0, "final_loss": float(curve[-1]), "rss_base": rss0,
            "rss_peak": rss, "gpu_peak": gpu}


def phase_reference(args):
    """Seconds per Jacobian row of the torch.func path, on a few samples."""
    torch, model, X, y = _setup(args)
    from sktt.gradients import chunk_jacobian

    names = [n for n, p in model.named_parameters() if p.requires_grad]
    x = X[:args.reference_samples].to(args.device)
    chunk_jacobian(model, names, x[:1])  # warm-up
    _sync(torch, args.device)
    t0 = time.perf_counter()
    jac = chunk_jacobian(model, names, x)
    _sync(torch, args.device)
    rows = x.shape[0] * next(iter(jac.values())).shape[1]
    return {"seconds_per_row": (time.perf_counter() - t0) / rows}


PHASES = {"train": phase_train, "floor": phase_floor, "predict": phase_predict,
          "reference": phase_reference, "subset": phase_subset}


# ----------------------------------------------------------------------------- driver
def _child(args, model, phase, n_samples, extra=()):
    cmd = [sys.executable, os.path.abspath(__file__), "--phase", phase, "--model", model,
           "--n-samples", str(n_samples), "--threads", str(args.threads),
           "--device", args.device, "--train-steps", str(args.train_steps),
           "--projection", args.projection, "--projection-dim", str(args.projection_dim),
           "--jacobian-method", args.jacobian_method, "--max-memory", args.max_memory,
           "--reference-samples", str(args.reference_samples), "--loss", args.loss,
           *(["--trust-check"] if args.trust_check else []),
           *(["--profile", args.profile] if args.profile and phase == "predict" else []), *extra]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        sys.stderr.write(res.stdout + res.stderr)
        raise SystemExit(f"phase {phase} of {model} failed")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _mib(b):
    return "-" if b is None else f"{b / 2**20:.0f} MiB"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="N=40 for the ResNet, 2 train steps")
    p.add_argument("--models", default="demo,resnet18")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--n-samples", type=int, default=150)
    p.add_argument("--train-steps", type=int, default=None,
                   help="measured GD steps (default: 150 for the demo and on GPU, 3 for the "
                        "ResNet on CPU, 2 for the N=600 case on CPU)")
    p.add_argument("--projection", default="tensorsketch",
                   help="none (exact Θ), countsketch, tensorsketch, gaussian, achlioptas")
    p.add_argument("--projection-dim", type=int, default=2048)
    p.add_argument("--jacobian-method", default="auto")
    p.add_argument("--max-memory", default="2GB")
    p.add_argument("--reference-samples", type=int, default=2,
                   help="samples for the torch.func seconds-per-row figure (0 = skip)")
    p.add_argument("--subset-samples", type=int, default=600,
                   help="N of the GramSpectrum case (fit on N/4, MSE); 0 = skip")
    p.add_argument("--trust-check", action="store_true",
                   help="fit with the trust diagnostic on (trust_check=True); its seconds are "
                        "printed apart, and count in the prediction")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--loss", default="cross_entropy", help=argparse.SUPPRESS)
    p.add_argument("--profile", default=None,
                   help="write cProfile statistics of the timed prediction here (of the last "
                        "model's)")
    p.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.phase:  # child process
        print(json.dumps(PHASES[args.phase](args)))
        return None

    results = {}
    print(f"device={args.device} threads={args.threads} projection={args.projection} "
          f"D0={args.projection_dim} jacobian_method={args.jacobian_method} "
          f"max_memory={args.max_memory}")
    for model in args.models.split(","):
        n = args.n_samples
        steps = args.train_steps
        if args.quick:
            n = min(n, 40 if model == "resnet18" else 150)
            steps = steps or 2
        steps = steps or (T_STEPS if model == "demo" or args.device != "cpu" else 3)
        run_args = argparse.Namespace(**{**vars(args), "train_steps": steps})
        r = {"n_samples": n}
        r["train"] = _child(run_args, model, "train", n)
        r["floor"] = _child(run_args, model, "floor", n)
        r["predict"] = _child(run_args, model, "predict", n)
        if args.reference_samples > 0:
            r["reference"] = _child(run_args, model, "reference", n)
        train_total = T_STEPS * r["train"]["seconds_per_step"]
        r["ratio_train_over_prediction"] = train_total / r["predict"]["seconds"]
        r["ratio_extraction_over_floor"] = (r["predict"]["extraction_seconds"]
                                            / r["floor"]["seconds"])
        results[model] = r
        pr = r["predict"]
        print(f"\n{model}: N={n}, D={pr['n_params']:,}, C=5, Jacobians by {pr['path']}")
        print(f"  GD step                {r['train']['seconds_per_step']:.4g} s "
              f"(mean of {r['train']['steps_measured']}); 150 steps = {train_total:.4g} s")
        print(f"  floor (fwd + C bwd)    {r['floor']['seconds']:.4g} s")
        print(f"  prediction             {pr['seconds']:.4g} s (fit {pr['fit_seconds']:.4g} s, "
              f"Jacobian extraction + Θ {pr['extraction_seconds']:.4g} s)")
        if pr["trust_seconds"] is not None:
            fit_alone = pr["fit_seconds"] - pr["trust_seconds"]
            print(f"  trust diagnostic       {pr['trust_seconds']:.4g} s (in the fit; "
                  f"{pr['trust_seconds'] / fit_alone:.1%} of the fit without it)")
        if "reference" in r:
            ref = r["reference"]["seconds_per_row"]
            print(f"  torch.func reference   {ref:.4g} s per row "
                  f"(≈ {ref * n * 5:.4g} s for all {n * 5} rows)")
        print(f"  150 GD steps / prediction       = {r['ratio_train_over_prediction']:.1f}x")
        print(f"  extraction / floor               = {r['ratio_extraction_over_floor']:.2f}")
        print(f"  peak RSS  train {_mib(r['train']['rss_peak'])}, floor "
              f"{_mib(r['floor']['rss_peak'])}, predict {_mib(pr['rss_peak'])} "
              f"(after set-up {_mib(pr['rss_base'])})")
        if pr["gpu_peak"] is not None:
            print(f"  peak GPU  train {_mib(r['train']['gpu_peak'])}, floor "
                  f"{_mib(r['floor']['gpu_peak'])}, predict {_mib(pr['gpu_peak'])}")
    if args.subset_samples > 0 and "resnet18" in args.models.split(","):
        n = 160 if args.quick else args.subset_samples
        steps = args.train_steps or (2 if args.device == "cpu" else 30)
        run_args = argparse.Namespace(**{**vars(args), "train_steps": steps, "loss": "mse"})
        r = {"n_samples": n}
        r["train"] = _child(run_args, "resnet18", "train", n)
        r["subset"] = _child(run_args, "resnet18", "subset", n)
        train_total = T_STEPS * r["train"]["seconds_per_step"]
        r["ratio_train_over_prediction"] = train_total / r["subset"]["seconds"]
        results["resnet18_subset"] = r
        print(f"\nresnet18, MSE, GramSpectrum from N0={r['subset']['n0']} of N={n}:")
        print(f"  GD step on N={n}        {r['train']['seconds_per_step']:.4g} s "
              f"(mean of {r['train']['steps_measured']}); 150 steps = {train_total:.4g} s")
        print(f"  prediction             {r['subset']['seconds']:.4g} s (residual norm of all "
              f"N, Θ of N0, extrapolation, curve, T_eps)")
        print(f"  150 GD steps / prediction       = {r['ratio_train_over_prediction']:.1f}x")
        print(f"  peak RSS  train {_mib(r['train']['rss_peak'])}, predict "
              f"{_mib(r['subset']['rss_peak'])}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "results": results}, fh, indent=2)
    return results


if __name__ == "__main__":
    main()
