"""One prediction setting: the training recipe, plus how it is predicted (closed-loop refresh).

:class:`Setting` is what a predictor's dynamics parameters resolve to for one
call (the estimator's own, updated by the call's overrides); it is hashable, so
curves are cached per setting and a grid over the recipe reuses the kernel.
"""

import dataclasses

from ..dynamics import RECIPE_PARAMETERS, TrainingRecipe
from ..utils import check_int, check_positive_finite

__all__ = ["DYNAMICS_PARAMS", "Setting", "resolve_setting"]

#: Parameters read at predict time (overridable per call): the recipe's, the LR
#: scheduler, and the closed-loop refresh.
DYNAMICS_PARAMS = tuple(RECIPE_PARAMETERS) + (
    "lr_scheduler", "refresh_steps", "refresh_seconds")


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
    """

    recipe: TrainingRecipe
    refresh_steps: int = 0
    refresh_seconds: float = None
    lr_scheduler: object = dataclasses.field(default=None, compare=False)

    @property
    def refresh_active(self):
        return self.refresh_steps > 0

    @property
    def key(self):
        """Cache key of the curves (the recipe and the refresh)."""
        return (self.recipe, self.refresh_steps, self.refresh_seconds)


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
    return Setting(recipe, k or 0, seconds, scheduler if callable(scheduler) else None)
