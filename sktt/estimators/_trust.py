r"""Trust diagnostic: does the fixed-kernel linearisation describe this fine-tuning?

The prediction assumes the empirical NTK :math:`\Theta = J J^\top` stays what it
was at the pre-trained weights :math:`w_0`. The diagnostic asks the model how
much Θ changes over the distance the *linearised model itself* says the weights
travel, at a fraction of the fit's cost:

1. **Predicted displacement.** The linearised SGD moves the weights to
   :math:`w_T = w_0 + J^\top c_T`, where the coefficients :math:`c_T` come from
   the same function-space simulation that predicts the curve
   (:func:`sktt.dynamics._displacement.linear_displacement`, for the settings
   lr / momentum / batch_size / n_steps of the prediction). One
   vector-Jacobian product (one backward pass over the data) gives
   :math:`\Delta w`, per parameter tensor.
2. **Kernel change along it.** The kernel block of a seeded subset of
   ``_N_PROBE_SAMPLES`` samples is recomputed at :math:`w_T` exactly as ``fit``
   computed Θ (same projection, same seed) and compared with the same block of
   the fitted Θ: ``trace_ratio`` (the ``linearity_score``) and ``lambda_ratio``
   (top eigenvalues). Both are exactly 1 for a model linear in its parameters.
   (A first version used Hutchinson trace probes and Rayleigh–Ritz with
   matrix-free products over all N samples; they cost one backward pass over
   the data per probe, more than this exact block of a few samples.)
3. **Stability edge.** :math:`\eta\,\lambda_{\max}(H^{1/2}\Theta H^{1/2})/(2(1+m))`
   along the predicted trajectory (:func:`sktt.dynamics._displacement.stability_ratio`);
   1 is where the linearised heavy-ball iteration stops converging on the
   quadratic model. For cross-entropy the curvature falls as the outputs
   saturate, so real and linearised training tolerate a few times more.

We probe at the predicted *end point* :math:`w_T` rather than along
:math:`-s\,\eta\nabla L(w_0)`: it is where the prediction says training goes,
so its distance grows with lr and n_steps as the real risk does, and it
includes every mode the prediction moves, not only the first gradient's (in the
calibration, the gradient-direction probe over-reacted to large learning rates
on the convnet whose prediction was good).

Levels (thresholds ``GROWTH``, ``SHRINK``, ``LAMBDA_GROWTH``, ``STABILITY``,
calibrated on the four cases of ``docs/trust.rst``): "unreliable" when the
trace grows by 40 % or more, shrinks to 35 % or less, or the setting is well
past the stability edge; "doubtful" from 15 % growth, 60 % shrinkage, a doubled
λ_max or near the edge; "ok" otherwise. Growth is judged more strictly than
shrinkage because in every calibration case where the kernel grew, real
training was faster than predicted (the predicted T_ε is then an over-estimate),
while moderate shrinkage along the probe went with accurate predictions.

The diagnostic depends on the dynamics parameters, which are read at predict
time: ``fit`` computes it for the estimator's own settings (``trust_``) and
:meth:`TrustMixin.trust_report` recomputes it lazily (cached per setting) for
overrides, reusing the inputs and a snapshot of the trainable weights and
buffers taken at ``fit`` (so later in-place changes to the user's model do not
leak in).
"""

import copy
import math
import time
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from ..dynamics import simulate
from ..dynamics._displacement import linear_displacement, stability_ratio
from ..exceptions import LinearizationWarning
from ..gradients import index_inputs, ntk_from_model
from ..gradients._probes import JacobianOperator
from ..utils import derive_seed, parse_memory
from ..utils._torch import model_untouched
from ._relinearize import AUTO_STAGES

__all__ = ["TrustReport", "TrustMixin", "assess_trust"]

# Thresholds (calibrated on the four cases of docs/trust.rst, benchmarks/bench_trust.py).
GROWTH = (1.15, 1.4)    # trace ratio at/above: "doubtful", "unreliable"
SHRINK = (0.6, 0.35)    # trace ratio at/below: "doubtful", "unreliable"
LAMBDA_GROWTH = 2.0     # λ_max ratio at/above: at least "doubtful"
STABILITY = {"cross_entropy": (3.0, 5.0), "mse": (0.5, 1.0)}  # "doubtful", "unreliable"
_N_PROBE_SAMPLES = 12  # samples whose kernel block is recomputed at w_T
_PROBE_SEED = 9  # coordinate of derive_seed for the probe subset
# Samples per forward/backward pass of the displacement's vector-Jacobian product: one
# graph of this size is reused chunk after chunk (one graph of all 150 samples of the
# residual convnet in benchmarks/bench_prediction_cost.py took 1.45-1.69 s in fresh
# memory, chunks of 38 samples 1.12-1.34 s).
_VJP_CHUNK = 32
LEVELS = ("ok", "doubtful", "unreliable")
SUGGESTED_REFRESH = 10


