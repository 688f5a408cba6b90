"""Real fine-tuning, recorded the way the predictions are made.

:func:`run_real_training` trains a copy of a model with ``torch.optim.SGD``
(momentum, dampening, Nesterov, weight decay) or ``torch.optim.AdamW``
(betas, eps, decoupled weight decay), with an optional LR scheduler,
and records the full-training-set loss and error after every step, with the
conventions of the predictors (DESIGN.md section 2): only parameters with
``requires_grad=True`` are trained, the loss is torch's mean-reduced
cross-entropy or MSE, and by default the model is kept in ``eval()`` mode,
which is the function the prediction linearises.

:func:`dataloader_batches` reproduces the index sequence of a shuffling
``torch.utils.data.DataLoader``, so a simulation and a real run (or a user's
own loop with a DataLoader) can see the same minibatches.
"""

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..dynamics import TrainingRecipe
from ..training import run_steps, scheduled_learning_rates
from ..gradients._inputs import as_inputs, inputs_to, length_hint
from ..gradients._outputs import call_model, check_output
from ..utils import check_choice
from ..utils._batches import _check_int, dataloader_batches
from ..utils._torch import model_untouched, require_trainable

__all__ = ["RealTrainingResult", "dataloader_batches", "run_real_training"]

_EVAL_CHUNK = 1024
_LOSSES = ("cross_entropy", "mse")


@dataclass
class RealTrainingResult:
    """Curves recorded by :func:`run_real_training`.

    Attributes
    ----------
    loss : numpy.ndarray of shape (n_steps + 1,)
        Mean loss on the full training set, before any step (index 0) and
        after every step, float64.
    error : numpy.ndarray of shape (n_steps + 1,)
        Training error in percent on the full training set, same indexing.
    batches : list of numpy.ndarray
        The index batch of every step.
    seconds_per_step : float
        Mean wall-clock time of one optimiser step (forward, backward,
        update), excluding the full-set evaluations.
    eval_loss, eval_error : numpy.ndarray of shape (n_steps + 1,) or None
        The same on the held-out ``eval_set`` (None without one).
    """

    loss: np.ndarray
    error: np.ndarray
    batches: list = field(repr=False)
    seconds_per_step: float
    eval_loss: np.ndarray = None
    eval_error: np.ndarray = None


def _param_dtype_device(model):
    for p in model.parameters():
        return p.dtype, p.device
    raise ValueError("model has no parameters.")


def _eval_full(model, X, targets, labels, loss):
    """Mean loss and error (%) on the full set, in chunks, under no_grad."""
    n = len(labels)
    total, wrong, n_out = 0.0, 0, None
    with torch.no_grad():
        for start in range(0, n, _EVAL_CHUNK):
            sl = slice(start, start + _EVAL_CHUNK)
            out = call_model(model, X[sl])
            n_out = out.shape[-1]
            if loss == "cross_entropy":
                total += float(nn.functional.cross_entropy(
                    out, targets[sl], reduction="sum"))
            else:
                total += float(nn.functional.mse_loss(
                    out, targets[sl], reduction="sum"))
            wrong += int((out.argmax(-1) != labels[sl]).sum())
    denom = n if loss == "cross_entropy" else n * n_out
    return total / denom, 100.0 * wrong / n


