"""sdkit.edit.tasks: img2img, inpaint and outpaint against diffusers, with paste-back and bad input."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from sdkit.edit import tasks as edit
from sdkit.edit.tasks import img2img, inpaint, outpaint, pipeline_for, prepare_img2img, prepare_inpaint, prepare_outpaint
from sdkit.load.pipeline import load_pipeline
from sdkit.edit.masks import box_mask, feather_mask, paste_back
from sdkit.save import image_hash, read_manifest, read_metadata, read_parameters

FAST = dict(num_inference_steps=2, progress=False)


def noise(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def gens(seeds):
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def arr(im):
    return np.asarray(im)


# -- image-to-image --------------------------------------------------------------------------------

def test_img2img_matches_diffusers_and_reuses_the_weights(tiny_pipe):
    im = noise(64, 48)
    run = img2img(tiny_pipe, "a red circle", im, strength=0.6, n=2, seed=5, num_inference_steps=5, progress=False)
    pipe = pipeline_for(tiny_pipe, "image-to-image")
    assert type(pipe).__name__ == "StableDiffusionImg2ImgPipeline"
    assert pipe.unet is tiny_pipe.unet and pipe.vae is tiny_pipe.vae  # from_pipe: no second load
    ref = pipe(prompt=["a red circle"] * 2, image=im, strength=0.6, num_inference_steps=5, generator=gens([5, 6]))
    for c, r in zip(run, ref.images):
        assert c.image.size == (64, 48) and np.array_equal(arr(c.image), arr(r))
    c = run[0]
    assert (c.task, c.seed, c.width, c.height) == ("image-to-image", 5, 64, 48)
    assert c.extra == {"strength": 0.6, "init_image_hash": image_hash(im), "image_size": [64, 48], "resize_mode": "none"}
    assert not np.array_equal(arr(run[0].image), arr(run[1].image))


def test_img2img_strength_sets_the_number_of_denoising_steps(tiny_pipe):
    steps = []
    img2img(tiny_pipe, "x", noise(32, 32), strength=0.5, n=1, seed=0, num_inference_steps=10, progress=False,
            callback=lambda p: steps.append(p.step) if p.finished is None else None)
    assert steps == [1, 2, 3, 4, 5]  # int(10 * 0.5) steps, as diffusers' img2img runs


# -- inpainting ------------------------------------------------------------------------------------

def test_inpaint_matches_diffusers_plus_paste_back_and_keeps_unmasked_pixels(inpaint_pipe):
    im, box = noise(64, 64), (16, 8, 48, 40)
    run = inpaint(inpaint_pipe, "a hat", im, box, n=2, seed=3, mask_blur=4, **FAST)
    mask = box_mask(im.size, box)
    raw = [inpaint_pipe(prompt="a hat", image=im, mask_image=mask, num_inference_steps=2, generator=gens([s])).images[0]
           for s in (3, 4)]  # each candidate as diffusers makes it alone
    weights = feather_mask(mask, 4)
    keep = arr(mask) == 0
    for c, r in zip(run, raw):
        out = arr(c.image)
        assert np.array_equal(out, arr(paste_back(im, r, weights)))  # diffusers' output, pasted back
        assert np.array_equal(out[keep], arr(im)[keep])  # the guarantee...
        assert not np.array_equal(arr(r)[keep], arr(im)[keep])  # ...which diffusers alone does not give
        assert np.array_equal(out[weights == 1], arr(r)[weights == 1])
        assert (out[~keep] != arr(im)[~keep]).any()
    assert run[0].task == "inpainting" and run[0].extra["mask_box"] == list(box)


def test_inpaint_with_an_ordinary_checkpoint_keeps_unmasked_pixels(tiny_pipe):
    im = noise(48, 40)
    m = np.zeros((40, 48), np.uint8)
    m[10:30, 5:25] = 200  # grey >= 128 counts as white
    run = inpaint(tiny_pipe, "a cat", im, m, n=1, seed=0, mask_grow=2, **FAST)
    keep = arr(box_mask((48, 40), (3, 8, 27, 32))) == 0  # the grown mask
    out = arr(run[0].image)
    assert np.array_equal(out[keep], arr(im)[keep]) and (out[~keep] != arr(im)[~keep]).any()
    assert pipeline_for(tiny_pipe, "inpainting").unet is tiny_pipe.unet


def test_blank_canvas_white_image_and_white_mask(inpaint_pipe, tmp_path):
    # The tutorial's first example: generate from scratch with the inpainting model.
    white = Image.new("RGB", (64, 64), "white")
    white.save(tmp_path / "white.jpg")
    run = inpaint(inpaint_pipe, "cute little kitty with beautiful minimalist flowers, lots of white background",
                  tmp_path / "white.jpg", tmp_path / "white.jpg", n=2, seed=1, **FAST)
    raw = [inpaint_pipe(prompt=run[0].prompt, image=white, mask_image=white, num_inference_steps=2,
                        generator=gens([s])).images[0] for s in (1, 2)]
    for c, r in zip(run, raw):
        assert c.image.size == (64, 64)
        assert np.array_equal(arr(c.image), arr(r))  # all repainted: the whole image is the model's
        assert (arr(c.image) != 255).any()


@pytest.mark.parametrize("mode", ["pad", "resize"])
def test_sizes_not_a_multiple_of_8_come_back_at_the_original_size(inpaint_pipe, mode):
    im, box = noise(61, 45), (10, 10, 40, 30)
    run = inpaint(inpaint_pipe, "x", im, box, n=1, seed=0, resize_mode=mode, **FAST)
    c = run[0]
    assert c.image.size == (61, 45) and c.extra["resize_mode"] == mode and c.extra["image_size"] == [61, 45]
    assert (c.width, c.height) == (64, 48)
    keep = arr(box_mask(im.size, box)) == 0
    assert np.array_equal(arr(c.image)[keep], arr(im)[keep])
    if mode == "pad":  # = diffusers on the edge-padded image, cropped back, pasted back
        inputs = prepare_inpaint(im, box, num_inference_steps=2)
        raw = inpaint_pipe(prompt=["x"], image=inputs.image, mask_image=inputs.mask_image, height=48, width=64,
                           num_inference_steps=2, generator=gens([0])).images[0]
        expected = paste_back(im, raw.crop((0, 0, 61, 45)), feather_mask(box_mask(im.size, box), 4))
        assert np.array_equal(arr(c.image), arr(expected))


def test_working_size_can_be_chosen(inpaint_pipe):
    run = inpaint(inpaint_pipe, "x", noise(100, 60), (0, 0, 50, 60), n=1, seed=0, height=32, width=48, **FAST)
    assert run[0].image.size == (100, 60) and (run[0].width, run[0].height) == (48, 32)


@pytest.mark.parametrize("which,strength", [("9-channel", 1.0), ("4-channel", 0.8)])
def test_candidate_is_the_same_alone_as_in_a_batch(which, strength, inpaint_pipe, tiny_pipe):
    # diffusers encodes a single init image with the batch's first generator only; sdkit gives every
    # candidate its own copy, so candidate k does not depend on its batch.
    pipe = inpaint_pipe if which == "9-channel" else tiny_pipe
    im, box = noise(32, 32), (4, 4, 28, 20)
    batch = inpaint(pipe, "x", im, box, n=2, seeds=[3, 4], batch_size=2, strength=strength, **FAST)
    alone = inpaint(pipe, "x", im, box, n=1, seeds=[4], strength=strength, **FAST)
    assert np.array_equal(arr(batch[1].image), arr(alone[0].image))


def test_flagged_candidates_stay_black_at_the_original_size(inpaint_pipe):
    import copy

    checker = copy.deepcopy(inpaint_pipe.safety_checker)  # the fixture's own checker stays as it is
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(-2.0)  # cosine > -2 always: everything is flagged
    pipe = type(inpaint_pipe).from_pipe(inpaint_pipe, safety_checker=checker)
    with pytest.warns(UserWarning, match="flagged by the safety checker"):
        run = inpaint(pipe, "x", noise(61, 45), (0, 0, 30, 30), n=1, seed=0, **FAST)
    c = run[0]
    assert c.nsfw and c.image.size == (61, 45) and arr(c.image).max() == 0  # no paste-back over a flagged image


# -- outpainting -----------------------------------------------------------------------------------

def test_outpaint_extends_the_canvas_with_a_seam_and_keeps_the_inside(inpaint_pipe):
    im = noise(40, 32)
    run = outpaint(inpaint_pipe, "a garden", im, left=8, right=16, bottom=8, n=1, seed=0, mask_blur=4, mask_grow=4, **FAST)
    out = arr(run[0].image)
    assert run[0].image.size == (64, 40)
    inner = out[4:28, 8 + 4:8 + 36]  # the image minus the 4-pixel band that was grown into
    assert np.array_equal(inner, arr(im)[4:28, 4:36])
    assert (out[:32, :8] != arr(im)[:, :1]).any()  # the new area is painted, not just the repeated edge
    assert run[0].extra["outpaint"] == "left=8 right=16 top=0 bottom=8"
    assert run[0].extra["init_image_hash"] == image_hash(im)


def test_outpaint_with_an_ordinary_checkpoint(tiny_pipe):
    run = outpaint(tiny_pipe, "x", noise(32, 32), top=8, n=1, seed=0, **FAST)
    assert run[0].image.size == (32, 40)


# -- metadata, saving, ranking ---------------------------------------------------------------------

def test_saved_metadata_records_what_made_the_image(inpaint_pipe, tmp_path):
    im = noise(64, 64)
    run = outpaint(inpaint_pipe, "a dog", im, right=8, n=2, seed=7, strength=0.9, output_dir=tmp_path, **FAST)
    c = run[1]
    assert c.path and Image.open(c.path).size == (72, 64)
    params = read_parameters(c.path)
    for field in ("Seed: 8", "Denoising strength: 0.9", "Mask blur: 8", "Mask grow: 8",
                  "Outpaint: left=0 right=8 top=0 bottom=0", "Size: 72x64"):
        assert field in params, (field, params)
    meta = read_metadata(c.path)
    assert meta["extra"]["init_image_hash"] == image_hash(im) and len(meta["extra"]["mask_hash"]) == 16
    assert meta["task"] == "inpainting" and meta["model_id"] == "sdkit:tiny-inpainting"
    assert [r["seed"] for r in read_manifest(tmp_path)] == [7, 8]
    assert np.array_equal(arr(Image.open(c.path).convert("RGB")), arr(c.image))  # the finished image is what is saved


def test_edit_candidates_are_scored_and_ranked_like_text_to_image(tiny_pipe):
    from sdkit.models.tiny_clip import tiny_clip_path
    from sdkit.ranking import rank
    from sdkit.scoring import scorers as score

    run = img2img(tiny_pipe, ["a red circle", "a blue square"], noise(32, 32), n=3, seed=0, **FAST)
    scorer = score.load_scorer("torch", tiny_clip_path(), device="cpu")
    scores = scorer(run.images, [c.prompt for c in run])
    ranked = rank(run.candidates, scores)
    assert [r.candidate.prompt for r in ranked] == ["a red circle"] * 3 + ["a blue square"] * 3
    assert [r.rank for r in ranked] == [1, 2, 3] * 2
    where = {(c.prompt, c.seed): i for i, c in enumerate(run)}
    for r in ranked:
        assert r.candidate.task == "image-to-image" and r.candidate.extra["strength"] == 0.75
        assert r.logit == pytest.approx(float(scores.logits[where[r.candidate.prompt, r.candidate.seed]]))
    assert all(a.logit >= b.logit for a, b in zip(ranked, ranked[1:]) if a.candidate.prompt == b.candidate.prompt)


# -- bad input: clear errors, before any model work ------------------------------------------------

class Untouchable:
    """A pipeline stand-in that fails the test if validation lets anything reach it."""

    def __getattr__(self, name):
        raise AssertionError(f"model touched ({name}) before the inputs were checked")

    def __call__(self, **kwargs):
        raise AssertionError("model called before the inputs were checked")


@pytest.mark.parametrize("call,match", [
    (lambda p, im: inpaint(p, "x", im, Image.new("L", (32, 16), 255)),
     r"mask_image is 32x16 but image is 64x48.*resize_mask=True"),
    (lambda p, im: inpaint(p, "x", im, Image.new("L", (64, 48), 0)), "all black.*nothing to repaint"),
    (lambda p, im: inpaint(p, "x", im, np.zeros((48, 64), bool)), "all black"),
    (lambda p, im: inpaint(p, "x", im, (4, 4, 8, 8), mask_grow=-3), r"after mask_grow=-3.*Shrink less"),
    (lambda p, im: inpaint(p, "x", im, (0, 0, 70, 8)), r"0 <= left < right <= 64"),
    (lambda p, im: img2img(p, "x", im, strength=0), r"strength=0: must be in \(0, 1\]"),
    (lambda p, im: img2img(p, "x", im, strength=1.5), r"strength=1.5"),
    (lambda p, im: img2img(p, "x", im, strength=-0.2), r"strength=-0.2"),
    (lambda p, im: img2img(p, "x", im, strength=math.nan), r"strength=nan"),
    (lambda p, im: img2img(p, "x", im, strength=True), r"strength=True"),
    (lambda p, im: img2img(p, "x", im, strength=0.02, num_inference_steps=30), r"= 0 denoising steps"),
    (lambda p, im: inpaint(p, "x", im, (0, 0, 8, 8), strength=1.01), r"strength=1.01"),
    (lambda p, im: outpaint(p, "x", im, left=-16), r"left=-16.*>= 0"),
    (lambda p, im: outpaint(p, "x", im, right=4096), r"canvas would be 4160x48.*MAX_SIDE=2048"),
    (lambda p, im: outpaint(p, "x", im), r"all 0"),
    (lambda p, im: outpaint(p, "x", im, top=8, mask_grow=-1), r"mask_grow=-1"),
    (lambda p, im: inpaint(p, "x", im, (0, 0, 8, 8), mask_blur=-2), r"mask_blur=-2"),
    (lambda p, im: img2img(p, "x", im, resize_mode="stretch"), r"resize_mode='stretch'"),
    (lambda p, im: img2img(p, "x", im, height=50, width=64), r"height=50.*multiple of 8"),
])
def test_bad_input_is_named_before_any_model_work(call, match):
    with pytest.raises(ValueError, match=match):
        call(Untouchable(), noise(64, 48))


def test_unreadable_files_are_named(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(ValueError, match="broken.png.*not a readable image"):
        img2img(Untouchable(), "x", tmp_path / "broken.png")
    noise(8, 8).save(tmp_path / "ok.png")
    with pytest.raises(ValueError, match="mask_image=.*broken.png"):
        inpaint(Untouchable(), "x", tmp_path / "ok.png", tmp_path / "broken.png")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        inpaint(Untouchable(), "x", tmp_path / "ok.png", tmp_path / "missing.png")


def test_mask_of_another_size_is_stretched_when_asked():
    inputs = prepare_inpaint(noise(64, 48), Image.new("L", (32, 24), 255), resize_mask=True)
    assert inputs.mask_image.size == (64, 48) and inputs.extra["resize_mask"] is True


def test_inpainting_checkpoint_cannot_do_text_or_image_to_image(inpaint_pipe):
    with pytest.raises(ValueError, match="inpainting checkpoint.*'text-to-image'"):
        load_pipeline("sdkit:tiny-inpainting", "text-to-image")
    with pytest.raises(ValueError, match="inpainting checkpoint.*'image-to-image'"):
        load_pipeline("sdkit:tiny-inpainting", "image-to-image")
    with pytest.raises(ValueError, match="'sdkit:tiny-inpainting' is an inpainting checkpoint"):
        img2img(inpaint_pipe, "x", noise(32, 32))


def test_task_arguments_cannot_be_overridden(tiny_pipe):
    with pytest.raises(ValueError, match=r"pipe_kwargs sets \['strength'\]"):
        img2img(tiny_pipe, "x", noise(32, 32), pipe_kwargs={"strength": 0.1})
    with pytest.raises(TypeError, match="height= is decided by the image"):
        edit.run_edit(tiny_pipe, "x", prepare_img2img(noise(32, 32)), height=64)


# -- CLI -------------------------------------------------------------------------------------------

def test_cli_inpaint_and_bad_input(tmp_path, capsys):
    from sdkit.cli.main import main

    noise(40, 24).save(tmp_path / "in.png")
    rc = main(["inpaint", "--image", str(tmp_path / "in.png"), "--box", "4,4,20,20", "a hat", "-n", "1", "--seed", "3",
               "--steps", "2", "--quiet", "--out", str(tmp_path / "out")])
    assert rc == 0
    (png,) = (tmp_path / "out").glob("*/*-s*.png")
    assert Image.open(png).size == (40, 24) and "Mask blur: 4" in read_parameters(png)
    rc = main(["outpaint", "--image", str(tmp_path / "in.png"), "x", "--left", "-1", "--out", str(tmp_path / "o2")])
    assert rc == 2 and "left=-1" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()  # refused before creating anything


def test_img2img_resumes_from_python_and_refuses_another_image(tiny_pipe, tmp_path):
    image = noise(64, 64)
    stop = [False]
    first = img2img(tiny_pipe, "a cat", image, strength=0.5, n=3, seed=2, batch_size=2, output_dir=tmp_path,
                    run_id="e", cancel=lambda: stop[0], callback=lambda p: p.finished and stop.__setitem__(0, True), **FAST)
    assert first.cancelled and len(first) == 2
    run = img2img(tiny_pipe, "a cat", image, strength=0.5, n=3, seed=2, output_dir=tmp_path, run_id="e", **FAST)
    assert run.resumed == 2 and len(run) == 3
    ref = img2img(tiny_pipe, "a cat", image, strength=0.5, n=3, seed=2, **FAST)
    assert all(np.array_equal(arr(a.image), arr(b.image)) for a, b in zip(run, ref))
    with pytest.raises(ValueError, match="cannot resume run 'e'.*init_image_hash"):
        img2img(tiny_pipe, "a cat", noise(64, 64, seed=1), strength=0.5, n=3, seed=2, output_dir=tmp_path, run_id="e", **FAST)
    with pytest.raises(ValueError, match=r"cannot resume run 'e'.*'strength': 0.5.*'strength': 0.6"):
        img2img(tiny_pipe, "a cat", image, strength=0.6, n=3, seed=2, output_dir=tmp_path, run_id="e", **FAST)
