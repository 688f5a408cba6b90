r"""Minibatch SGD for :class:`~sktt.TrainingTimePredictor`: paths, the SDE's noise, bands.

With ``batch_size < N`` fine-tuning is random (the batch order), so a
prediction is a distribution. Two solvers simulate it on the linearised model:

``"discrete"``
    The exact minibatch recursion of ``torch.optim.SGD``
    (:func:`sktt.dynamics.simulate`) on ``n_paths`` batch sequences.
    Path ``k`` is the order of a shuffling ``DataLoader`` whose generator is
    seeded ``dataloader_seed(k) = derive_seed(seed_, k)``
    (:func:`sktt.validation.dataloader_batches` reproduces it, reshuffling each
    epoch, ``drop_last`` optional), so a user's own loop can see the very batches
    of a path; an explicit batch sequence can be passed instead (``batches=``).
``"sde"``
    The paper's diffusion (:func:`sktt.dynamics.simulate_sde`) with ``n_paths``
    independent noise draws; its noise factor comes from :func:`noise_factor`.

Both give ``(n_paths, T + 1)`` curves; :func:`curve_band` and
:func:`time_distribution` summarise them.
"""

import numpy as np
from sklearn.utils import Bunch

from ..dynamics import (check_batches, diagonal_noise_factor, full_noise_factor,
                        per_sample_gradients)
from ..dynamics._sde import _factor_from_gram
from ..exceptions import MemoryBudgetError
from ..utils import derive_seed, format_bytes

__all__ = ["check_quantiles", "curve_band", "time_distribution", "check_user_batches", "noise_factor", "exact_diagonal_noise", "fit_sde_noise",
           "sde_seeds"]

# Seed coordinate that separates the SDE's noise streams from the batch orders.
_SDE_STREAM = 1


def sde_seeds(seed, n_paths):
    """One noise seed per SDE path, in a stream apart from the batch orders."""
    return [derive_seed(seed, k, _SDE_STREAM) for k in range(n_paths)]


def check_quantiles(quantiles):
    """Validate ``(lower, upper)`` quantile levels with ``0 <= lower < upper <= 1``."""
    try:
        q = np.asarray(quantiles, dtype=np.float64)
    except (TypeError, ValueError):
        q = None
    if q is None or q.shape != (2,) or not np.all(np.isfinite(q)) or not 0 <= q[0] < q[1] <= 1:
        raise ValueError(f"quantiles={quantiles!r} is invalid; accepted: two levels (lower, "
                         "upper) with 0 <= lower < upper <= 1, e.g. (0.05, 0.95).")
    return float(q[0]), float(q[1])


def curve_band(paths, quantiles):
    """Mean, median and pointwise quantiles of simulated curves.

    Parameters
    ----------
    paths : ndarray of shape (P, T + 1)
    quantiles : (float, float)

    Returns
    -------
    band : sklearn.utils.Bunch
        ``mean``, ``median``, ``lower``, ``upper`` (each (T + 1,)), ``quantiles``
        and ``paths`` (a copy). With one path all four curves are that path.
    """
    lo, hi = check_quantiles(quantiles)
    paths = np.array(paths, dtype=np.float64, copy=True)
    with np.errstate(invalid="ignore"):  # diverged paths hold inf
        lower, median, upper = np.quantile(paths, [lo, 0.5, hi], axis=0)
        mean = paths.mean(axis=0)
    return Bunch(mean=mean, median=median, lower=lower, upper=upper, quantiles=(lo, hi),
                 paths=paths)


def time_distribution(times, quantiles, point):
    """Median and quantiles of per-path training times.

    Parameters
    ----------
    times : ndarray of int, shape (P,) or (P, E)
        One time per path (and per ε / threshold); -1 = not reached.
    quantiles : (float, float)
    point : int or ndarray
        The point prediction (what ``predict_time`` returns without the distribution).

    Returns
    -------
    dist : sklearn.utils.Bunch
        ``point``, ``median``, ``lower``, ``upper``, ``quantiles`` and ``times``.
        Quantiles are observed per-path times (``numpy.quantile(...,
        method="inverted_cdf")``); a path that never reaches a threshold counts
        as later than all others (and makes a quantile ``inf`` if it falls there).
    """
    lo, hi = check_quantiles(quantiles)
    times = np.asarray(times)
    as_float = np.where(times < 0, np.inf, times.astype(np.float64))
    lower, median, upper = np.quantile(as_float, [lo, 0.5, hi], axis=0, method="inverted_cdf")
    return Bunch(point=point, median=median, lower=lower, upper=upper, quantiles=(lo, hi),
                 times=times.copy())


