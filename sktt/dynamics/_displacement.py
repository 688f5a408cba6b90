r"""Where the linearised model moves the weights, and how close a setting is to instability.

Displacement
------------
For the linearised model every SGD gradient lies in the row space of the
Jacobian at :math:`w_0`: :math:`\nabla_w L_B = J^\top \tilde g_B` with
:math:`\tilde g_B \in \mathbb{R}^{NC}` the batch gradient
:math:`\nabla_{F_B} L_B` scattered into the full output vector (zeros outside
the batch). With ``torch.optim.SGD``'s buffer :math:`\mathrm{buf} = J^\top \beta`,

.. math::

    \beta_t = m\,\beta_{t-1} + \tilde g_{B_t}, \qquad
    w_T - w_0 = -\eta \sum_{t=1}^{T} J^\top \beta_t = J^\top c_T,
    \qquad F_t = F_0 + \Theta\, c_t,

so the whole predicted weight displacement is one vector-Jacobian product with
the coefficient vector :math:`c_T`, and :math:`\lVert w_T - w_0\rVert^2 =
c_T^\top \Theta c_T`. With weight decay λ the gradient gains
:math:`\lambda w = \lambda(J^\top c + (1+\alpha) w_0)`, so the displacement
stays in the span of the Jacobian rows and :math:`w_0`:
:math:`w_t - w_0 = J^\top c_t + \alpha_t w_0` and
:math:`F_t = F_0 + \Theta c_t + \alpha_t \Phi_0`. The momentum, dampening
and Nesterov recursion is linear and applies to :math:`(c, \alpha)` as it is
(:meth:`TrainingRecipe.direction`). :func:`linear_displacement` runs it (the
same dynamics as :func:`~sktt.dynamics.simulate_discrete`, one path).

Stability
---------
Near a point :math:`F`, one step of the linearised GD on the batch :math:`B`
is the linear map of the quadratic model with curvature
:math:`M_B = H_B^{1/2} \Theta_{BB} H_B^{1/2}` (:math:`H_B` the Hessian of the
batch loss in :math:`F_B`: :math:`2 I/(bC)` for MSE, block-diagonal
:math:`(\mathrm{diag}\,p_i - p_i p_i^\top)/b` for cross-entropy).
:func:`batch_curvature` computes :math:`h = \lambda_{\max}(M_B)`; the recipe
turns it into the ratio to its stability edge
(:meth:`TrainingRecipe.stability_ratio`; heavy ball: :math:`\eta h / (2(1+m))`):
1 is the edge, beyond which the linearised loss oscillates with growing
amplitude; real networks already oscillate, and leave the linear regime,
somewhat below it.
"""

import dataclasses

import numpy as np
from scipy.special import softmax

from ..gram._kernels import top_eigenvalue
from ..utils._threads import single_threaded_blas
from ._losses import loss_gradient, mse_curvature

__all__ = ["Displacement", "batch_curvature", "linear_displacement", "stability_ratio",
           "stage_displacement"]


@dataclasses.dataclass(frozen=True)
class Displacement:
    r"""Where one stage of the linearised recipe moves the weights and the momentum buffer.

    In the basis :math:`(J^\top, w_s, \mathrm{buf}_s)` of the stage's start
    (Jacobian rows at the linearisation point, its weights, the momentum buffer
    it inherited): :math:`w - w_s = J^\top c + \alpha w_s + \gamma\,\mathrm{buf}_s`
    and :math:`\mathrm{buf} = J^\top \beta + b\,w_s + g\,\mathrm{buf}_s`.

    Attributes
    ----------
    coef : ndarray of shape (N, C)
        :math:`c` (sample-major).
    alpha, gamma : float
    buffer_coef : ndarray of shape (N, C) or None
        :math:`\beta` (None without momentum).
    buffer_alpha, buffer_gamma : float
        :math:`b, g`.
    recorded : dict of int to (ndarray (N, C), ndarray (N, C))
        :math:`(F_t, c_t)` at the requested steps.
    """

    coef: np.ndarray
    alpha: float
    gamma: float
    buffer_coef: np.ndarray
    buffer_alpha: float
    buffer_gamma: float
    recorded: dict


