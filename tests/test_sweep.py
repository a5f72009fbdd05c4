"""Sweeps: validation, a local run against plain generate(), resume, Ray pixel equality, a killed Ray actor."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdkit.generation import generate
from sdkit.save import read_manifest, read_metadata
from sdkit.sweep.run import run_sweep
from sdkit.sweep.spec import GRID_PARAMS, Sweep

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*")  # Ray Data's own config renames

PROMPTS = ["a red circle", "a blue square"]
FAST = {"num_inference_steps": 2}


def tiny_sweep(**kw):
    kw.setdefault("model", "sdkit:tiny")
    kw.setdefault("grid", {"guidance_scale": [1.0, 5.0], "scheduler": ["DDIM", "Euler a"], **FAST})
    return Sweep(kw.pop("prompts", PROMPTS), **kw)


def pixels(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def assert_exactly_once(sweep, out):
    """Every item has one complete PNG under its own name and one manifest line; nothing else is there."""
    expected = {sweep.file_name(it) for it in sweep.items()}
    lines = []
    for line in (out / "manifest.jsonl").read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:  # a line torn by a kill, as read_manifest skips it
            continue
    assert sorted(r["file"] for r in lines) == sorted(expected)  # no loss, no duplicate lines
    assert sorted(os.listdir(out)) == sorted(expected | {"manifest.jsonl"})  # no `-1.png` copies, no .tmp files
    for it in sweep.items():
        meta = read_metadata(out / sweep.file_name(it))  # a half-written PNG fails to decode here
        assert (meta["prompt"], meta["seed"], meta["index"]) == (it.prompt, it.seed, it.index)
        pixels(out / sweep.file_name(it))


# --- validation: before any model work --------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(prompts=[]), ValueError, "prompts is an empty list"),
    (dict(prompts=["ok", "  "]), ValueError, "empty or whitespace"),
    (dict(prompts=["a", "a"]), ValueError, "'a' is listed twice"),
    (dict(grid={"guidance": [1, 2]}), ValueError, r"'guidance' is not known; allowed: \['guidance_scale', "),
    (dict(grid={"scheduler": ["DDIM", "Eulr"]}), ValueError, "scheduler='Eulr' is not known"),
    (dict(grid={"num_inference_steps": [10, 0]}), ValueError, "num_inference_steps=0"),
    (dict(grid={"height": [60]}), ValueError, "height=60: must be a positive multiple of 8"),
    (dict(grid={"guidance_scale": []}), ValueError, r"grid\['guidance_scale'\] is an empty list"),
    (dict(grid={"guidance_scale": [3, 3]}), ValueError, "repeats a value"),
    (dict(grid={"guidance_scale": [7.5, float("nan")]}), ValueError, "guidance_scale=nan: must be a finite number"),
    (dict(grid={"guidance_scale": float("inf")}), ValueError, "guidance_scale=inf: must be a finite number"),
    (dict(grid={"num_inference_steps": True}), ValueError, "num_inference_steps=True"),
    (dict(n=0), ValueError, "n=0"),
    (dict(seeds=[1, 2, 1]), ValueError, "repeat a seed"),
    (dict(seeds=[1, -2]), ValueError, "seed -2"),
    (dict(scorer="clipp"), ValueError, "scorer='clipp': unknown scorer 'clipp'"),
    (dict(scorer=3), ValueError, "scorer=3: use 'flax', 'torch', 'auto', a verifier spec"),
    (dict(scorer="clip:1,aesthetic:x"), ValueError, "scorer='clip:1,aesthetic:x'"),
    (dict(scorer="clip,pickscore", scorer_backend="jax"), ValueError, "scorer_backend='jax': one of flax, torch, auto"),
    (dict(scorer="clip,pickscore", combine="mean"), ValueError, "combine='mean': one of zscore, rank"),
    (dict(scorer="torch", combine="rank"), ValueError, "are for verifiers named in scorer"),
    (dict(loras={"no-such-lora.safetensors": 1.0}), FileNotFoundError, "LoRA 'no-such-lora.safetensors': no such file"),
    (dict(loras={"x.safetensors": float("nan")}), ValueError, "weight nan must be a finite number"),
    (dict(name="my sweep"), ValueError, "name='my sweep'"),
    (dict(max_items=100, n=10, grid={"guidance_scale": [1, 2, 3, 4, 5, 6]}), ValueError,
     r"120 images \(2 prompts × 10 seeds × 6 guidance_scale\), over max_items=100; pass confirm=True"),
])
def test_bad_description_is_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        tiny_sweep(**kwargs)


def test_big_sweep_with_confirmation_and_every_allowed_name():
    grid = {"guidance_scale": [1, 2, 3], "num_inference_steps": [2, 3], "scheduler": ["DDIM", "Euler a"],
            "negative_prompt": [None, "blurry"], "height": 64, "width": [64, 128]}
    assert set(grid) == set(GRID_PARAMS)
    sweep = tiny_sweep(n=10, grid=grid, max_items=100, confirm=True)
    assert len(sweep) == len(sweep.items()) == 2 * 10 * 3 * 2 * 2 * 2 * 2
    assert sorted(i for u in sweep.units() for i in u) == list(range(len(sweep)))


def test_prompts_file(tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text("# shapes\na red circle\n\n a blue square \n")
    assert tiny_sweep(prompts=f).prompts == ("a red circle", "a blue square")
    f.write_text("# only a comment\n\n")
    with pytest.raises(ValueError, match="has no prompts"):
        tiny_sweep(prompts=f)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        tiny_sweep(prompts=tmp_path / "nope.txt")
    with pytest.raises(ValueError, match=r"is a file name: pass Path\("):
        tiny_sweep(prompts=str(tmp_path / "prompts.txt"))


def test_items_seeds_and_run_id():
    sweep = tiny_sweep(n=3, seed=40)
    items = sweep.items()
    assert [it.seed for it in items[:3]] == [40, 41, 42]
    assert items[3].params == {"guidance_scale": 1.0, "scheduler": "Euler a", "num_inference_steps": 2}
    assert len({sweep.file_name(it) for it in items}) == len(items) == 24
    assert sweep.file_name(items[5]) == f"{sweep.run_id}-005-s42.png"
    assert tiny_sweep(n=3, seed=40, batch_size=1, scorer="torch").run_id == sweep.run_id  # pixels unchanged
    assert tiny_sweep(n=3, seed=41).run_id != sweep.run_id


def test_bad_run_arguments(tmp_path):
    with pytest.raises(ValueError, match="backend='dask'"):
        run_sweep(tiny_sweep(), tmp_path, backend="dask")
    with pytest.raises(ValueError, match="are for backend='ray'"):
        run_sweep(tiny_sweep(), tmp_path, ray_address="auto")
    with pytest.raises(TypeError, match="a Sweep"):
        run_sweep({"prompts": PROMPTS}, tmp_path)


def assert_progress(reports, result):
    """run_sweep's callback gets generate's `Progress`: one per finished image, counting the sweep's items."""
    from sdkit.results import Progress

    assert all(isinstance(p, Progress) for p in reports) and len(reports) == result.generated
    assert [p.done for p in reports] == list(range(1, len(reports) + 1)) and {p.total for p in reports} == {result.total}
    by_index = {c.index: c for c in result.candidates}
    for p in reports:
        (index,), (c,) = p.batch, p.finished
        assert c.index == index and c.image is None and c.params() == by_index[index].params()
        assert p.step == p.num_inference_steps == c.num_inference_steps


