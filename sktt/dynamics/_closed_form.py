r"""Closed-form gradient flow for the squared error.

With :math:`\nabla_F L = 2(F - Y)/(NC)` the flow
:math:`\dot F = -\tilde\eta\,\Theta\,\nabla_F L` is linear in the residual
:math:`r = F - Y`: with :math:`\Theta = V \Lambda V^\top` and
:math:`\kappa = 2\tilde\eta/(NC)`,

.. math::

    r_t = V e^{-\kappa\Lambda t} V^\top r_0, \qquad
    L_t = \frac{1}{NC} \sum_k (v_k^\top r_0)^2 e^{-2\kappa\lambda_k t}.

``t`` counts optimiser steps, so ``κ λ`` is a per-step rate. With a learning-rate
schedule :math:`\kappa t` becomes :math:`\frac{2}{NC}S_t`, :math:`S_t` the
accumulated effective rate (:func:`flow_times`).
"""

import numpy as np

from ._losses import mse_curvature

__all__ = ["flow_times", "mse_closed_form", "mse_spectral_loss"]


def flow_times(lr_eff, n_steps):
    r"""Accumulated rate :math:`S_t = \sum_{s<t} \tilde\eta_s` at steps ``0..n_steps``.

    The linear flow with a time-varying rate is the constant-rate flow run for
    time :math:`S_t`: ``lr_eff`` is a scalar (constant rate) or the per-step
    rates of shape (n_steps,).
    """
    rates = np.broadcast_to(np.asarray(lr_eff, dtype=np.float64), (n_steps,))
    return np.concatenate([[0.0], np.cumsum(rates)])


def mse_spectral_loss(eigenvalues, projections, *, n_rows, lr_eff, n_steps, block=4096):
    """Loss curve ``L_t = Σ_k p_k exp(−2κ_kS_t) / n_rows`` at steps ``0..n_steps``.

    The same formula as :func:`mse_closed_form`, from the spectrum alone:
    ``projections[k] = (v_kᵀ r_0)²``. Used where the eigenvectors are not known
    (the extrapolated spectrum of :class:`~sktt.GramSpectrum`).

    Parameters
    ----------
    eigenvalues, projections : ndarray of shape (M,)
    n_rows : int
        N·C, the number of residual entries (sets the curvature and the mean).
    lr_eff : float or ndarray of shape (n_steps,)
        η̃ = η·γ (constant, or per step).
    n_steps : int
    block : int, default=4096
        Modes per block, so memory stays at ``(n_steps + 1) × block`` floats.
    """
    eigenvalues = np.asarray(eigenvalues, dtype=np.float64)
    projections = np.asarray(projections, dtype=np.float64)
    times = flow_times(lr_eff, n_steps)
    rate = 2.0 * mse_curvature(n_rows)  # the loss is squared: twice the residual rate
    loss = np.zeros(n_steps + 1)
    for start in range(0, eigenvalues.size, block):
        lam = eigenvalues[start:start + block]
        loss += np.exp(-rate * np.outer(times, lam)) @ projections[start:start + block]
    return loss / n_rows


def mse_closed_form(eigenvalues, eigenvectors, F0, targets, *, lr_eff, n_steps, labels=None):
    """Loss (and error) curves of MSE gradient flow at steps ``0..n_steps``.

    Parameters
    ----------
    eigenvalues : ndarray of shape (N·C,)
    eigenvectors : ndarray of shape (N·C, N·C)
    F0 : ndarray of shape (N, C)
    targets : ndarray of shape (N, C)
    lr_eff : float or ndarray of shape (n_steps,)
        η̃ = η·γ (constant, or per step).
    n_steps : int
    labels : ndarray of shape (N,), optional
        If given, the train error curve is computed too (needs F at every step).

    Returns
    -------
    dict with ``"loss"`` of shape (n_steps + 1,) and ``"error"`` (or None).
    """
    n, c = F0.shape
    proj = eigenvectors.T @ (F0 - targets).ravel()
    loss = mse_spectral_loss(eigenvalues, proj**2, n_rows=n * c, lr_eff=lr_eff, n_steps=n_steps)
    error = None
    if labels is not None:
        times = flow_times(lr_eff, n_steps)
        decay = np.exp(-mse_curvature(n * c) * np.outer(times, eigenvalues))  # (T+1, N·C)
        F = (decay * proj) @ eigenvectors.T + targets.ravel()
        error = 100.0 * (np.argmax(F.reshape(-1, n, c), axis=-1) != labels).mean(axis=-1)
    return {"loss": loss, "error": error}
