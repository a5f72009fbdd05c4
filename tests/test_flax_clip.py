"""sdkit.scoring.flax (config, modeling, weights): sdkit's Flax CLIP against transformers' PyTorch CLIPModel."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
import torch
from PIL import Image

from sdkit.scoring.flax.config import CLIPConfig
from sdkit.scoring.flax.modeling import CLIP, FlaxCLIP
from sdkit.scoring.flax.weights import load_flax_clip, params_from_state_dict, read_safetensors
from sdkit.scoring.preprocess import ImageConfig, preprocess
from sdkit.models.tiny_clip import TINY_CLIP_SEED, random_clip_model, save_tiny_clip, tiny_clip_path

ATOL = 1e-4  # the parity bar, fp32
PROMPTS = ["a red circle", "a photo of a horse sitting in a field at night, oil painting, trending", "", "zebra?!"]


def realistic_image(height, width, mode="RGB", seed=0):
    """Smooth colour gradients plus sensor-like noise: what resampling differences show up on."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    base = np.stack([np.sin(3 * x + 1) * 0.5 + 0.5, y, (x * y + 0.3 * np.cos(5 * y)) % 1], -1) * 255
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    if mode == "RGBA":
        alpha = (np.linspace(0, 255, width)[None, :].repeat(height, 0)).astype(np.uint8)
        image.putalpha(Image.fromarray(alpha))
    return image.convert(mode)


@pytest.fixture(scope="module")
def tiny():
    return tiny_clip_path()


@pytest.fixture(scope="module")
def tokenizer(tiny):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(tiny)


def _torch_outputs(model, input_ids, pixel_values):
    with torch.no_grad():
        ids = torch.from_numpy(np.asarray(input_ids, np.int64))
        out = model(input_ids=ids, pixel_values=torch.from_numpy(pixel_values))
        text = model.get_text_features(input_ids=ids).pooler_output
    return out.logits_per_image.numpy(), out.text_embeds.numpy(), out.image_embeds.numpy(), text.numpy()


def _assert_parity(clip, model, input_ids, pixel_values):
    logits, text, image, text_features = _torch_outputs(model, input_ids, pixel_values)
    f_logits, f_text, f_image = (np.asarray(a) for a in clip(input_ids, pixel_values))
    np.testing.assert_allclose(f_text, text, atol=ATOL, rtol=0)
    np.testing.assert_allclose(f_image, image, atol=ATOL, rtol=0)
    np.testing.assert_allclose(f_logits, logits, atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.asarray(clip.get_text_features(input_ids)), text_features, atol=ATOL, rtol=0)
    # Not vacuous: embeddings are not all alike, logits spread.
    assert np.ptp(logits) > 1 and np.abs(text[0] - text[1]).max() > 1e-2


def test_tiny_parity_with_transformers(tiny, tokenizer):
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(tiny).eval()
    clip = load_flax_clip(tiny)
    assert clip.config.text_config.eos_token_id == tokenizer.eos_token_id  # the first-EOS pooling path
    ids = tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="np")["input_ids"]
    images = [realistic_image(40 + 9 * i, 64 - 5 * i, seed=i) for i in range(5)]
    _assert_parity(clip, model, ids, preprocess(images, ImageConfig.from_pretrained(tiny)))


def test_gelu_clip_parity_with_transformers(tmp_path, tokenizer):
    """LAION/OpenCLIP-converted CLIPs use exact GELU, 14-pixel patches and another image size."""
    from transformers import CLIPModel

    path = save_tiny_clip(tmp_path, seed=2, text_config={"hidden_act": "gelu"},
                          vision_config={"hidden_act": "gelu", "patch_size": 7, "image_size": 28})
    model, clip = CLIPModel.from_pretrained(path).eval(), load_flax_clip(path)
    ids = tokenizer(PROMPTS, padding="max_length", max_length=77, return_tensors="np")["input_ids"]
    pixel_values = preprocess([realistic_image(50, 40, seed=i) for i in range(3)], ImageConfig.from_pretrained(path))
    assert pixel_values.shape == (3, 3, 28, 28)
    _assert_parity(clip, model, ids, pixel_values)


