"""Streamed inputs: a Dataset or DataLoader is read a chunk at a time, never collated whole.

References: the same samples as collated tensors give the same prediction to round-off
(curve, T_ε, trust report, held-out curve, re-linearisation, refresh, weight decay, real
training); a dataset that generates its samples on the fly and counts how many of them are
alive shows that ``fit`` holds a bounded number of samples, the same at N = 600 and 1 500,
and none once it returns; anything else is one clear error naming X or y.
"""

import pickle
import weakref

import numpy as np
import pytest
import torch
from conftest import tiny_cnn
from keyword_model import KeywordNet
from numpy.testing import assert_allclose

from sktt import TrainingTimePredictor
from sktt.gradients import as_inputs
from sktt.validation import compare_with_real, run_real_training

RTOL = 1e-10


class Generated(torch.utils.data.Dataset):
    """Samples made from their index when asked (numpy images, int labels); counts how many
    samples are alive at once: items, and batches made by :meth:`collate`."""

    def __init__(self, n, shape=(1, 6, 6), n_classes=3, dtype=np.float64):
        self.n, self.shape, self.n_classes, self.dtype = n, shape, n_classes, dtype
        self.alive = self.peak = 0

    def __len__(self):
        return self.n

    def _born(self, obj, k):
        self.alive += k
        self.peak = max(self.peak, self.alive)
        weakref.finalize(obj, self._died, k)

    def _died(self, k):
        self.alive -= k

    def __getitem__(self, i):
        x = np.random.default_rng(1000 + i).standard_normal(self.shape).astype(self.dtype)
        self._born(x, 1)
        return x, i % self.n_classes

    def collate(self, items):
        """A DataLoader collate_fn whose batch memory is counted while any view of it lives."""
        batch = np.stack([x for x, _ in items])
        self._born(batch, len(items))
        return torch.from_numpy(batch), torch.tensor([y for _, y in items])

    def tensors(self):
        items = [self[i] for i in range(self.n)]
        return (torch.from_numpy(np.stack([x for x, _ in items])),
                torch.tensor([y for _, y in items]))


def _fitted(X, y=None, eval_set=None, **params):
    kw = dict(lr=0.3, n_steps=12, batch_size=8, n_paths=2, random_state=0, chunk_size=8)
    return TrainingTimePredictor(tiny_cnn(), **{**kw, **params}).fit(X, y, eval_set=eval_set)


@pytest.fixture(scope="module")
def three_fits():
    train, held = Generated(40), Generated(20)
    (X, y), (Xv, yv) = train.tensors(), held.tensors()
    loader = torch.utils.data.DataLoader(train, batch_size=7, shuffle=True)
    held_loader = torch.utils.data.DataLoader(held, batch_size=5)
    return {"tensors": _fitted(X, y, eval_set=(Xv, yv)),
            "dataset": _fitted(train, eval_set=(held, None)),
            "loader": _fitted(loader, eval_set=(held_loader, None))}


@pytest.mark.parametrize("source", ["dataset", "loader"])
@pytest.mark.parametrize("call", [
    lambda t: t.predict_curve(),
    lambda t: t.predict_curve("error", return_band=True)["upper"],
    lambda t: np.array([t.predict_time(eps=0.02), t.predict_time(eps=0.05, metric="error")]),
    lambda t: t.predict_curve(on="eval"),
    lambda t: t.predict_curve(relinearize=2),
    lambda t: t.predict_curve(on="eval", refresh_steps=3),
    lambda t: t.predict_curve(refresh_steps=3),
    lambda t: t.predict_curve(weight_decay=0.05, on="eval"),
    lambda t: np.array([t.linearity_score_, t.kernel_lambda_ratio_, t.stability_ratio_]),
], ids=["curve", "error-band", "T_eps", "eval", "relinearize", "eval-refresh", "refresh",
        "weight-decay", "trust"])
