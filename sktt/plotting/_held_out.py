"""Train and held-out curves on one axes, with the predicted (and real) best step marked."""

import numpy as np

from ..validation._metrics import predicted_curve_and_band
from ._axes import get_axes
from ._curves import _check_predictor, _real_curves

__all__ = ["HeldOutCurveDisplay"]

_YLABELS = {"loss": "loss", "error": "error (%)"}


def _first_min(curve):
    curve = np.asarray(curve, dtype=np.float64)
    return int(np.argmin(np.where(np.isfinite(curve), curve, np.inf)))


class HeldOutCurveDisplay:
    """Predicted train and held-out curves (bands, real curves) and the early-stopping step.

    Create it with :meth:`from_estimator` (a predictor fitted with
    ``eval_set``) or :meth:`from_validation`; the constructor only stores data.

    Parameters
    ----------
    train, eval : ndarray of shape (T + 1,)
        Predicted mean train and held-out curves.
    train_band, eval_band : ndarray of shape (2, T + 1) or None, default=None
        Lower and upper edges of the predicted bands (SGD paths).
    real_train, real_eval : ndarray of shape (n_runs, T + 1) or None, default=None
        Real curves to overlay.
    metric : {"loss", "error"}, default="loss"

    Attributes
    ----------
    lines_ : dict of str to matplotlib Line2D
        ``"train"``, ``"eval"`` (predicted) and ``"real train"``, ``"real eval"``
        (the first real run) when given.
    best_step_ : int
        The predicted best step: first minimum of the predicted held-out curve.
    real_best_step_ : float or None
        Median over real runs of the real best step.
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from sktt import TrainingTimePredictor
    >>> from sktt.datasets import load_demo
    >>> from sktt.plotting import HeldOutCurveDisplay
    >>> demo = load_demo(n_samples=90)
    >>> ttp = TrainingTimePredictor(demo.model, lr=0.05, n_steps=30)
    >>> ttp = ttp.fit(demo.X[:60], demo.y[:60], eval_set=(demo.X[60:], demo.y[60:]))
    >>> disp = HeldOutCurveDisplay.from_estimator(ttp)
    >>> 0 <= disp.best_step_ <= 30
    True
    """

    def __init__(self, *, train, eval, train_band=None, eval_band=None, real_train=None,
                 real_eval=None, metric="loss"):
        self.train = train
        self.eval = eval
        self.train_band = train_band
        self.eval_band = eval_band
        self.real_train = real_train
        self.real_eval = real_eval
        self.metric = metric

    def plot(self, ax=None, *, show_band=True):
        """Draw the curves and mark the best step.

        Parameters
        ----------
        ax : matplotlib Axes, optional
            Axes to draw on; a new figure when None.
        show_band : bool, default=True

        Returns
        -------
        self : HeldOutCurveDisplay
        """
        ax = get_axes(ax, "HeldOutCurveDisplay")
        self.lines_ = {}
        for name, curve, band, color in (("train", self.train, self.train_band, "C0"),
                                         ("eval", self.eval, self.eval_band, "C2")):
            curve = np.asarray(curve, dtype=np.float64)
            steps = np.arange(len(curve))
            if show_band and band is not None:
                lower, upper = np.asarray(band, dtype=np.float64)
                ax.fill_between(steps, lower, upper, color=color, alpha=0.2, lw=0)
            (self.lines_[name],) = ax.plot(steps, curve, color=color, lw=2,
                                           label=f"predicted {name}")
        for name, real, color in (("real train", self.real_train, "C0"),
                                  ("real eval", self.real_eval, "C2")):
            if real is None:
                continue
            for k, curve in enumerate(np.atleast_2d(np.asarray(real, dtype=np.float64))):
                (line,) = ax.plot(np.arange(len(curve)), curve, color=color, lw=1, ls=":",
                                  label=name if k == 0 else "_nolegend_")
                self.lines_.setdefault(name, line)
        self.best_step_ = _first_min(self.eval)
        best = float(np.asarray(self.eval, dtype=np.float64)[self.best_step_])
        ax.axvline(self.best_step_, color="C2", ls="--", lw=1,
                   label=f"predicted best step ({self.best_step_})")
        ax.plot([self.best_step_], [best], "o", color="C2")
        self.real_best_step_ = None
        if self.real_eval is not None:
            real = np.atleast_2d(np.asarray(self.real_eval, dtype=np.float64))
            self.real_best_step_ = float(np.median([_first_min(c) for c in real]))
            ax.axvline(self.real_best_step_, color="C3", ls=":", lw=1,
                       label=f"real best step ({self.real_best_step_:g})")
        ax.set_xlabel("step")
        ax.set_ylabel(_YLABELS.get(self.metric, self.metric))
        ax.legend()
        self.ax_, self.figure_ = ax, ax.figure
        return self

    @classmethod
    def from_estimator(cls, estimator, *, metric="loss", real=None, ax=None, **overrides):
        """Plot a predictor's train and held-out curves (``fit(..., eval_set=...)``).

        Parameters
        ----------
        estimator : TrainingTimePredictor
            Fitted with ``eval_set``.
        metric : {"loss", "error"}, default="loss"
        real : RealTrainingResult, list of them, ValidationResult or None
            Real runs recorded with ``eval_set`` (:func:`sktt.validation.run_real_training`).
        ax : matplotlib Axes, optional
        **overrides
            Dynamics parameters for this plot.

        Returns
        -------
        display : HeldOutCurveDisplay
        """
        _check_predictor(estimator)
        train, train_band = predicted_curve_and_band(estimator, metric, **overrides)
        held, held_band = predicted_curve_and_band(estimator, "eval_" + metric, **overrides)
        disp = cls(train=train, eval=held, train_band=train_band, eval_band=held_band,
                   real_train=_real_curves(real, metric),
                   real_eval=_real_curves(real, "eval_" + metric), metric=metric)
        return disp.plot(ax=ax)

    @classmethod
    def from_validation(cls, result, *, metric=None, ax=None):
        """Plot the curves of a :func:`~sktt.validation.compare_with_real` result with held-out
        curves (a predictor fitted with ``eval_set``).

        Returns
        -------
        display : HeldOutCurveDisplay
        """
        metric = result.metric if metric is None else metric
        held = result.predicted_curves.get("eval_" + metric)
        if held is None:
            raise ValueError("this ValidationResult has no held-out curves; fit the predictor "
                             "with eval_set=(X_val, y_val) before compare_with_real.")
        disp = cls(train=result.predicted_curves[metric], eval=held,
                   train_band=result.predicted_bands.get(metric),
                   eval_band=result.predicted_bands.get("eval_" + metric),
                   real_train=_real_curves(result, metric),
                   real_eval=_real_curves(result, "eval_" + metric), metric=metric)
        return disp.plot(ax=ax)