@dataclass(frozen=True)
class TrustReport:
    """How far the fixed-kernel linearisation can be trusted for one setting.

    Attributes
    ----------
    level : {"ok", "doubtful", "unreliable"}
    reason : str
        What drove the level, in words.
    linearity_score : float
        :math:`\\operatorname{tr}\\Theta(w_T) / \\operatorname{tr}\\Theta(w_0)`
        (= ``trace_ratio``), 1 for a model linear in its parameters.
    trace_ratio, lambda_ratio : float
        Kernel trace and top-eigenvalue ratios between the predicted end point
        :math:`w_T` and :math:`w_0`.
    stability_ratio : float
        :math:`\\eta\\lambda_{\\max}(H^{1/2}\\Theta H^{1/2}) / (2(1+m))`; 1 is the edge.
    relative_displacement : float
        :math:`\\lVert w_T - w_0\\rVert / \\lVert w_0\\rVert` over all trainable weights.
    group_displacement : dict of str to float
        The same per parameter tensor (inf for a tensor that starts at zero).
    direction : str
        ``"over-estimate"`` when the kernel grows (real training was then
        faster than predicted in most calibration runs, not all: see
        docs/trust.rst), ``"under-estimate"`` when it shrinks, ``"unknown"``
        near or past the stability edge, ``""`` when ok.
    settings : dict
        lr, momentum, batch_size, n_steps the report is for.
    seconds : float
        Wall time of the diagnostic.
    refresh : dict or None
        For a closed-loop prediction: the real steps taken and the measured
        kernel change over them (see :mod:`sktt.estimators._refresh`).
    adamw_mode : {"exact", "approximate"} or None
        For ``optimizer="adamw"``: the simulation mode the prediction uses
        (:mod:`sktt.estimators._adamw`). The exact mode's displacement is the
        simulated ``w_T − w0``; the approximate mode has no parameter-space
        displacement, so its report is "doubtful" and says so.
    relinearize : dict or None
        For a staged prediction (``relinearize``): ``stages``, ``cut_points``,
        ``kernel_trace_ratios`` (trace Θ at each cut point over trace Θ0),
        ``stage_stability_ratios`` (each stage's stability ratio, w0 first),
        ``refused_cuts`` ((step, ratio) of cuts past their own edge where the
        linearised loss rises), ``shortened`` (trust-region halvings),
        ``curve_change`` (the largest change of the mean loss curve against
        the plain prediction, in units of L_0: a large change means the fixed
        kernel was unreliable), ``auto_kernel_level`` and ``seconds`` (see
        :mod:`sktt.estimators._relinearize`).
    """

    level: str
    reason: str
    linearity_score: float
    trace_ratio: float
    lambda_ratio: float
    stability_ratio: float
    relative_displacement: float
    group_displacement: dict = field(repr=False)
    direction: str
    settings: dict
    seconds: float
    refresh: dict = None
    adamw_mode: str = None
    relinearize: dict = None

    def __str__(self):
        return f"{self.level}: {self.reason}"

    @property
    def ok(self):
        return self.level == "ok"


def _kernel_level(trace_ratio, lambda_ratio):
    """Level from the kernel ratios (growth is judged more strictly than shrinkage: see
    the calibration in docs/trust.rst)."""
    if not (np.isfinite(trace_ratio) and np.isfinite(lambda_ratio)):
        return "unreliable"
    if trace_ratio >= GROWTH[1] or trace_ratio <= SHRINK[1]:
        return "unreliable"
    if trace_ratio >= GROWTH[0] or trace_ratio <= SHRINK[0] or lambda_ratio >= LAMBDA_GROWTH:
        return "doubtful"
    return "ok"


