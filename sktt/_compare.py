r"""Grid comparisons: one model, several target datasets, a grid of hyper-parameters.

Θ depends on (model, data) only, never on lr / momentum / batch size / T, so
:func:`compare` fits one :class:`~sktt.TrainingTimePredictor` per dataset
(gradients once) and evaluates every grid setting on it (dynamics only). The
datasets are independent, so they are fitted in parallel with ``n_jobs``
(any joblib backend, Dask's included).

The result, a :class:`Comparison`, is a tidy table -- one row per dataset ×
setting -- that converts to a pandas DataFrame and plots the predicted
training times across datasets, one bar per setting.
"""

import math
import numbers
import warnings

import numpy as np
import torch
from sklearn.model_selection import ParameterGrid

from .dynamics import epsilon_flags
from .estimators import TrainingTimePredictor
from .exceptions import DivergenceError, DivergenceWarning, LinearizationWarning
from .gradients._parallel import map_chunks, n_workers_for
from .utils import check_bool, check_choice, check_n_jobs

__all__ = ["Comparison", "compare"]

GRID_KEYS = ("lr", "momentum", "dampening", "nesterov", "weight_decay", "lr_scheduler",
             "batch_size", "n_steps", "solver", "eps")
_SETTING_COLUMNS = ("lr", "momentum", "batch_size", "n_steps")
_METRICS = ("loss", "error")


# ---------------------------------------------------------------------- inputs
def _as_xy(name, data):
    """``(X, y, eval_set)`` from an (X, y) pair, an (X, y, X_val, y_val) quadruple, a dict
    with ``X``, ``y`` and optionally ``eval_set``, a torch Dataset (y None) or a Bunch with
    X and y; ``eval_set`` is None without held-out data."""
    if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, torch.Tensor):
        return data, None, None
    if isinstance(data, (tuple, list)) and len(data) in (2, 4):
        return data[0], data[1], (tuple(data[2:]) if len(data) == 4 else None)
    if isinstance(data, dict) and {"X", "y"} <= set(data) <= {"X", "y", "eval_set"}:
        return data["X"], data["y"], data.get("eval_set")
    if hasattr(data, "X") and hasattr(data, "y"):
        return data.X, data.y, None
    raise TypeError(f"datasets[{name!r}] is a {type(data).__name__}; accepted: an (X, y) pair, an "
                    "(X, y, X_val, y_val) quadruple or a dict {'X': X, 'y': y, 'eval_set': "
                    "(X_val, y_val)} (held-out data), a torch Dataset yielding (x, y) pairs, or "
                    "an object with X and y attributes (e.g. sktt.datasets.load_demo()).")


def _n_samples(X):
    if isinstance(X, (tuple, list)):
        return len(X[0])
    return len(X)


def _check_grid(param_grid):
    """The list of settings (dicts), checked: only dynamics parameters and eps vary."""
    if param_grid is None:
        return [{}]
    grids = [param_grid] if isinstance(param_grid, dict) else list(param_grid)
    for grid in grids:
        if not isinstance(grid, dict):
            raise TypeError(f"param_grid must be a dict or a list of dicts, got an element of "
                            f"type {type(grid).__name__}.")
        unknown = sorted(set(grid) - set(GRID_KEYS))
        if unknown:
            raise ValueError(f"param_grid has key(s) {unknown}; accepted: {list(GRID_KEYS)}. "
                             "Gradient parameters (projection, ...) cannot vary in the grid, "
                             "since Θ is computed once per dataset; pass them as keyword "
                             "arguments, or call compare once per value.")
    return list(ParameterGrid(param_grid))


# ---------------------------------------------------------------------- worker
def _is_sgd(ttp, dyn):
    return (dyn.get("batch_size", ttp.batch_size) is not None
            or dyn.get("solver", ttp.solver) == "sde")


