"""The one real training loop (torch): what "real fine-tuning" means everywhere in sktt.

:func:`run_steps` is used by :func:`sktt.validation.run_real_training`,
:func:`sktt.validation.measure_step_time` and the closed-loop refresh, with the
same :class:`~sktt.dynamics.TrainingRecipe` the predictions simulate.
:func:`scheduled_learning_rates` reads the exact per-step rates of a torch LR
scheduler on a throw-away optimizer.
"""

from ._loop import make_optimizer, run_steps, torch_loss, torch_targets
from ._schedule import scheduled_learning_rates
from ._timing import measure_step_time

__all__ = ["make_optimizer", "measure_step_time", "run_steps", "scheduled_learning_rates", "torch_loss",
           "torch_targets"]
