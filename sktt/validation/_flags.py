r"""When a comparison with real training is not what its numbers suggest.

A relative error of :math:`\hat T_\varepsilon` is only meaningful when the real run
it is measured against trained normally and when both times are proper times.
This module gives the precise, documented checks :class:`ValidationResult`
reports next to its numbers.

Status of a curve :math:`L_0, \dots, L_T` (loss units, torch's mean reduction):

``"diverged"``
    A value is not finite, or the curve ends above its start
    (:math:`L_T > L_0`): the run made the loss worse.
``"oscillates"``
    Not diverged, but the curve rose above its start on the way
    (:math:`\max_t L_t > L_0 + r_0 |L_0|`, :data:`RISE_TOLERANCE` :math:`r_0 = 0.05`),
    or it climbed back a large part of its drop: with the largest climb above the
    running minimum :math:`U = \max_t (L_t - \min_{s \le t} L_s)` and the drop
    :math:`D = L_0 - \min_t L_t`, :math:`U > \rho\, D` with
    :data:`OSCILLATION_RATIO` :math:`\rho = 0.5`. A monotone curve has
    :math:`U = 0`; the small climbs of minibatch noise stay well below half the
    drop. Typical of a learning rate past
    the stability edge (real loss 1.39 → 0.67 → 16.1 → 8.07).
``"ok"``
    Neither.

Flag of an ε-training-time :math:`T_\varepsilon = \min\{t : |L_t - L_T| < \varepsilon\}`:

``"eps_exceeds_drop"``
    :math:`T_\varepsilon = 0`: the whole change :math:`|L_0 - L_T|` is below ε,
    so the time says nothing about training speed.
``"not_reached"``
    :math:`T_\varepsilon = T`: no step before the last is within ε of the end;
    the curve has not settled within the step budget, and :math:`T` is a lower
    bound, not a time.
``"undefined"``
    No time (a non-finite curve, reported as -1).
``"ok"``
    A proper time, :math:`0 < T_\varepsilon < T`.
"""

import numpy as np

__all__ = ["OSCILLATION_RATIO", "RISE_TOLERANCE", "curve_error", "curve_status", "time_flags"]

#: Largest climb back, as a fraction of the drop, above which a curve "oscillates".
OSCILLATION_RATIO = 0.5
#: Rise above the start, relative to |L_0|, above which a curve "oscillates".
RISE_TOLERANCE = 0.05

STATUSES = ("ok", "oscillates", "diverged")
TIME_FLAGS = ("ok", "eps_exceeds_drop", "not_reached", "undefined")


def curve_status(curve):
    """``"ok"``, ``"oscillates"`` or ``"diverged"`` for one curve (see the module docstring).

    Parameters
    ----------
    curve : array-like of shape (T+1,)

    Returns
    -------
    status : str
    """
    curve = np.asarray(curve, dtype=np.float64)
    if not np.all(np.isfinite(curve)) or curve[-1] > curve[0]:
        return "diverged"
    rise = float(np.max(curve - np.minimum.accumulate(curve)))
    drop = float(curve[0] - curve.min())
    if curve.max() > curve[0] + RISE_TOLERANCE * abs(curve[0]) or rise > OSCILLATION_RATIO * drop:
        return "oscillates"
    return "ok"


def time_flags(times, n_steps):
    """Flag of each ε-time (see the module docstring), as an array of str of the same shape.

    Parameters
    ----------
    times : array-like of int
        ε-times in steps, -1 for "no time".
    n_steps : int
        The step budget T.
    """
    times = np.asarray(times)
    flags = np.full(times.shape, "ok", dtype=object)
    flags[times == 0] = "eps_exceeds_drop"
    flags[times == n_steps] = "not_reached"
    flags[times < 0] = "undefined"
    return flags


def curve_error(predicted, real):
    r"""Median and maximum over steps of :math:`|\hat L_t - L_t| / |L_t|`.

    Parameters
    ----------
    predicted : array-like of shape (T+1,)
    real : array-like of shape (n_runs, T+1)

    Returns
    -------
    median, maximum : ndarray of shape (n_runs,)
        Infinite where either curve is not finite (or the real one is exactly 0):
        no finite number describes the disagreement there.
    """
    predicted = np.asarray(predicted, dtype=np.float64)
    real = np.atleast_2d(np.asarray(real, dtype=np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.abs(predicted - real) / np.abs(real)
    rel[~np.isfinite(rel)] = np.inf
    return np.median(rel, axis=1), np.max(rel, axis=1)
