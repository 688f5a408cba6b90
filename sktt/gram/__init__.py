"""Kernel (Θ) checks and spectra, in float64 numpy. No torch here."""

from ._power_law import (count_positive, extrapolate_eigenvalues, extrapolated_exponent,
                         fit_power_law, fit_projection_tail, select_fit_range)
from ._kernels import DenseKernel, FactoredKernel, SpectralKernel, batch_rows, top_eigenvalue
from ._spectrum import check_ntk, ntk_eigh

__all__ = [
    "DenseKernel",
    "FactoredKernel",
    "SpectralKernel",
    "batch_rows",
    "check_ntk",
    "count_positive",
    "extrapolate_eigenvalues",
    "extrapolated_exponent",
    "fit_power_law",
    "fit_projection_tail",
    "ntk_eigh",
    "select_fit_range",
    "top_eigenvalue",
]
