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
qualify, so :func:`training_times` computes the curve only at some of the other
steps, earliest first: each computed step's tangent plane tightens the bounds of
its neighbours, which often rules them out uncomputed. Where the planes stop
ruling out steps (a flat, noisy curve whose steps sit near the band: no lower
bound rules out a step below it, and one SGD step moves the outputs too far for
a neighbour's plane to rule out one just above it), the open steps are computed
as values only, at about half the cost of a plane. Values come with rigorous
error bars (float32 products); the few whose bars straddle the verdict are
computed exactly. The search stops once every step before a qualifying one is
computed or ruled out: the same time as the full curve gives, at a fraction of
its cost when the bounds are tight.
"""

import numbers

import numpy as np
from scipy.ndimage import uniform_filter1d

from ._factored import FactoredCurves

__all__ = ["check_eps", "check_threshold", "epsilon_flags", "epsilon_training_time",
           "final_value_noise", "threshold_training_time", "smooth_curve", "training_times"]

_BOUND_TOLERANCE = 1e-9  # relative slack on a lower bound (round-off of its dot products)
_CHUNK = (8, 256)  # steps computed together while searching: first, then doubling up to
_SPREAD = 8  # of the open steps, every 8th is computed (its tangent plane covers the rest)
# a plane costs about two values (its gradient is a second product of the same size): once a
# pass's planes decide fewer open steps than this each, the open steps are computed as values
_PLANES_PAY = 2
_VALUE_CHUNK = 64  # steps valued together once the planes stop paying


def _real_values(name, value, accepted):
    """``value`` as a float64 array, refusing what only *looks* numeric.

    ``np.asarray("0.1", dtype=float)`` is 0.1 and ``True`` is 1.0: accepted
    silently, a typo or a flag passed in the wrong place would give a number.
    """
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        return np.asarray(float(value))  # any real scalar, as lr takes (Fraction too)
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError):  # ragged nesting
        arr = np.asarray(None)
    if (isinstance(value, (str, bytes, bool, np.bool_)) or arr.dtype == bool
            or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating))):
        raise TypeError(f"{name} must be a real number or a 1-D array of them, got {value!r} "
                        f"({type(value).__name__}); accepted: {accepted}.")
    return arr.astype(np.float64)


def check_eps(eps):
    """Validate ε: a finite number > 0 or a non-empty 1-D array of them (float64, same ndim)."""
    accepted = "a finite number > 0 or a non-empty 1-D array of them"
    values = _real_values("eps", eps, accepted)
    if (values.ndim > 1 or values.size == 0 or not np.all(np.isfinite(values))
            or np.any(values <= 0)):
        raise ValueError(f"eps={eps!r} is invalid; accepted: {accepted}.")
    return values


def check_threshold(threshold):
    """Validate τ: a finite number or a non-empty 1-D array of them (float64, same ndim)."""
    accepted = "a finite number or a non-empty 1-D array of them"
    values = _real_values("threshold", threshold, accepted)
    if values.ndim > 1 or values.size == 0 or not np.all(np.isfinite(values)):
        raise ValueError(f"threshold={threshold!r} is invalid; accepted: {accepted}.")
    return values


def smooth_curve(curve, window):
    """Centred moving average over ``window`` steps (edges repeat the end values)."""
    if window is None or window <= 1:
        return np.asarray(curve, dtype=np.float64)
    curve = np.asarray(curve, dtype=np.float64)
    n = curve.shape[-1]
    if window > n:  # the repeated edges would outweigh the curve: a flat line, a made-up time
        raise ValueError(f"smooth={window} is longer than the curve ({n} points, steps 0..n_steps="
                         f"{n - 1}); accepted: an integer in [1, {n}].")
    return uniform_filter1d(curve, size=int(window), axis=-1, mode="nearest")


def final_value_noise(finals):
    """Standard error of the mean of the paths' final values (0 for one path or a non-finite
    value): the size of the mean curve's SGD fluctuations near its end. An ε below it makes
    T_ε the first chance entry of a fluctuating curve into the band."""
    finals = np.asarray(finals, dtype=np.float64)
    if finals.size < 2 or not np.all(np.isfinite(finals)):
        return 0.0
    return float(np.std(finals, ddof=1) / np.sqrt(finals.size))


def epsilon_flags(eps, first, last, finals):
    """What T_ε says at each ε, an array of str shaped like ``eps``.

    ``"eps_exceeds_drop"`` where ε exceeds the whole change ``abs(first - last)`` (T_ε = 0
    says nothing about training speed); else ``"eps_below_noise"`` where ε is below
    :func:`final_value_noise` of the paths' final values ``finals`` (T_ε is a chance
    crossing); else ``"ok"``.
    """
    eps = np.asarray(eps, dtype=np.float64)
    return np.where(eps > abs(first - last), "eps_exceeds_drop",
                    np.where(eps < final_value_noise(finals), "eps_below_noise", "ok"))


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


def _first_qualifying(bounds, may_qualify, verdict, refine, approximate, evaluate):
    """First step whose value qualifies, computing only steps whose lower bound may qualify.

    ``bounds()`` gives the current lower bounds (T + 1,); ``refine(steps)`` values at
    ``steps`` with error bars, ``(values, errors)``, and it may tighten later bounds (each
    refined step becomes an anchor); ``approximate(steps)`` the same values without
    anchoring them (cheaper); ``verdict(values, errors)`` is +1 where the step qualifies
    whatever its error, -1 where it cannot, 0 where the error decides, and those steps are
    computed exactly by ``evaluate(steps)`` (their verdict at error 0).
    ``may_qualify(lower)`` must hold wherever a value ≥ ``lower`` can qualify. Returns -1
    when no step qualifies.

    Every step before the returned one is either computed (and fails) or has a bound
    that rules it out: the time of the full curve.

    The order of the work. Each pass computes the earliest open steps: while the tangent
    planes pay, every ``_SPREAD``-th of them is refined (its plane then rules out most
    steps in between); once a pass's planes decide fewer than ``_PLANES_PAY`` open steps
    each (a flat, noisy curve whose steps sit near the band: nothing rules them out), the
    remaining open steps are approximated in contiguous runs at the lower cost of a value.
    Steps whose error bars straddle the verdict are set aside and computed exactly
    together once every step before the first of them is decided (an exact pass costs
    about as much for one step as for dozens: a float64 copy of the rows); the search
    goes on past them only if none qualifies.
    """
    n_points = len(bounds())
    computed = np.zeros(n_points, dtype=bool)
    unsure = np.zeros(n_points, dtype=bool)  # computed, their error bars straddle the verdict
    found = n_points  # the first step known to qualify (none yet)
    size = _CHUNK[0]
    planes = True
    while True:
        # the search stops at the first unsure step too: it may be the answer
        stop = min(found, int(np.argmax(unsure)) if unsure.any() else n_points)
        open_steps = np.flatnonzero(may_qualify(bounds()[:stop]) & ~computed[:stop])
        if not open_steps.size:
            doubtful = np.flatnonzero(unsure[:found])
            if not doubtful.size:
                return found if found < n_points else -1
            exact = evaluate(doubtful)
            ok = verdict(exact, np.zeros_like(exact))
            unsure[:] = False
            if np.any(ok > 0):
                found = int(doubtful[np.argmax(ok > 0)])
            continue
        if planes:  # the chunk doubles after each pass so that the passes stay few
            steps = open_steps[::_SPREAD][:size]
            values, errors = refine(steps)
        else:  # contiguous runs, short enough not to overshoot far past the answer
            steps = open_steps[:min(size, _VALUE_CHUNK)]
            values, errors = approximate(steps)
        ok = verdict(values, errors)
        computed[steps] = True
        unsure[steps[ok == 0]] = True
        if np.any(ok > 0):
            found = int(steps[np.argmax(ok > 0)])
        if planes:  # the open steps up to the chunk's last, and those the pass left open
            span = open_steps[open_steps <= steps[-1]]
            left = may_qualify(bounds()[span]) & ~computed[span] & (span < found)
            planes = span.size - np.count_nonzero(left) >= _PLANES_PAY * steps.size
        size = min(2 * size, _CHUNK[1])


def _bounded_time(bounds, refine, approximate, evaluate, last, value, kind):
    """T_ε (``kind="eps"``, ``last`` = L_T) or the threshold time of one curve from bounds."""
    slack = _BOUND_TOLERANCE * max(1.0, abs(last), abs(value))
    if kind == "eps":
        def verdict(v, err):  # |L − L_T| < ε for every L within err of v (and round-off)
            dist, err = np.abs(v - last), np.where(err > 0, err + slack, 0.0)
            return np.where(dist + err < value, 1, np.where(dist - err >= value, -1, 0))

        return _first_qualifying(bounds, lambda lb: lb < last + value + slack, verdict,
                                 refine, approximate, evaluate)

    def verdict(v, err):  # L ≤ τ for every L within err of v (and round-off)
        err = np.where(err > 0, err + slack, 0.0)
        return np.where(v + err <= value, 1, np.where(v - err > value, -1, 0))

    return _first_qualifying(bounds, lambda lb: lb <= value + slack, verdict, refine,
                             approximate, evaluate)


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
    finals : ndarray of shape (P,)
        Each path's curve at step T (after smoothing): their spread is the SGD
        noise of ``last``.
    """
    flat = np.atleast_1d(values)
    # (an isinstance test, not getattr with a default: an error inside the property must
    # not pass for "read the full curves")
    bounded = (smooth is None and key in ("loss", "eval_loss")
               and isinstance(curves, FactoredCurves) and curves.certainly_finite)
    if bounded:
        ends = curves.at(key, [0, curves.n_steps])  # (P, 2)
        first, last = ends.mean(axis=0)
        finals = ends[:, 1]

        def mean_of(estimate):  # values and error bars of the mean curve
            def mean(steps):
                values, errors = estimate(key, steps)
                return values.mean(axis=0), errors.mean(axis=0)
            return mean

        times = np.array([_bounded_time(lambda: curves.loss_lower_bounds(key).mean(axis=0),
                                        mean_of(curves.refine), mean_of(curves.approximate),
                                        lambda s: curves.at(key, s).mean(axis=0),
                                        last, v, kind)
                          for v in flat])
        path_times = None
        if per_path:
            def path_of(estimate, p):
                return lambda s: tuple(a[p] for a in estimate(key, s))

            path_times = np.array([[_bounded_time(
                lambda p=p: curves.loss_lower_bounds(key)[p],
                path_of(curves.refine, p), path_of(curves.approximate, p),
                lambda s, p=p: curves.at(key, s)[p], ends[p, 1], v, kind)
                for v in flat] for p in range(curves.n_paths)])
    else:
        paths = np.asarray(curves[key], dtype=np.float64)
        with np.errstate(invalid="ignore"):  # diverged paths hold inf
            mean = smooth_curve(paths.mean(axis=0), smooth)
        paths = smooth_curve(paths, smooth)
        first, last = mean[0], mean[-1]
        finals = paths[:, -1]
        find = epsilon_training_time if kind == "eps" else threshold_training_time
        times = np.atleast_1d(find(mean, flat))
        path_times = find(paths, flat) if per_path else None
    if np.ndim(values) == 0:
        times = times[0]
        path_times = None if path_times is None else path_times[:, 0]
    return times, path_times, float(first), float(last), np.asarray(finals, dtype=np.float64)
