r"""JacobianFeatures: per-sample Jacobian rows as a scikit-learn transformer.

The gradient step of sktt as its own pipeline step, so that it can be cached,
swapped or parallelised::

    make_pipeline(JacobianFeatures(model, projection="countsketch", random_state=0),
                  TrainingTimePredictor(model="precomputed", lr=0.05, random_state=0))

``transform`` returns a :class:`~sktt.estimators.JacobianRows` (layout in
:mod:`sktt.estimators._rows`): the sample-major rows ``(N·C, D0)`` with the
outputs f0 and, from ``fit_transform``, the targets. Θ, its spectrum and the
dynamics are the next step's job: :class:`~sktt.TrainingTimePredictor` with
``model="precomputed"`` or :class:`~sktt.GramSpectrum`.

Caching. ``Pipeline(memory=...)`` stores this step's output keyed by a hash of
the (cloned) step and of ``X, y``. torch pickles tensors with their memory
address, so a copied model would never hash the same; this estimator pickles
its model with ``torch.save`` instead, in bytes that depend on the model's
content only (:class:`_SavedModule`). ``X`` is hashed by joblib: numpy arrays by content, torch
tensors (pickled by torch) only as the same object in the same process --
pass ``X.numpy()`` for a cache that survives the session.
"""

import io
import pickle
import types

import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ..gradients import as_inputs, first_outputs, n_samples_of, resolve_projection
from ..gradients._outputs import check_output
from ..gradients._full_rows import full_jacobian_rows
from ..utils import root_seed
from ..utils._torch import (model_device_dtype, model_untouched, require_trainable,
                            trainable_parameters)
from ._extraction_params import check_extraction_params, check_finite_outputs
from ._rows import JacobianRows

__all__ = ["JacobianFeatures"]


class _ValuePickler(pickle._Pickler):
    """A pickler that memoises no str / bytes, so that equal strings give equal bytes
    whatever their identity (``joblib.hashing`` does the same). Without it a model
    and its unpickled copy pickle differently (CPython shares 1-character strings)."""

    def memoize(self, obj):
        if isinstance(obj, (str, bytes)):
            return
        super().memoize(obj)


_VALUE_PICKLE = types.ModuleType("sktt_value_pickle")  # torch.save's pickle_module
_VALUE_PICKLE.Pickler = _ValuePickler


class _SavedModule:
    """A torch module as ``torch.save`` bytes that depend on its content only.

    torch's zip format names storages by their order, not by their address,
    and :class:`_ValuePickler` removes the dependence on string identity, so a
    module, its deep copy and its unpickled copy give the same bytes (checked
    across processes), and joblib hashes them equally.
    """

    def __init__(self, module):
        buffer = io.BytesIO()
        torch.save(module, buffer, pickle_module=_VALUE_PICKLE)
        self.data = buffer.getvalue()

    def load(self):
        # The bytes were written by __getstate__ of an object being unpickled, which
        # is as trusted as the pickle itself (torch's own Tensor unpickling does this).
        return torch.load(io.BytesIO(self.data), weights_only=False)


