r"""Exact AdamW on the linearised model, in parameter space.

Why parameter space
-------------------
``torch.optim.AdamW`` divides each coordinate of the update by
:math:`\sqrt{\hat v_i}`, so its step is not a linear map of the gradient and
does not pass through the kernel :math:`\Theta = J J^\top`: AdamW is *not* a
function-space method. For the linearised model

.. math:: F(w) = F_0 + J (w - w_0), \qquad J \in \mathbb{R}^{NC \times D}

(rows sample-major: row ``i·C + c`` is output ``c`` of sample ``i``) the
gradient of the batch loss is nevertheless exact and cheap,

.. math:: g_t = \nabla_w L_B(F_B(w)) = J_B^\top \nabla_{F_B} L_B ,

with :math:`L_B` torch's mean loss over the batch (so :math:`\nabla_{F_B} L_B`
carries the ``1/b`` of the mean, see :mod:`sktt.dynamics._losses`). Running
torch's recursion on :math:`w \in \mathbb{R}^D` with this gradient is then the
linearised model's AdamW training, exact up to floating-point rounding:

.. math::

    w &\leftarrow w\,(1 - \eta_t \lambda)              && \text{decoupled decay, first}\\
    m &\leftarrow m + (1-\beta_1)(g_t - m)             && \text{torch's ``lerp``}\\
    v &\leftarrow \beta_2 v + (1-\beta_2)\, g_t^2 \\
    w &\leftarrow w - \frac{\eta_t}{1-\beta_1^t}\;
          \frac{m}{\sqrt{v}/\sqrt{1-\beta_2^t} + \epsilon}

with the step count ``t`` starting at 1 and :math:`\eta_t` the learning rate
the scheduler set for step ``t`` (``lrs[t-1]``). The order of operations is
that of ``torch/optim/adam.py`` (``_single_tensor_adam``, non-amsgrad,
``decoupled_weight_decay=True``), so float64 results agree with a float64
torch run to ~1e-12 relative. Decay acts on :math:`w` itself, not on
:math:`w - w_0`; this is why the trainable weights :math:`w_0` are an input.

Units
-----
Steps are optimiser steps (one per minibatch); ``lrs`` are torch's values;
losses are torch's mean losses; errors are in percent.

Cost
----
Per step and path: the full outputs :math:`F_0 + J(w - w_0)` for the loss
curve, ``N·C·D`` multiply-adds (one pass over ``J`` for all paths together),
plus the batch gradient, ``b·C·D``, plus ``O(D)`` for the update. Memory: ``J``
itself (``N·C·D`` values, float64 or float32 storage; float32 rows are
converted chunk by chunk so the math stays float64) and ``4·P·D`` floats of
optimiser state. This is the mode for a *small* trainable part (a head, a few
layers); beyond it see the approximations in :mod:`sktt.dynamics._adamw_kernel`.
"""

import numbers

import numpy as np

from ..utils._threads import single_threaded_blas
from ._curves import CurveRecorder
from ._losses import loss_value_and_gradient

__all__ = ["adam_step_size", "check_adamw_params", "simulate_adamw"]

# float64 bytes converted at a time when the rows are stored in another dtype
_CHUNK_BYTES = 32 * 2**20


def check_adamw_params(*, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, lrs=None,
                       n_steps=None):
    """Validate AdamW hyper-parameters; return ``(beta1, beta2, eps, weight_decay, lrs)``.

    Parameters
    ----------
    betas : tuple of two floats
        Each in ``[0, 1)``.
    eps : float
        ``> 0``.
    weight_decay : float
        ``>= 0``.
    lrs : array-like of shape (>= n_steps,), optional
        Per-step learning rates, finite and ``>= 0``.
    n_steps : int, optional
        Number of steps; when given, ``lrs`` must hold at least that many values.

    Returns
    -------
    beta1, beta2, eps, weight_decay : float
    lrs : ndarray of shape (n_steps,) or None
        Truncated to ``n_steps`` when it is given.

    Raises
    ------
    ValueError
        Naming the parameter and the accepted values.
    """
    try:
        beta1, beta2 = (float(b) for b in betas)
    except (TypeError, ValueError):
        raise ValueError(f"betas={betas!r}; accepted: a pair of floats in [0, 1).") from None
    for name, b in (("betas[0]", beta1), ("betas[1]", beta2)):
        if not 0.0 <= b < 1.0:
            raise ValueError(f"{name}={b!r}; accepted: a float in [0, 1).")
    if not isinstance(eps, numbers.Real) or not np.isfinite(eps) or not eps > 0:
        raise ValueError(f"eps={eps!r}; accepted: a finite float > 0.")
    if (not isinstance(weight_decay, numbers.Real) or not np.isfinite(weight_decay)
            or weight_decay < 0):
        raise ValueError(f"weight_decay={weight_decay!r}; accepted: a finite float >= 0.")
    if n_steps is not None and (not isinstance(n_steps, numbers.Integral) or n_steps < 0):
        raise ValueError(f"n_steps={n_steps!r}; accepted: an integer >= 0.")
    if lrs is not None:
        lrs = np.asarray(lrs, dtype=np.float64).reshape(-1)
        if n_steps is not None:
            if lrs.size < n_steps:
                raise ValueError(f"lrs has {lrs.size} values but n_steps={n_steps}; accepted: "
                                 "one learning rate per step (at least n_steps values).")
            lrs = lrs[:n_steps]
        if not np.all(np.isfinite(lrs)) or np.any(lrs < 0):
            raise ValueError(f"lrs holds values in [{lrs.min()}, {lrs.max()}]; accepted: finite "
                             "learning rates >= 0.")
    return beta1, beta2, float(eps), float(weight_decay), lrs


