"""Test configuration: one torch thread (2 shared cores; oversubscribed tiny convs crawl)
and small reusable models."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


class RandomFeatureHead(torch.nn.Module):
    """Linear in its parameters: a trainable linear head over fixed random features.

    The linearisation of this model is the model itself, so the discrete
    function-space simulation must reproduce real SGD to round-off.
    """

    def __init__(self, n_in=6, n_features=12, n_out=3, seed=0, dtype=torch.float64):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("proj", torch.randn(n_in, n_features, generator=g, dtype=dtype))
        self.head = torch.nn.Linear(n_features, n_out, dtype=dtype)
        with torch.no_grad():
            self.head.weight.copy_(0.3 * torch.randn(n_out, n_features, generator=g, dtype=dtype))
            self.head.bias.copy_(0.1 * torch.randn(n_out, generator=g, dtype=dtype))

    def forward(self, x):
        return self.head(torch.tanh(x @ self.proj))


def tiny_cnn(n_out=3, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3), torch.nn.Tanh(), torch.nn.Flatten(),
        torch.nn.Linear(3 * 4 * 4, 8), torch.nn.ReLU(), torch.nn.Linear(8, n_out),
    ).to(dtype)


@pytest.fixture
def linear_problem():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(24, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (24,), generator=g)
    return RandomFeatureHead(), X, y


@pytest.fixture
def cnn_problem():
    g = torch.Generator().manual_seed(2)
    X = torch.randn(10, 1, 6, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (10,), generator=g)
    return tiny_cnn(), X, y


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# ---- the dynamics engine with the plain (lr, momentum) arguments of the first landing:
# the tests written against those signatures call these, which go through simulate().
def _recipe(**params):
    from sktt.dynamics import TrainingRecipe

    return TrainingRecipe.from_params(params)


def _problem(F0, targets, loss, labels=None):
    from sktt.dynamics import LinearizedProblem

    return LinearizedProblem(np.asarray(F0, dtype=np.float64), np.asarray(targets), loss,
                             labels=labels)


def run_discrete(ntk, F0, targets, *, loss, lr, momentum=0.0, n_steps, batches=None,
                 labels=None, momentum_buffer=None):
    from sktt.dynamics import simulate
    from sktt.gram import DenseKernel

    recipe = _recipe(lr=lr, momentum=momentum, n_steps=n_steps, solver="discrete")
    return simulate(DenseKernel(ntk, np.shape(F0)[1]), _problem(F0, targets, loss, labels),
                    recipe, batches=batches, momentum_buffer=momentum_buffer)


def run_flow(ntk, F0, targets, *, loss, lr_eff, n_steps, labels=None, **tolerances):
    from sktt.dynamics import solve_gradient_flow
    from sktt.gram import DenseKernel

    recipe = _recipe(lr=lr_eff, n_steps=n_steps, solver="ode")
    return solve_gradient_flow(DenseKernel(ntk, np.shape(F0)[1]),
                               _problem(F0, targets, loss, labels), recipe, **tolerances)


def run_sde(ntk, F0, targets, *, loss, lr, momentum, batch_size, n_steps, noise_factor, seeds,
            labels=None, n_substeps=1, return_final=False):
    from sktt.dynamics import simulate_sde
    from sktt.gram import DenseKernel

    recipe = _recipe(lr=lr, momentum=momentum, n_steps=n_steps, solver="sde")
    return simulate_sde(DenseKernel(ntk, np.shape(F0)[1]), _problem(F0, targets, loss, labels),
                        recipe, batch_size=batch_size, noise_factor=noise_factor,
                        seeds=list(seeds), n_substeps=n_substeps, return_final=return_final)
