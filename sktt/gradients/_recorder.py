r"""Recording module calls: one forward and ``C`` backward passes per chunk.

The reference path (:mod:`sktt.gradients._jacobian`) ``vmap``\ s a whole-model
vector-Jacobian product over the samples. The layer-wise path gets the same
numbers from one batched forward pass, whose hooks record the input :math:`a`
of every planned module call, and ``C`` batched backward passes (one per
output, ``out[:, c].sum()``) that record the gradient :math:`\delta` of
``out[i, c]`` with respect to each call's output. Samples are independent in
``eval()`` mode (the plan checks it), so the gradient of the sum is, sample by
sample, the gradient of ``out[i, c]``. These backward passes only propagate to
module outputs: no weight gradient is computed.

The per-layer rules (:mod:`._layer_rules`) then turn each call's
:math:`(a, \delta)` into per-sample gradient representations, lazily and
parameter by parameter (:class:`ChunkGradients`), so that one layer's
temporaries are alive at a time.

Module outputs or inputs that the forward pass later modifies in place are
copied (the plan finds them by version counters on the probe).
"""

import math

import torch

from ._layer_rules import Dense, rule_for

__all__ = ["ChunkGradients", "layerwise_chunk", "probe_forward"]


# --------------------------------------------------------------------------- capture
class _Call:
    """One call of a supported module: its inputs, output and (later) output gradients
    (``delta``: one tensor per model output)."""

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
        rule = rule_for(module)
        if hasattr(rule, "record"):  # a module recomputed from explicit pieces
            return self._record(rule, module, args, kwargs, output)
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

    def _record(self, rule, module, args, kwargs, output):
        recomputed = rule.record(module, args, kwargs, output)
        if recomputed is None:
            return None
        calls, output = recomputed
        for mod, x, y in calls:
            grad_fns = (x.grad_fn,) if x.grad_fn is not None else ()
            x = x.detach()
            if mod in self.clone_inputs:
                x = x.clone()
            self.calls.append(_Call(mod, (x,), y, grad_fns))
        if any(mod in self.clone_outputs for mod, _, _ in calls):
            output = tuple(t.clone() if isinstance(t, torch.Tensor) else t for t in output)
        return output

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


def probe_forward(model, x, modules, count_bytes=False):
    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        # never t itself: a saved output that packs to its own tensor ties the graph and the
        # tensor in a cycle the garbage collector cannot see, and the probe batch leaked
        return t.detach()

    with _Recorder(modules) as rec:
        if count_bytes:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                out = _call_model(model, x)
        else:
            out = _call_model(model, x)
    return out, rec.calls, saved[0]


# --------------------------------------------------------------------------- one chunk
def _backward_deltas(out, calls):
    """Output gradients of every call for every output c: sets ``call.delta``, a list of C
    tensors shaped like the call's output (kept as the backward passes return them: the
    rules stack them only where a product needs it, :mod:`._layer_rules`)."""
    n_out = out.shape[1]
    live = [c for c in calls if c.output.requires_grad]
    for c in calls:
        c.delta = [] if c.output.requires_grad else [torch.zeros_like(c.output)] * n_out
    for k in range(n_out if live else 0):
        g = torch.autograd.grad(out[:, k].sum(), [c.output for c in live],
                                retain_graph=k < n_out - 1, allow_unused=True)
        for gk, call in zip(g, live):
            call.delta.append(torch.zeros_like(call.output) if gk is None else gk)


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
        per call using it (the per-sample gradient is their sum); ``outputs``
        are the model's outputs on the chunk (n, C), detached.
    """
    wanted = set(plan.uses if names is None else [n for n in names if n in plan.uses])
    modules = [m for m in plan.modules
               if any(m is mm for n in wanted for mm, _ in plan.uses[n])]
    # Calls of some modules (an attention's out_proj) are recorded by their owner's hook.
    modules += [o for o in {plan.hook_owner[m] for m in modules if m in plan.hook_owner}
                if o not in modules]
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
    outputs = out.detach()
    del out
    for call in rec.calls:
        call.output = None  # the graph is gone; keep only inputs and output gradients
    return ChunkGradients(rec.calls, {name: plan.uses[name] for name in wanted}, plan.shapes,
                          zeros_like, outputs)


class ChunkGradients:
    """Recorded calls of one chunk; per-parameter representations formed on demand.

    Forming them lazily, parameter by parameter, keeps one layer's unfolded
    patches in memory at a time, and a call's activations and output gradients
    are released as soon as all its parameters have been taken.
    """

    def __init__(self, calls, uses, shapes, zeros_like, outputs=None):
        self.outputs = outputs
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
            rule = rule_for(call.module)
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
