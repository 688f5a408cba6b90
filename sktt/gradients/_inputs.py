"""Turn user data (any container a model takes) into model inputs and targets.

Models take one tensor, several positional tensors, or keyword tensors (a
tokenizer's ``input_ids`` / ``attention_mask``); data arrive as arrays, tuples,
dicts, ``BatchEncoding``, Datasets or DataLoaders. Everything becomes one
:class:`ModelInputs` (positional tuple + keyword dict, samples on axis 0 of every
tensor), so indexing a batch, moving it to a device and calling the model are
the same code everywhere.

Only parameters are ever differentiated, so inputs keep whatever dtype the model
takes: float images are cast to the model's floating dtype, integer token ids
and masks stay integers.

A map-style ``Dataset`` or a ``DataLoader`` is never collated whole: it becomes a
:class:`LazyInputs` (:mod:`._streaming`) that collates the samples a consumer
asks for, when it asks. Every consumer (outputs at w0, Jacobian rows, the
Jacobian operator, the real training loop) reads inputs through ``len`` and
indexing by a slice or an index array, so the same code serves both, and a
streamed data set never holds more than the chunks in flight.
"""

from collections.abc import Mapping

import numpy as np
import torch

__all__ = ["ACCEPTED_X", "ConcatInputs", "LazyInputs", "ModelInputs", "as_inputs",
           "as_model_inputs", "index_inputs", "inputs_to", "length_hint", "n_samples_of"]

ACCEPTED_X = ("a torch.Tensor or numpy array (samples on axis 0); a tuple/list of those "
              "(positional inputs of the model); a dict or transformers BatchEncoding of "
              "str -> tensor (keyword inputs); a map-style torch.utils.data.Dataset yielding (x, y) "
              "pairs, x any of these per sample; or a torch.utils.data.DataLoader over one")


