r"""Which kernel a fit keeps (dense Θ or the factored rows J̃), and what a prediction may hold.

The choice (``ntk`` parameter of :class:`~sktt.TrainingTimePredictor`)
-----------------------------------------------------------------------
Without a projection the exact Θ is the only kernel there is: ``"dense"``.
With one, the rows J̃ (N·C × D0) are the kernel and Θ̃ = J̃J̃ᵀ is optional. Costs,
for P paths of T steps of batch b and a grid of G settings:

==============  ==============================  ==============================
                fit (beyond the rows)           one setting
==============  ==============================  ==============================
``"dense"``     (N·C)²·D0 to form Θ,            P·T·b·C·N·C (batch columns
                (N·C)²·8 bytes                  of Θ, every output moved)
``"factored"``  nothing, N·C·D0·4 bytes         P·T·N·C·D0 (curves from the
                                                sketch-space states)
==============  ==============================  ==============================

So a dense step is cheaper by D0/(b·C), but forming Θ̃ costs as much as
N·C/(P·T) factored settings and its memory grows as (N·C)². ``"auto"``
picks ``"dense"`` iff Θ̃ (plus the float64 copy of the rows it is formed from)
fits in half of ``max_memory`` *and* N·C ≤ P·T (forming it costs at most one
factored setting, with the estimator's own ``n_paths`` and ``n_steps``);
otherwise ``"factored"``. Both give the same curves to round-off
(``tests/test_factored.py``).

Memory at predict time
----------------------
A prediction holds its P paths' curves and state: for the dense solver the
outputs and momentum images ((N + N_eval)·C per path, a few copies), for the
factored one the stored sketch-space states (T + 1)·P·(D0 + 2) and one block of
outputs (64 MiB, smaller where the budget needs it); and the P·T minibatch orders.
:func:`check_predict_memory` raises :class:`~sktt.exceptions.MemoryBudgetError`
when that, next to the kernel,
exceeds ``max_memory``, and :func:`release_cached` drops the oldest cached
predictions (an estimator caches one per setting) until what stays cached fits
beside it: each prediction is within the budget, and so is a grid of them.
"""

import numpy as np

from ..dynamics._factored import FactoredCurves, states_bytes
from ..exceptions import MemoryBudgetError
from ..utils import format_bytes

__all__ = ["NTK_MODES", "resolve_ntk_mode", "kernel_bytes", "check_predict_memory",
           "release_cached"]

NTK_MODES = ("auto", "dense", "factored")
_DENSE_COPIES = 6  # (P, N·C) float64 arrays the dense step loop holds (F, A, U, grad, ...)
_ARRAY_BYTES = 112  # a small numpy array's own object (sys.getsizeof of an empty one)


def resolve_ntk_mode(ntk, *, projection, n_rows, projection_dim, max_memory, n_steps, n_paths):
    """The kernel a fit keeps: "dense" or "factored" (see the module docstring).

    Raises
    ------
    ValueError
        ``ntk="factored"`` without a projection.
    """
    if ntk == "factored" and projection is None:
        raise ValueError("ntk='factored' keeps the projected Jacobian rows instead of Θ; it "
                         "needs a projection (projection='countsketch', projection_dim=...). "
                         "Without one, use ntk='dense' or 'auto'.")
    if ntk != "auto":
        return ntk
    if projection is None:
        return "dense"
    dense_bytes = n_rows * n_rows * 8 + n_rows * projection_dim * 8
    fits = 2 * dense_bytes <= max_memory
    return "dense" if fits and n_rows <= n_steps * max(1, n_paths) else "factored"


def kernel_bytes(kernel):
    """Bytes the fitted kernel holds (Θ and the cross-kernel, or the rows)."""
    if getattr(kernel, "factored", False):  # rows in a memmap live on disk
        parts = [r for r in (kernel.rows, kernel.eval_rows) if r is not None]
        return sum(0 if isinstance(r, np.memmap) else r.nbytes for r in parts)
    cross = 0 if kernel.cross is None else kernel.cross.nbytes
    return kernel.ntk.nbytes + cross


