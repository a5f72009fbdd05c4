"""The toy world: its checker, its data, and (slow) that CLIP reranking measurably helps in it."""

from __future__ import annotations

import numpy as np
import pytest

from sdkit.toy import shapes


def test_checker_reads_back_held_out_images():
    # Seeds far from the training pool's (0) and the build's held-out set (10_000).
    assert shapes.checker_accuracy(n=1500, seed=424_242) >= 0.99


def test_checker_survives_blur_and_noise():
    from scipy import ndimage

    images, _, drawn = shapes.sample(300, seed=7)
    rng = np.random.default_rng(0)
    hits = []
    for im, s in zip(images, drawn):
        x = ndimage.gaussian_filter(im.astype(float), (0.7, 0.7, 0)) + rng.normal(0, 10, im.shape)
        hits.append(shapes.check(np.clip(x, 0, 255).astype(np.uint8)).matches(s.prompt))
    assert np.mean(hits) >= 0.97


@pytest.mark.parametrize("junk", ["empty", "two", "ellipse", "orange", "upside_down"])
def test_checker_rejects_what_no_prompt_describes(junk):
    size = shapes.IMAGE_SIZE
    if junk == "empty":
        img = np.zeros((size, size, 3), np.uint8)
    elif junk == "two":
        img = np.maximum(shapes.render(shapes.Shape("circle", "red", 8, 8, 5)),
                         shapes.render(shapes.Shape("square", "red", 23, 23, 5)))
    elif junk == "ellipse":
        t = (np.arange(size * 4) + 0.5) / 4
        inside = ((t[None, :] - 16) / 12) ** 2 + ((t[:, None] - 16) / 6) ** 2 <= 1
        img = np.round(inside.reshape(size, 4, size, 4).mean((1, 3))[..., None] * [220, 40, 40]).astype(np.uint8)
    elif junk == "orange":
        img = shapes.render(shapes.Shape("circle", "red", 16, 16, 8), rgb=(240, 140, 200))
    else:
        img = shapes.render(shapes.Shape("triangle", "red", 16, 16, 8))[::-1]
    c = shapes.check(img)
    assert not any(c.matches(p) for p in shapes.PROMPTS), c


def test_checker_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(32, 32\)"):
        shapes.check(np.zeros((32, 32)))
    with pytest.raises(ValueError, match="'a red hexagon'"):
        shapes.parse_prompt("a red hexagon")


def test_dataset_is_deterministic_and_covers_every_prompt():
    a, la, sa = shapes.sample(240, seed=3)
    b, lb, sb = shapes.sample(240, seed=3)
    c, _, _ = shapes.sample(240, seed=4)
    assert np.array_equal(a, b) and np.array_equal(la, lb) and sa == sb
    assert not np.array_equal(a, c)
    assert set(la.tolist()) == set(range(len(shapes.PROMPTS)))
    assert a.shape == (240, 32, 32, 3) and a.dtype == np.uint8
    assert [shapes.PROMPTS[i] for i in la] == [s.prompt for s in sa]
    for im, s in zip(a[:20], sa[:20]):  # the whole shape is inside the image, on black
        assert im[0].max() < 80 and im[-1].max() < 80 or s.r * 2 + 2 >= 32


def test_junk_matches_no_prompt():
    from sdkit.toy.junk import JUNK_KINDS, junk

    images, kinds = junk(210, seed=1)
    assert set(kinds.tolist()) == set(range(len(JUNK_KINDS)))
    for im in images:
        c = shapes.check(im)
        assert not any(c.matches(p) for p in shapes.PROMPTS), c


def test_upscale_is_nearest():
    from PIL import Image

    from sdkit.toy import upscale

    img = Image.fromarray(shapes.render(shapes.Shape("square", "blue", 16, 16, 6)))
    big = upscale(img, 4)
    assert big.size == (128, 128)
    assert np.array_equal(np.asarray(big)[::4, ::4], np.asarray(img))
    with pytest.raises(ValueError, match="0"):
        upscale(img, 0)


