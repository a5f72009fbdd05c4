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
    from sdkit.toy.train import junk

    images = junk(200, seed=1)
    assert np.mean([shapes.check(im).shape is not None and shapes.check(im).matches("a " + (shapes.check(im).color or "red") + " " + shapes.check(im).shape)
                    for im in images]) < 0.2


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
    from sdkit.toy.evaluate import wrong_prompt

    for p in shapes.PROMPTS:
        w = wrong_prompt(p)
        assert w in shapes.PROMPTS and set(p.split()[1:]).isdisjoint(w.split()[1:])


@pytest.mark.slow
def test_reranking_helps_in_the_ci_world():
    """Trains the CI world once per machine (cached), then generates, checks and reranks."""
    from sdkit.toy.evaluate import evaluate
    from sdkit.toy.world import load_world_info, toy_world_path

    world = toy_world_path("ci")
    assert (world / "pipeline" / "model_index.json").exists() and (world / "clip" / "config.json").exists()
    assert load_world_info(world)["clip_zero_shot"] >= 0.95
    q = evaluate(world, n=8, groups=4, seed=0, log=None)
    print(q.table())
    assert q.adherence >= 0.2, q.table()  # the model draws the prompt a fair share of the time
    for name in ("torch", "flax"):
        # Reranking helps by a clear margin: well beyond what a random pick varies by.
        assert q.top1[name] >= q.adherence + max(0.1, 3 * q.random_pick_sd), q.table()
        # Scores against the wrong prompt must not help: that would be measuring something else.
        assert q.control[name] <= q.adherence + 0.02, q.table()
    assert abs(q.top1["torch"] - q.top1["flax"]) <= 0.05, q.table()
