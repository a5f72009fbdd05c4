"""The explorer's logic, driven as the browser would: value changes and button clicks, then the thread's results."""

import html
import threading
import time

import numpy as np
import pytest
from PIL import Image

from sdkit.show.explorer.widgets import Explorer, explore
from sdkit.show.grid import read_grid_metadata
from sdkit.save import image_hash, read_manifest, read_metadata
from test_explorer_session import MeanRed, red  # the session's tests import no ipywidgets

FAST = dict(model="sdkit:tiny", prompt="a red circle", n=3, num_inference_steps=2, seed=7, batch_size=2)


def finished(ex, timeout=120):
    assert ex.wait(timeout), "generation did not finish"
    return ex


@pytest.fixture
def ex(tmp_path):
    return Explorer(scorer=MeanRed(), output_dir=tmp_path, **FAST)


def test_generate_click_ranks_saves_and_shows(ex, tmp_path):
    shown = []
    update = ex.gallery.update
    ex.gallery.update = lambda ranked: (shown.append([(e.rank, e.candidate.seed) for e in _entries(ranked)]),
                                        update(ranked))
    ex.generate_button.click()
    assert ex.generate_button.disabled and not ex.stop_button.disabled  # while it runs
    finished(ex)

    assert ex.error is None, ex.status.value
    run = ex.run
    assert [c.seed for c in run] == [7, 8, 9] and not run.cancelled
    # Ranked by the scorer, best first, and each candidate scored exactly once (two batches: 2 + 1).
    assert ex.form.scorer.value.calls == [2, 1]
    by_red = sorted(run.candidates, key=lambda c: (-red(c), c.seed))
    assert [r.candidate.seed for r in ex.ranked] == [c.seed for c in by_red]
    assert [r.rank for r in ex.ranked] == [1, 2, 3]
    # Live: the first batch appeared unscored, then re-ranked when its scores came in.
    assert shown[0] == [(None, 7), (None, 8)]
    assert sorted(shown[1]) == [(1, 7), (2, 8)] or sorted(shown[1]) == [(1, 8), (2, 7)]
    assert len(shown[-1]) == 3
    # What the panel shows.
    captions = [card.button.tooltip for card in ex.gallery.grid.children]
    assert captions == [f"#{k + 1} · {red(c) / 2.55:.2f} · seed {c.seed}" for k, c in enumerate(by_red)]
    assert ex.progress.value == ex.progress.max == 3 * 2 and ex.progress.bar_style == "success"
    assert ex.steps_seen == 2 * 2  # 2 batches (of 2 and 1) x 2 steps: steps are counted per batch
    assert "3 candidates" in ex.status.value and ex.grid_path.name in ex.status.value
    assert not ex.generate_button.disabled and ex.stop_button.disabled
    # On disk: the images with their scores in the PNG and the manifest, and the ranked grid.
    out = tmp_path / run.run_id
    assert run.output_dir == str(out)
    records = {r["seed"]: r for r in read_manifest(out)}
    assert {s: round(r["score"], 4) for s, r in records.items()} == {c.seed: round(red(c) / 2.55, 4) for c in run}
    assert read_metadata(run[0].path)["scorer"] == "mean-red:pixels"
    assert ex.grid_path.parent == out
    assert [(cell["rank"], cell["seed"]) for cell in read_grid_metadata(ex.grid_path)] == [
        (k + 1, c.seed) for k, c in enumerate(by_red)]


def _entries(ranked):
    from sdkit.show.grid import entries

    return entries(ranked)


def test_one_prompt_per_line_is_ranked_per_prompt(tmp_path):
    ex = Explorer(scorer=MeanRed(), output_dir=tmp_path, **{**FAST, "n": 2, "prompt": "a red circle\n\na blue square\n"})
    ex.generate_button.click()
    finished(ex)
    assert [(c.prompt, c.seed) for c in ex.run] == [("a red circle", 7), ("a red circle", 8),
                                                     ("a blue square", 7), ("a blue square", 8)]
    assert [(e.candidate.prompt, e.rank) for e in ex.gallery.entries] == [
        ("a red circle", 1), ("a red circle", 2), ("a blue square", 1), ("a blue square", 2)]
    for prompt in ("a red circle", "a blue square"):
        best, second = [e.candidate for e in ex.gallery.entries if e.candidate.prompt == prompt]
        assert red(best) >= red(second)


