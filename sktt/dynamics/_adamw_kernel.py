r"""AdamW beyond the exact size: a frozen diagonal preconditioner in function space.

Frozen preconditioner
---------------------
AdamW's update is :math:`\Delta w = -\frac{\eta_t}{1-\beta_1^t} P_t m_t` with
:math:`P_t = \mathrm{diag}(1/(\sqrt{\hat v_t} + \epsilon))`. If :math:`P_t`
were a fixed :math:`P`, the recursion would be linear in the gradient and
would map to function space exactly, like heavy-ball SGD: with
:math:`A = J P m`,

.. math::

    A &\leftarrow \beta_1 A + (1-\beta_1)\,\Theta_P[:, B]\,\nabla_{F_B} L_B,
    \qquad \Theta_P = J P J^\top, \\
    F &\leftarrow F - \eta_t \lambda\,(F - F_0 + J w_0)
          - \frac{\eta_t}{1-\beta_1^t}\, A ,

(decoupled decay first, as torch; :math:`J w_0` is one JVP). :math:`\hat v` is
estimated at :math:`w_0` from the squared gradients of the first ``K``
minibatches (:math:`\hat v_{0,i} = \frac1K\sum_k g_{k,i}^2`, so it contains
the minibatch noise, as Adam's :math:`\hat v` does). At step 1 this is Adam
exactly when ``K = 1`` (both give :math:`\eta\,\mathrm{sign}(g)`).

Rescaling over time
-------------------
As the loss falls the gradients shrink, and Adam's :math:`\hat v_t` (a
bias-corrected average of past :math:`g_s^2`, nearly uniform over
:math:`s \le t` for :math:`t \ll 1/(1-\beta_2)`) shrinks with them, so
:math:`P_t` grows. The ansatz :math:`\hat v_{t,i} \approx \rho_{g,t}\,\hat
v_{0,i}` for every coordinate ``i`` of a parameter group ``g`` (a layer) keeps
the dynamics in function space: :math:`J_g P_t m = A_g/\sqrt{\rho_{g,t}}`
(for :math:`\sqrt{\hat v} \gg \epsilon`) with one accumulator :math:`A_g` per
group. :math:`\rho_{g,t}` is the group's mean over coordinates of the ratio
:math:`\hat v_{t,i}/\hat v_{0,i}`, the bias-corrected EMA of

.. math::

    \frac{\|P g_{s,g}\|^2}{\sum_{i\in g} \hat v_{0,i} P_i^2}, \qquad
    \|P g_{s,g}\|^2 = \nabla_{F_B} L_B^\top\, \Theta_{P^2,g}[B, B]\,
    \nabla_{F_B} L_B, \quad \Theta_{P^2,g} = J_g P^2 J_g^\top,

read at the simulated outputs (``rescale_kernels`` = :math:`\Theta_{P^2,g}`,
``rescale_refs`` = :math:`\sum_{i\in g} \hat v_{0,i} P_i^2 \approx D_g`).
Weighting every coordinate equally matters: the same ratio read from the plain
norms :math:`\|g_{s,g}\|^2` (``rescale_kernels`` = :math:`J_g J_g^\top`,
``rescale_refs`` = :math:`\sum_{i\in g}\hat v_{0,i}`) is dominated by the
few large-gradient coordinates, whose gradients fall fastest, and overshot
(measured below). ``rescale="none"`` keeps :math:`\rho = 1`.

Cost
----
Per step ``O(G·P·b·C·N·C)`` (G groups, P paths), memory ``2·G`` kernels of
``(N·C)²``. What the gradients layer must provide: :math:`\hat v_0` (K
ordinary minibatch backward passes at :math:`w_0`), then per group the rows
:math:`J_g P^{1/2}` and :math:`J_g P` (rows scaled per column before any
projection, so they sketch like plain rows) or their Grams, and :math:`J w_0`.

Other candidates measured
-------------------------
* exact AdamW on count-sketched rows :math:`J S` (:func:`simulate_adamw` on
  ``J S``): Adam is not rotation invariant; a sketch coordinate pools
  ~``D/D0`` weights whose step is normalised together, so each weight moves by
  ~η with a sign weakly correlated with its own gradient: far too slow.
  Scaling η by :math:`\sqrt{D/D_0}` recovers part of it, not enough.
* the sign-gradient kernel (Malladi et al. 2023) describes Adam only while
  :math:`\hat v \approx g^2` (the first steps); a batch's sign does not
  factor through a kernel, and its early-phase content is step 1 of the
  frozen preconditioner above. Not implemented.

Measured
--------
``benchmarks/bench_adamw_modes.py`` (demo convnet, D = 37 957, and a tanh MLP,
D = 25 477; N = 100, C = 5, batch 25, T = 150, wd 0.01, lr ∈ {1e-4, 3e-4,
1e-3}, same batch order as the real run; 18 (task, lr, ε) cases, relative
loss-T_ε error, ε ∈ {0.01, 0.03, 0.1}; |dL| = mean absolute loss-curve error):

==========================  ============  ============  ======
mode                        vs real       vs exact      |dL| vs
                            median / p90  median / p90  exact
==========================  ============  ============  ======
exact (parameter space)     0.016 / 0.34  0 / 0         0
frozen P, group rescale     0.016 / 0.34  0.007 / 0.021 0.017
frozen P, one group         0.018 / 0.34  0.008 / 0.030 0.023
frozen P, no rescale        0.022 / 0.41  0.012 / 0.055 0.075
frozen P, plain-norm ρ      0.026 / 0.27  0.015 / 0.084 0.066
sketch D0=8192, η·√(D/D0)   0.039 / 0.34  0.010 / 0.070 0.087
sketch D0=8192              0.008 / 0.50  0.030 / 0.17  0.19
sketch D0=2048              0.050 / 0.57  0.048 / 0.29  0.42
==========================  ============  ============  ======

The frozen preconditioner with per-layer coordinate-uniform rescaling is as
close to the real run as the exact linearised AdamW; what remains (p90 0.34)
is the linearisation itself (tanh MLP at lr 1e-3 trains faster than its
linearisation, as with SGD). With T = 150 and small lr many curves are still
falling at T, so T_ε is near T for small ε; the curve errors are the sharper
figure.
"""

