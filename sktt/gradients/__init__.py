"""Per-sample Jacobians (torch.func), random projections, chunking and joblib workers.

The only subpackage (with :mod:`sktt.datasets` and :mod:`sktt.validation`) that
imports torch.
"""

from ._extraction import (JACOBIAN_METHODS, first_outputs, group_parameters, jacobian_rows,
                          model_outputs, ntk_from_model, plan_chunk_size,
                          resolve_layerwise_plan)
from ._inputs import ModelInputs, as_inputs, index_inputs, inputs_to, n_samples_of
from ._jacobian import chunk_jacobian
from ._outputs import call_model, select_logits
from ._projection import PROJECTIONS, BlockProjector
from ._auto_projection import resolve_projection
from ._residual import residual_sq_norm

__all__ = [
    "JACOBIAN_METHODS",
    "PROJECTIONS",
    "BlockProjector",
    "ModelInputs",
    "as_inputs",
    "call_model",
    "chunk_jacobian",
    "first_outputs",
    "index_inputs",
    "inputs_to",
    "group_parameters",
    "jacobian_rows",
    "model_outputs",
    "n_samples_of",
    "ntk_from_model",
    "plan_chunk_size",
    "resolve_layerwise_plan",
    "resolve_projection",
    "residual_sq_norm",
    "select_logits",
]