def check_user_batches(batches, n_samples, n_steps):
    """An explicit batch sequence as ``check_batches`` wants it: a list over steps of (P, b) arrays.

    Accepted: ``n_steps`` (or more) index arrays of shape ``(b_t,)`` (one path,
    e.g. ``RealTrainingResult.batches`` or
    :func:`sktt.validation.dataloader_batches`) or ``(P, b_t)``; or an object
    with a ``batches`` attribute holding such a list.
    """
    batches = getattr(batches, "batches", batches)
    if isinstance(batches, np.ndarray) and batches.ndim == 2:
        batches = list(batches)
    if not isinstance(batches, (list, tuple)):
        raise TypeError(f"batches must be a list of per-step index arrays, got "
                        f"{type(batches).__name__}; e.g. sktt.validation.dataloader_batches(N, "
                        "batch_size, n_steps, seed=...).")
    return check_batches(list(batches), n_samples, n_steps)


def noise_factor(est, kind):
    r"""The SDE's noise factor ``G`` (``G Gᵀ = J Σ₀ Jᵀ``) of a fitted predictor, cached.

    ``"full"`` is computed from Θ; ``"diagonal"`` needs Jacobian rows: the
    projected rows (``projected_jacobian_``), or, for an exact fit, the factor
    that ``fit`` computes when ``solver="sde"``.
    """
    cache = est.__dict__.setdefault("_noise_factors", {})
    if kind not in cache:
        if kind == "full":
            cache[kind] = full_noise_factor(est._kernel.dense(), est.f0_, est.targets_, est.loss)
        elif getattr(est, "projected_jacobian_", None) is not None:
            cache[kind] = diagonal_noise_factor(est.projected_jacobian_, est.f0_, est.targets_,
                                                est.loss)
        else:
            raise ValueError(
                "solver='sde' with sde_noise='diagonal' needs the diagonal of the per-sample "
                "gradient covariance, which an exact fit (projection=None) computes only when "
                "the estimator is fitted with solver='sde' (it costs another pass over the "
                "Jacobian). Refit with solver='sde', fit with a projection, or use "
                "sde_noise='full' (the full covariance, from Θ alone).")
    return cache[kind]


def exact_diagonal_noise(model, inputs, names, f0, targets, loss, *, chunk_size, n_jobs,
                         max_memory, verbose=0):
    r"""Noise factor of :math:`J\,\mathrm{diag}(s)\,J^\top` with the exact Jacobian (D parameters).

    One more pass over the per-sample Jacobians, parameter tensor group by
    group, so that no ``(N·C) × D`` matrix beyond the memory budget exists:
    for each group, :math:`s_g = \mathrm{Var}_i[J_{i,g}^\top g_i]` and
    :math:`K \mathrel{+}= (J_g\,\mathrm{diag}(s_g))\,J_g^\top`; finally the
    eigen-factor of ``K``. Same cost as an exact Θ.
    """
    import torch  # the estimators layer is torch's side

    from ..gradients import group_parameters, jacobian_rows, plan_chunk_size

    n, c = f0.shape
    n_rows = n * c
    params = dict(model.named_parameters())
    sizes = [(name, params[name].numel()) for name in names]
    budget = max_memory - 2 * n_rows * n_rows * 8  # Θ already exists; K is being built
    dtype = params[names[0]].dtype
    itemsize = torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 4
    if chunk_size is None:
        chunk_size = plan_chunk_size(n, c, sum(d for _, d in sizes), itemsize, max_memory)
    def too_big(name, n_rows, need, budget):
        return MemoryBudgetError(
            f"the diagonal SDE noise needs the exact Jacobian of {name!r} on {n_rows} rows "
            f"({format_bytes(need)}), more than the memory left. Use a projection, "
            "raise max_memory, or use sde_noise='full'.")

    groups = group_parameters(sizes, n_rows, budget, too_big=too_big)
    g = per_sample_gradients(f0, targets, loss)  # (N, C)
    gram = np.zeros((n_rows, n_rows))
    for group in groups:
        rows = jacobian_rows(model, inputs, group, chunk_size=chunk_size, n_jobs=n_jobs,
                             verbose=verbose, jacobian_method="functorch")
        s = np.einsum("nc,ncd->nd", g, rows.reshape(n, c, -1)).var(axis=0)
        gram += (rows * s) @ rows.T
        del rows
    return _factor_from_gram(gram)


def fit_sde_noise(est, model, inputs, names, f0, targets, rows, max_memory):
    """Noise factors ``fit`` must compute now: the exact diagonal Σ, only when it will be needed.

    Returns ``{"diagonal": G}`` for an exact fit with ``solver="sde"`` and
    ``sde_noise="diagonal"``; otherwise ``{}`` (factors are then computed lazily
    from Θ or the projected rows).
    """
    if est.solver != "sde" or est.sde_noise != "diagonal" or rows is not None:
        return {}
    return {"diagonal": exact_diagonal_noise(
        model, inputs, names, f0, targets, est.loss, chunk_size=est.chunk_size,
        n_jobs=est.n_jobs, max_memory=max_memory, verbose=est.verbose)}
