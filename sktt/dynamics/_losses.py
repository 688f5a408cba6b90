r"""Losses, their function-space gradients and the train error, in torch's units.

All functions take outputs ``F`` of shape ``(..., n, C)`` (leading axes = paths)
and use torch's default ``reduction="mean"``:

* cross-entropy (``nn.CrossEntropyLoss``):
  :math:`L = \frac1n \sum_i -\log\mathrm{softmax}(F_i)_{y_i}`,
  :math:`\nabla_F L = (\mathrm{softmax}(F) - \mathrm{onehot}(y)) / n`;
* squared error (``nn.MSELoss``):
  :math:`L = \frac{1}{nC}\sum_{ic}(F_{ic}-Y_{ic})^2`,
  :math:`\nabla_F L = 2 (F - Y)/(nC)`.

The train error is ``100 · mean(argmax F ≠ label)`` in percent, the label being
``y`` for cross-entropy and ``argmax Y`` for squared error (one-hot-like targets).
"""

import numpy as np
from scipy.special import softmax

__all__ = ["LOSSES", "check_targets", "loss_value", "loss_gradient", "loss_value_and_gradient",
           "cross_entropy_single", "mse_curvature", "softmax_hessian", "train_error",
           "labels_of"]

LOSSES = ("cross_entropy", "mse")


def check_targets(targets, loss, n_outputs):
    """Validate targets against the loss and the number of outputs C; return them as numpy.

    Cross-entropy: integer class indices of shape (n,) in ``[0, C)``.
    MSE: floats of shape (n, C) (shape (n,) is accepted when C == 1).
    """
    y = np.asarray(targets)
    if loss == "cross_entropy":
        if n_outputs < 2:  # softmax of one logit is 1: the loss is 0 and nothing would train
            raise ValueError(f"the model has {n_outputs} output; loss='cross_entropy' needs at "
                             "least 2 outputs (one logit per class). For a scalar output use "
                             "loss='mse' (or two logits for a binary task).")
        if y.ndim != 1:
            raise ValueError(f"y has shape {y.shape}; loss='cross_entropy' needs class indices of "
                             "shape (n_samples,).")
        if not np.issubdtype(y.dtype, np.integer):
            if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
                raise TypeError(f"y has float dtype {y.dtype}; loss='cross_entropy' needs integer "
                                "class indices (e.g. y.astype(int) or a torch.long tensor).")
            raise TypeError(f"y has dtype {y.dtype}; loss='cross_entropy' needs integer class "
                            "indices.")
        if y.min() < 0 or y.max() >= n_outputs:
            raise ValueError(f"y contains labels in [{y.min()}, {y.max()}] but the model has "
                             f"{n_outputs} outputs; accepted: labels in [0, {n_outputs - 1}].")
        return y.astype(np.int64)
    y = y.astype(np.float64)
    if y.ndim == 1 and n_outputs == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[1] != n_outputs:
        raise ValueError(f"y has shape {y.shape}; loss='mse' needs targets of shape (n_samples, "
                         f"{n_outputs}) matching the model's {n_outputs} outputs.")
    if not np.all(np.isfinite(y)):
        raise ValueError("y contains NaN or inf; accepted: finite targets.")
    return y


# |F| below this everywhere: exp(F) neither overflows nor underflows and log-sum-exp
# loses at most ~1e-14 to cancellation, so no per-sample shift is needed (the shift's max
# over the short class axis cost as much as the exponentials)
_UNSHIFTED_RANGE = 30.0


def _label_positions(F, targets):
    """The labels' positions in the rows of ``F.reshape(-1, C)`` (``targets`` may carry
    leading axes too), and ``F`` there: :math:`F_{i, y_i}`, shape ``F.shape[:-1]``."""
    labels = np.broadcast_to(targets, F.shape[:-1]).reshape(-1)
    at = (np.arange(labels.size), labels)
    return at, F.reshape(-1, F.shape[-1])[at].reshape(F.shape[:-1])


def loss_value_and_gradient(F, targets, loss, *, gradient=True):
    """Mean loss (shape ``F.shape[:-2]``) and its gradient with respect to ``F`` (same
    shape as ``F``; None with ``gradient=False``): the one place the formulas of the
    module docstring are written."""
    n, c = F.shape[-2:]
    if loss == "cross_entropy":
        at, picked = _label_positions(F, targets)
        if F.size and np.abs(F).max() < _UNSHIFTED_RANGE:
            e = np.exp(F, order="C")  # C order: the label update below writes a view
        else:  # the stable form: shift each sample by its largest output
            shift = F.max(axis=-1, keepdims=True)
            e = np.exp(F - shift, order="C")
            picked = picked - shift[..., 0]
        total = e @ np.ones(c)  # Σ_c exp, as a product: faster than a sum over a short axis
        value = (np.log(total) - picked).mean(axis=-1)
        if not gradient:
            return value, None
        e /= total[..., None]  # softmax
        e.reshape(-1, c)[at] -= 1.0
        e /= n
        return value, e
    diff = F - targets
    return (diff**2).mean(axis=(-2, -1)), mse_curvature(n * c) * diff if gradient else None


