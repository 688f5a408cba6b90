r"""The exact discrete simulation in the sketch space of a factored kernel.

With projected Jacobian rows :math:`\tilde J` (N·C × D0) the kernel is
:math:`\tilde\Theta = \tilde J\tilde J^\top`, and every function-space term of
:mod:`sktt.dynamics._discrete` is :math:`\tilde J` times a D0-vector, except
two fixed directions: the weight-decay anchor :math:`\Phi_0 = Jw_0` and a
momentum buffer :math:`A_0` given at the start (a resumed run). Collect those
in :math:`E` (N·C × k, k ≤ 2); the state

.. math::

    F = F_0 + \tilde J u + E a, \qquad A = \tilde J v + E \beta

is closed under the recursion: the decayed gradient is
:math:`U = \tilde J(\tilde J_B^\top \nabla_{F_B}L_B + \lambda u) + \lambda E(a + e_\Phi)`
(:math:`e_\Phi` picks :math:`\Phi_0`, since
:math:`F - F_0 + \Phi_0 = \tilde J u + Ea + \Phi_0`), and the momentum /
dampening / Nesterov recursion (:meth:`TrainingRecipe.direction`) is linear, so
it runs verbatim on :math:`z = (u, a) \in \mathbb{R}^{D_0 + k}` (:math:`A_0`
enters as :math:`\beta = e_A`). This is the same dynamics as the dense
:math:`\tilde\Theta` to round-off.

Cost. A step needs only the batch outputs
:math:`F_B = F_{0,B} + \tilde J_B u + E_B a`: ``O(P·b·C·D0)`` instead of the
dense ``O(P·b·C·N·C)``. The full-set loss and error at every step — what the
curves are — are computed afterwards from the stored states
:math:`z_0..z_T` by blocked matrix products over the rows,
``O(N·C·D0·P·T)`` multiply-adds in float64 BLAS with ``O(block)`` memory.
Gradient descent needs :math:`F` on every row at each step anyway
(``O(N·C·D0)`` per step).

Divergence is reported as the dense solver does (first step with a non-finite
train loss; once every path has diverged, the remaining losses are inf).
"""

import numpy as np

from ..utils._threads import single_threaded_blas
from ._losses import loss_gradient, loss_value, train_error

__all__ = ["simulate_factored", "states_bytes"]


def states_bytes(kernel, recipe, n_paths, n_directions=2):
    """Bytes of the stored states z_0..z_T (float64)."""
    return 8 * n_paths * (recipe.n_steps + 1) * (kernel.dim + n_directions)


def _directions(problem, recipe, momentum_buffer, n_all, c):
    """E ((N + N_eval)·C, k) of the fixed directions, and the indices of Φ0 and A0 in it."""
    cols, i_phi, i_buf = [], None, None
    if recipe.weight_decay:
        i_phi = len(cols)
        cols.append(problem.stacked_jw0().reshape(-1))
    if momentum_buffer is not None and recipe.momentum > 0:
        i_buf = len(cols)
        cols.append(np.asarray(momentum_buffer, dtype=np.float64).reshape(-1))
    E = np.column_stack(cols) if cols else np.zeros((n_all * c, 0))
    return E, i_phi, i_buf


