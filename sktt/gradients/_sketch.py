r"""Projected Jacobian rows of a chunk, layer by layer.

Every parameter block is projected with the same seeded projector as the
reference path (:class:`~sktt.gradients.BlockProjector`), so both paths give the
same rows up to round-off. With ``projection="tensorsketch"``, a factored
per-sample gradient :math:`G = \sum_p u_p \otimes v_p` has the tensorsketch
:math:`\sum_p \mathrm{CS}_1(u_p) \circledast \mathrm{CS}_2(v_p)` (two small
count-sketches and FFTs per position), which never forms :math:`G`: for a wide
layer with few positions this costs far less than forming :math:`G` and
count-sketching it. :func:`fft_is_cheaper` decides per parameter from a cost
model whose unit costs were measured (below).

Parameters without a rule are projected from their ``torch.func`` Jacobian.
"""

import math

import torch
from torch import nn

from ._layer_rules import Dense, Factored, sum_dense
from ._recorder import layerwise_chunk

__all__ = ["fft_is_cheaper", "projected_rows", "sketch_block"]

# --------------------------------------------------------------------------- cost model
# Seconds per unit measured on one core of a Xeon (float32, one thread):
# a multiply-add in a batched matmul, one element of an explicit count-sketch
# (index_add, memory bound), one sketched element of an FFT row (count-sketch +
# rfft + product + irfft, per output coordinate). Only their ratios matter.
_SEC_MAC = 1 / 30e9
_SEC_SKETCH = 4.5e-9
_SEC_FFT = 8e-9

# Temporaries of one sub-chunk of samples in :func:`sketch_block`: a few MiB keep the
# per-sample gradients in cache from their product to their sketch (the residual convnet
# of benchmarks/bench_prediction_cost.py, whose widest layers have 64 positions: the
# products took 1.36 s with 8 MiB, 1.64 s with whole chunks of 19 samples).
_STEP_BYTES = 8 * 2**20

# --------------------------------------------------------------------------- sketches
def _rows_of(rep):
    return max(rep.left.shape[1], rep.right.shape[1]) if isinstance(rep, Factored) else \
        rep.g.shape[1]


def _positions_of(rep):
    return rep.right.shape[2] if isinstance(rep, Factored) else 1


def fft_is_cheaper(plan, name, n_outputs, dim):
    """Cost model: tensorsketch by FFT of the factors, or explicit gradients + index_add."""
    if not plan.sketchable(name):
        return False
    if any(isinstance(m, nn.Embedding) for m, _ in plan.uses[name]):
        return True  # one-hot factors: never form a (vocabulary × dim) gradient
    shape = plan.shapes[name]
    d = math.prod(shape)
    d1 = shape[0]
    p = plan.positions.get(name, 1)
    explicit = n_outputs * p * d * _SEC_MAC + n_outputs * d * _SEC_SKETCH
    fft = (n_outputs + 1) * p * dim * _SEC_FFT + n_outputs * p * d1 * _SEC_SKETCH
    return fft < explicit


def _explicit_sketch(projector, block, shape, parts, target):
    """Form the per-sample gradients of ``parts`` and sketch them into ``target``."""
    d = math.prod(shape)
    if projector.kind != "tensorsketch" or target.dtype != _dtype_of(parts[0]):
        g = sum_dense(parts)
        # a sum or a product of factors is a fresh temporary: signed in place
        fresh = len(parts) > 1 or isinstance(parts[0], Factored)
        projector.project(block, g.reshape(-1, d), target, shape=shape, scratch=fresh)
        return
    # The tensorsketch sign s1(o)·s2(k) is rank one: fold it into the factors before
    # the product instead of multiplying the (much larger) gradient afterwards.
    dtype, device = target.dtype, target.device
    _, s1, _, s2 = projector.tensor_hash(block, shape, dtype, device)
    bucket, sign = projector.flat_hash(block, shape, dtype, device)
    g = None
    for r in parts:
        if isinstance(r, Factored) and not r.is_index:
            gi = Factored(r.left * s1, r.right * s2, r.d1).dense()
        else:
            gi = r.dense() * sign
        g = gi if g is None else g + gi
    target.index_add_(1, bucket, g.reshape(-1, d))


