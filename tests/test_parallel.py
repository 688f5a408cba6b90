"""Parallel and distributed gradient extraction: joblib backends, Dask, threads, progress,
memory budget."""

import os
import sys

import joblib
import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.pipeline import make_pipeline

from sktt import JacobianFeatures, TrainingTimePredictor, compare
from sktt.datasets import load_demo
from sktt.exceptions import MemoryBudgetError
from sktt.gradients._extraction import _chunk_plan
from sktt.gradients._parallel import (_batches, _probe, _Shared, cap_chunk_size, map_chunks,
                                      n_workers_for, plan_n_chunks, threads_per_task)

N_CPU = joblib.cpu_count()


@pytest.fixture(scope="module")
def demo():
    return load_demo(40, dtype=torch.float64)


def _predictor(model, **kw):
    kw.setdefault("random_state", 0)
    kw.setdefault("trust_check", False)  # the diagnostic is not what these tests are about
    return TrainingTimePredictor(model, **kw)


def _square(x, offset):
    return x * x + offset


# ---------------------------------------------------------------------- map_chunks
def test_batches_are_contiguous_and_balanced():
    items = list(range(13))
    for k in (1, 2, 4, 5, 13):
        parts = _batches(items, k)
        assert len(parts) == k
        assert [i for p in parts for i in p] == items
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_map_chunks_keeps_order(n_jobs):
    out = map_chunks(_square, list(range(11)), 3, n_jobs=n_jobs)
    assert out == [x * x + 3 for x in range(11)]


def test_n_jobs_none_follows_parallel_config():
    assert n_workers_for(None) == 1
    with joblib.parallel_config(n_jobs=2):
        assert n_workers_for(None) == 2
        assert n_workers_for(None, n_tasks=1) == 1
        pids = {pid for pid, _ in map_chunks(_probe, range(4))}  # n_jobs=None: the context's
    assert os.getpid() not in pids  # ran in worker processes, not in turn here


