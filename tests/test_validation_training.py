"""Tests for sktt.validation: DataLoader batches and real SGD training."""

import random

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from torch import nn

from sktt.datasets import load_demo
from sktt.validation import RealTrainingResult, dataloader_batches, run_real_training

torch.set_num_threads(1)


def _iterate_dataloader(n, b, n_steps, seed, drop_last):
    gen = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        range(n), batch_size=b, shuffle=True, drop_last=drop_last, generator=gen
    )
    out = []
    while len(out) < n_steps:
        for batch in loader:
            out.append(batch.numpy())
            if len(out) == n_steps:
                break
    return out


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("n, b", [(23, 5), (20, 4), (7, 6), (10, 1)])
def test_dataloader_batches_match_dataloader(n, b, drop_last):
    n_steps = 3 * (n // b) + 2  # several epochs, ending mid-epoch
    expected = _iterate_dataloader(n, b, n_steps, seed=3, drop_last=drop_last)
    got = dataloader_batches(n, b, n_steps, seed=3, drop_last=drop_last)
    assert len(got) == n_steps
    for g, e in zip(got, expected):
        assert g.dtype == np.int64
        assert_array_equal(g, e)


def test_dataloader_batches_generator_and_full_batch():
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = dataloader_batches(11, 3, 9, generator=g1)
    b = dataloader_batches(11, 3, 9, seed=5)
    for u, v in zip(a, b):
        assert_array_equal(u, v)
    assert not torch.equal(g1.get_state(), g2.get_state())  # it was advanced
    full = dataloader_batches(11, 11, 4, seed=0)
    assert len(full) == 4
    for batch in full:
        assert_array_equal(batch, np.arange(11))
    with pytest.raises(ValueError, match="seed or generator"):
        dataloader_batches(11, 3, 2, seed=0, generator=g2)
    with pytest.raises(ValueError, match="batch_size"):
        dataloader_batches(11, 0, 2, seed=0)


def _tiny_model(dtype=torch.float64):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


def _tiny_data(n=40):
    rng = np.random.default_rng(0)
    X = torch.as_tensor(rng.standard_normal((n, 6)))
    y = torch.as_tensor(rng.integers(0, 3, n))
    return X, y


def _hand_loop(model, X, targets, labels, loss_fn, lr, momentum, batches):
    net = _tiny_model()
    net.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)

    def record():
        with torch.no_grad():
            out = net(X)
            return float(loss_fn(out, targets)), 100 * float(
                (out.argmax(1) != labels).double().mean())

    curve = [record()]
    for idx in batches:
        idx = torch.as_tensor(idx)
        opt.zero_grad()
        loss_fn(net(X[idx]), targets[idx]).backward()
        opt.step()
        curve.append(record())
    return np.array(curve)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize("batch_size, momentum", [(None, 0.0), (7, 0.9), (7, 0.0)])
def test_run_real_training_matches_hand_loop(loss, batch_size, momentum):
    model = _tiny_model()
    X, y = _tiny_data()
    if loss == "mse":
        targets = nn.functional.one_hot(y, 3).double()
        loss_fn, labels = nn.functional.mse_loss, y
    else:
        targets, loss_fn, labels = y, nn.functional.cross_entropy, y
    res = run_real_training(
        model, X, targets, loss=loss, lr=0.05, momentum=momentum,
        batch_size=batch_size, n_steps=12, seed=1,
    )
    assert isinstance(res, RealTrainingResult)
    assert res.loss.shape == res.error.shape == (13,)
    assert res.loss.dtype == res.error.dtype == np.float64
    assert len(res.batches) == 12
    expected_batches = dataloader_batches(40, batch_size or 40, 12, seed=1)
    for g, e in zip(res.batches, expected_batches):
        assert_array_equal(g, e)
    curve = _hand_loop(model, X, targets, labels, loss_fn, 0.05, momentum,
                       res.batches)
    assert_allclose(res.loss, curve[:, 0], rtol=1e-12)
    assert_allclose(res.error, curve[:, 1], rtol=1e-12)
    assert res.seconds_per_step > 0


def test_run_real_training_explicit_batches_and_numpy_inputs():
    model = _tiny_model()
    X, y = _tiny_data()
    batches = [np.array([0, 5, 9]), np.array([1, 2]), np.array([3, 4, 39])]
    a = run_real_training(model, X, y, lr=0.1, batches=batches)
    b = run_real_training(model, X.numpy(), y.numpy(), lr=0.1, n_steps=3,
                          batches=batches + [np.array([7])])
    assert_allclose(a.loss, b.loss, rtol=1e-12)
    assert a.loss.shape == (4,)
    with pytest.raises(ValueError, match="n_steps"):
        run_real_training(model, X, y, lr=0.1)
    with pytest.raises(ValueError, match="fewer than"):
        run_real_training(model, X, y, lr=0.1, batches=batches, n_steps=5)
    with pytest.raises(ValueError, match="loss"):
        run_real_training(model, X, y, loss="hinge", lr=0.1, n_steps=1)
    with pytest.raises(ValueError, match="shape"):
        run_real_training(model, X, y, loss="mse", lr=0.1, n_steps=1)


