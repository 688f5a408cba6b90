r"""Closed-loop refresh: watch k real steps, re-linearise at :math:`w_k`, predict the rest.

When the kernel moves during fine-tuning (see :mod:`sktt.estimators._trust`), the
largest part of the move is usually early. With ``refresh_steps=k`` (or a time
budget ``refresh_seconds``) the predictor

1. runs k real ``torch.optim.SGD`` steps on a deep copy of the model, from the
   weights and buffers snapshotted at ``fit``, in ``eval()`` mode (the function
   the prediction linearises, as :func:`sktt.validation.run_real_training`
   does), on the same batch sequence the prediction uses, recording the
   full-set loss and error after each step;
2. re-linearises at :math:`w_k`: outputs :math:`F_k`, kernel :math:`\Theta_k`
   (same projection and seed as ``fit``), and the optimiser's real momentum
   buffer mapped to function space, :math:`A_k = J_k\,\mathrm{buf}_k` (one
   Jacobian-vector product);
3. simulates the remaining :math:`T - k` steps from there (the discrete solver
   resumes with :math:`A_k`; the ODE solver starts at rest).

The curve's first k + 1 points are the measured ones. With minibatches the real
steps follow path 0 of the prediction's batch orders (``dataloader_seed(0)``)
and each of the ``n_paths`` simulated paths continues from the measured state
with its own order. For a model linear in its parameters the refreshed curve
equals the plain prediction (to round-off; with one path for SGD).
The cost is k real steps plus about one more ``fit`` (Θ at :math:`w_k`); the
user's model is never touched. ``refresh_seconds`` stops the real steps once
their wall time reaches the budget (at least one step): convenient, but the
number of steps, hence the prediction, then depends on the machine's speed.
"""

import copy
import math
import time

import numpy as np
import torch

from ..dynamics import (labels_of, loss_value, mse_closed_form, simulate_discrete,
                        solve_gradient_flow, train_error)
from ..gradients import model_outputs, ntk_from_model
from ..gradients._inputs import index_inputs, inputs_to
from ..gradients._outputs import call_model
from ..gradients._probes import JacobianOperator
from ..gram import ntk_eigh
from ..utils import check_int, check_positive_finite, parse_memory
from ..utils._torch import model_untouched
from ._sgd import resolve_solver

__all__ = ["refresh_active", "refresh_steps_of", "real_steps", "refreshed_curves"]


def refresh_steps_of(p):
    """Validated ``(max_steps, max_seconds)`` of a setting; ``(0, None)`` when off."""
    k = p.get("refresh_steps")
    seconds = p.get("refresh_seconds")
    if k is not None:
        k = check_int("refresh_steps", k, low=0)
        if k > p["n_steps"]:
            raise ValueError(f"refresh_steps={k} exceeds n_steps={p['n_steps']}; accepted: an "
                             "int in [0, n_steps] or None.")
    if seconds is not None:
        seconds = check_positive_finite("refresh_seconds", seconds)
        if k is None:
            k = p["n_steps"]
    return (k or 0), seconds


def refresh_active(p):
    """Whether a closed-loop refresh applies to the dynamics parameters ``p``."""
    return refresh_steps_of(p)[0] > 0


def _call(model, x):
    return call_model(model, x)


def _torch_targets(targets, loss, dtype, device):
    if loss == "cross_entropy":
        return torch.as_tensor(np.asarray(targets), dtype=torch.int64, device=device)
    return torch.as_tensor(np.asarray(targets), dtype=dtype, device=device)


