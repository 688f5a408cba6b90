"""Grid comparisons across datasets: the table against individual predictors."""

import math
import warnings

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal

from sktt import Comparison, TrainingTimePredictor, compare
from sktt.datasets import load_demo, make_augmented_digits
from sktt.exceptions import EpsilonWarning

COMMON = dict(projection="countsketch", projection_dim=128, random_state=0, n_steps=40)
GRID = {"lr": [0.01, 0.03], "batch_size": [None, 10]}


@pytest.fixture(scope="module")
def tasks():
    demo = load_demo(30)
    other = load_demo(24, classes=(0, 1, 2, 3, 4))
    X, y = make_augmented_digits(36, classes=(1, 3, 5, 7, 9), random_state=1)
    return demo.model, {"5-9": demo, "0-4": (other.X, other.y), "odd": (X, y)}


@pytest.fixture(scope="module")
def table(tasks):
    model, datasets = tasks
    return compare(model, datasets, GRID, eps=0.02, **COMMON)


def test_table_shape_and_columns(table):
    assert isinstance(table, Comparison)
    assert len(table) == 3 * 4  # datasets x settings
    assert table.columns[:7] == ["dataset", "n_samples", "lr", "momentum", "batch_size",
                                 "n_steps", "eps"]
    for col in ("t_eps", "initial_loss", "final_loss", "t_eps_low", "t_eps_high", "diverged"):
        assert col in table.columns
    assert list(table["dataset"][::4]) == ["5-9", "0-4", "odd"]
    assert_array_equal(table["n_samples"][::4], [30, 24, 36])
    assert set(table.predictors_) == {"5-9", "0-4", "odd"}


def test_table_values_match_individual_predictors(tasks, table):
    model, datasets = tasks
    pairs = {"5-9": (datasets["5-9"].X, datasets["5-9"].y), **{k: datasets[k]
                                                             for k in ("0-4", "odd")}}
    for row in table:
        X, y = pairs[row["dataset"]]
        ttp = TrainingTimePredictor(model, lr=row["lr"], batch_size=row["batch_size"],
                                    trust_check=False, **COMMON).fit(X, y)
        curve = ttp.predict_curve()
        assert row["t_eps"] == ttp.predict_time(eps=0.02)
        assert_allclose(row["final_loss"], curve[-1], rtol=1e-12)
        assert_allclose(row["initial_loss"], curve[0], rtol=1e-12)
        if row["batch_size"] is None:  # gradient descent: no spread
            assert row["t_eps_low"] == row["t_eps_high"] == row["t_eps"]
        else:
            dist = ttp.predict_time(eps=0.02, return_distribution=True)
            assert (row["t_eps_low"], row["t_eps_high"]) == (dist.lower, dist.upper)
        assert not row["diverged"]
        with warnings.catch_warnings(record=True) as caught:  # the flag says what they say
            warnings.simplefilter("always")
            ttp.predict_time(eps=0.02)
        said = " ".join(str(w.message) for w in caught if w.category is EpsilonWarning)
        assert row["eps_flag"] == ("eps_exceeds_drop" if "larger than the whole" in said
                                   else "eps_below_noise" if "below the SGD noise" in said
                                   else "ok")


def test_eps_flag_column_says_when_t_eps_means_nothing(tasks):
    """ε above the whole drop, inside (noise, drop), and below the SGD noise of L_T: the
    three flags, from the paths' ends alone (noise and drop computed here from the band)."""
    model, datasets = tasks
    setting = {"lr": 0.03, "batch_size": 10}
    ttp = TrainingTimePredictor(model, trust_check=False, **setting, **COMMON).fit(
        datasets["5-9"].X, datasets["5-9"].y)
    band = ttp.predict_curve(return_band=True)
    drop = abs(band.mean[0] - band.mean[-1])
    noise = np.std(band.paths[:, -1], ddof=1) / np.sqrt(band.paths.shape[0])
    assert 0 < 4 * noise < drop
    grid = {"eps": [2 * drop, math.sqrt(noise * drop), noise / 2], **{k: [v] for k, v in
                                                                     setting.items()}}
    res = compare(model, {"5-9": datasets["5-9"]}, grid, **COMMON)
    assert list(res["eps_flag"]) == ["eps_exceeds_drop", "ok", "eps_below_noise"]
    assert list(res["t_eps"])[0] == 0


