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
   with an eval set (:mod:`sktt.estimators._eval_set`) the same on the held-out
   rows: outputs :math:`F_{val,k}`, the cross-kernel at :math:`w_k` (one joint
   extraction), and the held-out parts of :math:`A_k` and :math:`\Phi_k` (the
   JVPs run over the training and held-out inputs together);
3. simulates the remaining :math:`T - k` steps from there with the rest of the
   learning-rate schedule (the discrete solver resumes with :math:`A_k`; the
   ODE solver starts at rest).

AdamW (exact mode only): step 2 takes the exact Jacobian rows :math:`J_k` and
the weights :math:`w_k` instead of Θ, and torch's optimiser state (``exp_avg``,
``exp_avg_sq``, ``step``) is carried into the parameter-space simulation as it
is, so the resumed steps are torch's next steps on the linearised model. The
approximate mode's moments live in a frozen function-space preconditioner
that a real state cannot be mapped into: it refuses.

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

import dataclasses

import numpy as np
import torch

from ..dynamics import loss_value, simulate, train_error
from ..gradients import model_outputs
from ..training import run_steps, torch_targets
from ..utils._torch import model_untouched
from ._adamw import exact_rows, flat_weights
from ._eval_set import concat_inputs
from ._linearization import linearize_at

__all__ = ["real_steps", "refreshed_curves"]


def real_steps(model, names, weights, buffers, inputs, targets, *, loss, recipe, batches,
               lr_scheduler=None, max_seconds=None, eval_inputs=None):
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
    eval_inputs : Tensor or tuple of Tensor, optional
        Held-out inputs whose outputs are recorded too (never trained on).

    Returns
    -------
    net : torch.nn.Module
        The trained copy, in eval mode.
    optimizer : torch.optim.SGD
    outputs : list of ndarray (N, C)
        Full-set outputs before the first step and after each step (N + N_val
        rows, held-out last, with ``eval_inputs``).
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
    recorded = inputs if eval_inputs is None else concat_inputs(inputs, eval_inputs)
    net.eval()
    outputs = [model_outputs(net, recorded)]
    opt, seconds = run_steps(net, params, inputs, y, recipe, batches, loss=loss,
                             lr_scheduler=lr_scheduler, max_seconds=max_seconds,
                             after_step=lambda t, m: outputs.append(model_outputs(m, recorded)))
    return net, opt, outputs, sum(seconds)


