r"""The training recipe: what a fine-tuning run does, as one frozen, validated object.

A :class:`TrainingRecipe` holds the optimiser's settings, the per-step learning
rates, the minibatches and the simulation choices of one prediction. It is built
once (:meth:`TrainingRecipe.from_params`), validated once against
:data:`RECIPE_PARAMETERS`, and handed to :func:`sktt.dynamics.simulate` and to
the real training loop (:mod:`sktt.training`), so a prediction and a real run
mean the same recipe.

torch's SGD, and its function-space image
-----------------------------------------
``torch.optim.SGD(lr=η_t, momentum=m, dampening=τ, nesterov, weight_decay=λ)``
does, per step on the batch gradient :math:`g = \nabla_w L_B`:

.. math::

    d = g + \lambda w, \qquad
    \mathrm{buf} = \begin{cases} d & \text{first step} \\
                   m\,\mathrm{buf} + (1-\tau)\, d & \text{after} \end{cases},\qquad
    w \leftarrow w - \eta_t \,(d + m\,\mathrm{buf} \text{ if Nesterov else } \mathrm{buf}).

For the linearised model :math:`F = F_0 + J(w - w_0)` every term maps to
function space exactly by multiplying with :math:`J`: :math:`Jg = \Theta_{:,B}
\nabla_{F_B} L_B`, and, because :math:`Jw = Jw_0 + (F - F_0)`, the weight decay
term is :math:`\lambda(F - F_0 + \Phi_0)` with the one vector
:math:`\Phi_0 = J w_0` (a single forward-mode JVP at :math:`w_0` with tangent
:math:`w_0`, trainable parameters only). With :math:`A = J\,\mathrm{buf}` the
recursion above holds verbatim for :math:`(F, A)`, which is what the
``"discrete"`` solver runs (:mod:`sktt.dynamics._discrete`).

Effective rate and stability (the one place these formulas live)
----------------------------------------------------------------
With a constant gradient the buffer settles at :math:`(1-\tau)d/(1-m)`, so the
flow approximations (ODE/SDE) move at the effective rate

.. math:: \tilde\eta_t = \eta_t\, \gamma, \qquad
   \gamma = \frac{1-\tau}{1-m} \ (\text{heavy ball}), \quad
   \gamma = 1 + \frac{m(1-\tau)}{1-m} \ (\text{Nesterov}),

(:meth:`TrainingRecipe.effective_learning_rates`). On a quadratic with curvature
:math:`h` (the largest eigenvalue of :math:`H^{1/2}\Theta H^{1/2}`, plus
:math:`\lambda` for weight decay), heavy ball is stable iff
:math:`\eta(1-\tau)h < 2(1+m)` and Nesterov iff
:math:`\eta h < 2(1+m)/(1+2m)`; :meth:`TrainingRecipe.stability_ratio` is the
left side over the right side at the largest scheduled rate (1 is the edge).

What the flow solvers approximate: the ODE and SDE follow
:math:`\dot F = -\tilde\eta_t[\Theta\nabla_F L + \lambda(F - F_0 + \Phi_0)]`,
with :math:`\tilde\eta_t` piecewise constant over each step. They miss the
momentum warm-up, Nesterov's look-ahead and dampening's first undamped step;
only the ``"discrete"`` solver is exact for every term.

AdamW
-----
``optimizer="adamw"`` is ``torch.optim.AdamW(lr=η_t, betas, eps=adam_eps,
weight_decay=λ)``: decoupled decay :math:`w \leftarrow w(1-\eta_t\lambda)`
then the bias-corrected Adam step (:mod:`sktt.dynamics._adamw`). The same
``weight_decay`` field means the coupled L2 term for SGD and this decoupled
decay for AdamW (sktt's default is 0 for both; torch's AdamW default is 0.01:
pass it). SGD's ``momentum`` / ``dampening`` / ``nesterov`` have no meaning
for AdamW and must keep their defaults (a non-default value raises); AdamW's
``betas`` / ``adam_eps`` / ``adamw_mode`` are ignored by SGD. Adam divides
each coordinate by :math:`\sqrt{\hat v}`, so it is not a function-space method:
there is no effective rate and no linear stability edge
(:meth:`TrainingRecipe.effective_learning_rates` and
:meth:`TrainingRecipe.stability_ratio` raise for it; a step moves each weight
by at most about :math:`\eta_t`). ``adamw_mode`` chooses the simulation:
``"exact"`` (parameter space, needs the Jacobian rows), ``"approximate"``
(frozen diagonal preconditioner in function space,
:mod:`sktt.dynamics._adamw_kernel`), ``"auto"`` (exact when the rows fit the
memory budget).
"""