def test_datasets_in_parallel_give_the_same_table(tasks, table):
    model, datasets = tasks
    par = compare(model, datasets, GRID, eps=0.02, n_jobs=2, **COMMON)
    assert par.columns == table.columns
    for a, b in zip(par, table):
        assert a == b
    assert_array_equal(par.predictors_["odd"].ntk_, table.predictors_["odd"].ntk_)


def test_eps_and_metric_in_the_grid(tasks):
    model, datasets = tasks
    res = compare(model, {"5-9": datasets["5-9"]}, {"eps": [1.0, 5.0], "lr": [0.03]},
                  metric="error", **COMMON)
    assert len(res) == 2 and list(res["eps"]) == [1.0, 5.0]
    assert "final_error" in res.columns
    ttp = res.predictors_["5-9"]
    for row in res:
        assert row["t_eps"] == ttp.predict_time(eps=row["eps"], metric="error", lr=0.03)
    assert res["t_eps"][0] >= res["t_eps"][1]  # a looser ε is reached no later


def test_divergence_is_a_row_not_an_error(tasks):
    model, datasets = tasks
    X, y = datasets["0-4"]
    Y = np.eye(5)[np.asarray(y)]  # squared error: a too large lr overflows
    res = compare(model, {"0-4": (X, Y)}, {"lr": [1e-4, 1e4]}, loss="mse", **COMMON)
    assert list(res["diverged"]) == [False, True]
    assert math.isnan(res["t_eps"][1]) and not math.isnan(res["t_eps"][0])
    assert res["eps_flag"][1] == "undefined"


def test_measured_seconds(tasks):
    model, datasets = tasks
    res = compare(model, {"0-4": datasets["0-4"]}, {"batch_size": [None, 8]},
                  measure_time=True, **COMMON)
    spp = res["seconds_per_step"]
    assert np.all(spp > 0)
    assert_allclose(res["seconds"], res["t_eps"] * spp)
    assert set(res.predictors_["0-4"].seconds_per_step_) == {8, 24}


def test_dataset_object_and_trust_column(tasks):
    model, datasets = tasks
    X, y = datasets["odd"]
    res = compare(model, {"odd": torch.utils.data.TensorDataset(X, y)}, {"lr": [0.01]},
                  trust=True, **COMMON)
    assert res["n_samples"][0] == 36
    assert res["trust"][0] in ("ok", "doubtful", "unreliable")


def test_to_pandas_and_plot(table):
    pd = pytest.importorskip("pandas")
    frame = table.to_pandas()
    assert isinstance(frame, pd.DataFrame)
    assert frame.shape == (len(table), len(table.columns))
    assert list(frame.columns) == table.columns
    assert_array_equal(frame["t_eps"].to_numpy(), table["t_eps"])
    pytest.importorskip("matplotlib")
    from matplotlib.container import BarContainer

    ax = table.plot()
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(bars) == 4  # one group of bars per setting
    assert [t.get_text() for t in ax.get_xticklabels()] == ["5-9", "0-4", "odd"]
    heights = [bar.get_height() for bar in bars[0]]
    first = [r["t_eps"] for r in table if r["lr"] == 0.01 and r["batch_size"] is None]
    assert_allclose(heights, first)
    assert "lr=0.01" in ax.get_legend().get_texts()[0].get_text()
    assert "5-9" in repr(table)


def test_input_errors(tasks):
    model, datasets = tasks
    one = {"5-9": datasets["5-9"]}
    with pytest.raises(ValueError, match=r"\['projection'\].*cannot vary"):
        compare(model, one, {"projection": ["countsketch"]})
    with pytest.raises(ValueError, match="batch_size=64 is invalid for dataset '5-9' of 30"):
        compare(model, one, {"batch_size": [64]})
    with pytest.raises(ValueError, match="eps is both"):
        compare(model, one, {"eps": [0.1]}, eps=0.2)
    with pytest.raises(TypeError, match="non-empty dict"):
        compare(model, [datasets["5-9"]])
    with pytest.raises(TypeError, match=r"unexpected keyword\(s\) \['projection_dims'\]"):
        compare(model, one, projection_dims=64)
    with pytest.raises(TypeError, match=r"datasets\['x'\]"):
        compare(model, {"x": 3})
