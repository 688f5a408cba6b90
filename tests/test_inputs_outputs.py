"""Any input container and any model output: the same samples, the same logits, one message.

Every container (tensor, ndarray, tuple/list, dict, Dataset, DataLoader) of the same data
must give the same Θ; every way of naming the logits (default, attribute, key, index,
callable) the same outputs; anything else one clear error naming the parameter.
"""

import warnings

import numpy as np
import pytest
import torch

from sktt import TrainingTimePredictor
from sktt.gradients import (JACOBIAN_METHODS, ModelInputs, as_inputs, call_model, index_inputs,
                            inputs_to, model_outputs, n_samples_of, ntk_from_model, select_logits)
from sktt.gradients._probes import JacobianOperator


class KeywordNet(torch.nn.Module):
    """Token ids + mask in, a dict with logits out (the shape of a transformers classifier)."""

    def __init__(self, ret="dict"):
        super().__init__()
        self.emb = torch.nn.Embedding(10, 4, dtype=torch.float64)
        self.lin = torch.nn.Linear(4, 3, dtype=torch.float64)
        self.ret = ret

    def forward(self, input_ids, attention_mask):
        h = (self.emb(input_ids) * attention_mask[..., None]).sum(1)
        logits = self.lin(h)
        if self.ret == "dict":
            return {"logits": logits, "hidden": h}
        if self.ret == "tuple":
            return logits, h
        return logits