def refreshed_curves(est, setting):
    """Curves of a fitted predictor with the closed-loop refresh, in ``_curves``' format.

    Returns the dict of :func:`sktt.dynamics.simulate` (``"loss"``, ``"error"``,
    ``"eval_loss"``, ``"eval_error"`` of shape (P, n_steps + 1), ``"diverged_at"``)
    plus ``"refresh"``: steps taken, seconds of the real steps and of the
    re-linearisation, and the measured kernel change ``trace(Θ_k)/trace(Θ_0)``.
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
    if recipe.is_adamw and est._adamw_resolved_mode(recipe) != "exact":
        raise ValueError("refresh_steps / refresh_seconds with optimizer='adamw' need "
                         "adamw_mode='exact' (the real Adam moments are carried into the "
                         "parameter-space simulation); the approximate mode cannot take them. "
                         "Raise max_memory so the Jacobian rows fit, or drop the refresh.")
    sgd = not recipe.full_batch
    n_paths = recipe.n_paths if sgd and solver == "discrete" else 1
    full_batches = est._batch_sequence(recipe, n_paths) if sgd else None
    if full_batches is not None:
        step_batches = [b[0] for b in full_batches]
    else:
        step_batches = [np.arange(est.n_samples_)] * T
    # refresh runs discrete / ode only: both take held-out rows (AdamW's exact mode: none)
    held_out = est._has_eval_set() and not recipe.is_adamw
    eval_inputs = est._eval_inputs if held_out else None
    t0 = time.perf_counter()
    with model_untouched(est.model) as model:
        net, opt, outs, seconds_steps = real_steps(
            model, state["names"], state["weights"], state["buffers"], state["inputs"],
            est.targets_, loss=est.loss, recipe=recipe,
            batches=step_batches[:setting.refresh_steps], lr_scheduler=setting.lr_scheduler,
            max_seconds=setting.refresh_seconds, eval_inputs=eval_inputs)
    k = len(outs) - 1
    n = est.n_samples_
    problem = est._problem(recipe, held_out=held_out)
    F_all = np.stack(outs)
    F_real = F_all[:, :n]
    real_loss = loss_value(F_real, est.targets_, est.loss)
    real_error = None if problem.labels is None else train_error(F_real, problem.labels)
    measured = {"loss": real_loss, "error": real_error}
    if held_out:
        measured["eval_loss"] = loss_value(F_all[:, n:], problem.eval_targets, est.loss)
        if problem.eval_labels is not None:
            measured["eval_error"] = train_error(F_all[:, n:], problem.eval_labels)
    info = {"steps": k, "seconds_real_steps": seconds_steps, "seconds_relinearise": 0.0,
            "kernel_trace_ratio": math.nan}
    if k == T or not np.all(np.isfinite(F_all[-1])):
        out = {key: (None if measured.get(key) is None else measured[key][None])
               for key in ("loss", "error", "eval_loss", "eval_error")}
        out["diverged_at"] = np.array([-1 if np.all(np.isfinite(real_loss)) else k])
        if k < T:  # the real run blew up: the rest is inf
            for key, fill in (("loss", np.inf), ("error", 100.0), ("eval_loss", np.inf),
                              ("eval_error", 100.0)):
                if out[key] is not None:
                    out[key] = np.concatenate([measured[key], np.full(T - k, fill)])[None]
        info["seconds_total"] = time.perf_counter() - t0
        out["refresh"] = info
        return out
    t1 = time.perf_counter()
    F_k = F_all[-1]
    rest = T - k
    rest_recipe = recipe.replace(n_steps=rest, lr_schedule=recipe.learning_rates[k:])
    # every path continues from the measured state with its own batch order; the
    # real steps followed path 0 (the order of ``dataloader_seed(0)``)
    rest_batches = None if full_batches is None or solver != "discrete" else full_batches[k:]
    if recipe.is_adamw:
        sim = _adamw_resumed(est, net, opt, F_k, problem, rest_recipe, rest_batches, info)
        info["seconds_relinearise"] = time.perf_counter() - t1
        return _joined(sim, measured, k, rest, info, t0)
    with model_untouched(net) as net_eval:
        lin = linearize_at(est, net_eval, held_out=held_out)  # rows: train, then held-out
        named = dict(net_eval.named_parameters(remove_duplicate=False))
        A_k = jw_k = None
        if recipe.momentum > 0:
            A_k = lin.apply({n: _optimizer_state(opt, named[n], "momentum_buffer")
                             for n in state["names"]})
        if recipe.weight_decay > 0:
            jw_k = lin.apply({n: named[n].detach() for n in state["names"]}).reshape(F_k.shape)
    info["seconds_relinearise"] = time.perf_counter() - t1
    info["kernel_trace_ratio"] = float(lin.kernel.trace() / est._kernel.trace())
    problem_k = problem.with_outputs(
        F_k[:n], eval_f0=F_k[n:] if held_out else None,
        jw0=None if jw_k is None else jw_k[:n],
        eval_jw0=None if jw_k is None or not held_out else jw_k[n:])
    sim = simulate(lin.kernel, problem_k,
                   rest_recipe, batches=rest_batches,
                   momentum_buffer=A_k if solver == "discrete" else None)
    return _joined(sim, measured, k, rest, info, t0)


def _optimizer_state(opt, param, key):
    """torch's ``opt.state[param][key]``, zeros where the optimiser has none: a trainable
    parameter the forward never uses gets no gradient, so torch skips it and keeps no state
    (its Jacobian columns are 0, and so is its share of the resumed dynamics)."""
    value = opt.state[param].get(key)
    return torch.zeros_like(param) if value is None else value.detach()


def _adamw_resumed(est, net, opt, F_k, problem, rest_recipe, rest_batches, info):
    """The exact AdamW simulation of the remaining steps from w_k and torch's state there."""
    names = est._trust_state["names"]
    with model_untouched(net) as net_eval:
        rows_k = exact_rows(est, net_eval, names)
        w_k = flat_weights(net_eval, names)
        named = dict(net_eval.named_parameters(remove_duplicate=False))
        state = {key: np.concatenate([_optimizer_state(opt, named[n], key).cpu().double()
                                      .reshape(-1).numpy() for n in names])
                 for key in ("exp_avg", "exp_avg_sq")}
        state["step"] = max(int(float(opt.state[named[n]].get("step", 0))) for n in names)
    info["kernel_trace_ratio"] = float(np.sum(rows_k * rows_k) / np.trace(est.ntk_))
    resumed = dataclasses.replace(problem.with_outputs(F_k), rows=rows_k, w0=w_k,
                                  adamw_state=state)
    out = simulate(est._kernel, resumed, rest_recipe.replace(adamw_mode="exact"),
                   batches=rest_batches)
    out.pop("weights", None)
    return out


def _joined(sim, measured, k, rest, info, t0):
    """The measured first k + 1 points, then the simulated rest, in ``_curves``' format."""
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
