r"""Compare a prediction with the real fine-tuning it describes.

The paper (Zancato et al., 2020) scores a predicted ε-training-time
:math:`\hat T_\varepsilon` against the real one :math:`T_\varepsilon` of the same
fine-tuning run with two numbers, for a set of ε:

- the relative error :math:`|\hat T_\varepsilon - T_\varepsilon| / T_\varepsilon`;
- the error as a fraction of the step budget, :math:`|\Delta| / T` with
  :math:`\Delta = \hat T_\varepsilon - T_\varepsilon` and :math:`T` = ``n_steps``.

:func:`compare_with_real` runs the real fine-tuning a fitted
:class:`~sktt.TrainingTimePredictor` describes (same model, data, loss, lr,
momentum, batch size, number of steps, and for SGD by default the very batch
sequence of the prediction), records the full-training-set loss and error after
every step, and returns both curves with these metrics in a
:class:`ValidationResult`.
"""

import numbers
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..dynamics import check_eps, check_targets, epsilon_training_time, smooth_curve
from ..exceptions import ValidationWarning
from ..gradients._inputs import as_inputs
from ..utils import check_choice, check_int, derive_seed
from ..utils._torch import model_device_dtype
from ._flags import curve_error, curve_status, time_flags
from ._training import run_real_training

__all__ = ["ValidationResult", "compare_with_real", "time_prediction_errors"]

_METRICS = ("loss", "error")


def time_prediction_errors(predicted_times, real_times, n_steps):
    r"""The paper's two errors of predicted ε-training-times.

    Parameters
    ----------
    predicted_times : array-like of int
        Predicted :math:`\hat T_\varepsilon` in steps.
    real_times : array-like of int
        Real :math:`T_\varepsilon` in steps, broadcastable against
        ``predicted_times``. Negative entries mean "undefined" (e.g. a diverged
        curve) and give NaN errors.
    n_steps : int
        The step budget T of the curves.

    Returns
    -------
    relative : ndarray of float
        :math:`|\hat T_\varepsilon - T_\varepsilon| / \max(T_\varepsilon, 1)`.
        A real time of 0 (the curve starts within ε of its end) counts as one
        step, so the ratio stays defined.
    delta_over_T : ndarray of float
        :math:`|\hat T_\varepsilon - T_\varepsilon| / T`.

    Examples
    --------
    >>> from sktt.validation import time_prediction_errors
    >>> rel, frac = time_prediction_errors([90, 40], [100, 50], n_steps=200)
    >>> rel.tolist(), frac.tolist()
    ([0.1, 0.2], [0.05, 0.05])
    """
    n_steps = check_int("n_steps", n_steps, low=1)
    pred = np.asarray(predicted_times, dtype=np.float64)
    real = np.asarray(real_times, dtype=np.float64)
    pred, real = np.broadcast_arrays(pred, real)
    undefined = (pred < 0) | (real < 0)
    delta = np.abs(pred - real)
    relative = np.where(undefined, np.nan, delta / np.maximum(real, 1.0))
    delta_over_T = np.where(undefined, np.nan, delta / n_steps)
    return relative, delta_over_T


def _eps_times(curves, eps, smooth):
    """ε-times of each row of ``curves`` (R, T+1); -1 for rows that are not finite."""
    curves = np.atleast_2d(np.asarray(curves, dtype=np.float64))
    out = np.full((len(curves), len(eps)), -1, dtype=np.int64)
    for r, curve in enumerate(curves):
        if np.all(np.isfinite(curve)):
            out[r] = epsilon_training_time(smooth_curve(curve, smooth), eps)
    return out


def _as_band(band):
    """A (2, T+1) array of lower and upper edges, or None (also for a zero-width band)."""
    if band is None:
        return None
    band = np.asarray(band, dtype=np.float64)
    if band.ndim != 2 or len(band) != 2:
        return None
    if np.array_equal(band[0], band[1], equal_nan=True):
        return None  # deterministic solvers give lower = upper: nothing to draw
    return band


