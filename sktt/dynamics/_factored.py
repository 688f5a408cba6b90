r"""The exact discrete simulation in the sketch space of a factored kernel.

With projected Jacobian rows :math:`\tilde J` (N·C × D0) the kernel is
:math:`\tilde\Theta = \tilde J\tilde J^\top`, and every function-space term of
:mod:`sktt.dynamics._discrete` is :math:`\tilde J` times a D0-vector, except
two fixed directions: the weight-decay anchor :math:`\Phi_0 = Jw_0` and a
momentum buffer :math:`A_0` given at the start (a resumed run). Collect those
in :math:`E` (N·C × k, k ≤ 2); the state

.. math::

    F = F_0 + \tilde J u + E a, \qquad A = \tilde J v + E \beta

is closed under the recursion: the decayed gradient is
:math:`U = \tilde J(\tilde J_B^\top \nabla_{F_B}L_B + \lambda u) + \lambda E(a + e_\Phi)`
(:math:`e_\Phi` picks :math:`\Phi_0`, since
:math:`F - F_0 + \Phi_0 = \tilde J u + Ea + \Phi_0`), and the momentum /
dampening / Nesterov recursion (:meth:`TrainingRecipe.direction`) is linear, so
it runs verbatim on :math:`z = (u, a) \in \mathbb{R}^{D_0 + k}` (:math:`A_0`
enters as :math:`\beta = e_A`). This is the same dynamics as the dense
:math:`\tilde\Theta` to round-off.

Cost. A step needs only the batch outputs
:math:`F_B = F_{0,B} + \tilde J_B u + E_B a`: ``O(P·b·C·D0)`` instead of the
dense ``O(P·b·C·N·C)``. The full-set loss and error at every step — what the
curves are — are computed from the stored states :math:`z_0..z_T` when
read, by blocked matrix products over the rows: ``O(N·C·D0)`` multiply-adds
per path and step in float64 BLAS with ``O(block)`` memory, for the steps
asked for only (:class:`FactoredCurves`). The T_ε search's tangent planes and
values use float32 products with rigorous round-off bounds instead (about half
the time; a value without a plane skips the gradient's product, halving it
again, and takes its exponentials in float32).
Gradient descent needs :math:`F` on every row at each step anyway
(``O(N·C·D0)`` per step).

Divergence is reported as the dense solver does (first step with a non-finite
train loss; once every path has diverged, the remaining losses are inf).
"""

from collections.abc import MutableMapping

import numpy as np

from ..utils._threads import single_threaded_blas
from ._losses import (cross_entropy_single, loss_gradient, loss_value,
                      loss_value_and_gradient, train_error)

__all__ = ["FactoredCurves", "simulate_factored", "states_bytes"]


def states_bytes(kernel, recipe, n_paths, n_directions=2):
    """Bytes of the stored states z_0..z_T (float64)."""
    return 8 * n_paths * (recipe.n_steps + 1) * (kernel.dim + n_directions)


def _directions(problem, recipe, momentum_buffer, n_all, c):
    """E ((N + N_eval)·C, k) of the fixed directions, and the indices of Φ0 and A0 in it."""
    cols, i_phi, i_buf = [], None, None
    if recipe.weight_decay:
        i_phi = len(cols)
        cols.append(problem.stacked_jw0().reshape(-1))
    if momentum_buffer is not None and recipe.momentum > 0:
        i_buf = len(cols)
        cols.append(np.asarray(momentum_buffer, dtype=np.float64).reshape(-1))
    E = np.column_stack(cols) if cols else np.zeros((n_all * c, 0))
    return E, i_phi, i_buf


_UNIT = 2.0 ** -24  # float32 unit round-off
_SINGLE_INNER = 256  # terms of one float32 inner product of the outputs J̃u (then float32 sums)
_SINGLE_ROWS = 2048  # rows of one float32 product of the gradient J̃ᵀg (then float64 sums)
_SINGLE_RANGE = 1e30  # |F| and |z| below this: no float32 product can overflow


def _gamma(n):
    """Higham's γ_n for float32: |fl(x·y) − x·y| ≤ γ_n Σ|x_i||y_i| for n-term inner products
    (two more terms cover rounding both operands to float32 first)."""
    return n * _UNIT / (1 - n * _UNIT)