@single_threaded_blas
def stage_displacement(kernel, problem, recipe, *, batches=None, momentum_buffer=None,
                       record_steps=()):
    r"""Run the recipe on the linearised model and return its :class:`Displacement`.

    The same dynamics as :func:`~sktt.dynamics.simulate_discrete` (one path),
    tracked in coefficients: every update is a combination of the Jacobian
    rows, the stage's starting weights (weight decay) and the inherited buffer
    (a resumed run), so the state is :math:`N C + 2` numbers.

    Parameters
    ----------
    kernel : DenseKernel
    problem : LinearizedProblem
        Outputs at the stage's start; ``jw0`` = :math:`J w_s` with weight decay.
    recipe : TrainingRecipe
    batches : list of ndarray of shape (1, b) or (b,), optional
        One path of batch indices per step; None = full batch.
    momentum_buffer : ndarray of shape (N·C,), optional
        :math:`A_s = J\,\mathrm{buf}_s`, the inherited buffer in function space;
        None = a fresh optimiser.
    record_steps : iterable of int
        Steps whose outputs :math:`F_t` and coefficients :math:`c_t` to return as well.

    Returns
    -------
    Displacement
    """
    F0 = problem.f0
    n, c = F0.shape
    wd = recipe.weight_decay
    jw0 = problem.jw0.reshape(n, c) if wd else np.zeros((n, c))
    resumed = momentum_buffer is not None and recipe.momentum > 0
    A0 = np.asarray(momentum_buffer, dtype=np.float64).reshape(n, c) if resumed else None
    lrs = recipe.learning_rates
    state = np.zeros(n * c + 2)  # (c, α, γ)
    buffer = None
    if resumed:  # the inherited buffer is the basis vector buf_s
        buffer = np.zeros(n * c + 2)
        buffer[-1] = 1.0
    F = F0.astype(np.float64).copy()
    wanted = set(int(s) for s in record_steps)
    recorded = {0: (F.copy(), state[:-2].reshape(n, c).copy())} if 0 in wanted else {}
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(recipe.n_steps):
            g = np.zeros((n, c))
            if batches is None:
                g[:] = loss_gradient(F, problem.targets, problem.loss)
            else:
                idx = np.asarray(batches[t]).reshape(-1)
                g[idx] = loss_gradient(F[idx], problem.targets[idx], problem.loss)
            update = np.concatenate([g.ravel(), [0.0, 0.0]])
            if wd:  # λw = λ(Jᵀc + (1 + α) w_s + γ buf_s)
                update += wd * state
                update[-2] += wd
            step, buffer = recipe.direction(update, buffer)
            state -= lrs[t] * step
            # Θc through the kernel operator (dense Θ, or J̃(J̃ᵀc) without forming Θ)
            moved = kernel.full_product(state[None, :-2])[0, :n * c]
            F = F0 + moved.reshape(n, c) + state[-2] * jw0
            if resumed:
                F += state[-1] * A0
            if t + 1 in wanted:
                recorded[t + 1] = (F.copy(), state[:-2].reshape(n, c).copy())
            if not np.all(np.isfinite(F)):
                break
    buf = (None, 0.0, 0.0) if buffer is None else (
        buffer[:-2].reshape(n, c), float(buffer[-2]), float(buffer[-1]))
    return Displacement(state[:-2].reshape(n, c), float(state[-2]), float(state[-1]),
                        *buf, recorded)


