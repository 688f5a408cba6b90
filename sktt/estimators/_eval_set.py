r"""Held-out curves: the validation loss and error of the linearised model, and its best step.

With ``fit(X, y, eval_set=(X_val, y_val))`` the predictor also keeps, once,

* the held-out outputs at the pre-trained weights :math:`F_{val,0} = f_{w_0}(X_{val})`;
* the cross-kernel :math:`\Theta(\text{train}, \text{val}) = J_{train} J_{val}^\top`
  (shape ``(N·C, N_val·C)``), from the *same* Jacobian extraction as Θ: the
  training and held-out rows are extracted together (:func:`joint_ntk`), so an
  exact Θ gives an exact cross-kernel and a projected Θ uses the same
  projection and seed for both.

Held-out rows are extra outputs of the linearised model that never enter a
batch. Under the recipe's update (:mod:`sktt.dynamics._discrete`) they move with
the training rows' gradients through the cross-kernel,

.. math::

    U_{val} = \Theta(\text{val}, B)\,\nabla_{F_B} L_B + \lambda\,(F_{val} - F_{val,0}
    + J_{val} w_0), \qquad A_{val} \leftarrow m A_{val} + (1-\tau) U_{val}, \qquad
    F_{val} \leftarrow F_{val} - \eta_t A_{val},

so for a model linear in its parameters the predicted held-out loss equals real
training's at every step (to round-off). Which solvers support it:
``"discrete"`` (exact) and ``"ode"`` (gradient flow, LSODA); ``"sde"`` does not —
its noise factor is a factor of the *training* rows' gradient covariance, and
the held-out rows' share of the same noise (a cross-covariance through the
cross-kernel) is not modelled, so it refuses rather than give held-out curves
without their noise.

:meth:`EvalSetMixin.predict_best_step` is the predicted early-stopping point:
the first step of the lowest mean held-out loss (or error) over the simulated
paths.
"""

import numpy as np
import torch
from sklearn.utils import Bunch

from ..dynamics import check_targets
from ..exceptions import MemoryBudgetError, NotFittedError
from ..gradients import as_inputs, ntk_from_model
from ..gradients._inputs import (ConcatInputs, ModelInputs, as_model_inputs, inputs_to,
                                length_hint, n_samples_of)
from ..utils import format_bytes

__all__ = ["EvalSetMixin", "check_eval_set", "concat_inputs", "joint_ntk", "joint_rows"]

ON = ("train", "eval")


def _as_tuple(inputs):
    """The input tensors, positional then keyword, as ``(name, tensor)`` pairs."""
    return as_model_inputs(inputs).tensors()


def check_eval_set(eval_set, train_inputs, *, loss, n_outputs, float_dtype):
    """Validate ``eval_set=(X_val, y_val)`` against the training inputs and the model.

    Returns
    -------
    inputs : Tensor or tuple of Tensor
        The held-out inputs, converted as ``fit`` converts ``X``.
    targets : ndarray
        Labels (N_val,) for cross-entropy, targets (N_val, C) for MSE.
    """
    if not isinstance(eval_set, (tuple, list)) or len(eval_set) != 2:
        got = (f"a {type(eval_set).__name__} of length {len(eval_set)}"
               if isinstance(eval_set, (tuple, list)) else type(eval_set).__name__)
        raise TypeError(f"eval_set must be a pair (X_val, y_val) of held-out inputs and targets; "
                        f"got {got}.")
    X_val, y_val = eval_set
    if y_val is None and not isinstance(X_val, (torch.utils.data.Dataset,
                                                torch.utils.data.DataLoader)):
        raise ValueError("eval_set=(X_val, None): the held-out targets y_val are required "
                         "(None only when X_val is a Dataset or DataLoader of (x, y) pairs).")
    try:
        inputs, y = as_inputs(X_val, y_val, float_dtype=float_dtype)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"eval_set=(X_val, y_val): {exc}") from None
    train, held = _as_tuple(train_inputs), _as_tuple(inputs)
    if len(train) != len(held):
        raise ValueError(f"eval_set: X_val has {len(held)} input tensor(s) but X has "
                         f"{len(train)}; accepted: the same inputs as X.")
    for (name, a), (_, b) in zip(train, held):
        if tuple(a.shape[1:]) != tuple(b.shape[1:]):
            raise ValueError(f"eval_set: X_val has per-sample shape {tuple(b.shape[1:])} but "
                             f"{name} has {tuple(a.shape[1:])}; accepted: held-out inputs shaped "
                             f"like the training inputs.{length_hint(a, b)}")
        if a.is_floating_point() != b.is_floating_point():
            raise TypeError(f"eval_set: X_val has dtype {b.dtype} but X has {a.dtype}; accepted: "
                            "held-out inputs of the training inputs' kind (float or integer).")
    try:
        targets = check_targets(y.detach().cpu().numpy(), loss, n_outputs)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"eval_set: y_val: {exc}") from None
    return inputs, targets


