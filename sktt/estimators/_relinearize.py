r"""Open-loop stages: re-linearise at the weights the linearised model predicts.

The plain prediction freezes the kernel at :math:`w_0`. Where it moves (a
fresh head on a transformer, tanh MLPs, large learning rates) the real network
trains faster or slower than its linearisation. The linearised model itself
says where the weights go: during a stage that starts at :math:`w_s` with the
optimiser's momentum buffer :math:`\mathrm{buf}_s`, every update is a
combination of the Jacobian rows at :math:`w_s`, of :math:`w_s` (weight decay)
and of :math:`\mathrm{buf}_s` (momentum), so

.. math::

    w_t - w_s = J_s^\top c_t + \alpha_t w_s + \gamma_t \mathrm{buf}_s, \qquad
    \mathrm{buf}_t = J_s^\top \beta_t + b_t w_s + g_t \mathrm{buf}_s

(:func:`sktt.dynamics._displacement.stage_displacement` runs the recipe on these
:math:`NC + 2` coefficients). With ``relinearize=k`` the T steps are cut at k
points :math:`t_1 < \dots < t_k`; at each, one vector-Jacobian product gives
:math:`w_{t_j}` and :math:`\mathrm{buf}_{t_j}`, and the model is re-linearised
there (:func:`sktt.estimators._linearization.linearize_at`): its real outputs
:math:`f(w_{t_j})`, the kernel :math:`\Theta(w_{t_j})` (same projection and
seed as ``fit``), the function-space buffer :math:`A = J(w_{t_j})\,\mathrm{buf}`
and, with weight decay, the anchor :math:`\Phi = J(w_{t_j})\,w_{t_j}` (one
Jacobian-vector product each). The simulation continues from there with the
rest of the learning-rate schedule. No optimiser step is taken on the data.

* With a cut before every step (``k = n_steps - 1``) this is real full-batch
  gradient descent, term for term (momentum, dampening, Nesterov, weight
  decay); for a model linear in its parameters every stage has the same
  kernel and the staged prediction equals the plain one (both to round-off;
  ``tests/test_relinearize.py``).
* Cut points are geometric, :math:`t_j = \mathrm{round}(T^{j/(k+1)})` made
  strictly increasing (:func:`stage_boundaries`): the kernel moves most early
  (docs/trust.rst), and geometric points place most re-linearisations there.
* SGD: the kernel of each stage is computed at the *mean* of the paths'
  predicted weights (one kernel per stage, not one per path); every path keeps
  its own weights, buffer and batch order, and restarts from its own real
  outputs :math:`f(w_{p,t_j})` (one forward pass per path), linearised with
  that kernel.
* ``relinearize="auto"`` reads the trust diagnostic of the setting
  (:mod:`sktt.estimators._trust`): stages (``AUTO_STAGES`` of them) only when
  the kernel-change probe is not "ok"; otherwise the plain prediction, at no
  extra cost when the diagnostic is already computed (the fitted setting).

Cost: one kernel (about one ``fit``) per cut point, plus one backward pass
(:math:`w`, buf) and one or two double-backward passes (A, Φ) per path and cut
point; the dynamics are run twice per stage (curve, coefficients). The result
reports, per cut point, the step, the kernel trace relative to :math:`\Theta_0`,
and how far the staged curve moved from the plain one.
"""

import time

import numpy as np
import torch

from ..dynamics import loss_value, simulate, train_error
from ..dynamics._displacement import stage_displacement
from ..gradients._probes import JacobianOperator
from ..utils._torch import model_untouched
from ._linearization import linearize_at, model_at, set_weights

__all__ = ["AUTO_STAGES", "stage_boundaries", "staged_curves"]

#: Cut points of ``relinearize="auto"`` when the kernel moves (measured in
#: benchmarks/bench_trust.py; docs/trust.rst).
AUTO_STAGES = 4


