"""Warnings and errors raised by sktt.

Every class here subclasses the closest built-in exception, so ``except
ValueError`` in user code keeps working.
"""


def __getattr__(name):
    # scikit-learn's own class (so ``except sklearn.exceptions.NotFittedError`` works), imported
    # on first use: importing scikit-learn costs scipy.stats and pandas, which workers that
    # only extract gradients never need
    if name == "NotFittedError":
        from sklearn.exceptions import NotFittedError

        return NotFittedError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "NotFittedError",
    "LinearizationWarning",
    "AssumptionWarning",
    "DivergenceWarning",
    "SpectrumWarning",
    "ValidationWarning",
    "EpsilonWarning",
    "ThresholdNotReachedError",
    "DivergenceError",
    "SolverError",
    "MemoryBudgetError",
    "InfeasibleTailError",
    "WorkerLostError",
]


class LinearizationWarning(UserWarning):
    """The linearised model is unlikely to describe real fine-tuning well."""


class AssumptionWarning(UserWarning):
    """sktt assumed something about the model the user may not expect (eval mode, dtype)."""


class DivergenceWarning(UserWarning):
    """The requested learning rate makes the linearised dynamics diverge."""


class SpectrumWarning(UserWarning):
    """The NTK spectrum needed repair (e.g. negative eigenvalues were clipped)."""


class ValidationWarning(UserWarning):
    """A comparison with real training is less than its numbers suggest.

    A real run (or the prediction) oscillates or diverges, or an ε-time is 0
    (ε larger than the whole change) or the step budget (not settled).
    """


class EpsilonWarning(UserWarning):
    """ε cannot give a meaningful T_ε: it is at least the whole predicted change of the curve
    (T_ε = 0), or below the SGD noise of its final value (T_ε is a chance crossing)."""


class ThresholdNotReachedError(ValueError):
    """An absolute loss/error threshold is not reached within the step budget."""


class DivergenceError(ValueError):
    """A training time was asked for settings under which the predicted training diverges."""


class SolverError(RuntimeError):
    """A numerical solver failed; the message says what to try instead."""


class MemoryBudgetError(MemoryError):
    """A request cannot be computed within the memory budget."""


class InfeasibleTailError(ValueError):
    """The residual-projection tail of :class:`GramSpectrum` has no solution."""


class WorkerLostError(RuntimeError):
    """A parallel worker, or the Dask cluster, went away during gradient extraction."""
