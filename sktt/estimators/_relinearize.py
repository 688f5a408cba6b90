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

* With a cut after every step (``k = n_steps``; ``n_steps - 1`` leaves the last
  point linearised) this is real full-batch gradient descent, term for term (momentum, dampening, Nesterov, weight
  decay); for a model linear in its parameters every stage has the same
  kernel and the staged prediction equals the plain one (both to round-off;
  ``tests/test_relinearize.py``) -- with the exact kernel: with a projection
  the stages move the weights by the exact :math:`J^\top c` while the
  dynamics use the sketched kernel, so they differ by the sketch's error
  (docs/trust.rst).
* Cut points (:func:`stage_boundaries`, the default) are geometric,
  :math:`t_j = \mathrm{round}(T^{j/(k+1)})` made strictly increasing: most
  re-linearisations early. With ``relinearize_tol`` they are adaptive
  (:func:`adaptive_cut`): from each stage's start, the trust diagnostic's
  subset-kernel probe (:func:`sktt.estimators._trust._subset_kernel`, same
  projection and seed as ``fit``) is evaluated at the weights the stage
  predicts for step t, first at t = T and then halving the distance, and the
  next cut is placed where the relative change
  :math:`\lVert\Theta_S(w_t) - \Theta_S(w_s)\rVert_F / \lVert\Theta_S(w_s)\rVert_F`
  reaches the tolerance (linear interpolation between the probes), at most k
  cuts; a model whose kernel does not move costs one probe and no cut.
  Measured (docs/trust.rst): at the same budget the adaptive rule was no more
  accurate than the geometric one and cost 2-5x more (each probe is a
  backward pass over the data plus the Jacobians of the probe subset, and the
  kernel moves by a larger share early than its Frobenius change suggests),
  so geometric stays the default.
* Every stage passes a trust-region test before its end becomes a cut
  (:meth:`_StagedRun.accepted`, ``ACCEPT_RATIO``): the network's real loss at
  the predicted end weights must confirm at least a quarter of the linearised
  decrease; otherwise the stage is halved. Without it, a long stage could end
  where the real loss is far above the linear one, and the next stage started
  from there (the spikes of docs/trust.rst).
