"""The user's objects are never changed (docs/reliability.rst, promise 2).

A model with BatchNorm, Dropout, a frozen parameter, mixed train/eval modes, existing
``.grad`` tensors and forward / pre-forward / backward / tensor hooks goes through every
public operation; after each one its weights (values, storage, version counter), gradients
(the same tensor objects), ``requires_grad`` flags, per-submodule modes, devices, dtypes,
hooks (count and identity), the global torch / numpy / python ``random`` states, and the
user's X and y, must be exactly as before -- also after a fit that fails half-way.
"""

import random
import warnings

import numpy as np
import pytest
import torch

from sktt import GramSpectrum, JacobianFeatures, TrainingTimePredictor, compare
from sktt.validation import compare_with_real, measure_step_time, run_real_training

N, C = 16, 3


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 3, 3, dtype=torch.float64)
        self.bn = torch.nn.BatchNorm2d(3, dtype=torch.float64)
        self.drop = torch.nn.Dropout(0.3)
        self.fc = torch.nn.Linear(3 * 4 * 4, C, dtype=torch.float64)
        with torch.no_grad():  # non-trivial running statistics
            self.bn.running_mean.uniform_(-0.1, 0.1)
            self.bn.running_var.uniform_(0.8, 1.2)

    def forward(self, x):
        h = self.drop(torch.relu(self.bn(self.conv(x))))
        return self.fc(h.flatten(1))


def _hook(*args, **kwargs):
    return None


def _tensor_hook(grad):
    return grad


def _user_model():
    model = _Net()
    model.train()
    model.bn.eval()  # mixed modes must come back as they were
    model.conv.bias.requires_grad_(False)  # a frozen parameter
    model.fc.weight.grad = torch.full_like(model.fc.weight, 0.5)  # a stale gradient
    model.conv.register_forward_hook(_hook)
    model.fc.register_forward_pre_hook(_hook)
    model.bn.register_full_backward_hook(_hook)
    model.fc.bias.register_hook(_tensor_hook)
    return model


def _data():
    g = torch.Generator().manual_seed(3)
    X = torch.randn(N, 1, 6, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (N,), generator=g)
    return X, y


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
               "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs",
               "_state_dict_hooks", "_load_state_dict_pre_hooks")


def _hooks(model):
    out = []
    for name, m in model.named_modules():
        for attr in _HOOK_DICTS:
            d = getattr(m, attr, None) or {}
            out.append((name, attr, [(k, id(v)) for k, v in d.items()]))
    for name, p in model.named_parameters():
        d = p._backward_hooks or {}
        out.append((name, "tensor", [(k, id(v)) for k, v in d.items()]))
    g = torch.nn.modules.module
    for attr in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks"):
        out.append(("global", attr, [(k, id(v)) for k, v in getattr(g, attr).items()]))
    return out


class _Snapshot:
    """Everything of the user's that sktt must leave alone."""

    def __init__(self, model, *arrays):
        self.model = model
        self.state = {k: v.clone() for k, v in model.state_dict().items()}
        tensors = list(model.parameters()) + list(model.buffers())
        self.tensors = [(id(t), t.data_ptr(), t._version, t.device, t.dtype, t.requires_grad)
                        for t in tensors]
        self.grads = [(p.grad, None if p.grad is None else p.grad.clone())
                      for p in model.parameters()]
        self.modes = [m.training for m in model.modules()]
        self.hooks = _hooks(model)
        self.torch_rng = torch.get_rng_state()
        self.numpy_rng = np.random.get_state()  # noqa: NPY002 - the global state is the subject
        self.python_rng = random.getstate()
        self.arrays = [(a, a.clone() if isinstance(a, torch.Tensor) else a.copy(),
                        getattr(a, "_version", None)) for a in arrays]

    def check(self, what):
        model = self.model
        for k, v in model.state_dict().items():
            assert torch.equal(v, self.state[k]), f"{what}: {k} changed"
        tensors = list(model.parameters()) + list(model.buffers())
        now = [(id(t), t.data_ptr(), t._version, t.device, t.dtype, t.requires_grad)
               for t in tensors]
        assert now == self.tensors, f"{what}: a parameter/buffer was replaced or written"
        for p, (grad, value) in zip(model.parameters(), self.grads, strict=True):
            assert p.grad is grad, f"{what}: .grad replaced"
            if value is not None:
                assert torch.equal(p.grad, value), f"{what}: .grad changed"
        assert [m.training for m in model.modules()] == self.modes, f"{what}: modes"
        assert _hooks(model) == self.hooks, f"{what}: hooks"
        assert torch.equal(torch.get_rng_state(), self.torch_rng), f"{what}: torch RNG"
        np_now = np.random.get_state()  # noqa: NPY002
        assert np_now[1].tolist() == self.numpy_rng[1].tolist() and np_now[2] == \
            self.numpy_rng[2], f"{what}: numpy RNG"
        assert random.getstate() == self.python_rng, f"{what}: python RNG"
        for a, copy, version in self.arrays:
            if isinstance(a, torch.Tensor):
                assert torch.equal(a, copy) and a._version == version, f"{what}: X/y modified"
            else:
                np.testing.assert_array_equal(a, copy, err_msg=f"{what}: X/y modified")


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # trust / divergence warnings are not the subject
        yield