def test_wrong_prompt_shares_no_word():
    from sdkit.toy.adherence import wrong_prompt

    for p in shapes.PROMPTS:
        w = wrong_prompt(p)
        assert w in shapes.PROMPTS and set(p.split()[1:]).isdisjoint(w.split()[1:])


def _assert_reranking_helps(q):
    assert q.adherence >= 0.15, q.table()  # the model draws the prompt a fair share of the time (0.23-0.30 seen)
    for name in ("torch", "flax"):
        # Reranking helps by a clear margin: well beyond what a random pick varies by.
        assert q.top1[name] >= q.adherence + max(0.1, 3 * q.random_pick_sd), q.table()
        # Scores against the wrong prompt must not help: that would be measuring something else.
        assert q.control[name] <= q.adherence + 0.02, q.table()
    assert abs(q.top1["torch"] - q.top1["flax"]) <= 0.05, q.table()


@pytest.mark.slow
@pytest.mark.parametrize("which", ["trained", "shipped"])
def test_reranking_helps_in_the_ci_world(which):
    """Trains the CI world once per machine (cached), or takes the shipped one; then generates, checks, reranks."""
    from sdkit.toy.adherence import evaluate
    from sdkit.toy.world import load_world_info, shipped_world_path, toy_world_path

    world = toy_world_path("ci", train=True) if which == "trained" else shipped_world_path()
    assert world is not None, "sdkit/toy/fixture is missing: the shipped toy world"
    assert (world / "pipeline" / "model_index.json").exists() and (world / "clip" / "config.json").exists()
    assert load_world_info(world)["clip_zero_shot"] >= 0.95
    q = evaluate(world, n=8, groups=4, seed=0, log=None)
    print(q.table())
    _assert_reranking_helps(q)