# --- local ------------------------------------------------------------------------------------------------


def test_local_sweep_matches_generate_and_ranks(tmp_path, tiny_pipe):
    from sdkit.ranking import rank
    from sdkit.scoring.scorers import load_scorer
    from sdkit.models.tiny_clip import tiny_clip_path

    clip = tiny_clip_path()
    sweep = tiny_sweep(n=2, scorer="torch", clip_model=clip, grid={"guidance_scale": [1.0, 5.0], **FAST})
    reports = []
    result = run_sweep(sweep, tmp_path, progress=False, callback=reports.append)
    assert (result.generated, result.skipped, result.total, len(result.candidates)) == (8, 0, 8, 8)
    assert_exactly_once(sweep, tmp_path)
    assert_progress(reports, result)

    # Each file is what generate() makes for that prompt, seed and setting, with the same metadata fields.
    ref_dir = tmp_path.parent / "ref"
    ref = generate(tiny_pipe, "a blue square", seeds=[1], n=1, guidance_scale=5.0, output_dir=ref_dir, progress=False, **FAST)
    c = next(c for c in result.candidates if (c.prompt, c.seed, c.guidance_scale) == ("a blue square", 1, 5.0))
    assert np.array_equal(pixels(c.path), np.asarray(ref[0].image))
    assert set(read_metadata(c.path)) == set(read_metadata(ref[0].path))
    assert set(read_manifest(tmp_path)[0]) == set(read_manifest(ref_dir)[0])

    # Scores were recorded by the worker; they are the scorer's own, and the ranking is sdkit.ranking's.
    scorer = load_scorer("torch", clip)
    images = [Image.open(c.path).convert("RGB") for c in result.candidates]
    scores = scorer(images, [c.prompt for c in result.candidates])
    np.testing.assert_allclose([read_metadata(c.path)["logit"] for c in result.candidates], scores.logits, rtol=1e-5)
    assert all(c.scorer == scores.scorer for c in result.candidates)
    expected = rank(result.candidates, scores)
    assert [(r.candidate.path, r.rank) for r in result.ranked] == [(r.candidate.path, r.rank) for r in expected]
    assert sorted(r.rank for r in result.ranked if r.candidate.prompt == "a red circle") == [1, 2, 3, 4]


