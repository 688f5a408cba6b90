r"""Per-layer rules: per-sample gradients of a module's parameters from its input and
output gradient, and the two forms those gradients are kept in.

A module call maps its input :math:`a` to its output; given the gradient
:math:`\delta` of one output row ``out[i, c]`` with respect to the call's output
(row :math:`r = i\cdot C + c`, positions :math:`p` = sequence or spatial), the
per-sample gradients of its parameters are products of :math:`a` and
:math:`\delta`, as BackPACK / Opacus form them. A rule receives the C output
gradients as the C tensors the backward passes returned (``deltas``): products
of factors stack them into one ``(n, C, ...)`` tensor (:func:`stack_outputs`),
sums over positions reduce each one (:func:`per_output`) and never copy them.

* ``Linear``: :math:`G_r = \sum_p \delta_{rp} \otimes a_{ip}`; bias
  :math:`\sum_p \delta_{rp}`. Any leading axes of the input (a sequence
  ``(B, L, d)``, attention heads) are positions.
* ``Conv1d`` / ``Conv2d``: the same with :math:`a_{ip}` the unfolded input
  patch at output position :math:`p` (any stride, padding, padding mode,
  dilation; ``groups > 1`` formed per group).
* ``Embedding``: :math:`G_r = \sum_p e_{x_{ip}} \otimes \delta_{rp}`.
* ``MultiheadAttention`` (self-attention, packed in-projection): its
  projections are ``F.linear`` calls inside ``F.multi_head_attention_forward``,
  invisible to module hooks. The recorder recomputes the call from explicit
  pieces (in-projection, softmax attention, out-projection) and returns that
  output in place of the module's, so the in-projection is a Linear call on
  :math:`x` (rule for ``in_proj_weight`` / ``in_proj_bias``) and the
  out-projection a Linear call of ``out_proj`` on the attention output.
* ``LayerNorm``, ``RMSNorm``, ``GroupNorm``, ``BatchNorm`` (eval, running
  statistics) and ``InstanceNorm`` affine parameters: :math:`\sum_p
  \delta_{rp} \odot \hat x_{ip}` and :math:`\sum_p \delta_{rp}`.

A sum of outer products is kept *factored* (:class:`Factored`, the two factors
per position) as long as possible: the exact Gram and the tensorsketch of
:math:`G_r` can be computed from the factors without forming :math:`G_r`
(:mod:`._factor_gram`, :mod:`._sketch`). Everything else is :class:`Dense`.

A rule applies only to the stock class's ``forward`` (a subclass that overrides
it computes something else); the plan (:mod:`._layerwise_plan`) checks on a
probe that a rule's parameters are used by its module calls only.
"""

import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Dense", "Factored", "per_output", "rule_for", "stack_outputs", "sum_dense"]


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


def sum_dense(terms):
    """Explicit per-sample gradients ``(n, C, d)`` of a list of representations."""
    total = None
    for t in terms:
        g = t.dense()
        total = g if total is None else total + g
    return total


# --------------------------------------------------------------------------- output gradients
def stack_outputs(deltas):
    """The C output gradients (each ``(n, ...)``) as one ``(n, C, ...)`` tensor (a copy)."""
    return torch.stack(deltas, dim=1)


def per_output(deltas, reduce):
    """``reduce`` of each output gradient ``(n, ...) -> (n, ...)``, stacked on axis 1."""
    return torch.stack([reduce(g) for g in deltas], dim=1)


# --------------------------------------------------------------------------- rules
def _stock(module, *classes):
    """A supported class whose ``forward`` is not overridden by a subclass."""
    return any(isinstance(module, cls) and type(module).forward is cls.forward for cls in classes)