class ModelInputs:
    """A data set (or batch) of model inputs: positional tensors and keyword tensors.

    Every tensor has the samples on axis 0. Indexing selects samples in all of
    them; ``len``, ``shape[0]`` and ``.to(device)`` behave like a tensor's along
    the samples axis, so code written for one input tensor keeps working.

    Parameters
    ----------
    args : tuple of Tensor
        Positional inputs.
    kwargs : dict of str to Tensor, optional
        Keyword inputs.
    output : None, str, int or callable, optional
        The logits selector bound to these inputs (see
        :func:`~sktt.gradients.call_model`): code that only passes inputs along
        (worker tasks, the layer-wise recorder) reads the same logits.
    """

    def __init__(self, args=(), kwargs=None, output=None):
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.output = output
        if not self.args and not self.kwargs:
            raise ValueError(f"X holds no input tensor; accepted: {ACCEPTED_X}.")

    # ------------------------------------------------------------ container
    def tensors(self):
        """``(name, tensor)`` for every input: ``X[i]`` positional, ``X['key']`` keyword."""
        if len(self.args) == 1 and not self.kwargs:
            return [("X", self.args[0])]
        return ([(f"X[{i}]", t) for i, t in enumerate(self.args)]
                + [(f"X[{k!r}]", t) for k, t in self.kwargs.items()])

    def _map(self, fn):
        return ModelInputs(tuple(fn(t) for t in self.args),
                           {k: fn(t) for k, t in self.kwargs.items()}, self.output)

    @property
    def n_samples(self):
        t = self.args[0] if self.args else next(iter(self.kwargs.values()))
        return int(t.shape[0])

    def __len__(self):
        return self.n_samples

    @property
    def shape(self):
        """``(n_samples,)``: only the samples axis is common to all inputs."""
        return torch.Size([self.n_samples])

    @property
    def device(self):
        """The device of the (first) input tensor."""
        return self.tensors()[0][1].device

    def __getitem__(self, index):
        """Samples ``index`` of every input: a slice or integer array / tensor (an integer
        keeps the samples axis: a batch of one)."""
        if isinstance(index, (int, np.integer)):
            index = slice(int(index), int(index) + 1 if index != -1 else None)
        return self._map(lambda t: t[index])

    def to(self, device):
        """The same inputs on ``device`` (dtypes unchanged)."""
        return self._map(lambda t: t.to(device))

    @property
    def has_images(self):
        """Whether some input is an image batch (:func:`_is_image`)."""
        return any(_is_image(t) for _, t in self.tensors())

    def channels_last(self):
        """The same inputs with every image batch (:func:`_is_image`) in
        ``torch.channels_last`` memory format (values, shapes and dtypes unchanged; only
        the strides differ)."""
        return self._map(lambda t: t.contiguous(memory_format=torch.channels_last)
                         if _is_image(t) else t)

    def bind_output(self, output):
        """The same inputs with the logits selector ``output`` bound (None keeps the current)."""
        if output is None:
            return self
        return ModelInputs(self.args, self.kwargs, output)

    @property
    def single_tensor(self):
        """The one input tensor, or None when the model takes several / keyword inputs."""
        return self.args[0] if len(self.args) == 1 and not self.kwargs else None

    def call(self, model):
        """``model(*args, **kwargs)``: the raw output (see :func:`call_model` for logits)."""
        return model(*self.args, **self.kwargs)

    def describe(self):
        """Shapes and dtypes of the inputs, for error messages."""
        shapes, dtypes = [], []
        for i, t in enumerate(self.args):
            shapes.append(str(tuple(t.shape)))
            dtypes.append(str(t.dtype))
        for k, t in self.kwargs.items():
            shapes.append(f"{k}={tuple(t.shape)}")
            dtypes.append(f"{k}={t.dtype}")
        return f"input shape(s) [{', '.join(shapes)}], dtype(s) [{', '.join(dtypes)}]"

    @staticmethod
    def concat(parts):
        """Samples of several ModelInputs of the same structure, in order."""
        first = parts[0]
        if any(len(p.args) != len(first.args) or p.kwargs.keys() != first.kwargs.keys()
               for p in parts):
            raise ValueError("X yields batches of different structures (positional / keyword "
                             f"inputs differ); accepted: {ACCEPTED_X}.")
        return ModelInputs(
            tuple(torch.cat([p.args[i] for p in parts]) for i in range(len(first.args))),
            {k: torch.cat([p.kwargs[k] for p in parts]) for k in first.kwargs}, first.output)

    def __repr__(self):
        return f"ModelInputs({self.n_samples} samples, {self.describe()})"


def _is_image(t):
    """Whether ``t`` is a floating (samples, channels, height, width) tensor."""
    return t.ndim == 4 and t.is_floating_point()


def _positions(index, n):
    """Sample positions (int64 array) of a slice, an integer or an index array / tensor."""
    if isinstance(index, slice):
        return np.arange(*index.indices(n), dtype=np.int64)
    if isinstance(index, (int, np.integer)):
        index = [index]
    if isinstance(index, torch.Tensor):
        index = index.detach().cpu().numpy()
    pos = np.asarray(index).reshape(-1)
    if pos.dtype.kind not in "iu":
        raise IndexError(f"samples are selected by a slice or integer indices; got dtype "
                         f"{pos.dtype}.")
    pos = np.where(pos < 0, pos + n, pos).astype(np.int64)
    if pos.size and (pos.min() < 0 or pos.max() >= n):
        raise IndexError(f"sample index out of range for {n} samples.")
    return pos


