"""Sweeps with a search: one search per prompt × grid point, the same survivors as the strategy called directly, the
pruned listed in the manifest, resumable and exactly once on disk; bad searches refused before any model loads."""

import hashlib
import json
import os
import re
import threading

import numpy as np
import pytest
from PIL import Image

import sdkit.sweep.worker as sweep_worker
from sdkit.cli.main import main
from sdkit.generation import generate
from sdkit.results import Scores
from sdkit.search import strategy_named
from sdkit.save import read_manifest, read_metadata, read_pruned
from sdkit.sweep.run import run_sweep
from sdkit.sweep.spec import Sweep

PROMPTS = ["a red circle", "a cat"]
GRID = {"guidance_scale": [1.0, 5.0], "num_inference_steps": 3}
SETTINGS = {
    "best_of_n": {},
    "draft_then_finish": {"keep": 2, "draft_steps": 1},
    "successive_halving": {"prune_at": [1, 2], "keep": [2, 1]},
    "particle_resampling": {"resample_at": [1, 2]},
}
SAMPLER = {"particle_resampling": "Euler a"}  # it needs a stochastic one; the others run the model's own (DDIM)


def hashed(images, prompts):
    """A scorer of the right signature whose favourite depends on the pixels and the prompt, like CLIP's, but
    deterministic and free: different prompts and grid points keep different seeds."""
    s = np.array([int(hashlib.sha256(np.asarray(im).tobytes() + p.encode()).hexdigest()[:6], 16) % 1000 / 10
                  for im, p in zip(images, prompts)], np.float32)
    return Scores(logits=s / 100, clip_score=s, scorer="hashed")


def search_sweep(strategy="successive_halving", **kw):
    kw.setdefault("search_kwargs", SETTINGS[strategy])
    grid = GRID | ({"scheduler": SAMPLER[strategy]} if strategy in SAMPLER else {})
    return Sweep(kw.pop("prompts", PROMPTS), n=kw.pop("n", 4), seed=kw.pop("seed", 3), model="sdkit:tiny",
                 scorer=kw.pop("scorer", hashed), search=strategy, grid=kw.pop("grid", grid), **kw)