class JacobianFeatures(TransformerMixin, BaseEstimator):
    r"""Per-sample (projected) Jacobian rows of a torch model, as a pipeline step.

    Parameters
    ----------
    model : torch.nn.Module
        The pre-trained model at the weights fine-tuning starts from. Only
        parameters with ``requires_grad=True`` enter the Jacobian. Never
        modified (taken in ``eval()`` mode, mode restored).
    projection : {None, "auto", "achlioptas", "gaussian", "countsketch", "tensorsketch"}
        None (the default) returns the exact rows (D columns, one per trainable
        parameter);
        ``"auto"`` the exact rows when they are cheap, else a sketch
        (:func:`~sktt.gradients.resolve_projection`; the choice is ``projection_``);
        otherwise per-sample gradients are randomly projected to
        ``projection_dim`` columns, as in :class:`~sktt.TrainingTimePredictor`.
    projection_dim : int, default=2048
        D0, the projected dimension.
    chunk_size : int or None, default=None
        Samples per Jacobian task; None sizes chunks to ``max_memory`` and to
        the number of workers.
    max_memory : int, str or None, default=None
        Memory budget for the returned rows and the chunks in flight (bytes,
        or e.g. ``"4GB"``); None means 2 GiB.
    n_jobs : int or None, default=None
        Number of joblib workers over sample chunks. ``None`` means 1 unless in
        a :func:`joblib.parallel_config` context (whose backend, e.g. Dask's,
        is used); ``-1`` means all processors.
    random_state : int, RandomState instance or None, default=None
        Seeds the projection (drawn once in ``fit``, so ``transform`` of new
        data uses the same projection). Use the same int as the
        :class:`~sktt.TrainingTimePredictor` of a one-object comparison.
    verbose : int, default=0
        Progress bar over Jacobian chunks when > 0.
    jacobian_method : {"auto", "layerwise", "functorch"}, default="auto"
        How per-sample gradients are computed, as in
        :class:`~sktt.TrainingTimePredictor` (same rows up to round-off).
    output : None, str, int or callable, default=None
        Which part of the model's raw output are the logits, as in
        :class:`~sktt.TrainingTimePredictor`.

    Attributes
    ----------
    seed_ : int
        Root seed of the projection.
    n_outputs_ : int
        C, the model's number of outputs.
    n_params_ : int
        D, the number of trainable scalar parameters.
    projection_ : None or str
        The projection used: ``projection``, or the choice of ``"auto"`` for
        the N·C rows seen by ``fit`` (:func:`~sktt.gradients.resolve_projection`).
    n_columns_ : int
        Columns of the rows: ``projection_dim`` or D.
    trainable_parameter_names_ : list of str

    See Also
    --------
    sktt.estimators.JacobianRows : the output, and its layout.
    sktt.TrainingTimePredictor : with ``model="precomputed"``, the next step.
    sktt.GramSpectrum : the next step for a subset extrapolated to N samples.

    Notes
    -----
    Row ``i·C + c`` of the output is :math:`\partial f_c(x_i)/\partial w`
    (times the projection), so :math:`\Theta = J J^\top` is
    ``rows @ rows.T`` -- the Θ of the one-object
    ``TrainingTimePredictor(model, projection=..., random_state=...)``.
    ``np.asarray(output)`` is the per-sample feature matrix of shape
    (N, C·D0), for use with any scikit-learn estimator.

    Examples
    --------
    >>> from sklearn.pipeline import make_pipeline
    >>> from sktt import JacobianFeatures, TrainingTimePredictor
    >>> from sktt.datasets import load_demo
    >>> demo = load_demo(n_samples=60)
    >>> pipe = make_pipeline(
    ...     JacobianFeatures(demo.model, projection="countsketch", projection_dim=512,
    ...                      random_state=0),
    ...     TrainingTimePredictor("precomputed", lr=0.05, n_steps=50, random_state=0))
    >>> curve = pipe.fit(demo.X, demo.y)[-1].predict_curve()
    >>> curve.shape
    (51,)
    """

    def __init__(self, model=None, *, projection=None, projection_dim=2048, chunk_size=None,
                 max_memory=None, n_jobs=None, random_state=None, verbose=0,
                 jacobian_method="auto", output=None):
        self.model = model
        self.projection = projection
        self.projection_dim = projection_dim
        self.chunk_size = chunk_size
        self.max_memory = max_memory
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.verbose = verbose
        self.jacobian_method = jacobian_method
        self.output = output

    def _check_params(self):
        if not isinstance(self.model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(self.model).__name__}.")
        return check_extraction_params(self)

    def _setup(self):
        """Fit-time state that does not depend on the data."""
        self._check_params()
        names, params = require_trainable(self.model)
        self.seed_ = root_seed(self.random_state)
        self.trainable_parameter_names_ = names
        self.n_params_ = int(sum(p.numel() for p in params))

    def _resolve_projection(self, n_samples, n_outputs):
        """``projection_`` (the choice of ``"auto"`` for N·C rows) and ``n_columns_``."""
        self.projection_ = resolve_projection(
            self.projection, n_rows=n_samples * n_outputs, n_params=self.n_params_,
            projection_dim=self.projection_dim, jacobian_method=self.jacobian_method)
        self.n_columns_ = self.n_params_ if self.projection_ is None else int(self.projection_dim)

    def _extract(self, X, y, resolve=False):
        """JacobianRows of ``X`` (with the targets ``y``, or those of a Dataset)."""
        max_memory = self._check_params()
        names = self.trainable_parameter_names_
        missing = set(names) - {n for n, p in self.model.named_parameters() if p.requires_grad}
        if missing:
            raise ValueError(f"the model's trainable parameters changed since fit (missing "
                             f"{sorted(missing)}); fit again.")
        if not resolve:  # transform: rows with the fit's columns (set_params after fit)
            n_params = sum(p.numel() for p in trainable_parameters(self.model)[1])
            if n_params != self.n_params_:
                raise ValueError(f"the model's trainable parameters changed since fit ({n_params} "
                                 f"parameters, fitted with {self.n_params_}); fit again.")
            if self.projection_ is not None and int(self.projection_dim) != self.n_columns_:
                raise ValueError(f"projection_dim={self.projection_dim} was set after fit, which "
                                 f"projected to {self.n_columns_} columns: transform would give "
                                 "rows of another projection than the fit's. Call fit again (or "
                                 f"set projection_dim={self.n_columns_} back).")
        _, dtype = model_device_dtype(self.model)
        with model_untouched(self.model) as model:
            inputs, targets = as_inputs(X, y, float_dtype=dtype)
            inputs = inputs.bind_output(check_output(self.output))
            # C from the first sample (and a model that takes X); f0 comes with the rows
            n_outputs = int(check_finite_outputs(first_outputs(model, inputs)).shape[1])
            if resolve:
                self.n_outputs_ = n_outputs
                self._resolve_projection(n_samples_of(inputs), self.n_outputs_)
            elif n_outputs != self.n_outputs_:  # transform reads the fit, never rewrites it
                raise ValueError(f"the model gives {n_outputs} outputs on X but {self.n_outputs_} "
                                 "at fit (another output= or model since fit?); fit again.")
            rows, f0 = full_jacobian_rows(
                model, inputs, names, n_outputs=n_outputs, projection=self.projection_,
                projection_dim=self.projection_dim, seed=self.seed_, chunk_size=self.chunk_size,
                n_jobs=self.n_jobs, max_memory=max_memory, verbose=self.verbose,
                jacobian_method=self.jacobian_method, return_outputs=True)
            check_finite_outputs(f0)
        return JacobianRows(rows, f0, None if targets is None else targets.numpy(),
                            n_params=self.n_params_, parameter_names=list(names),
                            projection=self.projection_, seed=self.seed_)

    def fit(self, X, y=None):
        """Check the model, draw the projection seed and read C (one forward pass).

        Parameters
        ----------
        X : Tensor, ndarray, tuple of those, or torch.utils.data.Dataset
            Inputs (first axis = samples) in whatever dtype the model takes.
        y : ignored
            Accepted for pipelines; the targets reach the output through
            :meth:`fit_transform`.

        Returns
        -------
        self : JacobianFeatures
        """
        self._setup()
        _, dtype = model_device_dtype(self.model)
        with model_untouched(self.model) as model:
            inputs, _ = as_inputs(X, y, float_dtype=dtype)
            inputs = inputs.bind_output(check_output(self.output))
            self.n_outputs_ = int(first_outputs(model, inputs).shape[1])
        self._resolve_projection(n_samples_of(inputs), self.n_outputs_)
        return self

    def transform(self, X):
        """Per-sample Jacobian rows and outputs of ``X``.

        Parameters
        ----------
        X : Tensor, ndarray, tuple of those, or torch.utils.data.Dataset
            A Dataset's targets are kept in the output.

        Returns
        -------
        rows : JacobianRows
            ``rows.rows`` of shape (N·C, D0), ``rows.f0`` of shape (N, C),
            ``rows.targets`` (None unless X is a Dataset).
        """
        check_is_fitted(self, "seed_")
        return self._extract(X, None)

    def fit_transform(self, X, y=None, **fit_params):
        """:meth:`fit`, then :meth:`transform` of ``X`` with the targets ``y`` attached.

        Parameters
        ----------
        X : Tensor, ndarray, tuple of those, or torch.utils.data.Dataset
        y : array-like or None, default=None
            Class indices or targets, passed on in ``rows.targets`` (None
            when X is a Dataset, whose targets are used).

        Returns
        -------
        rows : JacobianRows
        """
        self._setup()
        return self._extract(X, y, resolve=True)

    def __getstate__(self):
        state = super().__getstate__()
        if isinstance(state.get("model"), torch.nn.Module):
            state = dict(state, model=_SavedModule(state["model"]))
        return state

    def __setstate__(self, state):
        if isinstance(state.get("model"), _SavedModule):
            state = dict(state, model=state["model"].load())
        super().__setstate__(state)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        tags.target_tags.required = False
        return tags
