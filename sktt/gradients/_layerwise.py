r"""Per-sample Jacobians layer by layer, from activations and output gradients.

The reference path (:mod:`sktt.gradients._jacobian`) ``vmap``\ s a whole-model
vector-Jacobian product over the samples. This module gets the same numbers
the way BackPACK / Opacus do: one batched forward pass records the input
:math:`a` of every supported module call, and ``C`` batched backward passes
(one per output, ``out[:, c].sum()``) record the gradient :math:`\delta` of
``out[i, c]`` with respect to each call's output. Samples are independent in
``eval()`` mode, so the gradient of the sum is, sample by sample, the gradient
of ``out[i, c]``. These backward passes only propagate to module outputs:
no weight gradient is computed.

Per-sample gradients are then products of :math:`a` and :math:`\delta`
(row :math:`r = i\cdot C + c`, positions :math:`p` = sequence or spatial):

* ``Linear``: :math:`G_r = \sum_p \delta_{rp} \otimes a_{ip}`; bias
  :math:`\sum_p \delta_{rp}`.
* ``Conv1d`` / ``Conv2d``: the same with :math:`a_{ip}` the unfolded input
  patch at output position :math:`p` (any stride, padding, padding mode,
  dilation; ``groups > 1`` formed per group).
* ``Embedding``: :math:`G_r = \sum_p e_{x_{ip}} \otimes \delta_{rp}`.
* ``LayerNorm``, ``RMSNorm``, ``GroupNorm``, ``BatchNorm`` (eval, running
  statistics) and ``InstanceNorm`` affine parameters: :math:`\sum_p
  \delta_{rp} \odot \hat x_{ip}` and :math:`\sum_p \delta_{rp}`.

A factored gradient :math:`\sum_p u_p \otimes v_p` is never formed when that
is cheaper: its exact Gram is
:math:`\langle G_r, G_s\rangle = \sum_{p,p'} (u_{rp}\cdot u_{sp'})(v_{rp}\cdot v_{sp'})`,
and its tensorsketch is :math:`\sum_p \mathrm{CS}_1(u_p) \circledast
\mathrm{CS}_2(v_p)` (FFTs). A cost model picks, per parameter, between these
and forming :math:`G` explicitly.

Parameters without a rule (custom modules, parameters also used outside their
module, e.g. a weight tied into a functional call) fall back to the
``torch.func`` path, per parameter. A parameter shared by several supported
calls (weight tying between modules, a module called twice) gets the sum of
its calls' contributions per sample, before any Gram or sketch.

What the fast path assumes, and checks on a probe batch before use:

* ``out[i]`` depends on sample ``i`` only (no batch statistics in eval mode);
  a model whose first output changes when other samples are added is run by
  the reference path instead;
* each supported module's parameters enter the autograd graph only through
  that module's calls (counted on the graph), otherwise those parameters fall
  back;
* module outputs or inputs modified in place later in the forward pass are
  detected (version counters) and copied.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ChunkGradients", "LayerwisePlan", "layerwise_chunk", "plan_layerwise",
           "projected_rows"]

# --------------------------------------------------------------------------- cost model
# Seconds per unit measured on one core of a Xeon (float32, one thread):
# a multiply-add in a batched matmul, one element of an explicit count-sketch
# (index_add, memory bound), one sketched element of an FFT row (count-sketch +
# rfft + product + irfft, per output coordinate). Only their ratios matter.
_SEC_MAC = 1 / 30e9
_SEC_SKETCH = 4.5e-9
_SEC_FFT = 8e-9


# --------------------------------------------------------------------------- representations
class Dense:
    """Per-sample gradients of one parameter, explicit: ``g`` of shape ``(n, C, d)``."""

    def __init__(self, g):
        self.g = g

    def take(self, sl):
        return Dense(self.g[sl])

    def dense(self):
        return self.g


class Factored:
    r"""Per-sample gradients :math:`G_{ic} = \sum_p \mathrm{left}_{icp} \otimes \mathrm{right}_{icp}`.

    ``left`` is ``(n, 1 or C, P, d1)`` (a size-1 axis is shared by the C rows of a
    sample) or int64 ``(n, 1, P)``: indices of one-hot factors of length ``d1``
    (embeddings). ``right`` is ``(n, 1 or C, P, d2)``. ``G`` is the
    ``(d1, d2)`` matricisation of the parameter (first axis, the rest).
    """

    def __init__(self, left, right, d1):
        self.left = left
        self.right = right
        self.d1 = int(d1)

    @property
    def is_index(self):
        return not self.left.is_floating_point()

    def take(self, sl):
        return Factored(self.left[sl], self.right[sl], self.d1)

    def dense(self):
        left, right = self.left, self.right
        n, n_pos, d2 = right.shape[0], right.shape[2], right.shape[3]
        rows = max(left.shape[1], right.shape[1])
        if self.is_index:
            out = torch.zeros(n, rows, self.d1, d2, dtype=right.dtype, device=right.device)
            idx = left[:, :1, :, None].expand(n, rows, n_pos, d2)
            out.scatter_add_(2, idx, right.expand(n, rows, n_pos, d2))
            return out.reshape(n, rows, -1)
        if left.shape[1] == rows and right.shape[1] == 1:  # Linear / Conv: one bmm for all C
            lt = left.permute(0, 1, 3, 2).reshape(n, rows * self.d1, n_pos)
            return torch.bmm(lt, right[:, 0]).reshape(n, rows, -1)
        return torch.matmul(left.transpose(-1, -2), right).reshape(n, rows, -1)


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


def sum_dense(terms):
    """Explicit per-sample gradients ``(n, C, d)`` of a list of representations."""
    total = None
    for t in terms:
        g = t.dense()
        total = g if total is None else total + g
    return total


# --------------------------------------------------------------------------- rules
def _stock(module, *classes):
    """A supported class whose ``forward`` is not overridden by a subclass."""
    return any(isinstance(module, cls) and type(module).forward is cls.forward for cls in classes)


def _sum_positions(t, keep_from):
    """Sum ``t`` (n, C, ...) over axes 2 .. keep_from-1 (positions), keeping the rest."""
    axes = tuple(range(2, keep_from))
    return t.sum(axes) if axes else t


class _LinearRule:
    classes = (nn.Linear,)

    def supports(self, module):
        return _stock(module, nn.Linear)

    def factors(self, module, x, delta):
        n = x.shape[0]
        a = x.reshape(n, 1, -1, module.in_features)
        d = delta.reshape(n, delta.shape[1], -1, module.out_features)
        return a, d

    def terms(self, module, inputs, delta, roles):
        a, d = self.factors(module, inputs[0], delta)
        out = {}
        if "weight" in roles:
            out["weight"] = Factored(d, a.to(d.dtype), module.out_features)
        if "bias" in roles:
            out["bias"] = Dense(d.sum(2))
        return out

    def positions(self, module, x):
        return x[0].numel() // module.in_features


class _ConvRule:
    classes = (nn.Conv1d, nn.Conv2d)

    def supports(self, module):
        return _stock(module, nn.Conv1d, nn.Conv2d)

    def patches(self, module, x):
        """Unfolded input ``(n, in·k, P)``, in the weight's (in, k...) order."""
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        pad = module._reversed_padding_repeated_twice
        if any(pad):
            x = F.pad(x, pad, mode=mode)
        if isinstance(module, nn.Conv1d):
            x = x.unsqueeze(2)
            kernel, dilation, stride = ((1, module.kernel_size[0]), (1, module.dilation[0]),
                                        (1, module.stride[0]))
        else:
            kernel, dilation, stride = module.kernel_size, module.dilation, module.stride
        return F.unfold(x, kernel, dilation=dilation, padding=0, stride=stride)

    def terms(self, module, inputs, delta, roles):
        x = inputs[0]
        n, rows = delta.shape[:2]
        d = delta.reshape(n, rows, module.out_channels, -1)  # (n, C, out, P)
        out = {}
        if "weight" in roles:
            patches = self.patches(module, x).to(delta.dtype)  # (n, in·k, P)
            g = module.groups
            if g == 1:
                out["weight"] = Factored(d.transpose(2, 3), patches.transpose(1, 2)[:, None],
                                         module.out_channels)
            else:
                pg = patches.reshape(n, g, -1, patches.shape[-1])
                dg = d.reshape(n, rows, g, module.out_channels // g, -1)
                w = torch.einsum("ncgop,ngkp->ncgok", dg, pg)
                out["weight"] = Dense(w.reshape(n, rows, -1))
        if "bias" in roles:
            out["bias"] = Dense(d.sum(3))
        return out

    def positions(self, module, x):
        return self.patches(module, x[:1]).shape[-1]


class _EmbeddingRule:
    classes = (nn.Embedding,)

    def supports(self, module):
        # max_norm renormalises the weight in place during forward; scale_grad_by_freq
        # makes a sample's gradient depend on the batch.
        return (_stock(module, nn.Embedding) and module.max_norm is None
                and not module.scale_grad_by_freq)

    def terms(self, module, inputs, delta, roles):
        idx = inputs[0]
        n, rows = delta.shape[:2]
        idx = idx.reshape(n, 1, -1)
        d = delta.reshape(n, rows, idx.shape[-1], module.embedding_dim)
        if module.padding_idx is not None:  # the padding row receives no gradient
            d = d * (idx != module.padding_idx).unsqueeze(-1).to(d.dtype)
        return {"weight": Factored(idx, d, module.num_embeddings)}

    def positions(self, module, x):
        return x[0].numel()


class _NormRule:
    """Affine parameters of normalisation layers: weight ⊙ x̂ + bias, per channel/feature."""

    _rms = (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()
    classes = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm,
               nn.modules.instancenorm._InstanceNorm) + _rms

    def supports(self, module):
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            # Running statistics in eval mode keep samples independent.
            return (type(module).forward is nn.modules.batchnorm._BatchNorm.forward
                    and module.running_mean is not None and not module.training)
        if isinstance(module, nn.modules.instancenorm._InstanceNorm):
            return type(module).forward is nn.modules.instancenorm._InstanceNorm.forward
        return _stock(module, *[c for c in self.classes if c not in (
            nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)])

    def normalized(self, module, x):
        """x̂ and the number of trailing axes the affine parameters cover."""
        if isinstance(module, nn.LayerNorm):
            return F.layer_norm(x, module.normalized_shape, None, None, module.eps), \
                len(module.normalized_shape)
        if hasattr(nn, "RMSNorm") and isinstance(module, nn.RMSNorm):
            eps = module.eps
            return F.rms_norm(x, module.normalized_shape, None, eps), len(module.normalized_shape)
        if isinstance(module, nn.GroupNorm):
            xh = F.group_norm(x, module.num_groups, None, None, module.eps)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            xh = F.batch_norm(x, module.running_mean, module.running_var, None, None, False, 0.0,
                              module.eps)
        else:
            use_input_stats = module.training or not module.track_running_stats
            xh = F.instance_norm(x, module.running_mean, module.running_var, None, None,
                                 use_input_stats, 0.0, module.eps)
        return xh, None  # channel axis 1

    def terms(self, module, inputs, delta, roles):
        x = inputs[0]
        n, rows = delta.shape[:2]
        trailing = (len(module.normalized_shape)
                    if isinstance(module, (nn.LayerNorm,) + self._rms) else None)
        if trailing is None:  # channels on axis 1: move them last
            d = delta.reshape(n, rows, delta.shape[2], -1).transpose(2, 3)
        else:
            feat = math.prod(delta.shape[delta.ndim - trailing:])
            d = delta.reshape(n, rows, -1, feat)
        out = {}
        if "weight" in roles:
            xh, _ = self.normalized(module, x)
            if trailing is None:
                xh = xh.reshape(n, 1, xh.shape[1], -1).transpose(2, 3)
            else:
                xh = xh.reshape(n, 1, -1, d.shape[-1])
            out["weight"] = Dense((d * xh.to(d.dtype)).sum(2))
        if "bias" in roles:
            out["bias"] = Dense(d.sum(2))
        return out

    def positions(self, module, x):
        return 1


_RULES = (_LinearRule(), _ConvRule(), _EmbeddingRule(), _NormRule())


def _rule_for(module):
    for rule in _RULES:
        if isinstance(module, rule.classes) and rule.supports(module):
            return rule
    return None


# --------------------------------------------------------------------------- capture
class _Call:
    """One call of a supported module: its inputs, output and (later) output gradients."""

    __slots__ = ("module", "inputs", "in_grad_fns", "output", "in_versions", "out_version",
                 "delta")

    def __init__(self, module, inputs, output, in_grad_fns=()):
        self.module = module
        self.inputs = inputs
        self.in_grad_fns = in_grad_fns
        self.output = output
        self.in_versions = [t._version for t in inputs]
        self.out_version = output._version
        self.delta = None


class _Recorder:
    """Forward hooks on the planned modules, recording each call."""

    def __init__(self, modules, clone_inputs=(), clone_outputs=()):
        self.modules = modules
        self.clone_inputs = set(clone_inputs)
        self.clone_outputs = set(clone_outputs)
        self.calls = []
        self.handles = []

    def _hook(self, module, args, kwargs, output):
        x = args[0] if args else kwargs.get("input")
        if not isinstance(x, torch.Tensor) or not isinstance(output, torch.Tensor):
            return None
        grad_fns = (x.grad_fn,) if x.grad_fn is not None else ()
        x = x.detach()
        if module in self.clone_inputs:
            x = x.clone()
        self.calls.append(_Call(module, (x,), output, grad_fns))
        if module in self.clone_outputs:
            return output.clone()  # later in-place ops act on the copy, not on our output
        return None

    def __enter__(self):
        for m in self.modules:
            self.handles.append(m.register_forward_hook(self._hook, with_kwargs=True,
                                                        prepend=True))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles = []
        return False


def _call_model(model, x):
    from ._outputs import call_model  # any input container, the logits selector bound to x

    return call_model(model, x)


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

    def sketchable(self, name):
        """Whether every term of the parameter's per-sample gradient is Factored."""
        uses = self.uses.get(name, ())
        return bool(uses) and all(
            isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)) and role == "weight"
            and getattr(m, "groups", 1) == 1 for m, role in uses)

    def factorable(self, name):
        """Sketchable, and its terms concatenate into one Factored (no one-hot/dense mix)."""
        kinds = {isinstance(m, nn.Embedding) for m, _ in self.uses.get(name, ())}
        return self.sketchable(name) and len(kinds) == 1

    def is_index(self, name):
        uses = self.uses.get(name, ())
        return bool(uses) and all(isinstance(m, nn.Embedding) for m, _ in uses)