import dataclasses

import numpy as np

from ..utils._threads import single_threaded_blas
from ._adamw import adam_step_size, check_adamw_params
from ._curves import CurveRecorder
from ._losses import loss_value_and_gradient

__all__ = ["PreconditionedKernels", "RESCALE_MODES", "adamw_kernels", "simulate_adamw_kernel"]

RESCALE_MODES = ("none", "group")


def _as_list(kernels):
    if isinstance(kernels, np.ndarray) and kernels.ndim == 2:
        return [kernels]
    return list(kernels)


@dataclasses.dataclass(frozen=True, eq=False)
class PreconditionedKernels:
    r"""The kernels of AdamW's approximate mode, the operand :func:`sktt.dynamics.simulate` takes.

    Attributes
    ----------
    precond : list of ndarray of shape (N·C, N·C)
        :math:`J_g P J_g^\top` per parameter group g.
    square : list of ndarray of shape (N·C, N·C)
        :math:`J_g P^2 J_g^\top` per group (the rescaling's tracked norm).
    refs : ndarray of shape (G,)
        :math:`\sum_{i\in g} \hat v_{0,i} P_i^2` per group.
    group_names : list of str
        One label per group (for messages).
    """

    precond: list
    square: list
    refs: np.ndarray
    group_names: list = None

    def add(self, other):
        """The groups of ``self`` then those of ``other`` (built block by block)."""
        return PreconditionedKernels(self.precond + other.precond, self.square + other.square,
                                     np.concatenate([self.refs, other.refs]),
                                     (self.group_names or []) + (other.group_names or []))


