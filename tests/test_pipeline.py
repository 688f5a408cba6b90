"""JacobianFeatures as a pipeline step: layout, equivalence with the one-object path,
clone / pickle, and Pipeline(memory=...) caching."""

import copy
import pickle

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import clone
from sklearn.pipeline import Pipeline, make_pipeline

from sktt import GramSpectrum, JacobianFeatures, JacobianRows, TrainingTimePredictor
from sktt.datasets import DigitsConvNet, load_demo

N = 40
C = 5


@pytest.fixture(scope="module")
def demo():
    return load_demo(N, dtype=torch.float64)


def _one_object(model, **kw):
    kw.setdefault("random_state", 0)
    kw.setdefault("trust_check", False)  # needs the model; not what is compared here
    return TrainingTimePredictor(model, **kw)


def _pipeline(model, projection, **predictor_kw):
    predictor_kw.setdefault("random_state", 0)
    return make_pipeline(
        JacobianFeatures(model, projection=projection, projection_dim=256, random_state=0),
        TrainingTimePredictor("precomputed", **predictor_kw))


# ---------------------------------------------------------------------- layout
def test_output_layout(demo):
    out = JacobianFeatures(demo.model, projection="countsketch", projection_dim=128,
                           random_state=0).fit_transform(demo.X, demo.y)
    assert isinstance(out, JacobianRows)
    assert out.rows.shape == (N * C, 128) and out.rows.dtype == np.float64
    assert (out.n_samples, out.n_outputs, out.n_columns) == (N, C, 128)
    with torch.no_grad():
        assert_allclose(out.f0, demo.model(demo.X).numpy(), rtol=1e-12)
    assert_array_equal(out.targets, demo.y.numpy())
    # as an array: one row per sample, its C Jacobian rows concatenated (a view, no copy)
    features = np.asarray(out)
    assert features.shape == out.shape == (N, C * 128)
    assert_array_equal(features[3], out.rows[3 * C:4 * C].ravel())
    assert np.shares_memory(features, out.rows)
    assert_array_equal(out.ntk(), out.rows @ out.rows.T)
    # sample selection keeps all C rows of each sample, f0 and targets
    sub = out[np.array([4, 1])]
    assert_array_equal(sub.rows, np.vstack([out.rows[20:25], out.rows[5:10]]))
    assert_array_equal(sub.f0, out.f0[[4, 1]])
    assert_array_equal(sub.targets, out.targets[[4, 1]])
    assert len(out[out.targets == 0]) == int((out.targets == 0).sum())


def test_transform_of_new_data_uses_the_fitted_projection(demo):
    jf = JacobianFeatures(demo.model, projection="countsketch", projection_dim=64,
                          random_state=None).fit(demo.X[:10])
    assert jf.n_outputs_ == C and jf.n_columns_ == 64
    a, b = jf.transform(demo.X[:6]), jf.transform(demo.X[:6])
    assert a.targets is None
    assert_array_equal(a.rows, b.rows)  # seed drawn once in fit
    full = jf.transform(demo.X)
    assert_allclose(full.rows[:6 * C], a.rows, rtol=1e-12, atol=1e-12)


def test_transform_refuses_a_projection_or_model_changed_after_fit(demo):
    # transform keeps the fit's projection and seed; a projection_dim or model set after fit
    # gave rows of another width (and sketch) than the fit's, with n_columns_ unchanged
    jf = JacobianFeatures(demo.model, projection="countsketch", projection_dim=64,
                          random_state=0).fit(demo.X[:10])
    jf.set_params(projection_dim=32)
    with pytest.raises(ValueError, match=r"projection_dim=32 was set after fit, which projected "
                                         r"to 64 columns.*Call fit again"):
        jf.transform(demo.X[:6])
    assert jf.set_params(projection_dim=64).transform(demo.X[:6]).rows.shape == (6 * C, 64)
    narrower = copy.deepcopy(demo.model)  # the same parameter names, a 32-unit hidden layer
    narrower.classifier[1] = torch.nn.Linear(32 * 4 * 4, 32, dtype=torch.float64)
    narrower.classifier[3] = torch.nn.Linear(32, C, dtype=torch.float64)
    jf.set_params(model=narrower)
    with pytest.raises(ValueError, match=r"trainable parameters changed since fit .* fit again"):
        jf.transform(demo.X[:6])
    assert jf.fit(demo.X[:10]).transform(demo.X[:6]).n_columns == 64  # a new fit adopts it


