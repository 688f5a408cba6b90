r"""The ε-training-time of a curve and its absolute-threshold variant.

Given a curve :math:`L_0, \dots, L_T`, the paper's (Algorithm 1) ε-training-time is

.. math:: T_\varepsilon = \min\{t : |L_t - L_T| < \varepsilon\},

always defined (``t = T`` qualifies). ``ε`` is in the curve's units: loss units
for the loss, percentage points for the train error. The threshold variant is
the first ``t`` with :math:`L_t \le \tau`; it may not exist within ``T``.

Both need the curve only where it may qualify. Given lower bounds
:math:`\ell_t \le L_t` (a factored run gives them for its loss curves by
convexity, :class:`~sktt.dynamics._factored.FactoredCurves`), a step with
:math:`\ell_t \ge L_T + \varepsilon` (or :math:`\ell_t > \tau`) cannot
qualify, so :func:`training_times` computes the curve exactly only at the other
steps, in increasing order, until one qualifies: the same time as the full
curve gives, at a fraction of its cost when the bounds are tight.
"""

import numpy as np
from scipy.ndimage import uniform_filter1d

__all__ = ["check_eps", "check_threshold", "epsilon_training_time", "threshold_training_time",
           "smooth_curve", "training_times"]

_BOUND_TOLERANCE = 1e-9  # relative slack on a lower bound (round-off of its dot products)
_CHUNK = (16, 256)  # steps computed together while searching: first, then doubling up to


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


def _first_qualifying(lower, may_qualify, qualifies, evaluate):
    """First step whose value qualifies, computing only the steps whose lower bound may.

    ``may_qualify(lower)`` must hold wherever ``qualifies(value)`` can, for any
    value ≥ its bound. Returns -1 when no step qualifies.
    """
    candidates = np.flatnonzero(may_qualify(lower))
    # one blocked pass over the rows per chunk: doubling the chunk after each miss keeps the
    # passes few when many steps must be computed, and the overshoot under 2x
    start, size = 0, _CHUNK[0]
    while start < len(candidates):
        steps = candidates[start:start + size]
        ok = qualifies(evaluate(steps))
        if ok.any():
            return int(steps[np.argmax(ok)])
        start, size = start + size, min(2 * size, _CHUNK[1])
    return -1


def _bounded_time(lower, evaluate, last, value, kind):
    """T_ε (``kind="eps"``, ``last`` = L_T) or the threshold time of one curve from bounds."""
    slack = _BOUND_TOLERANCE * max(1.0, abs(last), abs(value))
    if kind == "eps":
        return _first_qualifying(lower, lambda lb: lb < last + value + slack,
                                 lambda v: np.abs(v - last) < value, evaluate)
    return _first_qualifying(lower, lambda lb: lb <= value + slack, lambda v: v <= value,
                             evaluate)


def training_times(curves, key, values, *, kind, smooth=None, per_path=False):
    """Training times of the mean curve over paths (and of each path) for every ε or τ.

    Parameters
    ----------
    curves : mapping
        A :func:`~sktt.dynamics.simulate` result; its ``key`` entry is (P, T + 1).
        A :class:`~sktt.dynamics._factored.FactoredCurves` of finite outputs is
        searched through its loss lower bounds (same result, few steps computed).
    key : str
        ``"loss"``, ``"error"``, ``"eval_loss"`` or ``"eval_error"``.
    values : ndarray
        ε (``kind="eps"``) or τ (``kind="threshold"``), scalar or 1-D.
    smooth : int or None
        Moving-average window applied to the curves first (:func:`smooth_curve`).
    per_path : bool
        Also compute each path's time.

    Returns
    -------
    times : ndarray of int
        Shape of ``values``; -1 where a threshold is never reached.
    path_times : ndarray of int or None
        (P,) or (P, E) with ``per_path``.
    first, last : float
        The mean curve at steps 0 and T (after smoothing).
    """
    flat = np.atleast_1d(values)
    bounded = (smooth is None and key in ("loss", "eval_loss")
               and getattr(curves, "certainly_finite", False))
    if bounded:
        n_steps = curves.n_steps
        lower = curves.loss_lower_bounds(key)  # (P, T + 1)
        ends = curves.at(key, [0, n_steps])  # (P, 2)
        first, last = ends.mean(axis=0)
        times = np.array([_bounded_time(lower.mean(axis=0),
                                        lambda s: curves.at(key, s).mean(axis=0), last, v, kind)
                          for v in flat])
        path_times = None
        if per_path:
            path_times = np.array([[_bounded_time(lower[p], lambda s, p=p: curves.at(key, s)[p],
                                                  ends[p, 1], v, kind) for v in flat]
                                   for p in range(curves.n_paths)])
    else:
        paths = np.asarray(curves[key], dtype=np.float64)
        with np.errstate(invalid="ignore"):  # diverged paths hold inf
            mean = smooth_curve(paths.mean(axis=0), smooth)
        paths = smooth_curve(paths, smooth)
        first, last = mean[0], mean[-1]
        find = epsilon_training_time if kind == "eps" else threshold_training_time
        times = np.atleast_1d(find(mean, flat))
        path_times = find(paths, flat) if per_path else None
    if np.ndim(values) == 0:
        times = times[0]
        path_times = None if path_times is None else path_times[:, 0]
    return times, path_times, float(first), float(last)