def test_random_seed_is_drawn_shown_and_used(tmp_path):
    ex = Explorer(scorer=None, output_dir=tmp_path, **{**FAST, "seed": None, "n": 2})
    assert ex.form.random_seed.value and ex.form.seed.value == ""
    ex.generate_button.click()
    finished(ex)
    base = int(ex.form.seed.value)
    assert [c.seed for c in ex.run] == [base, base + 1]
    # No scorer: generation order, unranked captions, grid still written.
    assert [card.button.tooltip for card in ex.gallery.grid.children] == [f"seed {base}", f"seed {base + 1}"]
    assert "–" not in "".join(card.button.description for card in ex.gallery.grid.children)
    assert ex.grid_path.exists()
    assert "ranked grid" not in ex.status.value and f"grid {ex.grid_path.name}, unranked (no scorer)" in ex.status.value


@pytest.mark.parametrize("change, message", [
    (dict(prompt="  \n "), "prompt is empty"),
    (dict(n=0), "n=0"),
    (dict(seed="12abc"), "seed='12abc'"),
    (dict(seed="-5"), "seed=-5"),
    (dict(model=" "), "model=' '"),
    (dict(guidance_scale=float("nan")), "guidance_scale=nan"),  # the slider takes NaN as typed
])
def test_bad_input_is_shown_and_nothing_starts(ex, monkeypatch, change, message):
    import sdkit.load.pipeline

    monkeypatch.setattr(sdkit.load.pipeline, "load_pipeline", lambda *a, **k: pytest.fail("loaded a model for bad input"))
    ex.form.random_seed.value = False
    for name, value in change.items():
        getattr(ex.form, name).value = value  # as typed into the widget
    ex.generate_button.click()
    assert ex.session.thread is None
    assert message in ex.error and message.replace("'", "&#x27;") in ex.status.value
    assert not ex.generate_button.disabled


def test_missing_model_is_a_readable_error(tmp_path):
    ex = Explorer(scorer=None, output_dir=tmp_path, **{**FAST, "model": str(tmp_path / "no-such-model")})
    ex.generate_button.click()
    finished(ex)
    assert ex.error.startswith("ModelNotAvailable") and "no such directory" in ex.error
    assert "Error while loading the model" in ex.status.value
    assert "<details><summary>traceback</summary>" in ex.status.value and "Traceback" in ex.status.value
    assert ex.run is None and not ex.generate_button.disabled and ex.stop_button.disabled


def test_scorer_that_cannot_load_is_named(tmp_path):
    ex = Explorer(scorer="torch", clip_model=str(tmp_path / "no-clip"), output_dir=tmp_path, **FAST)
    ex.generate_button.click()
    finished(ex)
    assert "Error while loading the scorer" in ex.status.value and "no-clip" in ex.error
    assert ex.run is None and not ex.generate_button.disabled


def test_out_of_memory_keeps_finished_candidates(ex, monkeypatch):
    import importlib

    gen = importlib.import_module("sdkit.generation")  # the module that defines `sdkit.generate`
    real = gen.generate

    def oom_after_first_batch(pipe, prompt, **kw):
        run = real(pipe, prompt, **{**kw, "n": 2})
        raise gen.GenerationError("out of memory with batch_size=1 at 64x64: try low_memory=True", run)

    monkeypatch.setattr(gen, "generate", oom_after_first_batch)
    ex.generate_button.click()
    finished(ex)
    assert "out of memory" in ex.error and "out of memory with batch_size=1" in ex.status.value
    assert len(ex.run) == 2 and all(c.path for c in ex.run)
    assert len(read_grid_metadata(ex.grid_path)) == 2  # what finished is still ranked and saved


def test_scorer_failure_does_not_stop_generation(tmp_path):
    def broken(images, prompts):
        raise RuntimeError("CLIP exploded")

    ex = Explorer(scorer=broken, output_dir=tmp_path, **FAST)
    ex.generate_button.click()
    finished(ex)
    assert "CLIP exploded" in ex.error and "scoring" in ex.status.value
    assert len(ex.run) == 3 and all(c.score is None for c in ex.run)
    assert "3 candidates" in ex.status.value and ex.grid_path.exists()


