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
"""

import dataclasses

import numpy as np

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