def _evaluate(item, model, settings, options):
    """Fit one dataset and evaluate every setting: ``(rows, predictor)``."""
    name, X, y, eval_set = item
    params = dict(options["predictor_params"])
    first = {k: v for k, v in settings[0].items() if k != "eps"}
    ttp = TrainingTimePredictor(model, **{**params, **first})
    ttp.set_params(trust_check=False)  # no fit-time diagnostic of one arbitrary setting
    ttp.fit(X, y, eval_set=eval_set)
    n = ttp.n_samples_
    if options["measure_time"]:
        sizes = sorted({s.get("batch_size", ttp.batch_size) or n for s in settings})
        ttp.measure_step_time(X, y, batch_size=sizes)
    rows = []
    for setting in settings:
        eps = setting.get("eps", options["eps"])
        dyn = {k: v for k, v in setting.items() if k != "eps"}
        row = {"dataset": name, "n_samples": n}
        row.update({k: dyn.get(k, getattr(ttp, k)) for k in _SETTING_COLUMNS})
        if "solver" in options["columns"]:
            row["solver"] = dyn.get("solver", ttp.solver)
        row["eps"] = eps
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DivergenceWarning)  # the diverged column says it
            warnings.simplefilter("ignore", LinearizationWarning)  # the trust column says it
            last = ttp.get_recipe(**dyn).n_steps  # the ends only: a factored run computes no more
            curve = ttp.predict_curve("loss", steps=[0, last], **dyn)
            diverged = any(issubclass(w.category, DivergenceWarning) for w in caught)
            dist = None
            try:
                if _is_sgd(ttp, dyn):
                    dist = ttp.predict_time(eps, options["metric"], return_distribution=True,
                                            **dyn)
                    t_eps = float(dist.point)
                else:
                    t_eps = float(ttp.predict_time(eps, options["metric"], **dyn))
            except DivergenceError:
                t_eps, diverged = math.nan, True
            row["t_eps"] = t_eps
            row["initial_loss"] = float(curve[0])
            row["final_loss"] = float(curve[-1])
            if options["metric"] == "error":
                row["final_error"] = float(ttp.predict_curve("error", steps=[last], **dyn)[-1])
            if options["any_sgd"]:  # quantiles of T_ε over SGD paths
                row["t_eps_low"], row["t_eps_high"] = (
                    (float(dist.lower), float(dist.upper)) if dist is not None
                    else (t_eps, t_eps))  # GD: deterministic
            row["eps_flag"] = ("undefined" if math.isnan(t_eps)
                               else _eps_flag(ttp, dyn, eps, options["metric"], last))
            if options["eval"]:
                row.update(_eval_columns(ttp, dyn, options["metric"], diverged))
            if options["measure_time"]:
                spp = ttp.seconds_per_step_[dyn.get("batch_size", ttp.batch_size) or n]
                row["seconds_per_step"] = spp
                row["seconds"] = t_eps * spp
            if options["trust"]:
                row["trust"] = ttp.trust_report(**dyn).level
        row["diverged"] = diverged
        rows.append(row)
    return rows, ttp


def _eps_flag(ttp, dyn, eps, metric, last):
    """What the row's T_ε says (:func:`~sktt.dynamics.epsilon_flags`), from its paths' ends
    (computed already for T_ε)."""
    band = ttp.predict_curve(metric, steps=[0, last], return_band=True, **dyn)
    return str(epsilon_flags(eps, band.mean[0], band.mean[-1], band.paths[:, -1]))


def _eval_columns(ttp, dyn, metric, diverged):
    """``best_step``, ``best_eval_<metric>``, ``final_eval_<metric>`` (NaN where unavailable:
    no eval set for this dataset, a diverged setting, or solver="sde")."""
    keys = ("best_step", f"best_eval_{metric}", f"final_eval_{metric}")
    solver = ttp.get_recipe(**dyn).resolved_solver
    if not ttp._has_eval_set() or diverged or solver == "sde":
        return dict.fromkeys(keys, math.nan)
    best = ttp.predict_best_step(metric, **dyn)
    return dict(zip(keys, (best.step, best.value, best.final)))


