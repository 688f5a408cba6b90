"""Seconds per step measured on this machine, and predict_time(unit="seconds")."""

import pickle

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose
from torch import nn

from sktt import TrainingTimePredictor
from sktt.datasets import load_demo
from sktt.exceptions import NotFittedError
from sktt.validation import measure_step_time


def test_step_time_positive_and_grows_with_batch_size():
    demo = load_demo(n_samples=256)
    small = measure_step_time(demo.model, demo.X, demo.y, batch_size=8, n_repeats=7)
    large = measure_step_time(demo.model, demo.X, demo.y, batch_size=256, n_repeats=7)
    assert small > 0 and large > 0
    # 32x the work per step; medians of 7 repeats, so a generous factor is robust to noise.
    assert large > 1.2 * small, (small, large)


def test_step_time_leaves_model_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.5), nn.BatchNorm1d(8), nn.ReLU(),
                          nn.Linear(8, 3)).double()
    model[0].bias.requires_grad_(False)
    model.train()
    model[2].eval()
    X = torch.randn(20, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (20,))
    nn.functional.cross_entropy(model(X), y).backward()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    modes = [m.training for m in model.modules()]
    np.random.seed(1)
    torch.manual_seed(1)
    rng, nrng = torch.get_rng_state(), np.random.get_state()
    seconds = measure_step_time(model, X, y, batch_size=50, momentum=0.9, n_repeats=2)
    assert seconds > 0  # 50 > 20 rows: rows are repeated
    assert torch.equal(torch.get_rng_state(), rng)
    assert np.array_equal(np.random.get_state()[1], nrng[1])
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    for n, p in model.named_parameters():
        assert (p.grad is None) == (grads[n] is None)
        if p.grad is not None:
            assert torch.equal(p.grad, grads[n])
    assert [m.training for m in model.modules()] == modes
    assert model[0].bias.requires_grad is False


def test_step_time_input_checks(linear_problem):
    model, X, y = linear_problem
    with pytest.raises(ValueError, match="batch_size"):
        measure_step_time(model, X, y, batch_size=0)
    with pytest.raises(ValueError, match="loss"):
        measure_step_time(model, X, y, batch_size=4, loss="hinge")
    with pytest.raises(ValueError, match="y is None"):
        measure_step_time(model, X, None, batch_size=4)
    with pytest.raises(ValueError, match="shape"):
        measure_step_time(model, X, y, batch_size=4, loss="mse")
    Y = nn.functional.one_hot(y, 3).double()
    assert measure_step_time(model, X, Y, batch_size=4, loss="mse", n_repeats=1) > 0


def test_predict_time_in_seconds(linear_problem):
    model, X, y = linear_problem
    ttp = TrainingTimePredictor(model, lr=0.2, batch_size=6, n_steps=30,
                                random_state=0).fit(X, y)
    assert ttp.seconds_per_step_ == {}
    with pytest.raises(NotFittedError, match=r"measure_step_time\(X, y, batch_size=6\)"):
        ttp.predict_time(0.01, unit="seconds")
    with pytest.raises(ValueError, match="unit"):
        ttp.predict_time(0.01, unit="minutes")
    assert ttp.measure_step_time(X, batch_size=[6, 24], n_repeats=2) is ttp
    assert set(ttp.seconds_per_step_) == {6, 24}
    assert all(s > 0 for s in ttp.seconds_per_step_.values())
    eps = [0.01, 0.05]
    steps = ttp.predict_time(eps)
    seconds = ttp.predict_time(eps, unit="seconds")
    assert seconds.dtype == np.float64
    assert_allclose(seconds, steps * ttp.seconds_per_step_[6])
    # Full batch (None or N) uses the b = N timing; overrides pick the batch size.
    one = ttp.predict_time(0.01, unit="seconds", batch_size=None)
    assert isinstance(one, float)
    assert_allclose(one, ttp.predict_time(0.01, batch_size=None) * ttp.seconds_per_step_[24])
    with pytest.raises(NotFittedError, match="batch_size=3"):
        ttp.predict_time(0.01, unit="seconds", batch_size=3)
    # The default batch size is the estimator's; timings survive pickling, not a new fit.
    ttp2 = pickle.loads(pickle.dumps(ttp))
    assert ttp2.seconds_per_step_ == ttp.seconds_per_step_
    ttp.fit(X, y)
    assert ttp.seconds_per_step_ == {}
    with pytest.raises(ValueError, match="pass the targets"):
        ttp.measure_step_time(X[:5])
    ttp.measure_step_time(X[:5], y[:5], n_repeats=1)
    assert set(ttp.seconds_per_step_) == {6}


def test_seconds_of_another_optimizer_are_refused(linear_problem):
    # seconds_per_step_ is keyed by batch size: an AdamW prediction in seconds silently
    # multiplied its steps by the SGD step time that measure_step_time had taken
    model, X, y = linear_problem
    ttp = TrainingTimePredictor(model, lr=0.01, batch_size=6, n_steps=10, trust_check=False,
                                random_state=0).fit(X, y)
    ttp.measure_step_time(X, y, n_repeats=1, n_warmup=0)
    ttp.predict_time(0.01, unit="seconds")  # the optimizer it timed
    with pytest.raises(NotFittedError, match=r"batch_size=6 was measured with optimizer='sgd', "
                                             r"not optimizer='adamw'; call set_params"):
        ttp.predict_time(0.01, unit="seconds", optimizer="adamw")
    ttp.set_params(optimizer="adamw").measure_step_time(X, y, n_repeats=1, n_warmup=0)
    assert ttp.predict_time(0.01, unit="seconds") >= 0
    with pytest.raises(NotFittedError, match=r"measured with optimizer='adamw'"):
        ttp.predict_time(0.01, unit="seconds", optimizer="sgd")


class _KeywordHead(nn.Module):
    """A tokenizer-style model: keyword inputs ``input_ids`` and ``attention_mask``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, input_ids, attention_mask):
        mask = attention_mask.unsqueeze(-1).to(self.emb.weight.dtype)
        return self.head((self.emb(input_ids) * mask).sum(1) / mask.sum(1))


def test_measure_step_time_without_y_counts_samples_as_fit_does():
    # len() of a dict is its number of keys and of a DataLoader its number of batches: with
    # y=None both were taken for the number of samples ("X has 2 samples, not the 12 of fit")
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(0, 10, (12, 5), generator=g),
             "attention_mask": torch.ones(12, 5, dtype=torch.long)}
    y = torch.arange(12) % 3
    ttp = TrainingTimePredictor(_KeywordHead(), lr=0.1, n_steps=5, random_state=0,
                                trust_check=False).fit(batch, y)
    ttp.measure_step_time(batch, batch_size=4, n_repeats=1, n_warmup=0)
    assert set(ttp.seconds_per_step_) == {4}
    pairs = [({k: v[i] for k, v in batch.items()}, y[i]) for i in range(12)]
    loader = torch.utils.data.DataLoader(pairs, batch_size=5)
    ttp.measure_step_time(loader, batch_size=6, n_repeats=1, n_warmup=0)
    assert set(ttp.seconds_per_step_) == {4, 6}
    with pytest.raises(ValueError, match="X has 5 samples, not the 12 of fit"):
        ttp.measure_step_time({k: v[:5] for k, v in batch.items()}, batch_size=4)