# float32 units: the unit round-off, and the relative error assumed of numpy's float32 exp
# (documented below 4 ulps, measured 2.4-2.5 here; 32 ulps assumed, ulp(y) ≤ 2^-23 y)
_UNIT_SINGLE = 2.0 ** -24
_EXP_SINGLE = 32 * 2.0 ** -23


def cross_entropy_single(F, targets):
    r"""Mean cross-entropy of ``F`` from float32 exponentials, and a bound on its error.

    :func:`loss_value` of float32 outputs needs a float64 copy of them first; this takes
    the exponentials in float32 (the log of each sample's sum and the mean stay float64)
    and bounds the difference from the mean loss of ``F``. (numpy's float32 ``exp`` is a
    SIMD loop only on some CPUs: on the AVX2 development machine float32 and float64
    ``exp`` both took 8-10 ns per element, so there the saving is the copy.) Per
    sample, with :math:`m_i = \max_c |F_{ic}|`: rounding ``F`` to float32 moves each
    exponential by a factor within :math:`e^{\pm u m_i}`, the float32 ``exp`` by
    :math:`1 \pm \rho`, their float32 sum by :math:`1 \pm \gamma_{C-1}`; the log of the sum
    then moves by at most :math:`u m_i + 1.01(\rho + \gamma_{C-1})` (for
    :math:`\rho, \gamma < 10^{-2}`), and the mean by at most the bound at
    :math:`\max_i m_i`. ``ρ`` is eight times numpy's documented bound on its float32
    ``exp`` (4 ulps).

    Parameters
    ----------
    F : ndarray of shape (..., n, C), float64 or float32
        Outputs with ``max|F| < 30`` (exponentials far from float32's range); larger ones
        are computed in float64 with error 0.
    targets : ndarray of shape (n,)
        Class indices.

    Returns
    -------
    value, error : ndarray of shape ``F.shape[:-2]``
    """
    c = F.shape[-1]
    single = np.asarray(F, dtype=np.float32)
    largest = float(np.abs(single).max()) if F.size else 0.0
    if not largest < _UNSHIFTED_RANGE:
        return (loss_value(np.asarray(F, dtype=np.float64), targets, "cross_entropy"),
                np.zeros(F.shape[:-2]))
    _, picked = _label_positions(F, targets)
    total = np.exp(single) @ np.ones(c, dtype=np.float32)  # Σ_c exp(F_ic), float32
    value = (np.log(total.astype(np.float64)) - picked).mean(axis=-1)
    gamma = (c - 1) * _UNIT_SINGLE / (1 - (c - 1) * _UNIT_SINGLE)
    # |F| ≤ |fl(F)|·(1 + 2u): the largest |F| from the float32 copy's
    error = _UNIT_SINGLE * largest * (1 + 2 * _UNIT_SINGLE) + 1.01 * (_EXP_SINGLE + gamma)
    return value, np.full(F.shape[:-2], error)


def loss_value(F, targets, loss):
    """Mean loss over samples (and outputs for MSE); shape ``F.shape[:-2]``."""
    return loss_value_and_gradient(F, targets, loss, gradient=False)[0]


def loss_gradient(F, targets, loss):
    """Gradient of :func:`loss_value` with respect to ``F``; same shape as ``F``."""
    return loss_value_and_gradient(F, targets, loss)[1]


def mse_curvature(n_rows):
    """2/(n·C): the Hessian of torch's mean squared error in F is this times the identity."""
    return 2.0 / n_rows


def softmax_hessian(F):
    """Per-sample Hessian blocks of the mean cross-entropy, ``(n, C, C)``: (diag p − p pᵀ)/n."""
    p = softmax(F, axis=-1)
    n = F.shape[-2]
    return (np.einsum("nc,cd->ncd", p, np.eye(F.shape[-1])) - p[:, :, None] * p[:, None, :]) / n


def labels_of(targets, loss):
    """Class labels used by the train error."""
    return targets if loss == "cross_entropy" else np.argmax(targets, axis=-1)


def train_error(F, labels):
    """Percentage of samples whose argmax output differs from ``labels``; shape ``F.shape[:-2]``."""
    return 100.0 * (np.argmax(F, axis=-1) != labels).mean(axis=-1)
