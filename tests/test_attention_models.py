"""Attention models on the layer-wise path: same Θ as ``torch.func``, no warning flood.

Hand-built transformers (a ViT with ``F.scaled_dot_product_attention``, a ViT
with ``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer`` with a padding
mask, batch first or not) and, when ``transformers`` is installed, a tiny BERT
with random weights.
"""

import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from numpy.testing import assert_allclose
from torch import nn

from sktt.gradients import ntk_from_model, resolve_layerwise_plan

BUDGET = 2**30


class SdpaAttention(nn.Module):
    """timm's ViT attention: one qkv Linear, fused attention, one projection."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class MhaAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x)[0]


class Block(nn.Module):
    def __init__(self, dim, heads, attention):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = attention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    def __init__(self, attention=SdpaAttention, dim=16, heads=2, depth=2, patch=4, image=8,
                 n_outputs=3, tokens=True):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        n_patches = (image // patch) ** 2
        self.tokens = tokens
        if tokens:  # raw parameters, no module: they fall back to torch.func
            self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, dim))
            self.pos_embed = nn.Parameter(0.02 * torch.randn(1, n_patches + 1, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads, attention) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_outputs)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        if self.tokens:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


class TokenEncoder(nn.Module):
    """Embedding + TransformerEncoderLayer with a key padding mask from token 0."""

    def __init__(self, batch_first=True, vocab=11, dim=16, n_outputs=2):
        super().__init__()
        self.batch_first = batch_first
        self.embed = nn.Embedding(vocab, dim)
        self.layer = nn.TransformerEncoderLayer(dim, 2, dim_feedforward=24, dropout=0.1,
                                                batch_first=batch_first)
        self.head = nn.Linear(dim, n_outputs)

    def forward(self, tokens):
        x = self.embed(tokens)
        pad = tokens == 0
        pad[:, 0] = False  # never a fully masked row
        if not self.batch_first:
            x = x.transpose(0, 1)
        h = self.layer(x, src_key_padding_mask=pad)
        if not self.batch_first:
            h = h.transpose(0, 1)
        return self.head(h.mean(1))


def _names(model):
    return [n for n, p in model.named_parameters() if p.requires_grad]


def _ntk(model, X, n_out, method, **kw):
    return ntk_from_model(model, X, _names(model), n_outputs=n_out, max_memory=BUDGET,
                          jacobian_method=method, **kw)[0]


def _same_ntk_few_warnings(model, X, n_out, **kw):
    """Θ layer-wise == Θ functorch (1e-6 relative) and fewer than 5 warnings in both."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ref = _ntk(model, X, n_out, "functorch", **kw)
        fast = _ntk(model, X, n_out, "layerwise", **kw)
    flood = [w for w in caught if "batching rule" in str(w.message)]
    assert len(flood) == 0, str(flood[0].message)
    assert len(caught) < 5, [str(w.message) for w in caught]
    scale = abs(ref).max()
    assert_allclose(fast / scale, ref / scale, atol=1e-6)
    return fast


def _images(n=6):
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("attention", [SdpaAttention, MhaAttention], ids=["sdpa", "mha"])
def test_vit_layerwise_equals_functorch_without_warning_flood(attention):
    torch.manual_seed(0)
    model = TinyViT(attention).eval()
    _same_ntk_few_warnings(model, _images(), 3)
    _same_ntk_few_warnings(model, _images(), 3, projection="tensorsketch", projection_dim=64)


def test_multihead_attention_parameters_are_on_the_fast_path():
    torch.manual_seed(0)
    model = TinyViT(MhaAttention, tokens=False).eval()
    plan = resolve_layerwise_plan(model, _images(), _names(model), "layerwise")
    assert plan.fallback == []
    assert "blocks.0.attn.attn.in_proj_weight" in plan.uses
    assert "blocks.0.attn.attn.out_proj.weight" in plan.uses
    assert plan.factorable("blocks.0.attn.attn.in_proj_weight")


@pytest.mark.parametrize("batch_first", [True, False])
def test_transformer_encoder_layer_with_padding_mask(batch_first):
    torch.manual_seed(0)
    model = TokenEncoder(batch_first).double().eval()
    tokens = torch.randint(0, 11, (6, 7), generator=torch.Generator().manual_seed(2))
    plan = resolve_layerwise_plan(model, tokens, _names(model), "layerwise")
    assert "layer.self_attn.in_proj_weight" in plan.uses
    if batch_first:
        assert plan.fallback == []
    else:  # Linear/LayerNorm on (L, N, E): the samples are not the first axis
        assert "layer.linear1.weight" in plan.fallback
    _same_ntk_few_warnings(model, tokens, 2)


def test_attention_weights_returned_by_the_recomputed_call_are_the_modules():
    """A model that uses the averaged attention weights sees the same values."""

    class UsesWeights(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            y, w = self.attn(x, x, x)  # need_weights=True by default
            return self.head((w @ y).mean(1))

    torch.manual_seed(0)
    model = UsesWeights().double().eval()
    X = torch.randn(5, 4, 8, dtype=torch.float64)
    _same_ntk_few_warnings(model, X, 2)


def test_tiny_bert_layerwise_equals_functorch(monkeypatch):
    try:
        import torchvision  # noqa: F401
    except Exception:  # a broken torchvision install: hide it, BERT does not need it
        monkeypatch.setitem(sys.modules, "torchvision", None)
    transformers = pytest.importorskip("transformers")
    try:
        transformers.BertModel
    except (ImportError, RuntimeError) as exc:
        pytest.skip(f"transformers.BertModel does not import here: {exc}")

    class Bert(nn.Module):
        def __init__(self):
            super().__init__()
            config = transformers.BertConfig(
                vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=32, max_position_embeddings=16, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0)
            self.bert = transformers.BertModel(config, add_pooling_layer=True)
            self.head = nn.Linear(16, 2)

        def forward(self, ids):
            return self.head(self.bert(input_ids=ids).pooler_output)

    torch.manual_seed(0)
    model = Bert().eval()
    ids = torch.randint(1, 50, (5, 8), generator=torch.Generator().manual_seed(3))
    _same_ntk_few_warnings(model, ids, 2)


def test_auto_times_both_paths_only_when_parameters_fall_back(monkeypatch):
    import sktt.gradients._extraction as extraction

    seen = []
    real = extraction._layerwise_is_faster

    def spy(model, names, probe, plan):
        faster = real(model, names, probe, plan)
        seen.append((faster, plan.timing))
        return faster

    monkeypatch.setattr(extraction, "_layerwise_is_faster", spy)
    torch.manual_seed(0)
    model = TinyViT().eval()  # cls_token / pos_embed fall back
    plan = resolve_layerwise_plan(model, _images(), _names(model), "auto")
    [(faster, timing)] = seen
    assert set(timing) == {"layerwise", "functorch"}
    assert (plan is not None) == faster == (timing["layerwise"] <= timing["functorch"])
    seen.clear()
    model = TinyViT(tokens=False).eval()  # everything has a rule: no timing, layer-wise
    assert resolve_layerwise_plan(model, _images(), _names(model), "auto") is not None
    assert seen == []
