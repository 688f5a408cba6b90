r"""Gradient flow of the linearised model (the paper's deterministic dynamics).

.. math::

    \frac{dF}{dt} = -\tilde\eta\, \Theta\, \nabla_F L(F), \qquad
    \tilde\eta = \frac{\eta}{1 - m},

with ``t`` in optimiser steps and :math:`\nabla_F L` in torch's mean units (see
:mod:`sktt.dynamics._losses`). Cross-entropy is integrated with LSODA
(``scipy.integrate.solve_ivp``) and the analytic Jacobian
:math:`-\tilde\eta\,\Theta\,H(F)`, :math:`H` the block-diagonal softmax Hessian;
squared error has the closed form of :mod:`sktt.dynamics._closed_form`, and the
ODE path is kept for it only as a cross-check.
"""

import numpy as np
from scipy.integrate import solve_ivp

from ..exceptions import SolverError
from ._losses import loss_gradient, loss_value, mse_curvature, softmax_hessian, train_error

__all__ = ["solve_gradient_flow"]


def _segments(rates):
    """``(start, stop, rate)`` runs of equal per-step rates (one run for a constant lr)."""
    cuts = np.flatnonzero(np.diff(rates)) + 1
    starts = np.concatenate([[0], cuts])
    stops = np.concatenate([cuts, [len(rates)]])
    return [(int(a), int(b), float(rates[a])) for a, b in zip(starts, stops)]


def solve_gradient_flow(kernel, problem, recipe, *, rtol=1e-9, atol=1e-12):
    r"""Integrate the gradient flow with LSODA and return curves at steps ``0..n_steps``.

    The flow is :math:`\dot F = -\tilde\eta_t[\Theta\nabla_F L + \lambda(F - F_0 +
    \Phi_0)]` with :math:`\tilde\eta_t` constant over each step
    (:meth:`TrainingRecipe.effective_learning_rates`); held-out rows move with
    the cross-kernel. Runs of equal rates are integrated in one LSODA call.

    Parameters
    ----------
    kernel : DenseKernel
    problem : LinearizedProblem
    recipe : TrainingRecipe
    rtol, atol : float
        LSODA tolerances.

    Returns
    -------
    dict with ``"loss"``, ``"error"``, ``"eval_loss"``, ``"eval_error"`` of shape
    (n_steps + 1,) (None where not asked for).

    Raises
    ------
    SolverError
        If LSODA fails; the message suggests the discrete solver.
    """
    n, c = problem.f0.shape
    n_tr = n * c
    targets, loss = problem.targets, problem.loss
    wd = recipe.weight_decay
    F_start = problem.stacked_f0().ravel()
    anchor = None if wd == 0 else problem.stacked_jw0().ravel() - F_start
    # rows of [Θ; Θ(eval, train)]: d(all outputs)/d(train gradient)
    K = kernel.ntk if kernel.cross is None else np.vstack([kernel.ntk, kernel.cross.T])

    def rhs(_, f, rate):
        drift = K @ loss_gradient(f[:n_tr].reshape(n, c), targets, loss).ravel()
        if anchor is not None:
            drift += wd * (f + anchor)
        return -rate * drift

    def jac(_, f, rate):
        out = np.zeros((f.size, f.size))
        if loss == "mse":
            out[:, :n_tr] = mse_curvature(n_tr) * K
        else:
            h = softmax_hessian(f[:n_tr].reshape(n, c))  # (N, C, C)
            out[:, :n_tr] = np.einsum("mnc,ncd->mnd", K.reshape(-1, n, c), h).reshape(-1, n_tr)
        if wd:
            out[np.diag_indices(f.size)] += wd
        return -rate * out

    states = [F_start.astype(np.float64)]
    for start, stop, rate in _segments(recipe.effective_learning_rates()):
        sol = solve_ivp(rhs, (float(start), float(stop)), states[-1], method="LSODA",
                        t_eval=np.arange(start, stop + 1, dtype=np.float64), jac=jac,
                        rtol=rtol, atol=atol, args=(rate,))
        if (not sol.success or sol.y.shape[1] != stop - start + 1
                or not np.all(np.isfinite(sol.y))):
            raise SolverError(f"LSODA failed after t={sol.t[-1] if sol.t.size else start:.3g} "
                              f"of {recipe.n_steps} steps: {sol.message}. The learning rate may "
                              "be too large for a smooth flow; try solver='discrete', a smaller "
                              "lr, or looser tolerances.")
        states.extend(sol.y.T[1:])
    F = np.stack(states).reshape(recipe.n_steps + 1, -1, c)
    out = {"loss": loss_value(F[:, :n], targets, loss),
           "error": None if problem.labels is None else train_error(F[:, :n], problem.labels),
           "eval_loss": None, "eval_error": None}
    if problem.n_eval:
        out["eval_loss"] = loss_value(F[:, n:], problem.eval_targets, loss)
        if problem.eval_labels is not None:
            out["eval_error"] = train_error(F[:, n:], problem.eval_labels)
    return out
