"""bench/hacking.py's table on synthetic scores, and the second toy CLIP it ranks by (sdkit.toy.second_clip)."""

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import hacking  # noqa: E402

from sdkit.toy.second_clip import SecondClipSettings, build_second_clip, resolved, second_clip_key  # noqa: E402
from sdkit.toy.settings import ClipSettings  # noqa: E402
from sdkit.toy.world import FIXTURE, load_world_info  # noqa: E402


def _synthetic(b_of_a, sets=60, seed=0):
    rng = np.random.default_rng(seed)
    ok = rng.random((sets, hacking.N)) < 0.4
    a = ok + rng.normal(0, 0.7, ok.shape)
    return {"A": a, "B": b_of_a(a, rng)}, ok


def _with_ensembles(logits):
    from sdkit.scoring.ensemble import combine_scores

    flat = {k: v.ravel() for k, v in logits.items()}
    sets = np.repeat(np.arange(len(logits["A"])), hacking.N)
    for combine in ("zscore", "rank"):
        logits[f"ensemble_{combine}"] = combine_scores(flat, sets, {"A": 1, "B": 1}, combine).reshape(-1, hacking.N)
    return logits


def test_opposed_verifiers_each_hack_the_other():
    logits, ok = _synthetic(lambda a, rng: -a)
    f = hacking.figures(_with_ensembles(logits), ok, np.random.default_rng(0))
    s, d = f["selectors"], f["differences"]
    assert s["A"]["z_A"]["mean"] > 1.2 and s["A"]["z_B"]["mean"] < -1.2  # the best by A is the worst by B
    assert d["z_B: by A - by B"]["ci"][1] < 0 and d["z_A: by B - by A"]["ci"][1] < 0
    assert s["B"]["top1"]["mean"] < s["random"]["top1"]["mean"] < s["A"]["top1"]["mean"]
    assert f["same_pick_A_B"] == 0 and f["spearman_A_B"] == pytest.approx(-1)
    # Expectations, not draws: random is the mean and scores 0 on both; the oracle wins wherever a set can.
    assert s["random"]["top1"]["mean"] == pytest.approx(ok.mean())
    assert s["random"]["z_A"]["mean"] == pytest.approx(0, abs=1e-12)
    assert s["oracle"]["top1"]["mean"] == pytest.approx(ok.any(axis=1).mean())
    assert "A (shipped CLIP)" in hacking.markdown({**_res(f)}) and len(hacking.reading(f)) == 5


def test_agreeing_verifiers_cost_each_other_nothing():
    logits, ok = _synthetic(lambda a, rng: 3 * a + 1)  # same order, another scale: z-scores are equal
    f = hacking.figures(_with_ensembles(logits), ok, np.random.default_rng(0))
    assert f["same_pick_A_B"] == 1
    for k in ("z_B: by A - by B", "z_A: by B - by A", "top1: by B - by A", "top1: ensemble_zscore - by A"):
        assert f["differences"][k]["mean"] == pytest.approx(0, abs=1e-9), k
    assert f["selectors"]["A"]["z_A"]["mean"] == pytest.approx(f["selectors"]["B"]["z_B"]["mean"])


def test_ensemble_keeps_part_of_both():
    logits, ok = _synthetic(lambda a, rng: a + rng.normal(0, 2.0, a.shape))
    f = hacking.figures(_with_ensembles(logits), ok, np.random.default_rng(0))
    s = f["selectors"]
    for m, alone in (("z_A", "A"), ("z_B", "B")):
        other = "B" if alone == "A" else "A"
        assert s[other][m]["mean"] < s["ensemble_zscore"][m]["mean"] <= s[alone][m]["mean"], m


def _res(f):
    clip = {"seed": 0, "zero_shot": 1.0, "path": "x", "train_s": 1.0, "settings": {}}
    return {"settings": {"steps": 20, "guidance": 2.0, "bases": [1], "groups": 1}, "machine": "m", "command": "c",
            "clip_A": clip, "clip_B": {**clip, "seed": 1}, "times": {"t": 1.0}, "groups": {"pooled": f},
            "reading": hacking.reading(f)}


def test_second_clip_settings_differ_from_the_worlds():
    world = load_world_info(FIXTURE)["settings"]
    s, ws = resolved(FIXTURE, SecondClipSettings())
    assert s.seed != world["seed"] and s.clip == ClipSettings(**world["clip"]) and s.pool_size == world["pool_size"]
    with pytest.raises(ValueError, match="seed=0"):
        resolved(FIXTURE, SecondClipSettings(seed=world["seed"]))
    resolved(FIXTURE, SecondClipSettings(seed=world["seed"], clip=ClipSettings(width=32)))  # another size is fine
    assert second_clip_key(FIXTURE, s) != second_clip_key(FIXTURE, dataclasses.replace(s, seed=2))


def test_second_clip_is_trained_from_its_seed(tmp_path):
    """A few steps on a tiny pool: another seed gives other weights, recorded; the folder loads as a scorer."""
    from PIL import Image
    from safetensors.numpy import load_file

    from sdkit.scoring.scorers import load_scorer

    tiny = ClipSettings(width=16, layers=1, heads=2, steps=3, batch_size=16, recon_pool=16)
    weights = {}
    for seed in (1, 2):
        info = build_second_clip(tmp_path / str(seed), FIXTURE, SecondClipSettings(seed=seed, clip=tiny, pool_size=64))
        assert info["settings"]["seed"] == seed and info["settings"]["clip"]["width"] == 16
        weights[seed] = load_file(str(tmp_path / str(seed) / "model.safetensors"))
    assert weights[1].keys() == weights[2].keys()
    assert not all(np.array_equal(weights[1][k], weights[2][k]) for k in weights[1])
    scores = load_scorer("clip", str(tmp_path / "1"), backend="torch")([Image.new("RGB", (32, 32))], ["a red circle"])
    assert np.isfinite(scores.logits).all()