import collections.abc
import dataclasses

import numpy as np

from ..utils import check_bool, check_choice, check_fraction, check_int, check_positive_finite

__all__ = ["RECIPE_PARAMETERS", "SOLVERS", "TrainingRecipe", "check_learning_rates"]

SOLVERS = ("auto", "ode", "discrete", "sde")
OPTIMIZERS = ("sgd", "adamw")
ADAMW_MODES = ("auto", "exact", "approximate")


def check_learning_rates(rates, n_steps, *, name="lr_scheduler"):
    """Validate explicit per-step learning rates; return the first ``n_steps`` as a tuple.

    Parameters
    ----------
    rates : array-like of shape (>= n_steps,)
        The learning rate of each optimiser step, as torch's scheduler sets it.
    n_steps : int
    name : str
        Parameter name quoted in the message.
    """
    try:
        arr = np.asarray(rates, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.ndim != 1 or arr.size < n_steps:
        raise ValueError(f"{name} as an array must be 1-D with at least n_steps={n_steps} "
                         f"per-step learning rates; got {np.shape(rates) if arr is not None else type(rates).__name__}.")
    arr = arr[:n_steps]
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"{name} holds learning rates outside [0, inf) (min {arr.min():.3g}); "
                         "accepted: finite rates >= 0.")
    return tuple(float(v) for v in arr)


def _check_betas(value):
    # (beta1, beta2) by position: a set or dict has no order (and a dict's keys are not the
    # values), so {0.999, 0.9} could come out as (0.999, 0.9)
    ordered = (hasattr(value, "__getitem__") and hasattr(value, "__len__")
               and not isinstance(value, (str, bytes, collections.abc.Mapping)))
    try:
        pair = tuple(float(b) for b in value) if ordered else None
    except (TypeError, ValueError):
        pair = None
    if pair is None or len(pair) != 2 or not all(0.0 <= b < 1.0 for b in pair):
        raise ValueError(f"betas={value!r}; accepted: a pair of floats (beta1, beta2), each in "
                         "[0, 1), as torch.optim.AdamW.")
    return pair


def _batch_size(value):
    return None if value is None else check_int("batch_size", value, low=1)


#: The declarative parameter table of a recipe: name -> (check, default). Every
#: entry point (estimators, predict-time overrides, ``compare``, the CLI, the
#: real training loop) validates through this one table, so one value gets one
#: message everywhere.
RECIPE_PARAMETERS = {
    "optimizer": (lambda v: check_choice("optimizer", v, OPTIMIZERS), "sgd"),
    "lr": (lambda v: check_positive_finite("lr", v), 1e-3),
    "momentum": (lambda v: check_fraction("momentum", v, low=0.0, high=1.0), 0.0),
    "dampening": (lambda v: check_fraction("dampening", v, low=0.0, high=1.0,
                                           high_inclusive=True), 0.0),
    "nesterov": (lambda v: check_bool("nesterov", v), False),
    "weight_decay": (lambda v: check_positive_finite("weight_decay", v, allow_zero=True), 0.0),
    "betas": (_check_betas, (0.9, 0.999)),
    "adam_eps": (lambda v: check_positive_finite("adam_eps", v), 1e-8),
    "adamw_mode": (lambda v: check_choice("adamw_mode", v, ADAMW_MODES), "auto"),
    "batch_size": (_batch_size, None),
    "drop_last": (lambda v: check_bool("drop_last", v), False),
    "n_paths": (lambda v: check_int("n_paths", v, low=1), 16),
    "n_steps": (lambda v: check_int("n_steps", v, low=1), 150),
    "solver": (lambda v: check_choice("solver", v, SOLVERS), "auto"),
    "sde_noise": (lambda v: check_choice("sde_noise", v, ("diagonal", "full")), "diagonal"),
}


