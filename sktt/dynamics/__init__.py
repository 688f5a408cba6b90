"""Function-space dynamics of the linearised model: the training recipe, one ``simulate``
(discrete steps, ODE, SDE, closed form) and the ε-training-time. numpy/scipy only."""

from ._closed_form import flow_times, mse_closed_form, mse_spectral_loss
from ._discrete import check_batches, simulate_discrete
from ._factored import FactoredCurves, simulate_factored
from ._displacement import batch_curvature, linear_displacement, stability_ratio
from ._losses import (LOSSES, check_targets, labels_of, loss_gradient, loss_value,
                      mse_curvature, train_error)
from ._ode import solve_gradient_flow
from ._recipe import RECIPE_PARAMETERS, SOLVERS, TrainingRecipe, check_learning_rates
from ._sde import (NOISE_MODELS, diagonal_noise_factor, full_noise_factor,
                   per_sample_gradients, sde_substeps, simulate_sde)
from ._simulate import LinearizedProblem, simulate
from ._training_time import (check_eps, check_threshold, epsilon_flags, epsilon_training_time,
                             final_value_noise, smooth_curve, threshold_training_time,
                             training_times)

__all__ = [
    "FactoredCurves",
    "LOSSES",
    "LinearizedProblem",
    "NOISE_MODELS",
    "RECIPE_PARAMETERS",
    "SOLVERS",
    "TrainingRecipe",
    "batch_curvature",
    "check_batches",
    "check_eps",
    "check_threshold",
    "check_learning_rates",
    "check_targets",
    "diagonal_noise_factor",
    "epsilon_flags",
    "epsilon_training_time",
    "final_value_noise",
    "flow_times",
    "full_noise_factor",
    "labels_of",
    "linear_displacement",
    "loss_gradient",
    "loss_value",
    "mse_closed_form",
    "mse_curvature",
    "mse_spectral_loss",
    "per_sample_gradients",
    "sde_substeps",
    "simulate",
    "simulate_discrete",
    "simulate_factored",
    "simulate_sde",
    "smooth_curve",
    "solve_gradient_flow",
    "stability_ratio",
    "threshold_training_time",
    "train_error",
    "training_times",
]