@pytest.mark.parametrize("kind", ["tensor", "numpy"])
def test_every_operation_leaves_the_user_objects_alone(kind):
    model = _user_model()
    X, y = _data()
    if kind == "numpy":
        X, y = X.numpy().astype(np.float32), y.numpy()  # converted, never written back
    snap = _Snapshot(model, X, y)
    ttp = TrainingTimePredictor(model, lr=0.05, n_steps=12, random_state=0)
    ttp.fit(X, y)
    snap.check("fit")
    ttp.predict_curve()
    ttp.predict_curve("error", return_band=True, batch_size=4, n_paths=3)
    snap.check("predict_curve")
    ttp.predict_time(0.05)
    ttp.predict_time([0.05, 0.1], return_distribution=True, batch_size=4, n_paths=3)
    ttp.predict_time(0.05, solver="ode")
    ttp.predict_time(0.05, solver="sde", sde_noise="full", batch_size=4, n_paths=2)
    ttp.predict_time(threshold=1e3)
    snap.check("predict_time")
    ttp.measure_step_time(X, y, batch_size=4, n_repeats=1, n_warmup=1)
    ttp.predict_time(0.05, unit="seconds", batch_size=4)
    snap.check("measure_step_time + seconds")
    ttp.trust_report(lr=0.1)
    snap.check("trust_report")
    ttp.predict_curve(refresh_steps=2)
    snap.check("refresh_steps")
    mse = TrainingTimePredictor(model, loss="mse", n_steps=12, trust_check=False)
    mse.fit(X, np.eye(C)[np.asarray(y)])
    mse.extrapolate(4 * N, k0=3)
    snap.check("extrapolate")
    measure_step_time(model, X, y, batch_size=4, n_repeats=1, n_warmup=1)
    run_real_training(model, X, y, lr=0.05, n_steps=2, batch_size=4, train_mode=True)
    compare_with_real(ttp, X, y, n_steps=3, batch_size=4)
    snap.check("validation")
    features = JacobianFeatures(model, projection="countsketch", projection_dim=32,
                                random_state=0)
    features.fit(X, y)
    snap.check("JacobianFeatures.fit")
    rows = features.transform(X)
    features.fit_transform(X, y)
    snap.check("JacobianFeatures.transform")
    GramSpectrum(k0=3).fit(rows.rows, (rows.f0 - np.eye(C)[np.asarray(y)]))
    compare(model, {"a": (X, y)}, {"lr": [0.05]}, n_steps=5, random_state=0)
    snap.check("GramSpectrum / compare")


def _fit_that_fails(monkeypatch, where, **kw):
    """Inject a failure inside Jacobian extraction and check that nothing leaked."""
    model = _user_model()
    X, y = _data()
    snap = _Snapshot(model, X, y)
    import sktt.gradients._extraction as extraction
    import sktt.gradients._recorder as recorder

    def boom(*args, **kwargs):
        torch.rand(3)  # consume the global RNG first: it must still be restored
        np.random.rand(2)  # noqa: NPY002
        random.random()
        raise RuntimeError("injected failure")

    if where == "layerwise":  # fail in a forward pass while sktt's hooks are installed
        real = recorder._call_model
        calls = []

        def call_then_fail(m, x):
            out = real(m, x)
            calls.append(1)
            if torch.is_grad_enabled() and len(calls) >= 2:
                boom()
            return out

        monkeypatch.setattr(recorder, "_call_model", call_then_fail)
    else:
        monkeypatch.setattr(extraction, "chunk_jacobian", boom)
    ttp = TrainingTimePredictor(model, **kw)
    with pytest.raises(RuntimeError, match="injected"):
        ttp.fit(X, y)
    snap.check(f"fit failing in {where}")
    assert not hasattr(ttp, "ntk_") and not hasattr(ttp, "eigenvalues_")  # nothing partial
    return ttp


@pytest.mark.parametrize("where, kw", [
    ("functorch", dict(jacobian_method="functorch")),
    ("layerwise", dict(jacobian_method="layerwise")),
    ("layerwise", dict(jacobian_method="layerwise", projection="countsketch",
                       projection_dim=32)),
    ("functorch", dict(jacobian_method="functorch", n_jobs=2)),  # threading below, loky too
], ids=["functorch", "layerwise-exact", "layerwise-projected", "functorch-n-jobs-2"])
def test_fit_that_fails_half_way_leaves_everything_alone(monkeypatch, where, kw):
    if kw.get("n_jobs"):  # monkeypatching reaches threads, not loky's processes
        import joblib

        with joblib.parallel_config(backend="threading"):
            _fit_that_fails(monkeypatch, where, chunk_size=2, **kw)
    else:
        _fit_that_fails(monkeypatch, where, **kw)
