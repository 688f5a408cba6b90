"""The table of bad inputs (docs/reliability.rst): each gets a clear error naming the
parameter, the value received and what is accepted — never a silent wrong answer.

Every row id here appears in the docs table (tested below), so the two stay in step.
"""

import pathlib
import re
import warnings

import numpy as np
import pytest
import torch
from conftest import RandomFeatureHead

from sktt import GramSpectrum, JacobianFeatures, JacobianRows, TrainingTimePredictor, compare
from sktt.exceptions import (
    DivergenceError,
    InfeasibleTailError,
    MemoryBudgetError,
    NotFittedError,
    ThresholdNotReachedError,
)
from sktt.gram import check_ntk, ntk_eigh
from sktt.plotting import (
    PredictedVsRealDisplay,
    SpectrumDisplay,
    TrainingCurveDisplay,
    TrainingTimeDisplay,
)
from sktt.validation import compare_with_real, measure_step_time, run_real_training

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs" / "reliability.rst"


def _data(n=24):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


class _ThreeD(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(6, 3, dtype=torch.float64)

    def forward(self, x):
        return self.lin(x)[:, :, None]


class _NaNOut(RandomFeatureHead):
    def forward(self, x):
        return super().forward(x) * float("nan")


class _BadDataset(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.zeros(6, dtype=torch.float64)  # x only: no (x, y) pair


def _frozen():
    m = RandomFeatureHead()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


X, Y = _data()
ONEHOT = torch.nn.functional.one_hot(Y, 3).double()

# id, estimator kwargs, fit args (X, y), expected type, message pattern
FIT_ROWS = [
    ("xy-length", {}, (X, Y[:-1]), ValueError, r"X has 24 samples but y has 23 samples"),
    ("empty-x", {}, (X[:0], Y[:0]), ValueError, r"X is empty \(0 samples\)"),
    ("nan-x", {}, (X.clone().fill_(float("nan")), Y), ValueError, r"X contains NaN or inf"),
    ("inf-x", {}, (torch.where(X > 2, torch.inf, X), Y), ValueError, r"X contains NaN or inf"),
    ("object-x", {}, (np.array([object()] * 24), Y), TypeError, r"X has dtype object"),
    ("label-range", {}, (X, Y + 3), ValueError, r"labels in \[3, 5\].*3 outputs.*\[0, 2\]"),
    ("float-labels", {}, (X, Y.double()), TypeError, r"float dtype.*integer class indices"),
    ("y-none", {}, (X, None), ValueError, r"y is None"),
    ("mse-y-shape", {"loss": "mse"}, (X, Y.double()), ValueError,
     r"y has shape \(24,\); loss='mse' needs targets of shape \(n_samples, 3\)"),
    ("mse-y-columns", {"loss": "mse"}, (X, torch.zeros(24, 4, dtype=torch.float64)), ValueError,
     r"y has shape \(24, 4\).*model's 3 outputs"),
    ("nan-y", {"loss": "mse"}, (X, ONEHOT * float("nan")), ValueError, r"y contains NaN"),
    ("lr-zero", {"lr": 0.0}, (X, Y), ValueError, r"lr=0.0 is invalid; accepted: a finite number > 0"),
    ("lr-negative", {"lr": -1e-3}, (X, Y), ValueError, r"lr=-0.001 is invalid"),
    ("lr-inf", {"lr": float("inf")}, (X, Y), ValueError, r"lr=inf is invalid"),
    ("lr-string", {"lr": "0.1"}, (X, Y), TypeError, r"lr must be a real number, got '0.1'"),
    ("momentum-one", {"momentum": 1.0}, (X, Y), ValueError, r"momentum=1.0.*\[0.0, 1.0\)"),
    ("momentum-negative", {"momentum": -0.1}, (X, Y), ValueError, r"momentum=-0.1.*\[0.0, 1.0\)"),
    ("batch-zero", {"batch_size": 0}, (X, Y), ValueError, r"batch_size=0 is out of range; accepted: an integer in \[1, "),
    ("batch-above-n", {"batch_size": 25}, (X, Y), ValueError, r"batch_size=25.*\[1, 24\]"),
    ("batch-non-integer", {"batch_size": 2.5}, (X, Y), TypeError, r"batch_size must be an integer, got 2.5"),
    ("n-steps-zero", {"n_steps": 0}, (X, Y), ValueError, r"n_steps=0.*\[1, inf\]"),
    ("projection-dim-zero", {"projection": "gaussian", "projection_dim": 0}, (X, Y), ValueError,
     r"projection_dim=0"),
    ("unknown-loss", {"loss": "crossentropy"}, (X, Y), ValueError,
     r"loss='crossentropy' is not supported.*Did you mean 'cross_entropy'"),
    ("unknown-solver", {"solver": "odee"}, (X, Y), ValueError, r"solver='odee'.*Did you mean 'ode'"),
    ("unknown-projection", {"projection": "countsketh"}, (X, Y), ValueError,
     r"projection='countsketh'.*Did you mean 'countsketch'"),
    ("max-memory", {"max_memory": "lots"}, (X, Y), ValueError, r"max_memory='lots' is invalid"),
    ("max-memory-below-a-byte", {"max_memory": "0.5B"}, (X, Y), ValueError,
     r"max_memory='0.5B' is invalid; accepted: None, a positive int of bytes"),
    ("temp-folder-missing", {"temp_folder": "/nonexistent/sktt"}, (X, Y), ValueError,
     r"temp_folder='/nonexistent/sktt' is not an existing directory this process can write in"),
    ("temp-folder-type", {"temp_folder": 3}, (X, Y), TypeError,
     r"temp_folder=3 is invalid; accepted: None .* or the path of an existing directory"),
    ("random-state", {"random_state": -1}, (X, Y), ValueError, r"random_state=-1 is invalid"),
    ("n-jobs-zero", {"n_jobs": 0}, (X, Y), ValueError, r"n_jobs=0 is invalid"),
]

MODEL_ROWS = [
    ("not-a-module", lambda: "resnet", TypeError, r"model must be a torch.nn.Module, or 'precomputed'.*got str"),
    ("output-not-2d", _ThreeD, ValueError, r"output has shape \(24, 3, 1\); accepted: a 2-D"),
    ("no-trainable", _frozen, ValueError, r"no parameter with requires_grad=True"),
    ("nan-output", _NaNOut, ValueError, r"outputs at the initial weights contain NaN or inf"),
    # torch.func raised "The stateless API can't be used with Jitted modules"
    ("torchscript", lambda: torch.jit.trace(RandomFeatureHead(), X[:2]), TypeError,
     r"model is or holds a TorchScript module \('model': TopLevelTracedModule\).*accepted: "
     r"the eager torch.nn.Module"),
]


@pytest.mark.parametrize("row", FIT_ROWS, ids=[r[0] for r in FIT_ROWS])
def test_bad_fit_input(row):
    _, kwargs, (Xb, yb), exc, pattern = row
    Xb_before = Xb.clone() if isinstance(Xb, torch.Tensor) else None
    with pytest.raises(exc, match=pattern):
        TrainingTimePredictor(RandomFeatureHead(), **kwargs).fit(Xb, yb)
    if Xb_before is not None:  # inputs are never modified in place
        assert torch.equal(Xb.nan_to_num(), Xb_before.nan_to_num())


@pytest.mark.parametrize("row", MODEL_ROWS, ids=[r[0] for r in MODEL_ROWS])
def test_bad_model(row):
    _, make, exc, pattern = row
    with pytest.raises(exc, match=pattern):
        TrainingTimePredictor(make()).fit(X, Y)


def test_dataset_with_wrong_structure():
    with pytest.raises(ValueError, match=r"item 0 is Tensor.*accepted: \(x, y\) pairs"):
        TrainingTimePredictor(RandomFeatureHead()).fit(_BadDataset())


def test_dataset_plus_y():
    ds = torch.utils.data.TensorDataset(X, Y)
    with pytest.raises(ValueError, match="y must be None when X is a Dataset"):
        TrainingTimePredictor(RandomFeatureHead()).fit(ds, Y)


@pytest.fixture(scope="module")
def fitted():
    return TrainingTimePredictor(RandomFeatureHead(), lr=0.5, n_steps=30).fit(X, Y)


@pytest.mark.parametrize("kwargs, exc, pattern", [
    (dict(eps=0.0), ValueError, r"eps=0.0 is invalid; accepted: a finite number > 0"),
    (dict(eps=-1.0), ValueError, r"eps=-1.0 is invalid"),
    (dict(eps=float("nan")), ValueError, r"eps=nan is invalid"),
    (dict(eps=0.1, metric="accuracy"), ValueError, r"metric='accuracy'.*'loss', 'error'"),
    (dict(eps=0.1, lr=0.0), ValueError, r"lr=0.0"),
    (dict(eps=0.1, learning_rate=0.1), TypeError, r"unexpected keyword\(s\) \['learning_rate'\]"),
    (dict(threshold=1e-9), ThresholdNotReachedError, r"threshold 1e-09 is not reached within n_steps=30"),
    (dict(eps=0.1, smooth=0), ValueError, r"smooth=0"),
    # a window past the curve averaged the repeated edges into a flat line: threshold=1.1 was
    # reached at 16 instead of 9, silently
    (dict(threshold=1.0, smooth=1000), ValueError,
     r"smooth=1000 is longer than the curve \(31 points, steps 0..n_steps=30\); accepted: an "
     r"integer in \[1, 31\]"),
], ids=["eps-zero", "eps-negative", "eps-nan", "unknown-metric", "override-lr", "unknown-override",
        "unreachable-threshold", "smooth-zero", "smooth-above-curve"])
def test_bad_predict_input(fitted, kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        fitted.predict_time(**kwargs)


def test_error_metric_needs_classes():
    ttp = TrainingTimePredictor(torch.nn.Linear(6, 1, dtype=torch.float64), loss="mse").fit(
        X, torch.zeros(24, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"metric='error' needs a classification target"):
        ttp.predict_curve("error")


def test_predict_before_fit():
    with pytest.raises(NotFittedError):
        TrainingTimePredictor(RandomFeatureHead()).predict_time(0.1)


@pytest.mark.parametrize("matrix, pattern", [
    (np.array([[1.0, np.nan], [np.nan, 1.0]]), r"contains NaN or inf"),
    (np.array([[1.0, 0.0], [0.0, -1.0]]), r"negative eigenvalue -1.000e\+00.*beyond round-off"),
    (np.array([[1.0, 2.0], [0.0, 1.0]]), r"not symmetric"),
    (np.ones((2, 3)), r"must be a square 2-D matrix"),
], ids=["ntk-nonfinite", "ntk-negative-eigenvalue", "ntk-asymmetric", "ntk-not-square"])
def test_bad_kernels(matrix, pattern):
    with pytest.raises(ValueError, match=pattern):
        ntk_eigh(matrix)


def test_roundoff_negative_eigenvalues_are_clipped_with_a_warning():
    v = np.linalg.qr(np.random.default_rng(0).standard_normal((4, 4)))[0]
    ntk = v @ np.diag([1.0, 0.5, 0.0, -1e-8]) @ v.T
    with pytest.warns(UserWarning, match="clipped negative eigenvalues"):
        w, _ = ntk_eigh(ntk)
    assert w.min() == 0.0
    check_ntk(ntk)  # symmetric to round-off: accepted


def test_every_row_is_in_the_docs_table():
    text = DOCS.read_text()
    ids = [r[0] for r in FIT_ROWS] + [r[0] for r in MODEL_ROWS] + [
        "eps-zero", "eps-nan", "unknown-metric", "unreachable-threshold", "ntk-nonfinite",
        "ntk-negative-eigenvalue", "dataset-structure", "not-fitted",
        "smooth-above-curve"]
    missing = [i for i in ids if not re.search(rf"``{re.escape(i)}``", text)]
    assert not missing, missing


# ====================================================================== every other entry point
# Each row: id, a callable that must raise, the error type, a pattern of its message. The
# table in docs/reliability.rst lists the same ids.
_rng = np.random.default_rng(0)
J_SUB = _rng.standard_normal((40, 100)) * np.arange(1, 101) ** -1.0  # N0 = 40, C = 1
R_SUB = _rng.standard_normal(40)
THETA0 = J_SUB @ J_SUB.T
K_DIAG = np.diag(1.0 / np.arange(1, 41))  # residual all on mode 1: the tail is infeasible
R_TOP = np.full(40, 0.01)
R_TOP[0] = 1.0


def _gs(**kw):
    kw.setdefault("n_samples", 100)
    kw.setdefault("k0", 5)
    return GramSpectrum(**kw)


GRAM_ROWS = [
    ("gs-n-below-n0", lambda: _gs(n_samples=10).fit(J_SUB, R_SUB), ValueError,
     r"n_samples=10 is smaller than the subset's N0=40 samples; accepted: n_samples >= N0"),
    ("gs-alpha-negative", lambda: _gs(alpha=-0.1).fit(J_SUB, R_SUB), ValueError,
     r"alpha=-0.1 is invalid; accepted: a number in \[0.0, 1.0\]"),
    ("gs-alpha-above-one", lambda: _gs(alpha=1.5).fit(J_SUB, R_SUB), ValueError, r"alpha=1.5"),
    ("gs-alpha-nan", lambda: _gs(alpha=float("nan")).fit(J_SUB, R_SUB), ValueError, r"alpha=nan"),
    ("gs-k0-above-modes", lambda: _gs(k0=41).fit(J_SUB, R_SUB), ValueError,
     r"k0=41 exceeds the 40 modes of the subset kernel \(N0·C\); accepted: k0 <= 40"),
    ("gs-k0-zero", lambda: _gs(k0=0).fit(J_SUB, R_SUB), ValueError,
     r"k0=0 is out of range; accepted: an integer in \[1, inf\]"),
    # the dynamics parameters are read at predict time but refused at fit, as the predictor's
    ("gs-momentum-one", lambda: _gs(momentum=1.0).fit(J_SUB, R_SUB), ValueError,
     r"momentum=1.0 is invalid; accepted: a number in \[0.0, 1.0\)"),
    ("gs-lr-string", lambda: _gs(lr="0.1").fit(J_SUB, R_SUB), TypeError,
     r"lr must be a real number, got '0.1' \(str\)"),
    ("gs-infeasible-tail", lambda: _gs(k0=2, kernel="precomputed", projection_scale="samples")
     .fit(K_DIAG, R_TOP, residual_sq_norm=1.1 * (R_TOP @ R_TOP)), InfeasibleTailError,
     r"no power-law tail exists: ‖δy‖² = 1.104\d* but the head .* already reach"),
    ("gs-residual-norm-mean", lambda: _gs().fit(J_SUB, R_SUB, residual_sq_norm=0.5 * R_SUB @ R_SUB),
     ValueError, r"residual_sq_norm=.* is smaller than the subset's own ‖δy_sub‖²"),
    ("gs-residual-norm-without-y", lambda: _gs().fit(J_SUB, None, residual_sq_norm=3.0),
     ValueError, r"residual_sq_norm was given without y"),
    ("gs-unknown-kernel", lambda: _gs(kernel="precomputd").fit(J_SUB, R_SUB), ValueError,
     r"kernel='precomputd' is not supported.*Did you mean 'precomputed'"),
    ("gs-nan-rows", lambda: _gs().fit(np.where(J_SUB > 1, np.nan, J_SUB), R_SUB), ValueError,
     r"X contains NaN or inf; accepted: finite Jacobian rows"),
    ("gs-kernel-nonfinite", lambda: _gs(kernel="precomputed").fit(
        np.where(THETA0 > 1, np.inf, THETA0), R_SUB), ValueError,
     r"X contains NaN or inf; accepted: a finite kernel Θ0"),
    ("gs-kernel-not-square", lambda: _gs(kernel="precomputed").fit(J_SUB, R_SUB), ValueError,
     r"kernel='precomputed' needs a square Θ0; got X of shape \(40, 100\)"),
    ("gs-kernel-negative", lambda: _gs(kernel="precomputed").fit(-THETA0, R_SUB), ValueError,
     r"negative eigenvalue .* beyond round-off"),
    ("gs-kernel-asymmetric", lambda: _gs(kernel="precomputed").fit(THETA0 + np.triu(THETA0, 1),
                                                                  R_SUB),
     ValueError, r"X is not symmetric"),
    ("gs-y-length", lambda: _gs().fit(J_SUB, R_SUB[:-1]), ValueError,
     r"y has 39 entries but X has 40 rows"),
    ("gs-nan-y", lambda: _gs().fit(J_SUB, R_SUB * np.nan), ValueError, r"y contains NaN or inf"),
    ("gs-zero-residual", lambda: _gs().fit(J_SUB, 0 * R_SUB), ValueError,
     r"the subset residual y is zero"),
    ("gs-one-column", lambda: _gs().fit(J_SUB[:, :1], R_SUB), ValueError,
     r"at least 2 columns"),
    ("gs-fit-range", lambda: _gs(fit_range=(5, 3)).fit(J_SUB, R_SUB), ValueError,
     r"fit_range=\(5, 3\) gives indices \[5, 3\]; accepted: 1 <= start < stop <= 40"),
    ("gs-n-outputs", lambda: _gs(n_outputs=3).fit(J_SUB, R_SUB), ValueError,
     r"X has 40 rows, not a multiple of n_outputs=3"),
    ("gs-not-fitted", lambda: GramSpectrum().predict_curve(), NotFittedError,
     r"This GramSpectrum instance is not fitted yet"),
    ("gs-eps-zero", lambda: _gs().fit(J_SUB, R_SUB).predict_time(0.0), ValueError,
     r"eps=0.0 is invalid; accepted: a finite number > 0"),
    ("gs-unreachable-threshold", lambda: _gs().fit(J_SUB, R_SUB).predict_time(threshold=1e-9),
     ThresholdNotReachedError, r"threshold 1e-09 is not reached within n_steps=150"),
    ("gs-metric-error", lambda: _gs().fit(J_SUB, R_SUB).predict_curve("error"), ValueError,
     r"metric='error' is not supported; accepted values are 'loss'"),
    ("gs-cross-entropy-rows", lambda: _gs().fit(JacobianFeatures(RandomFeatureHead())
                                                .fit_transform(X, Y), Y), ValueError,
     r"y has shape \(24,\); GramSpectrum predicts MSE training and needs targets of shape"),
    ("gs-extrapolate-cross-entropy", lambda: TrainingTimePredictor(
        RandomFeatureHead(), trust_check=False).fit(X, Y).extrapolate(100), ValueError,
     r"extrapolate needs loss='mse'"),
]

_BAD_SHAPE_X = torch.randn(5, 7, dtype=torch.float64)
FEATURE_ROWS = [
    ("jf-not-a-module", lambda: JacobianFeatures("resnet").fit(X), TypeError,
     r"model must be a torch.nn.Module, got str"),
    ("jf-unknown-projection", lambda: JacobianFeatures(RandomFeatureHead(), projection="gausian")
     .fit(X), ValueError, r"projection='gausian' is not supported.*Did you mean 'gaussian'"),
    ("jf-projection-dim-zero", lambda: JacobianFeatures(RandomFeatureHead(), projection="gaussian",
                                                        projection_dim=0).fit(X),
     ValueError, r"projection_dim=0 is out of range"),
    ("jf-no-trainable", lambda: JacobianFeatures(_frozen()).fit(X), ValueError,
     r"no parameter with requires_grad=True"),
    ("jf-not-fitted", lambda: JacobianFeatures(RandomFeatureHead()).transform(X), NotFittedError,
     r"This JacobianFeatures instance is not fitted yet"),
    ("jf-nan-x", lambda: JacobianFeatures(RandomFeatureHead()).fit_transform(X * np.nan, Y),
     ValueError, r"X contains NaN or inf"),
    ("jf-xy-length", lambda: JacobianFeatures(RandomFeatureHead()).fit_transform(X, Y[:-1]),
     ValueError, r"X has 24 samples but y has 23 samples"),
    ("jf-memory", lambda: JacobianFeatures(RandomFeatureHead(), max_memory=100).fit_transform(X, Y),
     MemoryBudgetError,
     r"exact Jacobian rows are 72×39 .* more than max_memory=100 B.*projection"),
    ("jf-input-shape", lambda: JacobianFeatures(RandomFeatureHead()).fit(X).transform(_BAD_SHAPE_X),
     ValueError, r"the model cannot be called on X .*input shape\(s\) \[\(5, 7\)\].*mat1 and mat2"),
    ("jf-n-jobs-zero", lambda: JacobianFeatures(RandomFeatureHead(), n_jobs=0).fit(X), ValueError,
     r"n_jobs=0 is invalid"),
    ("precomputed-not-rows", lambda: TrainingTimePredictor("precomputed").fit(X.numpy(), Y),
     TypeError, r"model='precomputed' takes the output of JacobianFeatures as X .*got ndarray"),
    # rows built by hand: f0 with a NaN gave a curve of inf, silently (fit from the model
    # refuses NaN outputs)
    ("precomputed-nan-f0", lambda: TrainingTimePredictor("precomputed").fit(
        JacobianRows(np.ones((72, 5)), np.where(np.eye(24, 3) > 0, np.nan, 0.0)), Y), ValueError,
     r"the model's outputs at the initial weights contain NaN or inf"),
    ("precomputed-label-range", lambda: TrainingTimePredictor("precomputed").fit(
        JacobianFeatures(RandomFeatureHead()).fit_transform(X), Y + 3), ValueError,
     r"labels in \[3, 5\] but the model has 3 outputs"),
    ("precomputed-refresh", lambda: TrainingTimePredictor("precomputed", refresh_steps=2).fit(
        JacobianFeatures(RandomFeatureHead()).fit_transform(X, Y)), ValueError,
     r"refresh_steps / refresh_seconds run real steps of the model"),
    ("precomputed-real-training", lambda: compare_with_real(TrainingTimePredictor(
        "precomputed").fit(JacobianFeatures(RandomFeatureHead()).fit_transform(X, Y)), X, Y),
     ValueError, r"compare_with_real trains predictor.model for real, but the predictor has "
                 r"model='precomputed'"),
    ("precomputed-step-time", lambda: TrainingTimePredictor("precomputed").fit(
        JacobianFeatures(RandomFeatureHead()).fit_transform(X, Y)).measure_step_time(X, Y),
     ValueError, r"measure_step_time times real steps of the model; a predictor with "
                 r"model='precomputed' has none"),
]

_HEAD = RandomFeatureHead()
COMPARE_ROWS = [
    ("cmp-not-a-module", lambda: compare("resnet", {"a": (X, Y)}), TypeError,
     r"model must be a torch.nn.Module, got str"),
    ("cmp-no-datasets", lambda: compare(_HEAD, {}), TypeError,
     r"datasets must be a non-empty dict .* \(empty\)"),
    ("cmp-bad-dataset", lambda: compare(_HEAD, {"a": X}), TypeError,
     r"datasets\['a'\] is a Tensor; accepted: an \(X, y\) pair"),
    ("cmp-grid-key", lambda: compare(_HEAD, {"a": (X, Y)}, {"projection": ["gaussian"]}),
     ValueError, r"param_grid has key\(s\) \['projection'\]; accepted: \['lr'"),
    ("cmp-grid-lr", lambda: compare(_HEAD, {"a": (X, Y)}, {"lr": [-1.0]}), ValueError,
     r"lr=-1.0 is invalid"),
    ("cmp-batch-size", lambda: compare(_HEAD, {"a": (X, Y)}, {"batch_size": [100]}), ValueError,
     r"batch_size=100 is invalid for dataset 'a' of 24 samples; accepted: None .* \[1, 24\]"),
    ("cmp-eps-twice", lambda: compare(_HEAD, {"a": (X, Y)}, {"eps": [0.1]}, eps=0.1), ValueError,
     r"eps is both in param_grid and given as a keyword"),
    ("cmp-unknown-keyword", lambda: compare(_HEAD, {"a": (X, Y)}, learning_rate=0.1), TypeError,
     r"unexpected keyword\(s\) \['learning_rate'\]"),
    ("cmp-n-jobs-zero", lambda: compare(_HEAD, {"a": (X, Y)}, n_jobs=0), ValueError,
     r"n_jobs=0 is invalid; accepted: None, a positive int"),
    ("cmp-label-range", lambda: compare(_HEAD, {"a": (X, Y + 3)}), ValueError,
     r"labels in \[3, 5\] but the model has 3 outputs"),
    # bool("no") is True: the trust column (a few dozen passes per setting) ran anyway
    ("cmp-trust-string", lambda: compare(_HEAD, {"a": (X, Y)}, {"lr": [0.1]}, n_steps=5,
                                         trust="no"),
     TypeError, r"trust must be a bool, got 'no' \(str\); accepted: True or False"),
]


@pytest.fixture(scope="module")
def fitted_head():
    return TrainingTimePredictor(RandomFeatureHead(), lr=0.5, n_steps=10,
                                 trust_check=False).fit(X, Y)


VALIDATION_ROWS = [
    ("rrt-not-a-module", lambda f: run_real_training("resnet", X, Y, lr=0.1, n_steps=2),
     TypeError, r"model must be a torch.nn.Module, got str"),
    ("rrt-lr-inf", lambda f: run_real_training(_HEAD, X, Y, lr=float("inf"), n_steps=2),
     ValueError, r"lr=inf is invalid; accepted: a finite number > 0"),
    ("rrt-lr-string", lambda f: run_real_training(_HEAD, X, Y, lr="0.1", n_steps=2), TypeError,
     r"lr must be a real number, got '0.1'"),
    ("rrt-momentum-one", lambda f: run_real_training(_HEAD, X, Y, lr=0.1, momentum=1.0,
                                                     n_steps=2),
     ValueError, r"momentum=1.0 is invalid; accepted: a number in \[0.0, 1.0\)"),
    ("rrt-label-range", lambda f: run_real_training(_HEAD, X, Y + 3, lr=0.1, n_steps=2),
     ValueError, r"y contains labels in \[3, 5\] but the model has 3 outputs"),
    ("rrt-nan-x", lambda f: run_real_training(_HEAD, X * np.nan, Y, lr=0.1, n_steps=2),
     ValueError, r"X contains NaN or inf"),
    ("rrt-mse-columns", lambda f: run_real_training(_HEAD, X, torch.zeros(24, 4,
                                                                          dtype=torch.float64),
                                                    loss="mse", lr=0.1, n_steps=2),
     ValueError, r"loss='mse' needs float targets of shape \(N, 3\) .* got shape \(24, 4\)"),
    ("rrt-batches-range", lambda f: run_real_training(_HEAD, X, Y, lr=0.1, batches=[[0, 100]]),
     ValueError, r"batches\[0\] holds indices in \[0, 100\]; accepted: .* \[0, 23\]"),
    # predict_curve(batches=...) refuses these; the real run truncated 0.5 -> 0 and read a mask
    # of 24 True as sample 1, 24 times
    ("rrt-batches-float", lambda f: run_real_training(_HEAD, X, Y, lr=0.1, batches=[[0.5, 1.2]]),
     ValueError, r"batches\[0\] has dtype float64; accepted: integer index arrays"),
    ("rrt-batches-mask", lambda f: run_real_training(_HEAD, X, Y, lr=0.1,
                                                     batches=[np.ones(24, bool)]),
     ValueError, r"batches\[0\] has dtype bool; accepted: integer index arrays"),
    ("rrt-seed-string", lambda f: run_real_training(_HEAD, X, Y, lr=0.1, n_steps=2, batch_size=4,
                                                    seed="1"),
     ValueError, r"seed must be an integer >= 0, got '1'"),
    ("rrt-empty-x", lambda f: run_real_training(_HEAD, X[:0], Y[:0], lr=0.1, n_steps=2),
     ValueError, r"X is empty \(0 samples\)"),
    ("rrt-n-steps-missing", lambda f: run_real_training(_HEAD, X, Y, lr=0.1), ValueError,
     r"n_steps is required unless batches is given"),
    ("rrt-train-mode-string", lambda f: run_real_training(_HEAD, X, Y, lr=0.1, n_steps=2,
                                                          train_mode="no"),
     TypeError, r"train_mode must be a bool, got 'no' \(str\)"),
    ("mst-train-mode-string", lambda f: f.measure_step_time(X, Y, batch_size=4, train_mode="no"),
     TypeError, r"train_mode must be a bool, got 'no' \(str\)"),
    ("mst-label-range", lambda f: measure_step_time(_HEAD, X, Y + 3, batch_size=4), ValueError,
     r"y contains labels in \[\d, \d\] but the model has 3 outputs; accepted: labels in \[0, 2\]"),
    ("mst-batch-zero", lambda f: measure_step_time(_HEAD, X, Y, batch_size=0), ValueError,
     r"batch_size=0 is out of range"),
    ("mst-no-trainable", lambda f: measure_step_time(_frozen(), X, Y, batch_size=4), ValueError,
     r"no parameter with requires_grad=True"),
    ("mst-batch-above-n", lambda f: f.measure_step_time(X, Y, batch_size=100), ValueError,
     r"batch_size=100 is out of range; accepted: an integer in \[1, 24\]"),
    ("seconds-not-measured", lambda f: f.predict_time(0.1, unit="seconds", batch_size=5),
     NotFittedError, r"no step time measured for batch_size=5; call measure_step_time"),
    ("cwr-not-fitted", lambda f: compare_with_real(TrainingTimePredictor(_HEAD), X, Y), TypeError,
     r"predictor must be a fitted TrainingTimePredictor"),
    ("cwr-other-data", lambda f: compare_with_real(f, X[:5], Y[:5]), ValueError,
     r"X has 5 samples but the predictor was fitted on 24"),
    ("cwr-eps", lambda f: compare_with_real(f, X, Y, eps=0), ValueError, r"eps=0 is invalid"),
    ("cwr-eps-string", lambda f: compare_with_real(f, X, Y, eps="0.1"), TypeError,
     r"eps must be a real number .* got '0.1' \(str\)"),
    ("cwr-seeds", lambda f: compare_with_real(f, X, Y, seeds=-1, batch_size=4), ValueError,
     r"seeds=-1 is out of range"),
    ("cwr-seeds-full-batch", lambda f: compare_with_real(f, X, Y, seeds=-1), ValueError,
     r"seeds=-1 is out of range"),  # GD ignores seeds, but a bad value is still refused
    ("cwr-label-range", lambda f: compare_with_real(f, X, Y + 3), ValueError,
     r"y contains labels in \[3, 5\] but the model has 3 outputs"),
    # fit's rule for the targets: 0.4 is no class index (a cast made it class 0)
    ("cwr-float-labels", lambda f: compare_with_real(f, X, Y.double() + 0.4), TypeError,
     r"y has dtype float64; loss='cross_entropy' needs integer class indices"),
    ("cwr-one-hot", lambda f: compare_with_real(f, X, ONEHOT.long()), ValueError,
     r"y has shape \(24, 3\); loss='cross_entropy' needs class indices of shape \(n_samples,\)"),
    ("disp-curve-not-fitted", lambda f: TrainingCurveDisplay.from_estimator(
        TrainingTimePredictor(_HEAD)), NotFittedError, r"not fitted yet"),
    ("disp-time-not-fitted", lambda f: TrainingTimeDisplay.from_estimator(
        TrainingTimePredictor(_HEAD)), NotFittedError, r"not fitted yet"),
    ("disp-spectrum-not-fitted", lambda f: SpectrumDisplay.from_estimator(GramSpectrum()),
     NotFittedError, r"This GramSpectrum instance is not fitted yet"),
    ("disp-validation-not-fitted", lambda f: PredictedVsRealDisplay.from_estimator(
        TrainingTimePredictor(_HEAD), X, Y), TypeError,
     r"predictor must be a fitted TrainingTimePredictor"),
    ("disp-not-an-estimator", lambda f: TrainingCurveDisplay.from_estimator("ttp"), TypeError,
     r"estimator must be a fitted TrainingTimePredictor .* got str"),
]


PREDICTOR_ROWS = [
    ("ce-one-output", lambda f: TrainingTimePredictor(
        torch.nn.Linear(6, 1, dtype=torch.float64)).fit(X, Y * 0), ValueError,
     r"the model has 1 output; loss='cross_entropy' needs at least 2 outputs"),
    ("x-strings", lambda f: TrainingTimePredictor(_HEAD).fit(np.full((24, 6), "a"), Y), TypeError,
     r"X has dtype <U1; accepted: numeric arrays or tensors"),
    ("x-wrong-shape", lambda f: TrainingTimePredictor(_HEAD).fit(_BAD_SHAPE_X, Y[:5]), ValueError,
     r"the model cannot be called on X \(samples 0..4, input shape\(s\) \[\(5, 7\)\]"),
    ("divergent", lambda f: f.predict_time(0.01, lr=1e4), DivergenceError,
     r"diverges, so no training time exists: the loss at step 10 .* is above where it starts"),
    ("divergent-sgd", lambda f: f.predict_time(0.01, lr=1e4, batch_size=4), DivergenceError,
     r"diverges.*past the stability edge"),
    ("divergent-ode", lambda f: f.predict_time(0.01, lr=1e4, solver="ode"), DivergenceError,
     r"gradient descent with this lr is past its stability edge .* the gradient flow "
     r"\(solver='ode'\) does not show it"),
    ("divergent-sde", lambda f: f.predict_time(0.01, lr=1e4, batch_size=4, solver="sde",
                                               sde_noise="full"), DivergenceError,
     r"diverges.*past the stability edge"),
    ("quantiles-order", lambda f: f.predict_curve(return_band=True, quantiles=(0.9, 0.1)),
     ValueError, r"quantiles=\(0.9, 0.1\) is invalid; accepted: two levels"),
    ("unknown-unit", lambda f: f.predict_time(0.1, unit="minutes"), ValueError,
     r"unit='minutes' is not supported; accepted values are 'steps', 'seconds'"),
    ("n-paths-zero", lambda f: f.predict_curve(n_paths=0, batch_size=4), ValueError,
     r"n_paths=0 is out of range"),
    ("refresh-above-n-steps", lambda f: f.predict_curve(refresh_steps=11), ValueError,
     r"refresh_steps=11 exceeds n_steps=10"),
    ("batches-range", lambda f: f.predict_curve(batches=[[0, 100]] * 10), ValueError,
     r"batches\[0\] holds indices in \[0, 100\]; accepted: \[0, 23\]"),
    ("eps-and-threshold", lambda f: f.predict_time(0.1, threshold=0.1), ValueError,
     r"give exactly one of eps .* and threshold"),
    # np.asarray("0.1", float) is 0.1 and True is 1.0: neither may pass as a number
    ("eps-string", lambda f: f.predict_time("0.1"), TypeError,
     r"eps must be a real number or a 1-D array of them, got '0.1' \(str\)"),
    ("eps-bool", lambda f: f.predict_time(True), TypeError,
     r"eps must be a real number .* got True \(bool\)"),
    ("threshold-string", lambda f: f.predict_time(threshold="1"), TypeError,
     r"threshold must be a real number or a 1-D array of them, got '1' \(str\)"),
    # "no" is truthy: a flag that is not a bool would silently switch the option on
    ("return-band-string", lambda f: f.predict_curve(return_band="no"), TypeError,
     r"return_band must be a bool, got 'no' \(str\); accepted: True or False"),
    ("return-distribution-string", lambda f: f.predict_time(0.1, return_distribution="no"),
     TypeError, r"return_distribution must be a bool, got 'no' \(str\)"),
    ("trust-check-string", lambda f: TrainingTimePredictor(_HEAD, trust_check="no").fit(X, Y),
     TypeError, r"trust_check must be a bool, got 'no' \(str\)"),
]

ENTRY_ROWS = GRAM_ROWS + FEATURE_ROWS + COMPARE_ROWS


@pytest.mark.parametrize("row", ENTRY_ROWS, ids=[r[0] for r in ENTRY_ROWS])
def test_bad_input_other_entry_points(row):
    _, call, exc, pattern = row
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the error is the subject here, not warnings
        with pytest.raises(exc, match=pattern):
            call()


@pytest.mark.parametrize("row", VALIDATION_ROWS + PREDICTOR_ROWS,
                         ids=[r[0] for r in VALIDATION_ROWS + PREDICTOR_ROWS])
def test_bad_input_with_a_fitted_predictor(fitted_head, row):
    _, call, exc, pattern = row
    weights = {k: v.clone() for k, v in _HEAD.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(exc, match=pattern):
            call(fitted_head)
    for k, v in _HEAD.state_dict().items():  # a failed call leaves the model as it was
        assert torch.equal(v, weights[k])


# ---------------------------------------------------------------------- files and the CLI
class _Evil:
    """Unpickling this runs ``touch marker``: what a hostile model or data file does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _hostile_pt2(tmp, marker):
    """A valid torch.export archive whose example inputs are a code-running pickle."""
    import io
    import zipfile

    program = torch.export.export(torch.nn.Linear(6, 3, dtype=torch.float64), (X[:2],))
    good = tmp / "good.pt2"
    torch.export.save(program, good)
    payload = io.BytesIO()
    torch.save(_Evil(marker), payload)
    path = tmp / "hostile.pt2"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            dst.writestr(name, payload.getvalue() if name.endswith("sample_inputs/model.pt")
                         else data)
    return path


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("files")
    paths = {"model": tmp / "head.pt", "data": tmp / "data.npz", "text": tmp / "notes.pt",
             "list": tmp / "list.pt", "hostile_pt": tmp / "hostile.pt",
             "hostile_npz": tmp / "hostile.npz"}
    torch.jit.save(torch.jit.script(RandomFeatureHead()), paths["model"])
    np.savez(paths["data"], X=X.numpy(), y=Y.numpy())
    paths["text"].write_text("these are not weights\n")
    torch.save([1, 2, 3], paths["list"])  # readable with weights_only=True, but no state_dict
    torch.save(_Evil(tmp / "marker_pt"), paths["hostile_pt"])
    np.savez(paths["hostile_npz"], X=np.array([_Evil(tmp / "marker_npz")], dtype=object),
             y=np.arange(1))
    paths["hostile_pt2"] = _hostile_pt2(tmp, tmp / "marker_pt2")
    paths["tmp"] = tmp
    return {k: str(v) for k, v in paths.items()}


# id, arguments (model, data) by key, message pattern, marker file that must NOT appear
CLI_ROWS = [
    ("cli-not-weights", ("text", "data"), r"cannot read model file .*notes.pt.*: it is not a "
     r"TorchScript archive, a torch.export program \(.pt2\) or a state_dict", None),
    ("cli-no-state-dict", ("list", "data"), r"does not hold a state_dict \(a dict of tensors\)",
     None),
    ("cli-hostile-pickle", ("hostile_pt", "data"), r"torch.load\(weights_only=True\).*"
     r"unsupported GLOBAL posix.system", "marker_pt"),
    ("cli-hostile-export", ("hostile_pt2", "data"), r"cannot read torch.export program .*"
     r"unsupported GLOBAL posix.system.*weights_only=True", "marker_pt2"),
    ("cli-hostile-npz", ("model", "hostile_npz"), r"cannot read .*hostile.npz.* without pickles",
     "marker_npz"),
]


@pytest.mark.parametrize("row", CLI_ROWS, ids=[r[0] for r in CLI_ROWS])
def test_bad_files_are_refused_with_exit_code_2(cli_files, capsys, row):
    from sktt.cli import main

    _, (model, data), pattern, marker = row
    code = main(["predict", cli_files[model], cli_files[data], "--no-seconds", "--no-trust",
                 "--n-steps", "5"])
    err = capsys.readouterr().err
    assert code == 2
    assert re.search(pattern, err), err
    assert "Traceback" not in err
    if marker is not None:  # the pickle's code never ran
        assert not pathlib.Path(cli_files["tmp"], marker).exists()


def test_hostile_pickle_through_python_m_sktt(cli_files):
    import os
    import subprocess
    import sys

    root = str(DOCS.parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": root}
    out = subprocess.run([sys.executable, "-m", "sktt", "predict", cli_files["hostile_pt"],
                          cli_files["data"], "--no-seconds"], capture_output=True, text=True,
                         timeout=240, env=env, cwd=root)
    assert out.returncode == 2, out.stderr
    assert "sktt predict: error: cannot read model file" in out.stderr
    assert "weights_only=True" in out.stderr and "Traceback" not in out.stderr
    assert not pathlib.Path(cli_files["tmp"], "marker_pt").exists()


def test_every_other_row_is_in_the_docs_table():
    text = DOCS.read_text()
    ids = [r[0] for r in ENTRY_ROWS + VALIDATION_ROWS + PREDICTOR_ROWS + CLI_ROWS]
    assert len(ids) == len(set(ids))
    missing = [i for i in ids if not re.search(rf"``{re.escape(i)}``", text)]
    assert not missing, missing
    rows = len(re.findall(r"^   \* - ``", text, flags=re.M))
    assert f"the contract: {rows} bad" in " ".join(text.split())  # the count quoted is right


# ====================================================================== eval_set
# id, eval_set, estimator kwargs, expected type, message pattern
EVAL_ROWS = [
    ("eval-set-not-pair", (X[:5],), {}, TypeError,
     r"eval_set must be a pair \(X_val, y_val\).*tuple of length 1"),
    ("eval-set-array", X[:5], {}, TypeError, r"eval_set must be a pair \(X_val, y_val\).*Tensor"),
    ("eval-set-length", (X[:5], Y[:4]), {}, ValueError,
     r"eval_set=\(X_val, y_val\): X has 5 samples but y has 4 samples"),
    ("eval-set-features", (X[:5, :4], Y[:5]), {}, ValueError,
     r"eval_set: X_val has per-sample shape \(4,\) but X has \(6,\)"),
    ("eval-set-label-range", (X[:5], Y[:5] + 3), {}, ValueError,
     r"eval_set: y_val: y contains labels in \[3, 4\].*accepted: labels in \[0, 2\]"),
    ("eval-set-mse-shape", (X[:5], Y[:5].double()), {"loss": "mse"}, ValueError,
     r"eval_set: y_val: y has shape \(5,\); loss='mse' needs targets of shape \(n_samples, 3\)"),
    ("eval-set-y-none", (X[:5], None), {}, ValueError, r"y_val are required"),
    ("eval-set-memory", (X, Y), {"max_memory": 24 * 3 * 24 * 3 * 8 * 2}, MemoryBudgetError,
     r"cross-kernel Θ\(train, eval\) of 72×72.*more than max_memory.*smaller eval_set"),
]


@pytest.mark.parametrize("row", EVAL_ROWS, ids=[r[0] for r in EVAL_ROWS])
def test_bad_eval_set(row):
    _, eval_set, kwargs, exc, pattern = row
    y = ONEHOT if kwargs.get("loss") == "mse" else Y
    with pytest.raises(exc, match=pattern):
        TrainingTimePredictor(RandomFeatureHead(), trust_check=False, **kwargs).fit(
            X, y, eval_set=eval_set)


def test_on_eval_without_eval_set():
    ttp = TrainingTimePredictor(RandomFeatureHead(), n_steps=5, trust_check=False).fit(X, Y)
    with pytest.raises(NotFittedError, match=r"on='eval' needs held-out data"):
        ttp.predict_curve(on="eval")


def test_every_eval_row_is_in_the_docs_table():
    text = DOCS.read_text()
    ids = [r[0] for r in EVAL_ROWS] + ["eval-not-fitted", "eval-sde"]
    missing = [i for i in ids if not re.search(rf"``{re.escape(i)}``", text)]
    assert not missing, missing
