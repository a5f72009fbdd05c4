"""sdkit.search.strategies: best-of-N and draft-then-finish on the tiny pipeline, with honest compute counts."""

import json

import numpy as np
import pytest

from sdkit import generate, regenerate
from sdkit.ranking import rerank
from sdkit.results import Scores
from sdkit.save import read_manifest, read_metadata
from sdkit.search.strategies import Compute, best_of_n, counting, draft_then_finish, successive_halving

STEPS = 4


def red(images, prompts):
    """A scorer of the right signature: the mean red of each image (deterministic, no CLIP to load)."""
    r = np.array([np.asarray(im, np.float32)[..., 0].mean() for im in images], np.float32)
    return Scores(logits=r, clip_score=r / 2.55, scorer="red")


def pixels(c):
    return np.asarray(c.image)


def test_best_of_n_is_generate_plus_rerank_and_counts_its_unet(tiny_pipe, tmp_path):
    s = best_of_n(tiny_pipe, ["a red circle", "a cat"], red, n=3, seed=0, num_inference_steps=STEPS,
                  output_dir=tmp_path / "s", progress=False)
    run = generate(tiny_pipe, ["a red circle", "a cat"], n=3, seed=0, num_inference_steps=STEPS, progress=False)
    ref = rerank(run, red, save=False)
    assert [(r.candidate.prompt, r.candidate.seed, r.rank) for r in s.ranked] == \
           [(r.candidate.prompt, r.candidate.seed, r.rank) for r in ref]
    assert all(np.array_equal(pixels(a.candidate), pixels(b.candidate)) for a, b in zip(s.ranked, ref))
    assert s.compute.unet_evaluations == 2 * 3 * STEPS  # 2 prompts x 3 candidates x 4 DDIM steps, CFG pair = 1
    assert s.compute.scored_images == 6 and s.compute.wall_s > 0
    assert [c.seed for c in s.best] == [r.candidate.seed for r in ref if r.rank == 1]
    meta = read_metadata(s.best[0].path)
    assert meta["extra"]["search"] == {"strategy": "best_of_n", "n": 3} and meta["score"] == pytest.approx(s.ranked[0].score)


def test_draft_then_finish_finishes_the_best_drafts_with_their_own_seeds(tiny_pipe, tmp_path):
    out = tmp_path / "s"
    s = draft_then_finish(tiny_pipe, ["a red circle", "a cat"], red, n=4, keep=2, draft_steps=2,
                          num_inference_steps=STEPS, seed=10, output_dir=out, progress=False)
    drafts = rerank(generate(tiny_pipe, ["a red circle", "a cat"], n=4, seed=10, num_inference_steps=2, progress=False),
                    red, save=False)
    for p in ("a red circle", "a cat"):
        best_drafts = [r.candidate.seed for r in drafts if r.candidate.prompt == p and r.rank <= 2]
        assert sorted(c.seed for c in (r.candidate for r in s.ranked) if c.prompt == p) == sorted(best_drafts)
    assert len(s.drafts) == 8 and all(c.num_inference_steps == 2 for c in s.drafts)
    assert all(r.candidate.num_inference_steps == STEPS for r in s.ranked)
    # 8 drafts x 2 steps + 4 finished x 4 steps.
    assert s.compute.unet_evaluations == 8 * 2 + 4 * STEPS and s.compute.scored_images == 12
    assert s.compute.ratio(Compute(unet_evaluations=8 * STEPS)) == pytest.approx(32 / 32)
    # Each finished candidate is an ordinary candidate: it regenerates from its PNG alone, bit for bit.
    for r in s.ranked:
        again = regenerate(r.candidate.path, tiny_pipe)
        assert np.array_equal(pixels(again), pixels(r.candidate))
        search = read_metadata(r.candidate.path)["extra"]["search"]
        assert search["strategy"] == "draft_then_finish" and search["draft_rank"] in (1, 2)
        assert search["draft_score"] == pytest.approx(next(d.score for d in s.drafts if d.seed == r.candidate.seed
                                                             and d.prompt == r.candidate.prompt))
    assert len({rec["file"] for rec in read_manifest(out)}) == 4  # only the finished ones are on disk


@pytest.mark.parametrize("kwargs, match", [
    (dict(keep=5), r"keep=5: must be an integer from 1 to n=4"),
    (dict(keep=0), r"keep=0"),
    (dict(draft_steps=4), r"draft_steps=4: must be an integer from 1 to num_inference_steps - 1 = 3"),
    (dict(draft_steps=True), r"draft_steps=True"),
    (dict(n=0), r"n=0 drafts"),
    (dict(num_inference_steps=1, draft_steps=1), r"num_inference_steps=1"),
])
def test_draft_then_finish_refuses_bad_settings_before_any_work(tiny_pipe, monkeypatch, kwargs, match):
    monkeypatch.setattr(type(tiny_pipe), "__call__", lambda *a, **k: pytest.fail("generated before checking"))
    args = dict(n=4, keep=2, draft_steps=2, num_inference_steps=STEPS) | kwargs
    with pytest.raises(ValueError, match=match):
        draft_then_finish(tiny_pipe, "a cat", red, **args)


