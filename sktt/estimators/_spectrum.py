r"""GramSpectrum: predict MSE training on N samples from the kernel of a subset of N0.

Θ = J Jᵀ costs ``(N·C)²`` memory and N·C Jacobian rows. Its spectrum, measured
on a subset and extrapolated with power laws (Zancato et al. 2020, Appendix D),
gives the squared-error loss curve — and the training time — on all N samples
from the kernel of N0 of them and one cheap forward pass over the full data
(for :math:`\lVert\delta y\rVert^2`).

numpy/scipy only: torch is imported inside :meth:`GramSpectrum.from_model`,
nowhere else.
"""

import warnings

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils import check_array
from sklearn.utils.validation import check_is_fitted, validate_data

from ..dynamics import (TrainingRecipe, check_eps, check_threshold, epsilon_training_time,
                        simulate, smooth_curve,
                        threshold_training_time)
from ..exceptions import SpectrumWarning, ThresholdNotReachedError
from ..gram import (SpectralKernel, check_ntk, count_positive, extrapolate_eigenvalues, extrapolated_exponent,
                    fit_power_law, fit_projection_tail, ntk_eigh, select_fit_range)
from ..utils import check_choice, check_fraction, check_int, check_positive_finite
from ._rows import JacobianRows

__all__ = ["GramSpectrum"]

KERNELS = ("jacobian", "precomputed")
PROJECTION_SCALES = ("residual", "samples")
DYNAMICS_PARAMS = ("lr", "momentum", "n_steps")
K0_MAX_FRACTION = 0.2  # beyond this fraction of N0·C the subset's projections are unreliable


