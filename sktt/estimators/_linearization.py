r"""Re-linearise a fitted predictor's model at other weights.

Both open-loop stages (:mod:`sktt.estimators._relinearize`: weights the
linearised model predicts) and the closed-loop refresh
(:mod:`sktt.estimators._refresh`: weights reached by real steps) continue a
prediction from a point :math:`w` other than :math:`w_0`. What the simulation
needs there is computed exactly as ``fit`` computed it at :math:`w_0`:

* the outputs :math:`F = f_w(X)` (eval mode),
* the kernel :math:`\Theta(w) = J(w) J(w)^\top` with the same projection and
  seed (so a model linear in its parameters gets the same Θ to round-off),
* Jacobian-vector products :math:`J(w)\,u` for parameter-space vectors:
  the momentum buffer (:math:`A = J\,\mathrm{buf}`, the function-space buffer
  the discrete solver resumes with) and, with weight decay, the weights
  themselves (the anchor :math:`\Phi = J w`), one double-backward pass each.
"""

import copy

import torch

from ..gradients import ntk_from_model
from ..gradients._probes import JacobianOperator
from ..gram import DenseKernel, FactoredKernel
from ..utils import parse_memory
from ._extraction_params import extraction_kwargs

__all__ = ["Linearization", "linearize_at", "model_at", "set_weights"]


class Linearization:
    """The linearised model at one point: outputs, kernel, and the Jacobian operator there.

    Attributes
    ----------
    outputs : ndarray of shape (N, C)
        (N + N_eval, C) with held-out rows (train first).
    kernel : DenseKernel or FactoredKernel
        Θ(w) as the fit's kernel operator (dense with the cross-kernel Θ(train,
        eval) when held-out rows are asked for; factored rows when the fit kept
        rows, ``ntk_mode_="factored"``).
    operator : JacobianOperator
        :math:`J(w)` (``vjp``, ``jvp``, ``at``), on the same rows as ``outputs``.
    """

    def __init__(self, outputs, kernel, operator):
        self.outputs = outputs
        self.kernel = kernel
        self.operator = operator

    def apply(self, tangent):
        """:math:`J(w)\\,u` for a parameter-shaped dict ``u``, flattened (N·C,), float64."""
        return self.operator.jvp(tangent).ravel()

    @property
    def trace(self):
        return self.kernel.trace()


def model_at(est):
    """A deep copy of ``est``'s model carrying the fit snapshot's buffers, in eval mode."""
    state = est._trust_state
    model = copy.deepcopy(est.model)
    named_buffers = dict(model.named_buffers(remove_duplicate=False))
    with torch.no_grad():
        for n, b in state["buffers"].items():
            named_buffers[n].copy_(b)
    set_weights(model, state["weights"])
    return model.eval()


def set_weights(model, weights):
    """Copy ``{name: tensor}`` into ``model``'s parameters (cast to their dtype), in place."""
    named = dict(model.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for n, w in weights.items():
            named[n].copy_(w)


def linearize_at(est, model, *, held_out=False):
    """Outputs, kernel and Jacobian operator of ``model`` (at its current weights).

    Parameters
    ----------
    est : TrainingTimePredictor
        Fitted; its projection, seed, chunking and memory budget are reused.
    model : torch.nn.Module
        In eval mode at the weights to linearise at; not modified.
    held_out : bool, default=False
        Also the eval-set rows (outputs, operator rows after the training rows,
        and the cross-kernel), as ``fit(eval_set=...)`` computed them.

    Returns
    -------
    Linearization
    """
    state = est._trust_state
    extraction = extraction_kwargs(est, n_outputs=est.n_outputs_,
                                   projection=getattr(est, "projection_", est.projection),
                                   seed=est.seed_,
                                   max_memory=parse_memory("max_memory", est.max_memory))
    rows = state["inputs"]
    factored = getattr(est, "ntk_mode_", "dense") == "factored"
    if held_out:
        from ._eval_set import concat_inputs, joint_ntk, joint_rows  # fit's joint extraction

        if factored:
            train_rows, eval_rows, outputs = joint_rows(model, state["inputs"],
                                                        est._eval_inputs, state["names"],
                                                        **extraction)
            kernel = FactoredKernel(train_rows, est.n_outputs_, eval_rows=eval_rows)
        else:
            ntk, _, cross, outputs = joint_ntk(model, state["inputs"], est._eval_inputs,
                                               state["names"], **extraction)
            kernel = DenseKernel(ntk, est.n_outputs_, cross=cross)
        rows = concat_inputs(state["inputs"], est._eval_inputs)
    else:
        ntk, jacobian_rows, outputs = ntk_from_model(
            model, state["inputs"], state["names"],
            form_ntk=not factored, return_outputs=True, **extraction)
        kernel = est._make_kernel(ntk, jacobian_rows, est.n_outputs_)
    operator = JacobianOperator(model, state["names"], rows, chunk_size=est.chunk_size or 256)
    return Linearization(outputs, kernel, operator)