def test_streamed_equals_collated(three_fits, source, call):
    ref, got = call(three_fits["tensors"]), call(three_fits[source])
    assert_allclose(got, ref, rtol=RTOL, atol=1e-12)


def test_the_fit_keeps_the_dataset_not_its_samples(three_fits):
    from sktt.gradients._streaming import DatasetInputs

    for source in ("dataset", "loader"):
        inputs = three_fits[source]._trust_state["inputs"]
        assert isinstance(inputs, DatasetInputs) and len(inputs) == 40
        assert str(three_fits[source].trust_) == str(three_fits["tensors"].trust_)


def _streamed_fit(n):
    data = Generated(n, shape=(1, 6, 6), dtype=np.float32)
    loader = torch.utils.data.DataLoader(data, batch_size=1000, collate_fn=data.collate)
    ttp = TrainingTimePredictor(tiny_cnn(dtype=torch.float32), lr=0.1, n_steps=30,
                                batch_size=16, projection="countsketch", projection_dim=64,
                                ntk="factored", chunk_size=32, random_state=0)
    ttp.fit(loader)
    ttp.predict_curve(weight_decay=0.01)  # a J·w0 pass over the data set
    return data, ttp


def test_fit_never_holds_more_than_a_chunk():
    peaks = []
    for n in (600, 1500):
        data, ttp = _streamed_fit(n)
        assert data.alive == 0  # the fitted estimator holds no sample
        peaks.append(data.peak)
    # the chunks in flight, the same for 600 and 1 500 samples: 256 samples (outputs at w0,
    # the Jacobian operator) being collated -- the items and their batch -- while the
    # previous chunk is in use
    assert peaks[0] == peaks[1] <= 3 * 256, peaks


def test_verbose_shows_the_passes_over_a_dataset(capsys):
    TrainingTimePredictor(tiny_cnn(), n_steps=5, projection="countsketch", projection_dim=32,
                          trust_check=False, verbose=1).fit(Generated(40))
    err = capsys.readouterr().err
    assert "Reading X: 100%" in err and "40/40" in err and "sample/s" in err
    assert "Jacobian rows: 100%" in err


def test_fit_does_not_change_the_dataset():
    X = torch.randn(30, 1, 6, 6, dtype=torch.float64)
    y = torch.arange(30) % 3
    versions = (X._version, y._version)
    copy = X.clone()

    class Held(torch.utils.data.Dataset):
        def __len__(self):
            return 30

        def __getitem__(self, i):
            return X[i], y[i]

    ds = Held()
    _fitted(ds).predict_curve(refresh_steps=2)
    assert torch.equal(X, copy) and (X._version, y._version) == versions
    assert vars(ds) == {}


def _kw_items(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 9, (n,), generator=g)
    return [({"input_ids": torch.randint(1, 20, (int(k),), generator=g),
              "attention_mask": torch.ones(int(k), dtype=torch.long)}, i % 3)
            for i, k in enumerate(lengths)]