class LazyInputs:
    """Model inputs that are collated on demand, the samples asked for when asked.

    The common face of :class:`ModelInputs` for data that must not be held
    whole (a streamed ``Dataset``, :class:`DatasetInputs
    <sktt.gradients._streaming.DatasetInputs>`; the concatenation of training and
    held-out inputs, :class:`ConcatInputs`): ``len``, ``shape[0]``, indexing by a
    slice or an index array (which returns :class:`ModelInputs` of those samples),
    ``.to(device)`` and :meth:`bind_output`. Subclasses implement ``_fetch``.

    Parameters
    ----------
    n_samples : int
    output : None, str, int or callable, optional
        The bound logits selector (:meth:`ModelInputs.bind_output`).
    device : torch.device or None, optional
        Where fetched samples are moved (None: where they are collated).
    """

    def __init__(self, n_samples, output=None, device=None):
        self._n = int(n_samples)
        self.output = output
        self._device = device

    def _fetch(self, positions):
        """:class:`ModelInputs` of the samples at ``positions`` (int64 array), in that order."""
        raise NotImplementedError

    @property
    def n_samples(self):
        return self._n

    def __len__(self):
        return self._n

    @property
    def shape(self):
        """``(n_samples,)``, as :attr:`ModelInputs.shape`."""
        return torch.Size([self._n])

    @property
    def device(self):
        """Where fetched samples end up (the CPU unless moved with :meth:`to`)."""
        return torch.device("cpu") if self._device is None else self._device

    def __getitem__(self, index):
        """Samples ``index`` (slice, integer, index array / tensor), collated now."""
        chunk = self._fetch(_positions(index, self._n)).bind_output(self.output)
        return chunk if self._device is None else chunk.to(self._device)

    def _replace(self, **attrs):
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__, **attrs)
        return other

    def to(self, device):
        """The same inputs, fetched samples moved to ``device``."""
        return self._replace(_device=torch.device(device))

    def bind_output(self, output):
        """The same inputs with the logits selector ``output`` bound (None keeps the current)."""
        return self if output is None else self._replace(output=output)

    def tensors(self):
        """``(name, tensor)`` of sample 0 (a batch of one): the per-sample shapes and dtypes."""
        return self[:1].tensors()

    def describe(self):
        """The number of samples and sample 0's shapes and dtypes, for error messages."""
        return f"{self._n} samples read on demand, sample 0: {self[:1].describe()}"

    def __repr__(self):
        return f"{type(self).__name__}({self.describe()})"


class ConcatInputs(LazyInputs):
    """Samples of several inputs (ModelInputs or LazyInputs of one structure, on one device),
    in order.

    Nothing is concatenated until samples are asked for: training inputs that are
    streamed stay streamed when the held-out ones are appended.

    Parameters
    ----------
    parts : list of ModelInputs or LazyInputs
    """

    def __init__(self, parts):
        self.parts = list(parts)
        self._offsets = np.cumsum([0] + [len(p) for p in self.parts])
        super().__init__(self._offsets[-1], self.parts[0].output)

    def _fetch(self, positions):
        part_of = np.searchsorted(self._offsets, positions, side="right") - 1
        picked, order = [], []
        for k in np.unique(part_of):
            mine = np.flatnonzero(part_of == k)
            picked.append(self.parts[k][torch.as_tensor(positions[mine] - self._offsets[k])])
            order.append(mine)
        out = picked[0] if len(picked) == 1 else ModelInputs.concat(picked)
        order = np.concatenate(order)
        if np.array_equal(order, np.arange(len(order))):
            return out
        return out[torch.as_tensor(np.argsort(order))]


def length_hint(a, b):
    """A sentence for messages when two integer (token) inputs differ only in their
    sequence length, the usual cause being padding; empty otherwise."""
    if a.is_floating_point() or b.is_floating_point() or a.ndim != b.ndim or a.ndim < 2 or (
            tuple(a.shape[2:]) != tuple(b.shape[2:])):
        return ""
    return (" Token ids padded to different lengths (X and X_val tokenized apart, or a "
            "collate_fn padding each batch to its longest) are refused as held-out data: "
            "pad both to one length, e.g. tokenizer(..., padding='max_length', max_length=L).")