def test_counting_restores_the_unet_and_counts_what_runs(tiny_pipe):
    forward = tiny_pipe.unet.forward
    compute = Compute()
    with counting(tiny_pipe, compute):
        generate(tiny_pipe, "a cat", n=3, seed=0, num_inference_steps=2, guidance_scale=1.0, progress=False)  # no CFG
    assert compute.unet_evaluations == 3 * 2
    assert tiny_pipe.unet.forward == forward


def test_successive_halving_prunes_on_previews_and_keeps_survivors_exact(tiny_pipe, tmp_path):
    out = tmp_path / "s"
    s = successive_halving(tiny_pipe, ["a red circle", "a cat"], red, n=4, prune_at=(1, 2), keep=(2, 1),
                           num_inference_steps=STEPS, seed=5, output_dir=out, progress=False)
    assert [len([r for r in s.ranked if r.candidate.prompt == p]) for p in ("a red circle", "a cat")] == [1, 1]
    assert len(s.pruned) == 6 and sorted(p["step"] for p in s.pruned) == [1, 1, 1, 1, 2, 2]
    # 8 candidates for step 1, 4 for step 2, 2 for the last two steps; previews: 8 then 4, all scored.
    assert s.compute.unet_evaluations == 8 + 4 + 2 * (STEPS - 2)
    assert s.compute.preview_decodes == 12 and s.compute.scored_images == 12 + 2
    # Survivors: the pixels of the same seed made alone, and of its PNG regenerated.
    for r in s.ranked:
        c = r.candidate
        alone = generate(tiny_pipe, c.prompt, n=1, seeds=[c.seed], num_inference_steps=STEPS, progress=False)
        assert np.array_equal(pixels(alone.candidates[0]), pixels(c))
        assert np.array_equal(pixels(regenerate(c.path, tiny_pipe)), pixels(c))
        search = read_metadata(c.path)["extra"]["search"]
        assert search["strategy"] == "successive_halving" and set(search["preview_scores"]) == {"1", "2"}
    # The pruned are listed (not saved): the worst previews of each prompt at each step.
    pngs = {rec["file"] for rec in read_manifest(out)}
    assert len(pngs) == 2 and len(list(out.glob("*.png"))) == 2
    listed = json.loads(next(out.glob("*.search.json")).read_text())
    assert listed["pruned"] == s.pruned and listed["prune_at"] == [1, 2]
    kept = {(r.candidate.prompt, r.candidate.seed) for r in s.ranked}
    assert not kept & {(p["prompt"], p["seed"]) for p in s.pruned}
    for r in s.ranked:  # each survivor previewed better than every candidate pruned beside it
        looks = read_metadata(r.candidate.path)["extra"]["search"]["preview_scores"]
        for p in (p for p in s.pruned if p["prompt"] == r.candidate.prompt):
            assert looks[str(p["step"])] >= p["preview_score"]


def test_successive_halving_picks_by_preview_scores(tiny_pipe):
    """A scorer that likes one seed's previews keeps exactly that seed."""
    def likes_seed_7(images, prompts):
        return Scores(logits=np.arange(len(images), dtype=np.float32), clip_score=np.zeros(len(images)), scorer="x")

    s = successive_halving(tiny_pipe, "a cat", likes_seed_7, n=4, prune_at=(1,), keep=(1,),
                           num_inference_steps=3, seed=4, progress=False)
    chosen = [r.candidate.seed for r in s.ranked]
    assert chosen == [7]  # seeds 4..7 previewed in order, scored 0..3: the last one wins
    assert sorted(p["seed"] for p in s.pruned) == [4, 5, 6]


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=1), r"n=1 candidates per prompt: must be an integer >= 2"),
    (dict(prune_at=(2,), keep=(2, 1)), r"one keep count per pruning step"),
    (dict(prune_at=(2, 1), keep=(2, 1)), r"prune_at=\[2, 1\]: increasing steps from 1 to num_inference_steps - 1 = 3"),
    (dict(prune_at=(4,), keep=(1,)), r"prune_at=\[4\]"),
    (dict(prune_at=(1, 2), keep=(2, 3)), r"keep=\[2, 3\]: non-increasing counts from 1 to n - 1 = 3"),
    (dict(prune_at=(1,), keep=(4,)), r"keep=\[4\]"),
])
def test_successive_halving_refuses_bad_schedules_before_any_work(tiny_pipe, monkeypatch, kwargs, match):
    monkeypatch.setattr(type(tiny_pipe), "__call__", lambda *a, **k: pytest.fail("generated before checking"))
    args = dict(n=4, prune_at=(1, 2), keep=(2, 1), num_inference_steps=STEPS) | kwargs
    with pytest.raises(ValueError, match=match):
        successive_halving(tiny_pipe, "a cat", red, **args)