def pixels(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def lines(out):
    return [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]


def assert_accounted_once(sweep, out):
    """Every item is a survivor's PNG with one manifest line, or one pruned line; never both, nothing else on disk."""
    recs = lines(out)
    files = [r["file"] for r in recs if not r.get("pruned")]
    pruned = [r["index"] for r in recs if r.get("pruned")]
    assert len(files) == len(set(files)) and len(pruned) == len(set(pruned))  # no duplicate lines
    items = sweep.items()
    by_file = {sweep.file_name(it): it for it in items}
    kept = [by_file[f].index for f in files]
    assert sorted(kept + pruned) == list(range(len(sweep)))  # each item once, survivor or pruned
    assert sorted(os.listdir(out)) == sorted(set(files) | {"manifest.jsonl"})  # no copies, no temp files
    for r in (r for r in recs if r.get("pruned")):
        it = items[r["index"]]
        assert "file" not in r and (r["prompt"], r["seed"], r["run_id"]) == (it.prompt, it.seed, sweep.run_id)
        assert r["guidance_scale"] == it.params["guidance_scale"] and r["num_inference_steps"] == 3
    return kept, pruned


@pytest.mark.parametrize("strategy", list(SETTINGS))
def test_search_sweep_keeps_what_the_strategy_keeps(tmp_path, strategy):
    from sdkit.load.pipeline import load_pipeline

    pipe = load_pipeline("sdkit:tiny", scheduler=SAMPLER.get(strategy))
    sweep = search_sweep(strategy)
    assert sweep.units() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
    result = run_sweep(sweep, tmp_path, progress=False)
    kept, pruned = assert_accounted_once(sweep, tmp_path)
    survivors = {"best_of_n": 16, "draft_then_finish": 8, "successive_halving": 4, "particle_resampling": 16}[strategy]
    assert (result.generated, result.skipped, len(result.candidates), len(result.pruned)) == (survivors, 0, survivors,
                                                                                              16 - survivors)
    assert [p.candidate.index for p in result.pruned] == sorted(pruned)
    chosen = []
    for prompt in PROMPTS:
        for g in GRID["guidance_scale"]:
            ref = strategy_named(strategy)(pipe, prompt, hashed, n=4, seed=3, **SETTINGS[strategy],
                                           guidance_scale=g, num_inference_steps=3, progress=False)
            got = [c for c in result.candidates if (c.prompt, c.guidance_scale) == (prompt, g)]
            assert [c.seed for c in got] == [c.seed for c in ref]
            for a, b in zip(got, ref):
                assert np.array_equal(pixels(a.path), np.asarray(b.image)), a.path
                meta = read_metadata(a.path)
                assert meta["score"] == pytest.approx(b.score) and meta["extra"]["search"] == b.extra["search"]
            gone = {p.seed for p in result.pruned if (p.prompt, p.candidate.guidance_scale) == (prompt, g)}
            assert gone == set(range(3, 7)) - {c.seed for c in ref}
            chosen.append(tuple(c.seed for c in ref))
    if survivors < 16:
        assert len(set(chosen)) > 1  # the comparison can tell seeds apart
    # Ranked per prompt over the survivors, as a plain sweep ranks its images.
    assert sorted(r.rank for r in result.ranked if r.candidate.prompt == PROMPTS[0]) == list(range(1, survivors // 2 + 1))

    before = (tmp_path / "manifest.jsonl").read_bytes()
    mtimes = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.png")}
    again = run_sweep(sweep, tmp_path, progress=False)
    assert (again.generated, again.skipped, len(again.candidates), len(again.pruned)) == (0, 16, survivors,
                                                                                          16 - survivors)
    assert (tmp_path / "manifest.jsonl").read_bytes() == before  # no new line, not even a duplicate pruned one
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.png")} == mtimes


def test_draft_then_finish_lists_unfinished_drafts_so_they_can_be_finished(tmp_path, tiny_pipe):
    from sdkit.search import finish_pruned

    sweep = search_sweep("draft_then_finish", prompts=PROMPTS[:1], grid={"num_inference_steps": 3})
    result = run_sweep(sweep, tmp_path, progress=False)
    assert len(result.pruned) == 2 and {p.step for p in result.pruned} == {1}  # stopped at the draft's steps
    rec = result.pruned[0]
    done = finish_pruned(tiny_pipe, tmp_path, seed=rec.seed)
    alone = generate(tiny_pipe, PROMPTS[0], n=1, seeds=[rec.seed], num_inference_steps=3, progress=False)
    assert np.array_equal(np.asarray(done.image), np.asarray(alone[0].image))


def test_a_search_killed_half_way_is_searched_again_whole(tmp_path, monkeypatch):
    """Killed after a unit's survivors and its first pruned line: the re-run keeps the files, adds the missing lines."""
    sweep = search_sweep()
    full = run_sweep(sweep, tmp_path / "full", progress=False)
    out = tmp_path / "killed"

    class Killed(BaseException):
        pass

    real, calls = sweep_worker.append_manifest, []

    def dies_on_second_pruned_line(folder, record):
        if record.get("pruned"):
            calls.append(record["index"])
            if len(calls) == 5:  # the second unit: one of its three pruned lines written
                raise Killed
        real(folder, record)

    monkeypatch.setattr(sweep_worker, "append_manifest", dies_on_second_pruned_line)
    with pytest.raises(Killed):
        run_sweep(sweep, out, progress=False)
    monkeypatch.undo()
    assert sum(1 for r in lines(out) if r.get("pruned")) == 4 and len(list(out.glob("*.png"))) == 2  # 1 + 3, 1 + 1
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}

    resumed = run_sweep(sweep, out, progress=False)
    assert (resumed.skipped, resumed.generated) == (6, 2)  # unit 1 whole, unit 2's survivor and first pruned line
    assert_accounted_once(sweep, out)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png") if p.name in mtimes} == mtimes  # not rewritten
    assert [os.path.basename(c.path) for c in resumed.candidates] == [os.path.basename(c.path) for c in full.candidates]
    for a, b in zip(full.candidates, resumed.candidates):
        assert np.array_equal(pixels(a.path), pixels(b.path))
    same = lambda pruned: sorted(json.dumps(p.record(), sort_keys=True) for p in pruned)  # noqa: E731
    assert same(resumed.pruned) == same(full.pruned) == same(read_pruned(out))


def test_a_cancelled_search_sweep_resumes_complete(tmp_path):
    sweep = search_sweep("draft_then_finish")
    stop = threading.Event()
    result = run_sweep(sweep, tmp_path, progress=False, callback=lambda p: stop.set(), cancel=stop)
    assert result.cancelled and 0 < len(result.candidates) < 8
    again = run_sweep(sweep, tmp_path, progress=False)
    assert not again.cancelled and len(again.candidates) == 8 and len(again.pruned) == 8
    assert_accounted_once(sweep, tmp_path)


# --- the description ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    (dict(scorer=None), r"search='successive_halving' with scorer=None"),
    (dict(search="beam"), r"search='beam': no such strategy; use one of best_of_n, draft_then_finish"),
    (dict(search=generate), r"search=<function generate.*a sweep takes a strategy name"),
    (dict(search_kwargs={"prune_at": [1], "keep": [4]}), r"keep=\[4\]: non-increasing counts from 1 to n - 1 = 3"),
    (dict(search_kwargs={"prune": [1]}), r"settings \['prune'\]: successive_halving takes keep, previewer, prune_at \("),
    (dict(search="draft_then_finish", search_kwargs={"keep": 5}), r"keep=5: must be an integer from 1 to n=4"),
    # Checked against every grid point's steps: draft_steps=3 fits 4 steps, not 3.
    (dict(search="draft_then_finish", search_kwargs={"keep": 1, "draft_steps": 3},
          grid={"num_inference_steps": [4, 3]}), r"draft_steps=3: must be an integer from 1 to .* = 2"),
    (dict(search="successive_halving", search_kwargs={}, grid={"guidance_scale": 2.0}, n=1), r"n=1 candidates"),
    (dict(seeds=[1, 3, 4, 5], n=None), r"seeds=\[1, 3, 4, 5\] with search='successive_halving'.*give n= and seed="),
    (dict(search_kwargs={"previewer": object()}), r"search_kwargs\['previewer'\]=<object.*JSON values"),
    (dict(search="particle_resampling", search_kwargs={}), r"particle_resampling' with scheduler=None: .*'Euler a'"),
    (dict(search="particle_resampling", search_kwargs={}, grid={"scheduler": ["Euler a", "DDIM"]}),
     r"scheduler='DDIM'"),
    (dict(search=None, search_kwargs={"keep": [1]}), r"search_kwargs=\{'keep': \[1\]\} without search="),
])
def test_bad_searches_are_refused_before_any_model_loads(monkeypatch, kwargs, match):
    import sdkit.load.pipeline

    monkeypatch.setattr(sdkit.load.pipeline, "load_pipeline", lambda *a, **k: pytest.fail("loaded a model"))
    args = dict(search="successive_halving", search_kwargs={"prune_at": [1], "keep": [1]}, scorer=hashed,
                n=4, grid={"num_inference_steps": 3}) | kwargs
    if args["n"] is None:
        del args["n"]
    with pytest.raises(ValueError, match=match):
        Sweep(PROMPTS, model="sdkit:tiny", **args)