def adamw_kernels(rows, v0, groups=None, *, eps=1e-8):
    r"""Inputs of :func:`simulate_adamw_kernel` from Jacobian rows and :math:`\hat v_0`.

    Parameters
    ----------
    rows : ndarray of shape (N·C, D)
        Exact Jacobian rows of the trainable weights.
    v0 : ndarray of shape (D,)
        Mean squared minibatch gradient at :math:`w_0` (K batches).
    groups : list of slice, optional
        Column ranges of the parameter groups (layers); None = one group.
    eps : float, default=1e-8
        Adam's ε: :math:`P = 1/(\sqrt{\hat v_0} + \epsilon)`.

    Returns
    -------
    precond_kernels, rescale_kernels : list of ndarray of shape (N·C, N·C)
        :math:`J_g P J_g^\top` and :math:`J_g P^2 J_g^\top` per group.
    rescale_refs : ndarray of shape (G,)
        :math:`\sum_{i\in g} \hat v_{0,i} P_i^2`.
    """
    rows = np.asarray(rows, dtype=np.float64)
    v0 = np.asarray(v0, dtype=np.float64).reshape(-1)
    if v0.shape[0] != rows.shape[1] or np.any(v0 < 0) or not np.all(np.isfinite(v0)):
        raise ValueError(f"v0 has shape {v0.shape} for rows of shape {rows.shape}; accepted: "
                         "one finite squared-gradient mean >= 0 per column.")
    P = 1.0 / (np.sqrt(v0) + eps)
    groups = [slice(0, rows.shape[1])] if groups is None else list(groups)
    precond, square, refs = [], [], []
    for s in groups:
        half = rows[:, s] * np.sqrt(P[s])  # J_g P^{1/2}: its Gram is J_g P J_gᵀ
        full = rows[:, s] * P[s]
        precond.append(half @ half.T)
        square.append(full @ full.T)
        refs.append(float(np.sum(v0[s] * P[s] ** 2)))
    return precond, square, np.array(refs)


