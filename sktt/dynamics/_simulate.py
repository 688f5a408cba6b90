r"""One ``simulate``: every prediction of sktt goes through here.

:func:`simulate` takes a kernel operator (:mod:`sktt.gram._kernels`), a
:class:`LinearizedProblem` (what the model gives at w0: outputs, targets, the
weight-decay anchor Φ0 = J·w0, held-out rows) and a :class:`TrainingRecipe`,
and dispatches to the solver the recipe names:

=============  ==============================================================
``discrete``   exact steps of the recipe (:mod:`sktt.dynamics._discrete`);
               every term, held-out rows, minibatch paths; in the sketch
               space for a factored kernel (:mod:`sktt.dynamics._factored`)
``ode``        gradient flow: MSE closed form (no weight decay, no held-out
               rows) or LSODA (:mod:`sktt.dynamics._ode`); held-out rows yes
``sde``        the paper's diffusion (:mod:`sktt.dynamics._sde`); held-out
               rows no (its noise factor covers the training rows only)
=============  ==============================================================

The ODE and SDE solvers need Θ itself: a factored kernel is formed for them
(:meth:`~sktt.gram.FactoredKernel.as_dense`, which costs (N·C)² × 8 bytes).

Every result has ``(P, n_steps + 1)`` curves ``"loss"``, ``"error"``,
``"eval_loss"``, ``"eval_error"`` (None where not computed) and
``"diverged_at"`` (P,).

``optimizer="adamw"`` (discrete steps only) dispatches on what it is given,
as ``recipe.adamw_mode`` allows: the exact parameter-space recursion
(:func:`sktt.dynamics._adamw.simulate_adamw`) when ``problem`` carries the
Jacobian rows and ``w0``; the frozen-preconditioner approximation
(:func:`sktt.dynamics._adamw_kernel.simulate_adamw_kernel`, per-layer
rescaling) when ``kernel`` is a
:class:`~sktt.dynamics._adamw_kernel.PreconditionedKernels`.
"""

import dataclasses

import numpy as np

from ._adamw import simulate_adamw
from ._adamw_kernel import PreconditionedKernels, simulate_adamw_kernel
from ._closed_form import mse_closed_form, mse_spectral_loss
from ._discrete import simulate_discrete
from ._factored import simulate_factored
from ._ode import solve_gradient_flow
from ._sde import sde_substeps, simulate_sde

__all__ = ["LinearizedProblem", "simulate"]


@dataclasses.dataclass(frozen=True, eq=False)
class LinearizedProblem:
    """What the linearised model is trained on: outputs at w0, targets, anchors, held-out rows.

    Parameters
    ----------
    f0 : ndarray of shape (N, C)
        Outputs at the pre-trained weights.
    targets : ndarray
        Labels (N,) for cross-entropy, targets (N, C) for MSE.
    loss : {"cross_entropy", "mse"}
    labels : ndarray of shape (N,) or None
        Labels of the train error (None: no error curve).
    jw0 : ndarray of shape (N, C) or None
        Φ0 = J·w0 (trainable parameters only): the weight-decay anchor.
    eval_f0, eval_targets, eval_labels, eval_jw0 : optional
        The same for held-out rows (never in a batch).
    rows : ndarray of shape (N·C, D), optional
        Exact Jacobian rows of the trainable weights (AdamW's exact mode).
    w0 : ndarray of shape (D,), optional
        The trainable weights at the linearisation point, in the column order
        of ``rows``.
    eval_rows : ndarray of shape (N_eval·C, D), optional
    adamw_state : dict, optional
        torch's AdamW state at ``w0`` (``exp_avg``, ``exp_avg_sq``, ``step``)
        when resuming a run.
    """

    f0: np.ndarray
    targets: np.ndarray
    loss: str
    labels: np.ndarray = None
    jw0: np.ndarray = None
    eval_f0: np.ndarray = None
    eval_targets: np.ndarray = None
    eval_labels: np.ndarray = None
    eval_jw0: np.ndarray = None
    rows: np.ndarray = None
    w0: np.ndarray = None
    eval_rows: np.ndarray = None
    adamw_state: dict = None

    @property
    def n_eval(self):
        return 0 if self.eval_f0 is None else self.eval_f0.shape[0]

    def stacked_f0(self):
        """Train then held-out outputs at w0, (N + N_eval, C) float64."""
        parts = [self.f0] if self.eval_f0 is None else [self.f0, self.eval_f0]
        return np.concatenate(parts).astype(np.float64)

    def stacked_jw0(self):
        """Φ0 of the train then held-out rows, (N + N_eval, C)."""
        if self.jw0 is None or (self.n_eval and self.eval_jw0 is None):
            raise ValueError("weight_decay > 0 needs J·w0 (jw0) of every row; the estimator "
                             "computes it at fit.")
        parts = [self.jw0] if self.eval_f0 is None else [self.jw0, self.eval_jw0]
        return np.concatenate(parts).astype(np.float64)

    def with_outputs(self, f0, eval_f0=None, jw0=None, eval_jw0=None):
        """The same problem linearised elsewhere (new outputs and anchors)."""
        return dataclasses.replace(self, f0=f0, eval_f0=eval_f0 if self.n_eval else None,
                                   jw0=jw0, eval_jw0=eval_jw0)

    def without_eval(self):
        return dataclasses.replace(self, eval_f0=None, eval_targets=None, eval_labels=None,
                                   eval_jw0=None)


