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


class _Image:
    r"""The kernel's image :math:`\phi` of the coefficients, and the outputs it gives.

    Dense Θ: :math:`\phi = \Theta c` (N·C numbers, the outputs' change itself);
    factored :math:`\tilde J`: :math:`\phi = \tilde J^\top c` (D0 numbers, the
    sketch-space state of :mod:`sktt.dynamics._factored`). Both are linear in
    :math:`c`, so they ride along in the same recursion.
    """

    def __init__(self, kernel, n_rows):
        self.kernel = kernel
        self.n_rows = n_rows
        self.factored = getattr(kernel, "factored", False)
        self.dim = kernel.dim if self.factored else n_rows
        self._rows = None  # the last batch's rows: one array reused step after step

    def batch(self, idx):
        """What the batch ``idx`` (b,) reads of the kernel: J̃_B (b·C, D0) float64, or None
        (dense: Θ's columns are read by :meth:`of_batch`); valid until the next call."""
        if self.factored:
            self._rows = self.kernel.gather(idx, buffer=self._rows)
            return self._rows
        return None

    def of_batch(self, grad_b, idx, rows):
        """Image of a gradient ``grad_b`` (b, C) on the rows of the samples ``idx`` (b,)."""
        if self.factored:
            return grad_b.reshape(-1) @ rows
        return self.kernel.batch_product(grad_b[None], idx[None])[0, :self.n_rows]

    def of_full(self, grad):
        """Image of a gradient ``grad`` (N·C,) on every training row."""
        if self.factored:
            return self.kernel.transpose_product(grad[None])[0]
        return self.kernel.full_product(grad[None])[0, :self.n_rows]

    def outputs_of_batch(self, phi, idx, rows):
        """Θc on the rows of the samples ``idx`` (``rows``: :meth:`batch`): (b, C)."""
        c = self.kernel.n_outputs
        if self.factored:
            return (rows @ phi).reshape(len(idx), c)
        return phi.reshape(-1, c)[idx]

    def outputs(self, phi):
        """Θc on every training row for M images ``phi`` (M, dim): (M, N·C)."""
        if self.factored:
            return self.kernel.apply(phi)[:, :self.n_rows]
        return phi


# batch gradients held between two re-basings of the coefficients (the weights' length)
_SLOTS = 256


class _Coefficients:
    r"""The coefficients :math:`c_t` and :math:`\beta_t` of a run, as weights of a few vectors.

    The recursion is linear and coordinatewise (:meth:`TrainingRecipe.direction`),
    so :math:`c_t` and :math:`\beta_t` are combinations, with weights shared by all
    N·C coordinates, of the scattered batch gradients :math:`\tilde g_\tau`. The
    run's state carries the weights: two for dense vectors (:math:`c` and
    :math:`\beta` at the last re-basing) and one per batch gradient held since. A
    re-basing forms the two dense vectors (``O(N·C)``) once the held gradients
    hold as many numbers as one of them, or ``_SLOTS`` of them: an SGD step costs
    ``O(b·C + _SLOTS)`` instead of ``O(N·C)`` (at N = 20 000, C = 10, T = 1 000
    the O(N·C) updates took 1.8 s of a 2.75 s run), a full-batch step re-bases at
    once.
    """

    def __init__(self, shape, slots):
        self.shape = shape
        self.slots = slots
        self.size = 2 + slots  # weights: dense c, dense β, then the held gradients
        self.dense = (np.zeros(shape), np.zeros(shape))
        self.held = []  # (sample indices or None for all, gradient (b, C) or (N, C))

    def hold(self, idx, grad):
        """Hold a batch gradient; returns the index of its weight."""
        self.held.append((idx, grad))
        return 1 + len(self.held)

    def full(self):
        """Whether to re-base: every weight taken, or the held gradients as large as c."""
        return (len(self.held) == self.slots
                or sum(g.size for _, g in self.held) >= np.prod(self.shape))

    def combine(self, weights):
        """The (N, C) vector with these weights."""
        out = weights[0] * self.dense[0] + weights[1] * self.dense[1]
        batches = [(idx, w * g) for (idx, g), w in zip(self.held, weights[2:]) if w]
        for idx, g in batches:
            if idx is None:
                out += g
        sparse = [(idx, g) for idx, g in batches if idx is not None]
        if sparse:  # one scatter (repeated samples add up)
            np.add.at(out, np.concatenate([i for i, _ in sparse]),
                      np.concatenate([g for _, g in sparse]))
        return out

    def rebase(self, state, buffer):
        """Form c and β, make them the dense vectors, and set the weights to pick them."""
        self.dense = (self.combine(state),
                      np.zeros(self.shape) if buffer is None else self.combine(buffer))
        self.held = []
        state[:self.size] = 0.0
        state[0] = 1.0
        if buffer is not None:
            buffer[:self.size] = 0.0
            buffer[1] = 1.0


