"""Eigendecomposition of the empirical NTK with honest handling of round-off.

Θ = J Jᵀ is positive semi-definite in exact arithmetic. Floating point gives
eigenvalues of order ``eps · λ_max · n`` with either sign in its null space
(duplicated samples, N·C > D). Those are clipped to 0 silently; anything more
negative than ``neg_tol · λ_max`` means Θ is not a Gram matrix (a bug or a
corrupted input) and raises. In between, clipping happens with a warning.
"""

import warnings

import numpy as np
import scipy.linalg

from ..exceptions import SpectrumWarning

__all__ = ["check_ntk", "ntk_eigh"]


# bytes of the row blocks check_ntk works on: no temporary of Θ's size (a whole-matrix
# check held three more copies of Θ at once, 3x max_memory for a Θ near the budget)
_CHECK_BLOCK_BYTES = 4 * 1024**2


def check_ntk(ntk, *, name="ntk", copy=True):
    """Validate a kernel matrix: square, finite, symmetric to round-off. Returns float64.

    The result is symmetrised, ``0.5 (Θ + Θᵀ)``. Checks and symmetrisation run on
    blocks of rows, so the only array of Θ's size is the result.

    Parameters
    ----------
    ntk : array-like of shape (n, n)
    name : str, default="ntk"
        The parameter named in errors.
    copy : bool, default=True
        False: symmetrise a float64 ``ntk`` in place (no second Θ; for a kernel the
        caller has just formed and owns), True: leave ``ntk`` as it is.

    Returns
    -------
    ndarray of shape (n, n), float64
    """
    ntk = np.array(ntk, dtype=np.float64) if copy else np.asarray(ntk, dtype=np.float64)
    if ntk.ndim != 2 or ntk.shape[0] != ntk.shape[1]:
        raise ValueError(f"{name} must be a square 2-D matrix; got shape {ntk.shape}.")
    n = ntk.shape[0]
    step = max(1, _CHECK_BLOCK_BYTES // (8 * max(n, 1)))
    scale, asym = np.finfo(float).tiny, 0.0
    for s in range(0, n, step):
        block = ntk[s:s + step]
        if not np.all(np.isfinite(block)):
            raise ValueError(f"{name} contains NaN or inf; the model's Jacobian is not finite "
                             "at w0. Check the model's outputs and parameters for NaN/inf.")
        scale = max(scale, np.abs(block).max())
        asym = max(asym, np.abs(block - ntk[:, s:s + step].T).max())
    if asym / scale > 1e-8:
        raise ValueError(f"{name} is not symmetric (max relative asymmetry {asym / scale:.2e}); "
                         "accepted: a symmetric positive semi-definite kernel matrix.")
    for s in range(0, n, step):  # rows s:e from column s on, and their mirror image
        e = min(s + step, n)
        sym = 0.5 * (ntk[s:e, s:] + ntk[s:, s:e].T)  # the same bits as 0.5 * (Θ + Θᵀ)
        ntk[s:e, s:] = sym
        ntk[s:, s:e] = sym.T
    return ntk


def ntk_eigh(ntk, *, warn_tol=1e-9, neg_tol=1e-6):
    """Eigenvalues (descending) and eigenvectors of a PSD kernel, negatives clipped.

    Parameters
    ----------
    ntk : ndarray of shape (n, n)
    warn_tol, neg_tol : float
        Relative to λ_max: below ``-warn_tol·λ_max`` a :class:`SpectrumWarning` is
        emitted; below ``-neg_tol·λ_max`` a ``ValueError`` is raised.

    Returns
    -------
    eigenvalues : ndarray of shape (n,)
        Non-negative, descending.
    eigenvectors : ndarray of shape (n, n)
        Column ``k`` belongs to ``eigenvalues[k]``.
    """
    ntk = check_ntk(ntk)
    w, v = scipy.linalg.eigh(ntk)
    w, v = w[::-1].copy(), v[:, ::-1].copy()
    lam_max = max(w[0], 0.0)
    most_negative = w.min()
    if most_negative < -neg_tol * lam_max:
        raise ValueError(f"Θ has a negative eigenvalue {most_negative:.3e} (λ_max = {lam_max:.3e}), "
                         "beyond round-off; a kernel J Jᵀ must be positive semi-definite.")
    if most_negative < -warn_tol * lam_max:
        warnings.warn(f"clipped negative eigenvalues of Θ down to {most_negative:.3e} "
                      f"(λ_max = {lam_max:.3e}) to 0; Θ is ill-conditioned or rank-deficient.",
                      SpectrumWarning, stacklevel=2)
    np.clip(w, 0.0, None, out=w)
    return w, v