class _LinearRule:
    classes = (nn.Linear,)

    def supports(self, module):
        return _stock(module, nn.Linear)

    def terms(self, module, inputs, deltas, roles):
        x = inputs[0]
        n, n_out = x.shape[0], module.out_features
        out = {}
        if "weight" in roles:
            a = x.reshape(n, 1, -1, module.in_features)
            d = stack_outputs(deltas)
            d = d.reshape(n, d.shape[1], -1, n_out)
            out["weight"] = Factored(d, a.to(d.dtype), n_out)
        if "bias" in roles:
            out["bias"] = Dense(per_output(deltas, lambda g: g.reshape(n, -1, n_out).sum(1)))
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
        # F.unfold's numbers, by one strided copy (im2col was 1.4-3.5x slower on CPU)
        n, c, h, w = x.shape
        out_h = (h - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
        out_w = (w - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
        sn, sc, sh, sw = x.stride()
        windows = x.as_strided((n, c, kernel[0], kernel[1], out_h, out_w),
                               (sn, sc, sh * dilation[0], sw * dilation[1], sh * stride[0],
                                sw * stride[1]))
        return windows.reshape(n, c * kernel[0] * kernel[1], out_h * out_w)

    def terms(self, module, inputs, deltas, roles):
        x = inputs[0]
        n, rows = x.shape[0], len(deltas)
        out = {}
        if "weight" in roles:
            delta = stack_outputs(deltas)
            d = delta.reshape(n, rows, module.out_channels, -1)  # (n, C, out, P)
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
            out["bias"] = Dense(per_output(
                deltas, lambda g: g.reshape(n, module.out_channels, -1).sum(2)))
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

    def terms(self, module, inputs, deltas, roles):
        idx = inputs[0]
        delta = stack_outputs(deltas)
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

    def terms(self, module, inputs, deltas, roles):
        x = inputs[0]
        n = x.shape[0]
        trailing = (len(module.normalized_shape)
                    if isinstance(module, (nn.LayerNorm,) + self._rms) else None)
        shape = deltas[0].shape

        def positions_first(t):  # (n, positions, features)
            if trailing is None:  # channels on axis 1: move them last
                return t.reshape(n, shape[1], -1).transpose(1, 2)
            return t.reshape(n, -1, math.prod(shape[len(shape) - trailing:]))

        out = {}
        if "weight" in roles:
            xh, _ = self.normalized(module, x)
            xh = positions_first(xh).to(deltas[0].dtype)
            out["weight"] = Dense(per_output(deltas, lambda g: (positions_first(g) * xh).sum(1)))
        if "bias" in roles:
            out["bias"] = Dense(per_output(deltas, lambda g: positions_first(g).sum(1)))
        return out

    def positions(self, module, x):
        return 1


_MHA_SIGNATURE = inspect.signature(nn.MultiheadAttention.forward)


class _AttentionRule:
    """``nn.MultiheadAttention`` as two Linear calls around an explicit attention."""

    classes = (nn.MultiheadAttention,)

    def supports(self, module):
        return (_stock(module, nn.MultiheadAttention) and module._qkv_same_embed_dim
                and module.bias_k is None and not module.add_zero_attn
                and not (module.training and module.dropout > 0))

    def owned(self, module):
        """Submodules whose calls this rule records (never called as modules by torch)."""
        return [module.out_proj]

    def record(self, module, args, kwargs, output):
        """Recompute one call explicitly.

        Returns ``(calls, output)``: ``calls`` a list of ``(module, input, output)``
        (batch first) to record, ``output`` what the module returns instead, the
        same values as its own output. None for calls not handled (cross-attention,
        unbatched or nested inputs): their parameters then fall back.
        """
        try:
            bound = _MHA_SIGNATURE.bind(module, *args, **kwargs)
        except TypeError:
            return None
        bound.apply_defaults()
        a = bound.arguments
        query = a["query"]
        if (not (query is a["key"] and query is a["value"]) or not isinstance(query, torch.Tensor)
                or query.is_nested or query.dim() != 3):
            return None
        x = query if module.batch_first else query.transpose(0, 1)
        n, length, dim = x.shape
        heads = module.num_heads
        # The module's own mask conventions: bool True = masked, float = additive.
        kpm = F._canonical_mask(mask=a["key_padding_mask"], mask_name="key_padding_mask",
                                other_type=F._none_or_dtype(a["attn_mask"]),
                                other_name="attn_mask", target_type=x.dtype)
        mask = F._canonical_mask(mask=a["attn_mask"], mask_name="attn_mask", other_type=None,
                                 other_name="", target_type=x.dtype, check_other=False)
        qkv = F.linear(x, module.in_proj_weight, module.in_proj_bias)  # (n, L, 3E)
        q, k, v = qkv.reshape(n, length, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        scores = (q * (dim // heads) ** -0.5) @ k.transpose(-1, -2)  # (n, H, L, L)
        if mask is not None:
            scores = scores + (mask.reshape(n, heads, length, -1) if mask.dim() == 3 else mask)
        if kpm is not None:
            scores = scores + kpm.reshape(n, 1, 1, -1)
        attn = torch.softmax(scores, dim=-1)
        ctx = (attn @ v).transpose(1, 2).reshape(n, length, dim)
        out = F.linear(ctx, module.out_proj.weight, module.out_proj.bias)
        weights = None
        if a["need_weights"]:
            weights = attn.mean(1) if a["average_attn_weights"] else attn
        result = out if module.batch_first else out.transpose(0, 1)
        return [(module, x, qkv), (module.out_proj, ctx, out)], (result, weights)

    def terms(self, module, inputs, deltas, roles):
        x = inputs[0]
        n, dim = x.shape[0], module.embed_dim
        a = x.reshape(n, 1, -1, dim)
        delta = stack_outputs(deltas)
        d = delta.reshape(n, delta.shape[1], -1, 3 * dim)
        out = {}
        if "in_proj_weight" in roles:
            out["in_proj_weight"] = Factored(d, a.to(d.dtype), 3 * dim)
        if "in_proj_bias" in roles:
            out["in_proj_bias"] = Dense(d.sum(2))
        return out

    def positions(self, module, x):
        return x[0].numel() // module.embed_dim


_RULES = (_LinearRule(), _ConvRule(), _EmbeddingRule(), _NormRule(), _AttentionRule())


def rule_for(module):
    for rule in _RULES:
        if isinstance(module, rule.classes) and rule.supports(module):
            return rule
    return None