def test_stop_takes_effect_within_one_denoising_step(tmp_path):
    ex = Explorer(scorer=MeanRed(), output_dir=tmp_path, **{**FAST, "n": 3, "batch_size": 1,
                                                               "num_inference_steps": 8})
    in_second = threading.Event()
    on_progress = ex._on_progress

    def slow_steps(p):  # each step takes at least 20 ms, so Stop lands mid-candidate
        on_progress(p)
        time.sleep(0.02)
        if len(ex.session.candidates) == 1 and p.finished is None and p.step >= 2:
            in_second.set()

    ex._on_progress = slow_steps
    ex.generate_button.click()
    assert in_second.wait(120), "never reached the second candidate"
    ex.stop_button.click()  # from this (the kernel's) thread, while the worker denoises
    steps_at_stop = ex.steps_seen
    finished(ex)
    assert ex.steps_seen <= steps_at_stop + 1  # the step in flight may finish; no more
    assert ex.run.cancelled and len(ex.run) == 1 and ex.error is None
    assert "stopped: 1 of 3 candidates kept" in ex.status.value
    assert ex.progress.bar_style == "warning"
    assert len(read_manifest(ex.run.output_dir)) == 1 and ex.grid_path.exists()
    assert not ex.generate_button.disabled


def test_selected_candidate_details_save_copy_seed_and_more_like_this(ex, tmp_path):
    ex.generate_button.click()
    finished(ex)
    entry = ex.gallery.select(1)  # as a click on the second caption
    c = entry.candidate
    assert ex.selected_box.layout.display == "flex"
    assert f"<b>seed</b> {c.seed}</div>" in ex.details.value and "<b>prompt</b> a red circle" in ex.details.value

    saved = ex.save_selected()
    assert saved.parent == tmp_path / "saved"
    meta = read_metadata(saved)
    assert (meta["seed"], meta["prompt"], round(meta["score"], 4)) == (c.seed, c.prompt, round(c.score, 4))
    assert np.array_equal(np.asarray(Image.open(saved)), np.asarray(c.image))

    ex.form.random_seed.value = True
    ex.copy_seed_button.click()
    assert ex.form.seed.value == str(c.seed) and not ex.form.random_seed.value

    ex.form.n.value = 2
    ex.strength.value = 0.5
    first_run = ex.run
    ex.more_button.click()
    finished(ex)
    assert ex.error is None, ex.status.value
    assert ex.run.run_id != first_run.run_id and len(ex.run) == 2
    for new in ex.run:
        assert new.task == "image-to-image" and new.prompt == c.prompt
        assert new.extra["init_seed"] == c.seed and new.extra["strength"] == 0.5
        assert new.extra["init_image_hash"] == image_hash(c.image)
        assert read_metadata(new.path)["extra"]["init_file"] == c.path.rsplit("/", 1)[1]
    assert ex.grid_path.exists()


def test_flax_clip_scores_match_the_scorer_called_directly(tmp_path):
    from sdkit.ranking import rank
    from sdkit.scoring.scorers import load_scorer
    from sdkit.models.tiny_clip import tiny_clip_path

    ex = explore(scorer="flax", output_dir=tmp_path, **FAST)
    ex.generate_button.click()
    finished(ex, timeout=300)
    assert ex.error is None, ex.status.value
    ref = load_scorer("flax", tiny_clip_path())([c.image for c in ex.run], [c.prompt for c in ex.run])
    assert [c.logit for c in ex.run] == pytest.approx(ref.logits.tolist(), rel=1e-5, abs=1e-5)
    assert [r.candidate.seed for r in ex.ranked] == [r.candidate.seed for r in rank(ex.run.candidates, ref)]
    assert ex.run[0].scorer.startswith("clip-flax:")


def test_scorer_argument_is_checked():
    with pytest.raises(ValueError, match="scorer='clip'"):
        Explorer(scorer="clip")