def test_a_sweep_ranked_by_verifiers_keeps_each_members_score_and_draws_a_heatmap_per_verifier(tmp_path,
                                                                                               pickscore_in_cache):
    from sdkit.models.tiny_clip import tiny_clip_path
    from sdkit.scoring.scorers import load_scorer
    from sdkit.show.heatmap import score_heatmap, score_table

    sweep = tiny_sweep(n=2, scorer="clip:1,pickscore:0.5", scorer_backend="torch", combine="rank",
                       grid={"guidance_scale": [1.0, 5.0], "num_inference_steps": [2, 3]})
    assert sweep.run_id == tiny_sweep(n=2, grid={"guidance_scale": [1.0, 5.0], "num_inference_steps": [2, 3]}).run_id
    result = run_sweep(sweep, tmp_path / "out", progress=False)
    cands = result.candidates
    # The reference: the same ensemble loaded directly, on the saved pixels, all of a prompt's candidates at once.
    scorer = load_scorer("clip:1,pickscore:0.5", {"clip": str(tiny_clip_path()), "pickscore": str(pickscore_in_cache)},
                         backend="torch", combine="rank", device="cpu")
    ref = scorer([Image.open(c.path).convert("RGB") for c in cands], [c.prompt for c in cands])
    by_path = {r.candidate.path: r.candidate for r in result.ranked}
    assert [by_path[c.path].score for c in cands] == pytest.approx(ref.logits.tolist(), abs=1e-6)
    assert [c.members["pickscore"].logit for c in cands] == pytest.approx(ref.members["pickscore"].logits.tolist(),
                                                                          abs=1e-5)
    assert {tuple(read_metadata(c.path)["members"]) for c in cands} == {("clip", "pickscore")}
    # One heatmap per verifier: each member's own mean per cell, named on the colour bar.
    for member, label in ((None, "mean Ensemble score"), ("clip", "mean CLIP score"), ("pickscore", "mean PickScore")):
        fig = score_heatmap(result.ranked, member=member)
        assert fig.axes[1].get_ylabel() == label and fig.axes[0].get_title().startswith(label)
    xs, ys, means, counts = score_table(result.ranked, "guidance_scale", "num_inference_steps", member="pickscore")
    cell = [c.members["pickscore"].score for c in cands if (c.guidance_scale, c.num_inference_steps) == (5.0, 3)]
    assert means[ys.index(3), xs.index(5.0)] == pytest.approx(np.mean(cell)) and counts.sum() == len(cands)
    with pytest.raises(ValueError, match=r"member='aesthetic': .* whose members are \['clip', 'pickscore'\]"):
        score_table(result.ranked, "guidance_scale", "num_inference_steps", member="aesthetic")


