r"""The layer-wise plan: which parameters have a rule, checked on a probe batch, and the
sizes that the memory and cost models use.

What the fast path assumes, and checks on a probe batch before use:

* ``out[i]`` depends on sample ``i`` only (no batch statistics in eval mode);
  a model whose first output changes when other samples are added is run by
  the reference path instead;
* each supported module's parameters enter the autograd graph only through
  that module's calls (edges counted on the graph), otherwise those
  parameters fall back to ``torch.func``, per parameter;
* every supported call's first axis is the samples axis, at two batch sizes;
* module outputs or inputs modified in place later in the forward pass are
  detected (version counters) and copied.

A parameter shared by several supported calls (weight tying between modules, a
module called twice) gets the sum of its calls' contributions per sample.

For exact Θ, :func:`exact_mode` chooses per parameter between forming
:math:`J` and the factor Gram (:mod:`._factor_gram`) by their flop counts, and
:func:`storage_bytes` gives what either keeps for all samples.
"""

import math

import torch
from torch import nn

from ._layer_rules import rule_for
from ._recorder import _call_model, _Recorder, probe_forward

__all__ = ["LayerwisePlan", "exact_mode", "plan_layerwise", "storage_bytes"]


def _graph_param_edges(root, param_ids, stop=()):
    """Count autograd edges into the AccumulateGrad node of each parameter.

    Traverses from ``root`` (a grad_fn), not past the nodes in ``stop``.
    Returns ``(counts, visited)``.
    """
    counts, visited, stack = {}, set(), [root]
    stop = set(stop)
    while stack:
        node = stack.pop()
        if node is None or node in visited:
            continue
        visited.add(node)
        for nxt, _ in node.next_functions:
            if nxt is None:
                continue
            var = getattr(nxt, "variable", None)
            if var is not None:
                if id(var) in param_ids:
                    counts[id(var)] = counts.get(id(var), 0) + 1
                continue
            if nxt not in stop:
                stack.append(nxt)
    return counts, visited


# --------------------------------------------------------------------------- plan
class LayerwisePlan:
    """Which parameters use which rule, which fall back, and sizes for the cost model.

    Attributes
    ----------
    usable : bool
        False when the model mixes samples in eval mode (then nothing here applies).
    reason : str
        Why not usable, or why parameters fall back.
    uses : dict of str to list of (module, role)
        Parameters computed layer-wise, with the module calls that use them.
    fallback : list of str
        Parameters left to ``torch.func``.
    modules : list of torch.nn.Module
        Modules to hook.
    clone_inputs, clone_outputs : set of torch.nn.Module
    shapes : dict of str to tuple
    positions : dict of str to int
        Positions ``P`` (summed over calls) per sample, per layer-wise parameter.
    saved_bytes_per_sample : int
        Memory of the forward graph and output gradients per sample (probe).
    hook_owner : dict of torch.nn.Module to torch.nn.Module
        Modules whose calls are recorded by another module's hook (an
        attention's ``out_proj``, recorded by the attention).
    n_outputs : int or None
        C, from the probe.
    timing : dict of str to float or None
        Seconds per path on the probe, when ``"auto"`` timed them.
    """

    def __init__(self):
        self.usable = True
        self.reason = ""
        self.uses = {}
        self.fallback = []
        self.modules = []
        self.clone_inputs = set()
        self.clone_outputs = set()
        self.shapes = {}
        self.positions = {}
        self.saved_bytes_per_sample = 0
        self.hook_owner = {}
        self.n_outputs = None
        self.timing = None

    def _weight_role(self, module, role):
        if isinstance(module, nn.MultiheadAttention):
            return role == "in_proj_weight"
        return (isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding))
                and role == "weight" and getattr(module, "groups", 1) == 1)

    def sketchable(self, name):
        """Whether every term of the parameter's per-sample gradient is Factored."""
        uses = self.uses.get(name, ())
        return bool(uses) and all(self._weight_role(m, role) for m, role in uses)

    def factorable(self, name):
        """Sketchable, and its terms concatenate into one Factored (no one-hot/dense mix)."""
        kinds = {isinstance(m, nn.Embedding) for m, _ in self.uses.get(name, ())}
        return self.sketchable(name) and len(kinds) == 1

    def is_index(self, name):
        uses = self.uses.get(name, ())
        return bool(uses) and all(isinstance(m, nn.Embedding) for m, _ in uses)