def _row_chunks(rows):
    """Slices over the rows such that a float64 copy of one chunk stays small."""
    if rows.dtype == np.float64:
        return [slice(0, rows.shape[0])]
    step = max(1, _CHUNK_BYTES // (8 * max(1, rows.shape[1])))
    return [slice(i, i + step) for i in range(0, rows.shape[0], step)]


def _apply(rows, U):
    """``rows @ U`` in float64 for ``U`` of shape (D, P); result (R, P)."""
    if rows.shape[0] == 0:
        return np.zeros((0, U.shape[1]))
    if rows.dtype == np.float64:
        return rows @ U
    return np.concatenate([rows[s].astype(np.float64) @ U for s in _row_chunks(rows)])


def _apply_transpose(rows, G):
    """``G @ rows`` in float64 for ``G`` of shape (P, R); result (P, D)."""
    if rows.dtype == np.float64:
        return G @ rows
    out = np.zeros((G.shape[0], rows.shape[1]))
    for s in _row_chunks(rows):
        out += G[:, s] @ rows[s].astype(np.float64)
    return out


def _check_rows(name, rows, n_params=None):
    rows = np.asarray(rows)
    if rows.dtype not in (np.float32, np.float64):
        rows = rows.astype(np.float64)
    if rows.ndim != 2:
        raise ValueError(f"{name} has shape {rows.shape}; accepted: a 2-D array (N·C, D).")
    if n_params is not None and rows.shape[1] != n_params:
        raise ValueError(f"{name} has {rows.shape[1]} columns but w0 has {n_params} weights; "
                         "accepted: one column per trainable weight.")
    return rows


@single_threaded_blas
def adam_step_size(lr, beta1, step):
    """torch's Adam/AdamW step size at ``step`` (1-based): ``lr / (1 − β1^step)``."""
    return lr / (1.0 - beta1**step)


def simulate_adamw(rows, w0, F0, targets, *, loss, lrs, n_steps=None, betas=(0.9, 0.999),
                   eps=1e-8, weight_decay=0.01, batches=None, labels=None, eval_rows=None,
                   eval_F0=None, eval_targets=None, eval_labels=None, state=None):
    r"""Train the linearised model with ``torch.optim.AdamW``, exactly, step by step.

    Parameters
    ----------
    rows : ndarray of shape (N·C, D)
        Jacobian rows ``J`` of the trainable weights, sample-major; float64, or
        float32 storage (the math is float64 either way).
    w0 : ndarray of shape (D,)
        Trainable weights at the linearisation point, flattened in the column
        order of ``rows`` (decoupled weight decay acts on ``w``, not on ``w - w0``).
    F0 : ndarray of shape (N, C)
        Outputs at ``w0``.
    targets : ndarray
        Labels (N,) for cross-entropy, targets (N, C) for MSE.
    loss : {"cross_entropy", "mse"}
    lrs : array-like of shape (>= n_steps,)
        Learning rate of each step, as torch's scheduler sets it before that
        step's ``optimizer.step()``.
    n_steps : int, optional
        Number of steps T; None means ``len(lrs)``.
    betas : tuple of float, default=(0.9, 0.999)
    eps : float, default=1e-8
    weight_decay : float, default=0.01
        Decoupled (AdamW) decay λ: ``w ← w·(1 − η_t λ)`` before each update.
    batches : list of ndarray, optional
        Output of :func:`~sktt.dynamics.check_batches`: per step, a ``(P, b)``
        int array of sample indices (P paths simulated together). None means
        full batch, one path.
    labels : ndarray of shape (N,), optional
        Compute the train error against these labels.
    eval_rows : ndarray of shape (M·C, D), optional
        Jacobian rows of held-out samples (never in a batch).
    eval_F0 : ndarray of shape (M, C), optional
    eval_targets : ndarray, optional
        Labels (M,) or targets (M, C) of the held-out samples.
    eval_labels : ndarray of shape (M,), optional
        Compute the held-out error against these labels.
    state : dict, optional
        Resume a run: torch's ``exp_avg`` and ``exp_avg_sq`` (each (D,), in the
        column order of ``rows``) and ``step`` (steps already taken, for the
        bias corrections). ``w0`` is then the current weights and ``F0`` the
        outputs there. None starts fresh (zero moments, step 0).

    Returns
    -------
    dict
        ``"loss"`` and ``"error"`` (or None) of shape (P, T + 1) (index t = after
        t steps); ``"diverged_at"`` (P,), the first step with a non-finite loss
        or -1; ``"weights"`` (P, D), the final ``w``; with eval rows also
        ``"eval_loss"`` and ``"eval_error"`` (or None), shape (P, T + 1).

    Notes
    -----
    See the module docstring for the recursion and its cost.
    """
    F0 = np.asarray(F0, dtype=np.float64)
    n, c = F0.shape
    w0 = np.asarray(w0, dtype=np.float64).reshape(-1)
    rows = _check_rows("rows", rows, w0.size)
    if rows.shape[0] != n * c:
        raise ValueError(f"rows has {rows.shape[0]} rows but F0 has shape {F0.shape}; accepted: "
                         "N·C rows, sample-major.")
    if n_steps is None:
        n_steps = 0 if lrs is None else len(np.asarray(lrs).reshape(-1))
    beta1, beta2, eps, weight_decay, lrs = check_adamw_params(
        betas=betas, eps=eps, weight_decay=weight_decay, lrs=lrs, n_steps=n_steps)
    has_eval = eval_rows is not None
    if has_eval:
        if eval_F0 is None or eval_targets is None:
            raise ValueError("eval_rows is given without eval_F0 and eval_targets; accepted: all "
                             "three together.")
        eval_rows = _check_rows("eval_rows", eval_rows, w0.size)
        eval_F0 = np.asarray(eval_F0, dtype=np.float64)
        if eval_rows.shape[0] != eval_F0.size or eval_F0.ndim != 2 or eval_F0.shape[1] != c:
            raise ValueError(f"eval_rows has {eval_rows.shape[0]} rows and eval_F0 shape "
                             f"{eval_F0.shape}; accepted: eval_F0 of shape (M, {c}) and M·{c} rows.")

    n_paths = 1 if batches is None else batches[0].shape[0]
    d = w0.size
    w = np.repeat(w0[None], n_paths, axis=0)  # (P, D), the weights as torch holds them
    m = np.zeros((n_paths, d))
    v = np.zeros((n_paths, d))
    step0 = 0
    if state is not None:
        m[:] = np.asarray(state["exp_avg"], dtype=np.float64).reshape(-1)
        v[:] = np.asarray(state["exp_avg_sq"], dtype=np.float64).reshape(-1)
        step0 = int(state["step"])
    curves = CurveRecorder(n_paths, n_steps, targets, loss, labels,
                           eval_targets if has_eval else None, eval_labels)
    out_offsets = np.arange(c)

    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(n_steps + 1):
            delta = (w - w0).T  # (D, P)
            F = F0 + _apply(rows, delta).T.reshape(n_paths, n, c)
            F_val = (eval_F0 + _apply(eval_rows, delta).T.reshape(n_paths, -1, c)
                     if has_eval else None)
            grad = curves.record(t, F, F_val)
            if (t > 0 and curves.all_diverged(t)) or t == n_steps:
                break
            if batches is None:
                g = _apply_transpose(rows, grad.reshape(n_paths, n * c))
            else:
                idx = batches[t]  # (P, b)
                g = np.empty((n_paths, d))
                for p in range(n_paths):
                    grad_b = loss_value_and_gradient(F[p, idx[p]], targets[idx[p]], loss)[1]
                    batch_rows = (idx[p][:, None] * c + out_offsets).reshape(-1)
                    g[p] = _apply_transpose(rows[batch_rows], grad_b.reshape(1, -1))[0]
            lr, step = lrs[t], step0 + t + 1
            if weight_decay != 0:
                w *= 1.0 - lr * weight_decay
            m += (1.0 - beta1) * (g - m)  # torch: exp_avg.lerp_(grad, 1 - beta1)
            v *= beta2
            v += (1.0 - beta2) * g * g
            step_size = adam_step_size(lr, beta1, step)
            denom = np.sqrt(v) / (1.0 - beta2**step) ** 0.5 + eps
            w -= step_size * (m / denom)
    out = curves.result()
    out["weights"] = w
    return out
