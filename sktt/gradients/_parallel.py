"""Run one function over sample chunks with joblib: any backend, order kept, threads pinned.

Every place sktt computes gradients hands its chunks to :func:`map_chunks`.

Backends. The backend and, when the caller's ``n_jobs`` is None, the number of
workers come from the active :func:`joblib.parallel_config` (or
``parallel_backend``) context, so ``with parallel_config(backend="dask"):``
runs the same code on a Dask cluster.

Tasks. Chunks are grouped into contiguous batches, about
``TASKS_PER_WORKER`` per worker: the shared arguments (the model, the
projector) are serialised once per *task*, not once per chunk, and results
come back in chunk order whatever the completion order, so the output does
not depend on the backend or on ``n_jobs``.

Threads. Concurrent tasks each running all-core torch oversubscribe the CPU
(on 2 shared cores small convolutions got ~40x slower). Each task therefore
sets ``torch.set_num_threads`` to the ``inner_max_num_threads`` of the joblib
context if given, else ``max(1, joblib.cpu_count() // n_workers)`` (the CPUs
this process may use: affinity and cgroup quotas count, unlike
``os.cpu_count()``); the caller's own thread count is restored afterwards
(thread backends share it). A sequential run (one worker) leaves torch's
threads alone. On Dask, ``n_workers`` is the cluster's total thread count and
the CPUs are the client's: right for a local cluster, and on a multi-host
cluster one thread per task when each worker has as many threads as its host
has cores (the usual set-up).

Small jobs. Starting process workers (each imports torch and receives the model)
costs seconds, more than a whole small extraction: ``n_jobs=2`` made the demo's
fits several times slower than ``n_jobs=1``. :func:`n_jobs_for_work` therefore
runs a fit serially when an explicit ``n_jobs`` asks for workers on fewer than
:data:`MIN_PARALLEL_ENTRIES` Jacobian entries N·C·D (``benchmarks/bench_n_jobs.py``
measures both sides). ``n_jobs=None`` (the active ``parallel_config``, e.g. a
Dask cluster) is left as configured.

Thread safety. ``torch.func.functional_call`` swaps a module's tensors in
place while it runs, so two threads must never differentiate the same module
object. Tasks running off the main thread (joblib's threading backend, Dask
workers with several threads sharing a scattered model) work on a private
deep copy of the shared arguments.
"""

import copy
import gc
import math
import multiprocessing
import os
import sys
import threading

import torch
from joblib import cpu_count, effective_n_jobs
from joblib.parallel import get_active_backend

from ..exceptions import WorkerLostError

__all__ = ["MIN_PARALLEL_ENTRIES", "TASKS_PER_WORKER", "cap_chunk_size", "map_chunks",
           "n_jobs_for_work", "n_workers_for", "plan_n_chunks",
           "threads_per_task"]

# Tasks per worker: enough for load balancing and a moving progress bar, few
# enough that the model is not re-sent for every chunk.
TASKS_PER_WORKER = 2


def n_workers_for(n_jobs, n_tasks=None):
    """Workers joblib would use for ``n_jobs`` in the active context (at most ``n_tasks``)."""
    workers = max(1, int(effective_n_jobs(n_jobs)))
    return workers if n_tasks is None else max(1, min(workers, int(n_tasks)))


#: Fewest Jacobian entries N·C·D for which an explicit ``n_jobs`` starts workers.
MIN_PARALLEL_ENTRIES = 10 ** 9


def n_jobs_for_work(n_jobs, n_entries):
    """``n_jobs``, or 1 when an explicit ``n_jobs`` would start workers for a small job.

    Parameters
    ----------
    n_jobs : int or None
        The caller's ``n_jobs``; None (the active ``parallel_config``) is kept.
    n_entries : int
        N·C·D, the entries of the (unprojected) Jacobian the job computes.
    """
    if n_jobs is None or n_entries >= MIN_PARALLEL_ENTRIES:
        return n_jobs
    return 1


