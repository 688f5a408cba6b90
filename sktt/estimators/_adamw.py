r"""AdamW in the estimator: which mode, and the operands each mode needs (computed lazily).

``TrainingTimePredictor(optimizer="adamw")`` simulates ``torch.optim.AdamW``
on the linearised model (:mod:`sktt.dynamics._adamw`,
:mod:`sktt.dynamics._adamw_kernel`). Neither mode uses the fitted Θ: AdamW is
not a function-space method. What each needs is computed on the first AdamW
prediction, from the model snapshotted at ``fit`` (weights and buffers; the
user's model is never touched), and cached:

``"exact"``
    The exact Jacobian rows :math:`J` (N·C × D, trainable parameters, no
    projection) and :math:`w_0`; AdamW runs on :math:`w` in parameter space,
    exact for the linearised model. Chosen by ``adamw_mode="auto"`` when
    ``N·C·D·8`` bytes fit ``max_memory``.
``"approximate"``
    The frozen diagonal preconditioner :math:`P = 1/(\sqrt{\hat v_0}+\epsilon)`
    with per-layer rescaling. :math:`\hat v_0` is the mean squared gradient of
    the recipe's first ``K = min(n_steps, 8)`` minibatches, from real backward
    passes on a copy of the model; for gradient descent, of ``K`` seeded
    minibatches of 32 samples: with the squares of the one full gradient,
    coordinates whose gradient is near 0 at :math:`w_0` get a huge
    :math:`P_i` and the per-layer rescaling, dominated by them, stalls the
    prediction (measured on the demo convnet: loss 0.69 predicted for 0.018
    real at lr 1e-3), while minibatch noise keeps :math:`\hat v_0` a smoothed
    magnitude, as Adam's running average is after a few steps. The
    per-layer kernels :math:`J_g P J_g^\top` and :math:`J_g P^2 J_g^\top` come
    from the exact rows of a few layers at a time (each call's
    ``N·C·d·8`` bytes within ``max_memory``), so only one layer group's rows
    are ever held. A single layer whose rows exceed the budget raises.
    A layer is the parameters of one module (``"block.0.weight"`` and
    ``"block.0.bias"`` form the group ``"block.0"``).

The mode used is recorded in ``adamw_mode_`` and in the trust report.
"""

import copy
import dataclasses

import numpy as np
import torch

from ..dynamics._adamw_kernel import PreconditionedKernels, adamw_kernels
from ..exceptions import MemoryBudgetError
from ..gradients import index_inputs, jacobian_rows
from ..gradients._inputs import inputs_to
from ..gradients._outputs import call_model
from ..training import torch_loss, torch_targets
from ..utils import format_bytes, parse_memory

__all__ = ["AdamWMixin", "N_CALIBRATION_BATCHES", "snapshot_model"]

#: Minibatches whose squared gradients give v̂0 in the approximate mode.
N_CALIBRATION_BATCHES = 8
#: Their size for a full-batch recipe (see the module docstring: the one full
#: gradient's squares make P blow up on coordinates whose gradient is near 0).
FULL_BATCH_CALIBRATION_SIZE = 32


def snapshot_model(est):
    """A deep copy of ``est.model`` at the ``fit`` snapshot (weights, buffers), in eval mode."""
    state = est._trust_state
    net = copy.deepcopy(est.model)
    named = dict(net.named_parameters(remove_duplicate=False))
    named_buffers = dict(net.named_buffers(remove_duplicate=False))
    with torch.no_grad():
        for n, w in state["weights"].items():
            named[n].copy_(w)
        for n, b in state["buffers"].items():
            named_buffers[n].copy_(b)
    net.eval()
    return net


def exact_rows(est, net, names, inputs=None):
    """Exact Jacobian rows (N·C, Σd) of ``names`` on the fit inputs (or ``inputs``), float64."""
    inputs = est._trust_state["inputs"] if inputs is None else inputs
    rows = jacobian_rows(net, inputs, names, projector=None,
                         chunk_size=est.chunk_size or 64, n_jobs=est.n_jobs,
                         jacobian_method=getattr(est, "jacobian_method", "auto"))
    return np.asarray(rows, dtype=np.float64)


def flat_weights(net, names):
    """The trainable weights of ``net`` flattened in the column order of the rows."""
    named = dict(net.named_parameters(remove_duplicate=False))
    return np.concatenate([named[n].detach().cpu().double().reshape(-1).numpy() for n in names])


