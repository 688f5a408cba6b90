"""Real fine-tuning to compare predictions against, the paper's error metrics, and
seconds per step measured on the user's hardware."""

from ._metrics import ValidationResult, compare_with_real, time_prediction_errors
from ._training import RealTrainingResult, dataloader_batches, run_real_training
from ..training import measure_step_time  # the one training loop's timer, public here too

__all__ = [
    "RealTrainingResult",
    "ValidationResult",
    "compare_with_real",
    "dataloader_batches",
    "measure_step_time",
    "run_real_training",
    "time_prediction_errors",
]
