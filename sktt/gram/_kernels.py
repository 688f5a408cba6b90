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

:class:`DenseKernel` keeps the (N·C × N·C) matrix. :class:`FactoredKernel` keeps
the projected Jacobian rows :math:`\tilde J` (N·C × D0, float32 storage) and
never forms :math:`\Theta = \tilde J\tilde J^\top`: it has the same methods
(each a product through :math:`\tilde J^\top` then :math:`\tilde J`,
accumulated in float64), and the discrete solver runs it in the D0-dim sketch
space instead (:mod:`sktt.dynamics._factored`). Rows are sample-major (``i·C + c``).

λ_max
-----
No solver but the MSE closed form and the spectra needs the eigendecomposition,
so :attr:`~DenseKernel.lambda_max` runs Lanczos (``scipy.sparse.linalg.eigsh``)
on the kernel operator unless the decomposition is already known. For the
factored kernel it runs on :math:`\tilde J^\top\tilde J` (D0 × D0, the same
non-zero spectrum) through two products with the rows per iteration.
"""

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.linalg import LinearOperator, eigsh

from ._spectrum import check_ntk, ntk_eigh

__all__ = ["DenseKernel", "FactoredKernel", "SpectralKernel", "batch_rows", "top_eigenvalue"]

# below this size a dense symmetric eigensolver is faster and exact
_LANCZOS_MIN_DIM = 64
# bytes of one float64 copy of float32 rows in a product with few vectors: small enough to
# stay in cache between the copy and its product, and one buffer reused (fresh 64 MiB
# copies took 0.6-0.85 s for a product of 1-2 vectors with N·C = 200 000 rows of
# D0 = 1024, 4 MiB ones 0.25-0.28 s; an exact pass of 4 states 0.7 s instead of 0.45 s)
_COPY_BYTES = 4 * 1024**2


def top_eigenvalue(matvec, dim, *, tol=1e-10):
    """Largest eigenvalue of a symmetric PSD operator: Lanczos, dense below 64 dimensions.

    Parameters
    ----------
    matvec : callable
        ``v ↦ K v`` for ``v`` of shape (dim,).
    dim : int
    tol : float, default=1e-10
        Relative accuracy of the Ritz value (``eigsh``'s ``tol``).

    Returns
    -------
    float
    """
    if dim <= _LANCZOS_MIN_DIM:
        return float(np.linalg.eigvalsh(np.column_stack([matvec(e) for e in np.eye(dim)]))[-1])
    op = LinearOperator((dim, dim), matvec=matvec, dtype=np.float64)
    v0 = np.full(dim, 1.0 / np.sqrt(dim))  # deterministic start
    return float(eigsh(op, k=1, which="LA", tol=tol, v0=v0, return_eigenvectors=False)[0])


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
    def has_eigh(self):
        """Whether the eigendecomposition is already known (no cost to read it)."""
        return self._eigh is not None

    @property
    def lambda_max(self):
        """Largest eigenvalue of Θ: from the decomposition if known, else Lanczos (cached)."""
        if self._eigh is not None:
            return float(self._eigh[0][0])
        if getattr(self, "_lambda_max", None) is None:
            self._lambda_max = max(top_eigenvalue(lambda v: self.ntk @ v, self.n_train_rows), 0.0)
        return self._lambda_max

    def matvec(self, v):
        """Θ v for v of shape (N·C,)."""
        return self.ntk @ v

    def dense(self):
        """Θ itself."""
        return self.ntk

    def trace(self):
        return float(np.trace(self.ntk))

    def without_eval(self):
        """The same Θ without the held-out rows (no copy): what moves the weights."""
        return self if self.cross is None else DenseKernel(self.ntk, self.n_outputs,
                                                           eigh=self._eigh)


class FactoredKernel:
    r"""Θ = J̃ J̃ᵀ kept as its rows J̃, optionally with held-out rows J̃_eval.

    Parameters
    ----------
    rows : ndarray of shape (N·C, D0)
        Projected Jacobian rows of the training outputs (sample-major); float32
        storage is enough (every product accumulates in float64); may be a
        ``numpy.memmap``.
    n_outputs : int
        C.
    eval_rows : ndarray of shape (N_eval·C, D0), optional
        Rows of held-out outputs: Θ(train, eval) = J̃ J̃_evalᵀ, never formed either.
    block_bytes : int, default=64 MiB
        Bytes of float64 temporaries one blocked product may hold.

    Notes
    -----
    Every method is a product through :math:`\tilde J^\top` then
    :math:`\tilde J`, ``O(N·C·D0)`` per vector instead of ``O((N·C)^2)``
    (:meth:`batch_product`: ``O(b·C·D0)`` for the first factor). The discrete
    solver does better still: it keeps the state in the sketch space
    (:mod:`sktt.dynamics._factored`).
    """

    factored = True

    def __init__(self, rows, n_outputs, eval_rows=None, *, block_bytes=64 * 1024**2):
        if rows.ndim != 2 or rows.shape[0] % int(n_outputs):
            raise ValueError(f"rows must have shape (N·C, D0) with C={n_outputs}; got "
                             f"{rows.shape}.")
        if eval_rows is not None and (eval_rows.ndim != 2 or eval_rows.shape[1] != rows.shape[1]
                                      or eval_rows.shape[0] % int(n_outputs)):
            raise ValueError(f"eval_rows must have shape (N_eval·C, {rows.shape[1]}); got "
                             f"{eval_rows.shape}.")
        self.rows = rows
        self.n_outputs = int(n_outputs)
        self.eval_rows = eval_rows
        self.block_bytes = int(block_bytes)
        self._eigh = None
        self._lambda_max = None
        self._row_norms = {}  # cached norms of the rows (train / eval)

    @property
    def n_train_rows(self):
        return self.rows.shape[0]

    @property
    def n_eval_rows(self):
        return 0 if self.eval_rows is None else self.eval_rows.shape[0]

    @property
    def dim(self):
        """D0, the sketch dimension."""
        return self.rows.shape[1]

    def row_blocks(self, width=1, *, eval_rows=False):
        """``(start, stop)`` row ranges, whole samples each, sized so that a float64
        ``(stop − start, max(D0, width))`` temporary fits ``block_bytes``."""
        n_rows = self.n_eval_rows if eval_rows else self.n_train_rows
        per = max(1, self.block_bytes // (8 * max(self.dim, int(width)) * self.n_outputs))
        step = per * self.n_outputs
        return [(s, min(s + step, n_rows)) for s in range(0, n_rows, step)]

    def float64_blocks(self, width=1, *, eval_rows=False):
        """The rows J̃ (or J̃_eval) in float64, block by block, for products with ``width``
        vectors: yields ``(start, stop, rows)``, whole samples each.

        Stored float32 rows are copied into one buffer, overwritten by the next block
        (use a block before asking for the next), in blocks of ``_COPY_BYTES`` or of as
        many rows as ``width`` (fewer would re-read the vectors more often than the
        rows), within :meth:`row_blocks`; float64 rows are yielded as they are.
        """
        part = self.eval_rows if eval_rows else self.rows
        blocks = self.row_blocks(width, eval_rows=eval_rows)
        if part is None or part.dtype == np.float64:  # (no held-out rows: no blocks)
            for s, e in blocks:
                yield s, e, part[s:e]
            return
        c, d = self.n_outputs, self.dim
        step = c * max(1, max(_COPY_BYTES // (8 * d), int(width)) // c)
        buffer = None
        for start, stop in blocks:
            for s in range(start, stop, step):
                e = min(s + step, stop)
                if buffer is None:
                    buffer = np.empty((min(step, stop - start), d))
                rows = buffer[:e - s]
                rows[...] = part[s:e]
                yield s, e, rows

    def max_row_norm(self, *, eval_rows=False):
        """The largest Euclidean norm of a row of J̃ (or J̃_eval; 0 if none), cached: it
        bounds every output change |J̃ u|_i ≤ max_i |J̃_i|·|u|."""
        key = "eval" if eval_rows else "train"
        if key not in self._row_norms:
            norm = 0.0
            for _, _, block in self.float64_blocks(eval_rows=eval_rows):
                norm = max(norm, float(np.sqrt(np.einsum("ij,ij->i", block, block).max())))
            self._row_norms[key] = norm
        return self._row_norms[key]

    def abs_column_sums(self, *, eval_rows=False):
        """Σ_i |J̃_ij| for every column j, (D0,) float64 (J̃ or J̃_eval), cached: it bounds the
        round-off of a single-precision product J̃ᵀg by max|g|·Σ_i |J̃_ij|."""
        key = "eval_abs" if eval_rows else "train_abs"
        if key not in self._row_norms:
            sums = np.zeros(self.dim)
            for _, _, block in self.float64_blocks(eval_rows=eval_rows):
                sums += np.abs(block).sum(axis=0)
            self._row_norms[key] = sums
        return self._row_norms[key]

    def gather(self, idx, buffer=None):
        """J̃ of the samples ``idx`` (shape (..., b)), float64 (..., b·C, D0).

        ``buffer``, the result of an earlier call, is filled again when it has the size
        needed (else a fresh array is returned): a loop gathering batch after batch
        reuses one array, which stays in cache (the sketch-space simulation of 4 paths ×
        1 000 steps at N = 20 000, C = 10, D0 = 1024, b = 32: 2.3 s instead of 2.5 s,
        medians of nine runs).
        """
        idx = np.asarray(idx)
        c, d = self.n_outputs, self.dim
        per_sample = self.rows.reshape(-1, c, d)  # (N, C, D0), no copy
        shape = (*idx.shape[:-1], idx.shape[-1] * c, d)
        # whole samples at a time: contiguous (C, D0) blocks
        if buffer is None or buffer.size != idx.size * c * d or buffer.dtype != np.float64:
            return np.asarray(per_sample[idx.reshape(-1)], dtype=np.float64).reshape(shape)
        out = buffer.reshape(idx.size, c, d)
        out[...] = per_sample[idx.reshape(-1)]
        return out.reshape(shape)

    def transpose_product(self, grad):
        """J̃ᵀ g for g of shape (P, N·C) (training rows): (P, D0), blocked."""
        grad = np.asarray(grad, dtype=np.float64)
        out = np.zeros((grad.shape[0], self.dim))
        for s, e, rows in self.float64_blocks(grad.shape[0]):
            out += grad[:, s:e] @ rows
        return out

    def batch_transpose_product(self, grad_b, idx):
        """J̃_Bᵀ g_B per path: grad_b (P, b, C), idx (P, b) → (P, D0)."""
        rows = self.gather(idx)  # (P, b·C, D0)
        return (np.asarray(grad_b).reshape(rows.shape[0], 1, -1) @ rows)[:, 0]

    def apply(self, coef):
        """J̃ u for u of shape (P, D0): (P, (N + N_eval)·C), blocked, float64."""
        coef = np.asarray(coef, dtype=np.float64)
        parts = [self.rows] if self.eval_rows is None else [self.rows, self.eval_rows]
        out = []
        for part, is_eval in zip(parts, (False, True)):
            block = np.empty((coef.shape[0], part.shape[0]))
            for s, e, rows in self.float64_blocks(coef.shape[0], eval_rows=is_eval):
                block[:, s:e] = coef @ rows.T
            out.append(block)
        return out[0] if len(out) == 1 else np.concatenate(out, axis=1)

    def full_product(self, grad):
        """Outputs' change for a gradient on every training row (as :class:`DenseKernel`)."""
        return self.apply(self.transpose_product(grad))

    def batch_product(self, grad_b, idx):
        """Outputs' change for batch gradients on the rows of ``idx`` (as :class:`DenseKernel`)."""
        return self.apply(self.batch_transpose_product(grad_b, idx))

    def block(self, idx):
        """Θ_BB = J̃_B J̃_Bᵀ for the samples ``idx`` (1-D)."""
        rows = self.gather(np.asarray(idx))
        return rows @ rows.T

    def matvec(self, v):
        """Θ v = J̃(J̃ᵀv) for v of shape (N·C,)."""
        return self.apply(self.transpose_product(np.asarray(v)[None]))[0, :self.n_train_rows]

    def gram(self):
        """J̃ᵀJ̃ (D0 × D0, float64): the same non-zero spectrum as Θ."""
        out = np.zeros((self.dim, self.dim))
        for _, _, block in self.float64_blocks():
            out += block.T @ block
        return out

    @property
    def lambda_max(self):
        """Largest eigenvalue of Θ (Lanczos on J̃ᵀJ̃ or on Θ, whichever is smaller; cached)."""
        if self._eigh is not None:
            return float(self._eigh[0][0])
        if self._lambda_max is None:
            if self.dim <= self.n_train_rows:
                op = lambda u: self.transpose_product(self.apply(u[None])[:, :self.n_train_rows])[0]
                lam = top_eigenvalue(op, self.dim)
            else:
                lam = top_eigenvalue(self.matvec, self.n_train_rows)
            self._lambda_max = max(lam, 0.0)
        return self._lambda_max

    @property
    def has_eigh(self):
        return self._eigh is not None

    def dense(self):
        """Θ = J̃J̃ᵀ formed (float64, (N·C)² × 8 bytes): only when asked for."""
        out = np.empty((self.n_train_rows, self.n_train_rows))
        for s, e in self.row_blocks(width=self.n_train_rows):
            out[s:e] = np.asarray(self.rows[s:e], dtype=np.float64) @ np.asarray(
                self.rows, dtype=np.float64).T
        return check_ntk(out, copy=False)

    def cross_kernel(self):
        """Θ(train, eval) = J̃ J̃_evalᵀ formed, or None."""
        if self.eval_rows is None:
            return None
        return np.asarray(self.rows, dtype=np.float64) @ np.asarray(self.eval_rows,
                                                                    dtype=np.float64).T

    def eigh(self):
        """Eigendecomposition of the formed Θ (solvers that need it: MSE closed form, spectra)."""
        if self._eigh is None:
            self._eigh = ntk_eigh(self.dense())
        return self._eigh

    def trace(self):
        return float(sum(np.square(block).sum() for _, _, block in self.float64_blocks()))

    def with_block_bytes(self, block_bytes):
        """The same kernel (rows, held-out rows and cached spectra shared: no copy) whose
        blocked products hold at most ``block_bytes`` of float64 temporaries."""
        out = FactoredKernel(self.rows, self.n_outputs, self.eval_rows, block_bytes=block_bytes)
        out._eigh, out._lambda_max, out._row_norms = self._eigh, self._lambda_max, self._row_norms
        return out

    def without_eval(self):
        """The same rows without the held-out ones (no copy): what moves the weights."""
        if self.eval_rows is None:
            return self
        out = FactoredKernel(self.rows, self.n_outputs, block_bytes=self.block_bytes)
        out._eigh, out._lambda_max = self._eigh, self._lambda_max
        return out

    def as_dense(self):
        """The equivalent :class:`DenseKernel` (Θ and the cross-kernel formed)."""
        return DenseKernel(self.dense(), self.n_outputs, cross=self.cross_kernel(), eigh=self._eigh)


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
