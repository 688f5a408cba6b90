"""The layer-wise fast path gives the reference (torch.func) Θ for every supported layer.

Reference: ``jacobian_method="functorch"`` (``vmap`` of whole-model vector-Jacobian
products), itself checked against a brute-force ``autograd.grad`` loop in
``test_ntk.py``. Models are float64 so the paths must agree to 1e-10.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numpy.testing import assert_allclose
from torch import nn

import sktt.gradients._layerwise_plan as layerwise_plan
import sktt.gradients._sketch as sketch
from sktt import TrainingTimePredictor
from sktt.datasets._models import _BasicBlock
from sktt.exceptions import MemoryBudgetError
from sktt.gradients import ntk_from_model, resolve_layerwise_plan

BUDGET = 2**30


def _names(model):
    return [n for n, p in model.named_parameters() if p.requires_grad]


def _ntk(model, X, n_out, method, **kw):
    kw.setdefault("max_memory", BUDGET)
    return ntk_from_model(model, X, _names(model), n_outputs=n_out, jacobian_method=method,
                          **kw)[0]


def _assert_same(fast, ref, rtol=1e-10):
    assert_allclose(fast, ref, rtol=rtol, atol=rtol * np.abs(ref).max())


def _check(model, X, n_out, *, fallback=(), **kw):
    """Fast path == reference, and the plan covers exactly the expected parameters."""
    model = model.double().eval()
    plan = resolve_layerwise_plan(model, X, _names(model), "layerwise")
    assert plan is not None
    assert sorted(plan.fallback) == sorted(fallback), plan.reason
    fast = _ntk(model, X, n_out, "layerwise", **kw)
    ref = _ntk(model, X, n_out, "functorch", **kw)
    _assert_same(fast, ref)
    return fast


def _randomise_norms(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            for name in ("weight", "bias", "running_mean", "running_var"):
                t = getattr(m, name, None)
                if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm,
                                  nn.modules.instancenorm._InstanceNorm)) and t is not None:
                    low = 0.5 if name in ("weight", "running_var") else -0.5
                    t.copy_(low + torch.rand(t.shape, generator=g, dtype=t.dtype))
    return model


# ----------------------------------------------------------------------------- layers
class SequenceMLP(nn.Module):
    """Linear layers on (n, T, features): per-sample gradients sum over positions."""

    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(4, 6)
        self.l2 = nn.Linear(6, 5, bias=False)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        h = self.l2(torch.tanh(self.l1(x)))
        return self.head(torch.tanh(h).mean(1))


class Conv1dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(2, 4, 3, stride=2, padding=2, dilation=2, padding_mode="circular")
        self.c2 = nn.Conv1d(4, 4, 2, padding="same", groups=2, bias=False)
        self.c3 = nn.Conv1d(4, 3, 3, padding=1, padding_mode="reflect")
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        h = torch.relu(self.c1(x))
        h = torch.tanh(self.c2(h))
        return self.fc(self.c3(h).mean(-1))


class Conv2dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1, groups=4, padding_mode="replicate")
        self.c3 = nn.Conv2d(4, 6, (2, 3), padding="same", dilation=(1, 2), bias=False)
        self.c4 = nn.Conv2d(6, 5, 1, stride=(1, 2))
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        h = torch.relu(self.c1(x))
        h = torch.tanh(self.c2(h))
        h = torch.tanh(self.c3(h))
        return self.fc(self.c4(h).mean((2, 3)))


class NormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.gn = nn.GroupNorm(2, 6)
        self.inorm = nn.InstanceNorm2d(6, affine=True)
        self.fc = nn.Linear(6, 4)
        self.bn1d = nn.BatchNorm1d(4)
        self.ln = nn.LayerNorm(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.tanh(self.inorm(self.gn(self.bn(self.conv(x)))))
        h = self.ln(self.bn1d(self.fc(h.mean((2, 3)))))
        return self.head(torch.tanh(h))


class TextNet(nn.Module):
    """Embedding with a padding index, LayerNorm and RMSNorm over a sequence."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 6, padding_idx=0)
        self.ln = nn.LayerNorm(6)
        self.rms = nn.RMSNorm(6)
        self.out = nn.Linear(6, 4)

    def forward(self, idx):
        return self.out(self.rms(self.ln(self.emb(idx))).mean(1))


