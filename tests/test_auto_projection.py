"""projection="auto": the deterministic rule, and what the estimators report and use."""

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from sktt import JacobianFeatures, TrainingTimePredictor
from sktt.gradients import resolve_projection
from sktt.gradients._auto_projection import EXACT_GRAM_FLOPS


@pytest.mark.parametrize("kw, expected", [
    (dict(n_rows=750, n_params=38_000), None),                       # demo convnet, N = 150
    (dict(n_rows=4480, n_params=38_000), "tensorsketch"),            # demo convnet, N = 896
    (dict(n_rows=1000, n_params=11_200_000), "tensorsketch"),        # ResNet-18, N = 200
    (dict(n_rows=1000, n_params=11_200_000, jacobian_method="functorch"), "countsketch"),
    (dict(n_rows=10 ** 6, n_params=2000), None),                     # D <= D0: never project
])
def test_rule(kw, expected):
    assert resolve_projection("auto", projection_dim=2048, **kw) == expected


def test_threshold_edge_and_explicit_choices():
    d = 4096
    n_rows = int(np.sqrt(EXACT_GRAM_FLOPS / d))
    assert resolve_projection("auto", n_rows=n_rows, n_params=d, projection_dim=2048) is None
    assert resolve_projection("auto", n_rows=n_rows + 1, n_params=d,
                              projection_dim=2048) == "tensorsketch"
    for p in (None, "gaussian", "countsketch"):  # explicit values are kept
        assert resolve_projection(p, n_rows=10 ** 6, n_params=10 ** 9, projection_dim=8) == p


def test_small_model_auto_is_the_exact_kernel(cnn_problem):
    model, X, y = cnn_problem
    auto = TrainingTimePredictor(model, projection="auto", lr=0.1, n_steps=5).fit(X, y)
    exact = TrainingTimePredictor(model, lr=0.1, n_steps=5).fit(X, y)
    assert auto.projection_ is None and exact.projection_ is None
    assert auto.projected_jacobian_ is None
    assert_allclose(auto.ntk_, exact.ntk_, rtol=1e-12, atol=1e-12)
    jf = JacobianFeatures(model, projection="auto").fit(X)
    assert jf.projection_ is None and jf.n_columns_ == jf.n_params_


def test_auto_picks_a_sketch_past_the_threshold(cnn_problem, monkeypatch):
    # Lower the threshold so the tiny cnn counts as large: the estimators then use and report
    # the sketch, with the same Θ as asking for it explicitly.
    import sktt.gradients._auto_projection as auto_mod

    monkeypatch.setattr(auto_mod, "EXACT_GRAM_FLOPS", 1.0)
    model, X, y = cnn_problem
    a = TrainingTimePredictor(model, projection="auto", projection_dim=64, random_state=0,
                              lr=0.1, n_steps=5).fit(X, y)
    b = TrainingTimePredictor(model, projection="tensorsketch", projection_dim=64,
                              random_state=0, lr=0.1, n_steps=5).fit(X, y)
    assert a.projection_ == "tensorsketch" and a.projected_jacobian_.shape[1] == 64
    assert_allclose(a.ntk_, b.ntk_, rtol=1e-12)
    jf = JacobianFeatures(model, projection="auto", projection_dim=64,
                          jacobian_method="functorch", random_state=0)
    rows = jf.fit_transform(X, y)
    assert jf.projection_ == "countsketch" and rows.rows.shape == (30, 64)
    assert torch.is_tensor(X)