def test_the_shipped_world_is_the_one_recorded(tmp_path):
    """sdkit:toy is the shipped fixture; its tensors hash to SHIPPED.json's content hash, and storing it
    again as shipped (what `make toy` does to a fresh training before comparing) changes nothing."""
    import json

    from sdkit.load.pipeline import resolve
    from sdkit.toy.world import FIXTURE, content_hash, ship_world, shipped_world_path, toy_world_path

    assert shipped_world_path() == FIXTURE and toy_world_path() == FIXTURE
    assert resolve("sdkit:toy").path == FIXTURE / "pipeline"
    recorded = json.loads((FIXTURE / "SHIPPED.json").read_text())
    assert content_hash(FIXTURE) == recorded["content_sha256"]
    size = sum(f.stat().st_size for f in FIXTURE.rglob("*") if f.is_file())
    assert size < 8e6, f"the shipped world is {size / 1e6:.1f} MB; it should stay a few MB"
    again = ship_world(FIXTURE, tmp_path / "again", figures=recorded["figures"])
    assert again["content_sha256"] == recorded["content_sha256"]
    (tmp_path / "again" / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(
        (FIXTURE / "pipeline" / "vae" / "diffusion_pytorch_model.safetensors").read_bytes())
    assert content_hash(tmp_path / "again") != recorded["content_sha256"]  # the hash sees a swapped file


# ---- a micro world: seconds to build, checks the files and every loader, not the quality ----

def _micro():
    from sdkit.toy.settings import ClipSettings, UnetSettings, VaeSettings, WorldSettings

    return WorldSettings(pool_size=256, clip=ClipSettings(steps=2, batch_size=16, recon_pool=32),
                         vae=VaeSettings(steps=2, batch_size=8), unet=UnetSettings(steps=2, batch_size=8))


@pytest.fixture(scope="module")
def micro_world(tmp_path_factory):
    import os

    from sdkit.toy.world import toy_world_path

    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("SDKIT_CACHE")
    os.environ["SDKIT_CACHE"] = str(cache)
    try:
        lines = []
        path = toy_world_path(_micro(), log=lines.append)
        assert lines and path.parent == cache / "toy"
        again = []
        assert toy_world_path(_micro(), log=again.append) == path and not again  # cached: no retraining
        yield path
    finally:
        if old is None:
            os.environ.pop("SDKIT_CACHE", None)
        else:
            os.environ["SDKIT_CACHE"] = old


def test_micro_world_is_in_hub_layout(micro_world):
    import json

    index = json.loads((micro_world / "pipeline" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None] and index["requires_safety_checker"] is False
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (micro_world / "pipeline" / part).is_dir(), part
    sched = json.loads((micro_world / "pipeline" / "scheduler" / "scheduler_config.json").read_text())
    assert sched["_class_name"] == "DDIMScheduler"
    clip = json.loads((micro_world / "clip" / "config.json").read_text())
    assert clip["model_type"] == "clip" and clip["vision_config"]["image_size"] == 32
    assert (micro_world / "clip" / "model.safetensors").exists()
    assert (micro_world / "clip" / "preprocessor_config.json").exists()
    assert not list(micro_world.rglob("*.bin"))  # safetensors only


def test_toy_prompts_are_one_token_per_word(micro_world):
    from transformers import CLIPTokenizer

    for d in ("pipeline/tokenizer", "clip"):
        tok = CLIPTokenizer.from_pretrained(micro_world / d)
        assert tok.model_max_length == 8
        for p in shapes.PROMPTS:
            assert len(tok(p).input_ids) == 5, (d, p, tok.tokenize(p))


def test_micro_world_runs_every_task(micro_world):
    from PIL import Image

    from sdkit.generation import generate
    from sdkit.load.pipeline import load_pipeline

    path = str(micro_world / "pipeline")
    pipe = load_pipeline(path, device="cpu", dtype="fp32", safety_checker=False)
    run = generate(pipe, "a red circle", n=2, seed=0, num_inference_steps=2, guidance_scale=2.0, progress=False)
    assert [c.image.size for c in run.candidates] == [(32, 32)] * 2
    init = Image.fromarray(shapes.render(shapes.Shape("circle", "red", 16, 16, 8)))
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (8, 8, 24, 24))
    img2img = load_pipeline(path, task="image-to-image", device="cpu", dtype="fp32", safety_checker=False)
    out = img2img("a blue circle", image=init, strength=0.5, num_inference_steps=4, guidance_scale=2.0).images[0]
    assert out.size == (32, 32)
    inpaint = load_pipeline(path, task="inpainting", device="cpu", dtype="fp32", safety_checker=False)
    out = inpaint("a blue circle", image=init, mask_image=mask, num_inference_steps=2, guidance_scale=2.0,
                  height=32, width=32).images[0]
    assert out.size == (32, 32)


def test_micro_world_clip_loads_in_both_scorers(micro_world):
    from PIL import Image

    from sdkit.scoring.scorers import load_scorer

    images = [Image.fromarray(im) for im in shapes.sample(6, seed=5)[0]]
    prompts = [shapes.PROMPTS[i] for i in range(6)]
    a = load_scorer("torch", model=str(micro_world / "clip"))(images, prompts)
    b = load_scorer("flax", model=str(micro_world / "clip"))(images, prompts)
    np.testing.assert_allclose(a.logits, b.logits, atol=1e-3)


def test_training_is_deterministic(tmp_path):
    """Same seed, same thread count: the same weights, byte for byte."""
    import torch

    from sdkit.toy.world import build_world

    threads = torch.get_num_threads()
    build_world(tmp_path / "a", _micro(), log=None)
    build_world(tmp_path / "b", _micro(), log=None)
    assert torch.get_num_threads() == threads  # the build restores the caller's setting
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.safetensors"))
    assert len(files) == 4  # unet, vae, text_encoder, clip
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
