"""One prediction setting: the training recipe, plus how it is predicted (refresh, stages).

:class:`Setting` is what a predictor's dynamics parameters resolve to for one
call (the estimator's own, updated by the call's overrides); it is hashable, so
curves are cached per setting and a grid over the recipe reuses the kernel.
"""

import dataclasses
import numbers

import numpy as np

from ..dynamics import RECIPE_PARAMETERS, TrainingRecipe
from ..utils import check_int, check_positive_finite

__all__ = ["DYNAMICS_PARAMS", "Setting", "resolve_setting"]

#: Parameters read at predict time (overridable per call): the recipe's, the LR
#: scheduler, the closed-loop refresh and the open-loop re-linearisation stages.
DYNAMICS_PARAMS = tuple(RECIPE_PARAMETERS) + (
    "lr_scheduler", "refresh_steps", "refresh_seconds", "relinearize", "relinearize_tol")


@dataclasses.dataclass(frozen=True)
class Setting:
    """A training recipe and the refresh that predicts it.

    Attributes
    ----------
    recipe : TrainingRecipe
    refresh_steps : int
        Real steps before re-linearising (0 = off).
    refresh_seconds : float or None
        Time budget of those steps.
    lr_scheduler : callable or None
        The user's scheduler factory, for real steps (its rates are in ``recipe``).
    relinearize : int or "auto"
        Re-linearisation points at the predicted weights (0 = off;
        :mod:`sktt.estimators._relinearize`).
    relinearize_tol : float or None
        Adaptive cut points: the predicted relative kernel change per stage
        (None = geometric cut points).
    """

    recipe: TrainingRecipe
    refresh_steps: int = 0
    refresh_seconds: float = None
    lr_scheduler: object = dataclasses.field(default=None, compare=False)
    relinearize: object = 0
    relinearize_tol: float = None

    @property
    def refresh_active(self):
        return self.refresh_steps > 0

    @property
    def relinearize_active(self):
        return self.relinearize != 0

    @property
    def key(self):
        """Cache key of the curves (the recipe, the refresh and the stages)."""
        return (self.recipe, self.refresh_steps, self.refresh_seconds, self.relinearize,
                self.relinearize_tol)


def resolve_setting(est, overrides, n_samples=None):
    """The :class:`Setting` of one call: ``est``'s dynamics parameters updated by ``overrides``."""
    from ..training import scheduled_learning_rates  # torch: only when a scheduler is read

    unknown = set(overrides) - set(DYNAMICS_PARAMS)
    if unknown:
        raise TypeError(f"unexpected keyword(s) {sorted(unknown)}; predict methods accept "
                        f"the dynamics parameters {list(DYNAMICS_PARAMS)} as overrides.")
    values = {name: overrides.get(name, getattr(est, name)) for name in DYNAMICS_PARAMS}
    scheduler = values.pop("lr_scheduler")
    k, seconds = values.pop("refresh_steps"), values.pop("refresh_seconds")
    stages = check_relinearize(values.pop("relinearize"))
    tol = check_relinearize_tol(values.pop("relinearize_tol"))
    n = n_samples if n_samples is not None else getattr(est, "n_samples_", None)
    recipe = TrainingRecipe.from_params(values, n_samples=n)
    rates = scheduled_learning_rates(recipe.lr, scheduler, recipe.n_steps)
    if rates is not None:
        recipe = TrainingRecipe.from_params(values, n_samples=n, learning_rates=rates)
    if k is not None:
        k = check_int("refresh_steps", k, low=0)
        if k > recipe.n_steps:
            raise ValueError(f"refresh_steps={k} exceeds n_steps={recipe.n_steps}; accepted: an "
                             "int in [0, n_steps] or None.")
    if seconds is not None:
        seconds = check_positive_finite("refresh_seconds", seconds)
        if k is None:
            k = recipe.n_steps
    if stages != "auto" and stages > recipe.n_steps:
        raise ValueError(f"relinearize={stages} exceeds n_steps={recipe.n_steps} (one "
                         "re-linearisation after every step); accepted: None, an int in "
                         "[0, n_steps] or 'auto'.")
    if stages and (k or seconds is not None):
        raise ValueError(f"relinearize={stages!r} re-linearises at the *predicted* weights, "
                         f"refresh_steps / refresh_seconds at weights reached by real steps; "
                         "use one of them (relinearize=None, or refresh_steps=None and "
                         "refresh_seconds=None).")
    return Setting(recipe, k or 0, seconds, scheduler if callable(scheduler) else None, stages,
                   tol)


def check_relinearize(value):
    """``relinearize`` as 0 (off), a positive int, or ``"auto"``."""
    if value is None:
        return 0
    if isinstance(value, str):
        if value != "auto":
            raise ValueError(f"relinearize={value!r}; accepted: None, an int >= 0 (the number "
                             "of re-linearisation points) or 'auto'.")
        return value
    return check_int("relinearize", value, low=0)


def check_relinearize_tol(value):
    """``relinearize_tol`` as None (geometric cut points) or a finite float > 0."""
    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not np.isfinite(value) or value <= 0):
        raise ValueError(f"relinearize_tol={value!r}; accepted: None (geometric cut points) or "
                         "a finite number > 0 (the predicted relative kernel change that ends a "
                         "stage).")
    return float(value)