def assess_trust(trace_ratio, lambda_ratio, stability, relative_displacement, *,
                 loss="cross_entropy", worst_group=None):
    """Level, reason and direction from the measured ratios (the calibrated rule).

    Returns
    -------
    level : {"ok", "doubtful", "unreliable"}
    reason : str
    direction : {"", "over-estimate", "under-estimate", "unknown"}
    """
    k_level = _kernel_level(trace_ratio, lambda_ratio)
    s_doubt, s_bad = STABILITY[loss]
    s_level = "unreliable" if stability >= s_bad else "doubtful" if stability >= s_doubt else "ok"
    level = max(k_level, s_level, key=LEVELS.index)
    summary = (f"kernel trace ×{trace_ratio:.3g}, λ_max ×{lambda_ratio:.3g} along the predicted "
               f"weight displacement (‖Δw‖/‖w0‖ = {relative_displacement:.3g}")
    summary += f"; largest relative move: {worst_group})" if worst_group else ")"
    if level == "ok":
        return level, f"{summary}; stability ratio {stability:.3g}", ""
    reasons = []
    if k_level != "ok":
        reasons.append("the kernel changes: " + summary)
    if s_level != "ok":
        reasons.append(f"the learning rate is {'past' if stability >= 1 else 'near'} the "
                       f"stability edge (η·λ_max(H^½ΘH^½)/(2(1+m)) = {stability:.3g}; 1 is the "
                       "edge of the linearised dynamics): the real loss oscillates")
    if k_level != "ok" and s_level == "ok" and np.isfinite(trace_ratio):
        direction = "over-estimate" if trace_ratio > 1 or lambda_ratio >= LAMBDA_GROWTH \
            else "under-estimate"
    else:
        direction = "unknown"
    return level, "; ".join(reasons), direction


def _snapshot(model, names):
    """Detached copies of the trainable weights and of the buffers at fit."""
    params = dict(model.named_parameters(remove_duplicate=False))
    return ({n: params[n].detach().clone() for n in names},
            {n: b.detach().clone() for n, b in model.named_buffers(remove_duplicate=False)})


def _operator(est, chunk_size=256, inputs=None):
    """The Jacobian operator at the fit snapshot, on the fit inputs (or ``inputs``)."""
    state = est._trust_state
    op = JacobianOperator(est.model, state["names"],
                          state["inputs"] if inputs is None else inputs,
                          chunk_size=est.chunk_size or chunk_size, params=state["weights"])
    op.constants.update({n: b.to(op.device) for n, b in state["buffers"].items()})
    return op


def _probe_samples(est):
    """The seeded subset of samples whose kernel block is recomputed at w_T (sorted)."""
    n = est.n_samples_
    m = min(n, _N_PROBE_SAMPLES)
    rng = np.random.default_rng(derive_seed(est.seed_, _PROBE_SEED))
    return np.sort(rng.choice(n, size=m, replace=False))


def _subset_kernel(est, weights, sub):
    """Θ at ``weights`` on the samples ``sub``, estimated exactly as ``fit`` did (same
    projection and seed, and the fit's path: its layer-wise plan, or ``torch.func``,
    without resolving it again), on a copy of the model carrying the snapshot's buffers."""
    state = est._trust_state
    plan, method = state["plan"], state["path"]
    if plan is not None:  # the plan names module objects: of this model still (not replaced)?
        modules = {id(m) for m in est.model.modules()}
        if not all(id(m) in modules for m in plan.modules):
            plan = method = None  # resolved anew below
    method = method or getattr(est, "jacobian_method", "auto")
    # one deepcopy: the plan's modules become the copy's modules
    model, plan = copy.deepcopy((est.model, plan))
    named = dict(model.named_parameters(remove_duplicate=False))
    named_buffers = dict(model.named_buffers(remove_duplicate=False))
    with torch.no_grad():
        for k, w in weights.items():
            named[k].copy_(w)
        for k, b in state["buffers"].items():
            named_buffers[k].copy_(b)
    model.eval()
    theta, _ = ntk_from_model(
        model, index_inputs(state["inputs"], torch.as_tensor(sub)), state["names"],
        n_outputs=est.n_outputs_, projection=getattr(est, "projection_", est.projection),
        projection_dim=est.projection_dim,
        seed=est.seed_, chunk_size=est.chunk_size, n_jobs=None,
        max_memory=parse_memory("max_memory", est.max_memory),
        jacobian_method=method, layerwise_plan=plan,
        min_chunks=1)  # a dozen samples: one chunk (within the budget), not 8 tiny ones
    return theta