def concat_inputs(a, b):
    """Rows of ``a`` then rows of ``b`` (inputs of the same structure), on ``a``'s device;
    lazily (:class:`~sktt.gradients._inputs.ConcatInputs`) when either is streamed."""
    a, b = as_model_inputs(a), inputs_to(as_model_inputs(b), as_model_inputs(a).device)
    if isinstance(a, ModelInputs) and isinstance(b, ModelInputs):
        return ModelInputs.concat([a, b])
    return ConcatInputs([a, b])


def joint_ntk(model, inputs, eval_inputs, names, *, n_outputs, max_memory, **extraction):
    """Θ on the training rows and the cross-kernel to the held-out rows, from one extraction.

    The training and held-out inputs are extracted together (one call of
    :func:`sktt.gradients.ntk_from_model` on their concatenation), so both use
    the same Jacobian method and, when projected, the same projection and seed.

    Parameters
    ----------
    model : torch.nn.Module
        In eval mode (the caller's job), never modified.
    inputs, eval_inputs : Tensor or tuple of Tensor
    names : list of str
    n_outputs : int
    max_memory : int
        Bytes; the joint kernel ``((N + N_val)·C)²`` float64 must fit.
    **extraction
        ``projection``, ``projection_dim``, ``seed``, ``chunk_size``, ``n_jobs``,
        ``verbose``, ``jacobian_method`` of :func:`ntk_from_model`.

    Returns
    -------
    ntk : ndarray of shape (N·C, N·C)
    rows : ndarray of shape (N·C, D0) or None
        Projected training rows (None for an exact Θ).
    cross : ndarray of shape (N·C, N_val·C)
    outputs : ndarray of shape (N + N_val, C)
        The model's outputs on the training then the held-out samples, from
        the same extraction (``return_outputs`` of :func:`ntk_from_model`).

    Raises
    ------
    MemoryBudgetError
        When the joint kernel does not fit ``max_memory``.
    """
    n, n_val = n_samples_of(inputs), n_samples_of(eval_inputs)
    rows_train, rows_val = n * n_outputs, n_val * n_outputs
    total = (rows_train + rows_val) ** 2 * 8
    if total > max_memory:
        raise MemoryBudgetError(
            f"held-out curves need the cross-kernel Θ(train, eval) of {rows_train}×{rows_val} "
            f"float64 = {format_bytes(rows_train * rows_val * 8)} next to Θ "
            f"({format_bytes(rows_train ** 2 * 8)}); the joint extraction of the N={n} training "
            f"and N_val={n_val} held-out samples (C={n_outputs}) holds "
            f"{rows_train + rows_val}×{rows_train + rows_val} float64 = {format_bytes(total)}, "
            f"more than max_memory={format_bytes(max_memory)}. Raise max_memory, use a smaller "
            "eval_set (a subsample of the validation set), or fit without eval_set.")
    full, rows, outputs = ntk_from_model(model, concat_inputs(inputs, eval_inputs), names,
                                         n_outputs=n_outputs, max_memory=max_memory,
                                         return_outputs=True, **extraction)
    ntk = np.ascontiguousarray(full[:rows_train, :rows_train])
    cross = np.ascontiguousarray(full[:rows_train, rows_train:])
    del full
    return (ntk, None if rows is None else np.ascontiguousarray(rows[:rows_train]), cross,
            outputs)


