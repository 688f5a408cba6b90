"""Subset, predicted and full NTK spectra in log–log, with the fitted power law."""

import numpy as np

from ._axes import get_axes

__all__ = ["SpectrumDisplay"]


class SpectrumDisplay:
    r"""Eigenvalues of the subset kernel, their extrapolation to N samples, and the full kernel.

    By default eigenvalues are divided by their number of samples (λ'_k/N0,
    λ̂_k/N, λ_k/N): the spectrum of Θ/N converges, so on these axes a good
    extrapolation lies on top of the subset's head and follows the full
    spectrum beyond the subset's N0·C modes.

    Create it with :meth:`from_estimator` (a fitted :class:`~sktt.GramSpectrum`, or a
    fitted :class:`~sktt.TrainingTimePredictor`: its kernel's spectrum alone); the
    constructor only stores data (scikit-learn's Display convention).

    Parameters
    ----------
    subset_eigenvalues : ndarray of shape (N0·C,) or None
    predicted_eigenvalues : ndarray of shape (N·C,) or None
        None when only a full kernel is plotted.
    n_subset_samples, n_samples : int
        N0 and N.
    full_eigenvalues : ndarray of shape (N·C,) or None, default=None
        The exact full-N spectrum, when known (validation).
    power_law : tuple (c, s, k_lo, k_hi) or None, default=None
        The fit :math:`\lambda'_k \approx c k^{-s}` on the subset and its range.

    Attributes
    ----------
    lines_ : dict of str to matplotlib Line2D
        ``"subset"``, ``"predicted"``, ``"power_law"`` and ``"full"`` (when drawn).
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np
    >>> from sktt import GramSpectrum
    >>> from sktt.plotting import SpectrumDisplay
    >>> rng = np.random.default_rng(0)
    >>> J = rng.standard_normal((100, 300)) * np.arange(1, 301) ** -1.0
    >>> spec = GramSpectrum(n_samples=400, k0=10).fit(J, rng.standard_normal(100))
    >>> disp = SpectrumDisplay.from_estimator(spec)
    >>> sorted(disp.lines_)
    ['power_law', 'predicted', 'subset']
    """

    def __init__(self, *, subset_eigenvalues, predicted_eigenvalues, n_subset_samples, n_samples,
                 full_eigenvalues=None, power_law=None):
        self.subset_eigenvalues = subset_eigenvalues
        self.predicted_eigenvalues = predicted_eigenvalues
        self.n_subset_samples = n_subset_samples
        self.n_samples = n_samples
        self.full_eigenvalues = full_eigenvalues
        self.power_law = power_law

    @staticmethod
    def _positive(values, divisor):
        values = np.asarray(values, dtype=np.float64) / divisor
        k = np.arange(1, values.size + 1)
        # log axes: leave out the null space (zeros and round-off below 1e-10·λ_max)
        keep = values > 1e-10 * values.max(initial=0.0)
        return k[keep], values[keep]

    def plot(self, ax=None, *, per_sample=True):
        """Draw the spectra.

        Parameters
        ----------
        ax : matplotlib Axes, optional
            Axes to draw on; a new figure when None.
        per_sample : bool, default=True
            Divide eigenvalues by their number of samples (N0 for the subset, N
            for the predicted and full spectra).

        Returns
        -------
        self : SpectrumDisplay
        """
        ax = get_axes(ax, "SpectrumDisplay")
        n0 = self.n_subset_samples if per_sample else 1
        n = self.n_samples if per_sample else 1
        self.lines_ = {}
        if self.full_eigenvalues is not None:
            k, lam = self._positive(self.full_eigenvalues, n)
            (self.lines_["full"],) = ax.plot(k, lam, color="k", lw=2.5, alpha=0.35,
                                             label=f"full kernel (N={self.n_samples})")
        if self.subset_eigenvalues is not None:
            k, lam = self._positive(self.subset_eigenvalues, n0)
            (self.lines_["subset"],) = ax.plot(k, lam, color="C0", lw=1.5,
                                               label=f"subset (N0={self.n_subset_samples})")
        if self.predicted_eigenvalues is not None:
            k, lam = self._positive(self.predicted_eigenvalues, n)
            (self.lines_["predicted"],) = ax.plot(k, lam, color="C1", lw=1.5, ls="--",
                                                  label=f"predicted (N={self.n_samples})")
        if self.power_law is not None:
            c, s, k_lo, k_hi = self.power_law
            kk = np.geomspace(k_lo, k_hi, 50)
            (self.lines_["power_law"],) = ax.plot(
                kk, c * kk ** -s / n0, color="C3", lw=1, ls=":",
                label=f"power-law fit $c\\,k^{{-{s:.2f}}}$ (k={k_lo}..{k_hi})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("k")
        ax.set_ylabel("eigenvalue / number of samples" if per_sample else "eigenvalue")
        ax.legend()
        self.ax_, self.figure_ = ax, ax.figure
        return self

    @classmethod
    def from_estimator(cls, gram_spectrum, *, ax=None, full_eigenvalues=None, per_sample=True):
        """Plot a fitted :class:`~sktt.GramSpectrum` or :class:`~sktt.TrainingTimePredictor`.

        Parameters
        ----------
        gram_spectrum : GramSpectrum or TrainingTimePredictor
            Fitted. A GramSpectrum shows the subset spectrum, its extrapolation and
            the power law; a TrainingTimePredictor the spectrum of its kernel Θ
            (the ``"full"`` line).
        ax : matplotlib Axes, optional
        full_eigenvalues : ndarray of shape (N·C,), optional
            Exact eigenvalues of the full-N kernel (e.g. ``eigenvalues_`` of a
            :class:`~sktt.TrainingTimePredictor` fitted on all N samples), to
            judge the extrapolation.
        per_sample : bool, default=True
            See :meth:`plot`.

        Returns
        -------
        display : SpectrumDisplay

        Raises
        ------
        NotFittedError
            If the estimator is not fitted.
        TypeError
            For any other object.
        """
        from sklearn.exceptions import NotFittedError

        from ..estimators import GramSpectrum, TrainingTimePredictor

        if isinstance(gram_spectrum, TrainingTimePredictor):
            if getattr(gram_spectrum, "eigenvalues_", None) is None:
                raise NotFittedError(
                    "SpectrumDisplay.from_estimator needs a fitted TrainingTimePredictor (its "
                    "kernel's eigenvalues) or a fitted GramSpectrum; call fit(X, y) first.")
            if full_eigenvalues is not None:
                raise ValueError("full_eigenvalues is for judging a GramSpectrum's "
                                 "extrapolation; a TrainingTimePredictor already is the full "
                                 "kernel.")
            n = int(gram_spectrum.n_samples_)
            disp = cls(subset_eigenvalues=None, predicted_eigenvalues=None, n_subset_samples=n,
                       n_samples=n, full_eigenvalues=gram_spectrum.eigenvalues_)
            return disp.plot(ax=ax, per_sample=per_sample)
        if not isinstance(gram_spectrum, GramSpectrum):
            raise TypeError("SpectrumDisplay.from_estimator takes a fitted GramSpectrum or "
                            "TrainingTimePredictor; got "
                            f"{type(gram_spectrum).__name__}.")
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(gram_spectrum, "predicted_eigenvalues_")
        k_lo, k_hi = gram_spectrum.fit_range_
        disp = cls(subset_eigenvalues=gram_spectrum.eigenvalues_,
                   predicted_eigenvalues=gram_spectrum.predicted_eigenvalues_,
                   n_subset_samples=gram_spectrum.n_subset_samples_,
                   n_samples=gram_spectrum.n_samples_, full_eigenvalues=full_eigenvalues,
                   power_law=(gram_spectrum.power_law_coef_, gram_spectrum.power_law_exponent_,
                              k_lo, k_hi))
        return disp.plot(ax=ax, per_sample=per_sample)