def simulate(kernel, problem, recipe, *, batches=None, momentum_buffer=None,
             noise_factor=None, seeds=None):
    """Predicted curves of ``recipe`` on the linearised ``problem``.

    Parameters
    ----------
    kernel : DenseKernel, FactoredKernel or SpectralKernel
        Θ on the training rows (and the cross-kernel to held-out rows), its
        rows J̃ (and the held-out rows), or only its spectrum (MSE gradient flow; ``problem`` is then unused).
    problem : LinearizedProblem or None
    recipe : TrainingRecipe
    batches : list of (P, b) int arrays, optional
        The minibatches of each step (:func:`check_batches`): required for the
        ``"discrete"`` solver with ``recipe.batch_size`` set; None = full batch.
    momentum_buffer : ndarray, optional
        Function-space momentum at the start (``"discrete"`` only; a resumed run).
    noise_factor : ndarray of shape (N·C, R), optional
        The SDE's noise factor (required for ``"sde"`` with minibatches).
    seeds : list of int, optional
        One noise seed per SDE path.

    Returns
    -------
    dict
        Curves of shape (P, n_steps + 1) and ``"diverged_at"`` (see the module docstring).
    """
    solver = recipe.resolved_solver
    if recipe.is_adamw:
        return _simulate_adamw(kernel, problem, recipe, batches)
    if getattr(kernel, "spectrum_only", False):  # a spectrum determines MSE flow only
        if solver != "ode" or recipe.weight_decay:
            raise ValueError("a kernel known only by its spectrum predicts the MSE gradient "
                             "flow (solver='ode', no weight decay); got solver="
                             f"{recipe.solver!r}, weight_decay={recipe.weight_decay}.")
        loss = mse_spectral_loss(kernel.eigenvalues, kernel.projections,
                                 n_rows=kernel.n_train_rows,
                                 lr_eff=recipe.effective_learning_rates(), n_steps=recipe.n_steps)
        return {"loss": loss[None], "error": None, "eval_loss": None, "eval_error": None,
                "diverged_at": np.array([-1 if np.all(np.isfinite(loss)) else 0])}
    factored = getattr(kernel, "factored", False)
    if solver == "discrete" and factored:
        return simulate_factored(kernel, problem, recipe, batches=batches,
                                 momentum_buffer=momentum_buffer)
    if factored:  # the flow solvers work on Θ itself
        kernel = kernel.as_dense()
    if solver == "discrete":
        return simulate_discrete(kernel, problem, recipe, batches=batches,
                                 momentum_buffer=momentum_buffer)
    if solver == "ode":
        if problem.loss == "mse" and recipe.weight_decay == 0 and not problem.n_eval:
            vals, vecs = kernel.eigh()
            out = mse_closed_form(vals, vecs, problem.f0, problem.targets,
                                  lr_eff=recipe.effective_learning_rates(),
                                  n_steps=recipe.n_steps, labels=problem.labels)
        else:
            out = solve_gradient_flow(kernel, problem, recipe)
        out = {k: (None if v is None else np.asarray(v)[None]) for k, v in out.items()}
        out.setdefault("eval_loss", None)
        out.setdefault("eval_error", None)
        out["diverged_at"] = np.array([-1 if np.all(np.isfinite(out["loss"])) else 0])
        return out
    if problem.n_eval:
        raise ValueError("solver='sde' cannot predict held-out curves: its noise factor covers "
                         "the training rows only; use solver='discrete' (exact) or 'ode'.")
    n, c = problem.f0.shape
    b = n if recipe.batch_size is None else recipe.batch_size
    if b == n:  # no minibatch noise: one deterministic path
        seeds, noise_factor = seeds[:1], np.zeros((n * c, 1))
    substeps = sde_substeps(recipe, kernel.lambda_max, n, c, problem.loss)
    out = simulate_sde(kernel, problem, recipe, batch_size=b, noise_factor=noise_factor,
                       seeds=seeds, n_substeps=substeps)
    out["eval_loss"] = out["eval_error"] = None
    return out