# ---------------------------------------------------------------------- public
def compare(model, datasets, param_grid=None, *, eps=None, metric="loss", n_jobs=None,
            measure_time=False, trust=False, verbose=0, **predictor_params):
    r"""Predicted training times of one model on several datasets over a hyper-parameter grid.

    Parameters
    ----------
    model : torch.nn.Module
        The pre-trained model, shared by all datasets. Never modified.
    datasets : dict of str to (X, y), (X, y, X_val, y_val), dict, torch Dataset or Bunch
        Named target tasks: ``(X, y)`` pairs as for
        :meth:`TrainingTimePredictor.fit <sktt.TrainingTimePredictor.fit>`, a
        Dataset yielding ``(x, y)``, or an object with ``X`` and ``y``
        attributes (e.g. :func:`sktt.datasets.load_demo`). With held-out data:
        an ``(X, y, X_val, y_val)`` quadruple or a dict ``{"X": X, "y": y,
        "eval_set": (X_val, y_val)}``; the table then gets held-out columns.
    param_grid : dict or list of dict, default=None
        :class:`sklearn.model_selection.ParameterGrid` over ``lr``,
        ``momentum``, ``batch_size`` (None = full batch), ``n_steps``,
        ``solver`` and ``eps``. None evaluates the predictor's own setting.
    eps : float, default=None
        ε of T_ε for settings whose grid has no ``eps``: in loss units, or
        percentage points with ``metric="error"``. None means 0.01 for the
        loss and 1.0 for the error.
    metric : {"loss", "error"}, default="loss"
        The curve T_ε is measured on.
    n_jobs : int or None, default=None
        Joblib workers over datasets (None defers to the active
        :func:`joblib.parallel_config`, e.g. a Dask backend). With one worker
        (or one dataset) the datasets run in turn and ``n_jobs`` parallelises
        each dataset's Jacobian chunks instead.
    measure_time : bool, default=False
        Also time a few real SGD steps per dataset and batch size
        (:meth:`~sktt.TrainingTimePredictor.measure_step_time`) and report
        predicted seconds.
    trust : bool, default=False
        Add the linearisation trust level of each setting
        (:meth:`~sktt.TrainingTimePredictor.trust_report`; costs about one
        kernel evaluation per setting) and silence the per-setting warnings.
    verbose : int, default=0
        Progress bar over datasets when > 0 (and over chunks when > 1).
    **predictor_params
        Other :class:`~sktt.TrainingTimePredictor` parameters (``loss``,
        ``projection``, ``projection_dim``, ``random_state``, ``max_memory``,
        default dynamics, ...). Not ``n_jobs`` (see above).

    Returns
    -------
    result : Comparison
        One row per dataset × setting, and the fitted predictors.

    See Also
    --------
    Comparison.to_pandas, Comparison.plot

    Notes
    -----
    Each dataset's Θ is computed once; a setting costs one run of the
    dynamics. Columns: ``dataset``, ``n_samples``, ``lr``, ``momentum``,
    ``batch_size``, ``n_steps``, (``solver``), ``eps``, ``t_eps`` (steps; NaN
    when the predicted training diverges), ``initial_loss``, ``final_loss``
    (:math:`L_0`, :math:`L_T`), (``final_error``), (``t_eps_low``,
    ``t_eps_high``: when the grid has SGD settings, the quantiles of T_ε
    over the simulated SGD paths of
    ``predict_time(return_distribution=True)``, levels from the predictor's
    ``quantiles``, default 5 % and 95 %; equal to ``t_eps`` for gradient
    descent), ``eps_flag`` (what T_ε says, :func:`~sktt.dynamics.epsilon_flags`:
    ``"ok"``; ``"eps_exceeds_drop"``, ε above the whole predicted change, T_ε = 0;
    ``"eps_below_noise"``, ε below the SGD noise of the final value, T_ε a chance
    crossing; ``"undefined"`` when the training diverges: the warnings
    ``predict_time`` would give),
    (``best_step``, ``best_eval_<metric>``, ``final_eval_<metric>``: when a
    dataset has held-out data, the predicted early-stopping step and the
    held-out loss or error there and at ``n_steps``, from
    :meth:`~sktt.TrainingTimePredictor.predict_best_step`; NaN for datasets
    without held-out data, diverged settings and ``solver="sde"``),
    (``seconds_per_step``, ``seconds``), (``trust``), ``diverged``.

    Examples
    --------
    >>> from sktt import compare
    >>> from sktt.datasets import load_demo
    >>> demo = load_demo(60)
    >>> other = load_demo(60, classes=(0, 1, 2, 3, 4))
    >>> result = compare(demo.model, {"5-9": demo, "0-4": other},
    ...                  {"lr": [0.01, 0.05]}, projection="countsketch",
    ...                  projection_dim=256, random_state=0, n_steps=50)
    >>> len(result), result.columns[:3]
    (4, ['dataset', 'n_samples', 'lr'])
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    if not isinstance(datasets, dict) or not datasets:
        raise TypeError("datasets must be a non-empty dict of name -> (X, y) (or Dataset); got "
                        f"{type(datasets).__name__}"
                        f"{' (empty)' if isinstance(datasets, dict) else ''}.")
    check_choice("metric", metric, _METRICS)
    check_n_jobs(n_jobs)
    unknown = set(predictor_params) - set(TrainingTimePredictor().get_params())
    if unknown:
        raise TypeError(f"unexpected keyword(s) {sorted(unknown)}; accepted: TrainingTimePredictor "
                        "parameters.")
    settings = _check_grid(param_grid)
    if any("eps" in s for s in settings) and eps is not None:
        raise ValueError("eps is both in param_grid and given as a keyword; give it once.")
    if eps is None:
        eps = 0.01 if metric == "loss" else 1.0
    items = []
    for name, data in datasets.items():
        X, y, eval_set = _as_xy(name, data)
        n = len(X) if y is None else _n_samples(X)
        for s in settings:
            b = s.get("batch_size", predictor_params.get("batch_size"))
            if b is not None and (not isinstance(b, numbers.Integral) or not 1 <= b <= n):
                raise ValueError(f"batch_size={b!r} is invalid for dataset {name!r} of {n} "
                                 f"samples; accepted: None (full batch) or an int in [1, {n}].")
        items.append((name, X, y, eval_set))
    workers = n_workers_for(n_jobs, len(items))
    params = dict(predictor_params)
    params["n_jobs"] = 1 if workers > 1 else n_jobs  # one level of parallelism
    params.setdefault("verbose", 1 if verbose > 1 else 0)
    columns = ["dataset", "n_samples", *_SETTING_COLUMNS]
    if any("solver" in s for s in settings):
        columns.append("solver")
    options = {"predictor_params": params, "eps": eps, "metric": metric,
               "measure_time": check_bool("measure_time", measure_time),
               "trust": check_bool("trust", trust),
               "columns": columns,
               "eval": any(item[3] is not None for item in items),
               "any_sgd": any(s.get("batch_size", predictor_params.get("batch_size"))
                              is not None or s.get("solver", predictor_params.get("solver"))
                              == "sde" for s in settings)}
    results = map_chunks(_evaluate, items, model, settings, options, n_jobs=workers,
                         verbose=verbose, desc="datasets", tasks_per_worker=len(items))
    rows = [row for part, _ in results for row in part]
    predictors = {name: ttp for (name, *_), (_, ttp) in zip(items, results)}
    return Comparison(rows, predictors, metric=metric)


class Comparison:
    """The table of :func:`compare`: one row per dataset × setting.

    Parameters
    ----------
    rows : list of dict
        The records, all with the same keys.
    predictors : dict of str to TrainingTimePredictor
        The fitted predictor of each dataset.
    metric : {"loss", "error"}, default="loss"

    Attributes
    ----------
    columns : list of str
    predictors_ : dict of str to TrainingTimePredictor
        Fitted per dataset: ``predictors_[name].predict_curve(lr=...)`` gives
        any curve of the grid (cached) or outside it.
    metric : str
    """

    def __init__(self, rows, predictors=None, *, metric="loss"):
        self._rows = [dict(r) for r in rows]
        self.columns = list(self._rows[0]) if self._rows else []
        self.predictors_ = dict(predictors or {})
        self.metric = metric

    def __len__(self):
        return len(self._rows)

    def __iter__(self):
        return iter(dict(r) for r in self._rows)

    def __getitem__(self, column):
        """One column as a numpy array (object dtype for text / None)."""
        if column not in self.columns:
            raise KeyError(f"no column {column!r}; columns: {self.columns}.")
        values = [r[column] for r in self._rows]
        if all(isinstance(v, (bool, np.bool_)) for v in values):
            return np.array(values, dtype=bool)
        if all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values):
            return np.array(values, dtype=np.float64)
        return np.array(values, dtype=object)

    def to_dict(self):
        """Columns as ``{name: list}``."""
        return {c: [r[c] for r in self._rows] for c in self.columns}

    def to_records(self):
        """Rows as a list of dicts."""
        return [dict(r) for r in self._rows]

    def to_pandas(self):
        """The table as a :class:`pandas.DataFrame` (pandas is an optional dependency)."""
        try:
            import pandas as pd
        except ImportError as exc:  # pragma: no cover - pandas is in the test extra
            raise ImportError("Comparison.to_pandas needs pandas; install it with `pip install "
                              "pandas` or `pip install sktt[pandas]`.") from exc
        return pd.DataFrame(self.to_dict(), columns=self.columns)

    def _settings(self):
        """Setting columns whose values vary, and each row's setting label."""
        keys = [c for c in ("lr", "momentum", "batch_size", "n_steps", "solver", "eps")
                if c in self.columns and len({repr(r[c]) for r in self._rows}) > 1]
        short = {"lr": "lr", "momentum": "m", "batch_size": "b", "n_steps": "T", "solver": "",
                 "eps": "ε"}

        def label(r):
            parts = []
            for k in keys:
                v = "full" if k == "batch_size" and r[k] is None else r[k]
                parts.append(f"{short[k]}={v:g}" if isinstance(v, float) else
                             (f"{short[k]}={v}" if short[k] else str(v)))
            return ", ".join(parts) or "setting"

        return keys, [label(r) for r in self._rows]

    def plot(self, *, ax=None, column="t_eps"):
        """Grouped bars: ``column`` (default the predicted T_ε) per dataset, one bar per setting.

        Parameters
        ----------
        ax : matplotlib Axes, default=None
            Where to draw; None makes a new figure.
        column : str, default="t_eps"
            A numeric column (e.g. ``"final_loss"``, ``"seconds"``).

        Returns
        -------
        ax : matplotlib Axes
        """
        from .plotting._axes import get_axes  # lazy matplotlib

        ax = get_axes(ax, "Comparison.plot")
        values = self[column].astype(np.float64)
        datasets = list(dict.fromkeys(r["dataset"] for r in self._rows))
        _, labels = self._settings()
        settings = list(dict.fromkeys(labels))
        width = 0.8 / len(settings)
        x = np.arange(len(datasets))
        band = column == "t_eps" and "t_eps_low" in self.columns
        for j, s in enumerate(settings):
            idx = [next((i for i, r in enumerate(self._rows)
                         if r["dataset"] == d and labels[i] == s), None) for d in datasets]
            v = np.array([np.nan if i is None else values[i] for i in idx])
            pos = x - 0.4 + width * (j + 0.5)
            yerr = None
            if band:
                lo = np.array([np.nan if i is None else self._rows[i]["t_eps_low"] for i in idx])
                hi = np.array([np.nan if i is None else self._rows[i]["t_eps_high"] for i in idx])
                yerr = np.clip(np.vstack([v - lo, hi - v]), 0, None)  # point may lie outside
            ax.bar(pos, v, width, label=s, yerr=yerr, capsize=2 if band else 0)
            for p, value in zip(pos, v):
                if not np.isfinite(value):  # diverged (or missing): say so instead of a gap
                    ax.annotate("div.", (p, 0), ha="center", va="bottom", rotation=90,
                                fontsize="x-small")
        ax.set_xticks(x)
        ax.set_xticklabels(datasets)
        unit = "steps" if column == "t_eps" else ""
        names = {"t_eps": f"predicted $T_\\varepsilon$ ({self.metric}, {unit})",
                 "seconds": "predicted seconds"}
        ax.set_ylabel(names.get(column, column))
        if len(settings) > 1:
            ax.legend(title="setting", fontsize="small")
        return ax

    def __repr__(self):
        if not self._rows:
            return "Comparison(empty)"
        shown = self._rows[:30]

        def fmt(v):
            if isinstance(v, float):
                return f"{v:.4g}"
            return str(v)

        cells = [[fmt(r[c]) for c in self.columns] for r in shown]
        widths = [max(len(c), *(len(row[j]) for row in cells)) for j, c in enumerate(self.columns)]
        lines = ["  ".join(c.rjust(w) for c, w in zip(self.columns, widths))]
        lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
        if len(self._rows) > len(shown):
            lines.append(f"... ({len(self._rows)} rows)")
        return "\n".join(lines)
