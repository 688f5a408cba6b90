"""Seconds per optimiser step, measured on the user's hardware.

A predicted training time in steps becomes seconds by multiplying it with the
wall-clock time of one real step: forward pass on a minibatch, backward pass,
``torch.optim.SGD.step()``. :func:`measure_step_time` times a few such steps on
a deep copy of the model (so the user's model, its gradients and the global RNG
are left exactly as they were), discards warm-up steps (allocator, kernel
selection, lazy initialisation) and returns the median of the rest, which is
robust to the occasional slow step on a shared machine.

What is *not* in the number: data loading and augmentation, host-to-device
copies of the batch, evaluation, logging and checkpointing, and anything the
user's loop adds around ``optimizer.step()``.
"""

import copy
import statistics

import numpy as np
import torch
from torch import nn

from ..dynamics import TrainingRecipe
from ..gradients._inputs import as_inputs, index_inputs, inputs_to, n_samples_of
from ..gradients._outputs import call_model, check_output
from ..utils import check_choice, check_int
from ._loop import run_steps
from ..utils._torch import model_device_dtype, model_untouched, require_trainable

__all__ = ["measure_step_time"]

_LOSSES = ("cross_entropy", "mse")


def _targets_tensor(y, loss, dtype, device, n_outputs):
    if loss == "cross_entropy":
        if y.is_floating_point() and not bool(torch.all(y == torch.round(y))):
            raise ValueError("loss='cross_entropy' needs integer class labels as y; got "
                             "non-integer values.")
        y = y.to(device=device, dtype=torch.int64).reshape(-1)
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= n_outputs:  # torch would say only "Target 7 is out of bounds"
            raise ValueError(f"y contains labels in [{lo}, {hi}] but the model has {n_outputs} "
                             f"outputs; accepted: labels in [0, {n_outputs - 1}].")
        return y
    if y.ndim == 1 and n_outputs == 1:  # a scalar regression head: (N,) is (N, 1), as in fit
        y = y[:, None]
    if y.ndim != 2 or y.shape[1] != n_outputs:
        raise ValueError(f"loss='mse' needs targets of shape (N, {n_outputs}) matching the "
                         f"model's {n_outputs} outputs; got shape {tuple(y.shape)}.")
    return y.to(device=device, dtype=dtype)


def measure_step_time(model, X, y=None, *, batch_size, loss="cross_entropy", lr=1e-3,
                      momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0,
                      n_repeats=5, n_warmup=2, train_mode=True, optimizer="sgd",
                      betas=(0.9, 0.999), adam_eps=1e-8, output=None):
    """Median wall-clock seconds of one optimiser step (forward + backward + update).

    Parameters
    ----------
    model : torch.nn.Module
        The model to time. A deep copy is trained; ``model`` itself (weights,
        ``.grad``, ``requires_grad``, train/eval modes) and the global torch and
        numpy RNG states are left as they were.
    X : Tensor, ndarray, tuple of those, or torch.utils.data.Dataset
        Inputs, first axis samples, on any device (they are moved to the
        model's device once, before timing). Only ``batch_size`` rows are
        used; with fewer rows than ``batch_size`` they are repeated.
    y : array-like or None
        Class indices (cross-entropy) or targets (N, C) (MSE); None when X is a
        Dataset yielding ``(x, y)``.
    batch_size : int
        Minibatch size b of the timed steps.
    loss : {"cross_entropy", "mse"}, default="cross_entropy"
    lr : float, default=1e-3
        Learning rate of the timed optimiser (the cost does not depend on it).
    momentum, dampening, nesterov, weight_decay : default=0.0, 0.0, False, 0.0
        The timed ``torch.optim.SGD``'s other settings (momentum and weight decay
        add element-wise work to the update).
    n_repeats : int, default=5
        Timed steps; the median is returned.
    n_warmup : int, default=2
        Untimed steps run first.
    output : None, str, int or callable, default=None
        Which part of the model's output are the logits
        (:func:`sktt.gradients.select_logits`).
    train_mode : bool, default=True
        Time the steps in ``train()`` mode (dropout on, BatchNorm statistics
        updated), as a real fine-tuning loop runs them.
    optimizer : {"sgd", "adamw"}, default="sgd"
        The timed optimiser (AdamW's update keeps two moments per weight).
    betas, adam_eps : default=(0.9, 0.999), 1e-8
        AdamW's settings (ignored by SGD).

    Returns
    -------
    seconds : float
        Median over ``n_repeats`` steps of the time of one step.

    Notes
    -----
    CUDA/MPS work is synchronised before the timer stops, so asynchronous
    kernels are counted. Data loading, host-to-device transfer of batches,
    evaluation and logging are not included: a real loop is slower by what it
    adds around ``optimizer.step()``.

    Examples
    --------
    >>> from sktt.datasets import load_demo
    >>> from sktt.validation import measure_step_time
    >>> demo = load_demo(n_samples=64)
    >>> measure_step_time(demo.model, demo.X, demo.y, batch_size=32) > 0
    True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    check_choice("loss", loss, _LOSSES)
    batch_size = check_int("batch_size", batch_size, low=1)
    n_repeats = check_int("n_repeats", n_repeats, low=1)
    n_warmup = check_int("n_warmup", n_warmup, low=0)
    device, dtype = model_device_dtype(model)
    inputs, y = as_inputs(X, y, float_dtype=dtype)
    if y is None:
        raise ValueError("y is None; accepted: targets of length n_samples, or a Dataset "
                         "yielding (x, y) pairs as X.")
    n = n_samples_of(inputs)
    idx = torch.arange(batch_size) % n  # repeat rows when X is smaller than a batch
    batch = index_inputs(inputs, idx)
    batch = inputs_to(batch, device).bind_output(check_output(output))
    with model_untouched(model), torch.no_grad():  # C, from one sample in eval mode
        n_outputs = call_model(model, index_inputs(batch, slice(0, 1))).shape[-1]
    targets = _targets_tensor(y[idx], loss, dtype, device, n_outputs)
    steps = n_warmup + n_repeats
    recipe = TrainingRecipe.from_params(dict(lr=lr, optimizer=optimizer, betas=betas,
                                             adam_eps=adam_eps, momentum=momentum,
                                             dampening=dampening,
                                             nesterov=nesterov, weight_decay=weight_decay,
                                             n_steps=steps))
    with model_untouched(model):
        # RNG and modes are restored by model_untouched; the copy holds the rest.
        net = copy.deepcopy(model)
        _, params = require_trainable(net)
        _, times = run_steps(net, params, batch, targets, recipe,
                             [np.arange(batch_size)] * steps, loss=loss,
                             train_mode=train_mode)
        del net
    seconds = float(statistics.median(times[n_warmup:]))
    if not np.isfinite(seconds) or seconds <= 0:  # pragma: no cover - clock failure
        raise RuntimeError(f"measured a non-positive step time ({seconds!r} s).")
    return seconds
