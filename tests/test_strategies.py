"""sdkit.search's strategies (best_of_n, draft_then_finish, successive_halving) called directly, on the tiny pipeline,
with honest compute counts; the typed results (Search, Compute, Pruned)."""

import json

import numpy as np
import pytest

from conftest import pixels, red  # shared with test_particles.py
from sdkit import generate, regenerate
from sdkit.ranking import rerank
from sdkit.results import Compute, Scores
from sdkit.save import read_manifest, read_metadata
from sdkit.search import best_of_n, draft_then_finish, successive_halving
from sdkit.search.family import counting

STEPS = 4


def test_best_of_n_is_generate_plus_rerank_and_counts_its_unet(tiny_pipe, tmp_path):
    s = best_of_n(tiny_pipe, ["a red circle", "a cat"], red, n=3, seed=0, num_inference_steps=STEPS,
                  output_dir=tmp_path / "s", progress=False).search
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
                          num_inference_steps=STEPS, seed=10, output_dir=out, progress=False).search
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
                           num_inference_steps=STEPS, seed=5, output_dir=out, progress=False).search
    assert [len([r for r in s.ranked if r.candidate.prompt == p]) for p in ("a red circle", "a cat")] == [1, 1]
    assert len(s.pruned) == 6 and sorted(p.step for p in s.pruned) == [1, 1, 1, 1, 2, 2]
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
    assert listed["pruned"] == [p.record() for p in s.pruned] and listed["prune_at"] == [1, 2]
    kept = {(r.candidate.prompt, r.candidate.seed) for r in s.ranked}
    assert not kept & {(p.prompt, p.seed) for p in s.pruned}
    for r in s.ranked:  # each survivor previewed better than every candidate pruned beside it
        looks = read_metadata(r.candidate.path)["extra"]["search"]["preview_scores"]
        for p in (p for p in s.pruned if p.prompt == r.candidate.prompt):
            assert looks[str(p.step)] >= p.preview_score


def test_successive_halving_picks_by_preview_scores(tiny_pipe):
    """A scorer that likes one seed's previews keeps exactly that seed."""
    def likes_seed_7(images, prompts):
        return Scores(logits=np.arange(len(images), dtype=np.float32), clip_score=np.zeros(len(images)), scorer="x")

    s = successive_halving(tiny_pipe, "a cat", likes_seed_7, n=4, prune_at=(1,), keep=(1,),
                           num_inference_steps=3, seed=4, progress=False).search
    chosen = [r.candidate.seed for r in s.ranked]
    assert chosen == [7]  # seeds 4..7 previewed in order, scored 0..3: the last one wins
    assert sorted(p.seed for p in s.pruned) == [4, 5, 6]


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


# Search is a stage above generation: strategies by name, the pruned candidates in the manifest, finishing one.

import functools  # noqa: E402
from pathlib import Path  # noqa: E402

from sdkit.results import Candidate, Pruned, Run, Search  # noqa: E402
from sdkit.save import read_pruned, recover  # noqa: E402
from sdkit.search import check_search, default_schedule, finish_pruned, strategy_named  # noqa: E402

PROMPTS = ["a red circle", "a cat"]


def test_a_strategy_returns_a_run_of_the_finished_candidates(tiny_pipe, tmp_path):
    run = best_of_n(tiny_pipe, PROMPTS, red, n=3, seed=0, num_inference_steps=STEPS, output_dir=tmp_path / "s",
                    progress=False)
    plain = generate(tiny_pipe, PROMPTS, n=3, seed=0, num_inference_steps=STEPS, progress=False)
    assert isinstance(run, Run) and plain.search is None and run.search.strategy == "best_of_n"
    assert isinstance(run.search, Search)
    assert [c.index for c in run] == list(range(6)) and [c.seed for c in run] == [c.seed for c in plain]
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(run, plain))
    assert all(c.score is not None for c in run) and run.search.compute.unet_evaluations == 6 * STEPS
    assert run.run_id == run.search.run_id == run[0].run_id and run.output_dir == str(tmp_path / "s")
    assert [r.candidate.seed for r in run.search.ranked] == [r.candidate.seed for r in rerank(plain, red, save=False)]


