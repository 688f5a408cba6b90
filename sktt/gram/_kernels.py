r"""Kernel operators: what the dynamics need from Θ, behind one small interface.

The function-space dynamics (:mod:`sktt.dynamics`) never index Θ directly. They
ask a kernel operator for

* :meth:`~DenseKernel.batch_product`: :math:`\sum_{k \in B} g_k\,\Theta[k, :]`
  per path — the outputs' change for batch gradients ``g`` on the batch rows —
  for the training rows *and* the held-out rows (the cross-kernel
  :math:`\Theta(\text{train}, \text{eval})`, which never enters a batch);
* :meth:`~DenseKernel.full_product`: the same for a gradient on every training row;
* :meth:`~DenseKernel.block`: :math:`\Theta_{BB}` for the curvature of a batch;
* :meth:`~DenseKernel.eigh` and :attr:`~DenseKernel.lambda_max`, only where a
  solver needs them (MSE closed form, spectra).

:class:`DenseKernel` keeps the (N·C × N·C) matrix. A factored kernel (projected
Jacobian rows :math:`\tilde J`, :math:`\Theta = \tilde J\tilde J^\top` never
formed) plugs in with the same methods. Rows are sample-major (``i·C + c``).
"""

import numpy as np
from scipy.sparse import csr_matrix

from ._spectrum import ntk_eigh

__all__ = ["DenseKernel", "SpectralKernel", "batch_rows"]


def batch_rows(idx, n_outputs):
    """Kernel rows ``i·C + c`` of the samples ``idx`` (any shape), flattened per leading axis."""
    idx = np.asarray(idx)
    return (idx[..., None] * n_outputs + np.arange(n_outputs)).reshape(*idx.shape[:-1], -1)


class DenseKernel:
    """Θ as a dense float64 matrix, optionally with the cross-kernel to held-out rows.

    Parameters
    ----------
    ntk : ndarray of shape (N·C, N·C)
        Θ on the training rows (symmetric PSD).
    n_outputs : int
        C.
    cross : ndarray of shape (N·C, N_eval·C), optional
        Θ(train, eval) = J_train J_evalᵀ.
    eigh : (ndarray, ndarray), optional
        Θ's eigendecomposition if already known (descending, as :func:`ntk_eigh`).
    """

    def __init__(self, ntk, n_outputs, cross=None, eigh=None):
        self.ntk = ntk
        self.n_outputs = int(n_outputs)
        self.cross = cross
        self._eigh = eigh

    @property
    def n_train_rows(self):
        return self.ntk.shape[0]

    @property
    def n_eval_rows(self):
        return 0 if self.cross is None else self.cross.shape[1]

    def _apply(self, left):
        """``left @ [Θ | Θ(train, eval)]``: (P, N·C) weights → (P, (N + N_eval)·C)."""
        out = np.asarray(left @ self.ntk)
        if self.cross is None:
            return out
        return np.concatenate([out, np.asarray(left @ self.cross)], axis=1)

    def full_product(self, grad):
        """Outputs' change for a gradient on every training row.

        Parameters
        ----------
        grad : ndarray of shape (P, N·C)

        Returns
        -------
        ndarray of shape (P, (N + N_eval)·C)
        """
        return self._apply(grad)

    def batch_product(self, grad_b, idx):
        """Outputs' change for batch gradients on the rows of the samples ``idx``.

        Parameters
        ----------
        grad_b : ndarray of shape (P, b, C)
        idx : ndarray of int, shape (P, b)

        Returns
        -------
        ndarray of shape (P, (N + N_eval)·C)
        """
        n_paths = idx.shape[0]
        rows = batch_rows(idx, self.n_outputs).reshape(-1)
        width = rows.size // n_paths
        # Σ_k g_k Θ[k, :] per path as a sparse-times-dense product: it reads each
        # needed row of Θ once, without copying the (P, b·C, N·C) gather (~3x faster).
        sparse = csr_matrix((np.asarray(grad_b).ravel(), rows,
                             np.arange(0, rows.size + 1, width)),
                            shape=(n_paths, self.n_train_rows))
        return self._apply(sparse)

    def block(self, idx):
        """Θ_BB for the samples ``idx`` (1-D); no copy for all samples in order."""
        n = self.n_train_rows // self.n_outputs
        if len(idx) == n and np.array_equal(idx, np.arange(n)):
            return self.ntk
        rows = batch_rows(np.asarray(idx), self.n_outputs)
        return self.ntk[np.ix_(rows, rows)]

    def eigh(self):
        """Eigenvalues (descending, clipped at 0) and eigenvectors of Θ, computed once."""
        if self._eigh is None:
            self._eigh = ntk_eigh(self.ntk)
        return self._eigh

    @property
    def lambda_max(self):
        """Largest eigenvalue of Θ."""
        return float(self.eigh()[0][0])

    def trace(self):
        return float(np.trace(self.ntk))


class SpectralKernel:
    """Θ known only through its spectrum: eigenvalues and the residual's projections.

    What :class:`~sktt.GramSpectrum` extrapolates to N samples. It supports the
    one dynamics that a spectrum determines: MSE gradient flow
    (:func:`sktt.dynamics.mse_spectral_loss`).

    Parameters
    ----------
    eigenvalues : ndarray of shape (M,)
    projections : ndarray of shape (M,)
        ``(v_kᵀ r_0)²`` of the initial residual.
    n_outputs : int
    """

    spectrum_only = True

    def __init__(self, eigenvalues, projections, n_outputs):
        self.eigenvalues = np.asarray(eigenvalues, dtype=np.float64)
        self.projections = np.asarray(projections, dtype=np.float64)
        self.n_outputs = int(n_outputs)

    @property
    def n_train_rows(self):
        return self.eigenvalues.size

    @property
    def lambda_max(self):
        return float(self.eigenvalues.max(initial=0.0))
