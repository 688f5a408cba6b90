"""Plots in scikit-learn's Display style (``from_estimator``, ``plot(ax=...)``).

matplotlib is imported lazily, when something is drawn (``pip install sktt[plot]``).
"""

from ._curves import TrainingCurveDisplay, TrainingTimeDisplay
from ._held_out import HeldOutCurveDisplay
from ._spectrum import SpectrumDisplay
from ._validation import PredictedVsRealDisplay

__all__ = [
    "HeldOutCurveDisplay",
    "PredictedVsRealDisplay",
    "SpectrumDisplay",
    "TrainingCurveDisplay",
    "TrainingTimeDisplay",
]
