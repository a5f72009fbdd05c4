"""sdkit.search.strategies: best-of-N and draft-then-finish on the tiny pipeline, with honest compute counts."""

import json

import numpy as np
import pytest

from conftest import pixels, red  # shared with test_particles.py
from sdkit import generate, regenerate
from sdkit.ranking import rerank
from sdkit.results import Scores
from sdkit.save import read_manifest, read_metadata
from sdkit.search.strategies import Compute, best_of_n, counting, draft_then_finish, successive_halving

STEPS = 4


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


# generate(search=...), the pruned candidates in the manifest, and finishing one of them.

import functools  # noqa: E402

from sdkit.results import Run  # noqa: E402
from sdkit.save import read_pruned, recover  # noqa: E402
from sdkit.search.strategies import default_schedule, finish_pruned  # noqa: E402

PROMPTS = ["a red circle", "a cat"]


def test_generate_with_search_returns_a_run_of_the_finished_candidates(tiny_pipe, tmp_path):
    run = generate(tiny_pipe, PROMPTS, n=3, seed=0, num_inference_steps=STEPS, output_dir=tmp_path / "s",
                   search="best_of_n", scorer=red, progress=False)
    plain = generate(tiny_pipe, PROMPTS, n=3, seed=0, num_inference_steps=STEPS, progress=False)
    assert isinstance(run, Run) and plain.search is None and run.search.strategy == "best_of_n"
    assert [c.index for c in run] == list(range(6)) and [c.seed for c in run] == [c.seed for c in plain]
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(run, plain))
    assert all(c.score is not None for c in run) and run.search.compute.unet_evaluations == 6 * STEPS
    assert run.run_id == run.search.run_id == run[0].run_id and run.output_dir == str(tmp_path / "s")
    assert [r.candidate.seed for r in run.search.ranked] == [r.candidate.seed for r in rerank(plain, red, save=False)]


def test_generate_search_by_name_kwargs_or_partial_is_the_strategy_itself(tiny_pipe):
    args = dict(n=4, seed=5, num_inference_steps=STEPS, progress=False)
    direct = successive_halving(tiny_pipe, PROMPTS, red, prune_at=(1, 2), keep=(2, 1), **args)
    by_name = generate(tiny_pipe, PROMPTS, search="successive_halving", scorer=red,
                       search_kwargs={"prune_at": (1, 2), "keep": (2, 1)}, **args)
    by_partial = generate(tiny_pipe, PROMPTS, scorer=red, search=functools.partial(successive_halving, prune_at=(1, 2),
                                                                                    keep=(2, 1)), **args)
    for run in (by_name, by_partial):
        assert [(c.prompt, c.seed) for c in run] == sorted(((r.candidate.prompt, r.candidate.seed) for r in direct.ranked),
                                                           key=lambda ps: (PROMPTS.index(ps[0]), ps[1]))
        assert all(np.array_equal(pixels(a.candidate), pixels(b.candidate)) for a, b in zip(run.search.ranked, direct.ranked))
        assert run.search.compute.unet_evaluations == direct.compute.unet_evaluations == 8 + 4 + 2 * (STEPS - 2)
        same = lambda records: [{k: v for k, v in r.items() if k != "run_id"} for r in records]  # noqa: E731
        assert same(run.search.pruned) == same(direct.pruned) and len(direct.pruned) == 6


def test_default_schedule_is_the_measured_one_and_scales():
    # The benchmark's pick (chosen on its tuning sets, recorded in its results) is the default at its n and steps.
    import json
    from pathlib import Path

    chosen = json.loads((Path(__file__).parent.parent / "bench" / "results" / "search.json").read_text())["default"]
    assert default_schedule(chosen["n"], chosen["steps"]) == (tuple(chosen["prune_at"]), tuple(chosen["keep"]))
    assert default_schedule(32, 20) == ((2, 10), (8, 2))
    assert default_schedule(16, 20) == ((2, 10), (4, 1))
    assert default_schedule(4, 30) == ((3, 15), (1, 1))
    assert default_schedule(8, 2) == ((1,), (1,))  # both points fall on step 1: one pruning, to the last count