def _mixing_tol(out):
    """Relative output change above which a model is taken to mix samples.

    Kernels may legitimately differ with the batch size by their round-off:
    float64 ~1e-16, float32 ~1e-7, and on CUDA float32 convolutions run in TF32
    by default (10-bit mantissa, ~1e-3). Mixing through batch statistics
    changes outputs by O(1).
    """
    if out.dtype == torch.float64:
        return 1e-9
    if out.dtype in (torch.float16, torch.bfloat16):
        return 3e-2
    if out.is_cuda and (torch.backends.cudnn.allow_tf32
                        or torch.backends.cuda.matmul.allow_tf32):
        return 3e-2
    return 1e-4


def plan_layerwise(model, names, probe):
    """Inspect ``model`` on a probe batch and decide how each parameter is handled.

    Parameters
    ----------
    model : torch.nn.Module
        In eval mode.
    names : list of str
        Trainable parameter names (as in ``model.named_parameters()``).
    probe : Tensor or tuple of Tensor
        A few samples (2-3) of the inputs, on the model's device.

    Returns
    -------
    LayerwisePlan
    """
    plan = LayerwisePlan()
    params = dict(model.named_parameters())
    name_of = {id(params[n]): n for n in names}
    for module in model.modules():
        rule = rule_for(module)
        if rule is None:
            continue
        roles = [(role, p) for role, p in module._parameters.items()
                 if p is not None and id(p) in name_of]
        for sub in getattr(rule, "owned", lambda m: [])(module):
            plan.hook_owner[sub] = module
        if roles or hasattr(rule, "owned"):
            plan.modules.append(module)
            for role, p in roles:
                plan.uses.setdefault(name_of[id(p)], []).append((module, role))
    for n in names:
        plan.shapes[n] = tuple(params[n].shape)
    if not plan.modules:
        plan.fallback = list(names)
        plan.reason = "no module of the model has a layer-wise rule"
        return plan

    n_probe = (probe[0] if isinstance(probe, tuple) else probe).shape[0]
    with torch.enable_grad():
        out, calls, _ = probe_forward(model, probe, plan.modules)
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != n_probe:
            plan.usable = False
            plan.reason = "the model's output is not an (n_samples, n_outputs) tensor"
            return plan
        plan.n_outputs = out.shape[1]
        # Sample independence: sample 0 alone must give the same outputs as in the batch.
        if n_probe > 1:
            first = probe[:1] if not isinstance(probe, tuple) else tuple(t[:1] for t in probe)
            try:
                with torch.no_grad():
                    alone = _call_model(model, first)
                scale = out.detach().abs().max().clamp_min(1e-30)
                mixes = bool((alone - out.detach()[:1]).abs().max() > _mixing_tol(out) * scale)
            except (RuntimeError, ValueError):  # e.g. batch statistics of a single sample
                mixes = True
            if mixes:
                plan.usable = False
                plan.reason = ("sample 0's outputs change when other samples are in the batch "
                               "(batch statistics in eval mode?)")
                return plan
        # In-place modification of recorded inputs/outputs after the call.
        for call in calls:
            if call.output._version != call.out_version:
                plan.clone_outputs.add(call.module)
            if any(t._version != v for t, v in zip(call.inputs, call.in_versions)):
                plan.clone_inputs.add(call.module)
        # Every use of a parameter in the graph must come from a recorded call.
        param_ids = set(name_of)
        total, visited = (_graph_param_edges(out.grad_fn, param_ids) if out.grad_fn is not None
                          else ({}, set()))
        local = {}
        bad_shape = set()
        for call in calls:
            if call.output.shape[:1] != (n_probe,) or call.inputs[0].shape[:1] != (n_probe,):
                bad_shape.add(call.module)  # the leading axis is not the samples axis
            if call.output.grad_fn is None or call.output.grad_fn not in visited:
                continue
            stop = call.in_grad_fns
            own = {id(p) for p in call.module._parameters.values() if p is not None}
            counts, _ = _graph_param_edges(call.output.grad_fn, own & param_ids, stop)
            for k, v in counts.items():
                local[k] = local.get(k, 0) + v
        if n_probe > 1:  # a second batch size: a first axis that only matched by chance
            first = probe[:1] if not isinstance(probe, tuple) else tuple(t[:1] for t in probe)
            with torch.no_grad(), _Recorder(plan.modules) as rec1:
                try:
                    _call_model(model, first)
                except (RuntimeError, ValueError):
                    pass  # already reported as mixing samples above
            bad_shape.update(c.module for c in rec1.calls
                             if c.output.shape[:1] != (1,) or c.inputs[0].shape[:1] != (1,))
        plan.positions = {}
        for call in calls:
            rule = rule_for(call.module)
            for role, p in call.module._parameters.items():
                if p is not None and id(p) in name_of:
                    n = name_of[id(p)]
                    plan.positions[n] = plan.positions.get(n, 0) + rule.positions(
                        call.module, call.inputs[0])
    fallback, why = [], set()
    for n in names:
        pid = id(params[n])
        mods = {m for m, _ in plan.uses.get(n, ())}
        if n not in plan.uses:
            fallback.append(n)
            why.add("parameters of modules without a rule")
        elif mods & bad_shape:
            fallback.append(n)
            why.add("modules called on tensors whose first axis is not the samples")
        elif total.get(pid, 0) != local.get(pid, 0):
            fallback.append(n)
            why.add("parameters also used outside their module's call")
    plan.fallback = fallback
    for n in fallback:
        plan.uses.pop(n, None)
    keep = {m for uses in plan.uses.values() for m, _ in uses}
    keep |= {plan.hook_owner[m] for m in keep if m in plan.hook_owner}
    plan.modules = [m for m in plan.modules if m in keep]
    plan.reason = "; ".join(sorted(why))
    plan.saved_bytes_per_sample = _bytes_per_sample(model, probe, plan)
    return plan