def test_a_strategy_by_name_or_partial_is_the_strategy_itself(tiny_pipe):
    args = dict(n=4, seed=5, num_inference_steps=STEPS, progress=False)
    direct = successive_halving(tiny_pipe, PROMPTS, red, prune_at=(1, 2), keep=(2, 1), **args).search
    named, settings = check_search("successive_halving", {"prune_at": (1, 2), "keep": (2, 1)}, n=4,
                                   num_inference_steps=STEPS)
    assert named is strategy_named("successive_halving") is successive_halving
    by_name = named(tiny_pipe, PROMPTS, red, **settings, **args)
    partial, _ = check_search(functools.partial(successive_halving, prune_at=(1, 2), keep=(2, 1)), n=4,
                              num_inference_steps=STEPS)
    by_partial = partial(tiny_pipe, PROMPTS, red, **args)
    for run in (by_name, by_partial):
        assert [(c.prompt, c.seed) for c in run] == sorted(((r.candidate.prompt, r.candidate.seed) for r in direct.ranked),
                                                           key=lambda ps: (PROMPTS.index(ps[0]), ps[1]))
        assert all(np.array_equal(pixels(a.candidate), pixels(b.candidate)) for a, b in zip(run.search.ranked, direct.ranked))
        assert run.search.compute.unet_evaluations == direct.compute.unet_evaluations == 8 + 4 + 2 * (STEPS - 2)
        same = lambda pruned: [{k: v for k, v in p.record().items() if k != "run_id"} for p in pruned]  # noqa: E731
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


def test_successive_halving_with_its_default_schedule_runs(tiny_pipe):
    run = successive_halving(tiny_pipe, "a cat", red, n=4, seed=1, num_inference_steps=10, progress=False)
    assert run.search.settings == {"n": 4, "prune_at": [1, 5], "keep": [1, 1], "previewer": "vae"} and len(run) == 1
    # 4 candidates for step 1, then 1 (kept 1 after step 1, still 1 after step 5) for the other 9 steps.
    assert run.search.compute.unet_evaluations == 4 + 9 and run.search.compute.preview_decodes == 4 + 1


def test_a_strategy_called_directly_uses_its_own_defaults(tiny_pipe):
    """successive_halving(pipe, prompt): n=16 at 20 steps with the default schedule and scorer (generate's n=4 and
    30 steps are not forced on it, as they were through generate(search=...))."""
    run = successive_halving(tiny_pipe, "a cat", seed=0, progress=False)
    s = run.search
    assert s.settings == {"n": 16, "prune_at": [2, 10], "keep": [4, 1], "previewer": "vae"}
    assert len(run) == 1 and run[0].num_inference_steps == 20 and len(s.pruned) == 15
    assert s.compute.unet_evaluations == 16 * 2 + 4 * 8 + 1 * 10 and s.compute.preview_decodes == 16 + 4
    assert run[0].scorer and run[0].scorer != "red" and run[0].score is not None  # the default scorer ("flax")


@pytest.mark.parametrize("kwargs, match", [
    (dict(search="successive_halving"), r"generate\(\) no longer takes search=.*sdkit\.search\.successive_halving\("),
    (dict(search="particle_resampling"), r"sdkit\.search\.particle_resampling\("),
    (dict(scorer=red), r"generate\(\) no longer takes scorer=.*sdkit\.search\."),
    (dict(search_kwargs={"keep": 2}), r"generate\(\) no longer takes search_kwargs=.*sdkit\.search\."),
    (dict(search="best_of_n", scorer="flax", search_kwargs={}), r"no longer takes scorer=, search=, search_kwargs=: .*sdkit\.search\.best_of_n\("),
    (dict(prune_at=(1,)), r"generate\(\) got unexpected keyword arguments: prune_at"),
])
def test_generate_refuses_search_arguments_with_a_type_error_naming_sdkit_search(tiny_pipe, monkeypatch, kwargs,
                                                                                 match):
    monkeypatch.setattr(type(tiny_pipe), "__call__", lambda *a, **k: pytest.fail("generated before refusing"))
    with pytest.raises(TypeError, match=match):
        generate(tiny_pipe, "a cat", n=4, num_inference_steps=STEPS, progress=False, **kwargs)


