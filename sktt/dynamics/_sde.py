r"""The paper's SGD diffusion in function space, integrated with Euler–Maruyama.

Zancato et al. (2020, Prop. 1 and §4) model minibatch SGD on the linearised
model as the SDE

.. math::

    dF_t = -\tilde\eta\, \Theta\, \nabla_F L(F_t)\, dt
           + \frac{\tilde\eta}{\sqrt{B}}\, J\, \Sigma_t^{1/2}\, dn_t,
    \qquad \tilde\eta = \frac{\eta}{1 - m},

with ``t`` in optimiser steps, :math:`\Sigma_t` the covariance of the
per-sample parameter gradients :math:`\nabla_w \ell_i = J_i^\top g_i`
(:math:`g_i = \nabla_{F_i}\ell_i`, :math:`\ell_i` the loss of sample i, so that
the minibatch gradient is their mean) and :math:`n_t` a standard Wiener
process. The noise term has covariance :math:`(\tilde\eta^2/B)\, J\Sigma_t J^\top`
per unit time: an ``(N·C) × (N·C)`` matrix, represented by a factor
:math:`G` with :math:`G G^\top = J \Sigma_0 J^\top` computed once.

Approximations, in the order they enter
----------------------------------------
1. **Linearisation** — the kernel Θ is fixed at the pre-trained weights (as in
   every sktt solver).
2. **Diffusion limit** — the minibatch noise is replaced by Gaussian noise with
   the same covariance; its higher moments and its correlation between the
   batches of one epoch (sampling without replacement) are ignored.
3. **Momentum** enters only through η̃ = η·γ (γ = 1/(1−m) for plain heavy
   ball; :meth:`TrainingRecipe.effective_learning_rates`), in the drift and in
   the noise (the paper's choice); the heavy-ball warm-up of ~1/(1−m) steps is
   missed (the ``"discrete"`` solver has it). A learning-rate schedule enters
   as η̃_t per step, weight decay as the linear drift λ(F − F0 + Φ0).
4. **Σ at t = 0** — :math:`\Sigma` is estimated once, at the pre-trained
   outputs :math:`F_0`, and rescaled over time by
   :math:`r_t = \|\nabla_F L(F_t)\| / \|\nabla_F L(F_0)\|` (per path): per-sample
   gradients shrink like the residuals, so the noise *amplitude*
   :math:`\Sigma_t^{1/2}` is scaled by :math:`r_t` (covariance by
   :math:`r_t^2`; a per-sample gradient is :math:`J_i^\top g_i`, linear in the
   residual :math:`g_i`).
5. **Diagonal Σ** (the paper's; the estimator's ``sde_noise="diagonal"``) — :math:`\Sigma_0` is
   replaced by its diagonal :math:`\operatorname{diag}(s)`,
   :math:`s_d = \operatorname{Var}_i[(\nabla_w \ell_i)_d]`, computed in the space
   of the available Jacobian rows: the exact parameters (D-dimensional) or the
   random projection (D0-dimensional; the diagonal of the projected covariance,
   as the paper does). Then :math:`J\Sigma_0J^\top \approx R\,\operatorname{diag}(s)\,R^\top`
   with ``R`` the rows. This drops the correlations between parameters, which
   per-sample gradients have in abundance: on the demo convnet the diagonal's
   function-space noise had 1/27 of the full one's trace (docs/sgd.rst).
   ``sde_noise="full"`` keeps the whole covariance instead;
   it needs only Θ: with :math:`u_i = \Theta_{:,i} g_i` (the function-space
   effect of sample i's gradient) and :math:`\bar u = \Theta\nabla_F L`,
   :math:`J\Sigma_0J^\top = \frac1N \sum_i (u_i-\bar u)(u_i-\bar u)^\top`
   exactly, so :math:`G = [u_i - \bar u]_i / \sqrt N` (``N·C × N``).
6. **Sampling without replacement** — the paper's factor 1/B is the covariance
   of a mean of B gradients drawn *with* replacement. A DataLoader draws
   without replacement, for which the covariance of the batch mean is
   :math:`\frac{\Sigma}{B}\frac{N-B}{N-1}`; this finite-population factor is
   applied, so that ``B = N`` is noiseless and the SDE reduces to the ODE.

Time step
---------
Euler–Maruyama with ``dt = 1/n_substeps`` optimiser steps:

.. math::

    F \leftarrow F - \tilde\eta\,\Theta\nabla_F L(F)\,dt
      + \frac{\tilde\eta}{\sqrt B}\sqrt{\tfrac{N-B}{N-1}}\; r_t\, G\,\xi\,\sqrt{dt},
    \qquad \xi \sim \mathcal N(0, I_R),

with :math:`r_t` and :math:`\nabla_F L` taken at the start of each substep
(Itô). :func:`sde_substeps` chooses ``n_substeps``:

* m = 0: ``dt = 1``. One Euler–Maruyama step per optimiser step; its drift is
  then exactly the linearised model's gradient-descent step, so the only
  approximation left is the noise.
* m > 0: one Euler step of size η̃ = η/(1−m) diverges as soon as
  :math:`\rho = \tilde\eta\,\lambda_{\max}(\Theta)\,h > 2`, far below the
  heavy-ball stability edge (at m = 0.9, η̃ = 10 η). ``n_substeps = ceil(ρ)``
  keeps ``ρ·dt ≤ 1``, where explicit Euler is stable and does not oscillate;
  ``h`` bounds the curvature of the mean loss in F (1/(2N) for cross-entropy,
  the largest eigenvalue of diag(p) − ppᵀ being ≤ 1/2; 2/(N·C) for MSE).

The state is recorded after every whole optimiser step. Each substep costs one
``(P, N·C) × (N·C, N·C)`` product for the drift and one ``(P, R) × (R, N·C)``
for the noise.
"""

