r"""Closed-loop refresh: watch k real steps, re-linearise at :math:`w_k`, predict the rest.

When the kernel moves during fine-tuning (see :mod:`sktt.estimators._trust`), the
largest part of the move is usually early. With ``refresh_steps=k`` (or a time
budget ``refresh_seconds``) the predictor

1. runs k real steps of the recipe (:func:`sktt.training.run_steps`, the loop
   of :func:`sktt.validation.run_real_training`) on a deep copy of the model,
   from the weights and buffers snapshotted at ``fit``, in ``eval()`` mode (the
   function the prediction linearises), on the same batch sequence the
   prediction uses, recording the full-set loss and error after each step;
2. re-linearises at :math:`w_k`: outputs :math:`F_k`, kernel :math:`\Theta_k`
   (same projection and seed as ``fit``), the optimiser's real momentum buffer
   mapped to function space, :math:`A_k = J_k\,\mathrm{buf}_k`, and for weight
   decay the anchor :math:`\Phi_k = J_k w_k` (one Jacobian-vector product each);
3. simulates the remaining :math:`T - k` steps from there with the rest of the
   learning-rate schedule (the discrete solver resumes with :math:`A_k`; the
   ODE solver starts at rest).

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

from ..dynamics import loss_value, simulate, train_error
from ..gradients import model_outputs, ntk_from_model
from ..gradients._probes import JacobianOperator
from ..training import run_steps, torch_targets
from ..utils import parse_memory
from ..utils._torch import model_untouched

__all__ = ["real_steps", "refreshed_curves"]


def real_steps(model, names, weights, buffers, inputs, targets, *, loss, recipe, batches,
               lr_scheduler=None, max_seconds=None):
    """Run real steps of ``recipe`` on a deep copy of ``model`` and record the full-set outputs.

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
    recipe : TrainingRecipe
    batches : list of ndarray
        Index batch of each step (its length is the maximum number of steps).
    lr_scheduler : callable, optional
        The user's scheduler factory (else the recipe's per-step rates).
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
    params = [named[n] for n in names]
    y = torch_targets(targets, loss, params[0].dtype, params[0].device)
    net.eval()
    outputs = [model_outputs(net, inputs)]
    opt, seconds = run_steps(net, params, inputs, y, recipe, batches, loss=loss,
                             lr_scheduler=lr_scheduler, max_seconds=max_seconds,
                             after_step=lambda t, m: outputs.append(model_outputs(m, inputs)))
    return net, opt, outputs, sum(seconds)


def refreshed_curves(est, setting):
    """Curves of a fitted predictor with the closed-loop refresh, in ``_curves``' format.

    Returns the dict of :func:`sktt.dynamics.simulate` (``"loss"``, ``"error"``
    of shape (P, n_steps + 1), ``"diverged_at"``) plus ``"refresh"``: steps taken,
    seconds of the real steps and of the re-linearisation, and the measured
    kernel change ``trace(Θ_k)/trace(Θ_0)``.
    """
    recipe = setting.recipe
    if not est._has_trust_state():
        raise ValueError("refresh_steps / refresh_seconds run real steps of the model; a "
                         "predictor fitted with model='precomputed' has no model. Fit with the "
                         "torch model instead.")
    state = est._trust_state
    T = recipe.n_steps
    solver = recipe.resolved_solver
    if solver not in ("discrete", "ode"):
        raise ValueError(f"refresh_steps / refresh_seconds resume the prediction from real "
                         f"weights with solver 'discrete' or 'ode', not solver={solver!r}.")
    sgd = not recipe.full_batch
    n_paths = recipe.n_paths if sgd and solver == "discrete" else 1
    full_batches = est._batch_sequence(recipe, n_paths) if sgd else None
    if full_batches is not None:
        step_batches = [b[0] for b in full_batches]
    else:
        step_batches = [np.arange(est.n_samples_)] * T
    t0 = time.perf_counter()
    with model_untouched(est.model) as model:
        net, opt, outs, seconds_steps = real_steps(
            model, state["names"], state["weights"], state["buffers"], state["inputs"],
            est.targets_, loss=est.loss, recipe=recipe,
            batches=step_batches[:setting.refresh_steps], lr_scheduler=setting.lr_scheduler,
            max_seconds=setting.refresh_seconds)
    k = len(outs) - 1
    problem = est._problem(recipe)
    F_real = np.stack(outs)
    real_loss = loss_value(F_real, est.targets_, est.loss)
    real_error = None if problem.labels is None else train_error(F_real, problem.labels)
    info = {"steps": k, "seconds_real_steps": seconds_steps, "seconds_relinearise": 0.0,
            "kernel_trace_ratio": math.nan}
    if k == T or not np.all(np.isfinite(F_real[-1])):
        out = {"loss": real_loss[None], "error": None if real_error is None else real_error[None],
               "eval_loss": None, "eval_error": None,
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
        ntk_k, rows_k = ntk_from_model(
            net_eval, state["inputs"], state["names"], n_outputs=est.n_outputs_,
            projection=est.projection, projection_dim=est.projection_dim, seed=est.seed_,
            chunk_size=est.chunk_size, n_jobs=est.n_jobs,
            max_memory=parse_memory("max_memory", est.max_memory), verbose=est.verbose,
            jacobian_method=getattr(est, "jacobian_method", "auto"),
            form_ntk=getattr(est, "ntk_mode_", "dense") == "dense")
        kernel_k = est._make_kernel(ntk_k, rows_k, est.n_outputs_)
        named = dict(net_eval.named_parameters(remove_duplicate=False))
        operator = JacobianOperator(net_eval, state["names"], state["inputs"],
                                    chunk_size=est.chunk_size or 256)
        A_k = jw_k = None
        if recipe.momentum > 0:
            buf = {n: opt.state[named[n]]["momentum_buffer"] for n in state["names"]}
            A_k = operator.jvp(buf).ravel()
        if recipe.weight_decay > 0:
            jw_k = operator.jvp({n: named[n].detach() for n in state["names"]})
    info["seconds_relinearise"] = time.perf_counter() - t1
    info["kernel_trace_ratio"] = float(kernel_k.trace() / est._kernel.trace())
    rest = T - k
    schedule = recipe.learning_rates[k:]
    rest_recipe = recipe.replace(n_steps=rest, lr_schedule=schedule)
    # every path continues from the measured state with its own batch order; the
    # real steps followed path 0 (the order of ``dataloader_seed(0)``)
    rest_batches = None if full_batches is None or solver != "discrete" else full_batches[k:]
    sim = simulate(kernel_k, problem.with_outputs(F_k, jw0=jw_k),
                   rest_recipe, batches=rest_batches,
                   momentum_buffer=A_k if solver == "discrete" else None)
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