@pytest.mark.parametrize("search, settings, match", [
    ("beam", {}, r"search='beam': no such strategy; use one of best_of_n, draft_then_finish, successive_halving"),
    (42, {}, r"search=42: give a strategy name"),
    ("successive_halving", {"prune": 2}, r"settings \['prune'\]: successive_halving takes keep, previewer, prune_at "),
    ("best_of_n", {"keep": 2}, r"settings \['keep'\]: best_of_n takes no settings of its own"),
    ("particle_resampling", {"keep": 2}, r"settings \['keep'\]: particle_resampling takes lambda_, previewer, "
                                         r"resample_at "),
    ("draft_then_finish", {"n": 3}, r"settings \['n'\]: arguments every strategy takes"),
    ("successive_halving", {"num_inference_steps": 3, "seed": 1}, r"settings \['num_inference_steps', 'seed'\]: "
                                                                  r"arguments every strategy takes"),
    ("best_of_n", {"scorer": red}, r"settings \['scorer'\]: arguments every strategy takes"),
    ("best_of_n", {"prompt": "a dog"}, r"settings \['prompt'\]: arguments every strategy takes"),
    ("best_of_n", {"clip_model": "x", "output_dir": "o"}, r"settings \['clip_model', 'output_dir'\]: arguments every"),
    ("draft_then_finish", {"keep": 5}, r"keep=5: must be an integer from 1 to n=4"),
    ("draft_then_finish", {"draft_steps": STEPS}, rf"draft_steps={STEPS}"),
    ("successive_halving", {"prune_at": (1, 2), "keep": (4, 1)}, r"keep=\[4, 1\]"),
    (functools.partial(successive_halving, prune_at=(9,), keep=(1,)), {}, r"prune_at=\[9\]"),
    ("particle_resampling", {"resample_at": (4,)}, r"resample_at=\[4\]"),
])
def test_check_search_refuses_unknown_strategies_and_settings_and_common_arguments(search, settings, match):
    with pytest.raises(ValueError, match=match):
        check_search(search, settings, n=4, num_inference_steps=STEPS)


def test_check_search_fills_nothing_in_and_strategy_named_refuses_unknown_names():
    strategy, settings = check_search("draft_then_finish", {"keep": 1}, n=4, num_inference_steps=30)
    assert strategy is draft_then_finish and settings == {"keep": 1}  # the default draft_steps=6 checked, not added
    with pytest.raises(ValueError, match=r"draft_steps=6: must be an integer from 1 to num_inference_steps - 1 = 3"):
        check_search("draft_then_finish", {"keep": 1}, n=4, num_inference_steps=STEPS)
    with pytest.raises(ValueError, match=r"search='beam': no such strategy; use one of best_of_n, draft_then_finish, "
                                         r"successive_halving, particle_resampling"):
        strategy_named("beam")
    with pytest.raises(ValueError, match="no such strategy"):
        strategy_named("strategies")  # a module of sdkit.search is not a strategy


@pytest.mark.parametrize("call, kwargs, match", [
    ("successive_halving", dict(batch_size=2), r"batch_size=2: successive_halving denoises all candidates"),
    ("best_of_n", dict(seeds=[1, 2, 3, 4]), r"seeds= with a search"),
    ("best_of_n", dict(before_save=lambda b: b), r"before_save= with a search: the strategy sets it itself"),
])
def test_strategies_refuse_bad_arguments_before_any_work(tiny_pipe, monkeypatch, call, kwargs, match):
    import sdkit.search.family as family

    monkeypatch.setattr(type(tiny_pipe), "__call__", lambda *a, **k: pytest.fail("generated before checking"))
    monkeypatch.setattr(family, "scorer_for", lambda *a, **k: pytest.fail("loaded a scorer before checking"))
    with pytest.raises(ValueError, match=match):
        strategy_named(call)(tiny_pipe, "a cat", red, n=4, num_inference_steps=STEPS, progress=False, **kwargs)


@pytest.mark.parametrize("strategy, settings", [
    ("best_of_n", {}), ("draft_then_finish", {"keep": 1, "draft_steps": 2}),
    ("successive_halving", {"prune_at": (1,), "keep": (1,)}), ("particle_resampling", {"resample_at": (1,)}),
])
def test_scorer_none_is_refused_before_any_unet_call(tiny_pipe, euler_a, monkeypatch, strategy, settings):
    import sdkit.search.family as family

    pipe = euler_a if strategy == "particle_resampling" else tiny_pipe
    monkeypatch.setattr(type(pipe), "__call__", lambda *a, **k: pytest.fail("generated before checking"))
    monkeypatch.setattr(type(pipe.unet), "forward", lambda *a, **k: pytest.fail("ran the UNet before checking"))
    monkeypatch.setattr(family, "scorer_for", lambda *a, **k: pytest.fail("resolved a scorer before checking"))
    with pytest.raises(ValueError, match=rf"scorer=None: {strategy} ranks candidates by a scorer"):
        strategy_named(strategy)(pipe, "a cat", None, n=2, num_inference_steps=STEPS, progress=False, **settings)