def test_generate_with_successive_halving_defaults_runs(tiny_pipe):
    run = generate(tiny_pipe, "a cat", n=4, seed=1, num_inference_steps=10, search="successive_halving", scorer=red,
                   progress=False)
    assert run.search.settings == {"n": 4, "prune_at": [1, 5], "keep": [1, 1], "previewer": "vae"} and len(run) == 1
    # 4 candidates for step 1, then 1 (kept 1 after step 1, still 1 after step 5) for the other 9 steps.
    assert run.search.compute.unet_evaluations == 4 + 9 and run.search.compute.preview_decodes == 4 + 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(search="beam"), r"search='beam': no such strategy; use one of best_of_n, draft_then_finish, successive_halving"),
    (dict(search=42), r"search=42: give a strategy name"),
    (dict(search="successive_halving", search_kwargs={"prune": 2}),
     r"search_kwargs \['prune'\]: successive_halving takes clip_model, keep, previewer, prune_at"),
    (dict(search="best_of_n", search_kwargs={"keep": 2}), r"search_kwargs \['keep'\]: best_of_n takes clip_model"),
    (dict(search="draft_then_finish", search_kwargs={"n": 3}), r"search_kwargs \['n'\]: generate's own arguments"),
    (dict(search="draft_then_finish", search_kwargs={"keep": 5}), r"keep=5: must be an integer from 1 to n=4"),
    (dict(search="draft_then_finish", search_kwargs={"draft_steps": STEPS}), rf"draft_steps={STEPS}"),
    (dict(search="successive_halving", search_kwargs={"prune_at": (1, 2), "keep": (4, 1)}), r"keep=\[4, 1\]"),
    (dict(search=functools.partial(successive_halving, prune_at=(9,), keep=(1,))), r"prune_at=\[9\]"),
    (dict(search="successive_halving", batch_size=2), r"batch_size=2: successive_halving denoises all 4"),
    (dict(search="best_of_n", seeds=[1, 2, 3, 4]), r"seeds= with search="),
    (dict(scorer=red), r"scorer= without search="),
    (dict(search_kwargs={"keep": 2}), r"search_kwargs= without search="),
])
def test_generate_refuses_bad_searches_before_any_work(tiny_pipe, monkeypatch, kwargs, match):
    import sdkit.search.strategies as strategies

    monkeypatch.setattr(type(tiny_pipe), "__call__", lambda *a, **k: pytest.fail("generated before checking"))
    monkeypatch.setattr(strategies, "scorer_for", lambda *a, **k: pytest.fail("loaded a scorer before checking"))
    with pytest.raises(ValueError, match=match):
        generate(tiny_pipe, "a cat", **{"n": 4, "num_inference_steps": STEPS, "progress": False, **kwargs})


def test_a_search_is_not_resumed(tiny_pipe, tmp_path, monkeypatch):
    out = tmp_path / "s"
    generate(tiny_pipe, "a cat", n=2, seed=0, num_inference_steps=2, output_dir=out, run_id="plain", progress=False)
    run = generate(tiny_pipe, "a cat", n=4, seed=0, num_inference_steps=STEPS, output_dir=out, run_id="hunt",
                   search="successive_halving", search_kwargs={"prune_at": (1,), "keep": (1,)}, scorer=red,
                   progress=False)
    assert run.run_id == "hunt" and (out / "hunt.search.json").exists()
    monkeypatch.setattr(type(tiny_pipe), "__call__", lambda *a, **k: pytest.fail("generated before refusing"))
    for run_id in ("hunt", "plain"):
        with pytest.raises(ValueError, match=rf"run_id='{run_id}' is already a run in .*a search cannot be resumed"):
            generate(tiny_pipe, "a cat", n=4, seed=0, num_inference_steps=STEPS, output_dir=out, run_id=run_id,
                     search="best_of_n", scorer=red, progress=False)


def test_pruned_candidates_are_manifest_lines_that_readers_of_images_pass_by(tiny_pipe, tmp_path):
    """A plain run and a search share a folder: the pruned lines are listed, and reading, recovering and resuming
    the plain run see only images (resume loads each record's PNG: a pruned line there would be a KeyError)."""
    out = tmp_path / "s"
    plain = generate(tiny_pipe, PROMPTS, n=2, seed=5, num_inference_steps=2, output_dir=out, run_id="plain",
                     progress=False)
    s = successive_halving(tiny_pipe, PROMPTS, red, n=4, prune_at=(1, 2), keep=(2, 1), num_inference_steps=STEPS,
                           seed=5, output_dir=out, progress=False)
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert sum(1 for x in lines if x.get("pruned")) == 6 and not any("file" in x for x in lines if x.get("pruned"))
    assert read_pruned(out) == read_pruned(out, s.run_id) == s.pruned and read_pruned(out, "plain") == []
    assert {(p["prompt"], p["seed"], p["step"]) for p in s.pruned} == {
        (p["prompt"], p["seed"], p["step"]) for p in json.loads((out / f"{s.run_id}.search.json").read_text())["pruned"]}
    for p in s.pruned:  # what finishing it needs: the search's full settings
        assert p["num_inference_steps"] == STEPS and p["run_id"] == s.run_id and p["scheduler"] == "DDIM"
        assert p["extra"]["search"]["strategy"] == "successive_halving" and str(p["step"]) in p["extra"]["search"]["preview_scores"]
    records = read_manifest(out)
    assert len(records) == 4 + 2 and all(not r.get("pruned") and (out / r["file"]).exists() for r in records)
    recover(out)
    recover(out)
    assert len((out / "manifest.jsonl").read_text().splitlines()) == len(lines)  # nothing to repair, nothing added
    again = generate(tiny_pipe, PROMPTS, n=2, seed=5, num_inference_steps=2, output_dir=out, run_id="plain",
                     progress=False)
    assert again.resumed == 4 and all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(again, plain))