def real_steps(model, names, weights, buffers, inputs, targets, *, loss, lr, momentum, batches,
               max_seconds=None):
    """Run real SGD steps on a deep copy of ``model`` and record the full-set curves.

    Parameters
    ----------
    model : torch.nn.Module
        Not modified (deep-copied first).
    names : list of str
        Trainable parameters (the others are left as they are, frozen).
    weights, buffers : dict of str to Tensor
        Weights and buffers to start from (the ``fit`` snapshot).
    inputs : Tensor or tuple of Tensor
    targets : ndarray
        Labels (N,) or targets (N, C), as ``targets_``.
    loss : {"cross_entropy", "mse"}
    lr, momentum : float
    batches : list of ndarray
        Index batch of each step (its length is the maximum number of steps).
    max_seconds : float, optional
        Stop once the steps' wall time reaches this (after at least one step).

    Returns
    -------
    net : torch.nn.Module
        The trained copy, in eval mode.
    optimizer : torch.optim.SGD
    outputs : list of ndarray (N, C)
        Full-set outputs before the first step and after each step.
    seconds : float
        Wall time of the steps alone (no evaluation).
    """
    net = copy.deepcopy(model)
    named = dict(net.named_parameters(remove_duplicate=False))
    named_buffers = dict(net.named_buffers(remove_duplicate=False))
    with torch.no_grad():
        for n, w in weights.items():
            named[n].copy_(w)
        for n, b in buffers.items():
            named_buffers[n].copy_(b)
    for p in net.parameters():
        p.grad = None
    params = [named[n] for n in names]
    device, dtype = params[0].device, params[0].dtype
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum)
    y = _torch_targets(targets, loss, dtype, device)
    loss_fn = (torch.nn.functional.cross_entropy if loss == "cross_entropy"
               else torch.nn.functional.mse_loss)
    net.eval()
    outputs = [model_outputs(net, inputs)]
    elapsed = 0.0
    for idx in batches:
        if max_seconds is not None and outputs[1:] and elapsed >= max_seconds:
            break
        idx_t = torch.as_tensor(np.asarray(idx).reshape(-1))
        x = index_inputs(inputs, idx_t)
        x = inputs_to(x, device)
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(_call(net, x), y[idx_t.to(device)]).backward()
        opt.step()
        elapsed += time.perf_counter() - start
        outputs.append(model_outputs(net, inputs))
    return net, opt, outputs, elapsed