@pytest.mark.parametrize("strategy, settings", [
    ("best_of_n", {}), ("draft_then_finish", {"keep": 2, "draft_steps": 2}),
    ("successive_halving", {"prune_at": (1,), "keep": (2,)}), ("particle_resampling", {"resample_at": (1, 2)}),
])
def test_each_image_is_saved_once_with_its_scores(tiny_pipe, euler_a, tmp_path, monkeypatch, strategy, settings):
    """Every strategy saves each finished image once, already scored: one PNG write, one manifest line, and the
    scores in its metadata are the ones the search ranked it by (no second pass rewriting PNGs)."""
    import sdkit.save

    monkeypatch.setattr(sdkit.save, "update_scores", lambda *a, **k: pytest.fail("rewrote PNGs with their scores"))
    pipe = euler_a if strategy == "particle_resampling" else tiny_pipe
    out = tmp_path / "s"
    run = strategy_named(strategy)(pipe, PROMPTS, red, n=3, seed=1, num_inference_steps=STEPS, output_dir=out,
                                   progress=False, **settings)
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    files = [x["file"] for x in lines if "file" in x]
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert sorted(files) == pngs and len(set(files)) == len(files) == len(run) > 0  # one line per PNG
    assert sum(1 for x in lines if x.get("pruned")) == len(run.search.pruned) and len(lines) == len(files) + len(
        run.search.pruned)
    by_file = {x["file"]: x for x in lines if "file" in x}
    assert len(run.search.ranked) == len(run)
    for r in run.search.ranked:
        meta = read_metadata(r.candidate.path)
        assert meta["score"] == pytest.approx(r.score) and meta["logit"] == pytest.approx(r.logit)
        assert meta["scorer"] == "red" and meta["extra"]["search"]["strategy"] == strategy
        line = by_file[Path(r.candidate.path).name]
        assert line["score"] == meta["score"] and line["logit"] == meta["logit"]


def test_a_search_is_not_resumed(tiny_pipe, tmp_path, monkeypatch):
    out = tmp_path / "s"
    generate(tiny_pipe, "a cat", n=2, seed=0, num_inference_steps=2, output_dir=out, run_id="plain", progress=False)
    run = successive_halving(tiny_pipe, "a cat", red, n=4, seed=0, num_inference_steps=STEPS, output_dir=out,
                             run_id="hunt", prune_at=(1,), keep=(1,), progress=False)
    assert run.run_id == "hunt" and (out / "hunt.search.json").exists()
    monkeypatch.setattr(type(tiny_pipe), "__call__", lambda *a, **k: pytest.fail("generated before refusing"))
    for run_id in ("hunt", "plain"):
        with pytest.raises(ValueError, match=rf"run_id='{run_id}' is already a run in .*a search cannot be resumed"):
            best_of_n(tiny_pipe, "a cat", red, n=4, seed=0, num_inference_steps=STEPS, output_dir=out, run_id=run_id,
                      progress=False)


