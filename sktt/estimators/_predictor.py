r"""TrainingTimePredictor: fit the empirical NTK once, predict curves and training times.

``fit`` does the expensive, hyper-parameter-free part: outputs :math:`f_0` at the
pre-trained weights, per-sample Jacobians of the trainable parameters (optionally
randomly projected) and the kernel: :math:`\Theta = J J^\top` in float64, or,
with a projection, the rows :math:`\tilde J` themselves (``ntk="factored"``,
:mod:`sktt.estimators._scale`). The eigendecomposition is computed only when a
solver asks for it (MSE closed form, ``extrapolate``, ``eigenvalues_``). The dynamics parameters (``lr``, ``momentum``,
``batch_size``, ``n_steps``, ``solver``) are read at predict time, so
``set_params(lr=...)`` or the keyword overrides of :meth:`predict_curve` /
:meth:`predict_time` reuse Θ: a grid of settings costs dynamics only.
"""

import time
import warnings

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from ..dynamics import (LOSSES, LinearizedProblem, check_batches, check_eps, check_targets,
                        check_threshold, epsilon_flags, final_value_noise, labels_of,
                        simulate, training_times)
from ..dynamics._displacement import max_curvature
from ..dynamics._factored import FactoredCurves
from ..exceptions import (DivergenceError, DivergenceWarning, EpsilonWarning,
                          LinearizationWarning, NotFittedError, ThresholdNotReachedError)
from ..gradients import (as_inputs, first_outputs, n_samples_of, ntk_from_model,
                         resolve_layerwise_plan)
from ..gram import DenseKernel, FactoredKernel, check_ntk
from ..training import measure_step_time
from ..utils import (check_bool, check_choice, check_int, check_steps, derive_seed, parse_memory,
                     root_seed)
from ..utils._batches import dataloader_batches
from ..gradients._outputs import check_output
from ..gradients._auto_projection import resolve_projection
from ..utils._torch import (model_device_dtype, model_untouched, require_trainable,
                            trainable_parameters, warn_model_assumptions)
from ._eval_set import EvalSetMixin, check_eval_set, joint_ntk, joint_rows
from ._extraction_params import (check_extraction_params, check_finite_outputs, check_temp_folder,
                                 extraction_kwargs)
from ._adamw import AdamWMixin
from ._refresh import refreshed_curves
from ._relinearize import staged_curves
from ._scale import NTK_MODES, check_predict_memory, release_cached, resolve_ntk_mode
from ._setting import resolve_setting
from ._spectrum import GramSpectrum
from ._sgd import (check_quantiles, check_user_batches, curve_band, fit_sde_noise, noise_factor,
                   sde_seeds, time_distribution)
from ._trust import TrustMixin
from ._rows import JacobianRows

__all__ = ["TrainingTimePredictor"]

METRICS = ("loss", "error")
# The stability ratio (TrainingRecipe.stability_ratio) as messages name it; with
# dampening, Nesterov or weight decay the recipe generalises the edge.
_EDGE = "η·λ_max(HΘ)/(2(1+m))"
_EVAL_OUTPUTS = ("the model's outputs on eval_set's X_val are not finite (N_val, C) values; "
                 "a held-out prediction needs them.")