def test_a_second_error_does_not_hide_the_first(ex):
    ex._fail(RuntimeError("CLIP exploded"), during="scoring")
    ex._fail(MemoryError("out of memory"), during="generating")
    assert ex.status.value.count("<details>") == 2
    assert "CLIP exploded" in ex.status.value and "out of memory" in ex.status.value
    ex.form.n.value = 0
    ex.generate_button.click()  # a new click starts a fresh message
    assert "CLIP exploded" not in ex.status.value and "n=0" in ex.status.value


# -- the CLIP: a field, a named argument, and the one shipped beside the model --------------------------------

def test_clip_model_is_a_named_argument_of_explore():
    import inspect

    params = inspect.signature(explore).parameters
    assert "clip_model" in params and params["clip_model"].kind is inspect.Parameter.KEYWORD_ONLY
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())  # nothing hidden
    assert list(params) == list(inspect.signature(Explorer.__init__).parameters)[1:]  # and nothing missing
    with pytest.raises(TypeError, match="scorer_model"):  # the old name of clip_model is gone: one name
        Explorer(clip_model="a", scorer_model="b")


@pytest.mark.parametrize("how", ["argument", "field"])
def test_unknown_clip_names_the_argument_and_the_field(tmp_path, how):
    missing = str(tmp_path / "no-clip")
    ex = Explorer(scorer="flax", output_dir=tmp_path, **FAST, **({"clip_model": missing} if how == "argument" else {}))
    if how == "field":
        ex.form.clip_model.value = missing  # as typed into the panel's CLIP field
    ex.generate_button.click()
    finished(ex)
    assert ex.error.startswith(f"ValueError: clip_model={missing!r}: ") and "no-clip" in ex.error
    assert "CLIP field" in ex.error and "explore(..., clip_model=...)" in ex.error
    assert "Error while loading the scorer" in ex.status.value


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A folder in the toy world's layout (pipeline/, clip/, world.json), made of the tiny models."""
    import shutil

    from sdkit.models.tiny import tiny_pipeline_path
    from sdkit.models.tiny_clip import tiny_clip_path

    root = tmp_path_factory.mktemp("world")
    shutil.copytree(tiny_pipeline_path(), root / "pipeline")
    shutil.copytree(tiny_clip_path(), root / "clip")
    (root / "world.json").write_text("{}")
    return root


def test_the_clip_beside_the_model_is_the_default(world, tmp_path, monkeypatch):
    import sdkit.scoring.scorers
    from sdkit.models.builtin import clip_for

    pipeline, clip = str(world / "pipeline"), str(world / "clip")
    assert clip_for(pipeline) == clip  # the CLI and rerank pick it too
    loaded = []
    monkeypatch.setattr(sdkit.scoring.scorers, "get_scorer",
                        lambda backend, model: loaded.append(model) or MeanRed())
    ex = Explorer(scorer="flax", output_dir=tmp_path, **{**FAST, "model": pipeline})
    assert ex.form.clip_model.value == "" and ex.form.clip_model.placeholder == f"default: {clip}"
    ex.generate_button.click()
    finished(ex)
    assert ex.error is None, ex.status.value
    assert loaded == [clip]
    ex.form.clip_model.value = "  other-clip "  # the field wins over the default
    ex.generate_button.click()
    finished(ex)
    assert loaded == [clip, "other-clip"]


# -- first open: what suits the model ----------------------------------------------------------------------

def test_first_open_suits_the_model(world, monkeypatch):
    from sdkit.toy import shapes

    ex = Explorer(model="sdkit:tiny", scorer=None)
    form = ex.form
    assert (form.num_inference_steps.value, form.guidance_scale.value, form.prompt.value, form.hint.value) == (
        30, 7.5, "", "")
    assert ex.form.height.label == ex.form.width.label == "64 (native)"  # unet sample_size 8 x VAE factor 8
    assert ex.form.height.value == "default"  # generation still asks the loaded pipeline for its own size

    import sdkit.toy.world

    monkeypatch.setattr(sdkit.toy.world, "toy_world_path", lambda *a, **k: pytest.fail("opening trained the world"))
    for model, size in (("sdkit:toy", shapes.IMAGE_SIZE), (str(world / "pipeline"), 64)):
        toy = Explorer(model=model, scorer=None)
        assert toy.form.prompt.value == shapes.PROMPTS[0] and toy.form.height.label == f"{size} (native)"
        assert (toy.form.num_inference_steps.value, toy.form.guidance_scale.value) == (20, 2.0)
        for word in (*shapes.COLORS, *shapes.SHAPES):
            assert word in toy.form.hint.value
        assert "&lt;colour&gt;" in toy.form.hint.value  # shown as text, not swallowed as a tag

    given = Explorer(model="sdkit:toy", scorer=None, prompt="a blue square", num_inference_steps=7, guidance_scale=0.0,
                     height=64)
    form = given.form
    assert (form.prompt.value, form.num_inference_steps.value, form.guidance_scale.value, form.height.value) == (
        "a blue square", 7, 0.0, 64)


