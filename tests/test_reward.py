"""The toy reward model (`sdkit.toy.reward`): the shipped fixture, the `toy-reward` scorer, the build, bad input."""

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from sdkit.toy import shapes


@pytest.fixture(scope="module")
def reward_path():
    from sdkit.toy import shipped_reward_path

    return shipped_reward_path()


def test_shipped_reward_matches_its_record(reward_path):
    from sdkit.toy.world import FIXTURE, content_hash

    info = json.loads((reward_path / "reward.json").read_text())
    assert content_hash(reward_path) == info["content_sha256"]
    assert content_hash(FIXTURE) == info["world_sha256"]  # built on the world shipped beside it, not a stale one
    s = info["settings"]
    assert info["training_seeds"]["first"] == s["seed"]
    assert info["training_seeds"]["last"] == s["seed"] + s["seeds_per_prompt"] - 1


@pytest.fixture(scope="module")
def judged_pair():
    """One generated candidate the checker passes and one of the same prompt it fails for its colour, from seeds no
    training or benchmark uses."""
    from sdkit.toy.reward import generate_labelled, load_toy_pipeline
    from sdkit.toy.world import toy_world_path

    pipe = load_toy_pipeline(toy_world_path("ci", log=None))
    wanted = [(shapes.SHAPES.index(s), list(shapes.COLORS).index(c)) for s, c in map(shapes.parse_prompt, shapes.PROMPTS)]
    for p in range(len(shapes.PROMPTS)):  # prompt by prompt until one has such a pair
        data = generate_labelled(pipe, range(9_000_000, 9_000_016), prompts=[p])
        ok, rows = data.ok(), np.arange(len(data.prompt))
        good = [i for i in rows if ok[i]]
        bad = [i for i in rows if data.color[i] >= 0 and data.color[i] != wanted[p][1]]  # a clear miss: wrong colour
        if good and bad:
            return shapes.PROMPTS[p], Image.fromarray(data.images[good[0]]), Image.fromarray(data.images[bad[0]])
    pytest.fail("no prompt had both a matching and a wrong-colour candidate among 16 seeds")


def test_scorer_ranks_a_checked_match_above_a_miss(judged_pair, reward_path):
    from sdkit.scoring.scorers import load_scorer

    prompt, good, bad = judged_pair
    scorer = load_scorer("toy-reward", backend="torch")
    s = scorer([good, bad], prompt)
    assert scorer.name == "toy-reward-torch" and s.scorer.startswith("toy-reward-torch:")
    assert s.logits[0] > s.logits[1]


def test_flax_and_torch_agree(judged_pair):
    from sdkit.scoring.scorers import load_scorer

    prompt, good, bad = judged_pair
    images = [good, bad, good.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    t = load_scorer("toy-reward", backend="torch")(images, prompt).logits
    f = load_scorer("toy-reward", backend="flax")(images, prompt).logits
    np.testing.assert_allclose(f, t, atol=1e-4, rtol=0)


def test_build_on_a_tiny_budget(tmp_path):
    from sdkit.scoring.scorers import load_scorer
    from sdkit.toy.reward import build_reward
    from sdkit.toy.reward import RewardSettings
    from sdkit.toy.world import content_hash

    s = dataclasses.replace(RewardSettings(), seed=7_000_000, seeds_per_prompt=2, val_seeds=1, steps=3,
                            num_inference_steps=2, batch_size=8)
    info = build_reward(tmp_path / "r", settings=s, candidates=tmp_path / "c.npz", log=None)
    out = tmp_path / "r"
    assert {"config.json", "model.safetensors", "reward.json", "preprocessor_config.json", "vocab.json"} <= {
        f.name for f in out.iterdir()}
    assert json.loads((out / "reward.json").read_text()) == info
    assert info["settings"] == dataclasses.asdict(s) and info["content_sha256"] == content_hash(out)
    assert info["training_seeds"] == {"first": 7_000_000, "last": 7_000_001, "per_prompt": 2,
                                      "validation": [7_000_001, 7_000_001]}
    assert {k: info["candidates"][k] for k in ("train", "validation", "train_images")} == {
        "train": 12, "validation": 12, "train_images": 12 * (1 + s.variants)}
    image = Image.fromarray(shapes.sample(1, seed=0)[0][0])
    assert np.isfinite(load_scorer("toy-reward", model=str(out), backend="torch")([image], "a red circle").logits).all()
    # The candidates file written is read back (no generation): the same model, both with and without the ranking loss.
    again = build_reward(tmp_path / "r2", settings=s, candidates=tmp_path / "c.npz", log=None)
    assert "generate_s" not in again["times"] and again["content_sha256"] == info["content_sha256"]
    ranked = dataclasses.replace(s, rank_weight=1.0 - s.rank_weight, group_size=4)
    other = build_reward(tmp_path / "r3", settings=ranked, candidates=tmp_path / "c.npz", log=None)
    assert other["content_sha256"] != info["content_sha256"]


def test_bad_model_path_names_it(tmp_path):
    from sdkit.errors import ModelNotAvailable
    from sdkit.scoring.scorers import load_scorer
    from sdkit.toy.reward import build_reward

    missing = tmp_path / "no-such-reward"
    with pytest.raises((ModelNotAvailable, ValueError, FileNotFoundError), match="no-such-reward"):
        load_scorer("toy-reward", model=str(missing), backend="torch")
    with pytest.raises(FileNotFoundError, match="not-a-world"):
        build_reward(tmp_path / "out", world=tmp_path / "not-a-world", log=None)


@pytest.mark.parametrize("label,shown", [("toy-reward-flax:/x/reward", "Toy reward"), ("pickscore-torch:m", "PickScore"),
                                         ("clip-flax:m", "CLIP score"), ("ensemble-zscore:clip:1", "Ensemble score"),
                                         ("aesthetic-flax:m+h", "Aesthetic score"), ("red", "CLIP score"), (None, "CLIP score")])
def test_each_verifier_is_shown_by_its_own_name(label, shown):
    from sdkit.results import score_label

    assert score_label(label) == shown