def _targets_of(problem, eval_rows):
    """Targets, labels and number of samples of the training or held-out rows."""
    if eval_rows:
        return problem.eval_targets, problem.eval_labels, problem.n_eval
    return problem.targets, problem.labels, problem.f0.shape[0]


def _blocks(kernel, F0, E, Z, *, eval_rows, single=False):
    """The row blocks (whole samples) of the outputs at every state of ``Z`` (M, D0 + k).

    Yields ``(samples, F, rows, E_block)``: the block's sample slice, its outputs
    (M, n_b, C), rows and fixed directions. The rows are float64 and ``F`` their exact
    products; with ``single``, the stored float32 rows (no copy) and a float32 ``F``:
    inner products of ``_SINGLE_INNER`` terms summed in float32, plus F0 and the fixed
    directions rounded to float32 (:func:`_single_precision_loss_error` bounds the
    difference; no float64 array of the block's outputs). The float64 rows are
    :meth:`~sktt.gram.FactoredKernel.float64_blocks`: one buffer, overwritten by the
    next block.
    """
    part = kernel.eval_rows if eval_rows else kernel.rows
    offset = kernel.n_train_rows if eval_rows else 0
    c, d = kernel.n_outputs, kernel.dim
    if single:
        u = Z[:, :d].astype(np.float32)
        blocks = ((s, e, np.asarray(part[s:e], dtype=np.float32))  # (n_b·C, D0)
                  for s, e in kernel.row_blocks(width=Z.shape[0], eval_rows=eval_rows))
    else:
        u = Z[:, :d]
        blocks = kernel.float64_blocks(Z.shape[0], eval_rows=eval_rows)
    for s, e, rows in blocks:
        E_block = E[offset + s:offset + e]
        F0_block = F0[(offset + s) // c:(offset + e) // c].reshape(-1)
        if single:
            out = u[:, :_SINGLE_INNER] @ rows[:, :_SINGLE_INNER].T
            for j in range(_SINGLE_INNER, d, _SINGLE_INNER):
                out += u[:, j:j + _SINGLE_INNER] @ rows[:, j:j + _SINGLE_INNER].T
            out += F0_block.astype(np.float32)
            if E.shape[1]:
                out += (Z[:, d:] @ E_block.T).astype(np.float32)
        else:
            out = u @ rows.T + F0_block
            if E.shape[1]:
                out += Z[:, d:] @ E_block.T
        yield slice(s // c, e // c), out.reshape(Z.shape[0], -1, c), rows, E_block


def _transpose_product(g, rows):
    """g J̃_block (M, D0) in float64: exact for float64 rows; for float32 rows, float32
    products of ``_SINGLE_ROWS`` rows summed in float64."""
    if rows.dtype == np.float64:
        return g @ rows
    g32 = g.astype(np.float32)
    out = np.zeros((g.shape[0], rows.shape[1]))
    for i in range(0, rows.shape[0], _SINGLE_ROWS):
        out += g32[:, i:i + _SINGLE_ROWS] @ rows[i:i + _SINGLE_ROWS]
    return out


def _curves(kernel, problem, F0, E, Z, *, eval_rows, gradient=False):
    """Mean loss and train error (%) at every state of ``Z`` (M, D0 + k), accumulated over
    row blocks; with ``gradient``, also ∇_z of the mean loss (M, D0 + k)."""
    targets, labels, n = _targets_of(problem, eval_rows)
    d = kernel.dim
    loss = np.zeros(Z.shape[0])
    error = None if labels is None else np.zeros(Z.shape[0])
    grad = np.zeros(Z.shape) if gradient else None
    for samples, F, rows, E_block in _blocks(kernel, F0, E, Z, eval_rows=eval_rows):
        weight = (samples.stop - samples.start) / n  # the block's share of the mean
        value, g = loss_value_and_gradient(F, targets[samples], problem.loss, gradient=gradient)
        loss += weight * value
        if error is not None:
            error += weight * train_error(F, labels[samples])
        if gradient:  # ∇_z L = (J̃ᵀ ∇_F L, Eᵀ ∇_F L), the block's share
            g = weight * g.reshape(Z.shape[0], -1)
            grad[:, :d] += _transpose_product(g, rows)
            grad[:, d:] += g @ E_block
    return loss, error, grad


def _single_precision_loss_error(kernel, problem, F0, E, Z, loss, residual_l1, *, eval_rows):
    r"""Bounds on the float32 outputs' error, and on the mean loss's, at every state of ``Z``.

    The outputs of :func:`_blocks` with ``single`` differ from the exact ones by at most
    :math:`e_F = \gamma_{K + q + 1}\,\max_i|\tilde J_i|\,|u| + 5\,\mathrm{u}\,B`: float32
    inner products of :math:`K` = 256 terms (the rounding of u to float32 and, for
    float64 rows, of the rows adds one term each) summed in float32 over the
    :math:`q = \lceil D_0/K\rceil` chunks, bounded by Cauchy–Schwarz; then up to four
    float32 roundings (F0 and :math:`Ea` rounded, two sums) of numbers below
    :math:`B = \max|F_0| + (1+\gamma)\max_i|\tilde J_i|\,|u| + \max_i|E_i|\,|a|`
    (:math:`\mathrm{u} = 2^{-24}`; 5 instead of 4 absorbs the :math:`1 + \mathrm{u}`
    factors). :math:`|\tilde L - L| \le e_L`: ``2 e_F`` for cross-entropy (each sample's
    loss is 2-Lipschitz in the sup norm), :math:`2\,\overline{|r|}\,e_F + e_F^2` for squared
    error (``residual_l1`` = :math:`\sum|r|`), plus a float64 round-off term on the loss
    itself (sums over other blocks than an exact pass): a positive error sends near-ties
    to the exact computation even at z = 0.

    Returns
    -------
    output_error, loss_error : ndarray of shape (M,)
    """
    _, _, n = _targets_of(problem, eval_rows)
    c, d = kernel.n_outputs, kernel.dim
    n_train = kernel.n_train_rows // c
    side = slice(n_train, None) if eval_rows else slice(0, n_train)
    gamma = _gamma(_SINGLE_INNER + -(-d // _SINGLE_INNER) + 1)
    moved = kernel.max_row_norm(eval_rows=eval_rows) * np.linalg.norm(Z[:, :d], axis=1)
    largest = np.abs(F0[side]).max() + (1 + gamma) * moved
    if E.shape[1]:
        fixed = np.linalg.norm(E.reshape(-1, c, E.shape[1])[side], axis=-1).max()
        largest = largest + fixed * np.linalg.norm(Z[:, d:], axis=1)
    output_error = gamma * moved + 5 * _UNIT * largest
    if problem.loss == "mse":
        loss_error = 2 * residual_l1 / (n * c) * output_error + output_error**2
    else:
        loss_error = 2 * output_error
    return output_error, loss_error + 1e-12 * np.maximum(np.abs(loss), 1.0)


def _single_precision_planes(kernel, problem, F0, E, Z, *, eval_rows):
    r"""Mean loss and ∇_z L at every state of ``Z`` (M, D0 + k) from float32 products,
    with bounds on what that changes: one blocked pass, about half the time of
    :func:`_curves` with ``gradient=True`` (float32 BLAS and no float64 copy of the rows).

    With :math:`\tilde F` the computed outputs, :math:`\tilde L = L(\tilde F)` and
    :math:`\tilde g` the computed :math:`\tilde J^\top\nabla L(\tilde F)`:

    * :math:`|\tilde F - F|_\infty \le e_F` and :math:`|\tilde L - L| \le e_L`
      (:func:`_single_precision_loss_error`);
    * :math:`|\tilde g - \tilde J^\top\nabla L(\tilde F)|_2 \le e_g =
      \gamma_{2050}\,\max|\nabla L|\,\|(\sum_i |\tilde J_{ij}|)_j\|_2`.

    By convexity at :math:`\tilde F`, for every state z,
    :math:`L(F(z)) \ge \tilde L + \langle\tilde g, z - z_a\rangle - \|\nabla L(\tilde F)\|_1 e_F
    - e_g\,|(z - z_a)_{:D_0}|`: a valid tangent plane.

    Returns
    -------
    loss, loss_error, plane_offset, gradient_error : ndarray of shape (M,)
        :math:`\tilde L`, :math:`e_L`, :math:`\|\nabla L\|_1 e_F` and :math:`e_g`.
    grad : ndarray of shape (M, D0 + k)
    """
    targets, _, n = _targets_of(problem, eval_rows)
    d, m = kernel.dim, Z.shape[0]
    loss, grad = np.zeros(m), np.zeros(Z.shape)
    grad_l1, grad_max, residual_l1 = np.zeros(m), np.zeros(m), np.zeros(m)
    for samples, F, rows, E_block in _blocks(kernel, F0, E, Z, eval_rows=eval_rows,
                                             single=True):
        weight = (samples.stop - samples.start) / n
        F = F.astype(np.float64)  # exact; the loss and its gradient in float64
        value, g = loss_value_and_gradient(F, targets[samples], problem.loss)
        loss += weight * value
        if problem.loss == "mse":
            residual_l1 += np.abs(F - targets[samples]).sum(axis=(1, 2))
        g = weight * g.reshape(m, -1)
        grad_l1 += np.abs(g).sum(axis=1)
        grad_max = np.maximum(grad_max, np.abs(g).max(axis=1))
        grad[:, :d] += _transpose_product(g, rows)
        grad[:, d:] += g @ E_block
    output_error, loss_error = _single_precision_loss_error(kernel, problem, F0, E, Z, loss,
                                                            residual_l1, eval_rows=eval_rows)
    gradient_error = (_gamma(_SINGLE_ROWS + 2) * grad_max
                      * np.linalg.norm(kernel.abs_column_sums(eval_rows=eval_rows)))
    return loss, loss_error, grad_l1 * output_error, gradient_error, grad


def _single_precision_losses(kernel, problem, F0, E, Z, *, eval_rows):
    r"""Mean loss at every state of ``Z`` (M, D0 + k) from float32 products, with its error
    bound: the output product of :func:`_single_precision_planes` without the gradient
    (its second product and its softmax), for steps where a plane would no longer rule out
    others: about half the cost. Cross-entropy takes float32 exponentials too
    (:func:`~sktt.dynamics._losses.cross_entropy_single`), whose error bound adds to
    :math:`e_L` (:func:`_single_precision_loss_error`).

    Returns
    -------
    loss, loss_error : ndarray of shape (M,)
    """
    targets, _, n = _targets_of(problem, eval_rows)
    m = Z.shape[0]
    loss, residual_l1, exp_error = np.zeros(m), np.zeros(m), np.zeros(m)
    for samples, F, _, _ in _blocks(kernel, F0, E, Z, eval_rows=eval_rows, single=True):
        weight = (samples.stop - samples.start) / n
        if problem.loss == "mse":
            F = F.astype(np.float64)  # exact
            loss += weight * loss_value(F, targets[samples], problem.loss)
            residual_l1 += np.abs(F - targets[samples]).sum(axis=(1, 2))
        else:
            value, error = cross_entropy_single(F, targets[samples])
            loss += weight * value
            exp_error += weight * error
    loss_error = _single_precision_loss_error(kernel, problem, F0, E, Z, loss, residual_l1,
                                              eval_rows=eval_rows)[1]
    return loss, loss_error + exp_error


class FactoredCurves(MutableMapping):
    r"""The curves of a sketch-space run, computed from its stored states when asked.

    A mapping with the keys of every :func:`~sktt.dynamics.simulate` result
    (``"loss"``, ``"error"``, ``"eval_loss"``, ``"eval_error"``,
    ``"diverged_at"``; callers may add their own). Reading a curve computes it
    at every step once (the blocked products of the module docstring, then the
    dense solver's divergence bookkeeping). :meth:`at` computes the curves at
    some steps only, and :meth:`loss_lower_bounds` gives, for every step, a
    lower bound on the loss that costs a few dozen steps' products: together
    they let :func:`~sktt.dynamics._training_time.training_times` find
    :math:`T_\varepsilon` exactly while computing a small part of the curve.

    The bound. The mean loss is convex in the outputs :math:`F` (cross-entropy
    and squared error), and :math:`F` is affine in the state
    :math:`z = (u, a)`, so at any anchor state :math:`z_a`

    .. math:: L(z_t) \ge L(z_a) + \langle \nabla_z L(z_a),\, z_t - z_a \rangle,

    with :math:`\nabla_z L = (\tilde J^\top \nabla_F L,\ E^\top \nabla_F L)`:
    one more blocked product per anchor. Anchors start every ``T/16`` steps, and
    :meth:`refine` adds one at every step it computes; each step takes the largest
    of the planes of all anchors (a ``(S, D0) × (D0, T + 1)`` product per path for
    S new anchors, negligible beside the blocked passes). The planes' products run
    in float32 on the stored rows, with round-off terms that keep them lower
    bounds (:func:`_single_precision_planes`); their loss values come with error
    bars, and the search computes a value exactly (float64) only where its error
    bar straddles the threshold. :meth:`approximate` gives the same values with
    error bars without a plane (:func:`_single_precision_losses`), for the steps
    no plane would rule out.
    """

    _CURVES = ("loss", "error", "eval_loss", "eval_error")
    _N_ANCHOR_INTERVALS = 16
    _FINITE_OUTPUTS = 1e100  # |F| below this: every loss is finite (no overflow in F² or exp)

    def __init__(self, kernel, problem, F0, E, Z):
        self.kernel, self.problem, self.F0, self.E = kernel, problem, F0, E
        self.states = Z  # (T + 1, P, D0 + k)
        self.n_steps = Z.shape[0] - 1
        self.n_paths = Z.shape[1]
        self._sides = {}  # "train" / "eval": computed points
        self._full = None
        self._extra = {}
        self._bound_on_outputs = None
        self._norms = None
        self._single_safe = None
        self._approx = {}  # side: float32 loss values at anchors and their error bounds
        self._bounds = {}  # side: (P, T + 1) loss lower bounds
        self._anchored = {}  # side: (T + 1,) bool, the anchors of those bounds

    # -- the mapping ---------------------------------------------------------------------------
    def __getitem__(self, key):
        if key in self._extra:
            return self._extra[key]
        if key in self._CURVES or key == "diverged_at":
            if key == "diverged_at" and self.certainly_finite:
                return np.full(self.n_paths, -1)
            if self._full is None:
                self._full = self._compute_full()
            return self._full[key]
        raise KeyError(key)

    def __setitem__(self, key, value):
        if key in self._CURVES or key == "diverged_at":
            raise KeyError(f"{key!r} is computed from the stored states; it cannot be set.")
        self._extra[key] = value

    def __delitem__(self, key):
        del self._extra[key]

    def __iter__(self):
        yield from self._CURVES
        yield "diverged_at"
        yield from self._extra

    def __len__(self):
        return len(self._CURVES) + 1 + len(self._extra)

    @property
    def nbytes(self):
        """Bytes of the arrays this run holds: its stored states and what was computed from
        them (curves, points, bounds), not the kernel it shares with its estimator."""
        def size(obj):
            if isinstance(obj, np.ndarray):
                return obj.nbytes
            if isinstance(obj, dict):
                return sum(size(v) for v in obj.values())
            return 0

        return sum(size(obj) for obj in (
            self.states, self.E, self._sides, self._full, self._extra, self._norms,
            self._approx, self._bounds, self._anchored))

    # -- partial evaluation ----------------------------------------------------------------------
    def _has(self, side):
        """Whether the run has rows on ``side`` ("train" always; "eval" with held-out rows)."""
        return side == "train" or self.problem.n_eval > 0

    def _side(self, key):
        """``"eval_loss"`` → ``("eval", "loss")``; ``"loss"`` → ``("train", "loss")``."""
        side = "eval" if key.startswith("eval_") else "train"
        metric = key[5:] if side == "eval" else key
        return side, metric

    def _output_bound(self):
        """An upper bound on every |F| of every stored state (inf if a state is not finite)."""
        if self._bound_on_outputs is None:
            Z = self.states
            bound = np.inf
            if np.all(np.isfinite(Z)):
                d = self.kernel.dim
                u = np.sqrt(self._state_norms().max())
                a = np.linalg.norm(Z[..., d:], axis=-1).max() if Z.shape[-1] > d else 0.0
                rows = max(self.kernel.max_row_norm(), self.kernel.max_row_norm(eval_rows=True))
                e = np.linalg.norm(self.E, axis=1).max() if self.E.size else 0.0
                bound = np.abs(self.F0).max() + rows * u + e * a
            self._bound_on_outputs = float(bound)
        return self._bound_on_outputs

    @property
    def certainly_finite(self):
        """Whether every output of every stored state is below ``1e100`` in magnitude, so that
        no loss can be non-finite (then no path diverges and the curves need no bookkeeping)."""
        return self._output_bound() < self._FINITE_OUTPUTS

    @property
    def computed_fraction(self):
        """Share of the steps whose training loss has been computed, exactly, as an anchor or
        within float32 error bars (1 once the full curves are)."""
        if self._full is not None:
            return 1.0
        return float(np.mean(self._valued("train")))

    def _points(self, side):
        if side not in self._sides:
            shape = (self.n_paths, self.n_steps + 1)
            labels = self.problem.eval_labels if side == "eval" else self.problem.labels
            self._sides[side] = {"loss": np.full(shape, np.nan),
                                 "error": None if labels is None else np.full(shape, np.nan),
                                 "known": np.zeros(self.n_steps + 1, dtype=bool)}
        return self._sides[side]

    def _evaluate(self, side, steps, gradient=False):
        """Loss, error (P, S) at ``steps`` (stored), and ∇_z L (S, P, D0 + k) with ``gradient``."""
        steps = np.asarray(steps, dtype=np.int64)
        flat = self.states[steps].reshape(-1, self.states.shape[-1])
        with np.errstate(over="ignore", invalid="ignore"):
            loss, error, grad = _curves(self.kernel, self.problem, self.F0, self.E, flat,
                                        eval_rows=side == "eval", gradient=gradient)
        shape = (len(steps), self.n_paths)
        points = self._points(side)
        points["loss"][:, steps] = loss.reshape(shape).T
        if error is not None:
            points["error"][:, steps] = error.reshape(shape).T
        points["known"][steps] = True
        return None if grad is None else grad.reshape(shape + (-1,))

    def at(self, key, steps):
        """The curve ``key`` of every path at ``steps`` only: (P, len(steps)) float64.

        Computes the steps not yet known (a blocked pass over the rows for all of
        them at once); once the full curves exist (or a path may diverge), reads those.
        """
        steps = np.asarray(steps, dtype=np.int64).reshape(-1)
        side, metric = self._side(key)
        if not self._has(side) or (metric == "error" and self._points(side)["error"] is None):
            return None
        if self._full is not None or not self.certainly_finite:
            return self[key][:, steps]
        points = self._points(side)
        missing = np.unique(steps[~points["known"][steps]])
        if missing.size:
            self._evaluate(side, missing)
        return points[metric][:, steps]

    def _bounded_side(self, key):
        side, metric = self._side(key)
        if metric != "loss" or not self._has(side):
            raise ValueError(f"lower bounds exist for the loss curves, not {key!r}.")
        return side

    def loss_lower_bounds(self, key):
        """(P, T + 1) lower bounds of the loss curve ``key`` ("loss" or "eval_loss"): the
        largest of the tangent planes at every anchor (see the class docstring), exact at
        the anchors. Anchors start every ``T/16`` steps; :meth:`refine` adds more. The
        array is updated in place as anchors are added. Needs :attr:`certainly_finite`."""
        side = self._bounded_side(key)
        if side not in self._bounds:
            T = self.n_steps
            self._bounds[side] = np.full((self.n_paths, T + 1), -np.inf)
            self._anchored[side] = np.zeros(T + 1, dtype=bool)
            self._add_anchors(side, np.linspace(0, T, self._N_ANCHOR_INTERVALS + 1).round())
        return self._bounds[side]

    def refine(self, key, steps):
        """The loss curve ``key`` of every path at ``steps`` with error bars, each step made
        an anchor of :meth:`loss_lower_bounds`.

        Returns ``(values, errors)``, both (P, S): the loss lies within ``errors`` of
        ``values`` (0 where it was computed exactly). The planes come from float32
        products with rigorous round-off bounds (:func:`_single_precision_planes`),
        unless the outputs or states could overflow them; free for steps already anchored.
        """
        side = self._bounded_side(key)
        self.loss_lower_bounds(key)
        steps = np.asarray(steps, dtype=np.int64).reshape(-1)
        self._add_anchors(side, steps)
        return self._values(side, steps)

    def approximate(self, key, steps):
        """The loss curve ``key`` of every path at ``steps`` with error bars, no anchor added.

        Same ``(values, errors)`` as :meth:`refine` at about half its cost per step (float32
        output products with rigorous round-off bounds, :func:`_single_precision_losses`;
        float64 where those could overflow): for steps that no plane would rule out, which
        must be computed anyway. Free for steps already computed.
        """
        side = self._bounded_side(key)
        steps = np.asarray(steps, dtype=np.int64).reshape(-1)
        todo = np.unique(steps[~self._valued(side)[steps]])
        if todo.size and self._single_precision_safe():
            flat = self.states[todo].reshape(-1, self.states.shape[-1])
            with np.errstate(over="ignore", invalid="ignore"):
                loss, loss_error = _single_precision_losses(
                    self.kernel, self.problem, self.F0, self.E, flat, eval_rows=side == "eval")
            self._store_approx(side, todo, loss.reshape(len(todo), -1),
                               loss_error.reshape(len(todo), -1))
        elif todo.size:
            self._evaluate(side, todo)
        return self._values(side, steps)

    def _valued(self, side):
        """(T + 1,) bool: steps whose loss is known, exactly or within float32 error bars."""
        valued = self._points(side)["known"].copy()
        if side in self._approx:
            valued |= ~np.isnan(self._approx[side]["loss"][0])
        return valued

    def _store_approx(self, side, steps, loss, loss_error):
        """Record float32 loss values (S, P) at ``steps`` and their error bounds."""
        approx = self._approx.setdefault(side, {
            "loss": np.full((self.n_paths, self.n_steps + 1), np.nan),
            "error": np.full((self.n_paths, self.n_steps + 1), np.nan)})
        approx["loss"][:, steps] = loss.T
        approx["error"][:, steps] = loss_error.T

    def _values(self, side, steps):
        """``(values, errors)`` (P, S) at valued ``steps``: exact values where known (error
        0), float32 ones with their error bounds elsewhere."""
        points = self._points(side)
        values, errors = points["loss"][:, steps], np.zeros((self.n_paths, len(steps)))
        if side in self._approx:
            approx, known = self._approx[side], points["known"][steps]
            values = np.where(known, values, approx["loss"][:, steps])
            errors = np.where(known, 0.0, approx["error"][:, steps])
        return values, errors

    def _add_anchors(self, side, steps):
        """Tangent planes at ``steps`` (one blocked pass for their loss and ∇_z L), folded
        into the bounds: L(z_t) ≥ max_a (L_a − ⟨g_a, z_a⟩ + ⟨g_a, z_t⟩ − round-off terms)."""
        steps = np.unique(np.asarray(steps, dtype=np.int64))
        steps = steps[~self._anchored[side][steps]]
        if not steps.size:
            return
        shape = (len(steps), self.n_paths)
        d = self.kernel.dim
        if self._single_precision_safe():
            flat = self.states[steps].reshape(-1, self.states.shape[-1])
            with np.errstate(over="ignore", invalid="ignore"):
                loss, loss_error, plane_offset, grad_error, grad = _single_precision_planes(
                    self.kernel, self.problem, self.F0, self.E, flat, eval_rows=side == "eval")
            loss, grad = loss.reshape(shape), grad.reshape(shape + (-1,))
            self._store_approx(side, steps, loss, loss_error.reshape(shape))
            plane_offset, grad_error = plane_offset.reshape(shape), grad_error.reshape(shape)
        else:  # float64 products: exact values, no round-off terms
            grad = self._evaluate(side, steps, gradient=True)  # (S, P, D0 + k)
            loss = self._points(side)["loss"][:, steps].T  # (S, P)
            plane_offset = grad_error = np.zeros(shape)
        offset = loss - plane_offset - np.einsum("spk,spk->sp", grad, self.states[steps])
        bounds = self._bounds[side]
        norms = self._state_norms()
        for p in range(self.n_paths):  # every anchor's plane at every step: (S, T + 1)
            states = self.states[:, p]
            planes = offset[:, p, None] + grad[:, p] @ states.T
            if np.any(grad_error[:, p]):  # − e_g·|(z_t − z_a)_{:D0}|
                at = states[steps, :d]
                sq = norms[p][None] + norms[p][steps, None] - 2 * at @ states[:, :d].T
                planes -= grad_error[:, p, None] * np.sqrt(np.maximum(sq, 0.0))
            np.maximum(bounds[p], planes.max(axis=0), out=bounds[p])
        self._anchored[side][steps] = True

    def _single_precision_safe(self):
        """Whether float32 products can neither overflow in the outputs nor in the states."""
        if self._single_safe is None:
            self._single_safe = bool(self._output_bound() < _SINGLE_RANGE
                                     and np.abs(self.states).max() < _SINGLE_RANGE)
        return self._single_safe

    def _state_norms(self):
        """|u_t|² of every path and step (P, T + 1), cached."""
        if self._norms is None:
            u = self.states[..., :self.kernel.dim]
            self._norms = np.einsum("tpk,tpk->pt", u, u)
        return self._norms

    def _compute_full(self):
        flat = self.states.reshape(-1, self.states.shape[-1])
        shape = (self.n_steps + 1, self.n_paths)
        out = {}
        for side in ("train", "eval"):
            prefix = "eval_" if side == "eval" else ""
            loss = error = None
            if self._has(side):
                with np.errstate(over="ignore", invalid="ignore"):
                    loss, error, _ = _curves(self.kernel, self.problem, self.F0, self.E, flat,
                                             eval_rows=side == "eval")
                loss = loss.reshape(shape).T.copy()
                error = None if error is None else error.reshape(shape).T.copy()
            out[prefix + "loss"], out[prefix + "error"] = loss, error
        return _mark_divergence(out)


@single_threaded_blas
def simulate_factored(kernel, problem, recipe, *, batches=None, momentum_buffer=None):
    """:func:`~sktt.dynamics.simulate_discrete` for a :class:`~sktt.gram.FactoredKernel`.

    Same parameters; the kernel's ``eval_rows`` carry the held-out outputs of
    ``problem``. Returns a :class:`FactoredCurves`, the same mapping whose
    curves are computed when read.
    """
    n, c = problem.f0.shape
    n_eval = problem.n_eval
    if kernel.n_eval_rows != n_eval * c:
        raise ValueError(f"the kernel has {kernel.n_eval_rows} held-out rows but the problem has "
                         f"{n_eval} held-out samples × C={c}.")
    d = kernel.dim
    n_steps = recipe.n_steps
    lrs = recipe.learning_rates
    wd = recipe.weight_decay
    n_paths = 1 if batches is None else batches[0].shape[0]
    F0 = problem.stacked_f0()  # (N + N_eval, C)
    E, i_phi, i_buf = _directions(problem, recipe, momentum_buffer, n + n_eval, c)
    k = E.shape[1]
    E_train = E[:n * c]
    Z = np.zeros((n_steps + 1, n_paths, d + k))
    buffer = None
    if i_buf is not None:
        buffer = np.zeros((n_paths, d + k))
        buffer[:, d + i_buf] = 1.0
    anchor = np.zeros(d + k)
    if i_phi is not None:
        anchor[d + i_phi] = 1.0
    targets = problem.targets
    z = Z[0].copy()
    rows = None  # the batch's rows, one array reused step after step
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(n_steps):
            update = np.zeros((n_paths, d + k))
            if batches is None:  # gradient descent: F on every training row
                F = (kernel.apply(z[:, :d])[:, :n * c] + z[:, d:] @ E_train.T).reshape(
                    n_paths, n, c) + F0[None, :n]
                grad = loss_gradient(F, targets, problem.loss).reshape(n_paths, -1)
                update[:, :d] = kernel.transpose_product(grad)
            else:
                idx = batches[t]  # (P, b)
                # a path at a time: its float64 rows (b·C × D0) stay in cache for both
                # products (all paths at once measured 2x slower, memory-bound)
                for p in range(n_paths):
                    rows = kernel.gather(idx[p], buffer=rows)  # (b·C, D0)
                    F_b = rows @ z[p, :d]
                    if k:
                        F_b += E_train[(idx[p, :, None] * c + np.arange(c)).reshape(-1)] @ z[p, d:]
                    F_b = F_b.reshape(-1, c) + F0[idx[p]]
                    grad_b = loss_gradient(F_b, targets[idx[p]], problem.loss)  # (b, C)
                    update[p, :d] = grad_b.reshape(-1) @ rows
            if wd:  # λ·J·w = J̃(λu) + λE(a + e_Φ)
                update += wd * (z + anchor)
            step, buffer = recipe.direction(update, buffer)
            z = z - lrs[t] * step
            Z[t + 1] = z
    return FactoredCurves(kernel, problem, F0, E, Z)


def _mark_divergence(out):
    """The dense solver's divergence bookkeeping on finished curves."""
    loss = out["loss"]
    n_paths, n_points = loss.shape
    bad = ~np.isfinite(loss[:, 1:])
    diverged_at = np.where(bad.any(axis=1), bad.argmax(axis=1) + 1, -1)
    if n_points > 1 and np.all(diverged_at >= 0):
        stop = int(diverged_at.max())  # the dense loop stops here
        loss[:, stop:] = np.inf
        if out["eval_loss"] is not None:
            out["eval_loss"][:, stop:] = np.inf
        for key in ("error", "eval_error"):
            if out[key] is not None:
                out[key][:, stop + 1:] = np.nan
    out["diverged_at"] = diverged_at
    return out