def test_a_sweep_with_a_lora_makes_what_its_pipeline_makes(tmp_path):
    pytest.importorskip("peft")
    from loras import make_lora
    from sdkit.load.pipeline import load_pipeline
    from sdkit.models.builtin import builtin_pipeline_path

    lora = make_lora(builtin_pipeline_path("sdkit:tiny"), tmp_path / "lora")
    grid = {"guidance_scale": 5.0, **FAST}
    sweep = tiny_sweep(prompts=["a red circle"], n=2, loras={lora: 0.7}, grid=grid)
    assert sweep.loras == {str(lora): 0.7} and sweep.run_id != tiny_sweep(prompts=["a red circle"], n=2, grid=grid).run_id
    assert tiny_sweep(prompts=["a red circle"], n=2, loras={lora: 0.5}, grid=grid).run_id != sweep.run_id
    result = run_sweep(sweep, tmp_path / "out", progress=False)
    pipe = load_pipeline("sdkit:tiny", loras={str(lora): 0.7})
    ref = generate(pipe, "a red circle", n=2, seed=0, guidance_scale=5.0, progress=False, **FAST)
    for c, r in zip(sorted(result.candidates, key=lambda c: c.seed), ref):
        assert np.array_equal(pixels(c.path), np.asarray(r.image))
        assert [x["weight"] for x in read_metadata(c.path)["loras"]] == [0.7]
    # Another file at the same path is another sweep: the run id holds the file's contents.
    before = sweep.run_id
    make_lora(builtin_pipeline_path("sdkit:tiny"), tmp_path / "lora", seed=3)
    assert tiny_sweep(prompts=["a red circle"], n=2, loras={lora: 0.7}, grid=grid).run_id != before


