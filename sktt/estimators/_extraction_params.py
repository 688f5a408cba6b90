"""Checks of the gradient-extraction parameters and of the model's outputs, shared by
the estimators that compute Jacobians (:class:`TrainingTimePredictor`,
:class:`JacobianFeatures`)."""

import os

import numpy as np

from ..gradients import JACOBIAN_METHODS
from ..gradients._auto_projection import PROJECTION_CHOICES
from ..utils import check_choice, check_int, check_n_jobs, parse_memory

__all__ = ["check_extraction_params", "check_finite_outputs", "check_temp_folder",
           "extraction_kwargs"]


def check_extraction_params(est):
    """Validate ``projection``, ``projection_dim``, ``chunk_size``, ``verbose``,
    ``jacobian_method`` and ``n_jobs`` of ``est``; return ``max_memory`` in bytes."""
    if est.projection is not None:
        check_choice("projection", est.projection, PROJECTION_CHOICES)
    check_int("projection_dim", est.projection_dim, low=1)
    if est.chunk_size is not None:
        check_int("chunk_size", est.chunk_size, low=1)
    check_int("verbose", est.verbose, low=0)
    check_choice("jacobian_method", est.jacobian_method, JACOBIAN_METHODS)
    check_n_jobs(est.n_jobs)
    return parse_memory("max_memory", est.max_memory)


def extraction_kwargs(est, *, n_outputs, projection, seed, max_memory):
    """The keyword arguments of :func:`~sktt.gradients.ntk_from_model` that a predictor's
    parameters set, for every extraction of its model (fit, held-out rows, re-linearisation):
    one place, so they take the same projection, chunks, budget and memmap folder."""
    return dict(n_outputs=n_outputs, projection=projection, projection_dim=est.projection_dim,
                seed=seed, chunk_size=est.chunk_size, n_jobs=est.n_jobs, max_memory=max_memory,
                verbose=est.verbose, rows_dir=getattr(est, "temp_folder", None),
                jacobian_method=getattr(est, "jacobian_method", "auto"))


def check_temp_folder(folder):
    """Validate ``temp_folder``: None or an existing directory this process can write in."""
    if folder is None:
        return None
    if not isinstance(folder, (str, os.PathLike)):
        raise TypeError(f"temp_folder={folder!r} is invalid; accepted: None (tempfile."
                        "gettempdir()) or the path of an existing directory.")
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"temp_folder={os.fspath(folder)!r} is not an existing directory this "
                         "process can write in; accepted: None (tempfile.gettempdir()) or the "
                         "path of one.")
    return folder


def check_finite_outputs(f0):
    """``f0``, the model's outputs at the initial weights, after checking they are finite."""
    if not np.all(np.isfinite(f0)):
        raise ValueError("the model's outputs at the initial weights contain NaN or inf; "
                         "a prediction needs finite outputs.")
    return f0