def _outputs(kernel, F0, E, Z, start, stop, eval_rows):
    """F of rows [start, stop) (whole samples) at every stored state: (M, n_b, C)."""
    part = kernel.eval_rows if eval_rows else kernel.rows
    d = kernel.dim
    rows = np.asarray(part[start:stop], dtype=np.float64)  # (n_b·C, D0)
    offset = kernel.n_train_rows if eval_rows else 0
    out = Z[:, :d] @ rows.T
    if E.shape[1]:
        out += Z[:, d:] @ E[offset + start:offset + stop].T
    c = kernel.n_outputs
    out = out.reshape(Z.shape[0], -1, c)
    out += F0[(offset + start) // c:(offset + stop) // c][None]
    return out


def _curves(kernel, problem, F0, E, Z, *, eval_rows):
    """Mean loss and train error (%) at every stored state, accumulated over row blocks."""
    if eval_rows:
        targets, labels, n = problem.eval_targets, problem.eval_labels, problem.n_eval
    else:
        targets, labels, n = problem.targets, problem.labels, problem.f0.shape[0]
    c = kernel.n_outputs
    loss = np.zeros(Z.shape[0])
    error = None if labels is None else np.zeros(Z.shape[0])
    for s, e in kernel.row_blocks(width=Z.shape[0], eval_rows=eval_rows):
        F = _outputs(kernel, F0, E, Z, s, e, eval_rows)
        sl = slice(s // c, e // c)
        weight = (e - s) / c / n  # the block's share of the mean over samples
        loss += weight * loss_value(F, targets[sl], problem.loss)
        if error is not None:
            error += weight * train_error(F, labels[sl])
    return loss, error


@single_threaded_blas
def simulate_factored(kernel, problem, recipe, *, batches=None, momentum_buffer=None):
    """:func:`~sktt.dynamics.simulate_discrete` for a :class:`~sktt.gram.FactoredKernel`.

    Same parameters and returns; the kernel's ``eval_rows`` carry the
    held-out outputs of ``problem``.
    """
    n, c = problem.f0.shape
    n_eval = problem.n_eval
    if kernel.n_eval_rows != n_eval * c:
        raise ValueError(f"the kernel has {kernel.n_eval_rows} held-out rows but the problem has "
                         f"{n_eval} held-out samples × C={c}.")
    d = kernel.dim
    n_steps = recipe.n_steps
    lrs = recipe.learning_rates
    wd = recipe.weight_decay
    n_paths = 1 if batches is None else batches[0].shape[0]
    F0 = problem.stacked_f0()  # (N + N_eval, C)
    E, i_phi, i_buf = _directions(problem, recipe, momentum_buffer, n + n_eval, c)
    k = E.shape[1]
    E_train = E[:n * c]
    Z = np.zeros((n_steps + 1, n_paths, d + k))
    buffer = None
    if i_buf is not None:
        buffer = np.zeros((n_paths, d + k))
        buffer[:, d + i_buf] = 1.0
    anchor = np.zeros(d + k)
    if i_phi is not None:
        anchor[d + i_phi] = 1.0
    targets = problem.targets
    z = Z[0].copy()
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(n_steps):
            update = np.zeros((n_paths, d + k))
            if batches is None:  # gradient descent: F on every training row
                F = (kernel.apply(z[:, :d])[:, :n * c] + z[:, d:] @ E_train.T).reshape(
                    n_paths, n, c) + F0[None, :n]
                grad = loss_gradient(F, targets, problem.loss).reshape(n_paths, -1)
                update[:, :d] = kernel.transpose_product(grad)
            else:
                idx = batches[t]  # (P, b)
                rows = kernel.gather(idx)  # (P, b·C, D0)
                F_b = (rows @ z[:, :d, None])[:, :, 0]
                if k:
                    cols = (idx[:, :, None] * c + np.arange(c)).reshape(n_paths, -1)
                    F_b += np.einsum("pkj,pj->pk", E_train[cols], z[:, d:])
                F_b = F_b.reshape(idx.shape + (c,)) + F0[idx]
                grad_b = loss_gradient(F_b, targets[idx], problem.loss)  # (P, b, C)
                update[:, :d] = (grad_b.reshape(n_paths, 1, -1) @ rows)[:, 0]
            if wd:  # λ·J·w = J̃(λu) + λE(a + e_Φ)
                update += wd * (z + anchor)
            step, buffer = recipe.direction(update, buffer)
            z = z - lrs[t] * step
            Z[t + 1] = z
        flat = Z.reshape((n_steps + 1) * n_paths, d + k)
        loss, error = _curves(kernel, problem, F0, E, flat, eval_rows=False)
        eval_loss = eval_error = None
        if n_eval:
            eval_loss, eval_error = _curves(kernel, problem, F0, E, flat, eval_rows=True)
    shape = (n_steps + 1, n_paths)
    out = {"loss": loss.reshape(shape).T.copy(),
           "error": None if error is None else error.reshape(shape).T.copy(),
           "eval_loss": None if eval_loss is None else eval_loss.reshape(shape).T.copy(),
           "eval_error": None if eval_error is None else eval_error.reshape(shape).T.copy()}
    return _mark_divergence(out)


def _mark_divergence(out):
    """The dense solver's divergence bookkeeping on finished curves."""
    loss = out["loss"]
    n_paths, n_points = loss.shape
    bad = ~np.isfinite(loss[:, 1:])
    diverged_at = np.where(bad.any(axis=1), bad.argmax(axis=1) + 1, -1)
    if n_points > 1 and np.all(diverged_at >= 0):
        stop = int(diverged_at.max())  # the dense loop stops here
        loss[:, stop:] = np.inf
        if out["eval_loss"] is not None:
            out["eval_loss"][:, stop:] = np.inf
        for key in ("error", "eval_error"):
            if out[key] is not None:
                out[key][:, stop + 1:] = np.nan
    out["diverged_at"] = diverged_at
    return out