@single_threaded_blas
def stage_displacement(kernel, problem, recipe, *, batches=None, momentum_buffer=None,
                       record_steps=()):
    r"""Run the recipe on the linearised model and return its :class:`Displacement`.

    The same dynamics as :func:`~sktt.dynamics.simulate_discrete` (one path),
    tracked in coefficients: every update is a combination of the Jacobian
    rows, the stage's starting weights (weight decay) and the inherited buffer
    (a resumed run), so the state is :math:`c` (kept as weights of a few
    vectors: :class:`_Coefficients`), :math:`\alpha`, :math:`\gamma`, plus the
    kernel's image :math:`\phi` of :math:`c` (:class:`_Image`), updated through
    the batch's rows only: ``O(b·C·N·C)`` (dense) or ``O(b·C·D0)`` (factored)
    per SGD step, as one path of the prediction's simulation; full-set outputs
    are formed only at ``record_steps``.

    Parameters
    ----------
    kernel : DenseKernel or FactoredKernel
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
    F0 = problem.f0.astype(np.float64)
    n, c = F0.shape
    wd = recipe.weight_decay
    jw0 = problem.jw0.reshape(n, c) if wd else np.zeros((n, c))
    resumed = momentum_buffer is not None and recipe.momentum > 0
    A0 = np.asarray(momentum_buffer, dtype=np.float64).reshape(n, c) if resumed else None
    image = _Image(kernel, n * c)
    coefs = _Coefficients((n, c), _SLOTS)
    lrs = recipe.learning_rates
    # state = (weights of c, φ, α, γ): coefficients, their kernel image, weight decay,
    # inherited buffer; the buffer has the same layout
    k = coefs.size
    size = k + image.dim + 2
    state = np.zeros(size)
    buffer = None
    if resumed:  # the inherited buffer is the basis vector buf_s
        buffer = np.zeros(size)
        buffer[-1] = 1.0

    def full_outputs(points):
        """F on every training sample at M states ``points`` (M, dim + 2): (M, N, C)."""
        alpha, gamma = points[:, -2, None, None], points[:, -1, None, None]
        F = F0 + image.outputs(points[:, :-2]).reshape(-1, n, c) + alpha * jw0
        return F + gamma * A0 if resumed else F

    def outputs(idx=None, rows=None):
        """F_t on the samples ``idx`` (all when None), shape (len, C)."""
        if idx is None:
            return full_outputs(state[None, k:])[0]
        phi, alpha, gamma = state[k:-2], state[-2], state[-1]
        F = F0[idx] + image.outputs_of_batch(phi, idx, rows) + alpha * jw0[idx]
        return F + gamma * A0[idx] if resumed else F

    wanted = set(int(s) for s in record_steps)
    recorded = {0: (F0.copy(), np.zeros((n, c)))} if 0 in wanted else {}
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(recipe.n_steps):
            update = np.zeros(size)
            if batches is None:
                g = loss_gradient(outputs(), problem.targets, problem.loss)
                update[coefs.hold(None, g)] = 1.0
                update[k:-2] = image.of_full(g.ravel())
            else:
                idx = np.asarray(batches[t]).reshape(-1)
                rows = image.batch(idx)
                g_b = loss_gradient(outputs(idx, rows), problem.targets[idx], problem.loss)
                update[coefs.hold(idx, g_b)] = 1.0
                update[k:-2] = image.of_batch(g_b, idx, rows)
            if wd:  # λw = λ(Jᵀc + (1 + α) w_s + γ buf_s)
                update += wd * state
                update[-2] += wd
            step, buffer = recipe.direction(update, buffer)
            state -= lrs[t] * step
            if coefs.full():
                coefs.rebase(state, buffer)
            if t + 1 in wanted:  # outputs formed at the end, in one pass over the rows
                recorded[t + 1] = (state[k:].copy(), coefs.combine(state))
            if not np.all(np.isfinite(state)):
                break
    steps = [s for s in recorded if s > 0]
    if steps:
        full = full_outputs(np.stack([recorded[s][0] for s in steps]))
        for s, F in zip(steps, full):
            recorded[s] = (F, recorded[s][1])
    buf = (None, 0.0, 0.0) if buffer is None else (
        coefs.combine(buffer), float(buffer[-2]), float(buffer[-1]))
    return Displacement(coefs.combine(state), float(state[-2]), float(state[-1]), *buf,
                        recorded)


def linear_displacement(kernel, problem, recipe, *, batches=None, record_steps=()):
    r"""Coefficients :math:`(c_T, \alpha_T)` of the weight displacement :math:`J^\top c_T + \alpha_T w_0`.

    The recursion runs on the state :math:`(c, \alpha, \phi)` with
    :math:`\phi` the kernel's image of :math:`c` — :math:`\Theta c` for a
    :class:`~sktt.gram.DenseKernel`, :math:`\tilde J^\top c` (D0-dim) for a
    :class:`~sktt.gram.FactoredKernel` — updated through the batch's rows only
    (``O(b·C·N·C)`` resp. ``O(b·C·D0)`` per step; :math:`c` is kept as weights
    of the batch gradients: :func:`stage_displacement`); the outputs are
    :math:`F = F_0 + \Theta c + \alpha\Phi_0`.

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