import numpy as np

from ..utils._threads import single_threaded_blas
from ._losses import loss_gradient, loss_value, mse_curvature, train_error

__all__ = ["NOISE_MODELS", "per_sample_gradients", "diagonal_noise_factor",
           "full_noise_factor", "sde_substeps", "simulate_sde"]

NOISE_MODELS = ("diagonal", "full")


def per_sample_gradients(F, targets, loss):
    r"""Per-sample loss gradients :math:`g_i = \nabla_{F_i}\ell_i`, shape ``(N, C)``.

    :math:`\ell_i` is the loss of sample i in the units whose mean over a batch
    is the batch loss (for MSE, the mean over the C outputs), so
    ``g = N · ∇_F L``.
    """
    return F.shape[-2] * loss_gradient(F, targets, loss)


def _factor_from_gram(gram, rtol=1e-12):
    """A factor ``G`` with ``G Gᵀ = gram`` (PSD), keeping the eigenvalues above ``rtol·max``."""
    w, v = np.linalg.eigh(gram)
    keep = w > rtol * max(w[-1], 0.0)
    if not keep.any():
        return np.zeros((gram.shape[0], 1))
    return v[:, keep] * np.sqrt(w[keep])


def diagonal_noise_factor(rows, F0, targets, loss):
    r"""Factor of :math:`R\,\operatorname{diag}(s)\,R^\top`: the paper's diagonal Σ at t = 0.

    Parameters
    ----------
    rows : ndarray of shape (N·C, D')
        Jacobian rows, sample-major (row ``i·C + c``): exact (D' = D) or
        randomly projected (D' = D0).
    F0 : ndarray of shape (N, C)
    targets : ndarray
    loss : {"cross_entropy", "mse"}

    Returns
    -------
    G : ndarray of shape (N·C, R)
        ``G Gᵀ = R diag(s) Rᵀ`` with
        :math:`s = \operatorname{Var}_i[R_i^\top g_i]` (population variance over
        the N samples) and :math:`R_i` the C rows of sample i. ``R = D'`` when
        ``D' <= N·C`` (the scaled rows themselves), otherwise the eigen-factor of
        the ``N·C × N·C`` product, truncated to its numerically non-zero part.
    """
    n, c = F0.shape
    g = per_sample_gradients(F0, targets, loss)  # (N, C)
    grads = np.einsum("nc,ncd->nd", g, rows.reshape(n, c, -1))  # (N, D') per-sample ∇_w ℓ_i
    s = grads.var(axis=0)
    scaled = rows * np.sqrt(s)
    if scaled.shape[1] <= scaled.shape[0]:
        return scaled
    return _factor_from_gram(scaled @ scaled.T)


def full_noise_factor(ntk, F0, targets, loss):
    r"""Factor of :math:`J\Sigma_0J^\top` with the full per-sample gradient covariance Σ at t = 0.

    Returns
    -------
    G : ndarray of shape (N·C, N)
        Column i is :math:`(u_i - \bar u)/\sqrt N`, :math:`u_i = \Theta_{:, i} g_i`
        (the columns of sample i's C outputs times its per-sample gradient), so
        :math:`G G^\top = \frac1N\sum_i (u_i-\bar u)(u_i-\bar u)^\top = J\Sigma_0 J^\top`.
    """
    n, c = F0.shape
    g = per_sample_gradients(F0, targets, loss)  # (N, C)
    u = np.einsum("mnc,nc->mn", ntk.reshape(n * c, n, c), g)  # (N·C, N)
    u -= u.mean(axis=1, keepdims=True)
    return u / np.sqrt(n)