def _bytes_per_sample(model, probe, plan):
    """Forward-graph bytes per sample (difference of two batch sizes) plus C output gradients."""
    n_probe = (probe[0] if isinstance(probe, tuple) else probe).shape[0]

    def measure(k):
        x = probe[:k] if not isinstance(probe, tuple) else tuple(t[:k] for t in probe)
        with torch.enable_grad():
            out, calls, saved = probe_forward(model, x, plan.modules, count_bytes=True)
        outs = sum(c.output.numel() * c.output.element_size() for c in calls)
        return saved, outs, out.shape[1]

    saved1, outs1, n_out = measure(1)
    if n_probe > 1:
        saved2, outs2, _ = measure(n_probe)
        per_saved = max(saved2 - saved1, 0) / (n_probe - 1)
        per_outs = max(outs2 - outs1, 0) / (n_probe - 1)
    else:
        per_saved, per_outs = saved1, outs1
    return int(per_saved + (n_out + 1) * per_outs)


# --------------------------------------------------------------------------- exact Θ choices
def exact_mode(plan, name, n_samples, n_outputs):
    """``"factored"`` when the factor Gram costs fewer flops than ``J Jᵀ``, else ``"dense"``."""
    if not plan.factorable(name):
        return "dense"
    shape = plan.shapes[name]
    d1, d = shape[0], math.prod(shape)
    d2 = d // max(d1, 1)
    p = plan.positions.get(name, 1)
    nc = n_samples * n_outputs
    dense = nc * p * d + nc * nc * d
    if plan.is_index(name):
        fact = (n_samples * p) ** 2 + (nc * p) ** 2 * (d2 + 2)
    else:
        fact = (n_samples * p) ** 2 * d2 + (nc * p) ** 2 * (d1 + 2)
    return "factored" if fact < dense else "dense"


def storage_bytes(plan, name, n_samples, n_outputs, mode):
    """float64 bytes a parameter's stored representation takes for all samples."""
    shape = plan.shapes[name]
    d = math.prod(shape)
    if mode == "dense":
        return n_samples * n_outputs * d * 8
    d1 = shape[0]
    p = plan.positions.get(name, 1)
    if plan.is_index(name):
        return n_samples * p * (8 + n_outputs * (d // d1) * 8)
    return n_samples * p * (n_outputs * d1 + d // d1) * 8
