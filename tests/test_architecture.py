"""The layers of sktt and the one direction imports flow (docs/architecture.rst).

Checked statically on every module's import statements (also those inside
functions), so a lazy import cannot hide a wrong-way dependency.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "sktt"

#: layer -> sktt subpackages/modules it must never import (directly or lazily)
FORBIDDEN = {
    "dynamics": {"gradients", "training", "estimators", "validation", "plotting", "cli",
                 "_compare", "datasets"},
    "gram": {"gradients", "training", "estimators", "validation", "plotting", "cli", "_compare",
             "datasets", "dynamics"},
    "utils": {"gradients", "training", "estimators", "validation", "plotting", "cli", "_compare",
              "dynamics", "gram"},
    "gradients": {"training", "estimators", "validation", "plotting", "cli", "_compare",
                  "dynamics"},
    "training": {"estimators", "validation", "plotting", "cli", "_compare"},
    "estimators": {"validation", "plotting", "cli", "_compare"},
    "validation": {"plotting", "cli", "_compare"},
}
#: layers whose code must not import torch at all (the numerical core is numpy/scipy)
NO_TORCH = ("dynamics", "gram")


def _imports(path):
    """(module, level) of every import in ``path``: absolute names and relative ones."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module or "", node.level))
            if node.module is None:  # from .. import x
                found += [(alias.name, node.level) for alias in node.names]
    return found


def _sktt_target(layer_path, module, level):
    """The top-level sktt part an import refers to (None outside sktt)."""
    if level == 0:
        parts = module.split(".")
        return parts[1] if parts[0] == "sktt" and len(parts) > 1 else None
    rel = layer_path.relative_to(PACKAGE).parts[:-1]  # the file's package inside sktt
    base = rel[:len(rel) - (level - 1)] if level > 1 else rel
    name = (list(base) + [p for p in module.split(".") if p])
    return name[0] if name else None


def _layer_files(layer):
    root = PACKAGE / layer
    return sorted(root.rglob("*.py")) if root.is_dir() else [PACKAGE / f"{layer}.py"]


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_imports_flow_one_way(layer):
    wrong = []
    for path in _layer_files(layer):
        for module, level in _imports(path):
            target = _sktt_target(path, module, level)
            if target in FORBIDDEN[layer]:
                wrong.append(f"{path.relative_to(PACKAGE)} imports sktt.{target}")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


@pytest.mark.parametrize("layer", NO_TORCH)
def test_numerical_core_imports_no_torch(layer):
    wrong = [f"{path.relative_to(PACKAGE)}: {module}"
             for path in _layer_files(layer) for module, level in _imports(path)
             if level == 0 and module.split(".")[0] == "torch"]
    assert not wrong, "torch imported in the numpy core:\n" + "\n".join(wrong)


def test_the_checker_sees_a_wrong_way_import(tmp_path):
    """The rule above can fail: a relative import of the estimators from dynamics is caught."""
    fake = PACKAGE / "dynamics" / "_simulate.py"
    assert _sktt_target(fake, "estimators._predictor", 2) == "estimators"
    assert _sktt_target(fake, "_losses", 1) == "dynamics"
    assert _sktt_target(fake, "sktt.training", 0) == "training"