class PairNet(torch.nn.Module):
    """Two positional inputs."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(3, 2, dtype=torch.float64)
        self.b = torch.nn.Linear(4, 2, dtype=torch.float64)

    def forward(self, x, z):
        return self.a(x) + torch.tanh(self.b(z))


def _kw_data(n=12):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 10, (n, 5), generator=g)
    mask = (torch.rand(n, 5, generator=g) > 0.2).long()
    return {"input_ids": ids, "attention_mask": mask}, torch.arange(n) % 3


class _DictDataset(torch.utils.data.Dataset):
    def __init__(self, X, y):
        self.X, self.y = X, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.X.items()}, self.y[i]


def _ntk(model, X, y=None, **kw):
    inputs, _ = as_inputs(X, y, float_dtype=torch.float64)
    names = [n for n, _ in model.named_parameters()]
    return ntk_from_model(model.eval(), inputs, names, n_outputs=3, max_memory=2**28, **kw)[0]


@pytest.mark.parametrize("jacobian_method", JACOBIAN_METHODS)
def test_every_keyword_container_gives_the_same_kernel(jacobian_method):
    torch.manual_seed(0)
    model = KeywordNet()
    X, y = _kw_data()
    base = _ntk(model, X, y, jacobian_method=jacobian_method)
    ds = _DictDataset(X, y)
    for other in (_ntk(model, ds, jacobian_method=jacobian_method),
                  _ntk(model, torch.utils.data.DataLoader(ds, batch_size=5),
                       jacobian_method=jacobian_method),
                  _ntk(model, {k: v.numpy() for k, v in X.items()}, y,
                       jacobian_method=jacobian_method)):
        np.testing.assert_allclose(other, base, rtol=1e-12, atol=1e-14)
    ref = _ntk(model, X, y, jacobian_method="functorch")
    np.testing.assert_allclose(base, ref, rtol=1e-10, atol=1e-12)


def test_positional_tuple_and_list_agree():
    torch.manual_seed(0)
    model = PairNet()
    x, z = torch.randn(7, 3, dtype=torch.float64), torch.randn(7, 4, dtype=torch.float64)
    a = _ntk_pair(model, (x, z))
    b = _ntk_pair(model, [x.numpy(), z])
    pairs = [((x[i], z[i]), 0) for i in range(7)]
    c = _ntk_pair(model, pairs_dataset(pairs))
    np.testing.assert_allclose(b, a, rtol=1e-12)
    np.testing.assert_allclose(c, a, rtol=1e-12)


def pairs_dataset(pairs):
    class _DS(torch.utils.data.Dataset):
        def __len__(self):
            return len(pairs)

        def __getitem__(self, i):
            return pairs[i]
    return _DS()


def _ntk_pair(model, X):
    inputs, _ = as_inputs(X, None if isinstance(X, torch.utils.data.Dataset) else np.zeros(7),
                          float_dtype=torch.float64)
    names = [n for n, _ in model.named_parameters()]
    return ntk_from_model(model.eval(), inputs, names, n_outputs=2, max_memory=2**28)[0]


def test_model_inputs_index_move_and_call():
    X, _ = _kw_data()
    inputs, _ = as_inputs(X, None, float_dtype=torch.float32)
    assert isinstance(inputs, ModelInputs) and len(inputs) == 12 and inputs.shape[0] == 12
    sub = index_inputs(inputs, torch.tensor([3, 1]))
    assert torch.equal(sub.kwargs["input_ids"], X["input_ids"][[3, 1]])
    assert n_samples_of(sub) == 2 and n_samples_of(inputs[5]) == 1
    assert inputs_to(sub, "cpu").kwargs.keys() == sub.kwargs.keys()
    torch.manual_seed(0)
    model = KeywordNet()
    assert call_model(model, sub).shape == (2, 3)
    assert call_model(model, {k: v[:2] for k, v in X.items()}).shape == (2, 3)
    assert "input_ids=(12, 5)" in inputs.describe()


@pytest.mark.parametrize("ret, output", [
    ("dict", None), ("dict", "logits"), ("tuple", None), ("tuple", 0), ("tensor", None),
    ("dict", lambda raw: raw["logits"]),
])
def test_output_selectors(ret, output):
    torch.manual_seed(0)
    model = KeywordNet(ret).eval()
    X, _ = _kw_data()
    inputs, _ = as_inputs(X, None, float_dtype=torch.float64)
    with torch.no_grad():
        raw = model(**X)
    expected = (raw["logits"] if ret == "dict" else raw[0] if ret == "tuple" else raw).numpy()
    np.testing.assert_allclose(model_outputs(model, inputs, output=output), expected)
    names = [n for n, _ in model.named_parameters()]
    op = JacobianOperator(model, names, inputs, output=output)
    np.testing.assert_allclose(op.outputs(), expected)


def test_model_output_with_logits_attribute():
    class Out:
        def __init__(self, logits):
            self.logits = logits
    assert select_logits(Out(torch.zeros(2, 3))).shape == (2, 3)


@pytest.mark.parametrize("raw, output, exc, pattern", [
    (torch.zeros(4, 3, 1), None, ValueError, r"output has shape \(4, 3, 1\); accepted: a 2-D"),
    ({"hidden": torch.zeros(4, 3)}, None, TypeError, r"output=None found no logits.*output="),
    ({"logits": torch.zeros(4, 3)}, "scores", TypeError, r"output='scores'.*no attribute or key"),
    ((torch.zeros(4, 3),), 2, TypeError, r"output=2.*cannot be indexed"),
    ({"logits": torch.zeros(4, 3)}, 1.5, TypeError, r"output=1.5 is invalid; accepted: None"),
    ((torch.zeros(4, 3), "text"), 1, TypeError, r"output=1 selected str"),
])
def test_bad_outputs(raw, output, exc, pattern):
    with pytest.raises(exc, match=pattern):
        select_logits(raw, output)


@pytest.mark.parametrize("X, pattern", [
    ({1, 2}, r"X of type set is not accepted; accepted: a torch.Tensor .*DataLoader"),
    ("some text", r"X has dtype <U9|X of type str is not accepted"),
    ({"ids": torch.zeros(4, 2), 3: torch.zeros(4)}, r"non-str key"),
    ((torch.zeros(4, 2), torch.zeros(5, 2)), r"X\[1\] has 5 samples but X\[0\] has 4"),
    ({"a": torch.zeros(4, 2), "b": torch.zeros(3)}, r"X\['b'\] has 3 samples but X\['a'\] has 4"),
    ([], r"X is an empty list"),
])
def test_unaccepted_containers(X, pattern):
    with pytest.raises((TypeError, ValueError), match=pattern):
        as_inputs(X, None, float_dtype=torch.float32)


def test_list_of_per_sample_tensors_says_stack():
    X = [torch.randn(1, 3) for _ in range(60)]
    with pytest.raises(ValueError, match=r"list of 60 tensors, read as 60 positional inputs.*"
                                         r"torch.stack\(X\)"):
        as_inputs(X, np.zeros(60, dtype=int), float_dtype=torch.float32)


def test_pandas_targets_do_not_warn():
    pd = pytest.importorskip("pandas")
    X, y = _kw_data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, t = as_inputs(X, pd.Series(y.numpy()), float_dtype=torch.float32)
        _, t2 = as_inputs(pd.DataFrame(np.ones((12, 2))), pd.Series(y.numpy()),
                          float_dtype=torch.float32)
    assert torch.equal(t, t2) and torch.equal(t.long(), y)


def test_dataloader_with_y_is_refused():
    X, y = _kw_data()
    loader = torch.utils.data.DataLoader(_DictDataset(X, y), batch_size=4)
    with pytest.raises(ValueError, match="y must be None when X is a DataLoader"):
        as_inputs(loader, y, float_dtype=torch.float32)


def test_predictor_fits_dict_input_and_dict_output_without_a_wrapper():
    torch.manual_seed(0)
    X, y = _kw_data()
    ds = _DictDataset(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = TrainingTimePredictor(KeywordNet(), lr=0.1, n_steps=10, trust_check=False).fit(X, y)
        b = TrainingTimePredictor(KeywordNet(), lr=0.1, n_steps=10, trust_check=False).fit(
            torch.utils.data.DataLoader(ds, batch_size=5))
    assert a.ntk_.shape == (36, 36) and b.ntk_.shape == (36, 36)
    assert np.isfinite(a.predict_curve()).all()
