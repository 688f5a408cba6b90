"""Per-step learning rates of a torch LR scheduler, read on a throw-away optimizer.

A fine-tuning loop steps its scheduler once per optimiser step, so step ``t``
runs at the rate the scheduler had set before it. :func:`scheduled_learning_rates`
replays exactly that on a one-parameter ``torch.optim.SGD`` (the scheduler only
reads and writes ``param_groups``), so the prediction and a real run see the
same η_t — including schedulers whose value depends on their own history
(``ReduceLROnPlateau`` is the exception: it needs the loss, and is refused).
"""

import warnings

import numpy as np
import torch

from ..dynamics import check_learning_rates

__all__ = ["scheduled_learning_rates"]


def scheduled_learning_rates(lr, lr_scheduler, n_steps):
    """The learning rate of each of ``n_steps`` optimiser steps.

    Parameters
    ----------
    lr : float
        The optimiser's base learning rate.
    lr_scheduler : callable, array-like or None
        A callable taking a torch optimizer and returning an LR scheduler (e.g.
        ``functools.partial(CosineAnnealingLR, T_max=150)`` or
        ``lambda opt: LambdaLR(opt, warmup)``), stepped once per optimiser step;
        or the per-step rates themselves (length >= n_steps); None for a
        constant ``lr``.
    n_steps : int

    Returns
    -------
    rates : ndarray of shape (n_steps,) or None
        None when ``lr_scheduler`` is None (constant rate).
    """
    if lr_scheduler is None:
        return None
    if isinstance(lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        raise TypeError("lr_scheduler is a ReduceLROnPlateau instance; it needs the loss and "
                        "cannot be predicted. Accepted: a factory of a scheduler stepped once "
                        "per optimiser step without arguments, or an array of per-step rates.")
    if isinstance(lr_scheduler, torch.optim.lr_scheduler.LRScheduler):
        # an instance steps the optimizer it was built on, not the one sktt trains
        name = type(lr_scheduler).__name__
        raise TypeError(f"lr_scheduler is a {name} instance, bound to the optimizer it was built "
                        f"with; accepted: a factory taking the optimizer (e.g. functools.partial("
                        f"{name}, ...) or lambda opt: {name}(opt, ...)), or an array of per-step "
                        "rates.")
    if not callable(lr_scheduler):
        return np.asarray(check_learning_rates(lr_scheduler, n_steps))
    weight = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([weight], lr=lr, momentum=0.5)  # momentum: to see if it is cycled
    try:
        scheduler = lr_scheduler(opt)
    except Exception as exc:  # noqa: BLE001 - re-raised naming the parameter
        raise TypeError(f"lr_scheduler must be a callable taking a torch optimizer and returning "
                        f"an LR scheduler (e.g. functools.partial(CosineAnnealingLR, T_max=...)), "
                        f"or an array of per-step rates; calling it raised {exc!r}.") from exc
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) or not hasattr(
            scheduler, "step"):
        raise TypeError(f"lr_scheduler returned {type(scheduler).__name__}; accepted: a "
                        "scheduler stepped once per optimiser step without arguments "
                        "(ReduceLROnPlateau needs the loss and cannot be predicted).")
    rates = np.empty(n_steps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "step() before optimizer.step()" and similar
        for t in range(n_steps):
            group = opt.param_groups[0]
            rates[t] = group["lr"]
            if group["momentum"] != 0.5:
                raise ValueError("lr_scheduler changes the momentum (e.g. OneCycleLR's "
                                 "cycle_momentum=True); accepted: schedulers that change the "
                                 "learning rate only (pass cycle_momentum=False).")
            opt.step()
            scheduler.step()
    return np.asarray(check_learning_rates(rates, n_steps))