def _images(n, c, h, w=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, h, h if w is None else w, generator=g, dtype=torch.float64)


def _tokens(n=6, length=5, seed=0):
    idx = torch.randint(0, 11, (n, length), generator=torch.Generator().manual_seed(seed))
    idx[0, :2] = 0  # padding positions get no gradient
    return idx


def test_linear_on_sequences():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    _check(SequenceMLP(), torch.randn(6, 7, 4, generator=g, dtype=torch.float64), 3)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_conv1d_stride_padding_modes_dilation_groups_same():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    _check(Conv1dNet(), torch.randn(6, 2, 11, generator=g, dtype=torch.float64), 2)


def test_conv2d_stride_groups_replicate_same_even_kernel_rectangular():
    torch.manual_seed(0)
    _check(Conv2dNet(), _images(6, 3, 8, 9), 3)


def test_batchnorm_groupnorm_instancenorm_layernorm_affine_parameters():
    torch.manual_seed(0)
    _check(_randomise_norms(NormNet()), _images(6, 2, 5), 3)


def test_embedding_with_padding_index_layernorm_rmsnorm():
    torch.manual_seed(0)
    _check(_randomise_norms(TextNet()), _tokens(), 4)


def test_frozen_parameters_are_left_out():
    torch.manual_seed(0)
    model = Conv2dNet()
    model.c1.weight.requires_grad_(False)
    model.c3.requires_grad_(False)
    ntk = _check(model, _images(5, 3, 8), 3)
    full = _ntk(Conv2dNet().double().eval(), _images(5, 3, 8), 3, "functorch")
    assert not np.allclose(ntk, full)  # the frozen parameters really are out


