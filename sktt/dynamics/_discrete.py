r"""Exact function-space simulation of torch's SGD on the linearised model.

For :math:`f_w(x) = f_0(x) + J(x)(w - w_0)` the recursion of
``torch.optim.SGD`` (momentum m, dampening τ, Nesterov, coupled weight decay λ,
per-step rate η_t; derived in :mod:`sktt.dynamics._recipe`) maps to function
space exactly, with :math:`U = J(\nabla_w L_B + \lambda w)` and
:math:`A = J\,\mathrm{buf}`:

.. math::

    U &= \Theta_{:,B}\, \nabla_{F_B} L_B(F_B) + \lambda\,(F - F_0 + \Phi_0), \\
    A &= U \ \text{(first step)}, \quad A \leftarrow m A + (1-\tau) U \ \text{(after)}, \\
    F &\leftarrow F - \eta_t\,(U + mA \ \text{if Nesterov else } A),

where :math:`L_B` is the mean loss over the batch :math:`B`,
:math:`\Theta_{:,B}` the kernel columns of the batch rows (``i·C + c``) and
:math:`\Phi_0 = Jw_0`. Held-out ("eval") rows follow the same update through the
cross-kernel; they never enter a batch. Full-batch GD is ``B = all samples``.

Paths (independent batch sequences) are simulated together as a leading axis;
each step costs ``O(P · b·C · (N + N_eval)·C)`` through the kernel operator
(:class:`sktt.gram.DenseKernel`), bound by memory traffic, not arithmetic.
"""

import numpy as np

from ..utils._threads import single_threaded_blas
from ._curves import CurveRecorder
from ._losses import loss_gradient

__all__ = ["simulate_discrete", "check_batches"]


def check_batches(batches, n_samples, n_steps):
    """Validate a batch sequence and return it as a list of ``(P, b_t)`` int arrays.

    Accepted: a list of ``n_steps`` index arrays, each of shape ``(b_t,)`` (one path)
    or ``(P, b_t)`` (P paths; every path's batch at step t has the same size).
    """
    if len(batches) < n_steps:
        raise ValueError(f"batches has {len(batches)} entries but n_steps={n_steps}; accepted: "
                         "at least one index array per step.")
    out, n_paths = [], None
    for t, b in enumerate(batches[:n_steps]):
        b = np.asarray(b)
        if b.ndim == 1:
            b = b[None, :]
        if b.ndim != 2 or b.shape[1] == 0 or not np.issubdtype(b.dtype, np.integer):
            raise ValueError(f"batches[{t}] has shape {b.shape} and dtype {b.dtype}; accepted: "
                             "a non-empty integer index array of shape (b,) or (n_paths, b).")
        if b.min() < 0 or b.max() >= n_samples:
            raise ValueError(f"batches[{t}] holds indices in [{b.min()}, {b.max()}]; accepted: "
                             f"[0, {n_samples - 1}].")
        if n_paths is None:
            n_paths = b.shape[0]
        elif b.shape[0] != n_paths:
            raise ValueError(f"batches[{t}] has {b.shape[0]} paths but batches[0] has {n_paths}.")
        out.append(b.astype(np.intp, copy=False))  # no second copy of P·T·b indices
    return out


@single_threaded_blas
def simulate_discrete(kernel, problem, recipe, *, batches=None, momentum_buffer=None):
    """Simulate the linearised model's SGD/GD exactly, step by step.

    Parameters
    ----------
    kernel : DenseKernel
        The kernel operator (:mod:`sktt.gram._kernels`), with the cross-kernel to
        the eval rows when ``problem`` has them.
    problem : LinearizedProblem
        Outputs at w0, targets, loss, labels, Φ0 = J·w0, held-out rows.
    recipe : TrainingRecipe
        Learning rates, momentum, dampening, Nesterov, weight decay, n_steps.
    batches : list of ndarray, optional
        Output of :func:`check_batches`; None = full batch (one path).
    momentum_buffer : ndarray of shape ((N + N_eval)·C,), optional
        Function-space momentum A = J·buf at the start (a run resumed after real
        steps); None means a fresh optimiser (the first step sets A = U).

    Returns
    -------
    dict
        ``"loss"``, ``"error"`` (or None), ``"eval_loss"``, ``"eval_error"`` (or
        None) of shape (P, n_steps + 1), and ``"diverged_at"`` (P,) — the first
        step with a non-finite train loss, or -1.
    """
    n, c = problem.f0.shape
    n_eval = problem.n_eval
    n_all = n + n_eval
    n_steps = recipe.n_steps
    lrs = recipe.learning_rates
    wd = recipe.weight_decay
    n_paths = 1 if batches is None else batches[0].shape[0]
    F0 = problem.stacked_f0()  # (N + N_eval, C)
    F = np.repeat(F0[None], n_paths, axis=0)  # (P, N + N_eval, C)
    anchor = None if wd == 0 else (problem.stacked_jw0() - F0).reshape(1, -1)  # Φ0 − F0
    A = None
    if momentum_buffer is not None and recipe.momentum > 0:
        A = np.repeat(np.asarray(momentum_buffer, dtype=np.float64).reshape(1, -1), n_paths, 0)
    curves = CurveRecorder(n_paths, n_steps, problem.targets, problem.loss, problem.labels,
                           problem.eval_targets if n_eval else None, problem.eval_labels)

    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(n_steps + 1):
            F_train = F[:, :n]
            # loss and full-batch gradient share one softmax at F_t
            grad = curves.record(t, F_train, F[:, n:] if n_eval else None)
            if (t > 0 and curves.all_diverged(t)) or t == n_steps:
                break
            if batches is None:
                U = kernel.full_product(grad.reshape(n_paths, -1))
            else:
                idx = batches[t]  # (P, b)
                grad_b = loss_gradient(np.take_along_axis(F_train, idx[:, :, None], axis=1),
                                       problem.targets[idx], problem.loss)  # (P, b, C)
                U = kernel.batch_product(grad_b, idx)
            if anchor is not None:  # J·(λw) = λ(F − F0 + Φ0)
                U += wd * (F.reshape(n_paths, -1) + anchor)
            step, A = recipe.direction(U, A)
            F -= lrs[t] * step.reshape(n_paths, n_all, c)
    return curves.result()
