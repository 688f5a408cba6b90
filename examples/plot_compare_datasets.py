"""
============================================
Comparing target datasets on one model
============================================

One pre-trained model, several candidate fine-tuning tasks and a grid of
hyper-parameters: :func:`sktt.compare` fits one predictor per dataset (its
gradients and Θ once, the datasets in parallel) and evaluates every grid
setting on it. The result is a tidy table -- one row per dataset × setting --
with the predicted ε-training-time, the final loss and, for SGD, the spread
of T_ε over simulated batch orders.

The tasks here are built from scikit-learn's bundled digits:

- the embedded default: digits 5-9, never seen in pre-training;
- digits 0-4, the classes the network was pre-trained on (with a fresh head);
- the odd digits 1, 3, 5, 7, 9: half seen, half new;
- digits 5-9 again, but 300 noisier augmented images (a different N).
"""

import time

import matplotlib.pyplot as plt
import torch

from sktt import compare
from sktt.datasets import load_demo, make_augmented_digits

torch.set_num_threads(1)

demo = load_demo(n_samples=150)  # model (fresh 5-way head) and the default task
datasets = {
    "5-9 (default)": demo,
    "0-4 (seen)": load_demo(n_samples=150, classes=(0, 1, 2, 3, 4)),
    "odd digits": load_demo(n_samples=150, classes=(1, 3, 5, 7, 9)),
    "5-9 noisy, N=300": make_augmented_digits(300, noise=0.15, random_state=1),
}

# %%
# Θ does not depend on lr or batch size, so the 4 x 4 table below costs four fits;
# the datasets run on two worker processes (``n_jobs=2``).
start = time.perf_counter()
result = compare(
    demo.model, datasets, {"lr": [0.005, 0.02], "batch_size": [None, 32]},
    eps=0.05, n_steps=150, projection="auto", random_state=0,  # exact Θ at this size
    n_jobs=2)
print(f"{len(result)} rows in {time.perf_counter() - start:.1f} s")
print(result)

# %%
# The table converts to a pandas DataFrame (when pandas is installed), e.g. to
# rank the tasks by how fast they train with the largest learning rate.
try:
    frame = result.to_pandas()
except ImportError:
    frame = None
if frame is not None:
    fast = frame[(frame.lr == 0.02) & frame.batch_size.isna()]
    print(fast.sort_values("t_eps")[["dataset", "n_samples", "t_eps", "final_loss"]])

# %%
# Predicted T_ε across datasets, one bar per setting; the error bars of the SGD
# settings span the 5-95 % quantiles of T_ε over 16 simulated batch orders.
fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4))
result.plot(ax=ax0)
ax0.set_title("Predicted steps to within ε = 0.05 of the final loss")
ax0.tick_params(axis="x", labelsize="small")

# The fitted predictors are kept: any curve of the grid (or outside it) is a call away.
for name, ttp in result.predictors_.items():
    ax1.plot(ttp.predict_curve(lr=0.02), label=name)
ax1.set_xlabel("step")
ax1.set_ylabel("predicted train loss (lr = 0.02, full batch)")
ax1.legend(fontsize="small")
fig.tight_layout()
plt.show()