def _to_tensor(name, value, float_dtype):
    if isinstance(value, torch.Tensor):
        t = value.detach()
    else:
        try:
            arr = np.asarray(value)
        except Exception as exc:  # noqa: BLE001 - re-raised with the parameter name
            raise TypeError(f"{name} of type {type(value).__name__} cannot be converted to a "
                            f"tensor; accepted: {ACCEPTED_X}.") from exc
        if arr.dtype.kind == "O" and not hasattr(value, "dtype"):  # a set, a model, None...
            raise TypeError(f"{name} of type {type(value).__name__} is not accepted; accepted: "
                            f"{ACCEPTED_X}.")
        if arr.dtype.kind not in "biuf":  # object, str, bytes, datetime, complex
            raise TypeError(f"{name} has dtype {arr.dtype}; accepted: numeric arrays or tensors.")
        if not arr.flags.writeable:  # e.g. a pandas Series: torch warns on read-only memory
            arr = arr.copy()
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if float_dtype is not None and t.is_floating_point() and t.dtype != float_dtype:
        t = t.to(float_dtype)
    return t


def _is_array(value):
    return isinstance(value, (torch.Tensor, np.ndarray))


def _structure(X, float_dtype):
    """ModelInputs of an in-memory container (no Dataset / DataLoader)."""
    if isinstance(X, ModelInputs):
        return X._map(lambda t: _to_tensor("X", t, float_dtype))
    if isinstance(X, Mapping):
        bad = [k for k in X if not isinstance(k, str)]
        if bad:
            raise TypeError(f"X is a {type(X).__name__} with non-str key(s) {bad[:3]}; "
                            f"accepted: {ACCEPTED_X}.")
        if not X:
            raise ValueError(f"X is an empty {type(X).__name__}; accepted: {ACCEPTED_X}.")
        return ModelInputs((), {k: _to_tensor(f"X[{k!r}]", v, float_dtype)
                                for k, v in X.items()})
    if isinstance(X, list) and not all(_is_array(x) for x in X):
        X = np.asarray(X) if X else X  # nested lists of numbers are one array, not several inputs
    if isinstance(X, (tuple, list)):
        if not X:
            raise ValueError(f"X is an empty {type(X).__name__}; accepted: {ACCEPTED_X}.")
        return ModelInputs(tuple(_to_tensor(f"X[{i}]", x, float_dtype) for i, x in enumerate(X)))
    if isinstance(X, (torch.utils.data.Dataset, torch.utils.data.DataLoader, str, bytes)) or (
            X is None):
        raise TypeError(f"X of type {type(X).__name__} is not accepted; accepted: {ACCEPTED_X}.")
    return ModelInputs((_to_tensor("X", X, float_dtype),))