def _dtype_of(rep):
    return rep.g.dtype if isinstance(rep, Dense) else rep.right.dtype


def sketch_block(projector, block, shape, reps, out, *, use_fft, work_bytes):
    """Add the projection of one parameter's per-sample gradients to ``out`` (n·C, dim).

    Samples are taken in sub-chunks whose temporaries fit ``work_bytes`` (and, for explicit
    gradients, a few MiB: ``_STEP_BYTES``); the rows do not depend on the sub-chunks.
    """
    if not reps:
        return out
    n = (reps[0].g if isinstance(reps[0], Dense) else reps[0].right).shape[0]
    rows = _rows_of(reps[0])
    d = math.prod(shape)
    itemsize = (reps[0].g if isinstance(reps[0], Dense) else reps[0].right).element_size()
    use_fft = use_fft and all(isinstance(r, Factored) for r in reps)
    if use_fft:  # sketches, their spectra and the product, per position
        per_sample = sum((r.left.shape[1] + r.right.shape[1]) * _positions_of(r)
                         for r in reps) * (projector.dim + 2) * 3 * itemsize
    else:  # explicit gradients, their signed copy and the sketch
        per_sample = rows * (2 * d + projector.dim) * itemsize
        work_bytes = min(work_bytes, _STEP_BYTES)
    step = int(max(1, min(n, work_bytes // max(per_sample, 1))))
    for start in range(0, n, step):
        sl = slice(start, min(start + step, n))
        target = out[sl.start * rows:sl.stop * rows]
        parts = [r.take(sl) for r in reps]
        if use_fft:
            for r in parts:
                projector.project_factored(block, shape, r.left, r.right, target)
        else:
            _explicit_sketch(projector, block, shape, parts, target)
    return out


def projected_rows(model, plan, names, x, projector, work_bytes, fallback_jacobian, *,
                   with_outputs=False):
    """Projected Jacobian rows ``(n·C, dim)`` (float64, CPU) of one chunk.

    Parameters
    ----------
    model, plan, x
        As for :func:`layerwise_chunk`.
    names : list of str
        All trainable parameters; ``block`` = position in this list.
    projector : BlockProjector
    work_bytes : int
        Bound on one layer's temporaries.
    fallback_jacobian : callable
        ``(model, names, x) -> {name: (n, C, *shape)}`` for parameters without a rule.
    with_outputs : bool, default=False
        Also return the model's outputs on the chunk (n, C), float64 CPU ndarray:
        the recording forward pass computes them anyway.

    Notes
    -----
    Sketches are accumulated over blocks in the model's dtype and converted to
    float64 once per chunk (the reference converts per block; the difference
    is round-off).
    """
    fallback = [name for name in names if name not in plan.uses]
    reps = layerwise_chunk(model, plan, x, names=names)
    jac = fallback_jacobian(model, fallback, x) if fallback else {}
    n = (x[0] if isinstance(x, tuple) else x).shape[0]
    acc = None
    for block, name in enumerate(names):
        shape = plan.shapes[name]
        if name in jac:
            cols = jac.pop(name)
            cols = cols.reshape(cols.shape[0] * cols.shape[1], -1)
            if acc is None:
                acc = torch.zeros(cols.shape[0], projector.dim, dtype=cols.dtype,
                                  device=cols.device)
            projector.project(block, cols, acc, shape=shape)
            continue
        terms = reps.pop(name)
        if not terms:
            continue
        if acc is None:
            acc = torch.zeros(n * _rows_of(terms[0]), projector.dim, dtype=_dtype_of(terms[0]),
                              device=(terms[0].g if isinstance(terms[0], Dense)
                                      else terms[0].right).device)
        use_fft = (projector.kind == "tensorsketch"
                   and fft_is_cheaper(plan, name, acc.shape[0] // n, projector.dim))
        sketch_block(projector, block, shape, terms, acc, use_fft=use_fft, work_bytes=work_bytes)
    rows = acc.to("cpu", torch.float64).numpy()
    if with_outputs:
        return rows, reps.outputs.to("cpu", torch.float64).numpy()
    return rows
