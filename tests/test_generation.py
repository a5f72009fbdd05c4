import threading
import warnings

import numpy as np
import pytest
import torch

from sdkit.errors import GenerationError
from sdkit.generation import generate
from sdkit.load.pipeline import load_pipeline

FAST = dict(num_inference_steps=3, progress=False)


def pixels(run):
    return [np.asarray(c.image) for c in run]


# bf16: what a big model gets on a CPU with native bf16 (the tiny one is fp32 by default).
@pytest.mark.parametrize("scheduler,dtype", [(None, "auto"), ("Euler a", "auto"), ("DPM++ 2M", "auto"), (None, "bf16")])
def test_candidate_is_the_same_in_any_batch(scheduler, dtype):
    pipe = load_pipeline("sdkit:tiny", scheduler=scheduler, dtype=dtype)
    prompts = ["a red circle", "a blue square"]
    b8 = pixels(generate(pipe, prompts, n=8, seed=100, batch_size=8, negative_prompt="blurry", **FAST))
    b3 = pixels(generate(pipe, prompts, n=8, seed=100, batch_size=3, negative_prompt="blurry", **FAST))
    alone = pixels(generate(pipe, "a blue square", n=1, seeds=[105], batch_size=1, negative_prompt="blurry", **FAST))
    assert all(np.array_equal(a, b) for a, b in zip(b8, b3))
    assert np.array_equal(b8[8 + 5], alone[0])
    assert not np.array_equal(b8[0], b8[1])  # different seeds, different images


def test_pixel_identical_to_calling_diffusers_directly(tiny_pipe):
    seeds = [11, 12, 13]
    run = generate(tiny_pipe, "a green triangle", n=3, seeds=seeds, batch_size=3, guidance_scale=5.0,
                   negative_prompt="ugly", **FAST)
    ref = tiny_pipe(prompt=["a green triangle"] * 3, negative_prompt=["ugly"] * 3, num_inference_steps=3, guidance_scale=5.0,
                    generator=[torch.Generator("cpu").manual_seed(s) for s in seeds])
    for c, im in zip(run, ref.images):
        assert np.array_equal(np.asarray(c.image), np.asarray(im))


def test_candidates_record_everything(tiny_pipe):
    run = generate(tiny_pipe, ["a red circle", "a cat"], n=2, seed=40, guidance_scale=6.0, **FAST)
    assert [(c.prompt, c.seed, c.index) for c in run] == [
        ("a red circle", 40, 0), ("a red circle", 41, 1), ("a cat", 40, 2), ("a cat", 41, 3)]
    c = run[0]
    assert (c.num_inference_steps, c.guidance_scale, c.height, c.width) == (3, 6.0, 64, 64)
    assert (c.scheduler, c.model_id, c.task, c.dtype, c.device) == ("DDIM", "sdkit:tiny", "text-to-image", "float32", "cpu")
    assert c.sdkit_version and not c.nsfw


def test_random_seed_is_drawn_and_recorded(tiny_pipe):
    a = generate(tiny_pipe, "a dog", n=2, **FAST)
    assert a[1].seed == a[0].seed + 1
    again = generate(tiny_pipe, "a dog", n=1, seeds=[a[1].seed], **FAST)
    assert np.array_equal(np.asarray(again[0].image), np.asarray(a[1].image))


