"""Θ from sktt against a brute-force reference, and the projections' statistics."""

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from conftest import tiny_cnn
from sktt import TrainingTimePredictor
from sktt.exceptions import MemoryBudgetError


def _brute_force_ntk(model, X):
    """One autograd.grad call per (sample, output): the definition of J, then J Jᵀ."""
    params = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    rows = []
    for i in range(X.shape[0]):
        out = model(X[i:i + 1])[0]
        for c in range(out.shape[0]):
            grads = torch.autograd.grad(out[c], params, retain_graph=True)
            rows.append(torch.cat([g.reshape(-1) for g in grads]))
    J = torch.stack(rows).double().numpy()
    return J @ J.T


def test_exact_ntk_equals_brute_force(cnn_problem):
    model, X, y = cnn_problem
    ttp = TrainingTimePredictor(model).fit(X, y)
    assert_allclose(ttp.ntk_, _brute_force_ntk(model, X), rtol=1e-10, atol=1e-12)
    assert ttp.ntk_.shape == (30, 30)
    assert ttp.n_params_ == sum(p.numel() for p in model.parameters())


def test_exact_ntk_with_parameter_groups_under_small_budget(cnn_problem):
    """A budget too small for the whole Jacobian splits parameters into groups: same Θ."""
    model, X, y = cnn_problem
    full = TrainingTimePredictor(model).fit(X, y).ntk_
    n_rows = 30
    budget = n_rows * n_rows * 8 + n_rows * 420 * 8  # Θ + at most 420 of 462 Jacobian columns
    grouped = TrainingTimePredictor(model, max_memory=budget, chunk_size=3).fit(X, y).ntk_
    assert_allclose(grouped, full, rtol=1e-12, atol=1e-14 * np.abs(full).max())


def test_memory_errors_name_sizes_and_alternatives(cnn_problem):
    model, X, y = cnn_problem
    with pytest.raises(MemoryBudgetError, match=r"Θ for N=10 samples.*GramSpectrum"):
        TrainingTimePredictor(model, max_memory=1000).fit(X, y)
    with pytest.raises(MemoryBudgetError, match="projection="):
        TrainingTimePredictor(model, max_memory=30 * 30 * 8 + 100).fit(X, y)


def test_output_time_f0_matches_model(cnn_problem):
    model, X, y = cnn_problem
    ttp = TrainingTimePredictor(model).fit(X, y)
    with torch.no_grad():
        assert_allclose(ttp.f0_, model.eval()(X).numpy(), rtol=1e-14)


@pytest.mark.parametrize("jacobian_method", ["layerwise", "functorch"])
@pytest.mark.parametrize("projection", [None, "countsketch"])
def test_f0_from_the_extraction_matches_model(projection, jacobian_method):
    """f0 comes with the Jacobian rows (each extraction chunk's forward pass), in float32
    too: the plain eval-mode forward to round-off, the held-out outputs of a joint
    extraction as well, and JacobianFeatures' outputs bit for bit (same chunks)."""
    from sktt import JacobianFeatures

    g = torch.Generator().manual_seed(5)
    X = torch.randn(30, 1, 6, 6, generator=g)
    X_val = torch.randn(7, 1, 6, 6, generator=g)
    y, y_val = torch.randint(0, 3, (30,), generator=g), torch.randint(0, 3, (7,), generator=g)
    model = tiny_cnn(dtype=torch.float32).train()
    kw = dict(projection=projection, projection_dim=64, jacobian_method=jacobian_method,
              random_state=0)
    ttp = TrainingTimePredictor(model, trust_check=False, **kw).fit(X, y)
    held = TrainingTimePredictor(model, trust_check=False, **kw).fit(
        X, y, eval_set=(X_val, y_val))
    rows = JacobianFeatures(model, **kw).fit_transform(X, y)
    assert model.training  # the mode is the user's
    with torch.no_grad():
        plain, plain_val = model.eval()(X).double().numpy(), model(X_val).double().numpy()
    for f0, ref in ((ttp.f0_, plain), (held.f0_, plain), (held.eval_f0_, plain_val),
                    (rows.f0, plain)):
        assert f0.dtype == np.float64 and f0.shape == ref.shape
        assert_allclose(f0, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())
    np.testing.assert_array_equal(rows.f0, ttp.f0_)


@pytest.mark.parametrize("projection", ["achlioptas", "gaussian", "countsketch"])
def test_projected_ntk_is_unbiased_and_error_falls_like_inverse_sqrt_dim(cnn_problem, projection):
    model, X, y = cnn_problem
    exact = TrainingTimePredictor(model).fit(X, y).ntk_
    norm = np.linalg.norm(exact)

    def fit(dim, seed):
        return TrainingTimePredictor(model, projection=projection, projection_dim=dim,
                                     random_state=seed).fit(X, y).ntk_

    # Unbiased: the mean over seeds approaches Θ much closer than one draw.
    draws = [fit(64, s) for s in range(40)]
    single = np.mean([np.linalg.norm(d - exact) / norm for d in draws])
    mean_err = np.linalg.norm(np.mean(draws, axis=0) - exact) / norm
    assert mean_err < single / 3  # ~ single/sqrt(40) for an unbiased estimator

    # Frobenius error ~ 1/sqrt(D0): 16x more dimensions, ~4x less error.
    err = {d: np.mean([np.linalg.norm(fit(d, s) - exact) / norm for s in range(8)])
           for d in (32, 512)}
    ratio = err[32] / err[512]
    assert 2.5 < ratio < 6.5, ratio


@pytest.mark.parametrize("projection", [None, "countsketch", "gaussian"])
def test_same_random_state_same_ntk_for_any_n_jobs_and_chunking(cnn_problem, projection):
    model, X, y = cnn_problem
    kw = dict(projection=projection, projection_dim=128, random_state=3)
    ref = TrainingTimePredictor(model, n_jobs=1, chunk_size=10, **kw).fit(X, y).ntk_
    for n_jobs, chunk in [(1, 3), (2, 4), (2, 1)]:
        other = TrainingTimePredictor(model, n_jobs=n_jobs, chunk_size=chunk, **kw).fit(X, y).ntk_
        assert_allclose(other, ref, rtol=1e-12, atol=1e-14)


def test_different_random_state_gives_different_projection(cnn_problem):
    model, X, y = cnn_problem
    a = TrainingTimePredictor(model, projection="countsketch", projection_dim=64,
                              random_state=0).fit(X, y).ntk_
    b = TrainingTimePredictor(model, projection="countsketch", projection_dim=64,
                              random_state=1).fit(X, y).ntk_
    assert not np.allclose(a, b)


def test_float32_model_gives_float64_kernel_close_to_float64_model(cnn_problem):
    model, X, y = cnn_problem
    exact64 = TrainingTimePredictor(model).fit(X, y).ntk_
    model32 = tiny_cnn(dtype=torch.float32)
    ntk32 = TrainingTimePredictor(model32).fit(X.float(), y).ntk_
    assert ntk32.dtype == np.float64
    assert_allclose(ntk32, exact64, rtol=1e-4, atol=1e-5 * np.abs(exact64).max())