class Items(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def pad(items):
    """A tokenizer-style collate_fn: pad every batch to its own longest sequence."""
    width = max(len(x["input_ids"]) for x, _ in items)
    out = {k: torch.zeros(len(items), width, dtype=torch.long) for k in items[0][0]}
    for i, (x, _) in enumerate(items):
        for k, v in x.items():
            out[k][i, :len(v)] = v
    return out, torch.tensor([label for _, label in items])


def test_keyword_items_with_a_padding_collate_fn():
    items = _kw_items(30)
    X, y = pad(items)  # one batch: padded to the longest of all
    kw = dict(lr=0.5, n_steps=10, batch_size=6, random_state=0, chunk_size=4)
    make = lambda: KeywordNet().double()  # noqa: E731
    torch.manual_seed(0)
    ref = TrainingTimePredictor(make(), **kw).fit(X, y)
    torch.manual_seed(0)
    got = TrainingTimePredictor(make(), **kw).fit(
        torch.utils.data.DataLoader(Items(items), batch_size=4, collate_fn=pad))
    assert_allclose(got.predict_curve(), ref.predict_curve(), rtol=RTOL)
    assert_allclose(got.predict_curve(relinearize=2), ref.predict_curve(relinearize=2),
                    rtol=1e-9)
    assert got.predict_time(eps=0.01) == ref.predict_time(eps=0.01)


class Halved:
    """A per-item collate_fn (module level: the fitted predictor pickles with it)."""

    def __call__(self, item):
        x, label = item
        return torch.as_tensor(x) / 2, label


def test_an_unbatched_loader_converts_each_item_with_its_collate_fn():
    # batch_size=None: the loader's collate_fn converts single items; what it yields is
    # the data, not the dataset's raw items (which are twice as large here)
    data = Generated(24)
    X, y = data.tensors()
    twice = torch.utils.data.TensorDataset(2 * X, y)
    loader = torch.utils.data.DataLoader(twice, batch_size=None, collate_fn=Halved())
    assert torch.equal(next(iter(loader))[0], X[0])
    ref, got = _fitted(X, y), _fitted(loader)
    assert_allclose(got.predict_curve(), ref.predict_curve(), rtol=RTOL)
    back = pickle.loads(pickle.dumps(got))
    assert_allclose(back.predict_curve(refresh_steps=2), ref.predict_curve(refresh_steps=2),
                    rtol=RTOL)
    # the default (no collate_fn) converts as the batched default does
    plain = _fitted(torch.utils.data.DataLoader(data, batch_size=None))
    assert_allclose(plain.predict_curve(), ref.predict_curve(), rtol=RTOL)


def to_pairs(items):
    """A collate_fn that makes (x, y) batches of dict items (as a tokenised dataset has)."""
    return (torch.stack([torch.as_tensor(item["pixels"]) for item in items]),
            torch.tensor([item["label"] for item in items]))


def test_a_loader_whose_collate_fn_makes_the_pairs_from_dict_items():
    data = Generated(24)
    X, y = data.tensors()
    items = Items([{"pixels": X[i], "label": int(y[i])} for i in range(24)])
    loader = torch.utils.data.DataLoader(items, batch_size=5, collate_fn=to_pairs)
    ref, got = _fitted(X, y), _fitted(loader)
    assert_allclose(got.predict_curve(), ref.predict_curve(), rtol=RTOL)
    assert_allclose(got.predict_curve(refresh_steps=2), ref.predict_curve(refresh_steps=2),
                    rtol=RTOL)
    # the same items with the default collate_fn are not pairs: one clear error
    with pytest.raises(ValueError, match=r"X is a DataLoader whose item 0 is dict; accepted: "
                                         r"\(x, y\) pairs"):
        as_inputs(torch.utils.data.DataLoader(items, batch_size=5), None,
                  float_dtype=torch.float64)
    with pytest.raises(ValueError, match=r"X is a DataLoader whose collate_fn returned dict; "
                                         r"accepted: \(x, y\) pairs"):
        as_inputs(torch.utils.data.DataLoader(items, batch_size=5, collate_fn=lambda b: {"x": b}),
                  None, float_dtype=torch.float64)


def test_a_transformers_classifier_from_a_dataloader():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=20, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=16, num_labels=3)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).double().eval()
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("classifier") or "layer.0.output" in name)
    items = _kw_items(16, seed=1)
    kw = dict(lr=0.5, n_steps=8, batch_size=4, random_state=0, chunk_size=4,
              trust_check=False)
    ref = TrainingTimePredictor(model, **kw).fit(*pad(items))
    got = TrainingTimePredictor(model, **kw).fit(
        torch.utils.data.DataLoader(Items(items), batch_size=4, collate_fn=pad))
    assert_allclose(got.predict_curve(), ref.predict_curve(), rtol=1e-9)