@pytest.mark.parametrize("kwargs,match", [
    (dict(prompt="   "), "empty or whitespace"),
    (dict(prompt=[]), "empty list"),
    (dict(n=0), "n=0"),
    (dict(height=100), "height=100: must be a positive multiple of 8"),
    (dict(width=-64), "width=-64"),
    (dict(num_inference_steps=0), "num_inference_steps=0"),
    (dict(guidance_scale=-1.0), "guidance_scale=-1.0"),
    (dict(guidance_scale=float("nan")), "guidance_scale=nan: must be a finite number"),  # was: guidance silently off
    (dict(guidance_scale=float("inf")), "guidance_scale=inf: must be a finite number"),  # was: a black image
    (dict(num_inference_steps=True), "num_inference_steps=True"),  # was: one step
    (dict(batch_size=True), "batch_size=True"),
    (dict(n=3, seeds=[1, 2]), "seeds has 2 entries but n=3"),
    (dict(batch_size=0), "batch_size=0"),
    (dict(negative_prompt=["a", "b"]), "negative_prompt has 2 entries for 1 prompts"),
])
def test_bad_input_fails_before_any_work(tiny_pipe, monkeypatch, kwargs, match):
    called = []
    monkeypatch.setattr(type(tiny_pipe), "__call__", lambda *a, **k: called.append(1))
    args = dict(prompt="a red circle") | kwargs
    with pytest.raises(ValueError, match=match):
        generate(tiny_pipe, args.pop("prompt"), **args)
    assert not called


def test_unwritable_output_dir(tiny_pipe, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match="output_dir=.*cannot be created"):
        generate(tiny_pipe, "a cat", output_dir=f / "sub", **FAST)
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    import os
    if os.geteuid() != 0:  # root can write anywhere
        with pytest.raises(ValueError, match="not a writable directory"):
            generate(tiny_pipe, "a cat", output_dir=ro, **FAST)