def _factored_block(kernel, n_states, n_all_rows, block_bytes=None):
    """Rows of one block of the factored solver's output products (whole samples, sized by
    :meth:`~sktt.gram.FactoredKernel.row_blocks`) and the bytes that block holds: its outputs
    at every stored state, the loss's temporaries of them and its float64 rows."""
    c = kernel.n_outputs
    block_bytes = kernel.block_bytes if block_bytes is None else block_bytes
    rows = min(n_all_rows, c * max(1, block_bytes // (8 * max(kernel.dim, n_states) * c)))
    return rows, 6 * 8 * n_states * rows + 8 * kernel.dim * rows


def check_predict_memory(kernel, recipe, n_paths, n_all_rows, max_memory):
    """The kernel to run one prediction with, and its peak; MemoryBudgetError if that peak
    exceeds ``max_memory``.

    A factored kernel whose default blocks (64 MiB of temporaries per blocked product)
    would not fit beside the rest of the prediction is given smaller ones, down to one
    sample per block (:meth:`~sktt.gram.FactoredKernel.with_block_bytes`: the same rows,
    no copy; the products and curves change only by round-off).

    Parameters
    ----------
    kernel : DenseKernel or FactoredKernel
    recipe : TrainingRecipe
    n_paths : int
    n_all_rows : int
        (N + N_eval)·C: the rows of ``kernel`` (held-out ones included).
    max_memory : int

    Returns
    -------
    kernel : DenseKernel or FactoredKernel
        ``kernel`` itself, or a factored one with smaller blocks.
    need : int
        The bytes of that peak, kernel included.
    """
    curves = 4 * n_paths * (recipe.n_steps + 1) * 8
    batches = batches_bytes(recipe, n_paths)
    factored = getattr(kernel, "factored", False)
    if factored:
        n_states = (recipe.n_steps + 1) * n_paths
        fixed = kernel_bytes(kernel) + curves + batches + states_bytes(kernel, recipe, n_paths)
        _, block = _factored_block(kernel, n_states, n_all_rows)
        if fixed + block > max_memory:  # the most rows per block that fit, whole samples
            c = kernel.n_outputs
            rows = (max_memory - fixed) // (6 * 8 * n_states + 8 * kernel.dim) // c * c
            if rows >= c:
                kernel = kernel.with_block_bytes(8 * max(kernel.dim, n_states) * rows)
                _, block = _factored_block(kernel, n_states, n_all_rows)
        work = states_bytes(kernel, recipe, n_paths) + block
    else:
        work = _DENSE_COPIES * n_paths * n_all_rows * 8
    need = kernel_bytes(kernel) + curves + work + batches
    if need > max_memory:
        raise MemoryBudgetError(
            f"this prediction ({n_paths} paths × {recipe.n_steps} steps) needs about "
            f"{format_bytes(need)} (kernel {format_bytes(kernel_bytes(kernel))}, curves and "
            f"solver state {format_bytes(curves + work)}, minibatch orders "
            f"{format_bytes(batches)}), more than max_memory={format_bytes(max_memory)}. "
            "Options: fewer n_paths or n_steps, a smaller projection_dim"
            + ("" if factored else ", ntk='factored' (the rows instead of Θ)")
            + ", or raise max_memory.")
    return kernel, need


def batches_bytes(recipe, n_paths):
    """Bytes of the simulated minibatch orders: the per-path batches of the DataLoaders and
    their (P, b) stack per step, each a small array with its header."""
    if recipe.full_batch or recipe.resolved_solver != "discrete":
        return 0
    data = 8 * recipe.batch_size
    return recipe.n_steps * (n_paths * (data + _ARRAY_BYTES) + n_paths * data + _ARRAY_BYTES)


def cached_bytes(value):
    """Bytes of the arrays a cached prediction holds (a factored run: its ``nbytes``)."""
    if isinstance(value, (np.ndarray, FactoredCurves)):
        return value.nbytes
    if isinstance(value, dict):
        return sum(cached_bytes(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return sum(cached_bytes(v) for v in value)
    return 0


def release_cached(cache, room):
    """Drop the oldest entries of ``cache`` (a dict, oldest first) until the arrays it
    holds take at most ``room`` bytes; entries holding no array stay."""
    sizes = {key: cached_bytes(value) for key, value in cache.items()}
    held = sum(sizes.values())
    for key, nbytes in sizes.items():
        if held <= room:
            break
        if nbytes:
            del cache[key]
            held -= nbytes