def test_real_training_from_a_dataset():
    data = Generated(24)
    X, y = data.tensors()
    model = tiny_cnn()
    ref = run_real_training(model, X, y, lr=0.3, n_steps=6, batch_size=5)
    got = run_real_training(model, data, None, lr=0.3, n_steps=6, batch_size=5)
    assert_allclose(got.loss, ref.loss, rtol=1e-12)
    assert data.alive == 0


def test_compare_with_real_from_a_dataset(three_fits):
    train = Generated(40)
    X, y = train.tensors()
    runs = [compare_with_real(three_fits["dataset"], data, target, eps=0.02, n_steps=4)
            for data, target in ((train, None), (X, y))]
    assert_allclose(runs[0].real_runs[0].loss, runs[1].real_runs[0].loss, rtol=1e-12)
    assert_allclose(runs[0].real_runs[0].eval_loss, runs[1].real_runs[0].eval_loss, rtol=1e-12)


def test_a_fitted_streamed_predictor_pickles():
    ttp = _fitted(Generated(24))
    back = pickle.loads(pickle.dumps(ttp))
    assert_allclose(back.predict_curve(relinearize=2), ttp.predict_curve(relinearize=2),
                    rtol=RTOL)


class Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        return iter([(torch.zeros(3), 0)] * 4)


class NoLen(torch.utils.data.Dataset):
    def __getitem__(self, i):
        return torch.zeros(3), 0


class Shifting(Generated):
    """Item 256 on: two positional inputs instead of one."""

    def __getitem__(self, i):
        x, label = super().__getitem__(i)
        return ((x, x) if i >= 256 else x), label


class WithNaN(Generated):
    def __getitem__(self, i):
        x, label = super().__getitem__(i)
        return (x * np.nan if i == 300 else x), label


@pytest.mark.parametrize("X, y, exc, pattern", [
    (Stream(), None, TypeError,
     r"X is a Stream, an IterableDataset: it has no random access.*accepted: a map-style"),
    (torch.utils.data.DataLoader(Stream(), batch_size=2), None, TypeError,
     r"X is a DataLoader over a Stream, an IterableDataset.*accepted: a map-style"),
    (NoLen(), None, TypeError, r"X is a NoLen without __len__; accepted: a map-style"),
    (Generated(8), np.zeros(8), ValueError,
     r"y must be None when X is a Dataset \(its items are \(x, y\) pairs: y would be given "
     r"twice\)"),
    (torch.utils.data.DataLoader(Generated(8)), np.zeros(8), ValueError,
     r"y must be None when X is a DataLoader .*given twice"),
    (Items([torch.zeros(3)] * 4), None, ValueError,
     r"X is a Dataset whose item 0 is Tensor; accepted: \(x, y\) pairs"),
    (Items([(torch.zeros(3), 0, 1)] * 4), None, ValueError,
     r"item 0 is tuple of length 3; accepted: \(x, y\) pairs"),
    (Items([({1, 2}, 0)] * 4), None, TypeError,
     r"X is a Dataset whose items 0..3 cannot be batched by its collate_fn: .*set"),
    (Shifting(400), None, ValueError,
     r"items \(samples 256..399\) hold different inputs \(2 positional.*than sample 0 "
     r"\(1 positional"),
    (WithNaN(400), None, ValueError, r"X contains NaN or inf \(samples 256..399\)"),
    (torch.utils.data.DataLoader(Generated(8), sampler=torch.utils.data.SubsetRandomSampler(
        [0, 1])), None, ValueError,
     r"DataLoader with a SubsetRandomSampler.*accepted: the default sampler.*Subset"),
    (Items([]), None, ValueError, r"X is empty \(0 samples\)"),
])
def test_clear_errors(X, y, exc, pattern):
    with pytest.raises(exc, match=pattern):
        as_inputs(X, y, float_dtype=torch.float64)


def test_an_eval_set_without_targets_needs_a_dataset():
    X, y = Generated(20).tensors()
    with pytest.raises(ValueError, match=r"y_val are required \(None only when X_val is a "
                                         r"Dataset"):
        _fitted(X, y, eval_set=(X, None))