def test_vit_b32_shaped_parity_with_transformers(tokenizer):
    from transformers import CLIPConfig as HFConfig

    # CLIPConfig() is ViT-B/32; eos_token_id=2 as in openai/clip-vit-base-patch32's config: the legacy
    # argmax pooling. Weights are converted in memory (the 600 MB safetensors round trip is what the
    # tiny test covers); the config goes through config.json's dict form.
    hf_config = HFConfig(text_config=dict(eos_token_id=2, bos_token_id=0, pad_token_id=1))
    model = random_clip_model(hf_config, seed=1)
    config = CLIPConfig.from_dict(json.loads(hf_config.to_json_string()))
    assert config.vision_config.patch_size == 32 and config.text_config.eos_token_id == 2
    params = params_from_state_dict({k: v.numpy() for k, v in model.state_dict().items()}, config)
    clip = FlaxCLIP(CLIP(config), params, config, "", "random-vit-b32")
    ids = tokenizer(PROMPTS[:3], padding="max_length", max_length=77, return_tensors="np")["input_ids"]
    pixel_values = preprocess([realistic_image(300, 451), realistic_image(512, 512, seed=1)])
    _assert_parity(clip, model, ids, pixel_values)


def test_vit_h_width_parity_with_transformers(tokenizer):
    """ViT-H/14's widths (PickScore_v1, HPS v2.1: vision 1280 wide, 16 heads of 80, MLP 5120; text 1024, projection
    1024; exact GELU), one layer per tower and a 28-pixel image to stay cheap."""
    from transformers import CLIPConfig as HFConfig

    hf_config = HFConfig(
        projection_dim=1024,
        text_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=1, num_attention_heads=16,
                         hidden_act="gelu", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.eos_token_id),
        vision_config=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=1, num_attention_heads=16,
                           hidden_act="gelu", image_size=28, patch_size=14))
    model = random_clip_model(hf_config, seed=4)
    config = CLIPConfig.from_dict(json.loads(hf_config.to_json_string()))
    params = params_from_state_dict({k: v.numpy() for k, v in model.state_dict().items()}, config)
    clip = FlaxCLIP(CLIP(config), params, config, "", "random-vit-h-width")
    ids = tokenizer(PROMPTS[:3], padding="max_length", max_length=77, return_tensors="np")["input_ids"]
    pixel_values = preprocess([realistic_image(60, 45, seed=i) for i in range(3)],
                              ImageConfig(shortest_edge=28, crop_size=(28, 28)))
    _assert_parity(clip, model, ids, pixel_values)


def test_config_defaults_are_transformers_defaults():
    from transformers import CLIPTextConfig, CLIPVisionConfig

    ours, text, vision = CLIPConfig(), CLIPTextConfig(), CLIPVisionConfig()
    for name, value in vars(ours.text_config).items():
        assert getattr(text, name) == value, name
    for name, value in vars(ours.vision_config).items():
        assert getattr(vision, name) == value, name


@pytest.mark.parametrize("config", [
    {"model_type": "clip", "projection_dim": 768, "text_config": {"hidden_size": 512, "eos_token_id": 2},
     "text_config_dict": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12},
     "vision_config": {"hidden_size": 768},
     "vision_config_dict": {"hidden_size": 1024, "patch_size": 14, "num_attention_heads": 16, "num_hidden_layers": 24,
                            "hidden_act": "gelu"}},
    {"model_type": "clip", "text_config": {"eos_token_id": 2, "vocab_size": 100}, "vision_config": {"image_size": 336}},
    {"model_type": "clip"},
])
def test_config_json_read_as_transformers_reads_it(config):
    from transformers import CLIPConfig as HFConfig

    ours, ref = CLIPConfig.from_dict(config), HFConfig.from_dict(dict(config))
    assert ours.projection_dim == ref.projection_dim
    for name, value in vars(ours.text_config).items():
        assert getattr(ref.text_config, name) == value, name
    for name, value in vars(ours.vision_config).items():
        assert getattr(ref.vision_config, name) == value, name


