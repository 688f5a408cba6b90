"""Per-sample Jacobians of a torch model with respect to its trainable parameters.

``torch.func``: a functional call of the model on one sample, ``jacrev`` over the
selected parameters (one vector-Jacobian product per output), ``vmap`` over the
samples of a chunk. Models that ``vmap`` cannot trace (data-dependent Python
control flow, in-place ops on inputs, ``.item()``) fall back to a loop of
``torch.autograd.grad``, which gives the same numbers more slowly.

Attention: ``F.scaled_dot_product_attention`` dispatches to fused kernels
(flash, memory-efficient) that have no ``vmap`` batching rule, so ``vmap``
runs them sample by sample in a loop and warns ("performance drop ...
batching rule") once per attention call, thousands of warnings per fit.
Under ``vmap`` the math backend (matmul, softmax, matmul) is used instead: it
has batching rules and gives the same numbers up to round-off (on one CPU
core, a small ViT's Jacobian took the same time either way, without the
warnings; on GPUs the loop over samples is the slow part).
"""

import contextlib

import torch
from torch.func import functional_call, jacrev, vmap

from ._inputs import as_model_inputs
from ._outputs import select_logits

try:  # torch >= 2.3
    from torch.nn.attention import SDPBackend, sdpa_kernel
except ImportError:  # pragma: no cover - older torch: no backend selection, no fused kernels
    SDPBackend = sdpa_kernel = None

__all__ = ["chunk_jacobian", "math_attention"]


def _constants(model, exclude):
    """Parameters not differentiated here and buffers, detached.

    One name per tensor (``remove_duplicate=True``): ``functional_call`` re-ties
    aliases itself and rejects two values for tied names, and a differentiated
    parameter's aliases must not come back as constants.
    """
    skip = {id(p) for n, p in model.named_parameters() if n in exclude}
    state = {n: p.detach() for n, p in model.named_parameters() if id(p) not in skip}
    state.update(dict(model.named_buffers()))
    return state


def _vmap_jacobian(model, params, constants, x, output):
    def one_sample(p, args, kwargs):
        args = tuple(t.unsqueeze(0) for t in args)
        kwargs = {k: t.unsqueeze(0) for k, t in kwargs.items()}
        raw = functional_call(model, {**constants, **p}, args, kwargs)
        return select_logits(raw, output)[0]

    with math_attention():
        return vmap(jacrev(one_sample), in_dims=(None, 0, 0))(params, x.args, x.kwargs)


def math_attention():
    """Context in which ``scaled_dot_product_attention`` uses its math backend (vmap-friendly)."""
    if sdpa_kernel is None:
        return contextlib.nullcontext()
    return sdpa_kernel(SDPBackend.MATH)


def _loop_jacobian(model, params, constants, x, output):
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    rows = {k: [] for k in params}
    for i in range(x.n_samples):
        xi = x[i:i + 1]
        raw = functional_call(model, {**constants, **leaves}, xi.args, xi.kwargs)
        out = select_logits(raw, output)[0]
        per_output = {k: [] for k in params}
        for c in range(out.shape[0]):
            grads = torch.autograd.grad(out[c], list(leaves.values()), retain_graph=True,
                                        allow_unused=True)
            for (k, v), g in zip(leaves.items(), grads):
                per_output[k].append(torch.zeros_like(v) if g is None else g)
        for k in params:
            rows[k].append(torch.stack(per_output[k]))
    return {k: torch.stack(v) for k, v in rows.items()}


def chunk_jacobian(model, names, x, *, method="auto", output=None):
    """Jacobian of the model outputs on a chunk of samples.

    Parameters
    ----------
    model : torch.nn.Module
        Already in the mode to differentiate (sktt uses eval mode).
    names : list of str
        Parameter names to differentiate.
    x : ModelInputs, Tensor or tuple of Tensor
        A chunk of inputs, first axis = samples, on the model's device.
    method : {"auto", "vmap", "loop"}
        ``"auto"`` tries ``vmap`` and falls back to the loop.
    output : None, str, int or callable, default=None
        Which part of the model's output are the logits
        (:func:`~sktt.gradients.select_logits`); None uses the one bound to ``x``.

    Returns
    -------
    dict of str to Tensor
        For each name, a tensor of shape ``(n, C, *param.shape)``.
    """
    all_params = dict(model.named_parameters())
    params = {n: all_params[n].detach() for n in names}
    constants = _constants(model, set(names))
    x = as_model_inputs(x)
    output = x.output if output is None else output
    if method in ("auto", "vmap"):
        try:
            return _vmap_jacobian(model, params, constants, x, output)
        except (RuntimeError, NotImplementedError):
            # vmap could not trace this model; the loop below gives the same numbers.
            if method == "vmap":
                raise
    with torch.enable_grad():
        return _loop_jacobian(model, params, constants, x, output)