def stage_boundaries(n_steps, k):
    """The k cut points in (0, n_steps): geometric, strictly increasing.

    Parameters
    ----------
    n_steps : int
    k : int
        In [0, n_steps]; ``n_steps`` cuts after every step (the last cut, at
        ``n_steps``, only evaluates the real outputs there).

    Returns
    -------
    list of int
    """
    cuts, last = [], 0
    for j in range(1, k + 1):
        t = max(last + 1, int(round(n_steps ** (j / (k + 1)))))
        cuts.append(t)
        last = t
    # strictly increasing from 1 may overshoot at the end: pull the tail back to n_steps
    for j in range(k - 1, -1, -1):
        cuts[j] = min(cuts[j], n_steps - (k - 1 - j))
    return cuts


def _resolve_stages(est, setting):
    """The number of cut points of a setting (``"auto"``: from the trust diagnostic)."""
    if setting.relinearize != "auto":
        return setting.relinearize, None
    from ._trust import _kernel_level

    report = est._trust_for(setting)
    level = _kernel_level(report.trace_ratio, report.lambda_ratio)
    return (0 if level == "ok" else AUTO_STAGES), level


def _stage_recipe(recipe, start, stop):
    schedule = None if recipe.lr_schedule is None else recipe.learning_rates[start:stop]
    return recipe.replace(n_steps=stop - start, lr_schedule=schedule, n_paths=1,
                          solver="discrete")


def _to64(tensors):
    return {n: t.detach().to(torch.float64) for n, t in tensors.items()}