def test_safetensors_reader_matches_safetensors(tmp_path):
    from safetensors.torch import save_file

    tensors = {"f32": torch.randn(3, 4), "f16": torch.randn(5).half(), "bf16": torch.randn(2, 2).bfloat16(),
               "scalar": torch.tensor(4.6), "i64": torch.arange(3)}
    save_file(tensors, tmp_path / "x.safetensors")
    got = read_safetensors(str(tmp_path / "x.safetensors"))
    assert sorted(got) == sorted(tensors)
    for k, v in tensors.items():
        assert got[k].shape == tuple(v.shape)
        np.testing.assert_array_equal(np.asarray(got[k], np.float64), v.double().numpy())


def test_sharded_safetensors(tmp_path, tiny):
    from transformers import CLIPModel

    for f in os.listdir(tiny):
        if f != "model.safetensors":
            shutil.copy(os.path.join(tiny, f), tmp_path)
    CLIPModel.from_pretrained(tiny).save_pretrained(tmp_path, max_shard_size="40KB")
    assert os.path.exists(tmp_path / "model.safetensors.index.json") and len(list(tmp_path.glob("model-*"))) > 1
    sharded, single = load_flax_clip(tmp_path), load_flax_clip(tiny)
    for a, b in zip(*(map(np.asarray, jax.tree.leaves(c.params)) for c in (sharded, single))):
        np.testing.assert_array_equal(a, b)


def test_tiny_clip_is_cached_and_deterministic(tmp_path, monkeypatch):
    monkeypatch.setenv("SDKIT_CACHE", str(tmp_path / "cache"))
    path = tiny_clip_path()
    assert path.startswith(str(tmp_path / "cache" / "tiny" / "clip-"))
    assert sorted(os.listdir(path)) == sorted(["config.json", "model.safetensors", "preprocessor_config.json",
                                               "vocab.json", "merges.txt", "tokenizer_config.json",
                                               "tokenizer.json"])
    mtime = os.path.getmtime(os.path.join(path, "model.safetensors"))
    assert tiny_clip_path() == path and os.path.getmtime(os.path.join(path, "model.safetensors")) == mtime
    assert not [p for p in os.listdir(tmp_path / "cache" / "tiny") if p.startswith(".")]  # no temp dirs left
    again = read_safetensors(save_tiny_clip(tmp_path / "again", seed=TINY_CLIP_SEED) + "/model.safetensors")
    other = read_safetensors(save_tiny_clip(tmp_path / "other", seed=TINY_CLIP_SEED + 1) + "/model.safetensors")
    first = read_safetensors(path + "/model.safetensors")
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not np.array_equal(first["text_projection.weight"], other["text_projection.weight"])


def test_weights_that_do_not_fit_the_config(tmp_path, tiny):
    shutil.copytree(tiny, tmp_path / "c")
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    config["vision_config"]["hidden_size"] = 64
    (tmp_path / "c" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="do not fit.*wrong shapes"):
        load_flax_clip(tmp_path / "c")


def test_building_the_tiny_clip_shows_no_progress_bar(tmp_path, capfd):
    """A notebook that builds it on first use would store transformers' "Writing model shards" widget."""
    from transformers.utils import logging as tl

    save_tiny_clip(tmp_path / "clip", seed=TINY_CLIP_SEED)
    captured = capfd.readouterr()
    assert "Writing model shards" not in captured.err + captured.out
    assert tl.is_progress_bar_enabled()  # restored afterwards