def threads_per_task(n_workers):
    """torch threads for each of ``n_workers`` concurrent tasks (see the module docstring)."""
    backend, _ = get_active_backend()
    inner = getattr(backend, "inner_max_num_threads", None)
    if inner is not None:
        return max(1, int(inner))
    return max(1, cpu_count() // max(1, n_workers))


def _batches(items, n_batches):
    """``items`` split into ``n_batches`` contiguous, near-equal lists (order kept)."""
    n = len(items)
    bounds = [round(k * n / n_batches) for k in range(n_batches + 1)]
    return [items[bounds[k]:bounds[k + 1]] for k in range(n_batches)]


class _Shared:
    """The arguments every task needs (model, projector, plan, ...), as one object.

    One object keeps references between them intact (the layer-wise plan points
    at the model's modules) and lets joblib's Dask backend scatter it once per
    call: it scatters task arguments whose ``dask.sizeof`` exceeds 1 kB, and
    ``dask.sizeof`` falls back to ``sys.getsizeof``, which for a torch module
    would not count its tensors -- ``__sizeof__`` below does.
    """

    def __init__(self, args):
        self.args = tuple(args)

    def __sizeof__(self):
        return object.__sizeof__(self) + sum(_nbytes(a) for a in self.args)


def _nbytes(obj):
    if isinstance(obj, torch.nn.Module):
        tensors = list(obj.parameters()) + list(obj.buffers())
        return sum(t.numel() * t.element_size() for t in tensors)
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    return int(getattr(obj, "nbytes", 0) or 0)


class _InFlight:
    """The tasks of one map that run in this process's threads.

    When a task fails, the map stops tasks that have not started and waits for the
    running ones before raising: a thread left running would go on using the model
    and the global RNG after the caller had restored them. Another process shares
    neither, so a pickled copy starts empty and is never waited for.
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._active = 0
        self._cancelled = False

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.__init__()

    def enter(self):
        with self._cond:
            if self._cancelled:
                return False
            self._active += 1
            return True

    def exit(self):
        with self._cond:
            self._active -= 1
            self._cond.notify_all()

    def cancel_and_wait(self, timeout=600):
        with self._cond:
            self._cancelled = True
            self._cond.wait_for(lambda: self._active == 0, timeout)


def _run_task(func, chunks, threads, shared, flight):
    """One joblib task: ``[func(chunk, *shared.args) for chunk in chunks]``, threads pinned."""
    if not flight.enter():
        return []  # the map already failed: its result is never read
    try:
        if threads is not None and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        args = shared.args
        if threading.current_thread() is not threading.main_thread():
            args = copy.deepcopy(args)  # functional_call is not thread-safe on one module
        out = [func(chunk, *args) for chunk in chunks]
        del args
    finally:
        flight.exit()
    if multiprocessing.current_process().name.startswith("LokyProcess"):
        _release_memory()  # see there: loky's leak guard
    return out


def _release_memory():
    """Give a worker process's freed heap back to the OS.

    loky restarts a worker whose memory grew by more than 300 MB since its first
    task (a leak guard), and glibc keeps freed heap: one chunk of a large model
    (ResNet-18: per-layer temporaries of ~100 MB) then cost a worker restart --
    process spawn and ``import torch`` again -- per task.
    """
    global _MALLOC_TRIM
    gc.collect()
    if _MALLOC_TRIM is None:
        _MALLOC_TRIM = False
        try:
            import ctypes
            import ctypes.util

            name = ctypes.util.find_library("c")
            _MALLOC_TRIM = ctypes.CDLL(name).malloc_trim if name else False
        except (OSError, AttributeError):  # not glibc: nothing to trim
            pass
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM = None  # libc's malloc_trim, looked up on first use


def _probe(chunk):
    """Worker pid and torch threads (used by the tests to check the pinning)."""
    return os.getpid(), torch.get_num_threads()


def _progress(total, verbose, desc):
    from tqdm.auto import tqdm  # only when a bar is asked for

    return tqdm(total=total, desc=desc, disable=not verbose, unit="chunk")


def map_chunks(func, chunks, *shared, n_jobs=None, verbose=0, desc="Jacobian chunks",
               tasks_per_worker=TASKS_PER_WORKER):
    """``[func(chunk, *shared) for chunk in chunks]``, over joblib workers.

    Parameters
    ----------
    func : callable
        A module-level function (picklable by reference), called as
        ``func(chunk, *shared)``.
    chunks : sequence
        The work items, e.g. slices of the inputs.
    *shared
        Arguments common to all chunks (the model, ...). They travel as one
        object: pickled once per task, and on Dask scattered once per call.
    n_jobs : int or None, default=None
        joblib's ``n_jobs``; None defers to the active ``parallel_config``.
    verbose : int, default=0
        > 0: a tqdm bar over chunks (on stderr); > 1 also joblib's own messages.
    desc : str, default="Jacobian chunks"
        Label of the progress bar.
    tasks_per_worker : int, default=TASKS_PER_WORKER
        Chunks are grouped into about ``n_workers * tasks_per_worker`` tasks.

    Returns
    -------
    list
        One result per chunk, in chunk order.
    """
    chunks = list(chunks)
    workers = n_workers_for(n_jobs, len(chunks))
    bar = _progress(len(chunks), verbose, desc) if verbose else None
    try:
        if workers <= 1:
            out = []
            for chunk in chunks:
                out.append(func(chunk, *shared))
                if bar is not None:
                    bar.update(1)
            return out
        threads = threads_per_task(workers)
        tasks = _batches(chunks, min(len(chunks), workers * max(1, int(tasks_per_worker))))
        saved = torch.get_num_threads()
        try:
            # Ordered generator: results arrive in submission order, so the bar moves
            # as the output is assembled and the output order never depends on timing.
            bundle = _Shared(shared)
            flight = _InFlight()
            # scikit-learn's Parallel carries its config into workers; imported here so that
            # importing sktt.gradients (e.g. in a worker) costs no scikit-learn / pandas
            from sklearn.utils.parallel import Parallel, delayed

            results = Parallel(n_jobs=workers, return_as="generator",
                               verbose=10 if verbose > 1 else 0)(
                delayed(_run_task)(func, task, threads, bundle, flight) for task in tasks)
            out = []
            try:
                for part in results:
                    out.extend(part)
                    if bar is not None:
                        bar.update(len(part))
            except BaseException as exc:
                flight.cancel_and_wait()  # no thread of this map outlives the error
                if not isinstance(exc, _lost_worker_errors()):
                    raise
                raise WorkerLostError(
                    f"a parallel worker (joblib backend "
                    f"{type(get_active_backend()[0]).__name__}) was lost while computing "
                    f"{desc}: {type(exc).__name__}: {str(exc).rstrip('.')}. Nothing was fitted. "
                    "A worker killed by the operating system usually ran out of memory: lower "
                    "chunk_size or max_memory, use fewer workers (n_jobs) or a projection; a "
                    "closed Dask cluster must be restarted.") from exc
            return out
        finally:
            if torch.get_num_threads() != saved:  # thread backends share the process setting
                torch.set_num_threads(saved)
    finally:
        if bar is not None:
            bar.close()


def _lost_worker_errors():
    """Exception types that mean a worker or the cluster went away (not an error of the task)."""
    from concurrent.futures import CancelledError
    from concurrent.futures.process import BrokenProcessPool

    from joblib.externals.loky.process_executor import TerminatedWorkerError

    types = [CancelledError, BrokenProcessPool, TerminatedWorkerError]
    if "distributed" in sys.modules:  # only when a Dask backend can be active
        from distributed import KilledWorker
        from distributed.comm.core import CommClosedError

        types += [KilledWorker, CommClosedError]
    return tuple(types)


#: Default least number of chunks of an extraction (:func:`plan_n_chunks`).
MIN_CHUNKS = 8


def plan_n_chunks(n_samples, n_workers, *, min_chunks=MIN_CHUNKS):
    """Chunks to cut ``n_samples`` into so that ``n_workers`` all get work.

    At least ``min_chunks`` (independent of ``n_jobs`` up to ``min_chunks / 2``
    workers, so the chunking -- and the bits of the result -- are the same for
    ``n_jobs=1`` and ``n_jobs=2``) and at least two per worker.
    """
    return max(1, min(int(n_samples), max(int(min_chunks), 2 * int(n_workers))))


def cap_chunk_size(chunk_size, n_samples, n_workers, *, min_chunks=MIN_CHUNKS):
    """``chunk_size`` lowered so that there are :func:`plan_n_chunks` chunks."""
    n_chunks = plan_n_chunks(n_samples, n_workers, min_chunks=min_chunks)
    return max(1, min(int(chunk_size), math.ceil(n_samples / n_chunks)))