@dataclasses.dataclass(frozen=True)
class TrainingRecipe:
    """One fine-tuning recipe: optimiser, learning-rate schedule, batches, steps, solver.

    Build it with :meth:`from_params` (which validates); the dataclass itself
    only stores. It is hashable, so predictions are cached per recipe.

    Attributes
    ----------
    optimizer : {"sgd", "adamw"}
        ``torch.optim.SGD`` or ``torch.optim.AdamW``.
    lr : float
        Base learning rate (torch's ``lr``); the per-step rates are
        :attr:`learning_rates`.
    momentum, dampening : float
    nesterov : bool
    weight_decay : float
        SGD: torch's coupled L2 term ``grad + λ·w``; AdamW: its decoupled decay
        ``w ← w·(1 − η_t·λ)``.
    betas : (float, float)
        AdamW's (β1, β2).
    adam_eps : float
        AdamW's ε (torch's ``eps``).
    adamw_mode : {"auto", "exact", "approximate"}
        How AdamW is simulated (module docstring).
    lr_schedule : tuple of float or None
        The learning rate of each step (length ``n_steps``); None = constant ``lr``.
    batch_size : int or None
        None = full batch (gradient descent).
    drop_last : bool
    n_paths : int
        Simulated SGD paths (batch orders / noise draws).
    n_steps : int
    solver : {"auto", "ode", "discrete", "sde"}
    sde_noise : {"diagonal", "full"}
    """

    optimizer: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    adam_eps: float = 1e-8
    adamw_mode: str = "auto"
    lr_schedule: tuple = None
    batch_size: int = None
    drop_last: bool = False
    n_paths: int = 16
    n_steps: int = 150
    solver: str = "auto"
    sde_noise: str = "diagonal"

    @classmethod
    def from_params(cls, params, *, n_samples=None, learning_rates=None):
        """Validate ``params`` (names of :data:`RECIPE_PARAMETERS`) into a recipe.

        Parameters
        ----------
        params : dict
            Recipe parameters; missing ones take their defaults, unknown ones raise.
        n_samples : int, optional
            N, the training-set size: ``batch_size`` is checked against it and
            ``batch_size == N`` becomes full batch.
        learning_rates : array-like, optional
            Explicit per-step rates (e.g. read from a torch scheduler by
            :func:`sktt.training.scheduled_learning_rates`).

        Returns
        -------
        recipe : TrainingRecipe
        """
        unknown = set(params) - set(RECIPE_PARAMETERS)
        if unknown:
            raise TypeError(f"unexpected recipe parameter(s) {sorted(unknown)}; accepted: "
                            f"{sorted(RECIPE_PARAMETERS)}.")
        values = {name: check(params.get(name, default))
                  for name, (check, default) in RECIPE_PARAMETERS.items()}
        if values["nesterov"] and (values["momentum"] == 0 or values["dampening"] != 0):
            # torch.optim.SGD raises the same: Nesterov needs momentum and no dampening
            raise ValueError(f"nesterov=True needs momentum > 0 and dampening=0 (as torch.optim."
                             f"SGD); got momentum={values['momentum']}, dampening="
                             f"{values['dampening']}.")
        if values["optimizer"] == "adamw":
            sgd_only = {k: values[k] for k in ("momentum", "dampening", "nesterov")
                        if values[k] != RECIPE_PARAMETERS[k][1]}
            if sgd_only:
                raise ValueError(f"{sorted(sgd_only)} = {sgd_only} are torch.optim.SGD settings; "
                                 "optimizer='adamw' takes betas, adam_eps and weight_decay "
                                 "instead (leave momentum=0, dampening=0, nesterov=False).")
            if values["solver"] not in ("auto", "discrete"):
                raise ValueError(f"optimizer='adamw' is simulated step by step: solver='auto' or "
                                 f"'discrete', not solver={values['solver']!r} (AdamW has no "
                                 "gradient flow in function space).")
        b = values["batch_size"]
        if b is not None and n_samples is not None:
            b = check_int("batch_size", b, low=1, high=n_samples)
            values["batch_size"] = None if b == n_samples else b  # one batch of all = GD
        if learning_rates is not None:
            values["lr_schedule"] = check_learning_rates(learning_rates, values["n_steps"])
        return cls(**values)

    def replace(self, **changes):
        """A copy with ``changes`` (re-validated through :meth:`from_params`)."""
        params = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.name != "lr_schedule"}
        schedule = changes.pop("lr_schedule", self.lr_schedule)
        params.update(changes)
        return TrainingRecipe.from_params(params, learning_rates=schedule)

    # ----------------------------------------------------------- the update
    def direction(self, update, buffer):
        """torch.optim.SGD's step direction from the decayed gradient ``update`` (d above).

        The one place the momentum / dampening / Nesterov recursion is written;
        it is linear, so it holds verbatim for any linear image of the
        parameters (function space ``J·``, displacement coefficients).

        Parameters
        ----------
        update : ndarray
            The (image of the) gradient plus weight decay, ``d``.
        buffer : ndarray or None
            The (image of the) momentum buffer; None before the first step.

        Returns
        -------
        step, buffer : ndarray, ndarray or None
            ``w ← w − η_t·step``; the new buffer (None without momentum).
        """
        m = self.momentum
        if m == 0:
            return update, None
        buffer = update.copy() if buffer is None else m * buffer + (1.0 - self.dampening) * update
        return (update + m * buffer if self.nesterov else buffer), buffer

    # ----------------------------------------------------------- derived quantities
    @property
    def full_batch(self):
        """Whether every step sees all samples (gradient descent)."""
        return self.batch_size is None

    @property
    def learning_rates(self):
        """η_t of each step, shape (n_steps,)."""
        if self.lr_schedule is None:
            return np.full(self.n_steps, self.lr)
        return np.asarray(self.lr_schedule, dtype=np.float64)

    @property
    def momentum_gain(self):
        """γ: the factor by which momentum multiplies the step of a steady gradient."""
        m, tau = self.momentum, self.dampening
        if m == 0:
            return 1.0
        if self.nesterov:
            return 1.0 + m * (1.0 - tau) / (1.0 - m)
        return (1.0 - tau) / (1.0 - m)

    @property
    def is_adamw(self):
        """Whether the optimiser is AdamW."""
        return self.optimizer == "adamw"

    def _sgd_only(self, what):
        if self.is_adamw:
            raise ValueError(f"{what} is defined for optimizer='sgd' only: AdamW normalises each "
                             "coordinate by its own sqrt(v), so it has no function-space "
                             "effective rate or linear stability edge (each step moves a "
                             "weight by about lr at most).")

    def effective_learning_rates(self):
        """η̃_t = η_t·γ, the rates of the gradient flow (ODE/SDE), shape (n_steps,)."""
        self._sgd_only("effective_learning_rates")
        return self.learning_rates * self.momentum_gain

    @property
    def effective_lr(self):
        """η̃ at the largest scheduled rate (a scalar for hints and stiffness)."""
        return float(self.effective_learning_rates().max())

    def stability_edge(self):
        """The value of η·h_eff at which the recipe's linear recursion turns unstable."""
        m = self.momentum
        if self.nesterov:
            return 2.0 * (1.0 + m) / (1.0 + 2.0 * m)
        return 2.0 * (1.0 + m)

    def stability_ratio(self, curvature):
        """max_t η_t·(1−τ)·(h + λ) / edge for the loss curvature ``h``; 1 is the edge.

        ``curvature`` is λ_max(H^½ΘH^½) (:func:`sktt.dynamics.batch_curvature`).
        Raises for AdamW (module docstring).
        """
        self._sgd_only("stability_ratio")
        damp = 1.0 - self.dampening if self.momentum > 0 else 1.0
        eta = float(self.learning_rates.max())
        return eta * damp * (float(curvature) + self.weight_decay) / self.stability_edge()

    @property
    def resolved_solver(self):
        """The solver this recipe runs: ``"auto"`` is ``"discrete"`` (measured best, docs/sgd.rst)."""
        return "discrete" if self.solver == "auto" else self.solver

    def describe(self):
        """Short text for messages: lr, momentum, batch size, steps (and the extra terms)."""
        if self.is_adamw:
            parts = ["optimizer='adamw'", f"lr={self.lr:g}", f"betas={self.betas}",
                     f"batch_size={self.batch_size}", f"n_steps={self.n_steps}"]
            if self.adam_eps != 1e-8:
                parts.append(f"adam_eps={self.adam_eps:g}")
        else:
            parts = [f"lr={self.lr:g}", f"momentum={self.momentum:g}",
                     f"batch_size={self.batch_size}", f"n_steps={self.n_steps}"]
        if self.weight_decay:
            parts.append(f"weight_decay={self.weight_decay:g}")
        if self.nesterov:
            parts.append("nesterov=True")
        if self.dampening:
            parts.append(f"dampening={self.dampening:g}")
        if self.lr_schedule is not None:
            parts.append("lr_scheduler=<per-step rates>")
        return ", ".join(parts)

