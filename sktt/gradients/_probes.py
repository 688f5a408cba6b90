r"""Matrix-free products with the Jacobian at any weights: :math:`J^\top v`, :math:`J u`.

The trust diagnostic (:mod:`sktt.estimators._trust`) needs a few facts about the
kernel :math:`\Theta(w) = J(w) J(w)^\top` at weights other than the pre-trained
ones, without the cost of per-sample Jacobians:

* :math:`J^\top v` (a vector-Jacobian product) is *one* backward pass over the
  data set for a whole ``(N, C)`` cotangent; several cotangents share the forward
  pass (``retain_graph``).
* :math:`J u` (a Jacobian-vector product) uses the double-backward trick
  :math:`J u = \partial_z \langle J^\top z, u\rangle` (autograd only; attention
  through ``scaled_dot_product_attention``'s math backend, the one that is twice
  differentiable).

Hutchinson: :math:`\operatorname{tr}\Theta = E\lVert J^\top v\rVert^2` for
Rademacher :math:`v`; the diagnostic uses the *same* probes at both weights so
that the ratio of the two traces has little variance (exactly 1 when the
Jacobian does not depend on the weights). Rayleigh–Ritz on the top eigenvectors
U of the fitted kernel, :math:`\lambda_{\max}(U^\top\Theta U)`, tracks
:math:`\lambda_{\max}` with vector-Jacobian products only.

Inputs keep their dtype (integer token ids included): only parameters are
differentiated. The model is evaluated with ``torch.func.functional_call`` on
parameter tensors held here, so the user's module is never written to.
"""

import numpy as np
import torch
from torch.func import functional_call

from ._inputs import as_model_inputs
from ._jacobian import math_attention
from ._outputs import select_logits

__all__ = ["JacobianOperator"]


