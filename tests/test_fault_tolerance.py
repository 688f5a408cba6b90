"""Fault tolerance of parallel gradient extraction (docs/reliability.rst).

A worker that raises gives one clear error (the worker's own exception), a worker
that dies or a Dask cluster that goes away gives a ``WorkerLostError``; never a hang,
never a partial Θ: the estimator stays unfitted and the user's model is untouched.
Each call runs under a wall-clock guard so that a regression fails instead of hanging CI.
"""

import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading

import pytest
import torch

from sktt import TrainingTimePredictor
from sktt.exceptions import WorkerLostError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SENTINEL = 123.0  # the sample whose chunk fails


class FailingInWorker(torch.nn.Module):
    """Linear head that fails, only inside a worker process, on the chunk with the sentinel.

    The main process (outputs f0, the layer-wise probe) never sees the failure, so it
    happens in the middle of the parallel extraction. ``action``: an exception type to
    raise, or ``"exit"`` to kill the worker process.
    """

    def __init__(self, action=MemoryError):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(6, 3, dtype=torch.float64)
        self.action = action

    def forward(self, x):
        if (multiprocessing.parent_process() is not None
                and bool((x[:, 0] == SENTINEL).any())):
            if self.action == "exit":
                os._exit(1)
            raise self.action("injected failure in one chunk")
        return self.lin(x)


def _data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(16, 6, generator=g, dtype=torch.float64)
    X[10, 0] = SENTINEL
    return X, torch.randint(0, 3, (16,), generator=g)


def _within(seconds, fn):
    """``fn()``'s exception (or None), failing the test instead of hanging past ``seconds``."""
    box = {}

    def run():
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["exc"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"no result after {seconds} s: the extraction hangs"
    return box.get("exc")


def _untouched(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in
                                                                    model.modules()]


@pytest.mark.parametrize("action, expected", [
    (MemoryError, MemoryError),  # e.g. one chunk out of memory: the same error, re-raised
    ("exit", WorkerLostError),  # the worker process dies (OOM killer, segfault)
], ids=["raises", "dies"])
def test_failing_worker_gives_one_clear_error_and_no_partial_fit(action, expected, monkeypatch):
    monkeypatch.setattr("sktt.gradients._parallel.MIN_PARALLEL_ENTRIES", 0)  # tiny job: workers
    X, y = _data()
    model = FailingInWorker(action)
    state, modes = _untouched(model)
    ttp = TrainingTimePredictor(model, n_jobs=2, chunk_size=2, trust_check=False,
                                jacobian_method="functorch")
    exc = _within(180, lambda: ttp.fit(X, y))
    assert isinstance(exc, expected), repr(exc)
    if expected is MemoryError:
        assert "injected failure in one chunk" in str(exc)
    else:
        assert "was lost while computing Jacobian chunks" in str(exc)
        assert "lower chunk_size or max_memory" in str(exc)
    assert not any(hasattr(ttp, a) for a in ("ntk_", "eigenvalues_", "f0_"))  # nothing partial
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == modes


DASK_SCRIPT = textwrap.dedent("""
    import os, sys, threading, time
    import joblib, torch
    import distributed
    from sktt import TrainingTimePredictor
    from sktt.exceptions import WorkerLostError

    class Slow(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.lin = torch.nn.Linear(6, 3, dtype=torch.float64)

        def forward(self, x):
            if os.environ.get("SKTT_TEST_WORKER"):
                time.sleep(0.3)  # slow on the cluster, so that it can be closed mid-fit
            return self.lin(x)

    if __name__ == "__main__":
        torch.set_num_threads(1)
        cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                           dashboard_address=None)
        client = distributed.Client(cluster)
        client.run(lambda: os.environ.__setitem__("SKTT_TEST_WORKER", "1"))
        X, y = torch.randn(32, 6, dtype=torch.float64), torch.randint(0, 3, (32,))
        ttp = TrainingTimePredictor(Slow(), chunk_size=1, trust_check=False,
                                    jacobian_method="functorch")
        threading.Timer(1.5, cluster.close).start()
        start = time.time()
        try:
            with joblib.parallel_config(backend="dask"):
                ttp.fit(X, y)
            print("RESULT fitted")
        except WorkerLostError as exc:
            print("RESULT WorkerLostError", round(time.time() - start, 1), exc)
        print("FITTED", hasattr(ttp, "ntk_"), flush=True)
        os._exit(0)
""")


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="LocalCluster start-up is slow on Windows")
def test_closing_the_dask_cluster_mid_fit_raises_cleanly(tmp_path):
    pytest.importorskip("distributed")
    script = tmp_path / "close_cluster.py"
    script.write_text(DASK_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=240, env=env, cwd=str(tmp_path))  # a hang fails here
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith(("RESULT", "FITTED"))]
    assert lines and lines[0].startswith("RESULT WorkerLostError"), out.stdout + out.stderr
    assert "was lost while computing Jacobian chunks" in lines[0]
    assert "a closed Dask cluster must be restarted" in lines[0]
    assert float(lines[0].split()[2]) < 60  # seconds from the fit's start to the error
    assert lines[-1] == "FITTED False"
