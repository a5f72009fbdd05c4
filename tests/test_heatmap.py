from types import SimpleNamespace

import numpy as np
import pytest

from sdkit.show.heatmap import score_heatmap, score_table


def _r(g, s, score, seed=0):
    return SimpleNamespace(candidate=SimpleNamespace(guidance_scale=g, num_inference_steps=s, seed=seed, score=score), score=score)


def test_table_means_and_counts():
    ranked = [_r(7.5, 20, 10.0), _r(7.5, 20, 20.0, 1), _r(3.0, 20, 5.0), _r(3.0, 50, 1.0), _r(7.5, 50, 30.0)]
    xs, ys, means, counts = score_table(ranked, "guidance_scale", "num_inference_steps")
    assert xs == [3.0, 7.5] and ys == [20, 50]
    np.testing.assert_array_equal(means, [[5.0, 15.0], [1.0, 30.0]])
    np.testing.assert_array_equal(counts, [[1, 2], [1, 1]])


def test_missing_cells_and_heatmap_draws():
    ranked = [_r(7.5, 20, 10.0), _r(3.0, 50, 1.0)]
    _, _, means, _ = score_table(ranked, "guidance_scale", "num_inference_steps")
    assert np.isnan(means[0, 0]) and np.isnan(means[1, 1])
    fig = score_heatmap(ranked)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert sorted(texts) == ["1.0\nn=1", "10.0\nn=1"]


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="no such field"):
        score_table([_r(7.5, 20, 1.0)], "guidance", "num_inference_steps")
    with pytest.raises(ValueError, match="has no score"):
        score_table([_r(7.5, 20, None)], "guidance_scale", "num_inference_steps")
