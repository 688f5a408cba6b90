"""The curves every step-by-step solver records: loss and error per path and step, divergence.

One recorder for the discrete SGD, AdamW (exact and preconditioned) and SDE
loops, so "the loss at step t", "the first non-finite step" and "after every
path has diverged the rest is inf" mean the same thing in every solver.
"""

import numpy as np

from ._losses import loss_value_and_gradient, train_error

__all__ = ["CurveRecorder"]


class CurveRecorder:
    """Loss / error curves of ``n_paths`` paths over steps ``0..n_steps``.

    Parameters
    ----------
    n_paths, n_steps : int
    targets, loss, labels
        Training targets, ``"cross_entropy"`` / ``"mse"``, and the labels of the
        train error (None: no error curve).
    eval_targets, eval_labels : optional
        The same for held-out rows (None: no held-out curves).
    """

    def __init__(self, n_paths, n_steps, targets, loss, labels=None, eval_targets=None,
                 eval_labels=None):
        self.targets, self.loss, self.labels = targets, loss, labels
        self.eval_targets, self.eval_labels = eval_targets, eval_labels
        shape = (n_paths, n_steps + 1)
        self.losses = np.full(shape, np.nan)
        self.errors = None if labels is None else np.full(shape, np.nan)
        self.eval_losses = self.eval_errors = None
        if eval_targets is not None:
            self.eval_losses = np.full(shape, np.nan)
            if eval_labels is not None:
                self.eval_errors = np.full(shape, np.nan)
        self.diverged_at = np.full(n_paths, -1)

    def record(self, t, F, F_eval=None):
        """Record step ``t`` at outputs ``F`` (P, N, C); return the full-batch gradient ∇_F L.

        Also notes the paths whose loss first becomes non-finite at ``t``.
        """
        self.losses[:, t], grad = loss_value_and_gradient(F, self.targets, self.loss)
        if self.errors is not None:
            self.errors[:, t] = train_error(F, self.labels)
        if F_eval is not None and self.eval_losses is not None:
            self.eval_losses[:, t] = loss_value_and_gradient(F_eval, self.eval_targets,
                                                             self.loss)[0]
            if self.eval_errors is not None:
                self.eval_errors[:, t] = train_error(F_eval, self.eval_labels)
        if t > 0:
            bad = ~np.isfinite(self.losses[:, t]) & (self.diverged_at < 0)
            self.diverged_at[bad] = t
        return grad

    def all_diverged(self, t):
        """Whether every path has diverged by step ``t``; then the rest of the curves is inf."""
        if not np.all(self.diverged_at >= 0):
            return False
        self.losses[:, t:] = np.inf
        if self.eval_losses is not None:
            self.eval_losses[:, t:] = np.inf
        return True

    def result(self):
        """``{"loss", "error", "eval_loss", "eval_error", "diverged_at"}``."""
        return {"loss": self.losses, "error": self.errors, "eval_loss": self.eval_losses,
                "eval_error": self.eval_errors, "diverged_at": self.diverged_at}
