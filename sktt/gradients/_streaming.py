"""Streamed inputs: a map-style ``Dataset`` (or a ``DataLoader`` over one), read on demand.

A data set larger than memory is never collated whole. :func:`stream_inputs`
reads it once, a chunk of samples at a time, to keep what is small -- the
targets ``y`` -- and to check every sample at the boundary (the ``(x, y)``
structure, the same inputs in every chunk, finite floats); the inputs it
returns are a :class:`DatasetInputs`, which collates the samples a consumer
asks for (``inputs[a:b]``, ``inputs[index_array]``) when it asks, with the
dataset's ``__getitem__`` and the loader's ``collate_fn``. Every pass of ``fit``
and after it (outputs at w0, the Jacobian rows, the trust diagnostic's
vector-Jacobian products, refresh and re-linearisation, held-out rows, real
training in :mod:`sktt.validation`) goes through that indexing, so none holds
more than its chunks in flight, whatever N is.

Contract (that of a map-style dataset): ``dataset[i]`` returns the same
sample every time it is asked. Random augmentation in ``__getitem__`` makes
each pass see different inputs, and the linearisation is then of no fixed data
set.

What a ``DataLoader`` contributes is its dataset and its ``collate_fn`` (e.g.
a tokenizer's padding; with ``batch_size=None`` it converts each item, as the
loader does, and the items are then batched with ``default_collate``): its
``batch_size``, ``shuffle``, ``drop_last`` and ``num_workers`` do not define
anything here. The training batches are the
estimator's (``batch_size``, seeded from ``random_state``); the extraction
chunks are ``chunk_size`` / the memory budget's; samples are read in the
main process. A sampler other than the default (sequential or shuffling over
every sample) would select samples, which is refused: pass a
``torch.utils.data.Subset`` instead. An ``IterableDataset`` has no random
access -- the trust diagnostic, refresh and re-linearisation, and the real
training of a validation, all draw batches at random -- so it is refused with
the accepted types rather than silently held in memory.
"""

import numpy as np
import torch
from torch.utils.data import (BatchSampler, DataLoader, IterableDataset, RandomSampler,
                              SequentialSampler, TensorDataset, default_collate, default_convert)

from ._inputs import LazyInputs, _check_inputs, _structure, _to_tensor

__all__ = ["DatasetInputs", "stream_inputs"]

ACCEPTED_DATASET = ("a map-style torch.utils.data.Dataset (with __len__ and __getitem__) "
                    "yielding (x, y) pairs, or a torch.utils.data.DataLoader over one (or over "
                    "any items, with a collate_fn that makes (x, y) batches) with the default "
                    "sampler (shuffle=True or False)")
_READ_CHUNK = 256  # samples collated at a time by the targets pass


def _pair(item, where):
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        extra = f" of length {len(item)}" if isinstance(item, (tuple, list)) else ""
        raise ValueError(f"X is a {where} {type(item).__name__}{extra}; accepted: (x, y) pairs.")
    return item


class DatasetInputs(LazyInputs):
    """The inputs of a map-style dataset, collated on demand (see the module docstring).

    Parameters
    ----------
    dataset : torch.utils.data.Dataset
        Yields ``(x, y)`` pairs (any items with a ``collate_fn`` that makes ``(x, y)``
        batches of them); only read, never modified.
    collate_fn : callable
        Turns a list of items into an ``(x, y)`` batch.
    float_dtype : torch.dtype
        Floating inputs are cast to this (the model's parameter dtype).
    source : str
        ``"Dataset"`` or ``"DataLoader"``, for messages.
    """

    def __init__(self, dataset, collate_fn, float_dtype, source):
        super().__init__(len(dataset))
        self.dataset = dataset
        self.collate_fn = collate_fn
        self.float_dtype = float_dtype
        self.source = source

    def _collate(self, positions):
        items = [self.dataset[int(i)] for i in positions]
        if self.collate_fn is default_collate:  # the items themselves must be the pairs
            items = [_pair(item, f"{self.source} whose item {int(i)} is")
                     for i, item in zip(positions, items)]
        # a loader's own collate_fn may make the (x, y) batch from other items (dicts of a
        # tokenised dataset, ...): what it returns is checked
        try:
            batch = self.collate_fn(items)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"X is a {self.source} whose items {int(positions[0])}.."
                            f"{int(positions[-1])} cannot be batched by its collate_fn: "
                            f"{type(exc).__name__}: {exc}; accepted: (x, y) pairs, x a tensor / "
                            "array, a tuple or a dict of them, of one structure for every "
                            "item.") from exc
        return _pair(batch, f"{self.source} whose collate_fn returned")

    def _fetch(self, positions):
        x, _ = self._collate(positions)
        return _structure(x, self.float_dtype)

    def read_targets(self, verbose=0):
        """All targets, in one pass over the samples in chunks; every chunk of inputs is
        checked (structure, sample count, finite floats) and dropped.

        Parameters
        ----------
        verbose : int, default=0
            > 0: a tqdm bar in samples (rate and ETA).

        Returns
        -------
        Tensor of shape (N, ...)
        """
        ys, layout = [], None
        bar = None
        if verbose:
            from tqdm.auto import tqdm  # only when a bar is asked for

            bar = tqdm(total=self.n_samples, desc="Reading X", unit="sample")
        for start in range(0, self.n_samples, _READ_CHUNK):
            positions = np.arange(start, min(start + _READ_CHUNK, self.n_samples))
            where = f" (samples {start}..{positions[-1]})"
            x, y = self._collate(positions)
            try:
                chunk = _structure(x, self.float_dtype)
                n = _check_inputs(chunk, where)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"{self.source} items{where}: {exc}") from None
            y = _to_tensor("y", y, None)
            if n != len(positions) or y.ndim == 0 or len(y) != len(positions):
                raise ValueError(f"X is a {self.source} whose collate_fn returned {n} inputs and "
                                 f"{len(y) if y.ndim else 'a scalar y'} targets for "
                                 f"{len(positions)} items{where}; accepted: batches with the "
                                 "samples on axis 0.")
            here = (len(chunk.args), tuple(chunk.kwargs))
            if layout is not None and here != layout:
                raise ValueError(f"X is a {self.source} whose items{where} hold different "
                                 f"inputs ({here[0]} positional, keywords {list(here[1])}) than "
                                 f"sample 0 ({layout[0]} positional, keywords "
                                 f"{list(layout[1])}); accepted: the same inputs in every item.")
            layout = here
            ys.append(y)
            if bar is not None:
                bar.update(len(positions))
        if bar is not None:
            bar.close()
        return torch.cat(ys)