def _layers(names):
    """Parameter names grouped by their module (the layer)."""
    layers = {}
    for n in names:
        layers.setdefault(n.rsplit(".", 1)[0] if "." in n else n, []).append(n)
    return layers


class AdamWMixin:
    """AdamW's mode choice and lazily computed operands for :class:`TrainingTimePredictor`."""

    def _adamw_budget(self):
        return parse_memory("max_memory", self.max_memory)

    def _adamw_resolved_mode(self, recipe):
        """``"exact"`` or ``"approximate"`` for this recipe (``"auto"``: exact when J fits)."""
        if recipe.adamw_mode != "auto":
            return recipe.adamw_mode
        need = self.n_samples_ * self.n_outputs_ * self.n_params_ * 8
        return "exact" if need <= self._adamw_budget() else "approximate"

    def _adamw_check_model(self):
        if not self._has_trust_state():
            raise ValueError("optimizer='adamw' needs the model's exact Jacobian rows or real "
                             "gradients; a predictor fitted with model='precomputed' has no "
                             "model. Fit with the torch model instead.")

    def _adamw_operands(self, recipe, held_out=False):
        """``(kernel, problem, mode)`` of an AdamW simulation of ``recipe``; ``held_out=True``
        adds the eval-set rows where :meth:`_adamw_held_out_refusal` allows."""
        self._adamw_check_model()
        mode = self._adamw_resolved_mode(recipe)
        held_out = (held_out and self._has_eval_set()
                    and self._adamw_held_out_refusal(recipe) is None)
        problem = self._problem(recipe, held_out=held_out)
        if mode == "exact":
            rows, w0 = self._adamw_exact()
            problem = dataclasses.replace(problem, rows=rows, w0=w0,
                                          eval_rows=self._adamw_eval_rows() if held_out else None)
            kernel = self._kernel
        else:
            kernel = self._adamw_preconditioned(recipe)
        self.adamw_mode_ = mode
        return kernel, problem, mode

    def _adamw_held_out_refusal(self, recipe, refresh=False):
        """Why AdamW under ``recipe`` predicts no held-out curves (a message), or None.

        Held-out rows move as :math:`F_0 + J_{val}(w - w_0)`: the exact mode's weights
        give them for the price of their exact rows; the approximate mode has no weights.
        """
        if self._adamw_resolved_mode(recipe) != "exact":
            return ("held-out curves with optimizer='adamw' need adamw_mode='exact' (held-out "
                    "rows follow the simulated weights); the approximate mode predicts the "
                    "training rows only. Raise max_memory so the exact Jacobian rows fit, or "
                    "predict on='train'.")
        if refresh:
            return ("refresh_steps / refresh_seconds with optimizer='adamw' resume the training "
                    "rows only; predict held-out curves without the refresh.")
        n_rows = (self.n_samples_ + self.n_eval_samples_) * self.n_outputs_
        need, budget = n_rows * self.n_params_ * 8, self._adamw_budget()
        if need > budget:
            return (f"held-out curves with optimizer='adamw' keep the exact Jacobian rows of the "
                    f"training and held-out samples, (N + N_val)·C·D = {n_rows}·"
                    f"{self.n_params_} float64 = {format_bytes(need)}, more than "
                    f"max_memory={format_bytes(budget)}. Raise max_memory, use a smaller "
                    "eval_set, or predict on='train'.")
        return None

    def _adamw_eval_rows(self):
        """Exact Jacobian rows of the eval-set samples at the fit snapshot (cached)."""
        key = ("adamw", "exact", "eval")
        if key not in self._cache:
            net = snapshot_model(self)
            self._cache[key] = exact_rows(self, net, self._trust_state["names"],
                                          inputs=self._eval_inputs)
        return self._cache[key]

    def _adamw_exact(self):
        """(J, w0): exact Jacobian rows at the fit snapshot (cached), or a budget error."""
        key = ("adamw", "exact")
        if key not in self._cache:
            need = self.n_samples_ * self.n_outputs_ * self.n_params_ * 8
            budget = self._adamw_budget()
            if need > budget:
                raise MemoryBudgetError(
                    f"adamw_mode='exact' keeps the exact Jacobian rows, N·C·D = "
                    f"{self.n_samples_}·{self.n_outputs_}·{self.n_params_} float64 = "
                    f"{format_bytes(need)}, more than max_memory={format_bytes(budget)}. "
                    "Raise max_memory, or use adamw_mode='approximate' (or 'auto').")
            names = self._trust_state["names"]
            net = snapshot_model(self)
            self._cache[key] = (exact_rows(self, net, names), flat_weights(net, names))
        return self._cache[key]

    def _adamw_squared_gradients(self, recipe):
        """v̂0 (D,): mean squared minibatch gradient of the first batches, real backward passes."""
        state = self._trust_state
        names = state["names"]
        k = min(recipe.n_steps, N_CALIBRATION_BATCHES)
        b = recipe.batch_size or min(self.n_samples_, FULL_BATCH_CALIBRATION_SIZE)
        first = recipe.replace(n_steps=k, lr_schedule=None, batch_size=b)
        batches = [b[0] for b in self._batch_sequence(first)] if b < self.n_samples_ \
            else [np.arange(self.n_samples_)]
        net = snapshot_model(self)
        named = dict(net.named_parameters(remove_duplicate=False))
        params = [named[n] for n in names]
        y = torch_targets(self.targets_, self.loss, params[0].dtype, params[0].device)
        loss_fn = torch_loss(self.loss)
        v0 = np.zeros(self.n_params_)
        for idx in batches:
            idx_t = torch.as_tensor(idx, dtype=torch.int64)
            x = index_inputs(state["inputs"], idx_t)
            out = call_model(net, inputs_to(x, params[0].device))
            # a trainable parameter the forward never uses has no gradient: 0, as its rows
            grads = torch.autograd.grad(loss_fn(out, y[idx_t.to(y.device)]), params,
                                        allow_unused=True)
            g = np.concatenate([(torch.zeros_like(p) if gr is None else gr.detach()).cpu()
                                .double().reshape(-1).numpy() for p, gr in zip(params, grads)])
            v0 += g * g
        return v0 / len(batches)

    def _adamw_preconditioned(self, recipe):
        """Per-layer J_g P J_gᵀ, J_g P² J_gᵀ (cached per v̂0's batches and adam_eps)."""
        key = ("adamw", "approximate", recipe.batch_size, recipe.drop_last,
               min(recipe.n_steps, N_CALIBRATION_BATCHES), recipe.adam_eps)
        if key in self._cache:
            return self._cache[key]
        names = self._trust_state["names"]
        v0 = self._adamw_squared_gradients(recipe)
        net = snapshot_model(self)
        named = dict(net.named_parameters(remove_duplicate=False))
        sizes = {n: named[n].numel() for n in names}
        offsets = np.cumsum([0] + [sizes[n] for n in names])
        column = dict(zip(names, offsets[:-1]))
        n_rows = self.n_samples_ * self.n_outputs_
        budget = self._adamw_budget()
        calls, current, size = [], [], 0  # layers whose rows are computed together
        for layer, members in _layers(names).items():
            d = sum(sizes[n] for n in members)
            if n_rows * d * 8 > budget:
                raise MemoryBudgetError(
                    f"AdamW's approximate mode needs the exact Jacobian rows of layer {layer!r} "
                    f"({n_rows} rows × {d} weights = {format_bytes(n_rows * d * 8)}), more than "
                    f"max_memory={format_bytes(budget)}. Raise max_memory or fit on fewer "
                    "samples.")
            if current and (size + d) * n_rows * 8 > budget:
                calls.append(current)
                current, size = [], 0
            current.append((layer, members))
            size += d
        if current:
            calls.append(current)
        kernels = PreconditionedKernels([], [], np.zeros(0), [])
        for call in calls:
            members = [n for _, group in call for n in group]
            rows = exact_rows(self, net, members)
            cols = np.concatenate([np.arange(column[n], column[n] + sizes[n]) for n in members])
            groups, start = [], 0
            for _, group in call:
                d = sum(sizes[n] for n in group)
                groups.append(slice(start, start + d))
                start += d
            precond, square, refs = adamw_kernels(rows, v0[cols], groups, eps=recipe.adam_eps)
            kernels = kernels.add(PreconditionedKernels(precond, square, refs,
                                                        [layer for layer, _ in call]))
            del rows
        self._cache[key] = kernels
        return kernels