def _probe_forward(model, x, modules, count_bytes=False):
    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t

    with _Recorder(modules) as rec:
        if count_bytes:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                out = _call_model(model, x)
        else:
            out = _call_model(model, x)
    return out, rec.calls, saved[0]


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
        rule = _rule_for(module)
        if rule is None:
            continue
        roles = [(role, p) for role, p in module._parameters.items()
                 if p is not None and id(p) in name_of]
        if roles:
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
        out, calls, _ = _probe_forward(model, probe, plan.modules)
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != n_probe:
            plan.usable = False
            plan.reason = "the model's output is not an (n_samples, n_outputs) tensor"
            return plan
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
            rule = _rule_for(call.module)
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
            out, calls, saved = _probe_forward(model, x, plan.modules, count_bytes=True)
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


# --------------------------------------------------------------------------- one chunk
def _backward_deltas(out, calls):
    """Output gradients of every call for every output c: sets ``call.delta`` (n, C, ...)."""
    n_out = out.shape[1]
    live = [c for c in calls if c.output.requires_grad]
    for c in calls:
        if not c.output.requires_grad:
            c.delta = torch.zeros(c.output.shape[0], n_out, *c.output.shape[1:],
                                  dtype=c.output.dtype, device=c.output.device)
    if not live:
        return
    grads = [[] for _ in live]
    for k in range(n_out):
        g = torch.autograd.grad(out[:, k].sum(), [c.output for c in live],
                                retain_graph=k < n_out - 1, allow_unused=True)
        for store, gk, call in zip(grads, g, live):
            store.append(torch.zeros_like(call.output) if gk is None else gk)
    for call, store in zip(live, grads):
        call.delta = torch.stack(store, dim=1)