def test_a_long_prompt_is_chunked_without_a_warning_where_the_pipeline_takes_embeddings(tiny_pipe, monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generate(tiny_pipe, "red " * 100, n=1, seed=0, **FAST)  # chunked: sdkit.prompts (tests/test_prompts.py)
    # A pipeline that cannot take embeddings still truncates, and says so.
    monkeypatch.setattr("sdkit.prompts.takes_embeddings", lambda pipe: False)
    with pytest.warns(UserWarning, match=r"reads only the first 77"):
        generate(tiny_pipe, "red " * 100, n=1, seed=0, **FAST)


def test_very_long_prompt_is_one_warning_and_printed_nowhere(tiny_pipe, capfd, monkeypatch):
    """10,000 characters, on a pipeline that truncates: sdkit's one warning, not diffusers' copy of the truncated
    text nor transformers' notice."""
    monkeypatch.setattr("sdkit.prompts.takes_embeddings", lambda pipe: False)
    import logging

    prompt = "red " * 2500
    # transformers says it once per tokenizer: make sure this test would see it
    tiny_pipe.tokenizer.deprecation_warnings.pop("sequence-length-is-longer-than-the-specified-maximum", None)
    records = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    loggers = [logging.getLogger(n) for n in ("", "diffusers", "transformers")]  # libraries' roots don't propagate
    for lg in loggers:
        lg.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run = generate(tiny_pipe, prompt, n=1, seed=0, **FAST)
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
    said = [str(w.message) for w in caught] + [r.getMessage() for r in dict.fromkeys(records)]
    about = [m for m in said if any(k in m for k in ("truncat", "ignored", "only the first", "sequence length"))]
    assert len(about) == 1 and "prompt is 2502 tokens" in about[0], about
    out, err = capfd.readouterr()
    assert all("red " * 20 not in m for m in said) and "red " * 20 not in out + err
    assert len(run) == 1


def test_resume_keeps_finished_and_makes_the_rest_bit_identically(tiny_pipe, tmp_path, capsys):
    stop = threading.Event()
    first = generate(tiny_pipe, ["a cat", "a dog"], n=3, seed=8, batch_size=2, output_dir=tmp_path, run_id="r",
                     cancel=stop, callback=lambda p: p.finished and stop.set(), **FAST)
    assert first.cancelled and len(first) == 2
    saved = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.png")}
    # seeds are not given again: the run's own are used
    run = generate(tiny_pipe, ["a cat", "a dog"], n=3, batch_size=3, output_dir=tmp_path, run_id="r", **FAST)
    assert "2 of 6 candidates kept, 4 to make" in capsys.readouterr().err
    assert run.resumed == 2 and [c.index for c in run] == list(range(6)) and [c.seed for c in run] == [8, 9, 10] * 2
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.png") if p.name in saved} == saved  # kept, not redone
    ref = generate(tiny_pipe, ["a cat", "a dog"], n=3, seed=8, **FAST)
    assert all(np.array_equal(a, b) for a, b in zip(pixels(run), pixels(ref)))
    from sdkit.save import read_manifest

    assert sorted(r["index"] for r in read_manifest(tmp_path, run_id="r")) == list(range(6))
    assert (tmp_path / "r.run.json").exists()


def test_resuming_a_complete_run_makes_nothing(tiny_pipe, tmp_path, monkeypatch, capsys):
    done = generate(tiny_pipe, "a cat", n=2, seed=1, output_dir=tmp_path, run_id="c", **FAST)
    monkeypatch.setattr(type(tiny_pipe), "__call__", lambda *a, **k: pytest.fail("made an image again"))
    again = generate(tiny_pipe, "a cat", n=2, seed=1, output_dir=tmp_path, run_id="c", **FAST)
    assert "already complete (2 candidates kept), nothing to make" in capsys.readouterr().err
    assert again.resumed == 2 and all(np.array_equal(a, b) for a, b in zip(pixels(again), pixels(done)))
    assert len(list(tmp_path.glob("*.png"))) == 2


@pytest.mark.parametrize("change,match", [
    (dict(prompt="a dog"), r"prompts was \['a cat'\], now \['a dog'\]"),
    (dict(num_inference_steps=4), "num_inference_steps was 3, now 4"),
    (dict(guidance_scale=5.0), "guidance_scale was 7.5, now 5.0"),
    (dict(seed=2), r"seeds was \[1, 2\], now \[2, 3\]"),
    (dict(n=3), "n was 2, now 3"),
    (dict(height=32), "height was 64, now 32"),
    (dict(negative_prompt="blurry"), r"negative_prompts was \[None\], now \['blurry'\]"),
])
def test_resume_with_other_settings_is_refused(tiny_pipe, tmp_path, monkeypatch, change, match):
    generate(tiny_pipe, "a cat", n=2, seed=1, output_dir=tmp_path, run_id="s", **FAST)
    monkeypatch.setattr(type(tiny_pipe), "__call__", lambda *a, **k: pytest.fail("generated before refusing"))
    args = dict(prompt="a cat", n=2, seed=1, **FAST) | change
    with pytest.raises(ValueError, match="cannot resume run 's'.*" + match):
        generate(tiny_pipe, args.pop("prompt"), output_dir=tmp_path, run_id="s", **args)


def test_resume_with_another_scheduler_is_refused(tmp_path):
    generate(load_pipeline("sdkit:tiny"), "a cat", n=1, seed=1, output_dir=tmp_path, run_id="s", **FAST)
    with pytest.raises(ValueError, match="scheduler was 'DDIM', now 'Euler a'"):
        generate(load_pipeline("sdkit:tiny", scheduler="Euler a"), "a cat", n=1, seed=1, output_dir=tmp_path,
                 run_id="s", **FAST)


def test_progress_callback_per_step_and_batch(tiny_pipe):
    events = []
    generate(tiny_pipe, "a cat", n=3, seed=0, batch_size=2, callback=events.append, **FAST)
    steps = [e for e in events if e.finished is None]
    batches = [e for e in events if e.finished is not None]
    assert len(steps) == 2 * 3  # two batches x three steps
    assert [len(b.finished) for b in batches] == [2, 1]
    assert batches[-1].done == batches[-1].total == 3


def test_before_save_drops_and_changes_candidates_before_they_are_saved_or_reported(tiny_pipe, tmp_path):
    """A search's hook: each decoded batch goes through `before_save`; only what it returns is saved (with what it
    set), kept in the run and reported as finished."""
    import dataclasses

    from sdkit.save import read_manifest, read_metadata

    seen, events = [], []

    def before_save(batch):
        seen.append([(c.index, c.seed, c.image is not None, c.path) for c in batch])
        return [dataclasses.replace(c, score=float(c.seed), extra={**c.extra, "kept_by": "hook"})
                for c in batch if c.seed % 2 == 0]

    out = tmp_path / "o"
    run = generate(tiny_pipe, "a cat", n=4, seed=0, batch_size=2, output_dir=out, callback=events.append,
                   before_save=before_save, **FAST)
    # Called once per decoded batch, with the images made and nothing saved yet.
    assert seen == [[(0, 0, True, None), (1, 1, True, None)], [(2, 2, True, None), (3, 3, True, None)]]
    assert [(c.index, c.seed, c.score, c.extra["kept_by"]) for c in run] == [(0, 0, 0.0, "hook"), (2, 2, 2.0, "hook")]
    plain = generate(tiny_pipe, "a cat", n=4, seed=0, batch_size=2, **FAST)
    assert all(np.array_equal(a, b) for a, b in zip(pixels(run), pixels(plain)[::2]))
    # Only the kept ones are on disk, as the hook changed them; the dropped ones nowhere.
    records = read_manifest(out)
    assert sorted(r["seed"] for r in records) == [0, 2] and len(list(out.glob("*.png"))) == 2
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 2
    for c in run:
        meta = read_metadata(c.path)
        assert meta["score"] == float(c.seed) and meta["extra"]["kept_by"] == "hook"
    # Progress reports what was kept: the dropped candidates are never `finished`.
    batches = [e for e in events if e.finished is not None]
    assert [[c.seed for c in e.finished] for e in batches] == [[0], [2]]
    assert [e.done for e in batches] == [1, 2]  # candidates kept so far
    assert all(c.extra.get("kept_by") == "hook" for e in batches for c in e.finished)


def test_cancel_keeps_finished_candidates(tiny_pipe, tmp_path):
    stop = threading.Event()
    seen = []

    def cb(p):
        seen.append(p)
        if p.finished:  # stop after the first batch
            stop.set()

    run = generate(tiny_pipe, "a cat", n=6, seed=0, batch_size=2, output_dir=tmp_path, cancel=stop, callback=cb, **FAST)
    assert run.cancelled and len(run) == 2
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(c.path.split("/")[-1] for c in run)
    # it stopped within one step of the request: no step events after the first batch finished
    after = seen[[i for i, p in enumerate(seen) if p.finished][0] + 1:]
    assert len(after) <= 1


def test_out_of_memory_halves_the_batch(tiny_pipe, tmp_path, monkeypatch, capsys):
    real = type(tiny_pipe).__call__
    sizes = []

    def flaky(self, *a, **k):
        sizes.append(len(k["prompt"]))
        if len(k["prompt"]) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, *a, **k)

    monkeypatch.setattr(type(tiny_pipe), "__call__", flaky)
    run = generate(tiny_pipe, "a cat", n=5, seed=0, batch_size=8, output_dir=tmp_path, **FAST)
    assert sizes == [5, 4, 2, 2, 1]  # 8 fits 5 -> OOM -> 4 -> OOM -> 2, 2, then the last one
    assert [c.seed for c in run] == [0, 1, 2, 3, 4] and len(list(tmp_path.glob("*.png"))) == 5
    assert "retrying with batch_size=4" in capsys.readouterr().err
    monkeypatch.setattr(type(tiny_pipe), "__call__", real)
    ref = generate(tiny_pipe, "a cat", n=5, seed=0, batch_size=5, **FAST)
    assert all(np.array_equal(np.asarray(a.image), np.asarray(b.image)) for a, b in zip(run, ref))


