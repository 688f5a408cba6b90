"""What sktt assumed about the model is said, not silent: train mode, a low-precision dtype.

And the spectrum display accepts what a user has in hand after ``fit``: a fitted
TrainingTimePredictor, not only a GramSpectrum.
"""

import numpy as np
import pytest
import torch
from conftest import RandomFeatureHead

from sktt import TrainingTimePredictor
from sktt.exceptions import AssumptionWarning, NotFittedError
from sktt.utils._torch import model_assumptions, warn_model_assumptions


def _net():
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.1),
                               torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3))


def test_nothing_to_say_for_an_eval_float_model():
    assert model_assumptions(_net().eval()) == []
    assert model_assumptions(_net().double().eval()) == []


def test_train_mode_names_the_mode_dependent_layers():
    (note,) = model_assumptions(_net().train())
    assert note.startswith("the model is in train mode")
    assert "BatchNorm1d, Dropout" in note and "model.eval()" in note
    plain = torch.nn.Linear(2, 2).train()
    assert model_assumptions(plain) == []  # nothing in it depends on the mode: no noise


@pytest.mark.parametrize("dtype, name", [(torch.bfloat16, "bfloat16"), (torch.float16, "float16")])
def test_low_precision_says_what_precision_the_prediction_uses(dtype, name):
    (note,) = model_assumptions(_net().to(dtype).eval())
    assert f"the model has {name} parameters" in note
    assert "float64" in note and ".float()" in note


def test_one_warning_per_note_and_it_is_a_user_warning():
    assert issubclass(AssumptionWarning, UserWarning)
    with pytest.warns(AssumptionWarning) as record:
        notes = warn_model_assumptions(_net().bfloat16().train())
    assert len(notes) == 2 and len(record) == 2
    assert [str(r.message) for r in record] == notes


def test_user_model_is_not_changed():
    model = _net().train()
    before = [m.training for m in model.modules()]
    model_assumptions(model)
    assert [m.training for m in model.modules()] == before


def test_spectrum_display_from_a_fitted_predictor():
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    from sktt.plotting import SpectrumDisplay

    g = torch.Generator().manual_seed(0)
    X = torch.randn(12, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (12,), generator=g)
    ttp = TrainingTimePredictor(RandomFeatureHead(), n_steps=5, trust_check=False).fit(X, y)
    disp = SpectrumDisplay.from_estimator(ttp)
    assert sorted(disp.lines_) == ["full"]
    k, lam = disp.lines_["full"].get_data()
    np.testing.assert_allclose(lam, ttp.eigenvalues_[:len(lam)] / 12)
    with pytest.raises(NotFittedError, match="needs a fitted TrainingTimePredictor"):
        SpectrumDisplay.from_estimator(TrainingTimePredictor(RandomFeatureHead()))
    with pytest.raises(TypeError, match="takes a fitted GramSpectrum or TrainingTimePredictor"):
        SpectrumDisplay.from_estimator(np.ones(3))
    import matplotlib.pyplot as plt
    plt.close("all")