def compute_trust(est, recipe):
    """The :class:`TrustReport` of a fitted predictor for the training recipe ``recipe``."""
    start = time.perf_counter()
    if recipe.is_adamw:
        return _adamw_trust(est, recipe, start)
    n, c = est.f0_.shape
    T = recipe.n_steps
    batches = None
    if not recipe.full_batch:
        batches = [b[:1] for b in est._batch_sequence(recipe)]  # one path
    record = sorted({0, T // 2, T})
    coef, alpha, outputs = linear_displacement(est._kernel, est._problem(recipe), recipe,
                                               batches=batches, record_steps=record)
    settings = {"lr": recipe.lr, "momentum": recipe.momentum, "batch_size": recipe.batch_size,
                "n_steps": T}
    finite = [F for F, _ in (outputs[s] for s in record if s in outputs)
              if np.all(np.isfinite(F))]
    stab = stability_ratio(est._kernel, finite or [est.f0_], est.targets_, loss=est.loss,
                           recipe=recipe, batches=batches)
    if not np.all(np.isfinite(coef)):
        level, reason, direction = assess_trust(math.nan, math.nan, stab, math.inf, loss=est.loss)
        return TrustReport(level="unreliable", reason="the linearised training diverges; " + reason,
                           linearity_score=math.nan, trace_ratio=math.nan, lambda_ratio=math.nan,
                           stability_ratio=stab, relative_displacement=math.inf,
                           group_displacement={}, direction="unknown", settings=settings,
                           seconds=time.perf_counter() - start)
    with model_untouched(est.model):
        op0 = _operator(est, chunk_size=_VJP_CHUNK)
        delta = op0.vjp(coef)
        w0 = op0.params
        # w_T − w0 = Jᵀc + α·w0 (α ≠ 0 with weight decay: _displacement)
        delta = {k: delta[k] + alpha * w0[k].to(torch.float64) for k in w0}
    return _report_from_displacement(est, w0, delta, stab, settings, start)


def _report_from_displacement(est, w0, delta, stab, settings, start, *, adamw_mode=None,
                              note=""):
    """The kernel-change probe at w0 + Δw and the level it gives (any optimiser)."""
    with model_untouched(est.model):
        w1 = {k: (w0[k].to(torch.float64) + delta[k]) for k in w0}
        sub = _probe_samples(est)
        theta0 = est._kernel.block(sub)
        theta1 = _subset_kernel(est, w1, sub)
    finite1 = bool(np.all(np.isfinite(theta1)))  # the displaced weights may overflow the model
    tr0 = float(np.trace(theta0))
    tr1 = float(np.trace(theta1)) if finite1 else math.nan
    lam0 = float(np.linalg.eigvalsh(theta0)[-1])
    lam1 = float(np.linalg.eigvalsh(theta1)[-1]) if finite1 else math.nan
    groups = {}
    total_d = total_w = 0.0
    for k in w0:
        d2 = float((delta[k] ** 2).sum())
        w2 = float((w0[k].to(torch.float64) ** 2).sum())
        total_d, total_w = total_d + d2, total_w + w2
        groups[k] = math.sqrt(d2 / w2) if w2 > 0 else (math.inf if d2 > 0 else 0.0)
    rel = math.sqrt(total_d / total_w) if total_w > 0 else math.inf
    trace_ratio = tr1 / tr0 if tr0 > 0 else math.nan
    lambda_ratio = lam1 / lam0 if lam0 > 0 else math.nan
    worst = max((k for k in groups if np.isfinite(groups[k])), key=groups.get, default=None)
    worst_txt = f"{worst!r} {groups[worst]:.3g}" if worst is not None else None
    level, reason, direction = assess_trust(trace_ratio, lambda_ratio, stab, rel, loss=est.loss,
                                            worst_group=worst_txt)
    return TrustReport(level=level, reason=note + reason, linearity_score=trace_ratio,
                       trace_ratio=trace_ratio, lambda_ratio=lambda_ratio, stability_ratio=stab,
                       relative_displacement=rel, group_displacement=groups, direction=direction,
                       settings=settings, seconds=time.perf_counter() - start,
                       adamw_mode=adamw_mode)


def _adamw_trust(est, recipe, start):
    """AdamW's report: the exact mode probes the kernel at its simulated w_T (one path);
    the approximate mode, which has no parameter-space displacement, is "doubtful"."""
    settings = {"optimizer": "adamw", "lr": recipe.lr, "momentum": 0.0,
                "batch_size": recipe.batch_size, "n_steps": recipe.n_steps}
    mode = est._adamw_resolved_mode(recipe)
    if mode == "approximate":
        reason = ("AdamW approximate mode (the exact Jacobian rows exceed max_memory, or "
                  "adamw_mode='approximate'): a frozen diagonal preconditioner from the first "
                  "batches' squared gradients with per-layer rescaling; it assumes each layer's "
                  "v̂ shrinks uniformly over its coordinates, and it has no parameter-space "
                  "displacement to probe the kernel with. Measured error vs real AdamW in "
                  "docs/adamw.rst")
        return TrustReport(level="doubtful", reason=reason, linearity_score=math.nan,
                           trace_ratio=math.nan, lambda_ratio=math.nan, stability_ratio=math.nan,
                           relative_displacement=math.nan, group_displacement={},
                           direction="unknown", settings=settings,
                           seconds=time.perf_counter() - start, adamw_mode=mode)
    one = recipe.replace(n_paths=1)
    batches = None if recipe.full_batch else est._batch_sequence(one)
    kernel, problem, _ = est._adamw_operands(one)
    out = simulate(kernel, problem, one, batches=batches)
    names = est._trust_state["names"]
    w0 = est._trust_state["weights"]
    flat = out["weights"][0] - problem.w0
    if not np.all(np.isfinite(flat)):
        return TrustReport(level="unreliable", reason="the linearised AdamW training diverges",
                           linearity_score=math.nan, trace_ratio=math.nan, lambda_ratio=math.nan,
                           stability_ratio=math.nan, relative_displacement=math.inf,
                           group_displacement={}, direction="unknown", settings=settings,
                           seconds=time.perf_counter() - start, adamw_mode=mode)
    delta, offset = {}, 0
    for n in names:
        size = w0[n].numel()
        delta[n] = torch.as_tensor(flat[offset:offset + size].reshape(tuple(w0[n].shape)),
                                   dtype=torch.float64, device=w0[n].device)
        offset += size
    return _report_from_displacement(est, w0, delta, math.nan, settings, start, adamw_mode=mode,
                                     note="AdamW exact mode (no linear stability edge); ")


def warning_message(report, refresh_active=False):
    """The LinearizationWarning text of a report that is not ok."""
    s = report.settings
    head = (f"trust={report.level!r} for lr={s['lr']:g}, momentum={s['momentum']:g}, "
            f"batch_size={s['batch_size']}, n_steps={s['n_steps']}: {report.reason}.")
    if report.direction == "over-estimate":
        head += (" Read predicted training times as likely over-estimates (upper bounds), not "
                 "point estimates: where the kernel grew, real training was faster than the "
                 "fixed-kernel prediction in most calibration runs (tanh MLP, transformer), "
                 "though slower for a frozen-BatchNorm net (docs/trust.rst).")
    elif report.direction == "under-estimate":
        head += (" The kernel shrinks, so real training is likely slower than predicted: read "
                 "predicted training times as likely under-estimates, not point estimates.")
    else:
        head += (" Predicted training times are not reliable here, in either direction (the "
                 "real loss oscillates; the linearised one may oscillate differently).")
    if not refresh_active:
        head += (f" Pass relinearize={AUTO_STAGES} to re-linearise at the predicted weights "
                 f"(no training; about one more fit per point), or refresh_steps="
                 f"{SUGGESTED_REFRESH} (or refresh_seconds=...) to run a few real steps on a copy "
                 "of the model and re-linearise there (about one more fit).")
    return head


class TrustMixin:
    """Trust diagnostic and closed-loop refresh for :class:`~sktt.TrainingTimePredictor`.

    Kept apart from the estimator so the core class stays about the prediction.
    Expects the estimator's ``trust_check``, ``refresh_steps``, ``refresh_seconds`` and
    ``_check_fitted``.
    """

    # -------------------------------------------------------------- fit
    def _fit_trust(self, model, inputs, names, plan, path):
        """Snapshot what lazy re-computations need; diagnose the estimator's own settings.

        ``plan`` and ``path``: the fit's layer-wise plan (or None) and the
        ``jacobian_method`` its extraction ran with ("functorch" where the plan
        was None): the kernel probe takes the same path without resolving it
        again."""
        weights, buffers = _snapshot(model, names)
        self._trust_state = {"inputs": inputs, "names": list(names), "weights": weights,
                             "buffers": buffers, "plan": plan, "path": path}
        self._trust_cache = {}
        self._trust_warned = set()
        for attr in ("trust_", "linearity_score_", "kernel_lambda_ratio_", "stability_ratio_",
                     "relative_displacement_", "trust_seconds_"):
            self.__dict__.pop(attr, None)
        if not getattr(self, "trust_check", True):
            return
        setting = self._setting({})
        report = self._trust_for(setting)
        self.trust_ = report
        self.linearity_score_ = report.linearity_score
        self.kernel_lambda_ratio_ = report.lambda_ratio
        self.stability_ratio_ = report.stability_ratio
        self.relative_displacement_ = report.group_displacement
        self.trust_seconds_ = report.seconds
        self._warn_trust(setting, stacklevel=4)

    def _trust_key(self, setting):
        # the diagnostic depends on the recipe only (not on the solver or the paths)
        return setting.recipe.replace(solver="auto", n_paths=1, sde_noise="diagonal")

    def _trust_for(self, setting):
        key = self._trust_key(setting)
        if key not in self._trust_cache:
            self._trust_cache[key] = compute_trust(self, setting.recipe)
        return self._trust_cache[key]

    def _has_trust_state(self):
        """Whether the last fit kept what the diagnostic and the refresh need (a model)."""
        precomputed = getattr(self, "_precomputed", None)
        return hasattr(self, "_trust_state") and not (precomputed and precomputed())

    def _warn_trust(self, setting, stacklevel=3):
        """Emit one LinearizationWarning per setting whose plain prediction is not ok."""
        if not getattr(self, "trust_check", True) or not self._has_trust_state():
            return
        if setting.refresh_active or setting.relinearize_active:
            return  # refresh and stages report their own kernel change
        key = self._trust_key(setting)
        if key in self._trust_warned:
            return
        self._trust_warned.add(key)
        if key in self._trust_cache:
            report = self._trust_cache[key]
            if not report.ok:
                warnings.warn(warning_message(report), LinearizationWarning, stacklevel=stacklevel)
            return
        # A setting other than the fitted one: only the O(1) stability check runs
        # automatically, so a grid of settings stays cheap next to one fit; the
        # kernel-change probe (a few dozen passes) runs on demand in trust_report().
        recipe = setting.recipe
        stability = self._stability(recipe, sgd=not recipe.full_batch)
        doubtful, bad = STABILITY[self.loss]
        if stability >= doubtful:
            level = "unreliable" if stability >= bad else "doubtful"
            warnings.warn(
                f"trust={level!r} for {recipe.describe()}: the learning rate is "
                f"{'past' if stability >= 1 else 'near'} the stability edge "
                f"(η·λ_max(H^½ΘH^½)/(2(1+m)) = {stability:.3g} at w0): the real loss oscillates "
                "and predicted training times are not reliable. Call trust_report(...) with "
                "these settings for the full diagnostic.", LinearizationWarning,
                stacklevel=stacklevel)

    # -------------------------------------------------------------- public
    def trust_report(self, **overrides):
        """The trust diagnostic for the estimator's settings, or for ``overrides``.

        Parameters
        ----------
        **overrides
            Dynamics parameters (``lr``, ``momentum``, ``batch_size``, ``n_steps``,
            ...) for this call; the diagnostic is computed lazily and cached.

        Returns
        -------
        report : TrustReport
            With ``refresh`` filled in when a closed-loop refresh applies to
            these settings (its real steps are run if not done yet), and
            ``relinearize`` when open-loop stages do.
        """
        self._check_fitted()  # the estimator's: fitted, with the loss and model of the fit
        if not self._has_trust_state():
            raise ValueError("the trust diagnostic differentiates the model at other weights; "
                             "a predictor fitted with model='precomputed' has no model. Fit "
                             "with the torch model instead.")
        setting = self._setting(overrides)
        report = self._trust_for(setting)
        for active, key in ((setting.refresh_active, "refresh"),
                            (setting.relinearize_active, "relinearize")):
            if active:
                info = self._curves(setting).get(key)
                if info is not None:
                    report = replace(report, **{key: dict(info)})
        return report
