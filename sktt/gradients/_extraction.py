r"""Outputs at w0, Jacobian rows and the kernel Θ = J Jᵀ, chunked and in parallel.

Memory: Θ needs ``(N·C)² × 8`` bytes. The exact path holds the float64 Jacobian
of one *group* of parameter tensors at a time (groups are sized to the budget)
and accumulates Θ = Σ_groups J_g J_gᵀ, so no ``(N·C) × D`` matrix larger than the
budget ever exists. The projected path holds the ``(N·C) × D0`` projected rows.

Parallelism: sample chunks are independent tasks for joblib; every worker
regenerates the same projection from the seed, so results do not depend on
``n_jobs`` or on the chunk size.

Two ways to the same numbers (``jacobian_method``): ``"functorch"`` maps ``vmap``
over whole-model vector-Jacobian products (:mod:`._jacobian`, the reference);
``"layerwise"`` forms per-sample gradients per layer from one forward and C
backward passes (rules :mod:`._layer_rules`, recorder :mod:`._recorder`, plan
:mod:`._layerwise_plan`), falling back to ``torch.func`` for the
parameters it has no rule for. ``"auto"`` uses the layer-wise path when a probe
shows the model keeps samples independent, unless some parameters fall back
to ``torch.func`` and the two paths, timed on the probe, say ``torch.func``
alone is faster (:func:`_layerwise_is_faster`). Both paths use the same projection
(same seed, same blocks), so they give the same Θ up to round-off. In the exact
layer-wise path, a Linear/Conv weight whose factor Gram
:math:`\sum_{p,p'}(u\cdot u')(v\cdot v')` is cheaper than :math:`J J^\top`
never has its Jacobian formed, and with ``projection="tensorsketch"`` large
layers are sketched from their factors by FFT.
"""

import math
import os
import tempfile

import numpy as np
import torch

from ..exceptions import MemoryBudgetError
from ..utils import format_bytes
from ..utils._torch import model_device_dtype
from ._inputs import as_model_inputs, index_inputs, inputs_to, n_samples_of
from ._jacobian import chunk_jacobian
from ._outputs import call_model, select_logits
from ._parallel import (MIN_CHUNKS, cap_chunk_size, map_chunks, n_jobs_for_work,
                        n_workers_for)
from ._factor_gram import concat_storage, dense_gram, factored_gram, to_storage
from ._layer_rules import Dense, sum_dense
from ._layerwise_plan import exact_mode, plan_layerwise, storage_bytes
from ._recorder import layerwise_chunk
from ._sketch import projected_rows
from ._projection import BlockProjector

__all__ = ["JACOBIAN_METHODS", "first_outputs", "model_outputs", "jacobian_rows",
           "ntk_from_model", "plan_chunk_size", "resolve_layerwise_plan"]

JACOBIAN_METHODS = ("auto", "layerwise", "functorch")
_PROBE_SAMPLES = 3
_IN_FLIGHT = 4  # chunks per worker whose rows _parallel_rows collects before writing them


def model_outputs(model, inputs, *, chunk_size=256, output=None):
    """Model outputs on all samples (eval mode is the caller's job), float64 ``(N, C)``.

    Parameters
    ----------
    model : torch.nn.Module
    inputs : ModelInputs, Tensor or tuple of Tensor
        From :func:`~sktt.gradients.as_inputs`.
    chunk_size : int, default=256
    output : None, str, int or callable, default=None
        Which part of the model's output are the logits (:func:`select_logits`).
    """
    inputs = as_model_inputs(inputs).bind_output(output)
    device, _ = model_device_dtype(model)
    n = inputs.n_samples
    outs = []
    with torch.no_grad():
        for start in range(0, n, chunk_size):
            chunk = inputs[start:start + chunk_size].to(device)
            try:
                raw = chunk.call(model)
            except torch.OutOfMemoryError:
                raise
            except (RuntimeError, TypeError, ValueError, IndexError) as exc:
                # shape/dtype mismatches surface deep in the model; say which input it was
                reason = str(exc).splitlines()[0] if str(exc) else ""
                raise ValueError(
                    f"the model cannot be called on X (samples {start}..{start + len(chunk) - 1}"
                    f", {chunk.describe()}): {type(exc).__name__}: "
                    f"{reason}. Accepted: inputs whose per-sample shape and dtype the model's "
                    "forward takes.") from exc
            out = select_logits(raw, inputs.output)
            outs.append(out.detach().to("cpu", torch.float64))
    out = torch.cat(outs)
    if out.shape[0] != n:
        raise ValueError(f"the model returned {out.shape[0]} rows for {n} samples; the first "
                         "output axis must be the samples axis.")
    return out.numpy()