@single_threaded_blas
def simulate_adamw_kernel(precond_kernels, F0, targets, *, loss, lrs, n_steps=None,
                          betas=(0.9, 0.999), weight_decay=0.0, jw0=None, batches=None,
                          labels=None, rescale="none", rescale_kernels=None, rescale_refs=None):
    r"""Simulate AdamW with a frozen diagonal preconditioner in function space.

    Parameters
    ----------
    precond_kernels : ndarray of shape (N·C, N·C) or list of them
        :math:`\Theta_{P,g} = J_g P J_g^\top` per parameter group g (one array = one group).
    F0 : ndarray of shape (N, C)
    targets : ndarray
        Labels (N,) for cross-entropy, targets (N, C) for MSE.
    loss : {"cross_entropy", "mse"}
    lrs : array-like of shape (>= n_steps,)
        Per-step learning rates (torch's scheduler values).
    n_steps : int, optional
        None means ``len(lrs)``.
    betas : tuple of float, default=(0.9, 0.999)
    weight_decay : float, default=0.0
        Decoupled decay; needs ``jw0`` when > 0.
    jw0 : ndarray of shape (N·C,) or (N, C), optional
        :math:`J w_0` (one JVP of the trainable weights).
    batches : list of ndarray, optional
        Output of :func:`~sktt.dynamics.check_batches`; None = full batch.
    labels : ndarray of shape (N,), optional
    rescale : {"none", "group"}, default="none"
        ``"group"``: rescale each group's preconditioner by
        :math:`1/\sqrt{\rho_{g,t}}` (module docstring; measured best); needs
        ``rescale_kernels`` and ``rescale_refs``.
    rescale_kernels : list of ndarray of shape (N·C, N·C), optional
        Per group, the kernel whose quadratic form at the batch gradient is the
        tracked squared norm: :math:`\Theta_{P^2,g} = J_g P^2 J_g^\top` (measured
        best; :func:`adamw_kernels` builds it).
    rescale_refs : array-like of shape (G,), optional
        Per group, the same norm's value at :math:`\hat v_0`:
        :math:`\sum_{i\in g} \hat v_{0,i} P_i^2`.

    Returns
    -------
    dict
        ``"loss"``, ``"error"`` (or None) of shape (P, T + 1), ``"diverged_at"`` (P,).
    """
    kp = _as_list(precond_kernels)
    F0 = np.asarray(F0, dtype=np.float64)
    n, c = F0.shape
    if n_steps is None:
        n_steps = len(np.asarray(lrs).reshape(-1))
    beta1, beta2, _, weight_decay, lrs = check_adamw_params(
        betas=betas, weight_decay=weight_decay, lrs=lrs, n_steps=n_steps)
    if rescale not in RESCALE_MODES:
        raise ValueError(f"rescale={rescale!r}; accepted: {RESCALE_MODES}.")
    if rescale == "group":
        if rescale_kernels is None or rescale_refs is None:
            raise ValueError("rescale='group' needs rescale_kernels and rescale_refs.")
        rescale_kernels = _as_list(rescale_kernels)
        rescale_refs = np.asarray(rescale_refs, dtype=np.float64).reshape(-1)
        if len(rescale_kernels) != len(kp) or rescale_refs.size != len(kp):
            raise ValueError(f"{len(kp)} precond_kernels but {len(rescale_kernels)} rescale_kernels and "
                             f"{rescale_refs.size} rescale_refs; accepted: one of each per group.")
    if weight_decay > 0 and jw0 is None:
        raise ValueError("weight_decay > 0 needs jw0 = J·w0 (decoupled decay acts on w, not "
                         "on w - w0).")
    jw0 = None if jw0 is None else np.asarray(jw0, dtype=np.float64).reshape(n, c)

    n_groups = len(kp)
    n_paths = 1 if batches is None else batches[0].shape[0]
    F = np.repeat(F0[None], n_paths, axis=0)
    A = np.zeros((n_groups, n_paths, n * c))
    ema = np.zeros((n_groups, n_paths))
    curves = CurveRecorder(n_paths, n_steps, targets, loss, labels)
    out_offsets = np.arange(c)

    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for t in range(n_steps + 1):
            grad = curves.record(t, F)
            if (t > 0 and curves.all_diverged(t)) or t == n_steps:
                break
            lr, step = lrs[t], t + 1
            scale = np.ones((n_groups, n_paths))
            for g in range(n_groups):
                if batches is None:
                    gvec = grad.reshape(n_paths, -1)
                    upd = gvec @ kp[g]
                    if rescale == "group":
                        q = np.einsum("pi,pi->p", gvec @ rescale_kernels[g], gvec)
                else:
                    idx = batches[t]
                    upd = np.empty((n_paths, n * c))
                    q = np.empty(n_paths)
                    for p in range(n_paths):
                        gb = loss_value_and_gradient(F[p, idx[p]], targets[idx[p]], loss)[1]
                        r = (idx[p][:, None] * c + out_offsets).reshape(-1)
                        gb = gb.reshape(-1)
                        upd[p] = gb @ kp[g][r]
                        if rescale == "group":
                            q[p] = gb @ rescale_kernels[g][np.ix_(r, r)] @ gb
                A[g] += (1.0 - beta1) * (upd - A[g])
                # a group with no gradient at w0 (ref 0: a parameter the forward never
                # uses) has a zero kernel and A_g = 0; its ratio 0/0 would make F NaN
                if rescale == "group" and rescale_refs[g] > 0:
                    ema[g] = beta2 * ema[g] + (1.0 - beta2) * q
                    rho = ema[g] / (1.0 - beta2**step) / rescale_refs[g]
                    scale[g] = 1.0 / np.sqrt(rho)
            if weight_decay != 0:
                F -= lr * weight_decay * (F - F0 + jw0)
            step_size = adam_step_size(lr, beta1, step)  # as torch (._adamw)
            F -= step_size * np.einsum("gp,gpi->pi", scale, A).reshape(n_paths, n, c)
    return curves.result()