class TrainingTimePredictor(EvalSetMixin, AdamWMixin, TrustMixin, BaseEstimator):
    r"""Predict the loss curve and ε-training-time of fine-tuning a torch model, without training.

    Parameters
    ----------
    model : torch.nn.Module or "precomputed"
        The pre-trained model at the weights fine-tuning starts from. Only
        parameters with ``requires_grad=True`` are trained (and enter the
        Jacobian). Never modified. ``"precomputed"`` (or None): ``fit`` takes
        the output of :class:`~sktt.JacobianFeatures` (a pipeline step before
        this one) instead of raw inputs; the gradient parameters below are
        then that step's, and ``refresh_*`` / ``measure_step_time`` / the
        trust check, which need the model, are not available.
    loss : {"cross_entropy", "mse"}, default="cross_entropy"
        torch's ``nn.CrossEntropyLoss()`` / ``nn.MSELoss()`` with the default mean
        reduction.
    optimizer : {"sgd", "adamw"}, default="sgd"
        ``torch.optim.SGD`` or ``torch.optim.AdamW``. AdamW is simulated step
        by step (solver "auto"/"discrete") in parameter space, exactly for the
        linearised model, or approximately beyond the memory budget (see
        ``adamw_mode`` and docs/adamw.rst); it does not use Θ.
    lr : float, default=1e-3
        Learning rate η of the optimiser (its base rate when ``lr_scheduler``
        is set).
    momentum : float, default=0.0
        Momentum m of ``torch.optim.SGD``, in [0, 1).
    dampening : float, default=0.0
        torch's dampening τ of the momentum buffer, in [0, 1] (not applied on
        the first step, as torch does).
    nesterov : bool, default=False
        Nesterov momentum (needs momentum > 0 and dampening 0, as torch).
    weight_decay : float, default=0.0
        SGD: torch's coupled L2 term λ (``grad + λ·w``); exact in function
        space through Φ0 = J·w0 (one forward-mode pass, computed on first use).
        AdamW: its decoupled decay ``w ← w·(1 − η_t·λ)`` (torch's AdamW
        default is 0.01; sktt's is 0 for both: pass it).
    betas : (float, float), default=(0.9, 0.999)
        AdamW's (β1, β2); ignored by SGD.
    adam_eps : float, default=1e-8
        AdamW's ``eps``; ignored by SGD (``eps`` is predict_time's ε).
    adamw_mode : {"auto", "exact", "approximate"}, default="auto"
        ``"exact"``: AdamW on the exact Jacobian rows J (N·C × D, computed on
        the first AdamW prediction; needs N·C·D·8 bytes within
        ``max_memory``). ``"approximate"``: a frozen diagonal preconditioner
        from the first batches' squared gradients, per-layer rescaled, in
        function space (:mod:`sktt.dynamics._adamw_kernel`). ``"auto"``:
        exact when J fits ``max_memory``. The mode used is ``adamw_mode_``.
    lr_scheduler : callable, array-like or None, default=None
        A callable taking a torch optimizer and returning an LR scheduler
        (e.g. ``functools.partial(CosineAnnealingLR, T_max=150)``, or a
        ``LambdaLR`` warm-up), stepped once per optimiser step; sktt reads its
        exact per-step rates on a throw-away optimizer. Or the per-step rates
        themselves (length >= ``n_steps``). None: constant ``lr``.
    batch_size : int or None, default=None
        Minibatch size b; None means full batch (gradient descent).
    n_steps : int, default=150
        Step budget T: curves cover steps 0..T, and T_ε is measured against L_T.
    solver : {"auto", "ode", "discrete", "sde"}, default="auto"
        ``"discrete"`` simulates the optimiser's steps on the linearised model
        exactly (for SGD on ``n_paths`` seeded batch orders); ``"ode"`` is the
        paper's gradient flow with η̃ = η/(1−m) (closed form for MSE, LSODA for
        cross-entropy); ``"sde"`` is the paper's SGD diffusion (Euler–Maruyama,
        ``n_paths`` noise draws; :mod:`sktt.dynamics._sde`). ``"auto"`` picks
        ``"discrete"``: it is exact for the linearised model, captures the
        momentum warm-up that the flow misses and, for SGD, predicted real
        fine-tuning best in the measurements of the user guide (docs/sgd.rst).
    n_paths : int, default=16
        Number of simulated SGD runs (batch orders for ``"discrete"``, noise
        draws for ``"sde"``) behind the mean curve, the band
        (``predict_curve(return_band=True)``) and the T_ε distribution
        (``predict_time(return_distribution=True)``). Gradient descent and the
        ODE are deterministic and use one path.
    drop_last : bool, default=False
        Whether the simulated DataLoader drops the last incomplete batch of each
        epoch (as ``DataLoader(drop_last=True)``).
    sde_noise : {"diagonal", "full"}, default="diagonal"
        Covariance of the per-sample gradients in the ``"sde"`` solver:
        ``"diagonal"`` is the paper's diagonal approximation (for an exact fit
        it is computed in ``fit`` when ``solver="sde"``, at the cost of a
        second pass over the Jacobian); ``"full"`` is the whole covariance,
        computed from Θ alone. Measured here, the diagonal underestimates the
        noise by ~25x (docs/sgd.rst).
    projection : {None, "auto", "achlioptas", "gaussian", "countsketch", "tensorsketch"}
        None (the default) computes the exact Θ; otherwise per-sample gradients are randomly
        projected to ``projection_dim`` dimensions first. ``"tensorsketch"`` is
        the fastest for large models (large layers are sketched without forming
        per-sample gradients; see the performance guide). ``"auto"`` keeps the
        exact Θ when :math:`(NC)^2 D \le 10^{11}` or :math:`D \le` ``projection_dim``,
        else ``"tensorsketch"`` (``"countsketch"`` with
        ``jacobian_method="functorch"``); the choice is ``projection_``
        (:func:`~sktt.gradients.resolve_projection`).
    projection_dim : int, default=2048
        D0, the projected dimension.
    ntk : {"auto", "dense", "factored"}, default="auto"
        The kernel ``fit`` keeps. ``"dense"`` forms Θ ((N·C)² float64);
        ``"factored"`` (needs a projection) keeps the projected rows J̃
        (N·C × D0, float32) and never forms Θ: the discrete solver runs in the
        D0-dim sketch space, the same dynamics to round-off at O(N·C·D0) memory.
        ``"auto"``: dense without a projection; with one, dense iff Θ fits in
        half of ``max_memory`` and N·C ≤ ``n_steps``·``n_paths`` (forming Θ then
        costs no more than one factored prediction), else factored. The choice
        is ``ntk_mode_``; see :mod:`sktt.estimators._scale` and
        docs/performance.rst.
    chunk_size : int or None, default=None
        Samples per Jacobian task; None sizes chunks to ``max_memory``.
    max_memory : int, str or None, default=None
        Memory budget (bytes, or e.g. ``"4GB"``) of ``fit`` (Θ or the rows,
        the Jacobian blocks) and of each prediction (kernel, paths, curves);
        None means 2 GiB. A request that cannot fit raises
        :class:`~sktt.exceptions.MemoryBudgetError` naming the bytes and the
        options. With ``ntk="factored"``, projected rows larger than half the
        budget go to a ``numpy.memmap`` in ``temp_folder``.
    temp_folder : str, path-like or None, default=None
        Existing directory of that memmap (e.g. a large local disk); None means
        :func:`tempfile.gettempdir` (``$TMPDIR``). The file is unlinked as soon
        as it is mapped: nothing is left on disk after the estimator.
    n_jobs : int or None, default=None
        Number of joblib workers over sample chunks. ``None`` means 1 unless in a
        :func:`joblib.parallel_config` context; ``-1`` means all processors.
    jacobian_method : {"auto", "layerwise", "functorch"}, default="auto"
        How per-sample gradients are computed. ``"layerwise"``: one forward and
        C backward passes per chunk, per-layer rules for Linear, Conv1d/2d,
        Embedding and normalisation layers, ``torch.func`` for other
        parameters; ``"functorch"``: ``vmap`` of whole-model vector-Jacobian
        products (the reference). ``"auto"`` uses ``"layerwise"`` unless a
        probe finds that the model mixes samples in eval mode. Both give the
        same Θ up to round-off, with the same projection.
    output : None, str, int or callable, default=None
        Which part of the model's raw output are the (N, C) logits, everywhere
        the model is called (fit, refresh, real training, step timing): None
        takes a tensor as is, a ``transformers`` ``ModelOutput``'s ``.logits``, a
        dict's ``"logits"`` or a tuple's element 0; a str names an attribute or
        key, an int an index, a callable maps the raw output to the logits.
    random_state : int, RandomState instance or None, default=None
        Seeds the projection, the simulated minibatch orders and the SDE
        noise. Pass an int for reproducible results (the same for any
        ``n_jobs``, chunk size and joblib backend); None draws fresh entropy,
        so projections and batch orders differ on every fit; a RandomState
        or Generator is consumed once per fit. See docs/reliability.rst.
    verbose : int, default=0
        Progress bar over Jacobian chunks when > 0.
    trust_check : bool, default=True
        Compute the trust diagnostic (``trust_``) in ``fit`` for the
        estimator's own settings and warn
        (:class:`~sktt.exceptions.LinearizationWarning`) when the fixed-kernel
        prediction is not "ok". Settings passed as predict-time overrides get
        only the (free) stability check; :meth:`trust_report` runs the full
        diagnostic for any setting. See docs/trust.rst. Costs a few dozen
        forward/backward passes in ``fit``.
    refresh_steps : int or None, default=None
        Closed-loop refresh: run this many real SGD steps on a copy of the model,
        re-linearise there and predict the remaining steps (the curve's first
        points are the measured ones). Costs about one more ``fit`` per setting,
        at predict time. Read at predict time, overridable per call.
    refresh_seconds : float or None, default=None
        Time budget for the real steps of the refresh (alone, or capping
        ``refresh_steps``); the number of steps then depends on the machine.
    relinearize : int, "auto" or None, default=None
        Open-loop stages: re-linearise the model at k points of the
        prediction, at the weights the linearised model predicts there (real
        outputs and kernel, no training step), and continue the simulation;
        cut points are geometric in the step (most early, where the kernel
        moves most). ``n_steps`` re-linearises after every step: the curve is
        real full-batch GD (``n_steps - 1`` takes every step from real outputs
        and kernels, but its last point stays the linearised one). ``"auto"``: stages only when the trust diagnostic's
        kernel-change probe is not "ok". Costs about one ``fit`` per point and
        setting, at predict time; exclusive with ``refresh_*``. Read at
        predict time, overridable per call. See docs/trust.rst.
    relinearize_tol : float or None, default=None
        How ``relinearize`` places its cut points. None: geometric in the
        step. A float: adaptive, at most ``relinearize`` cuts, each where the
        predicted relative change of the kernel since the last cut (the trust
        diagnostic's subset-kernel probe at the predicted weights,
        ‖ΔΘ_S‖_F/‖Θ_S‖_F) reaches this tolerance; no cut where the kernel does
        not move. Read at predict time, overridable per call.

    Attributes
    ----------
    ntk_ : ndarray of shape (N·C, N·C)
        Empirical NTK Θ (float64), sample-major: row ``i·C + c`` is output c of
        sample i. With ``ntk_mode_ == "factored"`` it is formed from the rows on
        each access ((N·C)² × 8 bytes): read ``projected_jacobian_`` instead.
    ntk_mode_ : {"dense", "factored"}
        The kernel this fit keeps (parameter ``ntk``).
    f0_ : ndarray of shape (N, C)
        Model outputs at the pre-trained weights (eval mode).
    targets_ : ndarray
        Labels (N,) for cross-entropy, targets (N, C) for MSE.
    eigenvalues_ : ndarray of shape (N·C,)
        Eigenvalues of Θ, descending; computed on first access (an
        eigendecomposition, O((N·C)³)), then kept.
    eigenvectors_ : ndarray of shape (N·C, N·C)
        Computed with ``eigenvalues_``.
    n_samples_ : int
    n_outputs_ : int
    n_params_ : int
        Number of trainable scalar parameters D.
    trainable_parameter_names_ : list of str
    projection_ : None or str
        The projection used (the choice of ``"auto"``; None: the exact Θ).
    projected_jacobian_ : ndarray of shape (N·C, projection_dim) or None
        The projected Jacobian rows when ``projection`` is set.
    eval_f0_ : ndarray of shape (N_val, C) or None
        Outputs on the held-out inputs of ``fit(..., eval_set=(X_val, y_val))``
        at the pre-trained weights; None without an eval set.
    eval_targets_ : ndarray or None
        Held-out labels (N_val,) or targets (N_val, C).
    cross_ntk_ : ndarray of shape (N·C, N_val·C) or None
        The cross-kernel Θ(train, eval) = J J_valᵀ, from the same extraction
        as ``ntk_`` (exact, or the same projection and seed).
    n_eval_samples_ : int
        N_val (0 without an eval set).
    fit_seconds_ : float
        Wall time of ``fit`` (the trust diagnostic included).
    trust_ : TrustReport
        The trust diagnostic for the estimator's own dynamics settings
        (``level`` "ok" / "doubtful" / "unreliable", ``reason``, and the
        measured ratios); only with ``trust_check=True``. Other settings:
        :meth:`trust_report`.
    linearity_score_ : float
        trace Θ(w_T) / trace Θ(w0) along the predicted weight displacement
        (1 for a model linear in its parameters).
    kernel_lambda_ratio_ : float
        λ_max Θ(w_T) / λ_max Θ(w0).
    stability_ratio_ : float
        η·λ_max(H^½ΘH^½) / (2(1+m)); 1 is the stability edge.
    relative_displacement_ : dict of str to float
        Predicted ‖Δw‖/‖w0‖ per trainable parameter tensor.
    trust_seconds_ : float
        Wall time of the trust diagnostic.
    adamw_mode_ : {"exact", "approximate"}
        The AdamW mode of the last AdamW prediction (absent before one).
    seconds_per_step_ : dict of int to float
        Median seconds of one real SGD step per batch size, filled by
        :meth:`measure_step_time` (emptied by ``fit``); used by
        ``predict_time(..., unit="seconds")``.

    See Also
    --------
    sktt.validation.run_real_training : the real fine-tuning a prediction describes.
    predict_best_step : the predicted early-stopping point on ``fit``'s ``eval_set``
        (docs/held_out.rst).

    Notes
    -----
    Units follow torch: the loss is the mean over samples (and outputs for MSE),
    and a step is one ``optimizer.step()`` on one minibatch. In function space
    the linearised model trains as
    :math:`A \leftarrow mA + \Theta_{:,B}\nabla_{F_B}L_B`,
    :math:`F \leftarrow F - \eta A`, which the ``"discrete"`` solver runs exactly.

    References
    ----------
    .. [1] L. Zancato, A. Achille, A. Ravichandran, R. Bhotika, S. Soatto,
       "Predicting Training Time Without Training", NeurIPS 2020.

    Examples
    --------
    >>> from sktt import TrainingTimePredictor
    >>> from sktt.datasets import load_demo
    >>> demo = load_demo(n_samples=100)
    >>> ttp = TrainingTimePredictor(demo.model, lr=0.05, n_steps=100).fit(demo.X, demo.y)
    >>> curve = ttp.predict_curve()
    >>> int(ttp.predict_time(eps=0.01)) <= 100
    True
    """

    def __init__(self, model=None, *, loss="cross_entropy", optimizer="sgd", lr=1e-3,
                 momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0,
                 betas=(0.9, 0.999), adam_eps=1e-8, adamw_mode="auto", lr_scheduler=None,
                 batch_size=None, n_steps=150, solver="auto", projection=None,
                 projection_dim=2048, ntk="auto", chunk_size=None, max_memory=None,
                 temp_folder=None, n_jobs=None,
                 random_state=None, verbose=0, trust_check=True, refresh_steps=None,
                 refresh_seconds=None, jacobian_method="auto", n_paths=16, drop_last=False,
                 sde_noise="diagonal", output=None, relinearize=None,
                 relinearize_tol=None):
        self.model = model
        self.loss = loss
        self.optimizer = optimizer
        self.lr = lr
        self.momentum = momentum
        self.dampening = dampening
        self.nesterov = nesterov
        self.weight_decay = weight_decay
        self.betas = betas
        self.adam_eps = adam_eps
        self.adamw_mode = adamw_mode
        self.lr_scheduler = lr_scheduler
        self.batch_size = batch_size
        self.n_steps = n_steps
        self.solver = solver
        self.projection = projection
        self.projection_dim = projection_dim
        self.ntk = ntk
        self.chunk_size = chunk_size
        self.max_memory = max_memory
        self.temp_folder = temp_folder
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.verbose = verbose
        self.trust_check = trust_check
        self.refresh_steps = refresh_steps
        self.refresh_seconds = refresh_seconds
        self.jacobian_method = jacobian_method
        self.n_paths = n_paths
        self.drop_last = drop_last
        self.sde_noise = sde_noise
        self.output = output
        self.relinearize = relinearize
        self.relinearize_tol = relinearize_tol

    # ------------------------------------------------------------------ validation
    def _check_fit_params(self):
        if not isinstance(self.model, torch.nn.Module) and not self._precomputed():
            raise TypeError(f"model must be a torch.nn.Module, or 'precomputed' to fit on the "
                            f"output of JacobianFeatures; got {type(self.model).__name__}.")
        check_choice("loss", self.loss, LOSSES)
        check_choice("ntk", self.ntk, NTK_MODES)
        check_bool("trust_check", self.trust_check)
        check_temp_folder(self.temp_folder)
        return check_extraction_params(self)

    def _setting(self, overrides, n_samples=None):
        """The :class:`~sktt.estimators._setting.Setting` of one call (validated)."""
        return resolve_setting(self, overrides, n_samples)

    def get_recipe(self, **overrides):
        """The training recipe a prediction with these overrides simulates.

        Parameters
        ----------
        **overrides
            Dynamics parameters for this call (as in :meth:`predict_curve`).

        Returns
        -------
        recipe : sktt.dynamics.TrainingRecipe
            Validated; ``learning_rates`` holds the per-step rates (read from
            ``lr_scheduler``). The real-training helpers take the same object's
            settings, so a validation run trains exactly this recipe.
        """
        return self._setting(overrides).recipe

    # ------------------------------------------------------------------ fit
    def fit(self, X, y=None, *, eval_set=None):
        """Compute f0, the (projected) Jacobians and Θ (or keep the rows: ``ntk``).

        Parameters
        ----------
        X : Tensor, ndarray, tuple / dict of those, Dataset or DataLoader
            Training inputs (first axis = samples) in whatever dtype the model
            takes. A map-style ``torch.utils.data.Dataset`` yielding ``(x, y)``
            pairs, or a ``DataLoader`` over one (its ``collate_fn`` is used, its
            ``batch_size`` / ``shuffle`` are not), is streamed: read a chunk at
            a time, never collated whole (:mod:`sktt.gradients._streaming`).
        y : array-like or None
            Class indices (cross-entropy) or targets of shape (N, C) (MSE);
            None when X is a Dataset or DataLoader (its items carry them).
        eval_set : (X_val, y_val) or None, default=None
            Held-out data for the validation curves (``predict_curve(...,
            on="eval")``, :meth:`predict_best_step`): X_val shaped like X,
            y_val as y. Its outputs at w0 and the cross-kernel Θ(train, eval)
            are computed here, once (the joint kernel of N + N_val samples must
            fit ``max_memory``). Not with ``model="precomputed"``.

        Returns
        -------
        self : TrainingTimePredictor
        """
        start = time.perf_counter()
        if self._precomputed():  # X is the output of JacobianFeatures
            if eval_set is not None:
                raise ValueError("eval_set needs the model (held-out outputs and the "
                                 "cross-kernel are extracted with the training rows); a "
                                 "predictor with model='precomputed' takes no eval_set.")
            return self._fit_precomputed(X, y, start)
        max_memory = self._check_fit_params()
        self._setting({})  # fail early on bad lr / momentum / ...
        names, params = require_trainable(self.model)
        warn_model_assumptions(self.model)  # train mode, low precision: say what is assumed
        seed = root_seed(self.random_state)
        _, dtype = model_device_dtype(self.model)
        with model_untouched(self.model) as model:
            inputs, y = as_inputs(X, y, float_dtype=dtype, verbose=self.verbose)
            # the logits selector travels with the inputs (workers, refresh, trust)
            inputs = inputs.bind_output(check_output(self.output))
            if y is None:
                raise ValueError("y is None; accepted: targets of length n_samples, or a Dataset "
                                 "yielding (x, y) pairs as X.")
            # C from the first sample; f0 itself comes with the Jacobians, from the
            # extraction's own forward passes (no separate pass over the samples)
            n_outputs = check_finite_outputs(first_outputs(model, inputs)).shape[1]
            n_samples = n_samples_of(inputs)
            targets = check_targets(y.detach().cpu().numpy(), self.loss, n_outputs)
            self._setting({}, n_samples=n_samples)  # batch_size against N
            self.projection_ = resolve_projection(  # "auto": exact when cheap (see there)
                self.projection, n_rows=n_samples * n_outputs,
                n_params=sum(p.numel() for p in params),
                projection_dim=self.projection_dim, jacobian_method=self.jacobian_method)
            mode = self._ntk_mode(n_samples * n_outputs, max_memory, self.projection_)
            # the layer-wise plan is resolved once per fit: the extraction (joint with
            # eval_set or not) and the trust diagnostic's probe take it (one probe of the
            # model, the same path); None is the torch.func path
            plan = resolve_layerwise_plan(model, inputs, names, self.jacobian_method)
            extraction = extraction_kwargs(self, n_outputs=n_outputs,
                                           projection=self.projection_, seed=seed,
                                           max_memory=max_memory)
            extraction.update(layerwise_plan=plan, jacobian_method="functorch" if plan is None
                              else self.jacobian_method)
            eval_inputs = eval_f0 = eval_targets = cross = eval_rows = None
            if eval_set is not None:
                eval_inputs, eval_targets = check_eval_set(
                    eval_set, inputs, loss=self.loss, n_outputs=n_outputs, float_dtype=dtype)
                if first_outputs(model, eval_inputs).shape[1] != n_outputs:
                    raise ValueError(_EVAL_OUTPUTS)
                if mode == "dense":
                    ntk, rows, cross, f0 = joint_ntk(model, inputs, eval_inputs, names,
                                                     **extraction)
                else:  # held-out rows are more rows of the same projection: no cross-kernel
                    ntk = None
                    rows, eval_rows, f0 = joint_rows(model, inputs, eval_inputs, names,
                                                     **extraction)
                f0, eval_f0 = check_finite_outputs(f0[:n_samples]), f0[n_samples:]
                if not np.all(np.isfinite(eval_f0)):
                    raise ValueError(_EVAL_OUTPUTS)
            else:
                ntk, rows, f0 = ntk_from_model(model, inputs, names, form_ntk=mode == "dense",
                                               return_outputs=True, **extraction)
                check_finite_outputs(f0)
            # the SDE's diagonal Σ needs the exact Jacobian once more (only when asked for)
            noise = fit_sde_noise(self, model, inputs, names, f0, targets, rows, max_memory)
        self._set_kernel(self._make_kernel(ntk, rows, f0.shape[1]), f0, targets)
        self._set_eval(eval_inputs, eval_f0, eval_targets, cross, eval_rows)
        self.n_params_ = int(sum(p.numel() for p in params))
        self.trainable_parameter_names_ = names
        self.projected_jacobian_ = rows
        self._noise_factors = noise  # SDE noise factors, computed lazily (sktt.estimators._sgd)
        self.seed_ = seed
        self._cache = {}
        self.seconds_per_step_ = {}  # step timings belong to the model of this fit
        self._step_time_optimizer = {}  # the optimizer each of them timed
        self._fit_trust(self.model, inputs, names, plan=plan,  # sktt.estimators._trust
                        path=extraction["jacobian_method"])
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def _check_fitted(self):
        """``check_is_fitted``, and that what the fitted state belongs to is unchanged.

        ``loss`` and ``model`` are fit parameters that predictions read again (the
        loss of the targets, the model of the refresh / trust / weight-decay
        passes): changed by ``set_params`` after fit they would be mixed with the
        old fit's targets and kernel, so they are refused until ``fit`` runs again.
        The other fit parameters are re-validated: the model's passes at predict
        time read ``chunk_size``, ``n_jobs``, ``jacobian_method``, ``max_memory``.
        """
        check_is_fitted(self, "f0_")
        self._check_fit_params()  # e.g. set_params(chunk_size=-5) after fit
        fitted = self.__dict__.get("_fit_loss", self.loss)
        if self.loss != fitted:
            raise ValueError(f"loss={self.loss!r} was set after fit, which used loss={fitted!r}: "
                             "the fitted targets and kernel belong to that loss. Call fit again "
                             f"(or set loss={fitted!r} back).")
        if self._has_trust_state() and isinstance(self.model, torch.nn.Module):
            fit_shapes = {n: tuple(w.shape) for n, w in self._trust_state["weights"].items()}
            params = dict(self.model.named_parameters(remove_duplicate=False))
            now = {n: tuple(params[n].shape) for n in trainable_parameters(self.model)[0]}
            if now != fit_shapes:
                changed = sorted(n for n in set(now) | set(fit_shapes)
                                 if now.get(n) != fit_shapes.get(n))
                raise ValueError(f"the model's trainable parameters changed since fit (names or "
                                 f"shapes of {changed[:5]}{' ...' if len(changed) > 5 else ''}): "
                                 "the fitted kernel belongs to the model of the fit. Call fit "
                                 "again with this model.")

    def _ntk_mode(self, n_rows, max_memory, projection):
        """"dense" or "factored" for this fit (:func:`~sktt.estimators._scale.resolve_ntk_mode`)."""
        return resolve_ntk_mode(self.ntk, projection=projection, n_rows=n_rows,
                                projection_dim=self.projection_dim, max_memory=max_memory,
                                n_steps=self.n_steps, n_paths=self.n_paths)

    @staticmethod
    def _make_kernel(ntk, rows, n_outputs):
        """The kernel operator of a fit: Θ (validated) or the rows (finite)."""
        if ntk is not None:
            return DenseKernel(check_ntk(ntk, copy=False), n_outputs)  # fit's own Θ
        block = max(1, 2**24 // (4 * rows.shape[1]))  # a memmap is read in 64 MiB blocks
        if not all(np.isfinite(rows[s:s + block]).all() for s in range(0, rows.shape[0], block)):
            raise ValueError("the projected Jacobian rows contain NaN or inf; the model's "
                             "Jacobian is not finite at w0. Check the model's outputs and "
                             "parameters for NaN/inf.")
        return FactoredKernel(rows, n_outputs)

    def _set_kernel(self, kernel, f0, targets):
        """Fitted state shared by both fits: the kernel operator, outputs, targets."""
        self._kernel = kernel
        self._fit_loss = self.loss  # targets_ and the kernel's meaning (_check_fitted)
        self.ntk_mode_ = "factored" if getattr(kernel, "factored", False) else "dense"
        self.f0_ = f0
        self.targets_ = targets
        self.n_samples_, self.n_outputs_ = f0.shape
        self._jw0 = None  # Φ0 = J·w0, computed on the first weight-decay prediction
        self._set_eval(None, None, None, None)

    def _set_eval(self, inputs, f0, targets, cross, eval_rows=None):
        """Held-out state of ``fit(..., eval_set=...)`` (all None without one).

        Dense: the cross-kernel Θ(train, eval); factored: the held-out projected
        rows (``cross_ntk_`` is then None: it is never formed).
        """
        self._eval_inputs = inputs
        self.eval_f0_ = f0
        self.eval_targets_ = targets
        self.cross_ntk_ = cross
        self.n_eval_samples_ = 0 if f0 is None else int(f0.shape[0])
        self._eval_jw0 = None
        self._eval_kernel = None
        if cross is not None:
            self._eval_kernel = DenseKernel(self._kernel.ntk, self.n_outputs_, cross=cross)
        elif eval_rows is not None:  # the same training rows, plus the held-out ones
            self._eval_kernel = FactoredKernel(self._kernel.rows, self.n_outputs_,
                                               eval_rows=eval_rows)

    def _fitted_kernel(self):
        try:
            return self.__dict__["_kernel"]
        except KeyError:
            raise AttributeError("the kernel exists after fit") from None

    @property
    def ntk_(self):
        """Θ (float64, (N·C)²): stored (dense) or formed from the rows on access (factored)."""
        return self._fitted_kernel().dense()

    @property
    def eigenvalues_(self):
        """Eigenvalues of Θ, descending (computed on first access)."""
        return self._fitted_kernel().eigh()[0]

    @property
    def eigenvectors_(self):
        """Eigenvectors of Θ, column k for ``eigenvalues_[k]`` (computed on first access)."""
        return self._fitted_kernel().eigh()[1]

    def _problem(self, recipe, held_out=False):
        """The linearised problem a recipe is simulated on (Φ0 only when it needs it).

        ``held_out=True`` adds the eval-set rows (when fitted with one).
        """
        labels = labels_of(self.targets_, self.loss) if self._has_error_metric() else None
        jw0 = self._weight_anchor() if recipe.weight_decay > 0 else None
        problem = LinearizedProblem(self.f0_, self.targets_, self.loss, labels=labels, jw0=jw0)
        if not (held_out and self._has_eval_set()):
            return problem
        return LinearizedProblem(
            self.f0_, self.targets_, self.loss, labels=labels, jw0=jw0,
            eval_f0=self.eval_f0_, eval_targets=self.eval_targets_,
            eval_labels=(labels_of(self.eval_targets_, self.loss)
                         if labels is not None else None),
            eval_jw0=self._weight_anchor(held_out=True) if jw0 is not None else None)

    def _weight_anchor(self, held_out=False):
        """Φ0 = J·w0 (trainable parameters), one forward-mode pass over the fit inputs
        (``held_out=True``: over the eval-set inputs)."""
        attr = "_eval_jw0" if held_out else "_jw0"
        if getattr(self, attr) is None:
            if not self._has_trust_state():
                raise ValueError("weight_decay > 0 needs J·w0 (one forward-mode pass of the "
                                 "model); a predictor fitted with model='precomputed' has no "
                                 "model. Fit with the torch model instead.")
            from ._trust import _operator  # the Jacobian operator at the fit snapshot

            with model_untouched(self.model):
                op = _operator(self, inputs=self._eval_inputs if held_out else None)
                setattr(self, attr, op.jvp(op.params).astype(np.float64))
        return getattr(self, attr)

    def _precomputed(self):
        return self.model is None or (isinstance(self.model, str) and self.model == "precomputed")

    def _fit_precomputed(self, X, y, start):
        """``fit`` on JacobianRows: Θ = rows·rowsᵀ; f0 and (unless y is given) targets from X."""
        from ..exceptions import MemoryBudgetError
        from ..utils import format_bytes

        if not isinstance(X, JacobianRows):
            raise TypeError(f"model={self.model!r} takes the output of JacobianFeatures as X (a "
                            f"JacobianRows), got {type(X).__name__}; pass the torch model as "
                            "model to fit on raw inputs.")
        if self.refresh_steps is not None or self.refresh_seconds is not None:
            raise ValueError("refresh_steps / refresh_seconds run real steps of the model, which "
                             "a predictor with model='precomputed' does not have; pass the model.")
        max_memory = self._check_fit_params()
        self._setting({})
        from ..gradients._inputs import _to_tensor  # y converted as fit converts it

        targets = X.resolve_targets(None if y is None else _to_tensor("y", y, torch.float64).cpu().numpy())
        if targets is None:
            raise ValueError("y is None and the JacobianRows carry no targets; pass y, or get the "
                             "rows from JacobianFeatures.fit_transform(X, y).")
        f0 = check_finite_outputs(X.f0)  # rows built by hand, or from another model's outputs
        targets = check_targets(targets, self.loss, f0.shape[1])
        self._setting({}, n_samples=f0.shape[0])
        n_rows = X.rows.shape[0]
        if X.projection is not None and self._ntk_mode(n_rows, max_memory,
                                                       X.projection) == "factored":
            kernel = self._make_kernel(None, X.rows, f0.shape[1])
        else:
            if n_rows * n_rows * 8 > max_memory:
                raise MemoryBudgetError(
                    f"Θ for N={f0.shape[0]} samples × C={f0.shape[1]} outputs is {n_rows}×"
                    f"{n_rows} float64 = {format_bytes(n_rows * n_rows * 8)}, more than "
                    f"max_memory={format_bytes(max_memory)}. Options: raise max_memory; with "
                    "projected rows, ntk='factored' (Θ never formed); or measure the spectrum "
                    "on a subset and extrapolate with GramSpectrum.")
            kernel = self._make_kernel(X.ntk(), None, f0.shape[1])
        self._set_kernel(kernel, f0, targets)
        self.n_params_ = int(X.n_params if X.n_params is not None else X.n_columns)
        self.trainable_parameter_names_ = X.parameter_names
        self.projection_ = X.projection
        self.projected_jacobian_ = X.rows if X.projection is not None else None
        self._noise_factors = {}
        self.seed_ = root_seed(self.random_state)  # the minibatch order
        self._cache = {}
        self.seconds_per_step_ = {}
        self._step_time_optimizer = {}
        for attr in ("_trust_state", "trust_", "linearity_score_", "kernel_lambda_ratio_",
                     "stability_ratio_", "relative_displacement_", "trust_seconds_"):
            self.__dict__.pop(attr, None)  # no model here: no trust snapshot
        self.fit_seconds_ = time.perf_counter() - start
        return self

    # ------------------------------------------------------------------ seconds
    def measure_step_time(self, X, y=None, *, batch_size=None, n_repeats=5, n_warmup=2,
                          train_mode=True):
        """Time real optimiser steps of the model here, for ``predict_time(unit="seconds")``.

        Runs ``n_warmup + n_repeats`` real steps (forward, backward, the
        estimator's optimiser's ``step()``) on a deep copy of ``model`` and stores the
        median seconds per step in ``seconds_per_step_[batch_size]``. The model
        itself, its gradients and the global RNG states are left untouched.

        Parameters
        ----------
        X : Tensor, ndarray, tuple / dict of those, Dataset or DataLoader
            Training inputs, any container ``fit`` takes (a slice of at least
            ``batch_size`` rows is enough; fewer rows are repeated).
        y : array-like or None, default=None
            Their targets; None reuses ``targets_`` when ``X`` has the fitted
            number of samples (or the Dataset's / DataLoader's targets).
        batch_size : int, sequence of int or None, default=None
            Batch size(s) to time; None means the estimator's ``batch_size``
            (``n_samples_`` for full batch).
        n_repeats : int, default=5
            Timed steps per batch size (their median is kept).
        n_warmup : int, default=2
            Untimed steps first.
        train_mode : bool, default=True
            Time in ``train()`` mode, as a real fine-tuning loop runs.

        Returns
        -------
        self : TrainingTimePredictor

        Notes
        -----
        Data loading, host-to-device copies, evaluation and logging are not
        included: see :func:`sktt.training.measure_step_time`.
        """

        self._check_fitted()
        if self._precomputed():
            raise ValueError("measure_step_time times real steps of the model; a predictor "
                             "with model='precomputed' has none. Use "
                             "sktt.validation.measure_step_time(model, X, y, batch_size=...) "
                             "and predict_time(...) in steps times those seconds.")
        if batch_size is None:
            sizes = [self.batch_size if self.batch_size is not None else self.n_samples_]
        elif np.ndim(batch_size) == 0:
            sizes = [batch_size]
        else:
            sizes = list(batch_size)
        sizes = [check_int("batch_size", b, low=1, high=self.n_samples_) for b in sizes]
        if y is None and not isinstance(X, (torch.utils.data.Dataset,
                                            torch.utils.data.DataLoader)):
            # samples as fit counts them: len() of a dict / BatchEncoding is its number of
            # keys, of a DataLoader its number of batches
            X, _ = as_inputs(X, None, float_dtype=model_device_dtype(self.model)[1])
            if len(X) != self.n_samples_:
                raise ValueError(f"y is None but X has {len(X)} samples, not the "
                                 f"{self.n_samples_} of fit; pass the targets of X.")
            y = np.asarray(self.targets_)
        timed = self.__dict__.setdefault("_step_time_optimizer", {})
        for b in sizes:
            timed[b] = self.optimizer  # an AdamW step is not an SGD step (_seconds_per_step)
            self.seconds_per_step_[b] = measure_step_time(
                self.model, X, y, batch_size=b, loss=self.loss, lr=self.lr,
                momentum=self.momentum, dampening=self.dampening, nesterov=self.nesterov,
                weight_decay=self.weight_decay, n_repeats=n_repeats, n_warmup=n_warmup,
                train_mode=train_mode, optimizer=self.optimizer, betas=self.betas,
                adam_eps=self.adam_eps, output=self.output)
        return self

    # ------------------------------------------------------------------ dynamics
    def _batch_sequence(self, recipe, n_paths=1):
        """Per-step batch indices of ``n_paths`` shuffling DataLoaders, ``(P, b)`` per step.

        Path ``k`` is exactly the order of ``DataLoader(..., shuffle=True,
        drop_last=drop_last, generator=torch.Generator().manual_seed(self.dataloader_seed(k)))``.
        """
        paths = [dataloader_batches(self.n_samples_, recipe.batch_size, recipe.n_steps,
                                    seed=self.dataloader_seed(k), drop_last=recipe.drop_last)
                 for k in range(n_paths)]
        return check_batches([np.stack(step) for step in zip(*paths)], self.n_samples_,
                             recipe.n_steps)

    def dataloader_seed(self, path=0):
        """Seed of the shuffling DataLoader behind simulated SGD path ``path``.

        ``DataLoader(dataset, batch_size, shuffle=True, generator=torch.Generator()
        .manual_seed(ttp.dataloader_seed(k)))`` yields, epoch after epoch, the
        batches of path ``k`` of the ``"discrete"`` solver, so a real loop can be
        compared with a simulated path batch for batch (or pass your own
        sequence: ``predict_curve(batches=...)``).

        Parameters
        ----------
        path : int, default=0

        Returns
        -------
        seed : int
        """
        check_is_fitted(self, "seed_")
        return derive_seed(self.seed_, check_int("path", path, low=0))

    def _curves(self, setting, batches=None):
        """Loss and error curves, shape (n_paths, n_steps + 1), cached per setting.

        ``batches`` (an explicit batch sequence) bypasses the cache.
        """
        recipe = setting.recipe
        if batches is not None:
            if setting.refresh_active or setting.relinearize_active:
                raise ValueError("batches= cannot be combined with refresh_steps / "
                                 "refresh_seconds / relinearize.")
            if recipe.resolved_solver != "discrete":
                raise ValueError(f"batches= describes the minibatches of the exact simulation; "
                                 f"it needs solver='discrete' (or 'auto'), not "
                                 f"solver={recipe.solver!r}.")
            out = self._simulate(recipe, check_user_batches(batches, self.n_samples_,
                                                            recipe.n_steps))
            out["divergence"] = self._divergence(setting, out)
            return out
        if setting.key in self._cache:
            return self._cache[setting.key]
        if setting.refresh_active:  # closed loop: real steps, then re-linearise (._refresh)
            out = refreshed_curves(self, setting)
        elif setting.relinearize_active:  # open loop: stages at predicted weights (._relinearize)
            out = staged_curves(self, setting)
        else:
            out = self._simulate(recipe)
        out["divergence"] = self._divergence(setting, out)
        self._cache[setting.key] = out
        return out

    def _simulate(self, recipe, batches=None):
        """The one ``simulate`` call of a plain (open-loop) prediction."""
        solver = recipe.resolved_solver
        draw = batches is None and solver == "discrete" and not recipe.full_batch
        if recipe.is_adamw:  # parameter space or preconditioned kernels (._adamw)
            if draw:
                batches = self._batch_sequence(recipe, recipe.n_paths)
            kernel, problem, mode = self._adamw_operands(recipe, held_out=True)
            if mode == "approximate":  # once per setting: curves are cached per setting
                warnings.warn(
                    "optimizer='adamw' is predicted in the approximate mode (a frozen per-layer "
                    "preconditioner: the exact Jacobian rows do not fit max_memory, or "
                    "adamw_mode='approximate'). Measured: loss T_ε within ~3 % (median) of real "
                    "AdamW on convnets and MLPs, but 14x too slow on a transformer (MiniLM) "
                    "(docs/adamw.rst). Raise max_memory for the exact mode where the trainable "
                    "part allows it.", LinearizationWarning, stacklevel=4)
            out = simulate(kernel, problem, recipe, batches=batches)
            out["adamw_mode"] = mode
            return out
        noise = seeds = None
        if solver == "sde":
            seeds = sde_seeds(self.seed_, recipe.n_paths)
            if not recipe.full_batch:
                noise = noise_factor(self, recipe.sde_noise)
        held_out = self._has_eval_set() and solver != "sde"  # see ._eval_set: sde refuses
        kernel = self._eval_kernel if held_out else self._kernel
        n_paths = recipe.n_paths if draw else 1 if batches is None else batches[0].shape[0]
        budget = parse_memory("max_memory", self.max_memory)
        n_rows = (self.n_samples_ + (self.n_eval_samples_ if held_out else 0)) * self.n_outputs_
        # checked before the batch orders are drawn: they are part of the prediction's memory
        kernel, need = check_predict_memory(kernel, recipe, max(n_paths, len(seeds or ())),
                                            n_rows, budget)
        release_cached(self._cache, budget - need)  # the cached curves of other settings
        if draw:
            batches = self._batch_sequence(recipe, recipe.n_paths)
        return simulate(kernel, self._problem(recipe, held_out=held_out), recipe,
                        batches=batches, noise_factor=noise, seeds=seeds)

    def _divergence(self, setting, out):
        """Why the predicted training under ``setting`` diverges (a phrase), or None.

        Three signs, any of which makes a training time meaningless: the mean
        loss becomes non-finite; it ends above where it started while the
        learning rate is past the stability edge (cross-entropy there
        oscillates and grows without ever overflowing; below the edge a rise is
        SGD's noise floor, not divergence); or gradient descent is unstable
        although the curve at hand does not show it (the gradient flow of
        ``solver="ode"`` never diverges; for MSE, the recipe's linear recursion
        diverges iff its stability ratio exceeds 1, whatever ``n_steps`` shows).
        """
        recipe = setting.recipe
        if isinstance(out, FactoredCurves) and out.certainly_finite:  # its ends, not every step
            mean = out.at("loss", [0, recipe.n_steps]).mean(axis=0)
        else:
            loss = np.asarray(out["loss"], dtype=np.float64)
            mean = loss.mean(axis=0) if loss.ndim == 2 else loss
            with np.errstate(invalid="ignore"):
                finite = np.isfinite(mean)
            if not np.all(finite):
                bad = np.asarray(out.get("diverged_at", [-1]))
                step = int(bad[bad >= 0].min()) if np.any(bad >= 0) else int(np.argmin(finite))
                return f"the loss becomes non-finite at step {step}"
        solver = recipe.resolved_solver
        sgd = not recipe.full_batch
        if recipe.is_adamw:  # no linear stability edge: only a rise is a sign
            if mean[-1] > mean[0] * (1.0 + 1e-9):
                return (f"the loss at step {recipe.n_steps} ({mean[-1]:.4g}) is above where it "
                        f"starts ({mean[0]:.4g})")
            return None
        if mean[-1] > mean[0] * (1.0 + 1e-9):
            ratio = self._stability(recipe, sgd=sgd)
            if ratio >= 1.0:  # below the edge a rise is SGD's noise floor, not divergence
                return (f"the loss at step {recipe.n_steps} ({mean[-1]:.4g}) is above where it "
                        f"starts ({mean[0]:.4g}): past the stability edge ({_EDGE} = "
                        f"{ratio:.3g} at w0, 1 is the edge) the linearised loss grows or "
                        "oscillates and has not trained within n_steps")
        if setting.refresh_active or (sgd and solver != "ode"):
            return None  # the simulated (or measured) paths above are the verdict
        ratio = self._stability(recipe, sgd=False)
        if ratio <= 1.0 + 1e-9:
            return None
        flow = (" although the gradient flow (solver='ode') does not show it"
                if solver == "ode" else "")
        if self.loss == "mse":  # constant curvature: past the edge, GD diverges
            return (f"gradient descent with this lr is past its stability edge "
                    f"({_EDGE} = {ratio:.3g} > 1), so its loss grows without "
                    f"bound{flow}")
        if solver != "ode":
            return None  # cross-entropy GD: the exact simulation above is the verdict
        gd = simulate(self._kernel, self._problem(recipe),
                      recipe.replace(solver="discrete", batch_size=None))["loss"][0]
        if not np.all(np.isfinite(gd)) or gd[-1] > gd[0] * (1.0 + 1e-9):
            return (f"gradient descent with this lr is past its stability edge at w0 "
                    f"(ratio {ratio:.3g}) and its loss ends at {gd[-1]:.4g} > L_0 = "
                    f"{gd[0]:.4g}{flow}")
        return None

    def _curvature(self, recipe, *, sgd):
        """h = λ_max(H^½ΘH^½) at w0, full batch or the max over the first SGD batches (cached)."""
        key = ("curvature", recipe.batch_size if sgd else None, recipe.drop_last and sgd)
        if key not in self._cache:
            batches = None
            if sgd:
                first = recipe.replace(n_steps=min(recipe.n_steps, 4), lr_schedule=None)
                batches = [b[:1] for b in self._batch_sequence(first)]
            self._cache[key] = max_curvature(self._kernel, [self.f0_], self.targets_,
                                             self.loss, batches=batches)
        return self._cache[key]

    def _stability(self, recipe, *, sgd):
        """The recipe's stability ratio at w0 (1 is the edge); NaN for AdamW, which has none."""
        if recipe.is_adamw:
            return float("nan")
        return recipe.stability_ratio(self._curvature(recipe, sgd=sgd))

    def _has_error_metric(self):
        return self.loss == "cross_entropy" or self.n_outputs_ > 1

    def _stability_hint(self, recipe):
        if recipe.is_adamw:
            return "AdamW moves each weight by about lr per step; try a smaller lr"
        lam = self._kernel.lambda_max
        scale = (self.n_samples_ if self.loss == "cross_entropy"
                 else self.n_samples_ * self.n_outputs_ / 2)
        return (f"η̃·λ_max(Θ)/{'N' if self.loss == 'cross_entropy' else '(N·C/2)'} = "
                f"{recipe.effective_lr * lam / scale:.3g}; try a smaller lr")

    def predict_curve(self, metric="loss", *, on="train", return_band=False,
                      quantiles=(0.05, 0.95), steps=None, batches=None, **overrides):
        """Predicted train (or held-out) loss or error (%) at steps 0..n_steps.

        Parameters
        ----------
        metric : {"loss", "error"}, default="loss"
            ``"loss"`` in torch's mean units; ``"error"`` the error in percent.
        on : {"train", "eval"}, default="train"
            The training set, or the ``eval_set`` given to ``fit`` (held-out
            rows move through the cross-kernel and never enter a batch;
            solvers ``"discrete"`` and ``"ode"``, not ``"sde"``).
        return_band : bool, default=False
            Return the spread over the simulated SGD paths too (see Returns).
        quantiles : (float, float), default=(0.05, 0.95)
            Levels of the band's lower and upper edges.
        steps : array-like of int, optional
            Only these steps (each in ``[0, n_steps]``), as a training loop that
            evaluates every k steps would: with a factored kernel
            (``ntk_mode_ == "factored"``) only they are computed, which is
            what makes a long curve on a large set cheap. None = every step.
        batches : list of array-like, optional
            An explicit minibatch sequence for the ``"discrete"`` solver: one
            index array per step (shape ``(b,)``, e.g. from
            :func:`sktt.validation.dataloader_batches` with your DataLoader's
            seed, or ``RealTrainingResult.batches``), or ``(P, b)`` arrays for P
            paths. Replaces ``batch_size`` / ``n_paths`` / ``drop_last`` for
            this call; not cached.
        **overrides
            Dynamics parameters (``lr``, ``momentum``, ``batch_size``, ``n_steps``,
            ``solver``, ``n_paths``, ...) for this call only; Θ is reused.

        Returns
        -------
        curve : ndarray of shape (n_steps + 1,) or (len(steps),)
            The mean over the simulated paths (the expected loss of the
            linearised model; one path for GD and the ODE).
        band : sklearn.utils.Bunch
            With ``return_band=True``: ``mean``, ``median``, ``lower``, ``upper``
            (pointwise quantiles over paths, each of shape (n_steps + 1,)),
            ``quantiles`` and ``paths`` (n_paths, n_steps + 1). Deterministic
            solvers give a degenerate band (lower = upper = mean).
        """
        return_band = check_bool("return_band", return_band)
        setting, out, band = self._predicted(metric, quantiles, batches, overrides, on, steps)
        self._warn_trust(setting)
        if out["divergence"] is not None:
            warnings.warn(f"the predicted training diverges: {out['divergence']} "
                          f"({self._stability_hint(setting.recipe)}).", DivergenceWarning,
                          stacklevel=2)
        return band if return_band else band.mean

    def _run(self, metric, batches, overrides, on="train"):
        """``(setting, out, key)``: the simulated (cached) curves and the key of ``metric``."""
        self._check_fitted()
        check_choice("metric", metric, METRICS)
        if metric == "error" and not self._has_error_metric():
            raise ValueError("metric='error' needs a classification target: cross-entropy, or MSE "
                             "with C >= 2 outputs (the label is argmax of the target).")
        setting = self._setting(overrides)
        key = self._curve_key(metric, on, setting)  # ._eval_set
        return setting, self._curves(setting, batches), key

    def _predicted(self, metric, quantiles, batches, overrides, on="train", steps=None):
        """``(setting, out, band)``: the work of predict_curve, without warnings."""
        quantiles = check_quantiles(quantiles)
        setting, out, key = self._run(metric, batches, overrides, on)
        if steps is None:
            return setting, out, curve_band(out[key], quantiles)
        steps = check_steps(steps, setting.recipe.n_steps)
        at = getattr(out, "at", None)  # a factored run computes only these steps
        paths = at(key, steps) if at is not None else np.asarray(out[key])[:, steps]
        return setting, out, curve_band(paths, quantiles)

    def predict_time(self, eps=None, metric="loss", *, on="train", threshold=None, smooth=None,
                     unit="steps", return_distribution=False, quantiles=(0.05, 0.95),
                     batches=None, **overrides):
        """Predicted ε-training-time in steps (or the first step under an absolute threshold).

        Parameters
        ----------
        eps : float or array-like of float, optional
            ε in the metric's units (loss units, or percentage points for the
            error). ``T_ε = min{t : |L_t − L_T| < ε}``. Exactly one of ``eps``
            and ``threshold`` must be given.
        metric : {"loss", "error"}, default="loss"
        on : {"train", "eval"}, default="train"
            The curve of the training set or of the ``eval_set`` (see
            :meth:`predict_curve`).
        threshold : float or array-like of float, optional
            Absolute target τ: the first step with L_t ≤ τ.
        smooth : int or None, default=None
            Centred moving-average window applied to the curve first (for noisy
            error curves).
        unit : {"steps", "seconds"}, default="steps"
            ``"seconds"`` multiplies the steps by the seconds per step measured
            for this batch size with :meth:`measure_step_time`.
        return_distribution : bool, default=False
            Also return the distribution of T_ε over the simulated SGD paths.
        quantiles : (float, float), default=(0.05, 0.95)
            Levels of the distribution's ``lower`` and ``upper``.
        batches : list of array-like, optional
            An explicit minibatch sequence (see :meth:`predict_curve`).
        **overrides
            Dynamics parameters for this call only (see :meth:`predict_curve`).

        Returns
        -------
        steps : int or ndarray of int
            Same shape as ``eps`` / ``threshold``; float seconds with
            ``unit="seconds"``. For SGD, the time of the mean curve over the
            simulated paths (docs/sgd.rst compares it with the median of the
            per-path times).
        distribution : sklearn.utils.Bunch
            With ``return_distribution=True``: ``point`` (the value above),
            ``median``, ``lower`` and ``upper`` of the per-path times (observed
            values, quantile levels ``quantiles``), and ``times`` of shape
            (n_paths,) or (n_paths, E), -1 where a path never reaches a
            threshold. GD gives a degenerate distribution.

        Raises
        ------
        DivergenceError
            If the predicted training diverges under these settings.
        ThresholdNotReachedError
            If a threshold is not reached within ``n_steps``.

        Warns
        -----
        EpsilonWarning
            If ε exceeds the whole predicted change :math:`|L_0 - L_T|` (the
            time is then 0 and meaningless), or if it is below the SGD noise of
            the predicted final value: the standard error of the mean of the
            paths' :math:`L_T` (the mean curve fluctuates by about that much near
            its end, so T_ε is where it first enters the band by chance;
            docs/sgd.rst).
        """
        if (eps is None) == (threshold is None):
            raise ValueError("give exactly one of eps (distance to the final value) and "
                             "threshold (absolute level).")
        if smooth is not None:
            smooth = check_int("smooth", smooth, low=1)
        check_choice("unit", unit, ("steps", "seconds"))
        return_distribution = check_bool("return_distribution", return_distribution)
        seconds_per_step = self._seconds_per_step(overrides) if unit == "seconds" else None
        quantiles = check_quantiles(quantiles)
        setting, out, key = self._run(metric, batches, overrides, on)
        self._warn_trust(setting)
        if out["divergence"] is not None:
            raise DivergenceError(f"the predicted training diverges, so no training time exists: "
                                  f"{out['divergence']} ({self._stability_hint(setting.recipe)}).")
        kind = "eps" if eps is not None else "threshold"
        values = check_eps(eps) if eps is not None else check_threshold(threshold)
        # the point is the time of the mean curve over paths (measured best: docs/sgd.rst)
        times, path_times, first, last, finals = training_times(
            out, key, values, kind=kind, smooth=smooth, per_path=return_distribution)
        n_steps = setting.recipe.n_steps
        if eps is not None:
            flags = epsilon_flags(values, first, last, finals)
            why = {
                "eps_exceeds_drop": (
                    f"is larger than the whole predicted change of the {metric} over n_steps="
                    f"{n_steps} (|L_0 - L_T| = {abs(first - last):.4g}), so T_ε = 0 says "
                    "nothing about training speed; use a smaller eps."),
                "eps_below_noise": (
                    f"is below the SGD noise of the predicted final {metric}: over the "
                    f"{finals.size} simulated paths it is {last:.4g} ± "
                    f"{final_value_noise(finals):.2g} (standard error of their mean), so the "
                    "mean curve fluctuates by more than ε near the end and T_ε is where it "
                    "first falls into the band by chance, not where training settles; use a "
                    "larger eps (or smooth=, or more n_paths)."),
            }
            for flag, text in why.items():
                hit = flags == flag
                if np.any(hit):
                    warnings.warn(f"eps={values[hit] if values.ndim else float(values)} {text}",
                                  EpsilonWarning, stacklevel=2)
        elif np.any(times < 0):
            missed = values[np.atleast_1d(times) < 0] if values.ndim else values
            raise ThresholdNotReachedError(
                f"threshold {missed} is not reached within n_steps={n_steps} steps (the "
                f"predicted {metric} ends at {last:.4g}); raise n_steps or the threshold.")
        scale = 1.0 if seconds_per_step is None else seconds_per_step
        if seconds_per_step is not None:
            seconds = np.asarray(times, dtype=np.float64) * seconds_per_step
            point = float(seconds) if values.ndim == 0 else seconds
        else:
            point = int(times) if values.ndim == 0 else np.asarray(times).astype(np.int64)
        if not return_distribution:
            return point
        dist = time_distribution(path_times, quantiles, point)
        if seconds_per_step is not None:  # the same unit as the point prediction
            for key in ("median", "lower", "upper"):
                dist[key] = dist[key] * scale
            dist["times"] = np.where(path_times < 0, -1.0, path_times * scale)
        return dist

    def _seconds_per_step(self, overrides):
        """The measured seconds per step for this call's batch size, or a clear error."""
        self._check_fitted()
        recipe = self._setting(overrides).recipe
        b = recipe.batch_size or self.n_samples_
        measured = getattr(self, "seconds_per_step_", {})
        if b not in measured:
            raise NotFittedError(
                f"no step time measured for batch_size={b}; call "
                f"measure_step_time(X, y, batch_size={b}) first (measured batch sizes: "
                f"{sorted(measured) or 'none'}).")
        timed = self.__dict__.get("_step_time_optimizer", {}).get(b, recipe.optimizer)
        if timed != recipe.optimizer:
            raise NotFittedError(
                f"the step time for batch_size={b} was measured with optimizer={timed!r}, not "
                f"optimizer={recipe.optimizer!r}; call set_params(optimizer="
                f"{recipe.optimizer!r}).measure_step_time(X, y, batch_size={b}) first.")
        return measured[b]

    def extrapolate(self, n_samples, *, residual_sq_norm=None, **spectrum_params):
        r"""Predict MSE training on ``n_samples`` from this predictor's subset kernel.

        The predictor is fitted (``loss="mse"``) on N0 samples; the spectrum of
        its Θ is extrapolated to N samples by :class:`~sktt.GramSpectrum`, whose
        ``predict_curve`` / ``predict_time`` then describe the full data.
        Cross-entropy is not supported: the extrapolation (paper, Appendix D)
        rests on the squared error's closed form, whose modes decay
        independently; for cross-entropy fit on all N with a projection instead.

        Parameters
        ----------
        n_samples : int
            N ≥ N0, the size of the full training set.
        residual_sq_norm : float, optional
            :math:`\lVert f_0(X) - Y\rVert^2` over the full data
            (:func:`sktt.gradients.residual_sq_norm`); None estimates it from
            the subset.
        **spectrum_params
            :class:`~sktt.GramSpectrum` parameters (``alpha``, ``k0``,
            ``fit_range``, ...). ``lr``, ``momentum`` and ``n_steps`` default to
            this predictor's; ``batch_size`` does not enter (gradient flow).

        Returns
        -------
        spectrum : GramSpectrum
            Fitted on this predictor's eigendecomposition (no new gradients).
        """
        self._check_fitted()
        if self.loss != "mse":
            raise ValueError(f"extrapolate needs loss='mse'; this predictor has loss="
                             f"{self.loss!r}. The subset-to-N extrapolation is derived for the "
                             "squared error only (its closed form); for cross-entropy, fit on "
                             "all N samples with projection='countsketch' instead.")
        params = {"lr": self.lr, "momentum": self.momentum, "n_steps": self.n_steps}
        params.update(spectrum_params)
        if "kernel" in params or "n_outputs" in params:
            raise TypeError("kernel and n_outputs are set by extrapolate; do not pass them.")
        rows = self.projected_jacobian_  # (N·C, D0) when projected, here or in JacobianFeatures
        rank = rows.shape[1] if rows is not None else self.n_params_
        params.setdefault("max_rank", rank)
        residual = (self.f0_ - self.targets_).ravel()
        projections = (self.eigenvectors_.T @ residual) ** 2
        return GramSpectrum.from_eigh(self.eigenvalues_, projections, n_outputs=self.n_outputs_,
                                      n_samples=n_samples, residual_sq_norm=residual_sq_norm,
                                      **params)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        return tags

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_cache", None)  # curves are recomputed on demand
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if "f0_" in self.__dict__:
            self._cache = {}


