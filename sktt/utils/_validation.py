"""Parameter checks whose messages name the parameter, the value and what is accepted."""

import difflib
import numbers

import numpy as np

__all__ = ["check_bool", "check_choice", "check_fraction", "check_int", "check_n_jobs",
           "check_positive_finite", "check_steps"]


def check_choice(name, value, choices):
    """Return ``value`` if it is one of ``choices``, else raise with a "did you mean".

    Parameters
    ----------
    name : str
        Parameter name, quoted in the message.
    value : object
        The value received.
    choices : sequence of str
        Accepted values.
    """
    if isinstance(value, str) and value in choices:
        return value
    hint = ""
    if isinstance(value, str):
        close = difflib.get_close_matches(value, list(choices), n=1)
        if close:
            hint = f" Did you mean {close[0]!r}?"
    raise ValueError(
        f"{name}={value!r} is not supported; accepted values are "
        f"{', '.join(repr(c) for c in choices)}.{hint}"
    )


def check_bool(name, value):
    """Return ``bool(value)`` if it is a bool (Python or numpy), else raise.

    A truthy stand-in (``"no"``, ``1``, ``"False"``) would silently switch the
    option on, so only real bools are accepted.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r} ({type(value).__name__}); "
                        "accepted: True or False.")
    return bool(value)


def check_positive_finite(name, value, *, allow_zero=False):
    """Return ``float(value)`` if it is a finite real number > 0 (>= 0 with ``allow_zero``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__}).")
    value = float(value)
    bound_ok = value >= 0 if allow_zero else value > 0
    if not np.isfinite(value) or not bound_ok:
        accepted = "a finite number >= 0" if allow_zero else "a finite number > 0"
        raise ValueError(f"{name}={value!r} is invalid; accepted: {accepted}.")
    return value


def check_fraction(name, value, *, low=0.0, high=1.0, high_inclusive=False):
    """Return ``float(value)`` if ``low <= value < high`` (or ``<= high``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__}).")
    value = float(value)
    ok = np.isfinite(value) and low <= value and (value <= high if high_inclusive else value < high)
    if not ok:
        bracket = "]" if high_inclusive else ")"
        raise ValueError(f"{name}={value!r} is invalid; accepted: a number in [{low}, {high}{bracket}.")
    return value


def check_int(name, value, *, low=None, high=None):
    """Return ``int(value)`` if it is an integer in ``[low, high]`` (bounds optional)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, numbers.Real) and float(value).is_integer() and not isinstance(value, bool):
            value = int(value)
        else:
            raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__}).")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ValueError(f"{name}={value} is out of range; accepted: an integer in [{lo}, {hi}].")
    return value


def check_steps(steps, n_steps):
    """Return ``steps`` as a 1-D int64 array of step indices in ``[0, n_steps]``."""
    values = np.asarray(steps)
    if (values.ndim != 1 or values.size == 0 or values.dtype == bool
            or not np.issubdtype(values.dtype, np.integer)):
        raise ValueError(f"steps={steps!r} is invalid; accepted: a non-empty 1-D sequence of "
                         f"integer steps in [0, n_steps={n_steps}].")
    if values.min() < 0 or values.max() > n_steps:
        raise ValueError(f"steps contains {int(values.min())}..{int(values.max())}; accepted: "
                         f"integer steps in [0, n_steps={n_steps}].")
    return values.astype(np.int64)


def check_n_jobs(value):
    """Return ``value`` if it is None or a non-zero integer (joblib's meaning of ``n_jobs``)."""
    if value is None:
        return None
    n_jobs = check_int("n_jobs", value)
    if n_jobs == 0:
        raise ValueError("n_jobs=0 is invalid; accepted: None, a positive int, or a negative "
                         "int (-1 = all processors).")
    return n_jobs