def as_inputs(X, y, *, float_dtype, verbose=0):
    """Inputs as :class:`ModelInputs` and targets as a tensor or ``None``.

    Parameters
    ----------
    X : Tensor, ndarray, tuple/list of those, dict / BatchEncoding, Dataset or DataLoader
        Model inputs, first axis = samples. A tuple or list of tensors holds the
        model's positional inputs, a mapping its keyword inputs. A map-style
        Dataset yields ``(x, y)`` pairs (x one sample of any of the in-memory
        containers); a DataLoader stands for its dataset and ``collate_fn``. Both
        are streamed (:mod:`._streaming`): the targets are read in one pass, the
        inputs collated chunk by chunk whenever a consumer asks; ``y`` must be
        None.
    y : array-like or None
        Targets.
    float_dtype : torch.dtype
        Floating inputs are cast to this (the model's parameter dtype).
    verbose : int, default=0
        > 0: a tqdm bar for the pass that reads a Dataset's targets.

    Returns
    -------
    inputs : ModelInputs or LazyInputs
    y : Tensor or None

    Examples
    --------
    >>> import torch
    >>> batch = {"input_ids": torch.zeros(4, 7, dtype=torch.long),
    ...          "attention_mask": torch.ones(4, 7, dtype=torch.long)}
    >>> inputs, y = as_inputs(batch, [0, 1, 0, 1], float_dtype=torch.float32)
    >>> len(inputs), sorted(inputs.kwargs), inputs[1:3].kwargs["input_ids"].shape
    (4, ['attention_mask', 'input_ids'], torch.Size([2, 7]))
    """
    loader = isinstance(X, torch.utils.data.DataLoader)
    if loader or isinstance(X, torch.utils.data.Dataset):
        if y is not None:
            raise ValueError(f"y must be None when X is a {'DataLoader' if loader else 'Dataset'}"
                             " (its items are (x, y) pairs: y would be given twice); got y of "
                             f"type {type(y).__name__}.")
        from ._streaming import stream_inputs  # the Dataset reader builds on this module

        inputs, y = stream_inputs(X, float_dtype, verbose)
        n = inputs.n_samples
    elif isinstance(X, LazyInputs):  # streamed already, checked when it was read
        inputs, n = X, X.n_samples
    else:
        inputs = _structure(X, float_dtype)
        n = _check_inputs(inputs)
    if y is not None:
        y = _to_tensor("y", y, torch.float64)
        if y.ndim == 0 or y.shape[0] != n:
            got = "a scalar" if y.ndim == 0 else f"{y.shape[0]} samples"
            several = isinstance(X, (tuple, list)) and len(X) > 1
            if several and y.ndim > 0 and y.shape[0] == len(X):
                raise ValueError(
                    f"X is a {type(X).__name__} of {len(X)} tensors, read as {len(X)} positional "
                    f"inputs of the model with {n} samples each, but y has {got}. For one tensor "
                    "per sample, stack them first (torch.stack(X)); a tuple/list X holds the "
                    "model's separate inputs, each with the samples on axis 0.")
            raise ValueError(f"X has {n} samples but y has {got}; they must match.")
    return inputs, y


def _check_inputs(inputs, where=""):
    """The number of samples of in-memory inputs, after the boundary checks (``where``: the
    samples these are, for messages)."""
    named = inputs.tensors()
    for name, t in named:
        if t.ndim == 0:
            raise ValueError(f"{name} must have a leading samples axis; got a 0-d value.")
    n = inputs.n_samples
    if n == 0:
        raise ValueError("X is empty (0 samples); accepted: at least 1 sample.")
    for name, t in named:
        if t.shape[0] != n:
            raise ValueError(f"{name} has {t.shape[0]} samples but {named[0][0]} has {n}; all "
                             "inputs must have the same number of samples.")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"X contains NaN or inf{where}; accepted: finite inputs.")
    return n


def as_model_inputs(x):
    """``x`` as :class:`ModelInputs` without copies or checks (a tensor, tuple or dict batch);
    :class:`LazyInputs` as they are."""
    if isinstance(x, (ModelInputs, LazyInputs)):
        return x
    if isinstance(x, Mapping):
        return ModelInputs((), dict(x))
    if isinstance(x, (tuple, list)):
        return ModelInputs(tuple(x))
    return ModelInputs((x,))


def n_samples_of(inputs):
    """Number of samples in :class:`ModelInputs` / :class:`LazyInputs` (or a tensor / tuple
    of tensors)."""
    return as_model_inputs(inputs).n_samples


def index_inputs(inputs, index):
    """Samples ``index`` (a slice or index array) of :class:`ModelInputs` (or a tensor /
    tuple of tensors; the result has the same type as ``inputs``); of :class:`LazyInputs`,
    those samples collated now, as :class:`ModelInputs`."""
    if isinstance(inputs, (ModelInputs, LazyInputs)):
        return inputs[index]
    if isinstance(inputs, tuple):
        return tuple(t[index] for t in inputs)
    return inputs[index]


def inputs_to(inputs, device):
    """``inputs`` (ModelInputs, tensor or tuple of tensors) on ``device``."""
    if isinstance(inputs, tuple):
        return tuple(t.to(device) for t in inputs)
    return inputs.to(device)