@pytest.mark.parametrize("error, raised, match, n, batch_size, run_attr", [
    # out of memory with nothing smaller to retry: a GenerationError carrying the finished run
    (RuntimeError("MPS backend out of memory (MPS allocated: 8 GB)"), GenerationError,
     "out of memory with batch_size=1", 3, 1, "run"),
    # any other error propagates as itself, the finished run attached
    (KeyError("boom"), KeyError, "boom", 4, 2, "sdkit_run"),
], ids=["out_of_memory_at_batch_one", "other_error"])
def test_an_error_in_the_second_batch_keeps_the_first(tiny_pipe, tmp_path, monkeypatch, error, raised, match, n,
                                                      batch_size, run_attr):
    real = type(tiny_pipe).__call__
    calls = []

    def dies_later(self, *a, **k):
        calls.append(1)
        if len(calls) > 1:
            raise error
        return real(self, *a, **k)

    monkeypatch.setattr(type(tiny_pipe), "__call__", dies_later)
    with pytest.raises(raised, match=match) as e:
        generate(tiny_pipe, "a cat", n=n, seed=0, batch_size=batch_size, output_dir=tmp_path, **FAST)
    assert len(getattr(e.value, run_attr)) == batch_size and len(list(tmp_path.glob("*.png"))) == batch_size