def test_finish_pruned_makes_the_image_a_full_run_makes(tiny_pipe, tmp_path):
    out = tmp_path / "s"
    s = successive_halving(tiny_pipe, PROMPTS, red, n=4, prune_at=(1,), keep=(1,), num_inference_steps=STEPS, seed=5,
                           output_dir=out, progress=False)
    full = best_of_n(tiny_pipe, PROMPTS, red, n=4, seed=5, num_inference_steps=STEPS, progress=False)
    ref = {(r.candidate.prompt, r.candidate.seed): r.candidate for r in full.ranked}
    p = next(x for x in s.pruned if x["prompt"] == "a cat")
    from_folder = finish_pruned(tiny_pipe, out, seed=p["seed"], prompt="a cat", output_dir=tmp_path / "done")
    from_record = finish_pruned(tiny_pipe, p)
    from_manifest = finish_pruned(tiny_pipe, out / "manifest.jsonl", seed=p["seed"], prompt="a cat")
    for c in (from_folder, from_record, from_manifest):
        assert (c.prompt, c.seed, c.num_inference_steps) == ("a cat", p["seed"], STEPS)
        assert np.array_equal(pixels(c), pixels(ref[("a cat", p["seed"])]))
    meta = read_metadata(from_folder.path)
    assert meta["extra"]["search"]["finished_pruned"] == {"run_id": s.run_id, "strategy": "successive_halving",
                                                          "step": 1, "preview_score": p["preview_score"]}
    assert np.array_equal(pixels(regenerate(from_folder.path, tiny_pipe)), pixels(from_folder))
    # Prompts share seeds: a seed alone names two pruned candidates; a seed that was kept names none.
    with pytest.raises(ValueError, match=rf"seed={p['seed']} prompt=None .*2 pruned candidates match"):
        finish_pruned(tiny_pipe, out, seed=p["seed"])
    kept = next(r.candidate for r in s.ranked if r.candidate.prompt == "a cat")
    with pytest.raises(ValueError, match=rf"seed={kept.seed} prompt='a cat' .*no pruned candidate matches"):
        finish_pruned(tiny_pipe, out, seed=kept.seed, prompt="a cat")
    with pytest.raises(ValueError, match="not a pruned candidate's record"):
        finish_pruned(tiny_pipe, {"seed": 1})
    with pytest.raises(FileNotFoundError, match="no such folder"):
        finish_pruned(tiny_pipe, tmp_path / "nowhere", seed=1)


def test_draft_then_finish_saves_its_finished_candidates_under_one_run_id(tiny_pipe, tmp_path):
    out = tmp_path / "s"
    run = generate(tiny_pipe, PROMPTS, n=3, seed=2, num_inference_steps=STEPS, output_dir=out, run_id="d",
                   search="draft_then_finish", search_kwargs={"keep": 2, "draft_steps": 2}, scorer=red, progress=False)
    files = sorted(r["file"] for r in read_manifest(out))
    assert len(files) == 4 and all(f.startswith("d-") for f in files) and {c.run_id for c in run} == {"d"}
    assert sorted(c.index for c in run) == [c.index for c in run] and len({c.index for c in run}) == 4
    assert {f"d-{c.index:03d}-s{c.seed}.png" for c in run} == set(files)
    record = json.loads((out / "d.search.json").read_text())
    assert record["compute"]["unet_evaluations"] == run.search.compute.unet_evaluations == 6 * 2 + 4 * STEPS


@pytest.mark.parametrize("strategy", ["best_of_n", "draft_then_finish", "successive_halving"])
def test_a_cancelled_search_says_so(tiny_pipe, strategy):
    settings = {"draft_then_finish": {"keep": 1, "draft_steps": 2}, "successive_halving": {"prune_at": (1,), "keep": (1,)}}
    run = generate(tiny_pipe, "a cat", n=2, seed=0, num_inference_steps=STEPS, search=strategy, scorer=red,
                   search_kwargs=settings.get(strategy), cancel=lambda: True, progress=False)
    assert run.cancelled and run.search.cancelled and len(run) == 0


def test_format_pruned_lists_the_latest_stopped_best_first():
    from sdkit.search.strategies import Compute, Search

    pruned = [{"prompt": "a", "seed": s, "step": st, "preview_score": sc}
              for s, st, sc in [(0, 2, 9.0), (1, 6, 3.0), (2, 6, 5.0), (3, 2, 1.0)]]
    search = Search("successive_halving", {}, [], Compute(), pruned=pruned)
    lines = search.format_pruned(limit=2).splitlines()
    assert "seed   2" in lines[0] and "seed   1" in lines[1] and "step   6" in lines[0]
    assert lines[2] == "... and 2 more, stopped after step 2"
    assert len(search.format_pruned().splitlines()) == 4
    assert Search("best_of_n", {}, [], Compute()).format_pruned() == "nothing was pruned"
