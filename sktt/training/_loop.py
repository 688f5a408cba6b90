"""The one torch training loop: a recipe's real optimiser steps on a copy of a model.

Everything that runs real steps — :func:`sktt.validation.run_real_training`,
:func:`sktt.validation.measure_step_time`, the closed-loop refresh — goes
through :func:`run_steps`, so "real training" means one thing: per step,
``zero_grad``, the mean loss of the batch (torch's ``cross_entropy`` /
``mse_loss``), ``backward``, ``optimizer.step()`` with the recipe's
``torch.optim.SGD`` (momentum, dampening, Nesterov, weight decay) or
``torch.optim.AdamW`` (betas, ``eps=adam_eps``, decoupled weight decay), then the
learning rate of the next step — from the user's torch scheduler when one is
given, else from the recipe's per-step rates.
"""

import time

import numpy as np
import torch
from torch import nn

from ..gradients._inputs import index_inputs, inputs_to
from ..gradients._outputs import call_model
from ..utils import check_bool

__all__ = ["make_optimizer", "run_steps", "torch_loss", "torch_targets"]


def torch_loss(loss):
    """torch's mean-reduced loss function for ``"cross_entropy"`` / ``"mse"``."""
    return nn.functional.cross_entropy if loss == "cross_entropy" else nn.functional.mse_loss


def torch_targets(targets, loss, dtype, device):
    """Targets as torch wants them: int64 labels, or floats in the model's dtype."""
    if loss == "cross_entropy":
        return torch.as_tensor(np.asarray(targets), dtype=torch.int64, device=device)
    return torch.as_tensor(np.asarray(targets), dtype=dtype, device=device)


def make_optimizer(params, recipe, *, lr=None):
    """The recipe's torch optimiser (SGD or AdamW); ``lr`` defaults to its first rate."""
    lr = float(recipe.learning_rates[0]) if lr is None else lr
    if recipe.is_adamw:
        return torch.optim.AdamW(params, lr=lr, betas=recipe.betas, eps=recipe.adam_eps,
                                 weight_decay=recipe.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=recipe.momentum,
                           dampening=recipe.dampening, nesterov=recipe.nesterov,
                           weight_decay=recipe.weight_decay)


def _synchronize(device):
    """Wait for queued device work, so the timer sees it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.synchronize()


def run_steps(net, params, inputs, targets, recipe, batches, *, loss, lr_scheduler=None,
              train_mode=False, max_seconds=None, after_step=None):
    """Run real optimiser steps of ``recipe`` on ``net`` (modified in place: pass a copy).

    Parameters
    ----------
    net : torch.nn.Module
        The model to train (a copy the caller owns).
    params : list of Tensor
        Its trainable parameters (the others stay as they are).
    inputs : ModelInputs, Tensor or tuple of Tensor
        All inputs (first axis samples), on any device; the model is called
        through :func:`sktt.gradients.call_model` (any input container, the
        logits selected from any output).
    targets : Tensor
        All targets in torch's form (:func:`torch_targets`), on the model's device.
    recipe : TrainingRecipe
    batches : sequence of index arrays
        The batch of each step; its length is the number of steps.
    loss : {"cross_entropy", "mse"}
    lr_scheduler : callable, optional
        A torch scheduler factory, stepped after every step; None follows
        ``recipe.learning_rates``.
    train_mode : bool, default=False
        Take the steps in ``train()`` mode; by default ``eval()`` (the function
        the prediction linearises). ``net`` is left in ``eval()`` mode.
    max_seconds : float, optional
        Stop once the steps' wall time reaches this (after at least one step).
    after_step : callable, optional
        ``after_step(t, net)`` after step ``t`` (1-based), in ``eval()`` mode and
        outside the timer (e.g. to record the full-set loss).

    Returns
    -------
    optimizer : torch.optim.SGD or torch.optim.AdamW
        With its state (momentum buffers, Adam moments) after the last step.
    seconds : list of float
        Wall time of each step (forward, backward, update; device-synchronised).
    """
    train_mode = check_bool("train_mode", train_mode)  # every real step runs here
    device = params[0].device
    for p in net.parameters():
        p.grad = None
    # a torch scheduler starts from the base rate, as in the user's own loop
    opt = make_optimizer(params, recipe, lr=recipe.lr if callable(lr_scheduler) else None)
    scheduler = lr_scheduler(opt) if callable(lr_scheduler) else None
    rates = recipe.learning_rates
    loss_fn = torch_loss(loss)
    seconds = []
    for t, idx in enumerate(batches):
        if max_seconds is not None and seconds and sum(seconds) >= max_seconds:
            break
        idx_t = torch.as_tensor(np.asarray(idx).reshape(-1), dtype=torch.int64)
        x = inputs_to(index_inputs(inputs, idx_t), device)
        y = targets[idx_t.to(targets.device)]
        if scheduler is None and t < len(rates):
            for group in opt.param_groups:
                group["lr"] = float(rates[t])
        net.train(bool(train_mode))
        _synchronize(device)
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(call_model(net, x), y).backward()
        opt.step()
        _synchronize(device)
        seconds.append(time.perf_counter() - start)
        if scheduler is not None:
            scheduler.step()
        net.eval()
        if after_step is not None:
            after_step(t + 1, net)
    net.eval()
    return opt, seconds