def test_safety_checker_flags_for_real(tmp_path, tiny_path):
    """Lower the tiny checker's thresholds so every image is 'unsafe': the real diffusers path flags it."""
    import shutil

    from safetensors.torch import load_file, save_file

    flagged = tmp_path / "flagging"
    shutil.copytree(tiny_path, flagged)
    f = flagged / "safety_checker" / "model.safetensors"
    w = load_file(f)
    w["concept_embeds_weights"] = torch.full_like(w["concept_embeds_weights"], -2.0)  # cosine > -2 always
    save_file(w, f)
    pipe = load_pipeline(str(flagged))
    with pytest.warns(UserWarning, match="flagged by the safety checker"):
        run = generate(pipe, "a cat", n=2, seed=0, **FAST)
    assert all(c.nsfw for c in run)
    assert all(np.asarray(c.image).max() == 0 for c in run)  # diffusers blacks them out
    clean = generate(load_pipeline(str(tiny_path)), "a cat", n=2, seed=0, **FAST)
    assert not any(c.nsfw for c in clean)


def test_progress_counts_only_steps_that_run_for_img2img():
    from PIL import Image

    pipe = load_pipeline("sdkit:tiny", "image-to-image")
    events = []
    generate(pipe, "a cat", n=1, seed=0, num_inference_steps=4, callback=events.append, progress=False,
             pipe_kwargs={"image": Image.new("RGB", (64, 64), "white"), "strength": 0.5})
    steps = [e for e in events if e.finished is None]
    assert [e.step for e in steps] == [1, 2] and all(e.num_inference_steps == 2 for e in events)


def test_regenerate_refuses_edit_tasks_with_a_pointer():
    import sdkit.generation
    from sdkit import regenerate

    assert not hasattr(sdkit.generation, "regenerate")  # it lives in the search layer (sdkit.search.replay)
    with pytest.raises(ValueError, match=r"sdkit.inpaint\(..., seeds=\[5\]\)"):
        regenerate({"task": "inpainting", "seed": 5, "model_id": "sdkit:tiny-inpainting"})


def test_progress_bar_reaches_its_total(tiny_pipe, monkeypatch):
    """One step of a batch of 2 is two candidate-steps: the bar ends full, not half way (it did)."""
    import importlib

    module = importlib.import_module("sdkit.generation")
    bars = []
    real = module.progress_bar

    def spy(*args, **kwargs):
        bars.append(real(*args, **kwargs))
        return bars[-1]

    monkeypatch.setattr(module, "progress_bar", spy)
    module.generate(tiny_pipe, "a cat", n=5, seed=0, num_inference_steps=3, batch_size=2, height=64, width=64)
    assert bars[0].total == 5 * 3 and bars[0].n == bars[0].total
