"""The minibatch order of a shuffling ``torch.utils.data.DataLoader``.

The batches come from iterating a real DataLoader over ``range(n_samples)``
(so they follow whatever random draws the installed torch makes), epoch after
epoch, from a generator seeded like the user's.

Shared by the SGD simulation (which must see the batches a real run sees) and
the real-training helper.
"""

import numbers

import numpy as np
import torch

__all__ = ["dataloader_batches"]


def _check_int(name, value, low, allow_none=False):
    if value is None and allow_none:
        return None
    if (
        not isinstance(value, numbers.Integral)
        or isinstance(value, bool)
        or value < low
    ):
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
    return int(value)


def dataloader_batches(
    n_samples, batch_size, n_steps, *, seed=None, generator=None, drop_last=False
):
    """Index batches of a shuffling DataLoader, over as many epochs as needed.

    Returns exactly the index sequence that iterating, epoch after epoch,
    ``DataLoader(range(n_samples), batch_size=batch_size, shuffle=True,
    drop_last=drop_last, generator=torch.Generator().manual_seed(seed))``
    yields (``num_workers=0``), truncated to ``n_steps`` batches.

    Parameters
    ----------
    n_samples : int
        Dataset size ``N``.
    batch_size : int
        Minibatch size ``b``. If ``b >= N`` (full batch), every batch is
        ``arange(N)`` in order and no random numbers are drawn (see Notes).
    n_steps : int
        Number of batches to return.
    seed : int, optional
        Seed of the DataLoader's generator. Exclusive with ``generator``.
    generator : torch.Generator, optional
        A generator to draw from (it is advanced, as a DataLoader would).
        If neither ``seed`` nor ``generator`` is given, a fresh
        non-deterministically seeded generator is used (the global torch RNG
        is not touched).
    drop_last : bool, default=False
        Drop the last incomplete batch of each epoch.

    Returns
    -------
    batches : list of numpy.ndarray
        ``n_steps`` int64 index arrays.

    Notes
    -----
    The batches are those of a real DataLoader, iterated with a new ``for``
    per epoch, each epoch run to its end (the DataLoader draws from the
    generator when an iterator is created and when an epoch is exhausted, so
    the sequence is that of a loop over whole epochs).

    For full-batch gradient descent (``b >= N``) the order inside the single
    batch does not change the mean-reduced gradient (up to floating-point
    summation order), so ``arange(N)`` is returned; a real DataLoader would
    yield a permutation (and nothing at all if ``b > N`` and ``drop_last``).

    Examples
    --------
    >>> from sktt.utils._batches import dataloader_batches
    >>> [b.tolist() for b in dataloader_batches(5, 2, 3, seed=0)]
    [[3, 1], [0, 4], [2]]
    """
    n_samples = _check_int("n_samples", n_samples, 1)
    batch_size = _check_int("batch_size", batch_size, 1)
    n_steps = _check_int("n_steps", n_steps, 0)
    seed = _check_int("seed", seed, 0, allow_none=True)  # int("1") and int(1.5) were seeds too
    if seed is not None and generator is not None:
        raise ValueError("Pass either seed or generator, not both.")
    if batch_size >= n_samples:
        return [np.arange(n_samples, dtype=np.int64) for _ in range(n_steps)]
    if generator is None:
        generator = torch.Generator()
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(int(seed))

    loader = torch.utils.data.DataLoader(
        range(n_samples), batch_size=batch_size, shuffle=True, drop_last=drop_last,
        generator=generator, collate_fn=_as_index_array)
    batches = []
    while len(batches) < n_steps:
        # A new iterator per epoch, run to its end unless the steps run out first:
        # the generator is advanced exactly as in a training loop over epochs.
        for batch in loader:
            batches.append(batch)
            if len(batches) == n_steps:
                break
    return batches


def _as_index_array(indices):
    """Collate a batch of ``range`` items into an int64 index array (no tensor round trip)."""
    return np.asarray(indices, dtype=np.int64)
