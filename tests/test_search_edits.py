"""Searches over edits: a strategy of sdkit.search with edit=prepare_img2img/inpaint/outpaint(...), against plain
edit runs."""

import numpy as np
import pytest
from PIL import Image

from sdkit.edit.masks import box_mask
from sdkit.edit.tasks import img2img, inpaint, outpaint, prepare_img2img, prepare_inpaint, prepare_outpaint, redo
from sdkit.ranking import rerank
from sdkit.results import Scores
from sdkit.save import read_metadata, read_pruned
from sdkit.search import best_of_n, draft_then_finish, finish_pruned, strategy_named, successive_halving

HALVING = dict(prune_at=(1, 2), keep=(2, 1))


def noise(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def arr(im):
    return np.asarray(im)


class Red:
    """Mean red per image; keeps what it was shown, to check what a search scores."""

    def __init__(self):
        self.seen = []

    def __call__(self, images, prompts):
        self.seen.append([arr(im).copy() for im in images])
        r = np.array([arr(im).astype(np.float32)[..., 0].mean() for im in images], np.float32)
        return Scores(logits=r, clip_score=r / 2.55, scorer="red")


def test_img2img_halving_prunes_on_the_steps_that_run_and_survivors_are_plain_img2img(tiny_pipe, tmp_path):
    im, out = noise(60, 44), tmp_path / "s"
    scorer = Red()
    run = successive_halving(tiny_pipe, ["a cat", "a red circle"], scorer, n=4, seed=3, num_inference_steps=8,
                             edit=prepare_img2img(im, strength=0.5, num_inference_steps=8), progress=False,
                             output_dir=out, **HALVING)
    s = run.search
    # int(8 * 0.5) = 4 steps run: 8 candidates for step 1, 4 for step 2, 2 for steps 3 and 4.
    assert s.compute.unet_evaluations == 8 + 4 + 2 * 2 and s.compute.preview_decodes == 12
    assert sorted(p.step for p in s.pruned) == [1, 1, 1, 1, 2, 2]
    # Previews were scored as the results are saved: at the image's own size, not the padded working size.
    assert [x.shape[:2] for x in scorer.seen[0]] == [(44, 60)] * 8
    assert len(run) == 2 and {c.prompt for c in run} == {"a cat", "a red circle"}
    for c in run:
        alone = img2img(tiny_pipe, c.prompt, im, strength=0.5, n=1, seeds=[c.seed], num_inference_steps=8,
                        progress=False)
        assert np.array_equal(arr(alone.candidates[0].image), arr(c.image))
        meta = read_metadata(c.path)
        assert meta["task"] == "image-to-image" and meta["extra"]["strength"] == 0.5
        assert meta["extra"]["search"]["strategy"] == "successive_halving"
    assert {(p.prompt, p.seed) for p in read_pruned(out)} == {(p.prompt, p.seed) for p in s.pruned}
    assert all(p.candidate.task == "image-to-image" and p.candidate.extra["strength"] == 0.5 for p in s.pruned)


def test_inpaint_previews_are_pasted_back_before_they_are_scored(inpaint_pipe):
    im, box = noise(64, 48, seed=1), (16, 8, 48, 40)
    scorer = Red()
    run = successive_halving(inpaint_pipe, "a hat", scorer, n=4, seed=0, num_inference_steps=4, progress=False,
                             edit=prepare_inpaint(im, box, num_inference_steps=4), **HALVING)
    keep = arr(box_mask(im.size, box)) == 0
    for preview in scorer.seen[0]:  # the first pruning step's previews: the kept pixels are the image's own
        assert np.array_equal(preview[keep], arr(im)[keep]) and (preview[~keep] != arr(im)[~keep]).any()
    c = run.candidates[0]
    alone = inpaint(inpaint_pipe, "a hat", im, box, n=1, seeds=[c.seed], num_inference_steps=4, progress=False)
    assert np.array_equal(arr(alone.candidates[0].image), arr(c.image))


def test_best_of_n_and_draft_then_finish_through_img2img(tiny_pipe):
    im = noise(32, 32, seed=2)
    best = best_of_n(tiny_pipe, "a cat", Red(), n=3, seed=0, num_inference_steps=4, progress=False,
                     edit=prepare_img2img(im, strength=0.75, num_inference_steps=4))
    plain = rerank(img2img(tiny_pipe, "a cat", im, strength=0.75, n=3, seed=0, num_inference_steps=4, progress=False),
                   Red(), save=False)
    assert [(r.candidate.seed, r.rank) for r in best.search.ranked] == [(r.candidate.seed, r.rank) for r in plain]
    assert best.search.compute.unet_evaluations == 3 * 3  # int(4 * 0.75) = 3 steps each

    run = draft_then_finish(tiny_pipe, "a cat", Red(), n=4, keep=1, draft_steps=2, seed=0, num_inference_steps=4,
                            progress=False, edit=prepare_img2img(im, strength=0.75, num_inference_steps=4))
    assert run.search.compute.unet_evaluations == 4 * 1 + 1 * 3  # drafts run int(2 * 0.75) = 1 step
    c = run.candidates[0]
    alone = img2img(tiny_pipe, "a cat", im, strength=0.75, n=1, seeds=[c.seed], num_inference_steps=4, progress=False)
    assert np.array_equal(arr(alone.candidates[0].image), arr(c.image))


@pytest.mark.parametrize("strategy, kwargs, match", [
    ("successive_halving", dict(prune_at=(4,), keep=(1,)),
     r"prune_at=\[4\]: increasing steps from 1 to the steps run - 1 = 3 \(int\(8 \* strength=0.5\) steps run\)"),
    ("successive_halving", dict(num_inference_steps=3),
     r"int\(3 \* strength=0.5\) = 1 run: raise num_inference_steps or strength"),
    ("draft_then_finish", dict(draft_steps=1, keep=1),
     r"draft_steps=1 with strength=0.5 runs int\(1 \* 0.5\) = 0 denoising steps"),
    ("particle_resampling", dict(), r"particle_resampling is for text-to-image"),
])
def test_edit_searches_refuse_schedules_the_strength_does_not_run_before_any_work(tiny_pipe, monkeypatch, strategy,
                                                                                   kwargs, match):
    from diffusers import StableDiffusionImg2ImgPipeline

    import sdkit.search.family as family

    monkeypatch.setattr(StableDiffusionImg2ImgPipeline, "__call__", lambda *a, **k: pytest.fail("generated before checking"))
    monkeypatch.setattr(family, "scorer_for", lambda *a, **k: pytest.fail("loaded a scorer before checking"))
    args = dict(n=4, seed=0, num_inference_steps=8, progress=False) | kwargs
    edit = prepare_img2img(noise(32, 32), strength=0.5, num_inference_steps=args["num_inference_steps"])
    with pytest.raises(ValueError, match=match):
        strategy_named(strategy)(tiny_pipe, "a cat", Red(), edit=edit, **args)


def test_an_edit_is_no_longer_searched_through_its_task(tiny_pipe, monkeypatch):
    """img2img(..., search=) reaches generate, which refuses it with a TypeError naming the search layer."""
    from diffusers import StableDiffusionImg2ImgPipeline

    monkeypatch.setattr(StableDiffusionImg2ImgPipeline, "__call__", lambda *a, **k: pytest.fail("generated"))
    with pytest.raises(TypeError, match=r"no longer takes .*search=.*sdkit\.search\.successive_halving\("):
        img2img(tiny_pipe, "a cat", noise(32, 32), strength=0.5, n=4, num_inference_steps=8, progress=False,
                search="successive_halving", scorer=Red())


def test_finish_pruned_edits_need_their_image_and_make_the_plain_edit(tiny_pipe, inpaint_pipe, tmp_path):
    im = noise(40, 32, seed=3)
    mask = arr(box_mask(im.size, (8, 8, 32, 24)))
    s = successive_halving(inpaint_pipe, "a hat", Red(), n=4, seed=7, num_inference_steps=4, progress=False,
                           edit=prepare_inpaint(im, mask, num_inference_steps=4), output_dir=tmp_path / "in",
                           **HALVING).search
    rec = s.pruned[0]
    plain = inpaint(inpaint_pipe, "a hat", im, mask, n=1, seeds=[rec.seed], num_inference_steps=4, progress=False)
    done = finish_pruned(inpaint_pipe, tmp_path / "in", seed=rec.seed, image=im, mask_image=mask,
                         output_dir=tmp_path / "done")
    assert np.array_equal(arr(done.image), arr(plain.candidates[0].image))
    assert read_metadata(done.path)["extra"]["search"]["finished_pruned"]["step"] == rec.step
    with pytest.raises(ValueError, match="pass image="):
        finish_pruned(inpaint_pipe, rec)
    with pytest.raises(ValueError, match="pass mask_image="):
        finish_pruned(inpaint_pipe, rec, image=im)
    with pytest.raises(ValueError, match=r"image is not the recorded one: its hash is .*, the record's"):
        finish_pruned(inpaint_pipe, rec, image=noise(40, 32, seed=4), mask_image=mask)

    # img2img and outpaint records carry everything but the image.
    s = successive_halving(tiny_pipe, "a cat", Red(), n=4, seed=1, num_inference_steps=8, progress=False,
                           edit=prepare_img2img(im, strength=0.5, num_inference_steps=8), **HALVING).search
    rec = s.pruned[-1]
    plain = img2img(tiny_pipe, "a cat", im, strength=0.5, n=1, seeds=[rec.seed], num_inference_steps=8,
                    progress=False)
    assert np.array_equal(arr(finish_pruned(tiny_pipe, rec, image=im).image), arr(plain.candidates[0].image))
    s = successive_halving(inpaint_pipe, "a garden", Red(), n=4, seed=2, num_inference_steps=4, progress=False,
                           edit=prepare_outpaint(im, right=8, bottom=4, num_inference_steps=4), **HALVING).search
    rec = s.pruned[0]
    plain = outpaint(inpaint_pipe, "a garden", im, right=8, bottom=4, n=1, seeds=[rec.seed], num_inference_steps=4,
                     progress=False)
    again = finish_pruned(inpaint_pipe, rec, image=im)
    assert again.image.size == (48, 36) and np.array_equal(arr(again.image), arr(plain.candidates[0].image))


def test_redo_remakes_a_saved_edit_from_its_png_and_image(tiny_pipe, tmp_path):
    im = noise(61, 45, seed=5)  # not a multiple of 8: resized to the working size and back
    run = img2img(tiny_pipe, "a cat", im, strength=0.6, n=2, seed=4, num_inference_steps=5, progress=False,
                  resize_mode="resize", output_dir=tmp_path)
    for c in run:
        again = redo(tiny_pipe, read_metadata(c.path), im).candidates[0]
        assert again.seed == c.seed and np.array_equal(arr(again.image), arr(c.image))
    with pytest.raises(ValueError, match="redo\\(\\) remakes edits"):
        redo(tiny_pipe, {"task": "text-to-image", "num_inference_steps": 2, "height": 8, "width": 8}, im)


def test_cli_img2img_search_saves_the_survivors_and_counts_against_the_steps_that_run(tiny_pipe, tmp_path, capsys):
    from sdkit.cli.main import main
    from sdkit.save import load_candidate, read_manifest

    noise(40, 32).save(tmp_path / "in.png")
    assert main(["img2img", "--image", str(tmp_path / "in.png"), "a cat", "--strength", "0.5", "-n", "4", "--seed",
                 "2", "--steps", "8", "--out", str(tmp_path / "o"), "--quiet", "--scorer", "torch", "--search",
                 "successive_halving", "--prune-at", "1,2", "--keep", "2,1"]) == 0
    out = capsys.readouterr().out
    # 4 steps run: 4 + 2 + 1 * 2 UNet evaluations, against best-of-4's 4 * 4.
    assert "search successive_halving: 8 UNet evaluations (0.50 of 16)" in out and "best-of-4 at 4 steps" in out
    (run_dir,) = (tmp_path / "o").iterdir()
    (record,) = read_manifest(run_dir)
    c = load_candidate(run_dir / record["file"])
    alone = img2img(tiny_pipe, "a cat", tmp_path / "in.png", strength=0.5, n=1, seeds=[c.seed], num_inference_steps=8,
                    progress=False)
    assert np.array_equal(arr(c.image), arr(alone.candidates[0].image))
    assert len(read_pruned(run_dir)) == 3


def test_cli_edit_search_options_are_checked_with_the_strength_before_loading(tmp_path, monkeypatch, capsys):
    import sdkit.load.pipeline
    from sdkit.cli.main import main

    monkeypatch.setattr(sdkit.load.pipeline, "load_pipeline", lambda *a, **k: pytest.fail("loaded a model first"))
    noise(16, 16).save(tmp_path / "in.png")
    assert main(["img2img", "--image", str(tmp_path / "in.png"), "a cat", "--strength", "0.5", "--steps", "8",
                 "--search", "successive_halving", "--prune-at", "4", "--keep", "1"]) == 2
    assert "prune_at=[4]: increasing steps from 1 to the steps run - 1 = 3" in capsys.readouterr().err
    assert main(["inpaint", "--image", str(tmp_path / "in.png"), "--box", "0,0,8,8", "a hat", "--search",
                 "best_of_n", "--keep", "2"]) == 2
    assert "--search best_of_n takes no options of its own" in capsys.readouterr().err