class _ConvertThenCollate:
    """The collate_fn of a loader without automatic batching (``batch_size=None``): its
    ``collate_fn`` converts each item (what the loader yields), then the items are batched
    with ``default_collate``. A class, not a closure, so a fitted predictor pickles."""

    def __init__(self, convert):
        self.convert = convert

    def __call__(self, items):
        return default_collate([self.convert(item) for item in items])


def _loader_parts(loader):
    """``(dataset, collate_fn)`` of a DataLoader whose sampler visits every sample."""
    dataset = loader.dataset
    if isinstance(dataset, IterableDataset):
        return dataset, None
    sampler = loader.sampler
    every = isinstance(sampler, SequentialSampler) or (
        isinstance(sampler, RandomSampler) and not sampler.replacement
        and sampler.num_samples == len(dataset))
    batches = loader.batch_sampler
    if not every or (batches is not None and (type(batches) is not BatchSampler
                                              or batches.sampler is not sampler)):
        custom = sampler if not every else batches
        raise ValueError(f"X is a DataLoader with a {type(custom).__name__}: sktt reads every "
                         "sample of its dataset and draws its own training batches "
                         "(batch_size, random_state); accepted: the default sampler (shuffle="
                         "True or False). For part of a dataset pass "
                         "torch.utils.data.Subset(dataset, indices).")
    if batches is not None:
        return dataset, loader.collate_fn
    # without automatic batching the loader's collate_fn converts single items: apply it to
    # each (the items the loader yields), then batch them
    if loader.collate_fn is default_convert:
        return dataset, default_collate
    return dataset, _ConvertThenCollate(loader.collate_fn)


def stream_inputs(X, float_dtype, verbose=0):
    """Streamed inputs and materialised targets of a Dataset or DataLoader.

    Parameters
    ----------
    X : torch.utils.data.Dataset or torch.utils.data.DataLoader
        A map-style dataset yielding ``(x, y)`` pairs (x: a tensor / array, a
        tuple of them -- positional inputs -- or a dict -- keyword inputs); a
        DataLoader stands for its dataset and ``collate_fn``, which may make the
        ``(x, y)`` batches from items of any form (e.g. dicts with a label key).
    float_dtype : torch.dtype
    verbose : int, default=0
        > 0: a tqdm bar for the targets pass.

    Returns
    -------
    inputs : DatasetInputs or ModelInputs
        ModelInputs for a ``TensorDataset``, whose tensors are in memory already.
    y : Tensor of shape (N, ...)

    Raises
    ------
    TypeError
        For an ``IterableDataset`` or a dataset without ``__len__``.
    ValueError
        For an empty dataset, items that are not ``(x, y)`` pairs, a custom
        sampler, inputs whose structure changes or non-finite inputs.
    """
    loader = isinstance(X, DataLoader)
    dataset, collate_fn = _loader_parts(X) if loader else (X, default_collate)
    source = "DataLoader" if loader else "Dataset"
    what = f"X is a DataLoader over a {type(dataset).__name__}" if loader else \
        f"X is a {type(dataset).__name__}"
    if isinstance(dataset, IterableDataset):
        raise TypeError(f"{what}, an IterableDataset: it has no random access, which the trust "
                        "diagnostic, refresh and the real training draw batches with; "
                        f"accepted: {ACCEPTED_DATASET}; or tensors (collate the stream first).")
    try:
        n = len(dataset)
    except TypeError:
        raise TypeError(f"{what} without __len__; accepted: {ACCEPTED_DATASET}.") from None
    if n == 0:
        raise ValueError("X is empty (0 samples); accepted: at least 1 sample.")
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2 and (
            collate_fn is default_collate):  # in memory already: index its tensors
        inputs = _structure(dataset.tensors[0], float_dtype)
        _check_inputs(inputs)
        return inputs, dataset.tensors[1]
    inputs = DatasetInputs(dataset, collate_fn, float_dtype, source)
    return inputs, inputs.read_targets(verbose)