def joint_rows(model, inputs, eval_inputs, names, *, n_outputs, **extraction):
    """Projected rows of the training and the held-out samples, from one extraction.

    The factored form of :func:`joint_ntk`: the held-out rows are more rows of
    the same projection (same seed), and Θ and the cross-kernel are never formed
    (:class:`sktt.gram.FactoredKernel` with ``eval_rows``).

    Returns
    -------
    rows, eval_rows : ndarray of shape (N·C, D0) and (N_val·C, D0), float32
    outputs : ndarray of shape (N + N_val, C)
        As for :func:`joint_ntk`.
    """
    _, rows, outputs = ntk_from_model(model, concat_inputs(inputs, eval_inputs), names,
                                      n_outputs=n_outputs, form_ntk=False,
                                      return_outputs=True, **extraction)
    split = n_samples_of(inputs) * n_outputs
    return rows[:split], rows[split:], outputs


class EvalSetMixin:
    """Held-out curves of :class:`~sktt.TrainingTimePredictor` (``fit(..., eval_set=...)``).

    Kept apart from the estimator so the core class stays about the training
    curve. Expects the fitted ``eval_f0_`` / ``eval_targets_`` (None without an
    eval set) and the estimator's ``_predicted``.
    """

    def _has_eval_set(self):
        return getattr(self, "eval_f0_", None) is not None

    def _curve_key(self, metric, on, setting):
        """Key of the simulated curves of ``metric`` on the ``on`` rows (validated against
        what ``setting`` can predict)."""
        if on not in ON:
            raise ValueError(f"on={on!r}; accepted: 'train' (the training set) or 'eval' (the "
                             "eval_set given to fit).")
        if on == "train":
            return metric
        if not self._has_eval_set():
            raise NotFittedError("on='eval' needs held-out data: fit with "
                                 "eval_set=(X_val, y_val).")
        refusal = self._held_out_refusal(setting)
        if refusal is not None:
            raise ValueError(refusal)
        return "eval_" + metric

    def _held_out_refusal(self, setting):
        """Why ``setting`` predicts no held-out curves (a message), or None."""
        if setting.recipe.resolved_solver == "sde":
            return ("solver='sde' cannot predict held-out curves: its noise factor covers the "
                    "training rows' gradient noise only, not its share on the held-out rows; "
                    "use solver='discrete' (exact) or 'ode'.")
        if setting.recipe.is_adamw:  # ._adamw: only the exact mode moves held-out rows
            return self._adamw_held_out_refusal(setting.recipe, setting.refresh_active)
        return None

    def predict_best_step(self, metric="loss", **overrides):
        """Predicted early-stopping point: the step of the lowest mean held-out loss or error.

        Parameters
        ----------
        metric : {"loss", "error"}, default="loss"
            Held-out loss (torch's mean units) or error (percent).
        **overrides
            Dynamics parameters for this call only (see :meth:`predict_curve`).

        Returns
        -------
        best : sklearn.utils.Bunch
            ``step`` (int, the first step of the minimum of the predicted mean
            held-out curve over steps 0..n_steps), ``value`` (float, the curve
            there), ``final`` (the curve at ``n_steps``), ``metric``. For SGD
            the curve is the mean over the ``n_paths`` simulated paths.
        """
        self._check_fitted()
        # dynamics parameters only: predict_curve's own options would change what the curve
        # is (steps=[0, 5] made its index 1 "step 1"; return_band a Bunch, not a curve)
        self._setting(overrides)
        curve = self.predict_curve(metric, on="eval", **overrides)
        finite = np.where(np.isfinite(curve), curve, np.inf)
        step = int(np.argmin(finite))
        return Bunch(step=step, value=float(curve[step]), final=float(curve[-1]), metric=metric)