def layerwise_chunk(model, plan, x, *, names=None):
    """Per-sample gradient representations of one chunk.

    Parameters
    ----------
    model : torch.nn.Module
        In eval mode.
    plan : LayerwisePlan
    x : Tensor or tuple of Tensor
        A chunk of inputs on the model's device.
    names : list of str, optional
        Restrict to these layer-wise parameters (a memory group).

    Returns
    -------
    ChunkGradients
        ``pop(name)`` gives, for each layer-wise parameter, one representation
        per call using it (the per-sample gradient is their sum).
    """
    wanted = set(plan.uses if names is None else [n for n in names if n in plan.uses])
    modules = [m for m in plan.modules
               if any(m is mm for n in wanted for mm, _ in plan.uses[n])]
    n = (x[0] if isinstance(x, tuple) else x).shape[0]
    with torch.enable_grad():
        with _Recorder(modules, plan.clone_inputs, plan.clone_outputs) as rec:
            out = _call_model(model, x)
        for call in rec.calls:
            if call.output.shape[:1] != (n,) or call.inputs[0].shape[:1] != (n,):
                raise RuntimeError(
                    f"module {type(call.module).__name__} was called on a tensor whose first axis "
                    f"({tuple(call.inputs[0].shape)}) is not the {n} samples of the chunk; use "
                    "jacobian_method='functorch' for this model.")
        _backward_deltas(out, rec.calls)
    zeros_like = (n, out.shape[1], out.dtype, out.device)
    del out
    for call in rec.calls:
        call.output = None  # the graph is gone; keep only inputs and output gradients
    return ChunkGradients(rec.calls, {name: plan.uses[name] for name in wanted}, plan.shapes,
                          zeros_like)