* A cut is refused when the kernel there is past its own stability edge
  (:meth:`_StagedRun.stability`: the prediction's stability ratio for the
  rest of the schedule, at the cut's outputs, > 1) *and* the linearised loss
  on it, simulated to the end, rises above its value at the cut
  (:meth:`_StagedRun.rises`): the growing oscillation of a linear model past
  its edge, inside a stage where a test at its end does not look, while a
  real network there stops the growth of its curvature (the edge of
  stability, Cohen et al., 2021; measured, with the spikes it caused, in
  docs/trust.rst). The current linearisation then continues to the next cut
  point (adaptive rule: to the end); the refused kernel is still paid for.
  No threshold but the edge itself; the limit case (a cut before every step
  is real GD) holds where no cut is refused.
* SGD: the kernel of each stage is computed at the *mean* of the paths'
  predicted weights (one kernel per stage, not one per path); every path keeps
  its own weights, buffer and batch order, and restarts from its own real
  outputs :math:`f(w_{p,t_j})` (one forward pass per path), linearised with
  that kernel.
* Held-out rows (``fit(..., eval_set=...)``; :mod:`sktt.estimators._eval_set`)
  are re-linearised at every cut with the training rows, as the refresh does
  (:mod:`sktt.estimators._refresh`): one joint extraction gives Θ and the
  cross-kernel at the cut, the path restarts from its real held-out outputs
  :math:`f(w_{t_j}; X_{val})`, and the buffer and anchor JVPs run over the
  training and held-out inputs together (the stage's :math:`A` and
  :math:`\Phi` cover both). The weights move with the training rows only:
  the displacement coefficients live on the training rows (the stage kernel
  without its held-out rows). The acceptance test reads the training loss;
  after a cut at the last step both curves end at the real outputs at
  :math:`w_T`. With a cut before every step the held-out curves are real
  gradient descent's too.
* ``relinearize="auto"`` reads the trust diagnostic of the setting
  (:mod:`sktt.estimators._trust`): stages (``AUTO_STAGES`` of them) only when
  the kernel-change probe is not "ok"; otherwise the plain prediction, at no
  extra cost when the diagnostic is already computed (the fitted setting).

Cost: one kernel (about one ``fit``; with an eval set the joint one) per cut
point, plus one backward pass (:math:`w`, buf) and one or two double-backward
passes (A, Φ) per path and cut point; the dynamics are run twice per stage
(curve, coefficients). The result reports, per cut point, the step, the
kernel trace relative to :math:`\Theta_0`, and how far the staged curve moved
from the plain one.
"""

import time

import numpy as np
import torch

from ..dynamics import loss_value, simulate, train_error
from ..dynamics._displacement import max_curvature, stage_displacement
from ..gradients._probes import JacobianOperator
from ..utils._torch import model_untouched
from ._eval_set import concat_inputs
from ._linearization import linearize_at, model_at, set_weights

__all__ = ["AUTO_STAGES", "SGD_RESTART", "stage_boundaries", "staged_curves"]

#: The curves of a staged run and the value of a curve after a diverged stage.
_FILL = {"loss": np.inf, "error": 100.0, "eval_loss": np.inf, "eval_error": 100.0}

#: Most cut points of ``relinearize="auto"`` when the kernel moves (measured in
#: benchmarks/bench_trust.py; docs/trust.rst).
AUTO_STAGES = 4

#: How SGD paths continue after a cut: ``"own"`` (each path from its own
#: predicted weights and buffer, linearised with the kernel at the paths' mean)
#: or ``"mean"`` (every path restarts from the mean path's weights and buffer).
#: Measured in benchmarks/bench_trust.py (``--sgd``; docs/trust.rst).
SGD_RESTART = "own"

#: Trust-region acceptance of a stage: the network's real loss decrease at the
#: predicted end weights must be at least this share of the linearised one
#: (the textbook threshold of trust-region methods, Nocedal & Wright, ch. 4).
ACCEPT_RATIO = 0.25


def stage_boundaries(n_steps, k):
    """The k geometric cut points in (0, n_steps]: strictly increasing.

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


def adaptive_cut(change_at, start, n_steps, tol):
    """The next cut after ``start``: where the predicted kernel change reaches ``tol``.

    Probes the horizon ``n_steps`` first (one probe when the kernel does not
    move), then halves the distance from ``start`` while the change exceeds
    ``tol``, and interpolates linearly in the step between the last probe
    within ``tol`` (or ``start``, change 0) and the first beyond it.

    Parameters
    ----------
    change_at : callable
        ``change_at(t)``: the predicted relative kernel change between the
        stage's start and step t (inf where the prediction overflows).
    start, n_steps : int
    tol : float

    Returns
    -------
    stop : int
        In (start, n_steps); ``n_steps`` when no cut is needed.
    probes : list of (int, float)
        The steps probed and their changes.
    """
    probes = []
    hi = None
    t = n_steps
    while t > start:
        change = change_at(t)
        probes.append((t, change))
        if change <= tol:
            break
        hi = (t, change)
        t = start + (t - start) // 2
    if hi is None:
        return n_steps, probes
    lo = probes[-1] if probes[-1][1] <= tol else (start, 0.0)
    frac = (tol - lo[1]) / (hi[1] - lo[1]) if np.isfinite(hi[1]) else 0.0
    stop = max(start + 1, lo[0] + int(round(frac * (hi[0] - lo[0]))))
    return min(stop, n_steps), probes


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


def _moved(w, buf, d, jc, names):
    """:math:`w_s + J^\\top c + \\alpha w_s + \\gamma\\,\\mathrm{buf}_s` per tensor."""
    return {n: w[n] + jc[n] + d.alpha * w[n] + (d.gamma * buf[n] if buf is not None else 0.0)
            for n in names}


def _mean(dicts, names):
    return {n: sum(d[n] for d in dicts) / len(dicts) for n in names}


class _KernelProbe:
    """Relative change of the trust diagnostic's subset-kernel block since the last stage.

    :math:`\\lVert\\Theta_S(w) - \\Theta_S(w_s)\\rVert_F / \\lVert\\Theta_S(w_s)\\rVert_F`
    on the diagnostic's seeded subset S of samples
    (:func:`sktt.estimators._trust._subset_kernel`: same projection and seed as
    ``fit``); 0 to round-off for a model linear in its parameters.
    """

    def __init__(self, est):
        from ._trust import _probe_samples, _subset_kernel

        self._subset_kernel = _subset_kernel
        self.est = est
        self.sub = _probe_samples(est)
        self.reference = est._kernel.block(self.sub)  # replaced at every cut

    def change(self, weights):
        block = self._subset_kernel(self.est, weights, self.sub)
        if not np.all(np.isfinite(block)):
            return np.inf
        return float(np.linalg.norm(block - self.reference) / np.linalg.norm(self.reference))


class _StagedRun:
    """The paths' predicted states along a staged prediction, and the curve pieces.

    Per path: weights ``w``, parameter-space buffer ``buf``, function-space
    buffer ``A`` and the linearised problem of the current stage (its outputs
    and, with weight decay, the anchor :math:`J w`). With an eval set, ``A``,
    the problem and the stage kernel also cover the held-out rows (train rows
    first); the weights move with the training rows only.
    """

    def __init__(self, est, recipe):
        self.est, self.recipe = est, recipe
        self.T = recipe.n_steps
        sgd = not recipe.full_batch
        n_paths = recipe.n_paths if sgd else 1
        self.batches = est._batch_sequence(recipe, n_paths) if sgd else None
        self.held_out = est._has_eval_set()
        self.problem = est._problem(recipe, held_out=self.held_out)
        self.n_train = est.n_samples_
        self.names = est._trust_state["names"]
        self.momentum, self.wd = recipe.momentum > 0, recipe.weight_decay > 0
        w0 = _to64(est._trust_state["weights"])
        self.paths = [{"w": w0, "buf": None, "A": None, "problem": self.problem}
                      for _ in range(n_paths)]
        self.keys = [key for key, there in (
            ("loss", True), ("error", self.problem.labels is not None),
            ("eval_loss", self.held_out), ("eval_error", self.problem.eval_labels is not None))
            if there]
        self.pieces = {key: [[] for _ in range(n_paths)] for key in self.keys}
        self.diverged = np.full(n_paths, -1)
        self.model = model_at(est)
        self.kernel = est._eval_kernel if self.held_out else est._kernel
        inputs, chunk = est._trust_state["inputs"], est.chunk_size or 256
        # training rows: the VJPs (weights move with them only) and the acceptance test
        # (at w0 as its own tensors: ``set_weights`` at a refused cut must not move it)
        self.operator = JacobianOperator(self.model, self.names, inputs,
                                         chunk_size=chunk).at(w0)
        # every row (train, then held-out): the outputs a path restarts from and ends at
        self.all_rows = self.operator if not self.held_out else JacobianOperator(
            self.model, self.names, concat_inputs(inputs, est._eval_inputs), chunk_size=chunk)

    def _batches(self, i, start, stop):
        return None if self.batches is None else [b[i:i + 1] for b in self.batches[start:stop]]

    def run_stage(self, start, stop):
        """Simulate steps [start, stop] of every path on the stage's kernel.

        Returns the per-path simulations (not yet part of the curves: :meth:`keep`).
        """
        rec = _stage_recipe(self.recipe, start, stop)
        return [simulate(self.kernel, p["problem"], rec, batches=self._batches(i, start, stop),
                         momentum_buffer=p["A"]) for i, p in enumerate(self.paths)]

    def keep(self, sims, start, last):
        """Append an accepted stage to the curves (its end point only if it is the last)."""
        keep = slice(None) if last else slice(0, -1)
        for i, sim in enumerate(sims):
            for key in self.keys:
                self.pieces[key][i].append(sim[key][0, keep])
            if sim["diverged_at"][0] >= 0 and self.diverged[i] < 0:
                self.diverged[i] = start + sim["diverged_at"][0]

    def accepted(self, sims, weights):
        r"""The trust-region test of a stage: the real loss at its predicted end point.

        With :math:`L_s` the (real) loss at the stage's start, :math:`L_{lin}`
        the linearised loss at its end and :math:`L_{real}` the network's loss at
        the predicted end weights (means over paths), the stage is accepted
        when the real decrease is at least ``ACCEPT_RATIO`` of the predicted
        one, :math:`L_s - L_{real} \ge \rho\,(L_s - L_{lin})`, or, where
        the linearised loss rose, when :math:`L_{real} \le L_{lin}`.
        """
        l_start = np.mean([sim["loss"][0, 0] for sim in sims])
        l_lin = np.mean([sim["loss"][0, -1] for sim in sims])
        l_real = np.mean([loss_value(self.operator.at(w).outputs(), self.problem.targets,
                                     self.problem.loss) for w in weights])
        bound = max(l_lin, l_start - ACCEPT_RATIO * (l_start - l_lin))
        return bool(np.isfinite(l_real) and l_real <= bound)

    def predicted_weights(self, start, stop, buffers=False):
        """Each path's predicted weights (and buffers) at ``stop``; None if they overflow."""
        rec = _stage_recipe(self.recipe, start, stop)
        kernel = self.kernel.without_eval()  # held-out rows never move the weights
        ds = [stage_displacement(kernel, p["problem"].without_eval(), rec,
                                 batches=self._batches(i, start, stop),
                                 momentum_buffer=self._train_part(p["A"]))
              for i, p in enumerate(self.paths)]
        cotangents = [d.coef for d in ds]
        if buffers and self.momentum:
            cotangents += [d.buffer_coef for d in ds]
        if not all(np.all(np.isfinite(c)) for c in cotangents):
            return None
        products = list(self.operator.vjp(np.stack(cotangents)))
        n = len(ds)
        weights = [_moved(p["w"], p["buf"], d, products[i], self.names)
                   for i, (p, d) in enumerate(zip(self.paths, ds))]
        if not (buffers and self.momentum):
            return weights, None
        bufs = [{m: products[n + i][m] + d.buffer_alpha * p["w"][m]
                 + (d.buffer_gamma * p["buf"][m] if p["buf"] is not None else 0.0)
                 for m in self.names} for i, (p, d) in enumerate(zip(self.paths, ds))]
        return weights, bufs

    def stability(self, kernel, outputs, start):
        """Stability ratio of a stage from ``start`` on ``kernel`` at training ``outputs``.

        As the prediction's stability check (:func:`sktt.dynamics._displacement.max_curvature`,
        :meth:`~sktt.dynamics.TrainingRecipe.stability_ratio`) for the rest of
        the schedule: full batch, or path 0's next batches; 1 is the edge.
        """
        rest = _stage_recipe(self.recipe, start, self.T)
        batches = None if self.batches is None else [b[0] for b in self.batches[start:]]
        h = max_curvature(kernel.without_eval(), [outputs[:self.n_train]], self.problem.targets,
                          self.problem.loss, batches=batches)
        return float(rest.stability_ratio(h))

    def rises(self, start):
        """Whether the linearised mean loss from ``start`` to the end rises above its start."""
        loss = np.mean([sim["loss"][0] for sim in self.run_stage(start, self.T)], axis=0)
        return bool(not np.all(np.isfinite(loss)) or np.max(loss[1:]) > loss[0])

    def state(self):
        """What :meth:`relinearize` changes, to :meth:`restore` after a refused cut."""
        return self.kernel, self.operator, [dict(p) for p in self.paths]

    def restore(self, state):
        """Back to a :meth:`state` (the linearisation before a refused cut)."""
        self.kernel, self.operator, saved = state
        for p, q in zip(self.paths, saved):
            p.clear()
            p.update(q)

    def _train_part(self, A):
        """The training rows of a function-space buffer over every row (None stays None)."""
        return None if A is None else A[:self.n_train * self.problem.f0.shape[1]]

    def _restart_problem(self, F, jw):
        """The stage problem at outputs ``F`` and anchor ``jw`` over every row (train first)."""
        n = self.n_train
        split = (lambda a: (a, None)) if not self.held_out else (lambda a: (a[:n], a[n:]))
        (f0, eval_f0), (jw0, eval_jw0) = split(F), (None, None) if jw is None else split(jw)
        return self.problem.with_outputs(f0, eval_f0=eval_f0, jw0=jw0, eval_jw0=eval_jw0)

    def relinearize(self, weights, buffers):
        """Re-linearise at the paths' mean weights and restart every path there (SGD_RESTART).

        With an eval set the re-linearisation covers the held-out rows too
        (outputs, cross-kernel, and the buffer and anchor JVPs over every row).
        """
        mean_w = _mean(weights, self.names)
        set_weights(self.model, mean_w)
        lin = linearize_at(self.est, self.model, held_out=self.held_out)
        self.kernel, self.operator = lin.kernel, self.operator.at(mean_w)
        if SGD_RESTART == "mean" or len(self.paths) == 1:
            weights = [mean_w] * len(self.paths)
            buffers = None if buffers is None else [_mean(buffers, self.names)] * len(self.paths)
        shared = {}
        for i, p in enumerate(self.paths):
            w, buf = weights[i], None if buffers is None else buffers[i]
            if id(w) not in shared:  # one forward pass and JVPs per distinct restart point
                F = lin.outputs if w is mean_w else lin.operator.at(w).outputs()
                A = None if buf is None else lin.apply(buf)
                jw = lin.apply(w).reshape(F.shape) if self.wd else None
                shared[id(w)] = (A, self._restart_problem(F, jw))
            p.update(w=w, buf=buf)
            p["A"], p["problem"] = shared[id(w)]
        return lin

    def real_end(self):
        """The real outputs at each path's predicted w_T (a cut at the last step).

        The training curves read the training rows; the held-out curves the
        held-out rows of the same forward pass.
        """
        p = self.problem
        n = self.n_train
        for i, path in enumerate(self.paths):
            F = self.all_rows.at(path["w"]).outputs()
            values = {"loss": lambda: loss_value(F[:n], p.targets, p.loss),
                      "error": lambda: train_error(F[:n], p.labels),
                      "eval_loss": lambda: loss_value(F[n:], p.eval_targets, p.loss),
                      "eval_error": lambda: train_error(F[n:], p.eval_labels)}
            for key in self.keys:
                self.pieces[key][i].append(np.atleast_1d(values[key]()))

    def fill_diverged(self, stop):
        """After a diverged stage ending at ``stop`` the rest of every curve is inf (error 100 %)."""
        rest = self.T - stop + 1
        for key in self.keys:
            for piece in self.pieces[key]:
                piece.append(np.full(rest, _FILL[key]))

    def curves(self):
        out = {key: (np.stack([np.concatenate(c) for c in self.pieces[key]])
                     if key in self.keys else None) for key in _FILL}
        out["diverged_at"] = self.diverged
        return out


def staged_curves(est, setting):
    """Curves of a fitted predictor with open-loop stages, in ``_curves``' format.

    Returns the dict of :func:`sktt.dynamics.simulate` (``"loss"``,
    ``"error"``, ``"eval_loss"``, ``"eval_error"`` of shape (P, n_steps + 1)
    or None, ``"diverged_at"``) plus
    ``"relinearize"``: the rule, the cut points, the kernel trace ratio and the
    relative kernel change (probe block, since the previous stage) at each,
    the stability ratio of every stage (``w0`` first), the refused cuts
    (step, ratio), the number of trust-region halvings (``"shortened"``),
    the number of kernel-change probes (adaptive rule), the largest change of
    the mean loss curve relative to the plain prediction (in units of L_0),
    and seconds.
    """
    recipe = setting.recipe
    if recipe.is_adamw:
        raise ValueError("relinearize is not supported with optimizer='adamw' (yet): its stages "
                         "move the weights by SGD's recursion in function space "
                         "(dynamics/_displacement.py), which has no AdamW counterpart. Use "
                         "refresh_steps (real AdamW steps, then re-linearisation) or "
                         "relinearize=None.")
    if recipe.resolved_solver != "discrete":
        raise ValueError(f"relinearize continues the exact simulation from predicted weights; "
                         f"it needs solver='discrete' (or 'auto'), not solver={recipe.solver!r}.")
    if not est._has_trust_state():
        raise ValueError("relinearize differentiates the model at the predicted weights; a "
                         "predictor fitted with model='precomputed' has no model. Fit with the "
                         "torch model instead.")
    t0 = time.perf_counter()
    k, auto_level = _resolve_stages(est, setting)
    tol = setting.relinearize_tol
    plain = est._simulate(recipe)
    info = {"stages": k, "rule": "geometric" if tol is None else "adaptive", "tolerance": tol,
            "cut_points": [], "kernel_trace_ratios": [], "kernel_changes": [], "probes": 0,
            "shortened": 0, "stage_stability_ratios": [], "refused_cuts": [],
            "auto_kernel_level": auto_level, "curve_change": 0.0, "seconds": 0.0}
    if k == 0:
        plain["relinearize"] = info
        info["seconds"] = time.perf_counter() - t0
        return plain
    T = recipe.n_steps
    planned = stage_boundaries(T, k) if tol is None else None
    tr0 = est._kernel.trace()
    with model_untouched(est.model):
        run = _StagedRun(est, recipe)
        probe = _KernelProbe(est)

        def change_at(start, t):
            moved = run.predicted_weights(start, t)
            return np.inf if moved is None else probe.change(_mean(moved[0], run.names))

        start, tried, stop_cutting = 0, 0, False
        ratio = run.stability(run.kernel, run.problem.f0, 0)  # the current stage's
        info["stage_stability_ratios"].append(ratio)
        while True:
            if tried == k or stop_cutting:
                stop = T
            elif planned is not None:
                stop = planned[tried]
            else:
                stop, probes = adaptive_cut(lambda t: change_at(start, t), start, T, tol)
                info["probes"] += len(probes)
            while True:  # shorten a stage whose predicted end the network does not confirm
                cut_at_end = stop == T and planned is not None and tried < k and not stop_cutting
                last = stop == T and not cut_at_end
                sims = run.run_stage(start, stop)
                if last:
                    break
                moved = None if any(sim["diverged_at"][0] >= 0 for sim in sims) else \
                    run.predicted_weights(start, stop, buffers=True)
                if stop == start + 1 or (moved is not None and run.accepted(sims, moved[0])):
                    break
                stop = start + (stop - start) // 2
                info["shortened"] += 1
            if last or moved is None or cut_at_end:
                run.keep(sims, start, last)
            if last:
                break
            if moved is None:
                run.fill_diverged(stop)
                break
            tried += 1
            if cut_at_end:  # a cut after the last step: the real outputs at w_T only
                info["cut_points"].append(stop)
                for p, w in zip(run.paths, moved[0]):
                    p["w"] = w
                run.real_end()
                break
            before = run.state()
            lin = run.relinearize(*moved)
            new_ratio = run.stability(lin.kernel, lin.outputs, stop)
            if new_ratio > 1.0 and run.rises(stop):  # past its own edge, and it shows
                run.restore(before)
                info["refused_cuts"].append((stop, new_ratio))
                stop_cutting = planned is None  # adaptive: the same cut would come again
                continue
            run.keep(sims, start, False)
            info["cut_points"].append(stop)
            ratio = new_ratio
            info["stage_stability_ratios"].append(ratio)
            block = lin.kernel.block(probe.sub)
            info["kernel_trace_ratios"].append(lin.trace / tr0)
            info["kernel_changes"].append(
                float(np.linalg.norm(block - probe.reference) / np.linalg.norm(probe.reference)))
            probe.reference = block
            start = stop
    out = run.curves()
    with np.errstate(invalid="ignore"):
        change = np.abs(out["loss"].mean(0) - plain["loss"].mean(0)) / plain["loss"][0, 0]
    info["curve_change"] = float(np.nanmax(change)) if np.any(np.isfinite(change)) else np.inf
    info["seconds"] = time.perf_counter() - t0
    out["relinearize"] = info
    return out
