"""Start-up stays cheap: ``import sktt`` loads no heavy optional library.

Checked through ``sys.modules`` in a fresh interpreter, never by wall-clock time
(``benchmarks/bench_import.py`` measures the times).
"""

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
OPTIONAL = ["matplotlib", "pandas", "dask", "distributed", "transformers"]


def _loaded(statement, watch):
    code = f"import sys\n{statement}\nprint(','.join(m for m in {watch!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    return [m for m in out.stdout.strip().split(",") if m]


def test_import_sktt_loads_nothing_heavy():
    assert _loaded("import sktt", OPTIONAL + ["torch", "sklearn", "scipy"]) == []


def test_public_names_still_resolve():
    assert _loaded("import sktt\nassert sktt.TrainingTimePredictor.__name__ == "
                   "'TrainingTimePredictor'\nfrom sktt import compare, GramSpectrum\n"
                   "assert 'gradients' in dir(sktt)", ["sktt.estimators"]) == ["sktt.estimators"]


def test_gradients_need_neither_scikit_learn_nor_plotting():
    # what a joblib worker imports to extract gradients
    assert _loaded("import sktt.gradients", OPTIONAL + ["sklearn", "scipy.stats"]) == []


@pytest.mark.parametrize("statement", ["from sktt import TrainingTimePredictor, compare",
                                       "import sktt.validation"])
def test_estimators_do_not_load_plotting_or_dask(statement):
    # scikit-learn itself imports pandas and scipy.stats (>= 1.7): not asserted here
    assert _loaded(statement, ["matplotlib", "dask", "distributed", "transformers"]) == []