def test_run_id_is_unchanged_without_a_search_and_names_the_search_with_one():
    plain = Sweep(PROMPTS, n=4, seed=3, model="sdkit:tiny", scorer="torch", grid=GRID)
    # The fingerprint as it was before searches existed, written out here so a change to it shows.
    what = ["sdkit:tiny", PROMPTS, [3, 4, 5, 6], [["guidance_scale", [1.0, 5.0]], ["num_inference_steps", [3]]],
            "auto", "auto", True]
    assert plain.run_id == f"sweep-{hashlib.sha256(json.dumps(what).encode()).hexdigest()[:8]}"
    assert Sweep(PROMPTS, n=4, seed=3, model="sdkit:tiny", scorer="torch", grid=GRID, search_kwargs={}).run_id == plain.run_id
    ids = {search_sweep(scorer="torch").run_id, search_sweep("draft_then_finish", scorer="torch").run_id,
           search_sweep(scorer="torch", search_kwargs={"prune_at": [1], "keep": [1]}).run_id,
           search_sweep(scorer="flax").run_id, search_sweep().run_id, plain.run_id}
    assert len(ids) == 6  # strategy, its settings and the scorer decide which files exist
    assert search_sweep(scorer="torch").run_id == search_sweep(scorer="torch").run_id
    assert search_sweep(search_kwargs={"keep": (2, 1), "prune_at": (1, 2)}).run_id == search_sweep().run_id
    consecutive = search_sweep(seeds=[3, 4, 5, 6], n=4)  # explicit, but what n=4, seed=3 means
    assert consecutive.run_id == search_sweep().run_id and consecutive.units() == search_sweep().units()
    assert search_sweep(batch_size=1).units() == search_sweep().units()  # a unit is one whole search


# --- the CLI ------------------------------------------------------------------------------------------------


def test_cli_sweep_with_a_search(tmp_path, capsys):
    argv = ["sweep", "a red circle", "a cat", "-n", "4", "--seed", "3", "--grid", "guidance_scale=1,5", "--steps", "3",
            "--model", "sdkit:tiny", "--scorer", "torch", "--search", "successive_halving", "--prune-at", "1",
            "--keep", "2", "--out", str(tmp_path), "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    run_dir = next(tmp_path.iterdir())
    assert "8 generated, 0 already done, 8 of 16" in out and "search successive_halving: 8 of 16 seeds pruned" in out
    assert len(read_manifest(run_dir)) == 8 and len(read_pruned(run_dir)) == 8
    assert main(argv) == 0 and "0 generated, 16 already done" in capsys.readouterr().out


@pytest.mark.parametrize("extra, match", [
    (["--search", "successive_halving", "--keep", "2"], "without --scorer"),
    (["--keep", "2", "--scorer", "torch"], "--keep without --search"),
    (["--search", "best_of_n", "--keep", "2", "--scorer", "torch"], "--keep does not apply to --search best_of_n"),
    (["--search", "successive_halving", "--prune-at", "5", "--keep", "1", "--scorer", "torch"], r"prune_at=\[5\]"),
    (["--search", "successive_halving", "--batch-size", "2", "--scorer", "torch"], "--batch-size 2 with --search"),
    (["--search", "best_of_n", "--seeds", "1,2", "--scorer", "torch"], "--seeds with --search"),
])
def test_cli_search_flags_are_checked_before_any_model_loads(tmp_path, capsys, monkeypatch, extra, match):
    import sdkit.load.pipeline

    monkeypatch.setattr(sdkit.load.pipeline, "load_pipeline", lambda *a, **k: pytest.fail("loaded a model"))
    argv = ["sweep", "a cat", "-n", "4", "--steps", "3", "--model", "sdkit:tiny", "--out", str(tmp_path), "--quiet"]
    assert main(argv + extra) == 2
    assert re.search(match, capsys.readouterr().err)
