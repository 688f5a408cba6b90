"""All Jacobian rows of a data set, within a memory budget (for ``JacobianFeatures``).

:func:`~sktt.gradients.ntk_from_model` needs only Θ and never holds an exact
``(N·C) × D`` Jacobian; a transformer that *returns* the rows must hold them,
so its budget is the rows themselves plus the chunks being computed. The
chunking, the projection and the per-sample gradient paths are those of
:func:`~sktt.gradients.ntk_from_model`, so ``rows @ rows.T`` is its Θ.
"""

import numpy as np
import torch

from ..exceptions import MemoryBudgetError
from ..utils import format_bytes
from ..utils._torch import model_device_dtype
from ._extraction import _chunk_plan, jacobian_rows, resolve_layerwise_plan
from ._inputs import as_model_inputs, n_samples_of
from ._parallel import n_jobs_for_work
from ._projection import BlockProjector

__all__ = ["full_jacobian_rows"]


def full_jacobian_rows(model, inputs, names, *, n_outputs, projection=None, projection_dim=2048,
                       seed=0, chunk_size=None, n_jobs=None, max_memory, verbose=0,
                       jacobian_method="auto", output=None, return_outputs=False):
    """Sample-major Jacobian rows ``(N·C, D0)`` (projected, float32) or ``(N·C, D)`` (exact, float64).

    Parameters
    ----------
    model : torch.nn.Module
        In eval mode (the caller's job), never modified.
    inputs : ModelInputs, Tensor or tuple of Tensor
    names : list of str
        Trainable parameter names.
    n_outputs : int
        C.
    projection : None or str
        A kind of :data:`~sktt.gradients.PROJECTIONS`; None keeps the exact rows.
    projection_dim : int
    seed : int
    chunk_size : int or None
        Samples per Jacobian task; None sizes it to the budget and the workers.
    n_jobs : int or None
    max_memory : int
        Bytes for the rows and the chunks in flight.
    jacobian_method : {"auto", "layerwise", "functorch"}
    output : None, str, int or callable, default=None
        Which part of the model's output are the logits
        (:func:`~sktt.gradients.select_logits`).
    return_outputs : bool, default=False
        Also return the model's outputs :math:`f_0`, from the extraction's own
        chunks (as :func:`~sktt.gradients.ntk_from_model` computes them).

    Returns
    -------
    rows : ndarray of shape (N·C, D0)
    outputs : ndarray of shape (N, C), float64
        Only with ``return_outputs=True``.

    Raises
    ------
    MemoryBudgetError
        If the rows alone exceed ``max_memory``.
    """
    inputs = as_model_inputs(inputs).bind_output(output)
    n = n_samples_of(inputs)
    n_rows = n * n_outputs
    params = dict(model.named_parameters())
    n_params = sum(params[name].numel() for name in names)
    n_cols = n_params if projection is None else int(projection_dim)
    n_jobs = n_jobs_for_work(n_jobs, n_rows * n_params)  # small jobs: workers cost more
    rows_bytes = n_rows * n_cols * 8
    if rows_bytes > max_memory:
        what = (f"the exact Jacobian rows are {n_rows}×{n_params} (N·C × D parameters)"
                if projection is None else
                f"the projected Jacobian rows are {n_rows}×{n_cols} (N·C × projection_dim)")
        fixes = ("use a projection (projection='countsketch', projection_dim=2048)"
                 if projection is None else "lower projection_dim")
        raise MemoryBudgetError(
            f"for N={n} samples × C={n_outputs} outputs {what} float64 = "
            f"{format_bytes(rows_bytes)}, more than max_memory={format_bytes(max_memory)}. "
            f"Raise max_memory, {fixes}, or transform a subset and extrapolate its spectrum "
            "to N with GramSpectrum.")
    plan = resolve_layerwise_plan(model, inputs, names, jacobian_method)
    _, dtype = model_device_dtype(model)
    itemsize = torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 4
    avail = max(max_memory - rows_bytes, 1)
    chunk_size, work_bytes = _chunk_plan(plan, n, n_outputs, n_params, itemsize, max_memory,
                                         avail, chunk_size, n_jobs)
    projector = None if projection is None else BlockProjector(projection, projection_dim, seed)
    outputs = np.empty((n, n_outputs)) if return_outputs else None
    # projected rows are rounded to float32 as ntk_from_model stores them, so a
    # pipeline and the one-object predictor hold the same kernel
    rows = jacobian_rows(model, inputs, names, projector=projector, chunk_size=chunk_size,
                         n_jobs=n_jobs, verbose=verbose, plan=plan, work_bytes=work_bytes,
                         jacobian_method="functorch" if plan is None else jacobian_method,
                         out_dtype=None if projection is None else np.float32, outputs=outputs)
    return (rows, outputs) if return_outputs else rows
