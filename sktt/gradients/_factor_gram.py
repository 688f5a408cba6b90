r"""Exact Θ from stored per-sample gradient representations.

A parameter's contribution to Θ is :math:`\langle G_r, G_s\rangle` over all
pairs of rows. For explicit gradients this is :math:`G G^\top`
(:func:`dense_gram`, by blocks of chunks, with no concatenated copy). For a
factored gradient :math:`G_r = \sum_p u_{rp} \otimes v_{rp}` it is

.. math:: \langle G_r, G_s\rangle = \sum_{p,p'} (u_{rp}\cdot u_{sp'})(v_{rp}\cdot v_{sp'}),

(:func:`factored_gram`), which costs :math:`(N P)^2 (d_1 + d_2)` instead of
:math:`N C\, d_1 d_2` to form :math:`G` and :math:`(NC)^2 d_1 d_2` for the Gram:
much less for a wide layer with few positions. For one-hot factors
(embeddings) :math:`u\cdot u'` is an index match.

Chunk representations are kept float64 on the CPU (:func:`to_storage`) and
concatenated along the samples (:func:`concat_storage`) before the Gram.
"""

import math

import torch

from ._layer_rules import Dense, Factored, sum_dense

__all__ = ["concat_storage", "dense_gram", "factored_gram", "to_storage"]


def _concat_factored(terms):
    """One Factored for the sum of several (a parameter used by several calls), or None."""
    if not all(isinstance(t, Factored) for t in terms):
        return None
    if len(terms) == 1:
        return terms[0]
    if any(t.is_index for t in terms) or len({t.d1 for t in terms}) > 1:
        return None
    rows = max(max(t.left.shape[1], t.right.shape[1]) for t in terms)
    left_shared = all(t.left.shape[1] == 1 for t in terms)
    right_shared = all(t.right.shape[1] == 1 for t in terms)

    def expand(x, shared):
        return x if shared else x.expand(x.shape[0], rows, *x.shape[2:])

    left = torch.cat([expand(t.left, left_shared) for t in terms], dim=2)
    right = torch.cat([expand(t.right, right_shared) for t in terms], dim=2)
    return Factored(left, right, terms[0].d1)


def to_storage(reps, mode):
    """A chunk's representation of one parameter, float64 on CPU, ready to concatenate."""
    if mode == "factored":
        f = _concat_factored(reps)
        if f is not None:
            left = f.left if f.is_index else f.left.to("cpu", torch.float64)
            return Factored(left.cpu(), f.right.to("cpu", torch.float64), f.d1)
    return Dense(sum_dense(reps).to("cpu", torch.float64))


def concat_storage(parts):
    """Concatenate chunk representations along the samples axis."""
    if (all(isinstance(p, Factored) for p in parts)
            and len({(p.left.shape[1:], p.right.shape[1:], p.is_index) for p in parts}) == 1):
        return Factored(torch.cat([p.left for p in parts]), torch.cat([p.right for p in parts]),
                        parts[0].d1)
    dense = [p.dense() if isinstance(p, Factored) else p.g for p in parts]
    return Dense(torch.cat(dense))


def dense_gram(parts, out):
    """Add ``G Gᵀ`` to ``out`` for ``G`` the row-concatenation of Dense ``parts``, by blocks."""
    gs = [p.g.reshape(p.g.shape[0] * p.g.shape[1], -1) for p in parts]
    starts = [0]
    for g in gs:
        starts.append(starts[-1] + g.shape[0])
    for a, ga in enumerate(gs):
        ra = slice(starts[a], starts[a + 1])
        for b in range(a, len(gs)):
            rb = slice(starts[b], starts[b + 1])
            block = ga @ gs[b].T
            out[ra, rb] += block
            if b != a:
                out[rb, ra] += block.T
    return out


def _factor_kernel(a, b, is_index):
    """Kernel between factors a (nI, Ca, P, d) and b (nJ, Cb, P', d) -> (nI, Ca, P, nJ, Cb, P')."""
    if is_index:
        return (a[:, :, :, None, None, None] == b[None, None, None]).to(torch.float64)
    ka = a.reshape(-1, a.shape[-1])
    kb = b.reshape(-1, b.shape[-1])
    return (ka @ kb.T).reshape(*a.shape[:3], *b.shape[:3])


def factored_gram(f, out, *, work_bytes):
    """Add ⟨G_r, G_s⟩ for all row pairs of a Factored (all samples) to ``out`` (N·C, N·C)."""
    n = f.right.shape[0]
    rows = max(f.left.shape[1], f.right.shape[1])
    p = f.right.shape[2]
    per_pair = (rows * p) ** 2 * 8 * 3
    tile = int(max(1, min(n, math.isqrt(max(work_bytes // per_pair, 1)))))
    for i0 in range(0, n, tile):
        fi = f.take(slice(i0, min(i0 + tile, n)))
        for j0 in range(i0, n, tile):
            fj = f.take(slice(j0, min(j0 + tile, n)))
            kl = _factor_kernel(fi.left, fj.left, f.is_index)
            kr = _factor_kernel(fi.right, fj.right, False)
            block = (kl * kr).sum(dim=(2, 5))  # (nI, Ca|Cb, nJ, ...) summed over p, p'
            ni, nj = block.shape[0], block.shape[2]
            block = block.expand(ni, rows, nj, rows).reshape(ni * rows, nj * rows)
            r0, c0 = i0 * rows, j0 * rows
            out[r0:r0 + ni * rows, c0:c0 + nj * rows] += block
            if j0 != i0:
                out[c0:c0 + nj * rows, r0:r0 + ni * rows] += block.T
    return out