def first_outputs(model, inputs):
    """The outputs on the first sample, float64 ``(1, C)``: C and a first finiteness check
    before the outputs of all samples come with the Jacobians (``return_outputs``).

    A model that cannot be called on one sample alone is called on all of them
    (:func:`model_outputs`): its error then describes the whole first chunk, or it
    works and returns ``(N, C)``.
    """
    inputs = as_model_inputs(inputs)
    try:
        return model_outputs(model, index_inputs(inputs, slice(0, 1)))
    except ValueError:
        return model_outputs(model, inputs)


def plan_chunk_size(n_samples, n_outputs, n_params, itemsize, max_memory):
    """Largest chunk whose per-sample Jacobians (with ~3x autograd overhead) fit in a quarter
    of the budget, between 1 and 256 samples."""
    per_sample = 3 * n_outputs * n_params * itemsize
    return int(max(1, min(256, n_samples, (max_memory // 4) // max(per_sample, 1))))


def _set_worker_threads(threads):
    # Oversubscription (n_jobs workers × all-core torch) made small convs ~40x slower.
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def resolve_layerwise_plan(model, inputs, names, jacobian_method, *, output=None):
    """The layer-wise plan for ``model``, or None when the ``torch.func`` path is to be used.

    Parameters
    ----------
    model : torch.nn.Module
        In eval mode.
    inputs : ModelInputs, Tensor or tuple of Tensor
    names : list of str
    jacobian_method : {"auto", "layerwise", "functorch"}
    output : None, str, int or callable, default=None
        Which part of the model's output are the logits (:func:`select_logits`).

    Raises
    ------
    ValueError
        For ``"layerwise"`` on a model that mixes samples in eval mode.
    """
    if jacobian_method not in JACOBIAN_METHODS:
        raise ValueError(f"jacobian_method={jacobian_method!r} is invalid; accepted: "
                         f"{', '.join(map(repr, JACOBIAN_METHODS))}.")
    if jacobian_method == "functorch":
        return None
    device, _ = model_device_dtype(model)
    inputs = as_model_inputs(inputs).bind_output(output)
    probe = inputs[:_PROBE_SAMPLES].to(device)
    plan = plan_layerwise(model, names, probe)
    if not plan.usable:
        if jacobian_method == "layerwise":
            raise ValueError(f"jacobian_method='layerwise' cannot be used for this model: "
                             f"{plan.reason}. Use jacobian_method='functorch' (or 'auto').")
        return None
    if not plan.uses:  # nothing has a rule: the reference path does it all
        return None
    if jacobian_method == "auto" and plan.fallback and not _layerwise_is_faster(
            model, names, probe, plan):
        return None
    return plan


_TIMING_BYTES = 256 * 1024**2


def _layerwise_is_faster(model, names, probe, plan):
    """Whether the layer-wise path (with its ``torch.func`` fallback) beats ``torch.func``.

    Cost model, measured: with no fallback parameter the layer-wise path costs
    one forward and C backward passes without weight gradients (0.9-1.1x the
    autograd floor on a ResNet-18-like net) and always wins. Fallback
    parameters add a ``vmap`` pass of the whole network for them; when they sit
    at the input (a ViT's ``cls_token`` / ``pos_embed``, BERT's position
    embedding) that pass costs about as much as ``torch.func`` for every
    parameter, and the sum loses (0.45 s against 0.27 s on a small ViT). So the
    two are timed on the probe batch, after one untimed run each (the first
    ``vmap`` in a process takes seconds). When one sample's full Jacobian
    exceeds 256 MiB the timing is skipped and the layer-wise path kept (it is the
    one whose memory scales with the fallback parameters only).
    """
    import time

    params = dict(model.named_parameters())
    out_dim = plan.n_outputs or 1
    itemsize = params[names[0]].element_size() if names else 4
    if n_samples_of(probe) * out_dim * sum(params[n].numel() for n in names) * itemsize \
            > _TIMING_BYTES:
        return True

    def layerwise():
        _layerwise_chunk_rows(model, names, probe, None, plan, None)

    def functorch():
        chunk_jacobian(model, names, probe)

    seconds = {}
    for run in (layerwise, functorch, layerwise, functorch):  # first round: warm-up
        start = time.perf_counter()
        run()
        seconds[run.__name__] = time.perf_counter() - start
    plan.timing = seconds
    return seconds["layerwise"] <= seconds["functorch"]


def _chunk_rows(model, names, x, projector, threads, plan=None, work_bytes=None,
                with_outputs=False):
    """Jacobian rows of one chunk: ``(n·C, D0)`` projected or ``(n·C, d_group)`` exact, float64;
    with ``with_outputs``, ``(rows, outputs)``: the model's outputs (n, C) as well, from the
    layer-wise path's recording pass (one more forward pass on the ``torch.func`` path)."""
    _set_worker_threads(threads)
    device, _ = model_device_dtype(model)
    x = inputs_to(x, device)
    if plan is not None:
        rows = _layerwise_chunk_rows(model, names, x, projector, plan, work_bytes, with_outputs)
        return _checked_outputs(rows, x) if with_outputs else rows
    if with_outputs:
        with torch.no_grad():
            f = call_model(model, x).detach().to("cpu", torch.float64).numpy()
        return _checked_outputs((_chunk_rows(model, names, x, projector, None), f), x)
    jac = chunk_jacobian(model, names, x)
    blocks = [jac[name].reshape(jac[name].shape[0] * jac[name].shape[1], -1) for name in names]
    if projector is None:
        return torch.cat(blocks, dim=1).to("cpu", torch.float64).numpy()
    out = None
    for block, (name, cols) in enumerate(zip(names, blocks)):  # block = trainable-list position
        out = projector.project(block, cols, out, shape=tuple(jac[name].shape[2:]))
    return out.to("cpu").numpy()


def _checked_outputs(part, x):
    """``part`` = (rows, outputs) of a chunk, after checking the outputs' samples axis."""
    n = n_samples_of(x)
    if part[1].shape[0] != n:
        raise ValueError(f"the model returned {part[1].shape[0]} rows for {n} samples; the "
                         "first output axis must be the samples axis.")
    return part


def _layerwise_chunk_rows(model, names, x, projector, plan, work_bytes, with_outputs=False):
    if projector is not None:
        return projected_rows(model, plan, names, x, projector, work_bytes, chunk_jacobian,
                              with_outputs=with_outputs)
    fallback = [name for name in names if name not in plan.uses]
    reps = layerwise_chunk(model, plan, x, names=names)
    jac = chunk_jacobian(model, fallback, x) if fallback else {}
    blocks = []
    for name in names:
        g = sum_dense(reps.pop(name)) if name in reps else jac.pop(name)
        blocks.append(g.reshape(g.shape[0] * g.shape[1], -1).to("cpu", torch.float64))
    rows = torch.cat(blocks, dim=1).numpy()
    if with_outputs:
        return rows, reps.outputs.to("cpu", torch.float64).numpy()
    return rows


def _chunks(inputs, chunk_size):
    n = n_samples_of(inputs)
    starts = list(range(0, n, chunk_size))
    return starts, (index_inputs(inputs, slice(s, s + chunk_size)) for s in starts)


def _parallel_map(func, shared, inputs, chunk_size, n_jobs, verbose):
    """``[func(x, *shared) for x in chunks]``, serially or over joblib workers (any backend,
    threads pinned per task, tqdm bar when verbose, order kept: see :mod:`._parallel`)."""
    _, chunks = _chunks(inputs, chunk_size)
    return map_chunks(func, chunks, *shared, n_jobs=n_jobs, verbose=verbose)


def disk_rows(shape, dtype, directory=None):
    """A zero-initialised ``numpy.memmap`` for rows that exceed the memory budget.

    The file is created in ``directory`` (None: :func:`tempfile.gettempdir`,
    i.e. ``$TMPDIR``) and unlinked at once: the mapping keeps the data until
    the array is garbage-collected, and nothing is left on disk after the process.
    """
    fd, path = tempfile.mkstemp(prefix="sktt-rows-", suffix=".f32", dir=directory)
    try:
        rows = np.memmap(path, dtype=dtype, mode="w+", shape=shape)
    finally:
        os.close(fd)
        os.unlink(path)
    return rows


def _parallel_rows(model, names, inputs, projector, chunk_size, n_jobs, verbose, plan=None,
                   work_bytes=None, out_dtype=None, out=None, outputs=None):
    """Rows of every chunk; with ``out_dtype``, written chunk by chunk into one
    preallocated array of that dtype (``out`` if given, e.g. a memmap), so no list
    of float64 chunks is ever kept. ``outputs`` (N, C), if given, receives the
    model's outputs chunk by chunk."""
    func_args = (model, names, projector, plan, work_bytes, outputs is not None)
    n = n_samples_of(inputs)

    def rows_of(part, start):
        return part if outputs is None else _stored_part(part, outputs, start)

    if out_dtype is None:
        parts = _parallel_map(_chunk_rows_task, func_args, inputs, chunk_size, n_jobs, verbose)
        return np.concatenate([rows_of(part, start)
                               for start, part in zip(range(0, n, chunk_size), parts)])
    starts = list(range(0, n, chunk_size))
    group = max(1, n_workers_for(n_jobs, len(starts))) * _IN_FLIGHT  # chunks held at a time
    bar = None
    if verbose:
        from tqdm.auto import tqdm  # only when a bar is asked for

        bar = tqdm(total=n, desc="Jacobian rows", unit="sample")
    try:
        for g in range(0, len(starts), group):
            mine = starts[g:g + group]
            chunks = [index_inputs(inputs, slice(s, s + chunk_size)) for s in mine]
            parts = map_chunks(_chunk_rows_task, chunks, *func_args, n_jobs=n_jobs,
                               verbose=max(0, verbose - 1))
            for start, part in zip(mine, parts):
                part = rows_of(part, start)
                n_out = part.shape[0] // min(chunk_size, n - start)
                if out is None:
                    out = np.empty((n * n_out, part.shape[1]), dtype=out_dtype)
                out[start * n_out:start * n_out + part.shape[0]] = part
                if bar is not None:
                    bar.update(part.shape[0] // n_out)
            del parts, chunks, part  # the last one too: the next group's rows come next
    finally:
        if bar is not None:
            bar.close()
    return out


def _stored_part(part, outputs, start):
    """The result of a chunk's ``(result, outputs)``, its outputs written into the
    ``(N, C)`` array ``outputs`` from sample ``start`` on."""
    result, chunk_outputs = part
    outputs[start:start + chunk_outputs.shape[0]] = chunk_outputs
    return result


def _chunk_rows_task(x, model, names, projector, plan, work_bytes, with_outputs=False):
    return _chunk_rows(model, names, x, projector, None, plan, work_bytes, with_outputs)


def jacobian_rows(model, inputs, names, *, projector=None, chunk_size, n_jobs=None, verbose=0,
                  jacobian_method="auto", plan=None, work_bytes=None, out_dtype=None,
                  out=None, output=None, outputs=None):
    """Jacobian rows (sample-major, row ``i·C + c``) for parameters ``names``.

    Returns an ``(N·C, D0)`` array if ``projector`` is given, else ``(N·C, Σ d)``.
    ``plan`` (from :func:`resolve_layerwise_plan`) skips the probe when already known;
    ``work_bytes`` bounds the temporaries of one layer on one chunk; ``out_dtype``
    (e.g. float32) stores the rows in one preallocated array of that dtype as the
    chunks arrive (into ``out`` when given: a preallocated array or memmap);
    ``output`` selects the logits in the model's output (:func:`select_logits`);
    ``outputs``, a float64 ``(N, C)`` array, receives the model's outputs (those of the
    layer-wise path's recording passes: no separate forward pass).
    """
    inputs = as_model_inputs(inputs).bind_output(output)
    if plan is None and jacobian_method != "functorch":
        plan = resolve_layerwise_plan(model, inputs, names, jacobian_method)
    if work_bytes is None:
        work_bytes = 256 * 1024**2
    return _parallel_rows(model, names, inputs, projector, chunk_size, n_jobs, verbose, plan,
                          work_bytes, out_dtype if out is None else out.dtype, out, outputs)


def _too_big_for_exact_ntk(name, n_rows, need, budget):
    return MemoryBudgetError(
        f"the exact Jacobian of parameter {name!r} on {n_rows} rows needs "
        f"{format_bytes(need)}, more than the {format_bytes(budget)} of max_memory left "
        "after Θ. "
        "Use a projection (projection='countsketch', projection_dim=2048), raise "
        "max_memory, or fit on a subset with GramSpectrum.")


def group_parameters(named_sizes, n_rows, budget, *, too_big=_too_big_for_exact_ntk):
    """Split parameter tensors into groups whose float64 ``(n_rows, d_group)`` fits ``budget``.

    ``too_big(name, n_rows, need, budget)`` builds the error raised when one tensor
    alone does not fit (callers say what the rows were for and what to do instead).
    """
    groups, current, size = [], [], 0
    for name, d in named_sizes:
        need = n_rows * d * 8
        if need > budget:
            raise too_big(name, n_rows, need, budget)
        if current and (size + d) * n_rows * 8 > budget:
            groups.append(current)
            current, size = [], 0
        current.append(name)
        size += d
    if current:
        groups.append(current)
    return groups


def ntk_from_model(model, inputs, names, *, n_outputs, projection=None, projection_dim=2048,
                   seed=0, chunk_size=None, n_jobs=None, max_memory, verbose=0,
                   jacobian_method="auto", form_ntk=True, rows_dir=None, output=None,
                   min_chunks=MIN_CHUNKS, return_outputs=False, layerwise_plan=None):
    """The empirical NTK Θ (float64, ``(N·C, N·C)``) and, if projected, the projected rows.

    Parameters
    ----------
    model : torch.nn.Module
        In eval mode (the caller's job), never modified.
    inputs : ModelInputs, Tensor or tuple of Tensor
        From :func:`~sktt.gradients.as_inputs`.
    names : list of str
        Trainable parameter names.
    n_outputs : int
        C.
    projection : None or {"achlioptas", "gaussian", "countsketch", "tensorsketch"}
    projection_dim : int
    seed : int
    chunk_size : int or None
        Samples per Jacobian task; None sizes it to the budget.
    n_jobs : int or None
    max_memory : int
        Bytes.
    jacobian_method : {"auto", "layerwise", "functorch"}, default="auto"
        How per-sample gradients are computed (see the module docstring).
    form_ntk : bool, default=True
        False (projected only): return the rows without forming Θ (the
        factored kernel, :class:`sktt.gram.FactoredKernel`). Rows that exceed
        ``max_memory`` then go to a ``numpy.memmap`` (:func:`disk_rows`) instead
        of raising.
    rows_dir : str or None, default=None
        Directory of that memmap (None: the system's temporary directory).
    output : None, str, int or callable, default=None
        Which part of the model's output are the logits (:func:`select_logits`):
        None takes a tensor as is, ``.logits`` of a ``transformers`` output,
        ``["logits"]`` of a dict, element 0 of a tuple.
    min_chunks : int, default=MIN_CHUNKS (8)
        With ``chunk_size=None``, cut the samples into at least this many chunks
        (so that ``n_jobs=1`` and ``2`` chunk alike); 1 for a few samples whose
        per-chunk overhead would dominate (the trust diagnostic's probe).
    return_outputs : bool, default=False
        Also return the model's outputs :math:`f_0`, computed chunk by chunk with
        the rows: the layer-wise path takes them from its recording forward pass
        (no separate pass), the ``torch.func`` path runs one forward per chunk,
        the exact path with its first parameter group. Every extraction of the
        same samples with the same chunks gives the same bits
        (:func:`full_jacobian_rows` too); the batch size of a forward pass
        changes the last bits of its outputs, so they may differ from
        :func:`model_outputs` by round-off.
    layerwise_plan : LayerwisePlan or None, default=None
        What :func:`resolve_layerwise_plan` returned for this ``model`` (its
        module objects), ``names`` and ``jacobian_method``, to skip the probe
        passes that resolve it (the trust diagnostic's probe reuses the fit's
        plan on its copy of the model); None resolves it here.

    Returns
    -------
    ntk : ndarray of shape (N·C, N·C), or None with ``form_ntk=False``
    rows : ndarray of shape (N·C, projection_dim), float32, or None
        The projected rows, stored in float32 (Θ, when formed, is their float64
        product, so the dense and the factored kernel are the same Θ̃).
    outputs : ndarray of shape (N, C), float64
        Only with ``return_outputs=True``.
    """
    inputs = as_model_inputs(inputs).bind_output(output)
    n = n_samples_of(inputs)
    n_rows = n * n_outputs
    if not form_ntk and projection is None:
        raise ValueError("form_ntk=False keeps the projected rows instead of Θ; it needs a "
                         "projection (projection='countsketch', ...).")
    ntk_bytes = n_rows * n_rows * 8 if form_ntk else 0
    if ntk_bytes > max_memory:
        raise MemoryBudgetError(
            f"Θ for N={n} samples × C={n_outputs} outputs is {n_rows}×{n_rows} float64 = "
            f"{format_bytes(ntk_bytes)}, more than max_memory={format_bytes(max_memory)}. "
            "Options: raise max_memory; use a projection with the factored kernel "
            "(projection='countsketch', ntk='factored': the projected rows take "
            f"{format_bytes(n_rows * 4)} per projection dimension and Θ is never formed); "
            "or measure the spectrum on a subset and extrapolate with GramSpectrum.")
    plan = (resolve_layerwise_plan(model, inputs, names, jacobian_method)
            if layerwise_plan is None else layerwise_plan)
    params = dict(model.named_parameters())
    sizes = [(name, params[name].numel()) for name in names]
    n_params = sum(d for _, d in sizes)
    n_jobs = n_jobs_for_work(n_jobs, n_rows * n_params)  # small jobs: workers cost more
    _, dtype = model_device_dtype(model)
    itemsize = torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 4
    budget = max_memory - ntk_bytes
    outputs = np.empty((n, n_outputs)) if return_outputs else None
    if projection is not None:
        rows_bytes = n_rows * projection_dim * 4
        on_disk = not form_ntk and rows_bytes > budget // 2
        if on_disk:  # the rows live in a memmap; memory holds the chunks in flight
            rows_bytes = 0
        # Θ is formed from a float64 copy of the rows, next to Θ and the float32 rows
        copy_bytes = n_rows * projection_dim * 8 if form_ntk else 0
        if rows_bytes + copy_bytes > budget:
            raise MemoryBudgetError(
                f"the projected Jacobian is {n_rows}×{projection_dim} float32 = "
                f"{format_bytes(rows_bytes)}"
                + (f"; with Θ ({format_bytes(ntk_bytes)}) and the float64 copy of the rows "
                   f"Θ is formed from ({format_bytes(copy_bytes)}) it" if ntk_bytes else
                   ", which")
                + f" exceeds max_memory={format_bytes(max_memory)}. Options: lower "
                "projection_dim, raise max_memory"
                + (", use ntk='factored' (Θ never formed)" if ntk_bytes else "")
                + ", or fit on a subset and extrapolate with GramSpectrum.")
        projector = BlockProjector(projection, projection_dim, seed)
        avail = budget - rows_bytes
        chunk_size, work_bytes = _chunk_plan(plan, n, n_outputs, n_params, itemsize, max_memory,
                                             avail, chunk_size, n_jobs, min_chunks=min_chunks,
                                             result_bytes=n_outputs * projection_dim * 8)
        rows = jacobian_rows(model, inputs, names, projector=projector, chunk_size=chunk_size,
                             n_jobs=n_jobs, verbose=verbose, plan=plan, work_bytes=work_bytes,
                             jacobian_method="functorch" if plan is None else jacobian_method,
                             out_dtype=np.float32,
                             out=disk_rows((n_rows, projection_dim), np.float32, rows_dir)
                             if on_disk else None, outputs=outputs)
        ntk = None
        if form_ntk:
            rows64 = rows.astype(np.float64)
            ntk = rows64 @ rows64.T
        return (ntk, rows, outputs) if return_outputs else (ntk, rows)
    if plan is not None:
        ntk = _layerwise_exact(model, inputs, names, plan, n_outputs, n_params, itemsize,
                               max_memory, budget, chunk_size, n_jobs, verbose, min_chunks,
                               outputs=outputs)
    else:
        if chunk_size is None:
            workers = n_workers_for(n_jobs, n)  # concurrent chunks share the budget
            chunk_size = cap_chunk_size(
                plan_chunk_size(n, n_outputs, n_params, itemsize, max_memory // workers), n,
                workers, min_chunks=min_chunks)
        ntk = np.zeros((n_rows, n_rows))
        for k, group in enumerate(group_parameters(sizes, n_rows, budget)):
            rows = jacobian_rows(model, inputs, group, chunk_size=chunk_size, n_jobs=n_jobs,
                                 verbose=verbose, jacobian_method="functorch",
                                 outputs=outputs if k == 0 else None)  # once, with group 0
            ntk += rows @ rows.T
            del rows
    return (ntk, None, outputs) if return_outputs else (ntk, None)


def _chunk_plan(plan, n, n_outputs, n_params, itemsize, max_memory, avail, chunk_size, n_jobs,
                *, min_chunks=MIN_CHUNKS, result_bytes=0):
    """Chunk size and per-layer working memory of one task.

    The layer-wise path keeps one chunk's forward graph and C output gradients
    (measured per sample on the probe) in half of ``avail`` and the temporaries
    of one layer in a quarter, shared among the workers; at least ``min_chunks``
    chunks (:func:`~sktt.gradients._parallel.plan_n_chunks`). ``result_bytes``
    per sample of a chunk's finished result (the projected rows, float64) are
    held for the ``_IN_FLIGHT`` chunks per worker :func:`_parallel_rows` collects
    before writing them: those take at most a quarter of ``avail``.
    """
    workers = n_workers_for(n_jobs, n)
    given = chunk_size is not None
    if plan is None:
        work_bytes = None
        if chunk_size is None:  # concurrent chunks share the budget
            chunk_size = cap_chunk_size(
                plan_chunk_size(n, n_outputs, n_params, itemsize, max_memory // workers), n,
                workers, min_chunks=min_chunks)
    else:
        avail = max(int(avail), 1)
        work_bytes = max(avail // (4 * workers), 1)
        if chunk_size is None:
            per_sample = max(plan.saved_bytes_per_sample, 1)
            chunk_size = int(max(1, min(n, (avail // (2 * workers)) // per_sample)))
            # >= 8 chunks and >= 2 per worker, the same for n_jobs = 1 and 2 (same bits)
            chunk_size = cap_chunk_size(chunk_size, n, workers, min_chunks=min_chunks)
    if not given and result_bytes:
        held = _IN_FLIGHT * workers * result_bytes
        chunk_size = min(chunk_size, max(1, (max(int(avail), 1) // 4) // held))
    return chunk_size, work_bytes


def _chunk_storage_task(x, model, plan, group, modes, work_bytes, with_outputs=False):
    """Stored per-sample gradient representations of one chunk for a parameter group;
    with ``with_outputs``, ``(stored, outputs)``: the recording pass's outputs (n, C) too."""
    device, _ = model_device_dtype(model)
    x = inputs_to(x, device)
    fallback = [name for name in group if name not in plan.uses]
    reps = layerwise_chunk(model, plan, x, names=group)
    jac = chunk_jacobian(model, fallback, x) if fallback else {}
    stored = {}
    for name in group:
        if name in jac:
            g = jac.pop(name)
            stored[name] = Dense(g.reshape(g.shape[0], g.shape[1], -1).to("cpu", torch.float64))
        else:
            stored[name] = to_storage(reps.pop(name), modes[name])
    if with_outputs:
        return _checked_outputs((stored, reps.outputs.to("cpu", torch.float64).numpy()), x)
    return stored


def _layerwise_exact(model, inputs, names, plan, n_outputs, n_params, itemsize, max_memory,
                     budget, chunk_size, n_jobs, verbose, min_chunks=MIN_CHUNKS, outputs=None):
    """Exact Θ from per-layer representations, parameter groups sized to the budget;
    ``outputs`` (N, C), if given, receives the first group's recorded outputs."""
    n = n_samples_of(inputs)
    n_rows = n * n_outputs
    modes, sizes = {}, []
    for name in names:
        mode = exact_mode(plan, name, n, n_outputs) if name in plan.uses else "dense"
        need = storage_bytes(plan, name, n, n_outputs, mode) if name in plan.uses else \
            n_rows * math.prod(plan.shapes[name]) * 8
        if need > budget and mode == "dense" and name in plan.uses and plan.factorable(name):
            mode = "factored"  # fewer bytes, even if more flops
            need = storage_bytes(plan, name, n, n_outputs, mode)
        if need > budget:
            raise MemoryBudgetError(
                f"the exact Jacobian of parameter {name!r} on {n_rows} rows needs "
                f"{format_bytes(need)}, more than max_memory={format_bytes(budget + n_rows**2 * 8)} "
                "allows next to Θ. Use a projection (projection='tensorsketch', "
                "projection_dim=2048), raise max_memory, or fit on a subset with GramSpectrum.")
        modes[name] = mode
        sizes.append((name, need))
    groups, current, used = [], [], 0
    for name, need in sizes:  # greedy groups, each fits half the budget (or one big parameter)
        if current and used + need > budget // 2:
            groups.append(current)
            current, used = [], 0
        current.append(name)
        used += need
    if current:
        groups.append(current)
    largest = max(sum(need for name, need in sizes if name in g) for g in groups)
    avail = max(budget - largest, budget // 8)
    chunk_size, work_bytes = _chunk_plan(plan, n, n_outputs, n_params, itemsize, max_memory,
                                         avail, chunk_size, n_jobs, min_chunks=min_chunks)
    ntk = torch.zeros(n_rows, n_rows, dtype=torch.float64)
    for k, group in enumerate(groups):
        with_outputs = outputs is not None and k == 0
        parts = _parallel_map(_chunk_storage_task,
                              (model, plan, group, modes, work_bytes, with_outputs),
                              inputs, chunk_size, n_jobs, verbose)
        if with_outputs:
            parts = [_stored_part(part, outputs, start)
                     for start, part in zip(range(0, n, chunk_size), parts)]
        for name in group:
            chunk_reps = [p.pop(name) for p in parts]
            if all(isinstance(r, Dense) for r in chunk_reps):
                dense_gram(chunk_reps, ntk)  # chunk by chunk: no concatenated copy
            else:
                rep = concat_storage(chunk_reps)
                if isinstance(rep, Dense):
                    dense_gram([rep], ntk)
                else:
                    factored_gram(rep, ntk, work_bytes=work_bytes)
                del rep
            del chunk_reps
    return ntk.numpy()
