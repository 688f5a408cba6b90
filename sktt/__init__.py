"""sktt: predict how long fine-tuning a pre-trained PyTorch model takes, without training it.

The model is linearised around its pre-trained weights; its empirical neural
tangent kernel Θ = J Jᵀ on the training set drives the function-space dynamics of
gradient descent / SGD, whose solution gives the whole predicted loss curve and
the ε-training-time (Zancato et al., NeurIPS 2020).
"""

__version__ = "0.1.0"

# Public names are imported on first use (PEP 562): ``import sktt`` costs no torch,
# scikit-learn (which itself imports scipy.stats and pandas) or matplotlib, and joblib
# workers that only need sktt.gradients never import the estimators.
_LAZY = {
    "Comparison": "._compare",
    "compare": "._compare",
    "GramSpectrum": ".estimators",
    "JacobianFeatures": ".estimators",
    "JacobianRows": ".estimators",
    "TrainingTimePredictor": ".estimators",
}
_SUBMODULES = ("cli", "datasets", "dynamics", "estimators", "exceptions", "gradients", "gram",
               "plotting", "utils", "validation")

__all__ = ["Comparison", "GramSpectrum", "JacobianFeatures", "JacobianRows",
           "TrainingTimePredictor", "__version__", "compare"]


def __getattr__(name):
    import importlib

    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # next access is a plain attribute
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'sktt' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))
