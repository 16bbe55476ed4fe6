"""The latent-proximity measures (kdm/proximity.py) and the 2-D border distances on inputs whose answer is known,
and the analysis params refused with their key named."""
import re

import numpy as np
import pytest

from kdm import config, proximity
from kdm.metrics import border_distances

from conftest import tiny_params


def test_labels_that_are_a_function_of_x_T_agree_with_its_neighbours_and_shuffled_ones_with_chance():
    rng = np.random.default_rng(0)
    x_T = rng.uniform(-1, 1, (1000, 4))
    labels = np.digitize(x_T[:, 0], [-0.5, 0, 0.5])        # 4 classes from the first coordinate
    out = proximity.proximity({"x_T": x_T[:, :1], "noise": rng.standard_normal((1000, 4))},
                              {"label": labels, "shuffled": rng.permutation(labels)}, features=x_T[:, :1], k=10,
                              pairs=5000, seed=0)
    chance = out["chance"]["label"]
    assert chance == pytest.approx(0.25, abs=0.02) and out["chance"]["shuffled"] == chance
    x, noise = out["spaces"]["x_T"], out["spaces"]["noise"]
    assert x["knn"] > 0.95 and x["ari"] > 0.8 and x["nmi"] > 0.8 and x["dist_corr"] == pytest.approx(1.0)
    assert abs(x["knn_shuffled"] - chance) < 0.03 and abs(noise["knn"] - chance) < 0.03
    assert abs(noise["ari"]) < 0.02 and abs(noise["dist_corr"]) < 0.05
    again = proximity.proximity({"x_T": x_T[:, :1]}, {"label": labels}, x_T[:, :1], 10, 5000, 0)
    assert again["spaces"]["x_T"] == {k: v for k, v in x.items() if "shuffled" not in k}      # same seed, same numbers


def test_a_random_projection_keeps_distances_and_is_a_pure_function_of_its_seed():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 3)) @ rng.standard_normal((3, 64))      # distances that differ (not i.i.d. 64-D)
    a, b = proximity.random_projection(x, 32, seed=3), proximity.random_projection(x, 32, seed=3)
    assert a.shape == (300, 32) and np.array_equal(a, b)
    assert proximity.distance_correlation(a, x, pairs=3000, seed=0) > 0.8


def test_outliers_made_at_a_border_of_the_noise_have_a_small_border_ratio():
    """Two noise half-planes feed two modes; the outliers are the samples whose x_T lies within 0.05 of the
    border: their median distance to the other side's inliers (beyond 0.05) is about 0.1, the inliers' far above."""
    x_T = np.random.default_rng(2).standard_normal((4000, 2))
    clusters = (x_T[:, 0] > 0).astype(int)
    out = border_distances(x_T, clusters, np.abs(x_T[:, 0]) < 0.05)
    assert out["border_dist_outliers"] < 0.15 < 0.5 < out["border_dist_inliers"] and out["border_ratio"] < 0.25
    uniform = border_distances(x_T, clusters, np.random.default_rng(3).random(4000) < 0.05)    # outliers anywhere
    assert 0.7 < uniform["border_ratio"] < 1.4
    assert border_distances(x_T, clusters, np.zeros(4000, bool))["border_ratio"] is None       # none to place


@pytest.mark.parametrize("change, message", [
    (dict(knn=100), "checkerboard.analysis.knn: 100 exceeds checkerboard.analysis.samples - 1"),
    (dict(samples=600), "checkerboard.analysis.samples: 600 exceeds checkerboard.evaluate.samples"),
    (dict(plot_samples=200), "checkerboard.analysis.plot_samples: 200 exceeds checkerboard.analysis.samples"),
    (dict(spaces=["x_T", "w_T"]), "checkerboard.analysis.spaces"),
])
def test_bad_analysis_params_are_refused_naming_the_key(change, message):
    params = tiny_params()          # 500 evaluation samples, 100 analysed
    params["checkerboard"]["analysis"].update(change)
    with pytest.raises(config.ParamsError, match=re.escape(message)):
        config.validate(params)