def run_real_training(
    model,
    X,
    y,
    *,
    loss="cross_entropy",
    lr,
    optimizer="sgd",
    betas=(0.9, 0.999),
    adam_eps=1e-8,
    momentum=0.0,
    dampening=0.0,
    nesterov=False,
    weight_decay=0.0,
    lr_scheduler=None,
    batch_size=None,
    n_steps=None,
    batches=None,
    seed=0,
    drop_last=False,
    train_mode=False,
    eval_set=None,
    output=None,
):
    """Fine-tune a copy of ``model`` with SGD or AdamW and record the training curves.

    Parameters
    ----------
    model : torch.nn.Module
        The model; left untouched (weights, gradients, ``requires_grad``
        flags, train/eval modes and the global torch, numpy and python
        ``random`` RNG states are as before). Only its parameters with
        ``requires_grad=True`` are trained.
    X : Tensor, ndarray, tuple/list of tensors, dict / BatchEncoding, Dataset or DataLoader
        Inputs, first axis samples (any container
        :class:`~sktt.TrainingTimePredictor` takes). Float arrays are converted
        to the model's parameter dtype.
    y : torch.Tensor or numpy.ndarray
        Int labels of shape ``(N,)`` for ``loss="cross_entropy"``; float
        targets of shape ``(N, C)`` for ``loss="mse"`` (``(N,)`` when C = 1).
    loss : {"cross_entropy", "mse"}, default="cross_entropy"
        ``nn.functional.cross_entropy`` or ``nn.functional.mse_loss`` with
        torch's default mean reduction.
    lr : float
        Learning rate of the optimiser.
    optimizer : {"sgd", "adamw"}, default="sgd"
        ``torch.optim.SGD`` or ``torch.optim.AdamW``.
    betas : (float, float), default=(0.9, 0.999)
        AdamW's betas (ignored by SGD).
    adam_eps : float, default=1e-8
        AdamW's ``eps`` (ignored by SGD).
    momentum, dampening : float, default=0.0
        ``torch.optim.SGD``'s momentum and dampening (must stay 0 for AdamW).
    nesterov : bool, default=False
    weight_decay : float, default=0.0
        SGD: the coupled L2 term (``grad + weight_decay·w``); AdamW: the
        decoupled decay (``w ← w·(1 − lr·weight_decay)``; torch's AdamW
        default is 0.01, pass it).
    lr_scheduler : callable, array-like or None, default=None
        A callable taking the optimizer and returning a torch LR scheduler,
        stepped once per optimiser step; or the per-step rates; None = constant.
    batch_size : int, optional
        Minibatch size; None (or ``>= N``) means full-batch GD.
    n_steps : int, optional
        Number of optimiser steps. Required unless ``batches`` is given
        (then it defaults to ``len(batches)``).
    batches : list of array-like, optional
        Index batch of every step; overrides ``batch_size``/``seed``/
        ``drop_last``.
    seed : int, default=0
        Seed of the batch sequence, see :func:`dataloader_batches`.
    drop_last : bool, default=False
        Drop the incomplete last batch of each epoch.
    output : None, str, int or callable, default=None
        Which part of the model's output are the logits
        (:func:`sktt.gradients.select_logits`); None: a tensor, ``.logits``,
        ``["logits"]`` or element 0.
    train_mode : bool, default=False
        Take the steps in ``train()`` mode (BatchNorm updates, dropout on).
        By default the copy stays in ``eval()`` mode, which is the function
        the predictors linearise. Recording is always in ``eval()`` mode.
    eval_set : (X_val, y_val) or None, default=None
        Held-out data, never trained on: its loss and error are recorded
        before the first step and after every step (``eval_loss``,
        ``eval_error``), with the conventions of ``X`` and ``y``.

    Returns
    -------
    result : RealTrainingResult
        Loss and error (%) on the full set at steps ``0..n_steps``, the
        batches, and the mean time per step.

    See Also
    --------
    dataloader_batches : The default batch sequence.

    Notes
    -----
    Step ``k`` computes ``L_B(w) = mean over i in B of l(f_w(x_i), y_i)``
    (for MSE also averaged over the ``C`` outputs), back-propagates it and
    calls the optimiser's ``step()`` (the loop of :func:`sktt.training.run_steps`, shared
    with the refresh and :func:`measure_step_time`).

    Examples
    --------
    >>> from sktt.datasets import load_demo
    >>> from sktt.validation import run_real_training
    >>> demo = load_demo(n_samples=60)
    >>> res = run_real_training(demo.model, demo.X, demo.y, lr=0.1, n_steps=5)
    >>> res.loss.shape
    (6,)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    check_choice("loss", loss, _LOSSES)
    recipe_params = dict(lr=lr, optimizer=optimizer, betas=betas, adam_eps=adam_eps,
                         momentum=momentum, dampening=dampening, nesterov=nesterov,
                         weight_decay=weight_decay)
    TrainingRecipe.from_params(recipe_params)  # fail early, before copying the model

    # the steps run on a copy, but a train-mode forward draws from the global RNGs (dropout
    # on the CPU or CUDA generator, numpy / python ``random`` in e.g. SpecAugment or
    # LayerDrop): restore all of them, as every other pass on the user's model does
    with model_untouched(model):
        net = copy.deepcopy(model)
        dtype, device = _param_dtype_device(net)
        net.eval()
        selector = check_output(output)
        X, targets, labels = _checked_data(net, X, y, loss, dtype, device, selector)
        n = len(X)
        held_out = None
        if eval_set is not None:
            if not isinstance(eval_set, (tuple, list)) or len(eval_set) != 2:
                raise TypeError("eval_set must be a pair (X_val, y_val); got "
                                f"{type(eval_set).__name__}.")
            held_out = _checked_data(net, *eval_set, loss, dtype, device, selector,
                                     prefix="eval_set: ")
            shapes = [tuple(t.shape[1:]) for _, t in held_out[0].tensors()]
            expected = [tuple(t.shape[1:]) for _, t in X.tensors()]
            if shapes != expected:
                shown = (lambda v: v[0] if len(v) == 1 else v)
                hint = next((h for (_, a), (_, b) in zip(X.tensors(), held_out[0].tensors())
                             if (h := length_hint(a, b))), "")
                raise ValueError(f"eval_set: X_val has per-sample shape {shown(shapes)} but X "
                                 f"has {shown(expected)}.{hint}")

        if batches is None:
            if n_steps is None:
                raise ValueError("n_steps is required unless batches is given.")
            n_steps = _check_int("n_steps", n_steps, 0)
            batch_size = _check_int("batch_size", batch_size, 1, allow_none=True)
            batches = dataloader_batches(
                n, n if batch_size is None else batch_size, n_steps,
                seed=seed, drop_last=drop_last,
            )
        else:
            checked = []
            for t, b in enumerate(batches):  # as predict_curve(batches=...) checks them
                b = np.asarray(b)
                if b.size and not np.issubdtype(b.dtype, np.integer):  # bool is not integer
                    raise ValueError(f"batches[{t}] has dtype {b.dtype}; accepted: integer index "
                                     "arrays (a float index would be truncated, a boolean mask "
                                     "read as the indices 0 and 1).")
                b = b.astype(np.int64).reshape(-1)
                if b.size == 0 or b.min() < 0 or b.max() >= n:
                    got = "no index" if b.size == 0 else f"indices in [{b.min()}, {b.max()}]"
                    raise ValueError(f"batches[{t}] holds {got}; accepted: a non-empty index "
                                     f"array with values in [0, {n - 1}].")
                checked.append(b)
            batches = checked
            n_steps = len(batches) if n_steps is None else _check_int(
                "n_steps", n_steps, 0)
            if len(batches) < n_steps:
                raise ValueError(
                    f"batches holds {len(batches)} batches, fewer than "
                    f"n_steps={n_steps}."
                )
            batches = batches[:n_steps]

        _, params = require_trainable(net)
        recipe = TrainingRecipe.from_params(
            dict(recipe_params, n_steps=max(n_steps, 1)),
            learning_rates=scheduled_learning_rates(lr, lr_scheduler, max(n_steps, 1)))
        losses = np.empty(n_steps + 1)
        errors = np.empty(n_steps + 1)
        eval_losses = eval_errors = None
        if held_out is not None:
            eval_losses, eval_errors = np.empty(n_steps + 1), np.empty(n_steps + 1)

        def record(t, model):
            losses[t], errors[t] = _eval_full(model, X, targets, labels, loss)
            if held_out is not None:
                eval_losses[t], eval_errors[t] = _eval_full(model, *held_out, loss)

        net.eval()
        record(0, net)

        _, seconds = run_steps(net, params, X, targets, recipe, batches, loss=loss,
                               lr_scheduler=lr_scheduler if callable(lr_scheduler) else None,
                               train_mode=train_mode, after_step=record)

    return RealTrainingResult(
        loss=losses,
        error=errors,
        batches=list(batches),
        seconds_per_step=sum(seconds) / n_steps if n_steps else float("nan"),
        eval_loss=eval_losses,
        eval_error=eval_errors,
    )


def _checked_data(net, X, y, loss, dtype, device, output, prefix=""):
    """``(inputs, targets, labels)`` on ``device``, checked against ``net``'s outputs."""
    try:
        X, y = as_inputs(X, y, float_dtype=dtype)  # empty, NaN, length checks
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{prefix}{exc}") from exc
    if y is None:
        raise ValueError(f"{prefix}y is None; accepted: targets of length n_samples, or a "
                         "Dataset yielding (x, y) pairs as X.")
    X = inputs_to(X, device).bind_output(output)
    y = y.to(device)
    with torch.no_grad():  # C, to check the targets before any step
        n_out = call_model(net, X[:1]).shape[-1]
    if loss == "cross_entropy":
        if y.is_floating_point() and y.ndim == 1 and bool(torch.all(y == torch.round(y))):
            y = y.long()  # integer labels that went through a float container
        if y.ndim != 1 or y.is_floating_point():
            raise ValueError(f"{prefix}loss='cross_entropy' needs integer labels of shape (N,), "
                             f"got dtype {y.dtype} and shape {tuple(y.shape)}.")
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= n_out:
            raise ValueError(f"{prefix}y contains labels in [{lo}, {hi}] but the model has "
                             f"{n_out} outputs; accepted: labels in [0, {n_out - 1}].")
        return X, y.long(), y.long()
    if y.ndim == 1 and n_out == 1:  # a scalar regression head: (N,) is (N, 1), as in fit
        y = y[:, None]
    if y.ndim != 2 or y.shape[1] != n_out:
        raise ValueError(f"{prefix}loss='mse' needs float targets of shape (N, {n_out}) matching "
                         f"the model's {n_out} outputs, got shape {tuple(y.shape)}; one-hot "
                         "encode labels first.")
    if not bool(torch.isfinite(y).all()):
        raise ValueError(f"{prefix}y contains NaN or inf; accepted: finite targets.")
    targets = y.to(dtype)
    return X, targets, targets.argmax(-1)