class GramSpectrum(BaseEstimator):
    r"""Extrapolate the NTK spectrum of a subset to N samples and predict MSE training.

    Fit on the Jacobian rows (or the kernel Θ0) of :math:`N_0` samples and
    their residual :math:`\delta y_{sub} = f_0(X_{sub}) - Y_{sub}`; predict the
    eigenvalues :math:`\hat\lambda_k` and residual projections :math:`\hat p_k`
    of the kernel of all ``n_samples`` = N samples, and from them the gradient-
    flow loss curve and ε-training-time for N samples (squared error only).

    Parameters
    ----------
    n_samples : int or None, default=None
        N, the size of the full training set (N ≥ N0). None means N = N0: no
        extrapolation, the measured spectrum is the prediction.
    alpha : float, default=0.15
        α of the exponent correction :math:`s_N = s - \alpha(N_0/N - 1)`, in
        [0, 1]. The paper reports α ∈ [0.1, 0.2]; α = 0 keeps the subset's
        exponent.
    k0 : int, default=100
        First index of the power-law tail of the projections (1-based); the
        measured (scaled) projections are kept for k < k0. It should lie past
        the modes that hold most of the residual (the predicted late loss was
        up to 3.4× too high with k0 = 25–40 on the demo convnet, where 99 % of
        ‖δy‖² sits in the top ~50 modes) and within the first 20 % of the
        subset's N0·C modes (a :class:`~sktt.exceptions.SpectrumWarning` says
        when it is not; at k0 = N0·C/3 the late loss came out 24–57 % low).
        Must not exceed N0·C when extrapolating.
    fit_range : "auto" or tuple (start, stop), default="auto"
        Indices of the subset spectrum the power law is fitted on: 1-based
        inclusive ints, or fractions in (0, 1] of the number of positive
        eigenvalues m. ``"auto"`` is ``[max(2C, ⌈0.05 m⌉), ⌊0.5 m⌋]``: past the
        per-output outliers at the top, before the finite-sample cliff at the
        end (see :mod:`sktt.gram._power_law`).
    anchor_width : int, default=21
        The tail's anchor :math:`\hat p_{k_0}` is ρ times the mean of the subset
        projections :math:`p'_{k_0}, \dots, p'_{k_0 + \text{width} - 1}`. 1 is the
        paper's rule :math:`\hat p_{k_0} = p'_{k_0}`; single projections scatter
        over an order of magnitude between neighbouring k, and the window made
        the predicted curve more robust (see Notes). Taking the window at and
        after k0 guarantees a solution: the tail's target
        :math:`\rho\sum_{k \ge k_0} p'_k` is at least width × the anchor.
    projection_scale : {"residual", "samples"}, default="residual"
        Factor from the subset projections to N samples: ``"residual"`` is
        :math:`\rho = \lVert\delta y\rVert^2 / \lVert\delta y_{sub}\rVert^2`,
        ``"samples"`` is N/N0 (see Notes for why the first is the default).
    kernel : {"jacobian", "precomputed"}, default="jacobian"
        What ``X`` holds in :meth:`fit`: Jacobian rows (N0·C, D0), e.g. randomly
        projected, or the kernel Θ0 itself (N0·C, N0·C).
    max_rank : int or None, default=None
        Rank of the full-N kernel: predicted eigenvalues past it are 0 (their
        residual never decays). None means min(N·C, D0) for Jacobian rows —
        J Jᵀ has rank ≤ D0 — and N·C for a precomputed kernel.
    n_outputs : int or None, default=None
        C. None takes it from ``y`` (its second axis; 1 for a 1-D ``y``).
    lr : float, default=1e-3
        Learning rate η of ``torch.optim.SGD`` for the predicted curve.
    momentum : float, default=0.0
        Momentum m in [0, 1); the flow uses η̃ = η / (1 − m).
    n_steps : int, default=150
        The curve covers steps 0..n_steps; T_ε is measured against step n_steps.

    Attributes
    ----------
    eigenvalues_ : ndarray of shape (N0·C,)
        Eigenvalues λ'_k of the subset kernel Θ0, descending.
    projections_ : ndarray of shape (N0·C,) or None
        Subset residual projections :math:`p'_k = (v'^\top_k \delta y_{sub})^2`
        (None when fitted without ``y``).
    fit_range_ : tuple of int
        ``(k_lo, k_hi)``, the 1-based fitted range.
    power_law_coef_, power_law_exponent_ : float
        c and s of :math:`\lambda'_k \approx c\,k^{-s}` on the subset.
    predicted_exponent_ : float
        :math:`s_N = s - \alpha (N_0/N - 1)`.
    eigenvalue_scale_ : float
        N / N0.
    projection_scale_ : float or None
        ρ (or N/N0 with ``projection_scale="samples"``).
    residual_sq_norm_ : float or None
        :math:`\lVert\delta y\rVert^2` on the full data (given or estimated).
    subset_residual_sq_norm_ : float or None
        :math:`\lVert\delta y_{sub}\rVert^2`.
    projection_tail_coef_, projection_tail_exponent_ : float or None
        a and b of the tail :math:`\hat p_k = a k^{-b}` (None when not
        extrapolating).
    predicted_eigenvalues_ : ndarray of shape (N·C,)
    predicted_projections_ : ndarray of shape (N·C,) or None
    rank_ : int
        Number of predicted eigenvalues allowed to be non-zero.
    n_subset_samples_ : int
        N0.
    n_samples_ : int
        N.
    n_outputs_ : int
        C.
    n_features_in_ : int
        Columns of ``X`` (D0, or N0·C for a precomputed kernel).

    See Also
    --------
    sktt.TrainingTimePredictor.extrapolate : the same, from a predictor fitted on a subset.
    sktt.gradients.residual_sq_norm : :math:`\lVert\delta y\rVert^2` by forward passes.
    sktt.plotting.SpectrumDisplay : subset, predicted and full spectra in log–log.

    Notes
    -----
    **Units.** Θ = J Jᵀ with the loss of ``nn.MSELoss()`` (mean over N·C
    entries), as everywhere in sktt. The predicted curve is the gradient flow
    :math:`L_t = \frac{1}{NC}\sum_k \hat p_k e^{-2\kappa\hat\lambda_k t}`,
    :math:`\kappa = 2\tilde\eta/(NC)` (:func:`sktt.dynamics.mse_spectral_loss`,
    the formula of :func:`sktt.dynamics.mse_closed_form`), t in optimiser
    steps. Minibatches do not enter: for SGD this is the deterministic part.

    **Scaling from N0 to N.** Θ's non-zero eigenvalues are those of
    :math:`J^\top J = \sum_i J_i^\top J_i`, a sum over samples: N times an
    empirical second moment that converges. So for fixed k,
    :math:`\lambda_k(N) \approx (N/N_0)\,\lambda'_k`. A projection
    :math:`v_k^\top\delta y = u_k^\top J^\top \delta y / \sqrt{\lambda_k}` has
    :math:`J^\top\delta y \propto N` and :math:`\sqrt{\lambda_k} \propto \sqrt N`,
    so :math:`p_k(N) \approx (N/N_0)\,p'_k`. The flow rate
    :math:`\kappa\lambda_k = 2\tilde\eta\,(\lambda_k/N)/C` is then independent
    of N for the top modes, as it must be. Measured on the demo convnet (MSE,
    one-hot targets, C = 5; exact Θ; random subsets of the N samples of
    ``make_augmented_digits(N, random_state=0)``; ``benchmarks/bench_spectrum.py``):

    =====  =====  ======  ======  ======  =======  =======  =======  ======  =======
    N      N0     λ_1/N   λ_10/N  λ_50/N  λ_100/N  λ_200/N  λ_400/N  top 10  top 100
    =====  =====  ======  ======  ======  =======  =======  =======  ======  =======
    1000   100    1238    47.3    2.99    0.499    0.0862   0.0071   0.946   0.9971
    1000   250    1229    42.9    2.71    0.478    0.0977   0.0169   0.948   0.9963
    1000   1000   1233    44.3    2.89    0.508    0.1017   0.0217   0.942   0.9962
    2000   200    1194    56.4    3.43    0.705    0.1435   0.0238   0.934   0.9961
    2000   500    1170    53.9    3.33    0.692    0.1460   0.0295   0.936   0.9951
    2000   2000   1181    52.8    3.33    0.689    0.1433   0.0315   0.939   0.9951
    =====  =====  ======  ======  ======  =======  =======  =======  ======  =======

    (λ_k/N uses the subset's own N0 for the subset rows; "top 10 / 100" is the
    fraction of ‖δy‖² in the top 10 / 100 modes.) λ_k/N agrees within a few
    % at the top and ~10 % up to k ≈ 0.2·N0·C; past that the subset's
    spectrum falls below (the finite-sample cliff, which the power-law range
    avoids). The fraction of ‖δy‖² in the top modes is stable, so the p_k
    scale like ‖δy‖², i.e. like N.

    **The paper's formula and the N/N0 factor.** The paper writes
    :math:`\hat\lambda_k = c\,k^{-s+\alpha(N_0/N-1)}` with no explicit factor;
    we read it as the shape of the spectrum of the normalised kernel Θ/N
    (whose top converges, see the table). Here c is fitted to Θ0 = J Jᵀ of N0
    samples, so the prediction is
    :math:`\hat\lambda_k = (N/N_0)\,c\,k_{lo}^{-s}(k/k_{lo})^{-s_N}` for
    :math:`k \ge k_{lo}` (the exponent pivots at the first fitted index, so the
    prediction is continuous with the head; with ``fit_range=(1, ·)`` it is
    exactly the paper's form) and :math:`(N/N_0)\lambda'_k` for the measured head
    :math:`k < k_{lo}`, which the power law does not describe (the top C
    eigenvalues are ~25× the 10th on the demo convnet). Pivoting at k = 1 with
    a measured head gave a step of :math:`k_{lo}^{-\alpha(1-N_0/N)}` (−35 % at
    k_lo = 25) and 2–4× larger curve errors.

    **Projections.** :math:`\hat p_k = \rho\,p'_k` for k < k0 and a tail
    :math:`a k^{-b}` for k ≥ k0 with :math:`\hat p_{k_0}` = the anchor and
    :math:`\sum_k \hat p_k = \lVert\delta y\rVert^2`
    (:func:`sktt.gram.fit_projection_tail`). ρ = ‖δy‖²/‖δy_sub‖² equals N/N0 in
    expectation for a uniform random subset, and keeps the subset's fraction of
    residual in the head (stable, see the table). The literal N/N0 makes the
    tail absorb the subset's sampling error in ‖δy_sub‖², typically several
    times the tail's own mass (the modes past 100 hold 0.4–0.5 % of ‖δy‖²
    here): on the demo task it was infeasible (head > ‖δy‖²) for 7 of 16
    random subsets and, where feasible, put the curve 7–22× off on average
    (``projection_scale="samples"`` keeps it for comparison). The anchor
    :math:`\hat p_{k_0}` is ρ times the mean of 21 subset projections from
    k0 on; the paper's single :math:`p'_{k_0}` made the mean curve error 4–7×
    larger at N0 = N/4.

    **Accuracy** (``benchmarks/bench_spectrum.py``, exact kernels, 4 random
    subsets each, gradient flow with η̃ = 0.01 over 1000 steps, T_ε for
    ε = L0·{10, 3, 1, 0.3, 0.1} %): the top-10 eigenvalues are predicted within
    1–2 % (median), k = 11–100 within 2–15 %; the loss curve's largest relative
    error averaged 16 % / 11 % (N = 1000, N0 = N/10 / N/4) and 13 % / 8 %
    (N = 2000); T_ε was within 5–13 % (median) and at worst 32 % off (N/10)
    and 25 % (N/4). Details in the user guide (docs/spectrum.rst).

    **Cross-entropy** is not supported: the extrapolation rests on the squared
    error's closed form, in which the modes decay independently; the paper
    covers MSE only. Fit :class:`~sktt.TrainingTimePredictor` on all N samples
    with a projection instead.

    References
    ----------
    .. [1] L. Zancato, A. Achille, A. Ravichandran, R. Bhotika, S. Soatto,
       "Predicting Training Time Without Training", NeurIPS 2020, Appendix D.

    Examples
    --------
    >>> import numpy as np
    >>> from sktt import GramSpectrum
    >>> rng = np.random.default_rng(0)
    >>> J_sub = rng.standard_normal((200, 400)) * np.arange(1, 401) ** -1.0
    >>> residual_sub = rng.standard_normal(200)
    >>> spec = GramSpectrum(n_samples=1000, k0=20, lr=0.1, n_steps=50)
    >>> spec = spec.fit(J_sub, residual_sub, residual_sq_norm=5 * residual_sub @ residual_sub)
    >>> spec.predicted_eigenvalues_.shape
    (1000,)
    >>> bool(np.isclose(spec.predicted_projections_.sum(), spec.residual_sq_norm_))
    True
    """

    def __init__(self, n_samples=None, *, alpha=0.15, k0=100, fit_range="auto", anchor_width=21,
                 projection_scale="residual", kernel="jacobian", max_rank=None, n_outputs=None,
                 lr=1e-3, momentum=0.0, n_steps=150):
        self.n_samples = n_samples
        self.alpha = alpha
        self.k0 = k0
        self.fit_range = fit_range
        self.anchor_width = anchor_width
        self.projection_scale = projection_scale
        self.kernel = kernel
        self.max_rank = max_rank
        self.n_outputs = n_outputs
        self.lr = lr
        self.momentum = momentum
        self.n_steps = n_steps

    # ------------------------------------------------------------------ validation
    def _check_params(self):
        check_choice("kernel", self.kernel, KERNELS)
        check_choice("projection_scale", self.projection_scale, PROJECTION_SCALES)
        check_fraction("alpha", self.alpha, low=0.0, high=1.0, high_inclusive=True)
        check_int("k0", self.k0, low=1)
        check_int("anchor_width", self.anchor_width, low=1)
        if self.n_samples is not None:
            check_int("n_samples", self.n_samples, low=1)
        if self.max_rank is not None:
            check_int("max_rank", self.max_rank, low=1)
        if self.n_outputs is not None:
            check_int("n_outputs", self.n_outputs, low=1)
        if not (isinstance(self.fit_range, str) or isinstance(self.fit_range, (tuple, list))):
            raise ValueError(f"fit_range={self.fit_range!r} is invalid; accepted: 'auto' or a "
                             "(start, stop) tuple of 1-based indices or fractions.")
        self._recipe({})  # lr / momentum / n_steps: read at predict time, refused at fit

    def _recipe(self, overrides):
        """The gradient-flow recipe of one call (lr, momentum, n_steps), validated."""
        unknown = set(overrides) - set(DYNAMICS_PARAMS)
        if unknown:
            raise TypeError(f"unexpected keyword(s) {sorted(unknown)}; GramSpectrum's predict "
                            f"methods accept the dynamics parameters {list(DYNAMICS_PARAMS)}.")
        return TrainingRecipe.from_params(
            {name: overrides.get(name, getattr(self, name)) for name in DYNAMICS_PARAMS},
        ).replace(solver="ode")

    def _residual_layout(self, y, n_rows):
        """Flatten the residual sample-major and return ``(residual, n_outputs)``."""
        y = check_array(y, ensure_2d=False, dtype=np.float64, input_name="y",
                        ensure_all_finite=False)
        if not np.all(np.isfinite(y)):
            raise ValueError("y contains NaN or inf; accepted: a finite subset residual "
                             "f0(X_sub) - Y_sub.")
        if y.ndim > 2:
            raise ValueError(f"y has shape {y.shape}; accepted: the subset residual of shape "
                             "(N0, C) or (N0·C,), sample-major.")
        c = self.n_outputs if self.n_outputs is not None else (y.shape[1] if y.ndim == 2 else 1)
        if y.ndim == 2 and y.shape[1] != c:
            raise ValueError(f"y has {y.shape[1]} columns but n_outputs={c}.")
        if y.size != n_rows:
            raise ValueError(f"y has {y.size} entries but X has {n_rows} rows; accepted: one "
                             "residual entry per Jacobian row (N0·C, sample-major).")
        if n_rows % c:
            raise ValueError(f"X has {n_rows} rows, not a multiple of n_outputs={c}; accepted: "
                             "N0·C rows, sample-major (row i·C + c).")
        return y.ravel(), c

    # ------------------------------------------------------------------ fit
    def fit(self, X, y=None, *, residual_sq_norm=None):
        r"""Measure the subset spectrum and extrapolate it to ``n_samples``.

        Parameters
        ----------
        X : array-like of shape (N0·C, D0) or (N0·C, N0·C)
            Jacobian rows of the subset (row ``i·C + c`` = output c of sample
            i), or with ``kernel="precomputed"`` the kernel Θ0 = J Jᵀ, or the
            :class:`~sktt.estimators.JacobianRows` of :class:`~sktt.JacobianFeatures`
            (a pipeline step before this one).
        y : array-like of shape (N0, C) or (N0·C,), default=None
            The subset residual :math:`f_0(X_{sub}) - Y_{sub}` (the sign does not
            matter). None fits the eigenvalues only (no projections, no curve).
            With JacobianRows as X, y is the targets :math:`Y_{sub}` of shape
            (N0, C) (None: those the rows carry) and the residual is
            :math:`f_0 - Y_{sub}`.
        residual_sq_norm : float, default=None
            :math:`\lVert\delta y\rVert^2 = \sum (f_0(X) - Y)^2` over the *full*
            data (see :func:`sktt.gradients.residual_sq_norm`): N·C times the
            initial MSE loss. None estimates it as (N/N0)·‖δy_sub‖², which
            carries the subset's sampling error (19 % low for one N0 = 100
            subset of the N = 1000 demo task).

        Returns
        -------
        self : GramSpectrum
        """
        if isinstance(X, JacobianRows):  # JacobianFeatures output: y holds the targets
            X, y = X.spectrum_inputs(y, kernel=self.kernel)
        self._check_params()
        X = validate_data(self, X, dtype=np.float64, ensure_min_samples=2,
                          ensure_all_finite=False)
        if not np.all(np.isfinite(X)):  # sklearn's message talks of missing values
            what = "a finite kernel Θ0" if self.kernel == "precomputed" else "finite Jacobian rows"
            raise ValueError(f"X contains NaN or inf; accepted: {what} (NaN/inf gradients mean "
                             "the model is not finite at w0).")
        if self.kernel == "precomputed":
            if X.shape[0] != X.shape[1]:
                raise ValueError(f"kernel='precomputed' needs a square Θ0; got X of shape "
                                 f"{X.shape}.")
            ntk = check_ntk(X, name="X")
        else:
            if X.shape[1] < 2:
                raise ValueError("GramSpectrum needs Jacobian rows with at least 2 columns: with "
                                 "n_features = 1 the kernel has rank 1, one eigenvalue and no "
                                 "power law to fit.")
            ntk = X @ X.T
        n_rows = X.shape[0]
        if y is None:
            residual, c = None, (self.n_outputs or 1)
            if n_rows % c:
                raise ValueError(f"X has {n_rows} rows, not a multiple of n_outputs={c}; "
                                 "accepted: N0·C rows, sample-major (row i·C + c).")
        else:
            residual, c = self._residual_layout(y, n_rows)
        eigenvalues, eigenvectors = ntk_eigh(ntk)
        projections = None if residual is None else (eigenvectors.T @ residual) ** 2
        n_cols = X.shape[1] if self.kernel == "jacobian" else None
        return self._fit_spectrum(eigenvalues, projections, n_outputs=c, rank_bound=n_cols,
                                  residual_sq_norm=residual_sq_norm)

    def _fit_spectrum(self, eigenvalues, projections, *, n_outputs, rank_bound,
                      residual_sq_norm):
        """Everything after the eigendecomposition (shared with the predictor's path)."""
        self._check_params()
        eigenvalues = np.asarray(eigenvalues, dtype=np.float64)
        m0 = eigenvalues.size
        n0 = m0 // n_outputs
        n = n0 if self.n_samples is None else int(self.n_samples)
        if n < n0:
            raise ValueError(f"n_samples={n} is smaller than the subset's N0={n0} samples; "
                             "accepted: n_samples >= N0 (the full data contains the subset).")
        n_components = n * n_outputs
        rank = n_components if rank_bound is None else min(n_components, int(rank_bound))
        if self.max_rank is not None:
            rank = min(rank, int(self.max_rank))

        k_lo, k_hi = select_fit_range(eigenvalues, fit_range=self.fit_range, n_outputs=n_outputs)
        coef, exponent = fit_power_law(eigenvalues, k_lo, k_hi)
        new_exponent = extrapolated_exponent(exponent, self.alpha, n0, n)
        scale = n / n0

        self.eigenvalues_ = eigenvalues
        self.projections_ = None if projections is None else np.asarray(projections, np.float64)
        self.fit_range_ = (k_lo, k_hi)
        self.power_law_coef_ = coef
        self.power_law_exponent_ = exponent
        self.predicted_exponent_ = new_exponent
        self.eigenvalue_scale_ = scale
        self.n_subset_samples_ = n0
        self.n_samples_ = n
        self.n_outputs_ = n_outputs
        self.rank_ = rank
        self.positive_eigenvalues_ = count_positive(eigenvalues)

        extrapolating = n > n0
        if extrapolating:
            self.predicted_eigenvalues_ = extrapolate_eigenvalues(
                eigenvalues, coef=coef, exponent=exponent, new_exponent=new_exponent, k_lo=k_lo,
                scale=scale, n_components=n_components, rank=rank)
        else:  # nothing to extrapolate: the measurement is the prediction
            self.predicted_eigenvalues_ = eigenvalues.copy()
            if rank < n_components:
                self.predicted_eigenvalues_[rank:] = 0.0

        self.projection_tail_coef_ = self.projection_tail_exponent_ = None
        if self.projections_ is None:
            if residual_sq_norm is not None:
                raise ValueError("residual_sq_norm was given without y; pass the subset "
                                 "residual as y to predict projections and curves.")
            self.residual_sq_norm_ = self.subset_residual_sq_norm_ = None
            self.projection_scale_ = self.predicted_projections_ = None
            return self
        self._fit_projections(self.projections_, scale, extrapolating, residual_sq_norm)
        return self

    def _fit_projections(self, proj, scale, extrapolating, residual_sq_norm):
        m0 = proj.size
        sub_norm = float(proj.sum())  # = ‖δy_sub‖² (V is orthogonal)
        if not sub_norm > 0:
            raise ValueError("the subset residual y is zero: nothing to train, no curve to "
                             "predict.")
        if residual_sq_norm is None:
            total = scale * sub_norm
        else:
            total = check_positive_finite("residual_sq_norm", residual_sq_norm)
            if total < sub_norm * (1.0 - 1e-9):
                raise ValueError(
                    f"residual_sq_norm={total:.6g} is smaller than the subset's own "
                    f"‖δy_sub‖² = {sub_norm:.6g}; it must be the *sum* of squared residuals over "
                    "the full data (N·C times the initial MSE loss, not the mean).")
        rho = total / sub_norm if self.projection_scale == "residual" else scale
        self.subset_residual_sq_norm_ = sub_norm
        self.residual_sq_norm_ = total
        self.projection_scale_ = rho
        n_components = self.predicted_eigenvalues_.size
        if not extrapolating:
            predicted = total / sub_norm * proj  # Σ = ‖δy‖² exactly; = proj when N = N0
            self.predicted_projections_ = predicted
            return
        k0 = int(self.k0)
        if k0 > m0:
            raise ValueError(f"k0={k0} exceeds the {m0} modes of the subset kernel (N0·C); "
                             f"accepted: k0 <= {m0}. Lower k0 or fit on more samples.")
        if k0 > K0_MAX_FRACTION * m0:
            warnings.warn(
                f"k0={k0} is past {K0_MAX_FRACTION:.0%} of the subset's {m0} modes (N0·C), where "
                "its projections are biased low (finite-sample cliff): the predicted late loss "
                "is likely under-estimated (by 24-57 % at k0 = m/3 on the demo convnet). Fit on "
                f"at least {int(np.ceil(k0 / K0_MAX_FRACTION / self.n_outputs_))} samples, or "
                "lower k0 while keeping it past the modes that hold ~99 % of ‖δy‖².",
                SpectrumWarning, stacklevel=3)
        # the tail's own first values: ρ·Σ_(k≥k0) p'_k ≥ width·anchor, so the tail is feasible
        anchor = rho * float(proj[k0 - 1:k0 - 1 + int(self.anchor_width)].mean())
        head = rho * proj[:k0 - 1]
        tail, a, b = fit_projection_tail(head, anchor, total, k0=k0, n_components=n_components)
        self.predicted_projections_ = np.concatenate([head, tail])
        self.projection_tail_coef_ = a
        self.projection_tail_exponent_ = b

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_eigh(cls, eigenvalues, projections, *, n_outputs, n_features=None,
                  rank_bound=None, residual_sq_norm=None, **params):
        """Fit from a known eigendecomposition of the subset kernel Θ0 (no Jacobians).

        Parameters
        ----------
        eigenvalues : ndarray of shape (N0·C,)
            Eigenvalues of Θ0, descending.
        projections : ndarray of shape (N0·C,) or None
            ``(v_kᵀ δy)²`` of the subset residual on each eigenvector.
        n_outputs : int
            C.
        n_features : int, optional
            Width of the data the kernel came from (``n_features_in_``); defaults
            to N0·C, as for ``kernel="precomputed"``.
        rank_bound : int, optional
            An upper bound of Θ's rank (e.g. the number of parameters).
        residual_sq_norm : float, optional
            ‖δy‖² over the full data.
        **params
            GramSpectrum parameters (``n_samples``, ``alpha``, ``k0``, ``lr``, ...).

        Returns
        -------
        spectrum : GramSpectrum
            Fitted, with ``kernel="precomputed"``.
        """
        if "kernel" in params or "n_outputs" in params:
            raise TypeError("kernel and n_outputs are set by from_eigh; do not pass them.")
        spectrum = cls(kernel="precomputed", n_outputs=n_outputs, **params)
        eigenvalues = np.asarray(eigenvalues, dtype=np.float64)
        spectrum.n_features_in_ = int(eigenvalues.size if n_features is None else n_features)
        return spectrum._fit_spectrum(eigenvalues, projections, n_outputs=n_outputs,
                                      rank_bound=rank_bound, residual_sq_norm=residual_sq_norm)

    @classmethod
    def from_model(cls, model, X, y, *, n_samples, residual_sq_norm=None, projection=None,
                   projection_dim=2048, chunk_size=None, max_memory=None, n_jobs=None,
                   random_state=None, jacobian_method="auto", **params):
        """Fit from a torch model and subset data (MSE): gradients, Θ0, spectrum, extrapolation.

        Runs :class:`~sktt.JacobianFeatures` on the subset (the Jacobian /
        projection code of every sktt estimator) and fits on its rows. For the
        linearisation's trust diagnostic on the subset, use
        ``TrainingTimePredictor(model, loss="mse").fit(X, y).extrapolate(n_samples)``,
        which runs it.

        Parameters
        ----------
        model : torch.nn.Module
            Never modified.
        X, y : subset inputs and targets of shape (N0, C), as for
            :meth:`TrainingTimePredictor.fit <sktt.TrainingTimePredictor.fit>`.
        n_samples : int
            N, the full data size.
        residual_sq_norm : float, optional
            ‖Y − f0(X)‖² over the full data (:func:`sktt.gradients.residual_sq_norm`).
        projection, projection_dim, chunk_size, max_memory, n_jobs, random_state, jacobian_method
            Gradient-extraction parameters of :class:`~sktt.JacobianFeatures`.
        **params
            GramSpectrum parameters (``alpha``, ``k0``, ``lr``, ...).

        Returns
        -------
        spectrum : GramSpectrum
            Fitted.
        """
        from ._features import JacobianFeatures  # imports torch

        rows = JacobianFeatures(model, projection=projection, projection_dim=projection_dim,
                                chunk_size=chunk_size, max_memory=max_memory, n_jobs=n_jobs,
                                random_state=random_state,
                                jacobian_method=jacobian_method).fit_transform(X, y)
        spectrum = cls(n_samples=n_samples, **params)
        return spectrum.fit(rows, None, residual_sq_norm=residual_sq_norm)

    # ------------------------------------------------------------------ predictions
    def extrapolated_spectrum(self):
        """Predicted eigenvalues and residual projections of the N-sample kernel.

        Returns
        -------
        eigenvalues : ndarray of shape (N·C,)
            Descending (zeros past ``rank_``).
        projections : ndarray of shape (N·C,) or None
            Summing to ``residual_sq_norm_``; None when fitted without ``y``.
        """
        check_is_fitted(self, "predicted_eigenvalues_")
        proj = self.predicted_projections_
        return self.predicted_eigenvalues_.copy(), None if proj is None else proj.copy()

    def _check_curve_ready(self):
        check_is_fitted(self, "predicted_eigenvalues_")
        if self.predicted_projections_ is None:
            raise ValueError("GramSpectrum was fitted without y (the subset residual), so it "
                             "has no projections to predict a loss curve from; fit(X, y).")

    def predict_curve(self, metric="loss", **overrides):
        """Predicted MSE train loss on N samples at steps 0..n_steps (gradient flow).

        Parameters
        ----------
        metric : {"loss"}, default="loss"
            Only the loss: the train error needs eigenvectors, which an
            extrapolated spectrum does not have.
        **overrides
            ``lr``, ``momentum``, ``n_steps`` for this call only.

        Returns
        -------
        curve : ndarray of shape (n_steps + 1,)
            In ``nn.MSELoss()`` units (mean over N·C entries).
        """
        self._check_curve_ready()
        if metric != "loss":
            check_choice("metric", metric, ("loss",))
        kernel = SpectralKernel(self.predicted_eigenvalues_, self.predicted_projections_,
                                self.n_outputs_)
        return simulate(kernel, None, self._recipe(overrides))["loss"][0]

    def predict_time(self, eps=None, *, threshold=None, smooth=None, **overrides):
        """Predicted ε-training-time on N samples, in steps (or the first step under a threshold).

        Parameters
        ----------
        eps : float or array-like of float, optional
            T_ε = min{t : abs(L_t − L_T) < ε}, ε in loss units. Exactly one of
            ``eps`` and ``threshold`` must be given.
        threshold : float or array-like of float, optional
            Absolute target τ: the first step with L_t ≤ τ.
        smooth : int or None, default=None
            Centred moving-average window applied to the curve first.
        **overrides
            ``lr``, ``momentum``, ``n_steps`` for this call only.

        Returns
        -------
        steps : int or ndarray of int

        Raises
        ------
        ThresholdNotReachedError
            If a threshold is not reached within ``n_steps``.
        """
        if (eps is None) == (threshold is None):
            raise ValueError("give exactly one of eps (distance to the final value) and "
                             "threshold (absolute level).")
        if smooth is not None:
            smooth = check_int("smooth", smooth, low=1)
        curve = smooth_curve(self.predict_curve(**overrides), smooth)
        if eps is not None:
            values = check_eps(eps)
            times = epsilon_training_time(curve, values)
        else:
            values = check_threshold(threshold)
            times = threshold_training_time(curve, values)
            if np.any(times < 0):
                raise ThresholdNotReachedError(
                    f"threshold {threshold!r} is not reached within n_steps={len(curve) - 1} "
                    f"steps (the predicted loss ends at {curve[-1]:.4g}); raise n_steps or the "
                    "threshold.")
        return int(times) if values.ndim == 0 else times.astype(np.int64)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.pairwise = self.kernel == "precomputed"
        tags.target_tags.required = False
        return tags