def test_pruned_candidates_are_manifest_lines_that_readers_of_images_pass_by(tiny_pipe, tmp_path):
    """A plain run and a search share a folder: the pruned lines are listed, and reading, recovering and resuming
    the plain run see only images (resume loads each record's PNG: a pruned line there would be a KeyError)."""
    out = tmp_path / "s"
    plain = generate(tiny_pipe, PROMPTS, n=2, seed=5, num_inference_steps=2, output_dir=out, run_id="plain",
                     progress=False)
    s = successive_halving(tiny_pipe, PROMPTS, red, n=4, prune_at=(1, 2), keep=(2, 1), num_inference_steps=STEPS,
                           seed=5, output_dir=out, progress=False).search
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert sum(1 for x in lines if x.get("pruned")) == 6 and not any("file" in x for x in lines if x.get("pruned"))
    assert all(isinstance(p, Pruned) for p in s.pruned)
    assert read_pruned(out) == read_pruned(out, s.run_id) == s.pruned and read_pruned(out, "plain") == []
    assert [x for x in lines if x.get("pruned")] == [p.record() for p in s.pruned]
    assert {(p.prompt, p.seed, p.step) for p in s.pruned} == {
        (p["prompt"], p["seed"], p["step"]) for p in json.loads((out / f"{s.run_id}.search.json").read_text())["pruned"]}
    for p in s.pruned:  # what finishing it needs: the search's full settings
        c = p.candidate
        assert c.num_inference_steps == STEPS and p.run_id == s.run_id and c.scheduler == "DDIM" and c.image is None
        assert c.extra["search"]["strategy"] == "successive_halving" and str(p.step) in c.extra["search"]["preview_scores"]
    records = read_manifest(out)
    assert len(records) == 4 + 2 and all(not r.get("pruned") and (out / r["file"]).exists() for r in records)
    recover(out)
    recover(out)
    assert len((out / "manifest.jsonl").read_text().splitlines()) == len(lines)  # nothing to repair, nothing added
    again = generate(tiny_pipe, PROMPTS, n=2, seed=5, num_inference_steps=2, output_dir=out, run_id="plain",
                     progress=False)
    assert again.resumed == 4 and all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(again, plain))


def test_pruned_records_round_trip_and_old_manifest_lines_read_back(tiny_pipe, tmp_path):
    s = successive_halving(tiny_pipe, "a cat", red, n=4, prune_at=(1,), keep=(1,), num_inference_steps=STEPS, seed=2,
                           progress=False).search
    for p in s.pruned:
        assert Pruned.from_record(p.record()) == p
        assert Pruned.from_record(json.loads(json.dumps(p.record()))).record() == p.record()
    # A manifest line as sdkit wrote it before Pruned existed (search/strategies.py's _pruned_record: the candidate's
    # params less path/score/logit/scorer/nsfw, plus pruned/step/preview_score), and a line from a newer sdkit with
    # a field this one does not know.
    old = {"prompt": "a cat", "seed": 7, "index": 3, "negative_prompt": None, "num_inference_steps": 20,
           "guidance_scale": 7.5, "height": 64, "width": 64, "scheduler": "DDIM", "model_id": "sdkit:tiny",
           "revision": None, "task": "text-to-image", "dtype": "float32", "device": "cpu", "run_id": "old",
           "extra": {"search": {"strategy": "successive_halving", "n": 4, "prune_at": [2], "keep": [1],
                                "previewer": "vae", "preview_scores": {"2": 41.5}}},
           "sdkit_version": "0.1.0", "pruned": True, "step": 2, "preview_score": 41.5}
    newer = {**old, "seed": 8, "index": 4, "preview_score": 12.0, "a_later_field": [1]}
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in (old, newer)))
    back = read_pruned(tmp_path)
    assert [type(p) for p in back] == [Pruned, Pruned] and read_pruned(tmp_path, "old") == back
    p = back[0]
    assert (p.prompt, p.seed, p.run_id, p.step, p.preview_score) == ("a cat", 7, "old", 2, 41.5)
    assert (p.candidate.index, p.candidate.height, p.candidate.scheduler) == (3, 64, "DDIM") and p.candidate.image is None
    # The same line again, with what later sdkit records at its "none" (no LoRAs, a folder's missing hash, no kwargs).
    assert p.record() == {**old, "model_hash": None, "loras": [], "embeddings": [], "pipe_kwargs": {}}
    assert list(p.record())[:len(old) - 4] == list(old)[:-4]  # the old fields keep their order
    assert (back[1].seed, back[1].preview_score) == (8, 12.0) and "a_later_field" not in back[1].record()
    assert read_pruned(tmp_path, "other") == []