def sde_substeps(recipe, lambda_max, n_samples, n_outputs, loss):
    """Euler–Maruyama substeps per optimiser step (see the module docstring).

    1 without momentum; otherwise ``max(1, ceil(ρ))`` with
    ``ρ = η̃ · λ_max(Θ) · h`` the flow's stiffness (η̃ at the largest scheduled rate).
    """
    if recipe.momentum == 0:
        return 1
    h = 1.0 / (2 * n_samples) if loss == "cross_entropy" else mse_curvature(n_samples * n_outputs)
    rho = recipe.effective_lr * max(float(lambda_max), 0.0) * h
    return max(1, int(np.ceil(rho - 1e-12)))


@single_threaded_blas
def simulate_sde(kernel, problem, recipe, *, batch_size, noise_factor, seeds, n_substeps=1,
                 return_final=False):
    """Euler–Maruyama paths of the paper's SDE (see the module docstring).

    Parameters
    ----------
    kernel : DenseKernel
    problem : LinearizedProblem
        Held-out rows are not supported: the noise factor covers the training rows.
    recipe : TrainingRecipe
        Per-step effective rates η̃_t (drift and noise) and weight decay (a
        linear drift term λ(F − F0 + Φ0)).
    batch_size : int
        B, in [1, N]; B = N gives no noise.
    noise_factor : ndarray of shape (N·C, R)
        ``G`` with ``G Gᵀ = J Σ_0 Jᵀ`` (:func:`diagonal_noise_factor` or
        :func:`full_noise_factor`).
    seeds : sequence of int
        One seed per path (the number of paths): path k draws its noise from
        ``numpy.random.default_rng(seeds[k])``, independently of the other paths.
    n_substeps : int, default=1
        Euler–Maruyama steps per optimiser step (dt = 1/n_substeps).
    return_final : bool, default=False
        Also return the outputs after the last step, ``"final"`` of shape (P, N, C).

    Returns
    -------
    dict
        ``"loss"`` and ``"error"`` (or None) of shape (P, n_steps + 1), and
        ``"diverged_at"`` (P,) — the first step with non-finite outputs, or -1.
    """
    n, c = problem.f0.shape
    targets, loss, labels = problem.targets, problem.loss, problem.labels
    n_steps = recipe.n_steps
    n_paths = len(seeds)
    rates = recipe.effective_learning_rates()
    wd = recipe.weight_decay
    anchor = None if wd == 0 else (problem.jw0 - problem.f0).reshape(1, -1)
    dt = 1.0 / n_substeps
    # Covariance of a without-replacement batch mean: Σ/B · (N−B)/(N−1).
    fpc = (n - batch_size) / (n - 1) if n > 1 else 0.0
    noise_scale = np.sqrt(max(fpc, 0.0) * dt) / np.sqrt(batch_size)
    rngs = [np.random.default_rng(s) for s in seeds]
    rank = noise_factor.shape[1]
    F = np.repeat(problem.f0[None].astype(np.float64), n_paths, axis=0).reshape(n_paths, n * c)
    grad0_norm = np.linalg.norm(loss_gradient(problem.f0, targets, loss))
    losses = np.full((n_paths, n_steps + 1), np.nan)
    errors = None if labels is None else np.full((n_paths, n_steps + 1), np.nan)
    diverged_at = np.full(n_paths, -1)

    def record(t):
        Fr = F.reshape(n_paths, n, c)
        losses[:, t] = loss_value(Fr, targets, loss)
        if errors is not None:
            errors[:, t] = train_error(Fr, labels)

    record(0)
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(n_steps):
            lr_eff = rates[t]
            for _ in range(n_substeps):
                grad = loss_gradient(F.reshape(n_paths, n, c), targets, loss).reshape(n_paths, -1)
                drift = kernel.full_product(grad)
                if anchor is not None:
                    drift += wd * (F + anchor)
                F -= (lr_eff * dt) * drift
                if noise_scale > 0 and grad0_norm > 0:
                    ratio = np.linalg.norm(grad, axis=1) / grad0_norm  # r_t per path
                    xi = np.stack([r.standard_normal(rank) for r in rngs])  # (P, R)
                    F += (lr_eff * noise_scale * ratio)[:, None] * (xi @ noise_factor.T)
            record(t + 1)
            bad = ~np.isfinite(losses[:, t + 1]) & (diverged_at < 0)
            if bad.any():
                diverged_at[bad] = t + 1
                if np.all(diverged_at >= 0):
                    losses[:, t + 1:] = np.inf
                    break
    out = {"loss": losses, "error": errors, "diverged_at": diverged_at}
    if return_final:
        out["final"] = F.reshape(n_paths, n, c).copy()
    return out
