"""scikit-learn's estimator checks on every estimator that takes them.

:class:`~sktt.GramSpectrum` is checked in ``test_spectrum.py``. The two torch
estimators are checked here with a tiny model that accepts inputs of any width
(its logits are a linear head over row statistics), so that the checks' random
feature matrices are valid inputs. Each check expected to fail says why: sktt's
``X`` is whatever the *model* takes (images, token ids, dicts of tensors), not a
feature matrix, and its messages follow sktt's own wording (docs/reliability.rst).
"""

import warnings

import torch
from sklearn.utils.estimator_checks import parametrize_with_checks

from sktt import JacobianFeatures, TrainingTimePredictor


class AnyWidth(torch.nn.Module):
    """Three logits from row statistics: a model that takes inputs of any number of features."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.head = torch.nn.Linear(3, 3, dtype=torch.float64)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(3, 3, generator=g, dtype=torch.float64))

    def forward(self, x):
        x = x.reshape(len(x), -1).to(torch.float64)
        stats = torch.stack([x.mean(1), x.std(1, unbiased=False), x.abs().amax(1)], 1)
        return self.head(stats)


_MODEL_INPUT = ("X is the model's input (any shape, dtype or container the model takes), not "
                "a feature matrix")
_COMMON = {
    "check_estimators_overwrite_params":
        "the check compares joblib.hash of the model with that of a deepcopy, which differ for "
        "any torch module even without fit (tests/test_untouched.py checks that the model is "
        "not mutated: weights, grads, requires_grad, modes, RNG)",
    "check_n_features_in": _MODEL_INPUT + ": there is no n_features_in_",
    "check_n_features_in_after_fitting": _MODEL_INPUT + ": there is no n_features_in_",
    "check_fit1d": _MODEL_INPUT + "; a 1-D X is N scalar inputs, valid for a model taking them",
    "check_complex_data": "complex inputs are refused with sktt's message (\"X has dtype "
                          "complex...; accepted: numeric arrays or tensors\"), not numpy's",
    "check_dtype_object": "object inputs are refused with sktt's message naming the accepted "
                          "containers, not the wording the check looks for",
    "check_estimators_empty_data_messages": "empty X is refused with sktt's message \"X is "
                                            "empty (0 samples)\" (docs/reliability.rst)",
    "check_estimator_sparse_tag": "torch models take dense tensors; a sparse matrix is refused "
                                  "by the input conversion with the accepted containers, not "
                                  "the check's wording",
    "check_estimator_sparse_array": "as check_estimator_sparse_tag",
    "check_estimator_sparse_matrix": "as check_estimator_sparse_tag",
}
_PREDICTOR = {**_COMMON,
              "check_estimators_nan_inf": "NaN/inf inputs are refused with sktt's message \"X "
                                          "contains NaN or inf\" (docs/reliability.rst)"}
_FEATURES = {
    **_COMMON,
    "check_transformer_general": "transform returns JacobianRows (projected rows plus f0 and "
                                 "targets for the next pipeline step), not an array",
    "check_transformer_general(readonly_memmap=True)": "as check_transformer_general",
    "check_transformer_preserve_dtypes": "as check_transformer_general",
    "check_methods_sample_order_invariance": "as check_transformer_general: the JacobianRows "
                                             "object is compared, not its rows",
    "check_fit2d_predict1d": _MODEL_INPUT + "; a 1-D X is N scalar inputs",
}


def _expected_failed_checks(estimator):
    return _FEATURES if isinstance(estimator, JacobianFeatures) else _PREDICTOR


@parametrize_with_checks(
    [TrainingTimePredictor(AnyWidth(), n_steps=5, trust_check=False, random_state=0),
     JacobianFeatures(AnyWidth(), random_state=0)],
    expected_failed_checks=_expected_failed_checks)
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the checks' random data trip trust/divergence notes
        check(estimator)