def test_finish_pruned_makes_the_image_a_full_run_makes(tiny_pipe, tmp_path):
    out = tmp_path / "s"
    s = successive_halving(tiny_pipe, PROMPTS, red, n=4, prune_at=(1,), keep=(1,), num_inference_steps=STEPS, seed=5,
                           output_dir=out, progress=False).search
    full = best_of_n(tiny_pipe, PROMPTS, red, n=4, seed=5, num_inference_steps=STEPS, progress=False).search
    ref = {(r.candidate.prompt, r.candidate.seed): r.candidate for r in full.ranked}
    p = next(x for x in s.pruned if x.prompt == "a cat")
    from_folder = finish_pruned(tiny_pipe, out, seed=p.seed, prompt="a cat", output_dir=tmp_path / "done")
    from_pruned = finish_pruned(tiny_pipe, p)
    from_record = finish_pruned(tiny_pipe, p.record())
    from_manifest = finish_pruned(tiny_pipe, out / "manifest.jsonl", seed=p.seed, prompt="a cat")
    for c in (from_folder, from_pruned, from_record, from_manifest):
        assert (c.prompt, c.seed, c.num_inference_steps) == ("a cat", p.seed, STEPS)
        assert np.array_equal(pixels(c), pixels(ref[("a cat", p.seed)]))
    meta = read_metadata(from_folder.path)
    assert meta["extra"]["search"]["finished_pruned"] == {"run_id": s.run_id, "strategy": "successive_halving",
                                                          "step": 1, "preview_score": p.preview_score}
    assert np.array_equal(pixels(regenerate(from_folder.path, tiny_pipe)), pixels(from_folder))
    # Prompts share seeds: a seed alone names two pruned candidates; a seed that was kept names none.
    with pytest.raises(ValueError, match=rf"seed={p.seed} prompt=None .*2 pruned candidates match"):
        finish_pruned(tiny_pipe, out, seed=p.seed)
    kept = next(r.candidate for r in s.ranked if r.candidate.prompt == "a cat")
    with pytest.raises(ValueError, match=rf"seed={kept.seed} prompt='a cat' .*no pruned candidate matches"):
        finish_pruned(tiny_pipe, out, seed=kept.seed, prompt="a cat")
    with pytest.raises(ValueError, match="not a pruned candidate's record"):
        finish_pruned(tiny_pipe, {"seed": 1})
    with pytest.raises(FileNotFoundError, match="no such folder"):
        finish_pruned(tiny_pipe, tmp_path / "nowhere", seed=1)


def test_draft_then_finish_saves_its_finished_candidates_under_one_run_id(tiny_pipe, tmp_path):
    out = tmp_path / "s"
    run = draft_then_finish(tiny_pipe, PROMPTS, red, n=3, keep=2, draft_steps=2, seed=2, num_inference_steps=STEPS,
                            output_dir=out, run_id="d", progress=False)
    files = sorted(r["file"] for r in read_manifest(out))
    assert len(files) == 4 and all(f.startswith("d-") for f in files) and {c.run_id for c in run} == {"d"}
    assert sorted(c.index for c in run) == [c.index for c in run] and len({c.index for c in run}) == 4
    assert {f"d-{c.index:03d}-s{c.seed}.png" for c in run} == set(files)
    record = json.loads((out / "d.search.json").read_text())
    assert record["compute"]["unet_evaluations"] == run.search.compute.unet_evaluations == 6 * 2 + 4 * STEPS


@pytest.mark.parametrize("strategy", ["best_of_n", "draft_then_finish", "successive_halving"])
def test_a_cancelled_search_says_so(tiny_pipe, strategy):
    settings = {"draft_then_finish": {"keep": 1, "draft_steps": 2}, "successive_halving": {"prune_at": (1,), "keep": (1,)}}
    run = strategy_named(strategy)(tiny_pipe, "a cat", red, n=2, seed=0, num_inference_steps=STEPS, cancel=lambda: True,
                                   progress=False, **settings.get(strategy, {}))
    assert run.cancelled and run.search.cancelled and len(run) == 0


def test_format_pruned_lists_the_latest_stopped_best_first():
    pruned = [Pruned(Candidate(image=None, prompt="a", seed=s), st, sc)
              for s, st, sc in [(0, 2, 9.0), (1, 6, 3.0), (2, 6, 5.0), (3, 2, 1.0)]]
    search = Search("successive_halving", {}, [], Compute(), pruned=pruned)
    lines = search.format_pruned(limit=2).splitlines()
    assert "seed   2" in lines[0] and "seed   1" in lines[1] and "step   6" in lines[0]
    assert lines[2] == "... and 2 more, stopped after step 2"
    assert len(search.format_pruned().splitlines()) == 4
    assert Search("best_of_n", {}, [], Compute()).format_pruned() == "nothing was pruned"