def test_transform_leaves_the_fitted_number_of_outputs_alone(demo):
    # transform read C again and stored it in n_outputs_: an output= set after fit changed the
    # fitted attribute (and the rows' C) instead of being refused
    jf = JacobianFeatures(demo.model, projection="countsketch", projection_dim=64,
                          random_state=0).fit(demo.X[:10])
    jf.set_params(output=lambda out: out[:, :2])
    with pytest.raises(ValueError, match=rf"gives 2 outputs on X but {C} at fit.*fit again"):
        jf.transform(demo.X[:6])
    assert jf.n_outputs_ == C


def test_exact_rows_give_exact_kernel(demo):
    out = JacobianFeatures(demo.model).fit_transform(demo.X, demo.y)
    n_params = sum(p.numel() for p in demo.model.parameters())
    assert out.rows.shape == (N * C, n_params)
    ref = _one_object(demo.model).fit(demo.X, demo.y)
    assert_allclose(out.ntk(), ref.ntk_, rtol=1e-12, atol=1e-12 * np.abs(ref.ntk_).max())


def test_dataset_input_carries_its_targets(demo):
    dataset = torch.utils.data.TensorDataset(demo.X, demo.y)
    pipe = _pipeline(demo.model, "countsketch", lr=0.01).fit(dataset)  # y=None
    ref = _pipeline(demo.model, "countsketch", lr=0.01).fit(demo.X, demo.y)
    assert_array_equal(pipe[-1].ntk_, ref[-1].ntk_)
    assert_array_equal(pipe[-1].targets_, ref[-1].targets_)


# ---------------------------------------------------------------------- equivalence
SETTINGS = [dict(lr=0.01), dict(lr=0.02, momentum=0.9, batch_size=10)]


@pytest.mark.parametrize("projection", [None, "countsketch"])
def test_pipeline_matches_training_time_predictor(demo, projection):
    one = _one_object(demo.model, projection=projection, projection_dim=256, n_steps=60)
    one.fit(demo.X, demo.y)
    pipe = _pipeline(demo.model, projection, n_steps=60).fit(demo.X, demo.y)
    two = pipe[-1]
    assert_allclose(two.ntk_, one.ntk_, rtol=1e-12, atol=1e-12 * np.abs(one.ntk_).max())
    assert_array_equal(two.f0_, one.f0_)
    assert_array_equal(two.targets_, one.targets_)
    assert two.n_params_ == one.n_params_
    for setting in SETTINGS:
        for metric in ("loss", "error"):
            assert_allclose(two.predict_curve(metric, **setting),
                            one.predict_curve(metric, **setting), rtol=1e-10, atol=1e-10)
        assert two.predict_time(eps=0.01, **setting) == one.predict_time(eps=0.01, **setting)


@pytest.mark.parametrize("projection", [None, "countsketch"])
def test_pipeline_matches_gram_spectrum(demo, projection):
    """make_pipeline(JacobianFeatures, GramSpectrum) vs the predictor's extrapolate, which is
    what GramSpectrum.from_model runs."""
    Y = np.eye(C)[demo.y.numpy()]
    one = _one_object(demo.model, loss="mse", projection=projection, projection_dim=256,
                      lr=0.01).fit(demo.X, Y).extrapolate(200, k0=20)
    pipe = make_pipeline(
        JacobianFeatures(demo.model, projection=projection, projection_dim=256, random_state=0),
        GramSpectrum(200, k0=20, lr=0.01)).fit(demo.X, Y)
    two = pipe[-1]
    assert two.rank_ == one.rank_
    assert_allclose(two.predicted_eigenvalues_, one.predicted_eigenvalues_, rtol=1e-10)
    assert_allclose(two.predict_curve(), one.predict_curve(), rtol=1e-10, atol=1e-12)
    assert_allclose(two.predict_curve(lr=0.03), one.predict_curve(lr=0.03), rtol=1e-10)
    assert two.predict_time(eps=0.005) == one.predict_time(eps=0.005)


def test_gram_spectrum_needs_mse_targets(demo):
    out = JacobianFeatures(demo.model, projection="countsketch", projection_dim=64,
                           random_state=0).fit_transform(demo.X, demo.y)
    with pytest.raises(ValueError, match=r"targets of shape \(n_samples, n_outputs\)"):
        GramSpectrum(k0=5).fit(out)  # class labels, not (N, C) targets
    with pytest.raises(ValueError, match="kernel='jacobian'"):
        GramSpectrum(kernel="precomputed").fit(out, np.eye(C)[demo.y.numpy()])