def linear_displacement(kernel, problem, recipe, *, batches=None, record_steps=()):
    r"""Coefficients :math:`(c_T, \alpha_T)` of the weight displacement :math:`J^\top c_T + \alpha_T w_0`.

    The recursion runs on the state :math:`(c, \alpha, \phi)` with
    :math:`\phi` the kernel's image of :math:`c` — :math:`\Theta c` for a
    :class:`~sktt.gram.DenseKernel`, :math:`\tilde J^\top c` (D0-dim) for a
    :class:`~sktt.gram.FactoredKernel` — updated through the batch's rows only
    (``O(b·C·N·C)`` resp. ``O(b·C·D0)`` per step, plus ``O(N·C)`` for
    :math:`c`); the outputs are :math:`F = F_0 + \Theta c + \alpha\Phi_0`.

    Parameters
    ----------
    kernel : DenseKernel or FactoredKernel
    problem : LinearizedProblem
        Training rows only (held-out rows do not move the weights).
    recipe : TrainingRecipe
    batches : list of ndarray of shape (1, b) or (b,), optional
        One path of batch indices per step; None = full batch.
    record_steps : iterable of int
        Steps whose outputs :math:`F_t` and coefficients :math:`c_t` to return as well.

    Returns
    -------
    coef : ndarray of shape (N, C)
        :math:`c_T` (sample-major).
    alpha : float
        :math:`\alpha_T` (0 without weight decay).
    recorded : dict of int to (ndarray (N, C), ndarray (N, C))
        :math:`(F_t, c_t)` at the requested steps (and ``{}`` if none).
    """
    d = stage_displacement(kernel, problem, recipe, batches=batches, record_steps=record_steps)
    return d.coef, d.alpha, d.recorded


def _top_eig(matvec, dim):
    """Largest eigenvalue of a symmetric PSD operator (Lanczos to 1e-4; dense below 64 rows)."""
    return top_eigenvalue(matvec, dim, tol=1e-4)


def batch_curvature(kernel, F, targets, loss, idx):
    """h = λ_max of H_B^{1/2} Θ_BB H_B^{1/2} for the samples ``idx`` at outputs ``F``."""
    n, c = F.shape
    b = len(idx)
    if getattr(kernel, "factored", False) and np.array_equal(idx, np.arange(n)):
        product = kernel.matvec  # every sample: products through the rows, Θ never formed
    else:
        K = kernel.block(idx)
        product = K.__matmul__
    if loss == "mse":
        return mse_curvature(b * c) * _top_eig(product, b * c)
    p = softmax(F[idx], axis=-1)  # (b, C)
    # H_B^{1/2}: per-sample symmetric square root of diag(p) - p pᵀ, over sqrt(b)
    blocks = np.einsum("bc,cd->bcd", p, np.eye(c)) - p[:, :, None] * p[:, None, :]
    w, V = np.linalg.eigh(blocks)
    sqrt_h = np.einsum("bcj,bj,bdj->bcd", V, np.sqrt(np.clip(w, 0, None)), V) / np.sqrt(b)

    def apply_sqrt(v):
        return np.einsum("bcd,bd->bc", sqrt_h, v.reshape(b, c)).ravel()

    return _top_eig(lambda v: apply_sqrt(product(apply_sqrt(v))), b * c)


def max_curvature(kernel, outputs, targets, loss, *, batches=None, max_batches=4):
    """Largest batch curvature h over trajectory points ``outputs`` and the first batches."""
    n = outputs[0].shape[0]
    if batches is None:
        idxs = [np.arange(n)]
    else:
        idxs = [np.asarray(b).reshape(-1) for b in batches[:max_batches]]
    points = outputs if loss == "cross_entropy" else outputs[:1]  # MSE curvature is constant
    return max(batch_curvature(kernel, F, targets, loss, idx) for F in points for idx in idxs)


def stability_ratio(kernel, outputs, targets, *, loss, recipe, batches=None, max_batches=4):
    r"""The recipe's stability ratio at the largest curvature along ``outputs`` (1 is the edge).

    Parameters
    ----------
    kernel : DenseKernel or FactoredKernel
    outputs : list of ndarray of shape (N, C)
        Points of the predicted trajectory to evaluate the curvature at (for
        cross-entropy it depends on the outputs; the maximum is used).
    targets : ndarray
    loss : {"cross_entropy", "mse"}
    recipe : TrainingRecipe
    batches : list of ndarray, optional
        Batch sequence; None = full batch. The first ``max_batches`` batches are used.
    max_batches : int, default=4

    Returns
    -------
    float
    """
    curvature = max_curvature(kernel, outputs, targets, loss, batches=batches,
                              max_batches=max_batches)
    return recipe.stability_ratio(curvature)