def _simulate_adamw(kernel, problem, recipe, batches):
    """AdamW: the exact parameter-space mode or the preconditioned-kernel approximation."""
    if recipe.resolved_solver != "discrete":
        raise ValueError(f"optimizer='adamw' is simulated step by step (solver='discrete'), "
                         f"not solver={recipe.solver!r}: Adam's per-coordinate normalisation has "
                         "no gradient flow in function space.")
    mode = recipe.adamw_mode
    exact = problem.rows is not None and problem.w0 is not None
    approx = isinstance(kernel, PreconditionedKernels)
    if mode == "auto":
        mode = "exact" if exact else "approximate"
    if mode == "exact" and not exact:
        raise ValueError("adamw_mode='exact' needs the Jacobian rows J (N·C × D) and w0 in the "
                         "problem (LinearizedProblem(rows=, w0=)).")
    if mode == "approximate" and not approx:
        raise ValueError("adamw_mode='approximate' needs a PreconditionedKernels kernel (the "
                         "per-layer J·P·Jᵀ of sktt.dynamics._adamw_kernel); got "
                         f"{type(kernel).__name__}.")
    rates = recipe.learning_rates
    common = dict(loss=problem.loss, lrs=rates, n_steps=recipe.n_steps, betas=recipe.betas,
                  weight_decay=recipe.weight_decay, batches=batches, labels=problem.labels)
    if mode == "exact":
        has_eval = problem.n_eval > 0
        if has_eval and problem.eval_rows is None:
            raise ValueError("held-out rows need their Jacobian rows (eval_rows) in AdamW's "
                             "exact mode.")
        out = simulate_adamw(problem.rows, problem.w0, problem.f0, problem.targets,
                             eps=recipe.adam_eps, eval_rows=problem.eval_rows if has_eval else None,
                             eval_F0=problem.eval_f0, eval_targets=problem.eval_targets,
                             eval_labels=problem.eval_labels, state=problem.adamw_state, **common)
        out.setdefault("eval_loss", None)
        out.setdefault("eval_error", None)
        return out
    if problem.n_eval:
        raise ValueError("AdamW's approximate mode predicts the training rows only; held-out "
                         "curves need adamw_mode='exact'.")
    if problem.adamw_state is not None:
        raise ValueError("AdamW's approximate mode cannot resume from a real optimiser state "
                         "(its moments live in parameter space); use adamw_mode='exact'.")
    if recipe.weight_decay > 0 and problem.jw0 is None:
        raise ValueError("weight_decay > 0 needs J·w0 (jw0) in the problem.")
    out = simulate_adamw_kernel(kernel.precond, problem.f0, problem.targets, jw0=problem.jw0,
                                rescale="group", rescale_kernels=kernel.square,
                                rescale_refs=kernel.refs, **common)
    out["eval_loss"] = out["eval_error"] = None
    return out