def predicted_curve_and_band(predictor, metric="loss", **overrides):
    """The predictor's curve and its (2, T+1) band (None when deterministic).

    ``metric`` ``"eval_loss"`` / ``"eval_error"``: the held-out curve (``on="eval"``).
    """
    if metric.startswith("eval_"):
        overrides = dict(overrides, on="eval")
        metric = metric[len("eval_"):]
    band = predictor.predict_curve(metric, return_band=True, **overrides)
    return band.mean, _as_band((band.lower, band.upper))


@dataclass
class ValidationResult:
    r"""Predicted and real curves of one fine-tuning setting, and the paper's errors.

    Returned by :func:`compare_with_real`. Arrays indexed by ``run`` hold one row
    per real run (several only for SGD with several seeds).

    Attributes
    ----------
    eps : ndarray of shape (E,)
        The ε the times below are measured at, in the metric's units.
    metric : {"loss", "error"}
        The curve the times are measured on.
    params : dict
        The dynamics parameters of the comparison (lr, momentum, batch_size,
        n_steps, solver).
    seeds : list
        DataLoader seed of each real run (None for full-batch GD).
    predicted_curves : dict
        ``{"loss": (T+1,), "error": (T+1,) or None}``, and ``"eval_loss"``,
        ``"eval_error"`` when the predictor was fitted with an ``eval_set``
        (the real runs then record the held-out curves too).
    predicted_bands : dict
        ``{"loss": (2, T+1) or None, "error": ...}``: lower and upper edge of the
        predicted band where the solver gives one.
    real_runs : list of RealTrainingResult
        The real curves (loss and error) and batches.
    predicted_times : ndarray of int, shape (E,)
        :math:`\hat T_\varepsilon` (-1 if the prediction diverges).
    real_times : ndarray of int, shape (n_runs, E)
        :math:`T_\varepsilon` of each real run (-1 if it diverged).
    relative_error : ndarray of shape (n_runs, E)
        :math:`|\hat T_\varepsilon - T_\varepsilon| / \max(T_\varepsilon, 1)`.
    delta_over_T : ndarray of shape (n_runs, E)
        :math:`|\hat T_\varepsilon - T_\varepsilon| / T`.
    smooth : int or None
        Moving-average window applied to the curves before measuring times.
    same_batches : bool
        True when the prediction was made for exactly the batch sequence of the
        (single) real run; False when it is the predictor's own prediction (for
        SGD: over its simulated batch orders) compared with independent runs.
    predicted_best_step : int or None
        With held-out curves: the step of the lowest predicted held-out
        ``metric`` (the early-stopping point); None without them.
    real_best_steps : ndarray of int, shape (n_runs,), or None
        The same for each real run.
    real_status : list of str, length n_runs
        ``"ok"``, ``"oscillates"`` or ``"diverged"`` for each real loss curve
        (definitions in :mod:`sktt.validation._flags`); a time error measured
        against a run that is not ``"ok"`` says little.
    predicted_status : str
        The same for the predicted loss curve.
    curve_error_median, curve_error_max : ndarray of shape (n_runs,)
        Median and maximum over steps 0..T of :math:`|\hat L_t - L_t| / L_t`
        on the loss curves, per real run (inf where a curve is not finite).
    predicted_time_flags : ndarray of str, shape (E,)
        ``"ok"``, ``"eps_exceeds_drop"`` (:math:`\hat T_\varepsilon = 0`: ε is
        larger than the whole predicted change), ``"not_reached"``
        (:math:`\hat T_\varepsilon = T`: not settled within the step budget) or
        ``"undefined"`` (-1).
    real_time_flags : ndarray of str, shape (n_runs, E)
        The same for the real times.
    """

    eps: np.ndarray
    metric: str
    params: dict
    seeds: list
    predicted_curves: dict = field(repr=False)
    predicted_bands: dict = field(repr=False)
    real_runs: list = field(repr=False)
    predicted_times: np.ndarray = None
    real_times: np.ndarray = None
    relative_error: np.ndarray = None
    delta_over_T: np.ndarray = None
    smooth: int = None
    same_batches: bool = True
    # predict_time(eps, metric, smooth=...) of the predictor, for times consistent with it
    # (for SGD its point time may be a median over paths); None: times of the curve.
    time_fn: object = field(default=None, repr=False, compare=False)
    predicted_best_step: int = None
    real_best_steps: np.ndarray = None
    real_status: list = None
    predicted_status: str = None
    curve_error_median: np.ndarray = None
    curve_error_max: np.ndarray = None
    predicted_time_flags: np.ndarray = None
    real_time_flags: np.ndarray = None

    def __post_init__(self):
        self.eps = np.atleast_1d(np.asarray(self.eps, dtype=np.float64))
        if self.predicted_curves.get(self.metric) is None:
            raise ValueError(f"metric={self.metric!r} is not available for this predictor "
                             "(regression with one output has no train error).")
        self.predicted_times = _eps_times(self.predicted_curve, self.eps, self.smooth)[0]
        if self.time_fn is not None and np.all(self.predicted_times >= 0):
            self.predicted_times = np.asarray(
                self.time_fn(self.eps, self.metric, self.smooth), dtype=np.int64).reshape(-1)
        self.real_times = _eps_times(self.real_curves, self.eps, self.smooth)
        self.relative_error, self.delta_over_T = time_prediction_errors(
            self.predicted_times[None, :], self.real_times, self.n_steps)
        held_out = self.predicted_curves.get("eval_" + self.metric)
        if held_out is not None and self.real_runs[0].eval_loss is not None:
            self.predicted_best_step = int(np.argmin(np.where(np.isfinite(held_out), held_out,
                                                              np.inf)))
            self.real_best_steps = np.array([
                int(np.argmin(np.where(np.isfinite(c), c, np.inf)))
                for c in (getattr(run, "eval_" + self.metric) for run in self.real_runs)])
        real_loss = np.stack([run.loss for run in self.real_runs])
        self.real_status = [curve_status(c) for c in real_loss]
        self.predicted_status = curve_status(self.predicted_curves["loss"])
        self.curve_error_median, self.curve_error_max = curve_error(
            self.predicted_curves["loss"], real_loss)
        self.predicted_time_flags = time_flags(self.predicted_times, self.n_steps)
        self.real_time_flags = time_flags(self.real_times, self.n_steps)

    def problems(self):
        """What makes these numbers less than they seem, one sentence each (empty if nothing).

        Returns
        -------
        problems : list of str
            Real runs that oscillate or diverge, the predicted curve doing so,
            and ε-times that are 0 (ε larger than the whole change) or T (not
            settled within the step budget).
        """
        out = []
        for status in ("diverged", "oscillates"):
            runs = [r for r, s in enumerate(self.real_status) if s == status]
            if runs:
                curves = "; ".join(_curve_head(self.real_runs[r].loss) for r in runs)
                out.append(f"real run(s) {runs} {status} (loss {curves}): the time errors "
                           "against them say little; try a smaller lr")
        if self.predicted_status != "ok":
            out.append(f"the predicted loss curve {self.predicted_status} "
                       f"({_curve_head(self.predicted_curves['loss'])})")
        unit = "" if self.metric == "loss" else " pp"
        for name, flags in (("predicted", self.predicted_time_flags[None, :]),
                            ("real", self.real_time_flags)):
            for flag, what in (("eps_exceeds_drop", "is 0: ε exceeds the whole change of the "
                                                    f"{self.metric} curve"),
                               ("not_reached", f"is T={self.n_steps}: the {self.metric} curve "
                                               "has not settled within ε by the last step")):
                hit = self.eps[np.any(flags == flag, axis=0)]
                if len(hit):
                    eps = ", ".join(f"{e:g}{unit}" for e in hit)
                    out.append(f"{name} T_ε at ε={eps} {what}")
        return out

    @property
    def n_steps(self):
        """The step budget T."""
        return int(self.params["n_steps"])

    @property
    def predicted_curve(self):
        """Predicted curve of ``metric``, shape (T+1,)."""
        return self.predicted_curves[self.metric]

    @property
    def predicted_band(self):
        """Predicted band of ``metric``, shape (2, T+1), or None."""
        return self.predicted_bands.get(self.metric)

    @property
    def real_curves(self):
        """Real curves of ``metric``, shape (n_runs, T+1)."""
        return np.stack([getattr(run, self.metric) for run in self.real_runs])

    @property
    def real_seconds_per_step(self):
        """Mean seconds per step of the real runs (forward, backward, update)."""
        return float(np.mean([run.seconds_per_step for run in self.real_runs]))

    def evaluate(self, eps=None, metric=None, smooth="keep"):
        """The same curves scored at other ε / on the other metric (no new training).

        Parameters
        ----------
        eps : float or array-like, optional
            New ε (default: the current ones).
        metric : {"loss", "error"}, optional
            New metric (default: the current one).
        smooth : int or None, optional
            New smoothing window (default: the current one).

        Returns
        -------
        result : ValidationResult
        """
        metric = self.metric if metric is None else check_choice("metric", metric, _METRICS)
        eps = self.eps if eps is None else _check_eps(eps)
        smooth = self.smooth if smooth == "keep" else _check_smooth(smooth)
        return replace(self, eps=eps, metric=metric, smooth=smooth)

    def summary(self):
        """Medians over real runs, per ε, as a JSON-serialisable dict."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
            return {
                "metric": self.metric,
                "eps": self.eps.tolist(),
                "predicted_time": self.predicted_times.tolist(),
                "real_time": np.median(self.real_times, axis=0).tolist(),
                "relative_error": _nan_to_none(np.nanmedian(self.relative_error, axis=0)),
                "delta_over_T": _nan_to_none(np.nanmedian(self.delta_over_T, axis=0)),
                "predicted_time_flag": self.predicted_time_flags.tolist(),
                "real_time_flag": [_join(col) for col in self.real_time_flags.T],
                "real_status": _join(self.real_status),
                "curve_error_median": _nan_to_none([np.median(self.curve_error_median)])[0],
                "curve_error_max": _nan_to_none([np.max(self.curve_error_max)])[0],
                **({} if self.predicted_best_step is None else {
                    "predicted_best_step": self.predicted_best_step,
                    "real_best_step": float(np.median(self.real_best_steps))}),
            }

    def to_dict(self, include_curves=False):
        """Everything as plain Python types (for ``json.dumps``).

        Parameters
        ----------
        include_curves : bool, default=False
            Also include the predicted and real curves of both metrics.
        """
        out = {
            "params": {k: v for k, v in self.params.items()},
            "seeds": list(self.seeds),
            "metric": self.metric,
            "smooth": self.smooth,
            "same_batches": bool(self.same_batches),
            "eps": self.eps.tolist(),
            "predicted_times": self.predicted_times.tolist(),
            "real_times": self.real_times.tolist(),
            "relative_error": [_nan_to_none(r) for r in self.relative_error],
            "delta_over_T": [_nan_to_none(r) for r in self.delta_over_T],
            "real_seconds_per_step": self.real_seconds_per_step,
            "real_status": list(self.real_status),
            "predicted_status": self.predicted_status,
            "curve_error_median": _nan_to_none(self.curve_error_median),
            "curve_error_max": _nan_to_none(self.curve_error_max),
            "predicted_time_flags": self.predicted_time_flags.tolist(),
            "real_time_flags": self.real_time_flags.tolist(),
            "problems": self.problems(),
        }
        if self.predicted_best_step is not None:
            out["predicted_best_step"] = self.predicted_best_step
            out["real_best_steps"] = self.real_best_steps.tolist()
        if include_curves:
            out["predicted_curves"] = {k: _nan_to_none(v) for k, v in
                                       self.predicted_curves.items() if v is not None}
            out["real_curves"] = {m: [_nan_to_none(getattr(r, m)) for r in self.real_runs]
                                  for m in self.predicted_curves
                                  if getattr(self.real_runs[0], m, None) is not None}
        return out


def _join(flags):
    """The distinct flags of several runs, in order of first appearance, joined by '+'."""
    return "+".join(dict.fromkeys(str(f) for f in flags))


def _curve_head(curve, n=4):
    """The first values of a curve and its last, for a message: '1.39 → 0.67 → … → 8.07'."""
    curve = np.asarray(curve, dtype=np.float64)
    head = " → ".join(f"{v:.3g}" for v in curve[:n])
    return head if len(curve) <= n else f"{head} → … → {curve[-1]:.3g}"


def _nan_to_none(a):
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(a, dtype=np.float64)]


def _check_eps(eps):
    """ε as a 1-D array (one column per value), validated by the one rule of the dynamics."""
    return np.atleast_1d(check_eps(eps))


def _check_smooth(smooth):
    return None if smooth is None else check_int("smooth", smooth, low=1)


#: Recipe fields reported in ``ValidationResult.params``.
_RECIPE_REPORT = ("optimizer", "lr", "momentum", "dampening", "nesterov", "weight_decay", "batch_size",
                  "n_steps", "n_paths", "drop_last")


def _check_seeds(seeds):
    if isinstance(seeds, numbers.Integral) and not isinstance(seeds, bool):
        seeds = [seeds]
    try:
        seeds = [check_int("seeds", s, low=0) for s in seeds]
    except TypeError as exc:
        raise TypeError(f"seeds={seeds!r} is invalid; accepted: None (the prediction's own "
                        "batch order), an int >= 0 or a sequence of them.") from exc
    if not seeds:
        raise ValueError("seeds is empty; accepted: None, an int >= 0 or a non-empty sequence.")
    return seeds


def compare_with_real(predictor, X, y=None, *, eps=(0.01, 0.03), metric="loss", seeds=None,
                      smooth=None, train_mode=False, **overrides):
    r"""Run the real fine-tuning a fitted predictor describes and score the prediction.

    The real run trains a copy of ``predictor.model`` with ``torch.optim.SGD``
    on ``(X, y)`` with the predictor's loss and dynamics parameters (or
    ``overrides``) and records the full-training-set loss and error after every
    step (see :func:`run_real_training`). The user's model is not modified.

    Parameters
    ----------
    predictor : TrainingTimePredictor
        A fitted predictor.
    X : Tensor, ndarray or torch.utils.data.Dataset
        The training inputs the predictor was fitted on.
    y : array-like or None, default=None
        Their targets; None reuses ``predictor.targets_`` (or the Dataset's).
    eps : float or array-like of float, default=(0.01, 0.03)
        ε in the metric's units (loss units, or percentage points for the error).
    metric : {"loss", "error"}, default="loss"
        The curve the ε-times are measured on. Both curves are recorded;
        :meth:`ValidationResult.evaluate` re-scores without training again.
    seeds : None, int or sequence of int, default=None
        Minibatch order of the real runs (SGD only).

        - None: one real run with the batch order of the predictor's first
          simulated path (a shuffling DataLoader seeded
          ``predictor.dataloader_seed(0)``), and the prediction is made for
          exactly that batch sequence, so the two curves differ only by the
          linearisation (``result.same_batches`` is True).
        - Ints: DataLoader seeds of independent real runs, one run each, compared
          with the predictor's own prediction (for SGD the mean over its
          simulated batch orders, and ``predict_time``'s point time), to see
          the prediction against the spread of real training.
    smooth : int or None, default=None
        Moving-average window applied to both curves before measuring times.
    train_mode : bool, default=False
        Take the real steps in ``train()`` mode. The prediction linearises the
        ``eval()``-mode function, so the default compares like with like.
    **overrides
        Dynamics parameters (``lr``, ``momentum``, ``batch_size``, ``n_steps``,
        ``solver``) for this comparison, as in ``predictor.predict_curve``.

    Returns
    -------
    result : ValidationResult
        Real and predicted curves, :math:`\hat T_\varepsilon`, :math:`T_\varepsilon`
        and the errors :math:`|\Delta|/T_\varepsilon` and :math:`|\Delta|/T`. When
        the predictor was fitted with ``eval_set``, the real runs record the
        held-out loss and error too, and the result has the predicted and real
        held-out curves and best steps (``predicted_best_step``,
        ``real_best_steps``).

    Warns
    -----
    UserWarning
        If the real loss at step 0 differs from the predicted one: ``X``/``y``
        are not the fitted data, or the model changed since ``fit``.
    ValidationWarning
        If a real run (or the prediction) oscillates or diverges, or an ε-time
        is 0 or ``n_steps`` (see :meth:`ValidationResult.problems`; the same
        flags are in the result's fields and :meth:`~ValidationResult.to_dict`).

    See Also
    --------
    run_real_training : The real fine-tuning loop.
    time_prediction_errors : The two error measures.
    sktt.plotting.TrainingCurveDisplay : Plot the curves of the result.
    sktt.plotting.PredictedVsRealDisplay : Predicted vs real times of many results.

    Examples
    --------
    >>> from sktt import TrainingTimePredictor
    >>> from sktt.datasets import load_demo
    >>> from sktt.validation import compare_with_real
    >>> demo = load_demo(n_samples=60)
    >>> ttp = TrainingTimePredictor(demo.model, lr=0.005, n_steps=30).fit(demo.X, demo.y)
    >>> res = compare_with_real(ttp, demo.X, demo.y, eps=[0.01, 0.03])
    >>> res.real_times.shape, res.relative_error.shape
    ((1, 2), (1, 2))
    """
    if not hasattr(predictor, "f0_") or not hasattr(predictor, "get_recipe"):
        raise TypeError("predictor must be a fitted TrainingTimePredictor; call fit(X, y) first.")
    if not isinstance(predictor.model, torch.nn.Module):
        raise ValueError(f"compare_with_real trains predictor.model for real, but the predictor "
                         f"has model={predictor.model!r} (fitted on JacobianFeatures output); "
                         "fit a TrainingTimePredictor with the torch model instead.")
    predictor._check_fitted()  # the loss and model of its fit (y is cast for that loss below)
    metric = check_choice("metric", metric, _METRICS)
    eps = _check_eps(eps)
    smooth = _check_smooth(smooth)
    recipe = predictor.get_recipe(**overrides)  # validates the overrides
    # the recipe as parameters, for the report and the predictions below
    p = {name: getattr(recipe, name) for name in _RECIPE_REPORT}
    p["solver"] = overrides.get("solver", predictor.get_params()["solver"])
    scheduler = overrides.get("lr_scheduler", predictor.get_params()["lr_scheduler"])

    _, dtype = model_device_dtype(predictor.model)
    inputs, y = as_inputs(X, y, float_dtype=dtype)  # any container the predictor takes
    if len(inputs) != predictor.n_samples_:
        raise ValueError(f"X has {len(inputs)} samples but the predictor was fitted on "
                         f"{predictor.n_samples_}; pass the training data of the fit.")
    if y is None:
        y = torch.as_tensor(np.asarray(predictor.targets_))
    # the fit's rule for targets (a cast would truncate float labels 0.4 -> 0, a reshape
    # would fold one-hot rows into labels): the same error as fit for the same y
    y = torch.as_tensor(check_targets(y.detach().cpu().numpy(), predictor.loss,
                                      predictor.n_outputs_))
    if predictor.loss != "cross_entropy":
        y = y.to(dtype)

    sgd = not recipe.full_batch
    if seeds is not None:  # checked for gradient descent too, which has no batch order to seed
        seeds = _check_seeds(seeds)
    if not sgd:
        seeds = [None]
    elif seeds is None:
        seeds = [predictor.dataloader_seed(0) if hasattr(predictor, "dataloader_seed")
                 else derive_seed(predictor.seed_, 0)]
    held_out = None
    if getattr(predictor, "eval_f0_", None) is not None:
        held_out = (predictor._eval_inputs, torch.as_tensor(np.asarray(predictor.eval_targets_)))
    runs = []
    for seed in seeds:
        runs.append(run_real_training(
            predictor.model, inputs, y, loss=predictor.loss, lr=recipe.lr,
            optimizer=recipe.optimizer, betas=recipe.betas, adam_eps=recipe.adam_eps,
            momentum=recipe.momentum, dampening=recipe.dampening, nesterov=recipe.nesterov,
            weight_decay=recipe.weight_decay,
            lr_scheduler=scheduler if callable(scheduler) else recipe.lr_schedule,
            batch_size=recipe.batch_size, n_steps=recipe.n_steps,
            seed=0 if seed is None else seed, drop_last=recipe.drop_last,
            train_mode=train_mode, eval_set=held_out,
            output=predictor.get_params().get("output")))

    # Same batches: predict for exactly the real run's batch sequence, so the curves
    # differ only by the linearisation. Otherwise: the predictor's own prediction.
    same_batches = sgd and len(runs) == 1 and _same_seed_mode(seeds, predictor)
    predict_kw = dict(overrides)
    if same_batches:
        predict_kw["batches"] = runs[0].batches
    curves, bands = {}, {}
    # sde, AdamW's approximate mode: training curves only
    eval_curves = held_out is not None and predictor._held_out_refusal(
        predictor._setting(overrides)) is None
    for m in _METRICS + (tuple("eval_" + m for m in _METRICS) if eval_curves else ()):
        if m.endswith("error") and not predictor._has_error_metric():
            curves[m] = bands[m] = None
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # divergence shows as non-finite curves / -1 times
            curves[m], bands[m] = predicted_curve_and_band(predictor, m, **predict_kw)
        if same_batches:
            # The band describes the spread over the predictor's own batch orders.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                bands[m] = predicted_curve_and_band(predictor, m, **overrides)[1]

    time_fn = _PredictorTimes(predictor, predict_kw)
    real0, pred0 = runs[0].loss[0], curves["loss"][0]
    if not np.isclose(real0, pred0, rtol=1e-4, atol=1e-6):
        warnings.warn(f"the real loss at step 0 ({real0:.6g}) differs from the predicted one "
                      f"({pred0:.6g}): X and y are not the data the predictor was fitted on, or "
                      "the model changed since fit.", UserWarning, stacklevel=2)
    result = ValidationResult(eps=eps, metric=metric, params=dict(p), seeds=seeds,
                              predicted_curves=curves, predicted_bands=bands, real_runs=runs,
                              smooth=smooth, same_batches=same_batches or not sgd,
                              time_fn=time_fn)
    problems = result.problems()
    if problems:
        warnings.warn("the comparison is not what its numbers suggest: " + "; ".join(problems)
                      + ".", ValidationWarning, stacklevel=2)
    return result


class _PredictorTimes:
    """``predict_time`` of a predictor with fixed keyword arguments (picklable)."""

    def __init__(self, predictor, kwargs):
        self.predictor = predictor
        self.kwargs = kwargs

    def __call__(self, eps, metric, smooth):
        from ..exceptions import DivergenceError

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return self.predictor.predict_time(eps, metric, smooth=smooth, **self.kwargs)
            except DivergenceError:  # no predicted time: -1, as for a non-finite curve
                return np.full(np.shape(eps), -1, dtype=np.int64)


def _same_seed_mode(seeds, predictor):
    """Whether the single real run used the prediction's own first batch order."""
    first = (predictor.dataloader_seed(0) if hasattr(predictor, "dataloader_seed")
             else derive_seed(predictor.seed_, 0))
    return list(seeds) == [first]

