"""bench/reward_variants.py: the three recipes it adds to sdkit.toy.reward (soft labels, deeper vision towers, larger
input images), its report, and its arguments."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import reward_variants as rv  # noqa: E402

from sdkit.toy import shapes  # noqa: E402
from sdkit.toy.reward import Labelled  # noqa: E402


def labelled(images, prompts):
    checks = [shapes.check(im) for im in images]
    return Labelled(images=np.stack(images), prompt=np.array(prompts), seed=np.arange(len(images)),
                    shape=np.array([shapes.SHAPES.index(c.shape) if c.shape else -1 for c in checks]),
                    color=np.array([list(shapes.COLORS).index(c.color) if c.color else -1 for c in checks]))


def red_lump():
    """A red circle squashed to an ellipse of aspect 5:3: the checker reads its colour, not its shape."""
    lump = np.zeros((32, 32, 3), np.uint8)
    yy, xx = np.indices((32, 32))
    lump[((xx - 16) / 10.0) ** 2 + ((yy - 16) / 6.0) ** 2 <= 1] = shapes.COLORS["red"]
    return lump


def test_soft_targets_follow_the_checker_margin():
    images, labels, _ = shapes.sample(24, seed=3)
    data = labelled(list(images), labels)
    soft = rv.soft_targets(data, 0.03)
    hard = data.matches()
    assert soft.shape == hard.shape == (24, 12)
    # Clean procedural shapes are far above the threshold: the soft label is the hard one, to within a hair.
    np.testing.assert_allclose(soft, hard, atol=1e-3)
    # A lumpy blob of the right colour (a circle squashed to an ellipse) is below the threshold: soft for its own
    # prompt only, between 0 and 1/2, never for the other two shapes of its colour.
    lump = red_lump()
    check = shapes.check(lump)
    assert check.shape is None and check.color == "red" and 0.5 < check.iou < 0.78
    own = shapes.PROMPTS.index("a red circle")
    s = rv.soft_targets(labelled([lump], [own]), 0.03)[0]
    assert 0 < s[own] < 0.5
    assert s[shapes.PROMPTS.index("a red square")] == s[shapes.PROMPTS.index("a red triangle")] == 0


def test_deepen_starts_as_the_same_model():
    import torch

    from sdkit.toy.reward import load_clip, own_logits
    from sdkit.toy.world import toy_world_path

    model, tokenizer = load_clip(toy_world_path("ci", log=None) / "clip")
    images, labels, _ = shapes.sample(6, seed=5)
    before = own_logits(model, tokenizer, images, labels)
    n = model.config.vision_config.num_hidden_layers
    deep = rv.deepen(model, 2).eval()
    assert len(deep.vision_model.encoder.layers) == n + 2
    np.testing.assert_allclose(own_logits(deep, tokenizer, images, labels), before, rtol=1e-5, atol=1e-5)
    # The new layers are trainable, not frozen identities: their zeroed projections get gradients.
    with torch.enable_grad():
        deep.train()
        out = deep.vision_model(pixel_values=torch.randn(2, 3, 32, 32)).pooler_output.sum()
        out.backward()
    assert deep.vision_model.encoder.layers[-1].mlp.fc2.weight.grad.abs().sum() > 0


def test_upscale_is_transformers_interpolation_made_permanent():
    """The upscaled model on 64 x 64 pixels equals the original one asked by transformers itself to interpolate its
    position embeddings (`interpolate_pos_encoding=True`, code sdkit did not write); nothing else changes."""
    import torch

    from sdkit.toy.reward import load_clip
    from sdkit.toy.world import toy_world_path

    model, _ = load_clip(toy_world_path("ci", log=None) / "clip")
    big = rv.upscale(model, 2).eval()
    assert big.config.vision_config.image_size == 64 and model.config.vision_config.image_size == 32
    assert big.vision_model.embeddings.position_embedding.weight.shape[0] == 16 * 16 + 1
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model.vision_model(pixel_values=x, interpolate_pos_encoding=True).pooler_output
        got = big.vision_model(pixel_values=x).pooler_output
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    moved = {k for k, v in big.state_dict().items()
             if k in model.state_dict() and not torch.equal(v, model.state_dict()[k])}
    assert moved == {"vision_model.embeddings.position_embedding.weight"}


def test_resized_is_what_a_clip_processor_feeds_the_upscaled_model():
    """What an upscaled model is trained and judged on (`resized`, then sdkit.toy.train's normalisation) equals what
    transformers' own CLIPImageProcessor makes of the 32 x 32 image at the upscaled model's size."""
    from PIL import Image
    from transformers import CLIPImageProcessor

    from sdkit.toy import train

    images, labels, _ = shapes.sample(4, seed=7)
    data = labelled(list(images), labels)
    big = rv.resized(data, 64)
    assert big.images.shape == (4, 64, 64, 3) and big.images.dtype == np.uint8
    np.testing.assert_array_equal(big.prompt, data.prompt)
    processor = CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    want = processor([Image.fromarray(im) for im in images], return_tensors="np")["pixel_values"]
    got = train.clip_pixels(train.to_tensor(big.images)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_the_cnn_control_learns_the_labels_and_ranks_by_its_own_prompt():
    """A few steps on clean procedural shapes: each image's logit for its own prompt ends above its logits for the
    prompts it does not match; `cnn_logits` reads each image's own prompt's logit from the net's output."""
    import dataclasses

    import torch

    from sdkit.toy.reward import RewardSettings

    images, labels, _ = shapes.sample(96, seed=11)
    data = labelled(list(images), labels)
    assert data.ok().all()
    net = rv.make_cnn(8)
    s = dataclasses.replace(RewardSettings(), steps=150, batch_size=32, lr=3e-3)
    losses = []
    rv.train_cnn(net, data, s, log=lambda m: losses.append(float(m.split("loss")[1].split()[0])))
    assert losses[-1] < 0.7 * losses[0]
    with torch.no_grad():
        out = net(torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1)).numpy()
    own = rv.cnn_logits(net, data)
    np.testing.assert_allclose(own, out[np.arange(96), labels], rtol=1e-5, atol=1e-5)
    others = np.where(data.matches(), np.nan, out)
    assert np.mean(own > np.nanmax(others, axis=1)) > 0.6  # an untrained net: about 1 in 12
    # The same seed, the same initial net: the control reproduces.
    a, b = rv.make_cnn(8, seed=3), rv.make_cnn(8, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_render_reads_each_run(tmp_path):
    fig = lambda clip, reward, oracle: {"clip": {"top1": clip, "oracle": oracle, "spearman": 0.5},  # noqa: E731
                                        "reward": {"top1": reward, "oracle": oracle, "spearman": 0.7},
                                        "closure": (reward - clip) / (oracle - clip)}
    for name, r1 in (("shipped", 0.69), ("steps9000", 0.70)):
        (tmp_path / f"{name}.json").write_text(json.dumps({
            "variant": name, "recipe": rv.VARIANTS[name],
            "figures": {"val1": fig(0.63, r1, 0.74), "val2": fig(0.66, 0.75, 0.81)},
            "machine": {"cpu": "Test CPU", "threads": 1}, "times": {"train_s": 12.0},
            **({"run_by": "a prototype"} if name == "steps9000" else {})}))
    md = rv.render(tmp_path)
    rows = [line for line in md.splitlines() if line.startswith(("| shipped", "| steps9000"))]
    assert rows[0].startswith("| shipped | RewardSettings(), retrained here | 0.690 | 0.750 |")
    assert rows[1].startswith('| steps9000 † | {"steps": 9000} | 0.700 | 0.750 |') and "| 64%, 60% |" in rows[1]
    assert "† Run by a prototype." in md
    assert "CLIP: val1 0.630, val2 0.660; oracle: val1 0.740, val2 0.810" in md


@pytest.mark.parametrize("argv, message", [([], "nothing to do: pass --variant NAME"),
                                           (["--variant", "bogus"], "invalid choice: 'bogus'"),
                                           (["--variant", "shipped", "--threads", "0"], "--threads=0")])
def test_bad_arguments_name_the_value(argv, message, capsys):
    with pytest.raises(SystemExit):
        rv.main(argv)
    assert message in capsys.readouterr().err


def test_misses_reads_the_wrong_picks():
    # One set of 8 for "a red circle": a lumpy red blob (the checker cannot read its shape), 6 blue circles and one red
    # circle that matches. Ranked lump first, it is a missed set; ranked match first, it is not.
    own = shapes.PROMPTS.index("a red circle")
    lump = red_lump()
    circle = lambda c: shapes.render(shapes.Shape("circle", c, 16.0, 16.0, 8.0))  # noqa: E731
    data = labelled([lump] + [circle("blue")] * 6 + [circle("red")], [own] * 8)
    m = rv.misses(np.array([9.0, 1, 1, 1, 1, 1, 1, 5.0]), data)
    assert (m["sets"], m["pick_shape_unreadable"]) == (1, 1)
    assert m["pick_iou"][0] < 0.78 <= m["best_match_iou"][0]
    assert rv.misses(np.array([1.0, 1, 1, 1, 1, 1, 1, 5.0]), data)["sets"] == 0