def refreshed_curves(est, p):
    """Curves of a fitted predictor with the closed-loop refresh, in ``_curves``' format.

    Returns the dict of the plain solvers (``"loss"``, ``"error"`` of shape
    (1, n_steps + 1), ``"diverged_at"``) plus ``"refresh"``: steps taken, seconds
    of the real steps and of the re-linearisation, and the measured kernel
    change ``trace(Θ_k)/trace(Θ_0)``.
    """
    k_max, max_seconds = refresh_steps_of(p)
    if not est._has_trust_state():
        raise ValueError("refresh_steps / refresh_seconds run real steps of the model; a "
                         "predictor fitted with model='precomputed' has no model. Fit with the "
                         "torch model instead.")
    state = est._trust_state
    T = p["n_steps"]
    solver = resolve_solver(p)
    if solver not in ("discrete", "ode"):
        raise ValueError(f"refresh_steps / refresh_seconds resume the prediction from real "
                         f"weights with solver 'discrete' or 'ode', not solver={solver!r}.")
    n_paths = p.get("n_paths", 1) if p["batch_size"] is not None and solver == "discrete" else 1
    full_batches = (est._batch_sequence(p, n_paths) if p["batch_size"] is not None else None)
    if full_batches is not None:
        step_batches = [b[0] for b in full_batches]
    else:
        step_batches = [np.arange(est.n_samples_)] * T
    t0 = time.perf_counter()
    with model_untouched(est.model) as model:
        net, opt, outs, seconds_steps = real_steps(
            model, state["names"], state["weights"], state["buffers"], state["inputs"],
            est.targets_, loss=est.loss, lr=p["lr"], momentum=p["momentum"],
            batches=step_batches[:k_max], max_seconds=max_seconds)
    k = len(outs) - 1
    labels = labels_of(est.targets_, est.loss) if est._has_error_metric() else None
    F_real = np.stack(outs)
    real_loss = loss_value(F_real, est.targets_, est.loss)
    real_error = None if labels is None else train_error(F_real, labels)
    info = {"steps": k, "seconds_real_steps": seconds_steps, "seconds_relinearise": 0.0,
            "kernel_trace_ratio": math.nan}
    if k == T or not np.all(np.isfinite(F_real[-1])):
        out = {"loss": real_loss[None], "error": None if real_error is None else real_error[None],
               "diverged_at": np.array([-1 if np.all(np.isfinite(real_loss)) else k])}
        if k < T:  # the real run blew up: the rest is inf
            pad = np.full(T - k, np.inf)
            out["loss"] = np.concatenate([real_loss, pad])[None]
            if real_error is not None:
                out["error"] = np.concatenate([real_error, np.full(T - k, 100.0)])[None]
        info["seconds_total"] = time.perf_counter() - t0
        out["refresh"] = info
        return out
    t1 = time.perf_counter()
    F_k = F_real[-1]
    with model_untouched(net) as net_eval:
        ntk_k, _ = ntk_from_model(
            net_eval, state["inputs"], state["names"], n_outputs=est.n_outputs_,
            projection=est.projection, projection_dim=est.projection_dim, seed=est.seed_,
            chunk_size=est.chunk_size, n_jobs=est.n_jobs,
            max_memory=parse_memory("max_memory", est.max_memory), verbose=est.verbose,
            jacobian_method=getattr(est, "jacobian_method", "auto"))
        A_k = None
        if p["momentum"] > 0:
            named = dict(net_eval.named_parameters(remove_duplicate=False))
            buf = {n: opt.state[named[n]]["momentum_buffer"] for n in state["names"]}
            A_k = JacobianOperator(net_eval, state["names"], state["inputs"],
                                   chunk_size=est.chunk_size or 256).jvp(buf).ravel()
    info["seconds_relinearise"] = time.perf_counter() - t1
    info["kernel_trace_ratio"] = float(np.trace(ntk_k) / np.trace(est.ntk_))
    rest = T - k
    if solver == "ode":
        lr_eff = p["lr"] / (1.0 - p["momentum"])
        if est.loss == "mse":
            vals, vecs = ntk_eigh(ntk_k)
            sim = mse_closed_form(vals, vecs, F_k, est.targets_, lr_eff=lr_eff, n_steps=rest,
                                  labels=labels)
        else:
            sim = solve_gradient_flow(ntk_k, F_k, est.targets_, loss=est.loss, lr_eff=lr_eff,
                                      n_steps=rest, labels=labels)
        sim = {key: (None if v is None else np.asarray(v)[None]) for key, v in sim.items()}
        sim["diverged_at"] = np.array([-1 if np.all(np.isfinite(sim["loss"])) else 0])
    else:
        # every path continues from the measured state with its own batch order; the
        # real steps followed path 0 (the order of ``dataloader_seed(0)``)
        rest_batches = None if full_batches is None else full_batches[k:]
        sim = simulate_discrete(ntk_k, F_k, est.targets_, loss=est.loss, lr=p["lr"],
                                momentum=p["momentum"], n_steps=rest, batches=rest_batches,
                                labels=labels, momentum_buffer=A_k)
    measured = {"loss": real_loss, "error": real_error}
    out = {}
    for key, value in sim.items():
        if key == "diverged_at":
            d = np.asarray(value)
            out[key] = np.where(d >= 0, d + k, d)
        elif isinstance(value, np.ndarray) and value.ndim == 2 and value.shape[1] == rest + 1:
            head = measured.get(key)
            if head is None:  # a solver output we do not measure: repeat its first value
                head = np.repeat(value[:, :1], k + 1, axis=1)[0]
            out[key] = np.concatenate([np.broadcast_to(head[:-1], (value.shape[0], k)), value],
                                      axis=1)
        else:
            out[key] = value
    info["seconds_total"] = time.perf_counter() - t0
    out["refresh"] = info
    return out