class JacobianOperator:
    """The Jacobian of a model's outputs on a data set, at weights held as tensors.

    Parameters
    ----------
    model : torch.nn.Module
        In the mode to differentiate (sktt uses eval mode; the caller's job).
    names : list of str
        Trainable parameter names (the columns of J).
    inputs : ModelInputs, Tensor or tuple of Tensor
        The data set, first axis = samples, any dtype the model takes.
    chunk_size : int, default=256
        Samples per forward/backward pass.
    params : dict of str to Tensor, optional
        Weights of ``names`` to linearise at; default the model's current ones.
    output : None, str, int or callable, default=None
        Which part of the model's output are the logits
        (:func:`~sktt.gradients.select_logits`).
    """

    def __init__(self, model, names, inputs, *, chunk_size=256, params=None, output=None):
        self.model = model
        self.names = list(names)
        self.inputs = as_model_inputs(inputs).bind_output(output)
        self.chunk_size = int(chunk_size)
        first = next(iter(model.parameters()))
        self.device, self.dtype = first.device, first.dtype
        named = dict(model.named_parameters(remove_duplicate=False))
        if params is None:
            params = {n: named[n] for n in self.names}
        self.params = {n: params[n].detach().to(self.device) for n in self.names}
        exclude = set(self.names)
        self.constants = {n: p.detach() for n, p in named.items() if n not in exclude}
        self.constants.update({n: b for n, b in model.named_buffers(remove_duplicate=False)})
        self.n_samples = self.inputs.n_samples
        self._channels_last = None  # decided on the first chunk (_laid_out)

    # ------------------------------------------------------------------ basics
    def _chunks(self, samples=None):
        """``(index, inputs)`` of consecutive chunks of the samples (of ``samples`` only: an
        increasing index array, each chunk then indexed by an array)."""
        n = self.n_samples if samples is None else len(samples)
        for start in range(0, n, self.chunk_size):
            sl = slice(start, min(start + self.chunk_size, n))
            if samples is not None:
                sl = samples[sl]
            yield sl, self._laid_out(self.inputs[sl].to(self.device))

    def _laid_out(self, x):
        """``x`` in the memory format the passes run in: ``channels_last`` for image inputs
        of a convolutional model on the CPU when it gives the same outputs, as decided on
        the first chunk (:meth:`_prefers_channels_last`); ``x`` as it is otherwise."""
        if self._channels_last is None:
            self._channels_last = self._prefers_channels_last(x)
        return x.channels_last() if self._channels_last else x

    def _prefers_channels_last(self, x):
        """Whether to run the model on channels-last images.

        On the CPU, oneDNN's convolutions and torch's pooling work natively in
        channels-last (NHWC) layout; fed NCHW tensors they reorder at every layer.
        Measured on the convnets of ``benchmarks/bench_scale.py`` and
        ``bench_prediction_cost.py``: a forward/backward pass 12-30 % faster
        (docs/trust.rst). The layout changes strides only, but a model may
        rely on them (``.view`` of a conv output raises), so the first chunk's
        outputs are computed both ways and compared; any error or difference
        beyond float round-off keeps the inputs as they are.
        """
        if (self.device.type != "cpu" or not x.has_images
                or not any(isinstance(m, torch.nn.Conv2d) for m in self.model.modules())):
            return False
        with torch.no_grad():
            reference = self._forward(self.params, x)
            try:
                other = self._forward(self.params, x.channels_last())
            except Exception:  # noqa: BLE001 - any failure on these strides keeps the layout
                return False
        scale = float(reference.abs().max()) if reference.numel() else 0.0
        return (other.shape == reference.shape
                and bool(torch.allclose(other, reference, rtol=1e-3, atol=1e-3 * scale)))

    def _forward(self, params, x):
        raw = functional_call(self.model, {**self.constants, **params}, x.args, x.kwargs)
        return select_logits(raw, self.inputs.output)

    def at(self, params):
        """The same operator linearised at other weights (``{name: tensor}``)."""
        other = object.__new__(JacobianOperator)
        other.__dict__.update(self.__dict__)
        other.params = {n: params[n].detach().to(self.device, self.dtype) for n in self.names}
        return other

    def outputs(self):
        """``f_w(X)`` as a float64 ndarray ``(N, C)``."""
        with torch.no_grad():
            outs = [self._forward(self.params, x).to("cpu", torch.float64)
                    for _, x in self._chunks()]
        return torch.cat(outs).numpy()

    # ------------------------------------------------------------------ products
    def vjp(self, cotangents):
        r""":math:`J^\top v` for each cotangent ``v`` of shape ``(N, C)``.

        All cotangents share one forward pass per chunk (``retain_graph``).
        (A ``vmap`` over ``torch.func.vjp`` would batch the backward passes, but
        its first use imports torch's symbolic-shape machinery, ~5-15 s.)
        Samples whose cotangents are all exactly zero contribute nothing and are
        skipped (an SGD run shorter than an epoch never draws some samples).

        Parameters
        ----------
        cotangents : ndarray of shape (K, N, C) or (N, C)

        Returns
        -------
        list of dict of str to Tensor
            One parameter-shaped dict per cotangent (float64, on the model's device).
        """
        v = np.asarray(cotangents, dtype=np.float64)
        single = v.ndim == 2
        v = v[None] if single else v
        acc = {n: torch.zeros((len(v),) + tuple(p.shape), dtype=torch.float64, device=self.device)
               for n, p in self.params.items()}
        touched = np.flatnonzero(np.any(v != 0, axis=(0, 2)))
        for sl, x in self._chunks(None if len(touched) == self.n_samples else touched):
            cot = torch.as_tensor(v[:, sl], dtype=self.dtype, device=self.device)
            grads = self._loop_vjp(x, cot)
            for n in acc:
                acc[n] += grads[n].to(torch.float64)
        out = [{n: acc[n][k] for n in acc} for k in range(len(v))]
        return out[0] if single else out

    def _loop_vjp(self, x, cot):
        leaves = {n: p.clone().requires_grad_(True) for n, p in self.params.items()}
        out = {n: [] for n in leaves}
        with torch.enable_grad():
            f = self._forward(leaves, x)
            for k in range(len(cot)):
                # a scalar <f, v> rather than grad_outputs=v: the latter makes torch
                # import its symbolic-shape machinery (sympy, ~5 s) on first use
                grads = torch.autograd.grad((f * cot[k]).sum(), list(leaves.values()),
                                            retain_graph=k < len(cot) - 1, allow_unused=True)
                for n, g in zip(leaves, grads):
                    out[n].append(torch.zeros_like(leaves[n]) if g is None else g)
        return {n: torch.stack(gs) for n, gs in out.items()}

    def jvp(self, tangent):
        """:math:`J u` for a parameter-shaped dict ``u``; float64 ndarray ``(N, C)``.

        Uses the double-backward trick rather than forward-mode AD: it works for
        every model that supports backward (forward-mode rules are missing for
        some ops) and avoids torch's slow first-use set-up of forward AD.
        """
        u = {n: tangent[n].to(self.device, self.dtype) for n in self.names}
        outs = [self._double_backward_jvp(x, u).detach().to("cpu", torch.float64)
                for _, x in self._chunks()]
        return torch.cat(outs).numpy()

    def _double_backward_jvp(self, x, u):
        leaves = {n: p.clone().requires_grad_(True) for n, p in self.params.items()}
        # the fused attention kernels (flash, memory-efficient) have no derivative of their
        # backward (nor a forward-mode rule): every transformers model with trainable
        # attention failed here; the math backend is plain matmul/softmax, the same numbers
        with torch.enable_grad(), math_attention():
            f = self._forward(leaves, x)
            z = torch.zeros_like(f, requires_grad=True)
            grads = torch.autograd.grad((f * z).sum(), list(leaves.values()),
                                        create_graph=True, allow_unused=True)
            inner = sum((g * u[n]).sum() for n, g in zip(leaves, grads) if g is not None)
            return torch.autograd.grad(inner, z)[0]
