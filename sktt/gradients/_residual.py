r"""The residual norm of the full data set, by forward passes only.

:class:`sktt.GramSpectrum` needs one number from the full data:
:math:`\lVert\delta y\rVert^2 = \sum_{i,c} (f_0(x_i)_c - Y_{ic})^2`, which is
N·C times the initial ``nn.MSELoss()``. It costs N forward passes in chunks (no
Jacobians, no kernel), so it is cheap even when Θ of all N samples is not.
"""

import numpy as np
import torch

from ..utils import check_choice, check_int
from ..utils._torch import model_device_dtype, model_untouched
from ._extraction import model_outputs
from ._inputs import as_inputs

__all__ = ["residual_sq_norm"]


def residual_sq_norm(model, X, y=None, *, loss="mse", chunk_size=256, output=None):
    r"""Sum of squared residuals :math:`\lVert f_0(X) - Y\rVert^2` of the model at its weights.

    Parameters
    ----------
    model : torch.nn.Module
        Evaluated in ``eval()`` mode; never modified (mode and RNG restored).
    X : Tensor, ndarray, tuple/list of those, dict, Dataset or DataLoader
        Inputs of the *full* training set (any container of
        :func:`~sktt.gradients.as_inputs`); a Dataset yields ``(x, y)`` pairs.
    y : array-like of shape (N, C), optional
        Regression / one-hot targets (None when X is a Dataset).
    loss : {"mse"}, default="mse"
        Only the squared error: the extrapolation of :class:`~sktt.GramSpectrum`
        is derived for it.
    chunk_size : int, default=256
        Samples per forward pass.
    output : None, str, int or callable, default=None
        Which part of the model's output are the logits
        (:func:`~sktt.gradients.select_logits`).

    Returns
    -------
    float
        :math:`\sum_{i,c} (f_0(x_i)_c - Y_{ic})^2` in float64.

    Examples
    --------
    >>> import torch
    >>> from sktt.gradients import residual_sq_norm
    >>> model = torch.nn.Linear(3, 2)
    >>> X, Y = torch.randn(10, 3), torch.zeros(10, 2)
    >>> value = residual_sq_norm(model, X, Y)
    >>> round(value, 4) == round(float((model(X) ** 2).sum()), 4)
    True
    """
    check_choice("loss", loss, ("mse",))
    chunk_size = check_int("chunk_size", chunk_size, low=1)
    _, dtype = model_device_dtype(model)
    with model_untouched(model) as m:
        inputs, targets = as_inputs(X, y, float_dtype=dtype)
        if targets is None:
            raise ValueError("y is None; accepted: targets of shape (n_samples, n_outputs), or a "
                             "Dataset yielding (x, y) pairs as X.")
        f0 = model_outputs(m, inputs, chunk_size=chunk_size, output=output)
    targets = targets.detach().to("cpu", torch.float64).numpy() if isinstance(
        targets, torch.Tensor) else np.asarray(targets, dtype=np.float64)
    if targets.ndim == 1 and f0.shape[1] == 1:
        targets = targets[:, None]
    if targets.shape != f0.shape:
        raise ValueError(f"y has shape {targets.shape} but the model outputs {f0.shape}; "
                         "loss='mse' needs targets of shape (n_samples, n_outputs) (e.g. one-hot "
                         "rows for classification).")
    if not (np.all(np.isfinite(targets)) and np.all(np.isfinite(f0))):
        raise ValueError("the targets or the model's outputs contain NaN or inf.")
    return float(((f0 - targets) ** 2).sum())