def staged_curves(est, setting):
    """Curves of a fitted predictor with open-loop stages, in ``_curves``' format.

    Returns the dict of :func:`sktt.dynamics.simulate` (``"loss"``,
    ``"error"`` of shape (P, n_steps + 1), ``"diverged_at"``) plus
    ``"relinearize"``: the cut points, the kernel trace ratio at each, the
    largest change of the mean loss curve relative to the plain prediction
    (in units of L_0), and seconds.
    """
    recipe = setting.recipe
    if recipe.resolved_solver != "discrete":
        raise ValueError(f"relinearize continues the exact simulation from predicted weights; "
                         f"it needs solver='discrete' (or 'auto'), not solver={recipe.solver!r}.")
    if not est._has_trust_state():
        raise ValueError("relinearize differentiates the model at the predicted weights; a "
                         "predictor fitted with model='precomputed' has no model. Fit with the "
                         "torch model instead.")
    t0 = time.perf_counter()
    k, auto_level = _resolve_stages(est, setting)
    plain = est._simulate(recipe)
    info = {"stages": k, "cut_points": [], "kernel_trace_ratios": [], "auto_kernel_level":
            auto_level, "curve_change": 0.0, "seconds": 0.0}
    if k == 0:
        plain["relinearize"] = info
        info["seconds"] = time.perf_counter() - t0
        return plain
    T = recipe.n_steps
    cuts = stage_boundaries(T, k)
    bounds = [0] + cuts + [T]
    sgd = not recipe.full_batch
    n_paths = recipe.n_paths if sgd else 1
    batches = est._batch_sequence(recipe, n_paths) if sgd else None
    problem = est._problem(recipe)
    names = est._trust_state["names"]
    momentum, wd = recipe.momentum > 0, recipe.weight_decay > 0
    tr0 = float(np.trace(est.ntk_))
    # per path: weights, parameter-space buffer, outputs, function-space buffer, anchor
    w_start = _to64(est._trust_state["weights"])
    paths = [{"w": w_start, "buf": None, "F": est.f0_, "A": None, "jw": problem.jw0}
             for _ in range(n_paths)]
    pieces = {key: [[] for _ in range(n_paths)] for key in ("loss", "error")}
    has_error = problem.labels is not None
    diverged = np.full(n_paths, -1)
    with model_untouched(est.model):
        model = model_at(est)
        kernel, operator = est._kernel, None
        for s in range(len(bounds) - 1):
            start, stop = bounds[s], bounds[s + 1]
            last = s == len(bounds) - 2
            if s > 0 and start == T:  # a cut at the end: the real outputs at w_T only
                for i, p in enumerate(paths):
                    F = operator.at(p["w"]).outputs()
                    pieces["loss"][i].append(np.atleast_1d(loss_value(F, problem.targets,
                                                                      problem.loss)))
                    if has_error:
                        pieces["error"][i].append(np.atleast_1d(train_error(F, problem.labels)))
                info["cut_points"].append(T)
                break
            if s > 0:  # re-linearise at the mean of the paths' predicted weights
                mean_w = {n: sum(p["w"][n] for p in paths) / n_paths for n in names}
                set_weights(model, mean_w)
                lin = linearize_at(est, model)
                kernel, operator = lin.kernel, lin.operator
                info["cut_points"].append(start)
                info["kernel_trace_ratios"].append(lin.trace / tr0)
                for p in paths:
                    at = operator if n_paths == 1 else operator.at(p["w"])
                    p["F"] = lin.outputs if n_paths == 1 else at.outputs()
                    p["A"] = None if p["buf"] is None else lin.apply(p["buf"])
                    p["jw"] = lin.apply(p["w"]).reshape(p["F"].shape) if wd else None
            elif not last:  # the first stage runs on the fitted kernel
                operator = JacobianOperator(model, names, est._trust_state["inputs"],
                                            chunk_size=est.chunk_size or 256)
            rec = _stage_recipe(recipe, start, stop)
            cotangents = []
            for i, p in enumerate(paths):
                stage_problem = problem.with_outputs(p["F"], jw0=p["jw"]) if s else problem
                path_batches = (None if batches is None
                                else [b[i:i + 1] for b in batches[start:stop]])
                sim = simulate(kernel, stage_problem, rec, batches=path_batches,
                               momentum_buffer=p["A"])
                keep = slice(None) if last else slice(0, -1)
                pieces["loss"][i].append(sim["loss"][0, keep])
                if has_error:
                    pieces["error"][i].append(sim["error"][0, keep])
                if sim["diverged_at"][0] >= 0 and diverged[i] < 0:
                    diverged[i] = start + sim["diverged_at"][0]
                if last:
                    continue
                p["d"] = stage_displacement(kernel, stage_problem, rec, batches=path_batches,
                                            momentum_buffer=p["A"])
                cotangents.append(p["d"].coef)
                if momentum:
                    cotangents.append(p["d"].buffer_coef)
            if last:
                break
            if np.any(diverged >= 0) or not all(np.all(np.isfinite(c)) for c in cotangents):
                _fill_diverged(pieces, bounds, s, has_error)
                break
            products = iter(operator.vjp(np.stack(cotangents)))
            for p in paths:
                d = p.pop("d")
                jc = next(products)
                jb = next(products) if momentum else None
                w, buf = p["w"], p["buf"]
                p["w"] = {n: w[n] + jc[n] + d.alpha * w[n]
                          + (d.gamma * buf[n] if buf is not None else 0.0) for n in names}
                if momentum:
                    p["buf"] = {n: jb[n] + d.buffer_alpha * w[n]
                                + (d.buffer_gamma * buf[n] if buf is not None else 0.0)
                                for n in names}
    out = {"loss": np.stack([np.concatenate(c) for c in pieces["loss"]]),
           "error": (np.stack([np.concatenate(c) for c in pieces["error"]]) if has_error
                     else None),
           "eval_loss": None, "eval_error": None, "diverged_at": diverged}
    with np.errstate(invalid="ignore"):
        change = np.abs(out["loss"].mean(0) - plain["loss"].mean(0)) / plain["loss"][0, 0]
    info["curve_change"] = float(np.nanmax(change)) if np.any(np.isfinite(change)) else np.inf
    info["seconds"] = time.perf_counter() - t0
    out["relinearize"] = info
    return out


def _fill_diverged(pieces, bounds, s, has_error):
    """After a diverged stage s the rest of every curve is inf (error 100 %)."""
    rest = bounds[-1] - bounds[s + 1] + 1
    for i in range(len(pieces["loss"])):
        pieces["loss"][i].append(np.full(rest, np.inf))
        if has_error:
            pieces["error"][i].append(np.full(rest, 100.0))