def test_only_trainable_params_change():
    model = _tiny_model()
    model[0].weight.requires_grad_(False)
    X, y = _tiny_data()
    res = run_real_training(model, X, y, lr=0.1, n_steps=3)
    # Hand loop over the head only reproduces it.
    net = _tiny_model()
    net.load_state_dict(model.state_dict())
    params = [p for n, p in net.named_parameters() if n != "0.weight"]
    opt = torch.optim.SGD(params, lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(net(X), y).backward()
        opt.step()
    with torch.no_grad():
        final = float(nn.functional.cross_entropy(net(X), y))
    assert_allclose(res.loss[-1], final, rtol=1e-12)


def test_user_model_left_untouched():
    model = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.5), nn.BatchNorm1d(8),
                          nn.ReLU(), nn.Linear(8, 3)).double()
    model[0].bias.requires_grad_(False)
    model.train()
    model[2].eval()  # mixed modes must survive
    X, y = _tiny_data()
    nn.functional.cross_entropy(model(X), y).backward()  # leave some .grad
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters()
             if p.grad is not None}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = [m.training for m in model.modules()]
    torch.manual_seed(123)
    rng = torch.get_rng_state()

    for train_mode in (False, True):
        res = run_real_training(model, X, y, lr=0.5, momentum=0.9, batch_size=8,
                                n_steps=5, train_mode=train_mode)
        assert res.loss[-1] != res.loss[0]  # the copy did train

    assert torch.equal(torch.get_rng_state(), rng)
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    for n, p in model.named_parameters():
        assert p.requires_grad == flags[n]
        if n in grads:
            assert torch.equal(p.grad, grads[n])
        else:
            assert p.grad is None
    assert [m.training for m in model.modules()] == modes


def test_demo_loss_decreases():
    demo = load_demo(n_samples=60)
    res = run_real_training(demo.model, demo.X, demo.y, lr=0.05, batch_size=20,
                            n_steps=6, seed=0)
    assert np.all(np.isfinite(res.loss))
    assert res.loss[-1] < res.loss[0]
    assert np.all((res.error >= 0) & (res.error <= 100))


def test_scalar_regression_head_takes_1d_targets_as_fit_does():
    """A one-output model (``num_labels=1``) with MSE: fit takes ``y`` of shape (N,) as
    (N, 1); the real training and the step timing refused it ("needs float targets of shape
    (N, 1)"), so compare_with_real's reference run could not be reproduced by hand."""
    from sktt.validation import measure_step_time

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    X = torch.randn(16, 4, dtype=torch.float64)
    y = torch.randn(16, dtype=torch.float64)
    flat = run_real_training(model, X, y, loss="mse", lr=0.1, n_steps=5,
                             eval_set=(X[:4], y[:4]))
    column = run_real_training(model, X, y[:, None], loss="mse", lr=0.1, n_steps=5,
                               eval_set=(X[:4], y[:4, None]))
    assert_allclose(flat.loss, column.loss, rtol=1e-14)
    assert_allclose(flat.eval_loss, column.eval_loss, rtol=1e-14)
    assert measure_step_time(model, X, y, batch_size=4, loss="mse", n_repeats=1) > 0


class _RandomInTrainMode(nn.Module):
    """Draws from numpy and python ``random`` in train mode, as transformers' SpecAugment
    (Wav2Vec2, Whisper) and LayerDrop do, and from torch's generator (dropout)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 3).double()
        self.drop = nn.Dropout(0.2)

    def forward(self, x):
        if self.training:
            np.random.rand()  # noqa: NPY002 - the global state is the subject
            random.random()
        return self.lin(self.drop(x))


def test_train_mode_steps_leave_every_global_rng_alone():
    # only the torch CPU state was restored: a train-mode run advanced numpy's and python's
    # global generators (and, on a GPU, the CUDA one) of the user's process
    from sktt import TrainingTimePredictor
    from sktt.validation import compare_with_real

    model = _RandomInTrainMode()
    X = torch.randn(12, 4, dtype=torch.float64)
    y = torch.arange(12) % 3
    ttp = TrainingTimePredictor(model, lr=0.1, n_steps=3, random_state=0,
                                trust_check=False).fit(X, y)
    np.random.seed(1)  # noqa: NPY002
    random.seed(1)
    before = (torch.get_rng_state(), np.random.get_state()[1].copy(),  # noqa: NPY002
              random.getstate())
    run_real_training(model, X, y, lr=0.1, n_steps=3, batch_size=4, train_mode=True)
    compare_with_real(ttp, X, y, eps=[0.01], train_mode=True)
    assert torch.equal(torch.get_rng_state(), before[0])
    assert np.array_equal(np.random.get_state()[1], before[1])  # noqa: NPY002
    assert random.getstate() == before[2]