def test_torch_threads_pinned_inside_workers():
    threads = {t for _, t in map_chunks(_probe, range(8), n_jobs=2)}
    assert threads == {max(1, N_CPU // 2)}  # no n_workers x all-cores oversubscription
    assert threads_per_task(2) == max(1, N_CPU // 2)
    # joblib's own knob wins when given (checked without starting a second pool of workers)
    with joblib.parallel_config(backend="loky", inner_max_num_threads=3):
        assert threads_per_task(2) == 3


def test_threading_backend_gives_same_kernel_and_restores_threads(demo):
    ref = _predictor(demo.model, projection="countsketch", projection_dim=256).fit(demo.X, demo.y)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with joblib.parallel_config(backend="threading", n_jobs=2):
            est = _predictor(demo.model, projection="countsketch", projection_dim=256)
            est.fit(demo.X, demo.y)
        # tasks pinned the (process-wide) thread count; the caller's is restored
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    # functional_call is not thread-safe on one module: tasks work on private copies
    assert_array_equal(est.ntk_, ref.ntk_)


def test_shared_arguments_report_their_tensor_bytes(demo):
    """joblib's Dask backend scatters task arguments whose dask.sizeof > 1 kB: the model
    bundle must count its tensors so that it travels once, not with every task."""
    dask_sizeof = pytest.importorskip("dask.sizeof").sizeof
    n_bytes = sum(p.numel() * p.element_size() for p in demo.model.parameters())
    assert dask_sizeof(demo.model) < 1000  # why the bundle is needed
    assert dask_sizeof(_Shared((demo.model, ["a"]))) >= n_bytes


# ---------------------------------------------------------------------- identical results
@pytest.mark.parametrize("projection", [None, "countsketch"])
def test_kernel_identical_for_n_jobs_1_and_2(demo, projection):
    kw = dict(projection=projection, projection_dim=256)
    one = _predictor(demo.model, n_jobs=1, **kw).fit(demo.X, demo.y)
    two = _predictor(demo.model, n_jobs=2, **kw).fit(demo.X, demo.y)
    assert_array_equal(two.ntk_, one.ntk_)
    assert_array_equal(two.f0_, one.f0_)
    feats1 = JacobianFeatures(demo.model, n_jobs=1, random_state=0, **kw).fit_transform(demo.X)
    feats2 = JacobianFeatures(demo.model, n_jobs=2, random_state=0, **kw).fit_transform(demo.X)
    assert_array_equal(feats2.rows, feats1.rows)


def test_functorch_path_identical_for_n_jobs(cnn_problem):
    """A model without layer-wise rules (tiny conv net in float64) through both paths."""
    model, X, y = cnn_problem
    one = _predictor(model, n_jobs=1).fit(X, y)
    two = _predictor(model, n_jobs=2).fit(X, y)
    assert_array_equal(two.ntk_, one.ntk_)


def test_chunk_plan_same_for_one_and_two_workers_and_shares_memory():
    # >= 8 chunks (and >= 2 per worker): same chunking, hence same bits, for n_jobs 1 and 2
    assert plan_n_chunks(100, 1) == plan_n_chunks(100, 2) == 8
    assert plan_n_chunks(100, 8) == 16
    assert plan_n_chunks(5, 2) == 5
    assert cap_chunk_size(256, 100, 1) == cap_chunk_size(256, 100, 2) == 13
    assert cap_chunk_size(4, 100, 2) == 4  # a memory-bound size is only ever lowered
    # memory-bound: concurrent chunks share max_memory, so two workers get smaller chunks
    big = dict(n=10_000, n_outputs=10, n_params=10**6, itemsize=4, avail=0, chunk_size=None)
    one, _ = _chunk_plan(None, max_memory=2**30, n_jobs=1, **big)
    two, _ = _chunk_plan(None, max_memory=2**30, n_jobs=2, **big)
    assert 1 <= two < one
    assert 3 * 10 * 10**6 * 4 * one <= 2**30 // 4  # per-sample Jacobians x3 in a quarter


# ---------------------------------------------------------------------- memory
def test_kernel_memory_error_names_size_and_alternatives(demo):
    n_rows = 40 * 5
    with pytest.raises(MemoryBudgetError, match=r"200×200 float64 = 312\.5 KiB.*GramSpectrum"):
        _predictor(demo.model, max_memory=n_rows * n_rows * 8 - 1).fit(demo.X, demo.y)
    # the same in a pipeline: the precomputed predictor asked to build Θ from the rows
    features = JacobianFeatures(demo.model, projection="countsketch", projection_dim=64,
                                random_state=0)
    pipe = make_pipeline(features, TrainingTimePredictor("precomputed", max_memory="100KB",
                                                         ntk="dense"))
    with pytest.raises(MemoryBudgetError, match=r"Θ for N=40 samples × C=5 outputs.*subset"):
        pipe.fit(demo.X, demo.y)
    # ntk="auto" (the default) keeps the projected rows instead: Θ is never formed
    pipe = make_pipeline(features, TrainingTimePredictor("precomputed", max_memory="100KB"))
    assert pipe.fit(demo.X, demo.y)[-1].ntk_mode_ == "factored"


def test_features_memory_error_names_size_and_alternatives(demo):
    n_params = sum(p.numel() for p in demo.model.parameters())
    with pytest.raises(MemoryBudgetError, match=rf"200×{n_params} .*float64 = .*projection="):
        JacobianFeatures(demo.model, max_memory="1MB").fit_transform(demo.X, demo.y)
    with pytest.raises(MemoryBudgetError, match=r"200×4096 .*lower projection_dim"):
        JacobianFeatures(demo.model, projection="countsketch", projection_dim=4096,
                         max_memory="1MB").fit_transform(demo.X, demo.y)
    # within budget: rows of 200 x 256 float64 = 400 KiB
    out = JacobianFeatures(demo.model, projection="countsketch", projection_dim=256,
                           max_memory="1MB", random_state=0).fit_transform(demo.X, demo.y)
    assert out.rows.shape == (200, 256)


# ---------------------------------------------------------------------- progress
@pytest.mark.parametrize("n_jobs", [1, 2])
def test_progress_bar_over_chunks(demo, capfd, n_jobs):
    _predictor(demo.model, projection="countsketch", projection_dim=64, n_jobs=n_jobs,
               verbose=1).fit(demo.X, demo.y)
    err = capfd.readouterr().err
    assert "Jacobian rows" in err
    assert "40/40" in err and "sample/s" in err  # counted in samples, with the rate
    _predictor(demo.model, projection="countsketch", projection_dim=64, n_jobs=n_jobs,
               verbose=0).fit(demo.X, demo.y)
    assert "Jacobian rows" not in capfd.readouterr().err


# ---------------------------------------------------------------------- Dask
@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                       dashboard_address=None)
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="LocalCluster start-up is slow on Windows")
def test_dask_local_cluster_gives_identical_kernel(demo, dask_client):
    ref = {p: _predictor(demo.model, projection=p, projection_dim=256, n_jobs=1).fit(demo.X,
                                                                                     demo.y)
           for p in (None, "countsketch")}
    feats_ref = JacobianFeatures(demo.model, projection="countsketch", projection_dim=256,
                                 random_state=0).fit_transform(demo.X, demo.y)
    with joblib.parallel_config(backend="dask"):
        assert n_workers_for(None) == 2
        probes = map_chunks(_probe, range(4))
        for p in (None, "countsketch"):
            est = _predictor(demo.model, projection=p, projection_dim=256).fit(demo.X, demo.y)
            assert_array_equal(est.ntk_, ref[p].ntk_)
            assert_allclose(est.predict_curve(lr=0.01), ref[p].predict_curve(lr=0.01),
                            rtol=0, atol=0)
        feats = JacobianFeatures(demo.model, projection="countsketch", projection_dim=256,
                                 random_state=0).fit_transform(demo.X, demo.y)
    assert_array_equal(feats.rows, feats_ref.rows)
    # compare: the datasets themselves become the Dask tasks
    datasets = {"a": (demo.X[:20], demo.y[:20]), "b": (demo.X[20:], demo.y[20:])}
    kw = dict(projection="countsketch", projection_dim=64, random_state=0, n_steps=20)
    table_ref = compare(demo.model, datasets, {"lr": [0.01, 0.02]}, n_jobs=1, **kw)
    with joblib.parallel_config(backend="dask"):
        table = compare(demo.model, datasets, {"lr": [0.01, 0.02]}, **kw)
    assert table.to_records() == table_ref.to_records()
    worker_pids = set(dask_client.run(os.getpid).values())
    assert {pid for pid, _ in probes} <= worker_pids  # the tasks ran on the cluster
    assert {t for _, t in probes} == {max(1, N_CPU // 2)}
