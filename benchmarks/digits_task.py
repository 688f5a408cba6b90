"""A fine-tuning task on scikit-learn's digits, shared by the accuracy benchmarks.

A small MLP (64 inputs, 5 outputs) is pre-trained on digits 0-4, its head is
re-initialised for the new classes, and the fine-tuning data are digits 5-9:
a pre-trained network on a related task, as in fine-tuning, with no download.
"""

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn


def digits_finetuning_task(net, n_samples, seed=0, dtype=torch.float32):
    """Pre-train ``net`` with Adam on digits 0-4 (15 epochs, batches of 64, seeded), give it
    a fresh head, and return ``(net.eval(), X, y)``: ``n_samples`` digits 5-9 (labels 0-4),
    model and inputs in ``dtype``. Seed torch (``torch.manual_seed(seed)``) before building
    ``net`` for a reproducible initialisation."""
    digits = load_digits()
    X = digits.data / 16.0
    X = (X - X.mean(0)) / (X.std(0) + 0.1)
    y = digits.target
    g = torch.Generator().manual_seed(seed)
    seen = y < 5
    Xp, yp = torch.as_tensor(X[seen], dtype=torch.float32), torch.as_tensor(y[seen])
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(15):
        perm = torch.randperm(len(Xp), generator=g)
        for i in range(0, len(Xp), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(net(Xp[idx]), yp[idx]).backward()
            opt.step()
    with torch.no_grad():  # a fresh head for the new classes
        head = net[-1]
        head.weight.copy_(torch.randn(head.weight.shape, generator=g) / head.weight.shape[1] ** 0.5)
        head.bias.zero_()
    idx = np.random.default_rng(seed).choice(np.flatnonzero(~seen), n_samples, replace=False)
    return (net.to(dtype).eval(), torch.as_tensor(X[idx], dtype=dtype),
            torch.as_tensor(y[idx] - 5))