def test_precomputed_predictor_errors(demo):
    out = JacobianFeatures(demo.model, projection="countsketch", projection_dim=64,
                           random_state=0).fit(demo.X).transform(demo.X)
    with pytest.raises(TypeError, match="JacobianRows"):
        TrainingTimePredictor("precomputed").fit(demo.X, demo.y)
    with pytest.raises(ValueError, match="carry no targets"):
        TrainingTimePredictor("precomputed").fit(out)
    with pytest.raises(ValueError, match="but y has 3 samples"):
        TrainingTimePredictor("precomputed").fit(out, demo.y[:3])
    with pytest.raises(ValueError, match="refresh_steps"):
        TrainingTimePredictor("precomputed", refresh_steps=5).fit(out, demo.y)
    with pytest.raises(TypeError, match="'precomputed'"):
        TrainingTimePredictor("a model").fit(demo.X, demo.y)
    ttp = TrainingTimePredictor(None, lr=0.01).fit(out, demo.y)  # None works too
    assert ttp.ntk_.shape == (N * C, N * C)


# ---------------------------------------------------------------------- clone, pickle
def test_clone_of_a_pipeline(demo):
    pipe = _pipeline(demo.model, "countsketch", lr=0.01)
    cloned = clone(pipe)
    assert cloned.get_params()["trainingtimepredictor__lr"] == 0.01
    model = cloned[0].model
    assert model is not demo.model  # clone deep-copies the model parameter ...
    for a, b in zip(model.parameters(), demo.model.parameters()):
        assert_array_equal(a.detach().numpy(), b.detach().numpy())  # ... with its weights
    assert_array_equal(cloned.fit(demo.X, demo.y)[-1].predict_curve(),
                       pipe.fit(demo.X, demo.y)[-1].predict_curve())


def test_pickle_round_trip(demo):
    jf = JacobianFeatures(demo.model, projection="countsketch", projection_dim=64,
                          random_state=0).fit(demo.X)
    again = pickle.loads(pickle.dumps(jf))
    assert isinstance(again.model, DigitsConvNet)
    assert again.seed_ == jf.seed_
    assert_array_equal(again.transform(demo.X).rows, jf.transform(demo.X).rows)
    pipe = pickle.loads(pickle.dumps(_pipeline(demo.model, "countsketch").fit(demo.X, demo.y)))
    assert_array_equal(pipe[-1].predict_curve(), _pipeline(demo.model, "countsketch").fit(
        demo.X, demo.y)[-1].predict_curve())


def test_model_left_untouched(demo):
    model = load_demo(10).model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    JacobianFeatures(model, projection="countsketch", projection_dim=32).fit_transform(
        demo.X[:10].float(), demo.y[:10])
    assert model.training
    for k, v in model.state_dict().items():
        assert_array_equal(v.numpy(), before[k].numpy())


# ---------------------------------------------------------------------- caching
class CountingNet(DigitsConvNet):
    """Counts forward calls in a class attribute (not pickled, so not hashed)."""

    calls = 0

    def forward(self, x):
        type(self).calls += 1
        return super().forward(x)


def test_pipeline_memory_avoids_recomputing_gradients(demo, tmp_path):
    model = CountingNet().to(torch.float64)
    model.load_state_dict(demo.model.state_dict())
    X, y = demo.X.numpy(), demo.y.numpy()  # numpy: joblib hashes it by content
    pipe = Pipeline([
        ("jac", JacobianFeatures(model, projection="countsketch", projection_dim=64,
                                 random_state=0)),
        ("ttp", TrainingTimePredictor("precomputed", lr=0.01, random_state=0)),
    ], memory=str(tmp_path))
    CountingNet.calls = 0
    first = pipe.fit(X, y)[-1].predict_curve()
    n_calls = CountingNet.calls
    assert n_calls > 0
    second = pipe.fit(X, y)[-1].predict_curve()  # cache hit: no model call at all
    assert CountingNet.calls == n_calls
    assert_array_equal(second, first)
    pipe.set_params(ttp__lr=0.02).fit(X, y)  # a new final step reuses the cached gradients
    clone(pipe).fit(X, y)  # so does a clone (its model is a deep copy)
    assert CountingNet.calls == n_calls
    assert not np.allclose(pipe[-1].predict_curve(), first)
    pipe.set_params(jac__projection_dim=32).fit(X, y)  # new gradients: computed
    assert CountingNet.calls > n_calls
    # a model with other weights is a new model, not a cache hit
    n_calls = CountingNet.calls
    with torch.no_grad():
        model.classifier[-1].bias.add_(0.1)
    pipe.set_params(jac__model=model, jac__projection_dim=64).fit(X, y)
    assert CountingNet.calls > n_calls