class TiedNet(nn.Module):
    """An embedding tied to the output layer (language-model style) and a layer used twice."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 6)
        self.mix = nn.Linear(6, 6)
        self.decoder = nn.Linear(6, 11, bias=False)
        self.decoder.weight = self.emb.weight
        self.out = nn.Linear(11, 3)

    def forward(self, idx):
        h = torch.tanh(self.mix(torch.tanh(self.mix(self.emb(idx)))))  # mix called twice
        return self.out(self.decoder(h).mean(1))


def test_weight_tied_parameters_sum_their_uses_per_sample():
    torch.manual_seed(0)
    model = TiedNet()
    ntk = _check(model, _tokens(seed=3), 3)
    # Reference without tying by hand: a separate copy of the weight gives another Θ.
    untied = TiedNet().double().eval()
    untied.load_state_dict(model.state_dict())
    untied.decoder.weight = nn.Parameter(model.emb.weight.detach().clone())
    assert not np.allclose(_ntk(untied, _tokens(seed=3), 3, "functorch"), ntk)


@pytest.mark.parametrize("projection", ["countsketch", "tensorsketch"])
def test_weight_tied_parameters_projected(projection):
    torch.manual_seed(0)
    _check(TiedNet(), _tokens(seed=3), 3, projection=projection, projection_dim=48, seed=2)


def test_residual_block_with_batchnorm_and_inplace_relu():
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3, padding=1)
            self.block = _BasicBlock(4, 8, stride=2)
            self.same = _BasicBlock(8, 8)
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            return self.fc(self.same(self.block(torch.relu(self.stem(x)))).mean((2, 3)))

    model = _randomise_norms(Net())
    _check(model, _images(5, 3, 6), 3)
    plan = resolve_layerwise_plan(model.double().eval(), _images(5, 3, 6), _names(model), "auto")
    assert plan.clone_outputs  # the in-place ReLU after BatchNorm was detected


class Scale(nn.Module):
    """A module without a rule: its parameter falls back to torch.func."""

    def __init__(self, n):
        super().__init__()
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, n))

    def forward(self, x):
        return x * self.gain


class MixedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(4, 5)
        self.scale = Scale(5)
        self.l2 = nn.Linear(5, 5)
        self.latent = nn.Parameter(torch.randn(3, 5))
        self.query = nn.Linear(5, 5)  # called on a tensor whose first axis is not the samples
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        h = torch.tanh(self.scale(self.l1(x)))
        h = h + F.linear(h, self.l2.weight)  # l2.weight also used outside its module
        h = torch.tanh(self.l2(h)) + self.query(self.latent).sum(0)
        return self.head(h)


def test_mixed_model_falls_back_per_parameter():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    X = torch.randn(7, 4, generator=g, dtype=torch.float64)
    expected = ["scale.gain", "l2.weight", "latent", "query.weight", "query.bias"]
    _check(MixedNet(), X, 3, fallback=expected)
    _check(MixedNet(), X, 3, fallback=expected, projection="tensorsketch", projection_dim=32,
           seed=0)


class BatchCentred(nn.Module):
    """Mixes samples in eval mode: outputs depend on the other samples of the batch."""

    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(4, 3)

    def forward(self, x):
        h = self.l1(x)
        return h - 0.5 * h.mean(0, keepdim=True)


def test_model_mixing_samples_uses_the_reference_or_raises():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(5, 4, generator=g, dtype=torch.float64)
    model = BatchCentred().double().eval()
    assert resolve_layerwise_plan(model, X, _names(model), "auto") is None
    _assert_same(_ntk(model, X, 3, "auto"), _ntk(model, X, 3, "functorch"), rtol=1e-15)
    with pytest.raises(ValueError, match="jacobian_method='layerwise' cannot be used.*"
                                         "batch statistics"):
        _ntk(model, X, 3, "layerwise")
    with pytest.raises(ValueError, match=r"jacobian_method='vjp' is invalid; accepted: 'auto'"):
        _ntk(model, X, 3, "vjp")


# ----------------------------------------------------------------------------- exact Gram
@pytest.mark.parametrize("mode", ["dense", "factored"])
def test_exact_gram_from_factors_equals_gram_of_gradients(monkeypatch, mode):
    """Both exact modes (J Jᵀ of formed gradients, and the factor Gram) give Θ."""
    torch.manual_seed(0)
    model = TiedNet().double().eval()
    X = _tokens(seed=5)
    ref = _ntk(model, X, 3, "functorch")
    monkeypatch.setattr(layerwise_plan, "exact_mode",
                        lambda plan, name, n, c: mode if plan.factorable(name) else "dense")
    monkeypatch.setattr("sktt.gradients._extraction.exact_mode", layerwise_plan.exact_mode)
    _assert_same(_ntk(model, X, 3, "layerwise"), ref)
    conv = Conv2dNet().double().eval()
    _assert_same(_ntk(conv, _images(5, 3, 8), 3, "layerwise"),
                 _ntk(conv, _images(5, 3, 8), 3, "functorch"))


def test_exact_under_small_budget_groups_parameters_and_tiles_the_gram():
    torch.manual_seed(0)
    model = Conv2dNet().double().eval()
    X = _images(6, 3, 8)
    ref = _ntk(model, X, 3, "functorch")
    n_rows = 18
    budget = n_rows**2 * 8 + 40_000  # forces several groups and small Gram tiles
    _assert_same(_ntk(model, X, 3, "layerwise", max_memory=budget, chunk_size=2), ref)
    with pytest.raises(MemoryBudgetError, match="projection='tensorsketch'"):
        _ntk(model, X, 3, "layerwise", max_memory=n_rows**2 * 8 + 500)


# ----------------------------------------------------------------------------- projections
@pytest.mark.parametrize("projection", ["countsketch", "tensorsketch", "gaussian", "achlioptas"])
def test_projected_fast_path_uses_the_same_projection(projection):
    """Same random_state -> the same projected Θ from both paths (up to round-off)."""
    torch.manual_seed(0)
    _check(_randomise_norms(NormNet()), _images(6, 2, 5), 3, projection=projection,
           projection_dim=64, seed=11)


@pytest.mark.parametrize("fft", [True, False])
def test_tensorsketch_by_fft_equals_sketch_of_formed_gradients(monkeypatch, fft):
    calls = []

    def forced(plan, name, n_outputs, dim):
        calls.append(name)
        return plan.sketchable(name) and fft

    monkeypatch.setattr(sketch, "fft_is_cheaper", forced)
    torch.manual_seed(0)
    for model, X in [(Conv2dNet(), _images(5, 3, 8)), (Conv1dNet(), _images(5, 2, 11)[:, :, 0]),
                     (SequenceMLP(), _images(5, 7, 4)[..., 0])]:
        n_out = 2 if isinstance(model, Conv1dNet) else 3
        _check(model, X, n_out, projection="tensorsketch", projection_dim=40, seed=4)
    assert "c1.weight" in calls and "l1.weight" in calls  # the switch was used


def test_same_random_state_same_fast_ntk_for_any_n_jobs_and_chunking():
    torch.manual_seed(0)
    model = _randomise_norms(NormNet()).double().eval()
    X = _images(8, 2, 5)
    for projection in (None, "tensorsketch"):
        kw = dict(projection=projection, projection_dim=32, seed=7)
        ref = _ntk(model, X, 3, "layerwise", n_jobs=1, chunk_size=8, **kw)
        for n_jobs, chunk in [(1, 3), (2, 5)]:
            other = _ntk(model, X, 3, "layerwise", n_jobs=n_jobs, chunk_size=chunk, **kw)
            _assert_same(other, ref, rtol=1e-12)


def test_tensorsketch_is_unbiased_and_as_accurate_as_countsketch():
    torch.manual_seed(0)
    model = Conv2dNet().double().eval()
    X = _images(8, 3, 8)
    exact = _ntk(model, X, 3, "layerwise")
    norm = np.linalg.norm(exact)

    def err(kind, dim, seeds):
        draws = [_ntk(model, X, 3, "layerwise", projection=kind, projection_dim=dim, seed=s)
                 for s in seeds]
        single = np.mean([np.linalg.norm(d - exact) / norm for d in draws])
        return single, np.linalg.norm(np.mean(draws, axis=0) - exact) / norm

    single, mean_err = err("tensorsketch", 64, range(40))
    assert mean_err < single / 3  # ~ single / sqrt(40) for an unbiased estimator
    cs_single, _ = err("countsketch", 64, range(40))
    assert 0.6 < single / cs_single < 1.6
    e32, _ = err("tensorsketch", 32, range(8))
    e512, _ = err("tensorsketch", 512, range(8))
    assert 2.5 < e32 / e512 < 6.5  # ~ 1/sqrt(D0)


# ----------------------------------------------------------------------------- estimator
def test_predictor_parameter_and_model_left_untouched(cnn_problem):
    model, X, y = cnn_problem
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    fast = TrainingTimePredictor(model, jacobian_method="layerwise", trust_check=False).fit(X, y)
    ref = TrainingTimePredictor(model, jacobian_method="functorch", trust_check=False).fit(X, y)
    _assert_same(fast.ntk_, ref.ntk_)
    assert model.training
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks for m in model.modules())  # hooks removed
    with pytest.raises(ValueError, match="jacobian_method"):
        TrainingTimePredictor(model, jacobian_method="fast").fit(X, y)


def test_float32_model_matches_reference_to_float32_round_off():
    torch.manual_seed(0)
    model = _randomise_norms(NormNet()).float().eval()
    X = _images(6, 2, 5).float()
    fast = ntk_from_model(model, X, _names(model), n_outputs=3, max_memory=BUDGET)[0]
    ref = ntk_from_model(model, X, _names(model), n_outputs=3, max_memory=BUDGET,
                         jacobian_method="functorch")[0]
    assert fast.dtype == np.float64
    _assert_same(fast, ref, rtol=2e-5)


class DeadBranches(nn.Module):
    """A module never called and one whose output does not reach the outputs: zero Jacobian."""

    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(4, 5)
        self.unused = nn.Linear(5, 5)
        self.aux = nn.Linear(5, 2)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        h = torch.tanh(self.l1(x))
        self.aux(h)  # computed, not used
        return self.head(h)


def test_modules_not_called_or_not_reaching_the_output_have_zero_gradients():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(5, 4, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    _check(DeadBranches(), X, 3)
    _check(DeadBranches(), X, 3, projection="tensorsketch", projection_dim=16, seed=1)