def test_resume_after_a_crash(tmp_path):
    sweep = tiny_sweep(n=2, batch_size=2, grid={"guidance_scale": [1.0, 5.0], **FAST})
    full = run_sweep(sweep, tmp_path / "full", progress=False)

    out = tmp_path / "crashed"
    class Crash(Exception):
        pass

    def crash_after_3(progress):
        if len(os.listdir(out)) > 3:
            raise Crash
    with pytest.raises(Crash):
        run_sweep(sweep, out, progress=False, callback=crash_after_3)
    # What a kill -9 can leave besides: a file linked before its manifest line, a temp file, a torn line.
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert 0 < len(lines) < len(sweep)
    (out / "manifest.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:25])
    (out / f".{sweep.file_name(sweep.items()[-1])}.123.abcdef.tmp").write_bytes(b"\x89PNG half")

    resumed = run_sweep(sweep, out, progress=False)
    assert (resumed.skipped, resumed.generated) == (len(lines), len(sweep) - len(lines))
    assert_exactly_once(sweep, out)
    for a, b in zip(full.candidates, resumed.candidates):
        assert Path(a.path).name == Path(b.path).name
        assert np.array_equal(pixels(a.path), pixels(b.path))
    again = run_sweep(sweep, out, progress=False)
    assert (again.generated, again.skipped) == (0, len(sweep))


def test_resume_with_another_auto_dtype_warns(tmp_path, monkeypatch, recwarn):
    """dtype="auto" resolves per machine and sdkit version; a sweep resumed across them must say so."""
    import torch

    from sdkit.load import pipeline as load

    sweep = tiny_sweep(n=2, batch_size=2, grid={"guidance_scale": [1.0, 5.0], **FAST})
    out = tmp_path / "sweep"
    with monkeypatch.context() as m:  # the first run: a machine (or an sdkit) where auto meant bf16
        m.setattr(load, "auto_dtype", lambda device, unet_params=None: torch.bfloat16)
        first = run_sweep(sweep, out, progress=False)
    assert {c.dtype for c in first.candidates} == {"bfloat16"}
    assert not [w for w in recwarn if "different devices or dtypes" in str(w.message)]
    first_two = (out / "manifest.jsonl").read_text().splitlines(True)[:2]
    (out / "manifest.jsonl").write_text("".join(first_two))
    # (not read_manifest: it would recover the other PNGs' lines from their metadata)
    for name in set(os.listdir(out)) - {"manifest.jsonl"} - {json.loads(line)["file"] for line in first_two}:
        os.remove(out / name)  # as if it had stopped after two images
    with pytest.warns(UserWarning, match=r"different devices or dtypes \(2 on cpu/bfloat16, 6 on cpu/float32\)"):
        resumed = run_sweep(sweep, out, progress=False)
    assert (resumed.skipped, resumed.generated) == (2, 6)


def test_retried_unit_is_not_written_twice(tmp_path):
    """What Ray does after a kill: run a unit again, whose images may be on disk, recorded or not."""
    from sdkit.sweep.run import collect
    from sdkit.sweep.worker import SweepWorker

    sweep = tiny_sweep(prompts=PROMPTS[:1], n=2, grid=FAST)
    worker = SweepWorker(sweep, tmp_path)
    unit = sweep.units()[0]
    first = worker.run_unit(unit)
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(manifest.read_text().splitlines()[0] + "\n")  # killed after item 1's file, before its line
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.png")}
    assert worker.run_unit(unit) == first
    assert worker.run_unit(unit) == first
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.png")} == before  # not rewritten
    assert_exactly_once(sweep, tmp_path)
    assert len(collect(sweep, tmp_path).candidates) == 2


def test_cancel_stops_and_keeps_finished(tmp_path):
    sweep = tiny_sweep(n=2, batch_size=1)
    stop = threading.Event()
    result = run_sweep(sweep, tmp_path, progress=False, callback=lambda p: stop.set(), cancel=stop)
    assert result.cancelled and result.generated == len(result.candidates) == 1


def test_cli_sweep(tmp_path, capsys):
    from sdkit.cli.main import main

    argv = ["sweep", "a red circle", "-n", "2", "--seed", "3", "--grid", "guidance_scale=1,4", "--steps", "2",
            "--model", "sdkit:tiny", "--out", str(tmp_path), "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    run_dir = next(tmp_path.iterdir())
    assert "4 generated, 0 already done, 4 of 4" in out and run_dir.name.startswith("sweep-")
    assert sorted(r["guidance_scale"] for r in read_manifest(run_dir)) == [1.0, 1.0, 4.0, 4.0]
    assert main(argv) == 0 and "0 generated, 4 already done" in capsys.readouterr().out
    assert main(argv[:-1] + ["--grid", "cfg=2"]) == 2
    assert "'cfg' is not known" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # refused as it parses, before any model
        main(argv + ["--scorer", "clip:1,bogus"])
    assert e.value.code == 2 and "unknown scorer 'bogus'" in capsys.readouterr().err
    assert main(argv + ["--scorer", "torch", "--combine", "rank"]) == 2
    assert "are for verifiers named in scorer" in capsys.readouterr().err
    assert main(argv + ["--lora", str(tmp_path / "missing.safetensors:0.5")]) == 2
    assert "missing.safetensors': no such file" in capsys.readouterr().err


# --- Ray: one local runtime for the module, 2 CPUs, 2 workers ------------------------------------------------


@pytest.fixture(scope="module")
def ray_runtime():
    ray = pytest.importorskip("ray")
    root = str(Path(__file__).resolve().parents[1])  # workers import sdkit from this checkout
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield ray
    ray.shutdown()


def ray_sweep():
    return tiny_sweep(n=2, batch_size=2, grid={"scheduler": ["DDIM", "Euler a"], "guidance_scale": 5.0, **FAST})


@pytest.mark.slow  # starts a local Ray cluster (make test runs it)
def test_ray_pixels_equal_local(ray_runtime, tmp_path):
    """One actor with the driver's CPU count (Ray sets OMP_NUM_THREADS from it): the same pixels, bit for bit."""
    import torch

    sweep = ray_sweep()
    local = run_sweep(sweep, tmp_path / "local", progress=False)
    reports = []
    on_ray = run_sweep(sweep, tmp_path / "ray", backend="ray", workers=1, progress=False,
                       ray_remote_args={"num_cpus": torch.get_num_threads()}, callback=reports.append)
    assert on_ray.generated == len(sweep) == 8
    assert_progress(reports, on_ray)  # the same reports from Ray's rows as from the local worker
    assert_exactly_once(sweep, tmp_path / "ray")
    for a, b in zip(local.candidates, on_ray.candidates):
        assert Path(a.path).name == Path(b.path).name
        assert np.array_equal(pixels(a.path), pixels(b.path)), a.path
        assert a.params() | {"path": None} == b.params() | {"path": None}


@pytest.mark.slow  # starts a local Ray cluster (make test runs it)
def test_ray_with_fewer_threads_per_actor_differs_at_most_in_the_last_bit(ray_runtime, tmp_path):
    """Two actors of one thread each: a process started with one OpenMP thread picks other fp32 kernels
    (oneDNN's 1x1 convolutions here), so a few pixel values may differ by one; nothing more."""
    sweep = ray_sweep()
    local = run_sweep(sweep, tmp_path / "local", progress=False)
    on_ray = run_sweep(sweep, tmp_path / "ray", backend="ray", workers=2, progress=False)
    assert_exactly_once(sweep, tmp_path / "ray")
    for a, b in zip(local.candidates, on_ray.candidates):
        diff = np.abs(pixels(a.path).astype(int) - pixels(b.path))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (a.path, diff.max(), (diff > 0).mean())


def _sweep_actor_pids() -> list[int]:
    import psutil

    pids = []
    for p in psutil.process_iter(["cmdline"]):
        try:  # only actors of the Ray this test process started
            if "SweepWorker" in " ".join(p.info["cmdline"] or []) and os.getpid() in {a.pid for a in p.parents()}:
                pids.append(p.pid)
        except psutil.Error:
            continue
    return pids


@pytest.mark.slow  # starts a local Ray cluster (make test runs it)
def test_killed_ray_actor_loses_and_duplicates_nothing(ray_runtime, tmp_path):
    # batch_size=1: 8 units of 4 steps, so the kill lands while most of the work is still to do.
    sweep = tiny_sweep(n=4, batch_size=1, grid={"num_inference_steps": 4})
    out = tmp_path / "ray"
    killed = {}

    def kill_an_actor():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            done = len(read_manifest(out)) if (out / "manifest.jsonl").exists() else 0
            pids = _sweep_actor_pids() if done >= 1 else []
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.update(pid=pids[0], done=done)
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_an_actor, daemon=True)
    killer.start()
    result = run_sweep(sweep, out, backend="ray", workers=2, progress=False)
    killer.join(timeout=5)
    assert killed and killed["done"] < len(sweep), killed  # the kill happened mid-run
    assert len(result.candidates) == len(sweep)
    assert_exactly_once(sweep, out)
    # Retried or not, every image is the one its seed makes. Compared by fingerprint: a replacement actor
    # started while the machine is loaded once produced last-bit differences (seen 1 run in ~4 on 2 busy
    # cores); the exact-pixel local-vs-Ray check is test_ray_pixels_equal_local.
    from sdkit.fingerprints import fingerprint

    local = run_sweep(sweep, tmp_path / "local", progress=False)
    for a, b in zip(local.candidates, result.candidates):
        assert fingerprint(Image.open(a.path)) == fingerprint(Image.open(b.path)), b.path


def test_default_clip_belongs_with_the_model():
    from sdkit.models.builtin import clip_for
    from sdkit.sweep.worker import load_sweep_scorer

    scorer = load_sweep_scorer(Sweep(["a cat"], n=1, model="sdkit:tiny", scorer="torch"))
    assert scorer.model_id == clip_for("sdkit:tiny")  # not openai/clip-vit-base-patch32, which needs a download


@pytest.mark.slow  # starts a local Ray cluster (make test runs it)
def test_ray_search_sweep_equals_local(ray_runtime, tmp_path):
    """A search per prompt × grid point on Ray: the same survivors, pixels and pruned lines as here."""
    import torch

    from sdkit.models.tiny_clip import tiny_clip_path
    from sdkit.save import read_pruned

    sweep = tiny_sweep(n=4, scorer="torch", clip_model=tiny_clip_path(), search="successive_halving",
                       search_kwargs={"prune_at": [1], "keep": [2]}, grid={"guidance_scale": [1.0, 5.0], **FAST})
    local = run_sweep(sweep, tmp_path / "local", progress=False)
    on_ray = run_sweep(sweep, tmp_path / "ray", backend="ray", workers=1, progress=False,
                       ray_remote_args={"num_cpus": torch.get_num_threads()})
    assert (on_ray.generated, len(on_ray.pruned)) == (local.generated, len(local.pruned)) == (8, 8)
    for a, b in zip(local.candidates, on_ray.candidates):
        assert Path(a.path).name == Path(b.path).name
        assert np.array_equal(pixels(a.path), pixels(b.path)), a.path
    by_item = lambda records: sorted(records, key=lambda p: p.candidate.index)  # noqa: E731  (Ray's order varies)
    assert by_item(read_pruned(tmp_path / "ray")) == by_item(read_pruned(tmp_path / "local")) == by_item(on_ray.pruned)
    again = run_sweep(sweep, tmp_path / "ray", backend="ray", workers=1, progress=False)
    assert (again.generated, again.skipped) == (0, len(sweep))


@pytest.mark.slow  # starts a local Ray cluster (make test runs it)
def test_an_sdxl_sweep_makes_generates_pixels_locally_and_on_ray(ray_runtime, tmp_path):
    """SDXL through both sweep backends: each file is generate()'s image with its SDXL record, bit for bit."""
    import torch

    from sdkit.load.pipeline import load_pipeline

    sweep = tiny_sweep(model="sdkit:tiny-xl", n=2, batch_size=2, grid={"guidance_scale": [1.0, 5.0], **FAST})
    local = run_sweep(sweep, tmp_path / "local", progress=False)
    on_ray = run_sweep(sweep, tmp_path / "ray", backend="ray", workers=1, progress=False,
                       ray_remote_args={"num_cpus": torch.get_num_threads()})
    assert local.generated == on_ray.generated == len(sweep) == 8
    assert_exactly_once(sweep, tmp_path / "ray")
    for a, b in zip(local.candidates, on_ray.candidates):
        assert np.array_equal(pixels(a.path), pixels(b.path)), a.path
    c = next(c for c in local.candidates if (c.prompt, c.seed, c.guidance_scale) == ("a blue square", 1, 5.0))
    ref = generate(load_pipeline("sdkit:tiny-xl"), "a blue square", seeds=[1], n=1, guidance_scale=5.0,
                   progress=False, **FAST)
    assert np.array_equal(pixels(c.path), np.asarray(ref[0].image))
    assert read_metadata(c.path)["extra"]["sdxl"] == ref[0].extra["sdxl"]
    assert read_metadata(c.path)["extra"]["sdxl"]["target_size"] == [64, 64]