def test_changing_the_model_updates_hint_size_and_clip_but_not_settings(world):
    ex = Explorer(model="sdkit:tiny", scorer=None, num_inference_steps=9)
    ex.form.height.value = 128
    ex.form.model.value = str(world / "pipeline")
    assert "toy world" in ex.form.hint.value and ex.form.clip_model.placeholder == f"default: {world / 'clip'}"
    assert ex.form.height.value == 128 and ex.form.width.label == "64 (native)"
    assert ex.form.num_inference_steps.value == 9
    ex.form.model.value = "some-org/not-in-the-cache"
    assert ex.form.hint.value == "" and ex.form.width.label == "model default"
    assert ex.form.clip_model.placeholder == "default: openai/clip-vit-base-patch32"


def test_native_size_of_a_hub_model_in_the_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from sdkit.models.builtin import TUTORIAL_CLIP, native_size
    from sdkit.scoring.scorers import DEFAULT_CLIP
    from sdkit.models.tiny import install_in_hub_cache, tiny_pipeline_path

    assert TUTORIAL_CLIP == DEFAULT_CLIP
    install_in_hub_cache(tiny_pipeline_path(), "someone/tiny-sd", tmp_path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert native_size("someone/tiny-sd") == 64
    assert native_size("someone/elsewhere") is None  # not cached: no network, just no hint


# -- the panel as a user finds it ----------------------------------------------------------------------

def test_save_and_copy_seed_report_beside_the_details_and_save_once(ex, tmp_path):
    ex.generate_button.click()
    finished(ex)
    status = ex.status.value
    ex.gallery.select(0)
    first = ex.save_selected()
    assert f"saved {first}" in ex.selected_status.value and ex.status.value == status
    again = ex.save_selected()
    assert again == first and f"already saved: {first}" in ex.selected_status.value
    assert sorted(p.name for p in (tmp_path / "saved").glob("*.png")) == [first.name]  # no -1.png twin
    ex.copy_seed_button.click()
    assert "is in the seed field" in ex.selected_status.value and ex.status.value == status
    ex.gallery.select(1)
    assert ex.selected_status.value == ""  # a new selection, a clean slate


def test_more_like_this_shows_its_source_and_counts_the_steps_that_run(ex):
    ex.generate_button.click()
    finished(ex)
    source = ex.gallery.select(0).candidate
    ex.form.n.value, ex.form.num_inference_steps.value, ex.strength.value = 2, 5, 0.6
    labels = []
    on_progress = ex._on_progress
    ex._on_progress = lambda p: (on_progress(p), labels.append(ex.progress_label.value))
    ex.more_button.click()
    finished(ex)
    assert ex.error is None, ex.status.value
    first = ex.gallery.grid.children[0]
    assert first.entry.candidate is source and first.button.tooltip == f"source · seed {source.seed}"
    assert len(ex.gallery.entries) == 2 and source not in [e.candidate for e in ex.gallery.entries]
    assert f"image-to-image from seed {source.seed}, strength 0.6: 2 candidates" in ex.status.value
    # int(5 * 0.6) = 3 steps run, and the label ties them to the slider's 5.
    assert "step 3/3 (5 × strength 0.6) · 2/2 candidates" in labels
    assert ex.progress.value == ex.progress.max == 2 * 3


def test_a_form_error_leaves_the_seed_field_alone(ex):
    ex.form.random_seed.value = True
    ex.form.seed.value = "5"
    ex.form.n.value = 0
    ex.generate_button.click()
    assert "n=0" in ex.error and ex.form.seed.value == "5"  # no seed that no image has
    ex.form.n.value = 1
    ex.generate_button.click()
    finished(ex)
    assert ex.form.seed.value != "5" and ex.run[0].seed == int(ex.form.seed.value)  # a run shows the seed it drew


def test_details_are_rounded_and_keep_the_whole_model_id(ex):
    from sdkit.show.grid import Entry

    ex.form.guidance_scale.value = 7.5
    ex.generate_button.click()
    finished(ex)
    c = ex.gallery.select(0).candidate
    assert f"<b>score</b> {c.score:.2f}</div>" in ex.details.value and repr(c.score) not in ex.details.value
    assert "<b>guidance_scale</b> 7.5</div>" in ex.details.value
    long_id = "/data/models/" + "x" * 120 + "/pipeline"
    other = type(c)(image=c.image, prompt="p", seed=1, model_id=long_id, extra={"strength": 0.6000000000000001})
    ex._show_details(Entry(other, None, None))
    assert f"<b>model_id</b> {long_id}</div>" in ex.details.value and "overflow-wrap:anywhere" in ex.details.value
    assert "strength=0.6<" in ex.details.value


def test_a_bad_model_keeps_the_last_gallery(ex, tmp_path):
    ex.generate_button.click()
    finished(ex)
    shown, run = ex.gallery.entries, ex.run
    ex.form.model.value = str(tmp_path / "no-such-model")
    ex.generate_button.click()
    finished(ex)
    assert "no such directory" in ex.error and "Error while loading the model" in ex.status.value
    assert ex.gallery.entries == shown and ex.run is run and ex.grid_path is not None


def test_the_toy_world_opens_ready_to_draw(tmp_path):
    """explore("sdkit:toy") with nothing else: its prompt, size and settings, its own CLIP, matching pictures."""
    from sdkit.toy import check
    from sdkit.toy.world import shipped_world_path

    assert shipped_world_path() is not None, "sdkit/toy/fixture (the shipped toy world) is missing or incomplete"
    ex = explore("sdkit:toy", output_dir=tmp_path, n=4, seed=0)
    ex.generate_button.click()
    finished(ex, timeout=300)
    assert ex.error is None, ex.status.value
    assert {(c.prompt, c.width, c.num_inference_steps, c.guidance_scale) for c in ex.run} == {
        ("a red circle", 32, 20, 2.0)}
    assert ex.run[0].scorer == f"clip-flax:{shipped_world_path() / 'clip'}"
    best = ex.ranked[0].candidate
    assert (check(best.image).shape, check(best.image).color) == ("circle", "red")


def test_search_control_shows_previews_live_and_the_survivors_at_the_end(tmp_path):
    fast = {**FAST, "n": 4, "num_inference_steps": 4, "batch_size": None}
    ex = Explorer(scorer=MeanRed(), output_dir=tmp_path, **fast)
    assert ex.form.search.value == "none"
    ex.form.search.value = "successive_halving"
    shown = []
    update = ex.gallery.update
    ex.gallery.update = lambda ranked: (shown.append(list(ranked)), update(ranked))
    ex.generate_button.click()
    finished(ex)
    assert ex.error is None, ex.error
    live = [r for r in shown if any(getattr(x, "candidate", x).extra.get("pruned_at") for x in r)]
    assert live and len(live[0]) == 4  # every candidate's preview, while denoising
    captions = [card.button.tooltip for card in ex.gallery._cards.values() if "pruned" in card.button.tooltip]
    assert captions and all("pruned @1" in t for t in captions)
    assert [r.candidate.seed for r in ex.ranked] == [ex.run.candidates[0].seed] and len(ex.run.candidates) == 1
    assert "1 of 4 candidates kept, 3 pruned on previews (listed in the manifest) in " in ex.status.value


@pytest.mark.parametrize("change, message", [
    (dict(n=1), "n=1"),
    (dict(scorer="none"), "pick a scorer"),
])
def test_a_search_that_cannot_run_is_refused_before_any_model(ex, monkeypatch, change, message):
    import sdkit.load.pipeline

    monkeypatch.setattr(sdkit.load.pipeline, "load_pipeline", lambda *a, **k: pytest.fail("loaded a model for bad input"))
    ex.form.search.value = "successive_halving"
    for name, value in change.items():
        getattr(ex.form, name).value = value
    ex.generate_button.click()
    assert ex.session.thread is None and message in ex.error


def test_explore_search_argument_is_checked():
    with pytest.raises(ValueError, match="search='beam'"):
        explore(search="beam")


# -- verifiers: what a named scorer ranks by ------------------------------------------------------------

def test_verifiers_field_ranks_by_an_ensemble_and_keeps_each_members_score(tmp_path, pickscore_in_cache):
    from sdkit.models.tiny_clip import tiny_clip_path
    from sdkit.ranking import rank
    from sdkit.scoring.scorers import load_scorer

    ex = explore(scorer="torch", verifiers="clip:1,pickscore:2", output_dir=tmp_path / "out", **FAST)
    assert ex.form.verifiers.value == "clip:1,pickscore:2" and not ex.form.verifiers.disabled
    ex.generate_button.click()
    finished(ex, timeout=300)
    assert ex.error is None, ex.status.value
    # The reference: the same ensemble loaded directly, its members named by their folders (the panel's clip is
    # the tiny model's own CLIP; pickscore the cached PickScore_v1).
    ref = load_scorer("clip:1,pickscore:2", {"clip": str(tiny_clip_path()), "pickscore": str(pickscore_in_cache)},
                      backend="torch", device="cpu")([c.image for c in ex.run], [c.prompt for c in ex.run])
    assert [c.score for c in ex.run] == pytest.approx(ref.logits.tolist(), abs=1e-5)
    for name in ("clip", "pickscore"):
        assert [c.members[name].logit for c in ex.run] == pytest.approx(ref.members[name].logits.tolist(), abs=1e-5)
    assert {c.members["pickscore"].weight for c in ex.run} == {2.0}
    assert [r.candidate.seed for r in ex.ranked] == [r.candidate.seed for r in rank(ex.run.candidates, ref)]
    assert {tuple(read_metadata(c.path)["members"]) for c in ex.run} == {("clip", "pickscore")}  # on disk too


@pytest.mark.parametrize("verifiers, message", [("clip,bogus", "unknown scorer 'bogus'"),
                                                 ("clip:abc", "verifiers='clip:abc'")])
def test_bad_verifiers_are_refused_before_any_model(ex, monkeypatch, verifiers, message):
    import sdkit.load.pipeline

    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        Explorer(scorer="flax", verifiers=verifiers)
    monkeypatch.setattr(sdkit.load.pipeline, "load_pipeline", lambda *a, **k: pytest.fail("loaded a model for bad input"))
    ex.form.scorer.value = "flax"
    ex.form.verifiers.value = verifiers  # as typed
    ex.generate_button.click()
    assert ex.session.thread is None and message in ex.error


def test_verifiers_field_is_off_without_a_named_scorer(tmp_path):
    ex = Explorer(scorer="flax", output_dir=tmp_path, **FAST)
    assert not ex.form.verifiers.disabled and ex.form.verifiers.value == "clip"
    ex.form.scorer.value = "none"
    assert ex.form.verifiers.disabled
    assert Explorer(scorer=MeanRed(), output_dir=tmp_path, **FAST).form.verifiers.disabled


# -- LoRAs: a picker with weights ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lora_folder(tmp_path_factory):
    """A LoRA folder as A1111 keeps one: files by name, one in a subfolder."""
    pytest.importorskip("peft")
    from loras import make_lora
    from sdkit.models.builtin import builtin_pipeline_path

    root = tmp_path_factory.mktemp("lora-folder")
    made = make_lora(builtin_pipeline_path("sdkit:tiny"), root / "made")
    (root / "styles").mkdir()
    (root / "paper_cut.safetensors").write_bytes(made.read_bytes())
    (root / "styles" / "ink.safetensors").write_bytes(
        make_lora(builtin_pipeline_path("sdkit:tiny"), root / "made2", seed=4).read_bytes())
    for f in (root / "made").iterdir():
        f.unlink()
    for f in (root / "made2").iterdir():
        f.unlink()
    return root


def test_lora_picker_applies_each_lora_at_its_weight_as_load_pipeline_does(tmp_path, lora_folder, monkeypatch):
    from sdkit.generation import generate
    from sdkit.load.pipeline import load_pipeline

    monkeypatch.setenv("SDKIT_LORA_DIR", str(lora_folder))
    ex = Explorer(scorer=None, output_dir=tmp_path, **FAST)
    assert ex.form.lora_file.options == ("paper_cut", "styles/ink")  # the folder's files, by the names tags use
    ex.form.lora_file.value, ex.form.lora_weight.value = "paper_cut", 0.5
    ex.form.lora_add.click()
    ex.form.lora_file.value, ex.form.lora_weight.value = "styles/ink", 1.0
    ex.form.lora_add.click()
    ex.form.lora_rows.children[1].children[1].value = 0.25  # the ink row's own weight slider, moved afterwards
    paper, ink = str(lora_folder / "paper_cut.safetensors"), str(lora_folder / "styles" / "ink.safetensors")
    assert ex.form.loras == {paper: 0.5, ink: 0.25}
    ex.generate_button.click()
    finished(ex)
    assert ex.error is None, ex.status.value
    pipe = load_pipeline("sdkit:tiny", loras={paper: 0.5, ink: 0.25})
    ref = generate(pipe, "a red circle", n=3, seed=7, num_inference_steps=2, batch_size=2, progress=False)
    assert all(np.array_equal(np.asarray(c.image), np.asarray(r.image)) for c, r in zip(ex.run, ref))
    plain = generate(load_pipeline("sdkit:tiny"), "a red circle", n=1, seed=7, num_inference_steps=2, progress=False)
    assert not np.array_equal(np.asarray(ex.run[0].image), np.asarray(plain[0].image))
    assert [(x["name"], x["weight"]) for x in read_metadata(ex.run[0].path)["loras"]] == [("paper_cut", 0.5),
                                                                                          ("ink", 0.25)]
    ex.gallery.select(0)
    assert "paper_cut:0.5, ink:0.25" in ex.details.value
    ex.form.lora_rows.children[0].children[2].click()  # remove paper_cut
    assert ex.form.loras == {ink: 0.25} and len(ex.form.lora_rows.children) == 1


def test_a_prompts_lora_tag_is_found_in_the_panels_lora_folder(tmp_path, lora_folder):
    from sdkit.generation import generate
    from sdkit.load.pipeline import load_pipeline

    paper = str(lora_folder / "paper_cut.safetensors")
    ex = Explorer(scorer=None, output_dir=tmp_path, lora_dir=lora_folder,
                  **{**FAST, "prompt": "a red circle <lora:paper_cut:0.5>", "n": 1})
    ex.generate_button.click()
    finished(ex)
    assert ex.error is None, ex.status.value
    ref = generate(load_pipeline("sdkit:tiny", loras={paper: 0.5}), "a red circle", n=1, seed=7, num_inference_steps=2,
                   progress=False)
    assert np.array_equal(np.asarray(ex.run[0].image), np.asarray(ref[0].image))
    assert ex.run[0].prompt == "a red circle <lora:paper_cut:0.5>"  # recorded as typed


def test_a_lora_that_cannot_be_used_is_said_beside_the_picker(tmp_path, lora_folder):
    ex = Explorer(scorer=None, output_dir=tmp_path, lora_dir=lora_folder, **FAST)
    for typed, said in (("nope", "LoRA 'nope': no such file"), ("", "type a name from the LoRA folder"),
                        (str(tmp_path / "style.ckpt"), "is a pickle")):
        ex.form.lora_file.value = typed
        ex.form.lora_add.click()
        assert said in html.unescape(ex.form.lora_said.value) and ex.form.loras == {}
    ex.form.lora_file.value = "paper_cut"
    ex.form.lora_add.click()
    assert ex.form.lora_said.value == "" and list(ex.form.loras) == [str(lora_folder / "paper_cut.safetensors")]
    with pytest.raises(FileNotFoundError, match="LoRA 'missing.safetensors': no such file"):
        explore(loras={"missing.safetensors": 1.0})
    with pytest.raises(ValueError, match="loras=.*give a dict"):
        explore(loras=["a.safetensors"])