class ChunkGradients:
    """Recorded calls of one chunk; per-parameter representations formed on demand.

    Forming them lazily, parameter by parameter, keeps one layer's unfolded
    patches in memory at a time, and a call's activations and output gradients
    are released as soon as all its parameters have been taken.
    """

    def __init__(self, calls, uses, shapes, zeros_like):
        self._shapes = shapes
        self._zeros_like = zeros_like
        self._uses = {}
        self._pending = {}
        for name, module_roles in uses.items():
            self._uses[name] = []
            for module, role in module_roles:
                for call in calls:
                    if call.module is module:
                        self._uses[name].append((call, role))
                        self._pending.setdefault(id(call), set()).add(role)

    def __contains__(self, name):
        return name in self._uses

    def pop(self, name):
        """Representations of parameter ``name`` (list of Dense / Factored)."""
        reps = []
        for call, role in self._uses.pop(name):
            rule = _rule_for(call.module)
            reps.extend(rule.terms(call.module, call.inputs, call.delta, {role: name}).values())
            pending = self._pending[id(call)]
            pending.discard(role)
            if not pending:  # every parameter of this call is done
                call.inputs, call.delta = None, None
        if not reps:  # its module was not called on this chunk: zero gradients
            n, n_out, dtype, device = self._zeros_like
            d = math.prod(self._shapes[name])
            reps.append(Dense(torch.zeros(n, n_out, d, dtype=dtype, device=device)))
        return reps


# --------------------------------------------------------------------------- consumers
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
        projector.project(block, g.reshape(-1, d), target, shape=shape)
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

    Samples are taken in sub-chunks whose temporaries fit ``work_bytes``.
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


def projected_rows(model, plan, names, x, projector, work_bytes, fallback_jacobian):
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
    return acc.to("cpu", torch.float64).numpy()


# --------------------------------------------------------------------------- exact Gram
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
