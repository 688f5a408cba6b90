r"""The ε-training-time of a curve and its absolute-threshold variant.

Given a curve :math:`L_0, \dots, L_T`, the paper's (Algorithm 1) ε-training-time is

.. math:: T_\varepsilon = \min\{t : |L_t - L_T| < \varepsilon\},

always defined (``t = T`` qualifies). ``ε`` is in the curve's units: loss units
for the loss, percentage points for the train error. The threshold variant is
the first ``t`` with :math:`L_t \le \tau`; it may not exist within ``T``.
"""

import numpy as np
from scipy.ndimage import uniform_filter1d

__all__ = ["check_eps", "check_threshold", "epsilon_training_time", "threshold_training_time",
           "smooth_curve"]


def check_eps(eps):
    """Validate ε: a finite number > 0 or a non-empty 1-D array of them (float64, same ndim)."""
    values = np.asarray(eps, dtype=np.float64)
    if (values.ndim > 1 or values.size == 0 or not np.all(np.isfinite(values))
            or np.any(values <= 0)):
        raise ValueError(f"eps={eps!r} is invalid; accepted: a finite number > 0 or a non-empty "
                         "1-D array of them.")
    return values


def check_threshold(threshold):
    """Validate τ: a finite number or a non-empty 1-D array of them (float64, same ndim)."""
    values = np.asarray(threshold, dtype=np.float64)
    if values.ndim > 1 or values.size == 0 or not np.all(np.isfinite(values)):
        raise ValueError(f"threshold={threshold!r} is invalid; accepted: a finite number or a "
                         "non-empty 1-D array of them.")
    return values


def smooth_curve(curve, window):
    """Centred moving average over ``window`` steps (edges repeat the end values)."""
    if window is None or window <= 1:
        return np.asarray(curve, dtype=np.float64)
    return uniform_filter1d(np.asarray(curve, dtype=np.float64), size=int(window), axis=-1,
                            mode="nearest")


def epsilon_training_time(curve, eps):
    """First step within ``eps`` of the curve's final value.

    Parameters
    ----------
    curve : ndarray of shape (..., T + 1)
    eps : float or ndarray of shape (E,)

    Returns
    -------
    ndarray of int, shape ``curve.shape[:-1]`` (scalar eps) or ``curve.shape[:-1] + (E,)``.
    """
    curve = np.asarray(curve, dtype=np.float64)
    eps_arr = np.asarray(eps, dtype=np.float64)
    dist = np.abs(curve - curve[..., -1:])  # (..., T+1)
    close = dist[..., None, :] < eps_arr.reshape(-1, 1)  # (..., E, T+1)
    times = np.argmax(close, axis=-1)
    return times[..., 0] if eps_arr.ndim == 0 else times


def threshold_training_time(curve, threshold):
    """First step with ``curve <= threshold``; -1 where it is never reached.

    Returns
    -------
    ndarray of int, shape ``curve.shape[:-1]`` (scalar threshold) or ``+ (E,)``.
    """
    curve = np.asarray(curve, dtype=np.float64)
    thr = np.asarray(threshold, dtype=np.float64)
    below = curve[..., None, :] <= thr.reshape(-1, 1)
    times = np.where(below.any(axis=-1), np.argmax(below, axis=-1), -1)
    return times[..., 0] if thr.ndim == 0 else times
