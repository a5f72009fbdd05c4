"""Random-weight CLIPs in the exact Hub layout: the tiny test checkpoint and a ViT-B/32-shaped one.

They load through the same code as `openai/clip-vit-base-patch32` (config.json,
model.safetensors, tokenizer files, preprocessor_config.json), in milliseconds.
Weights come from numpy's seeded generator, not torch's initialisers, so they do not
change when torch or transformers change their init code. Every parameter, LayerNorm
and bias included, is random: a conversion bug cannot hide behind a zero bias or a
unit scale.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from sdkit.models.cache import build_atomically, build_key, cache_root
from sdkit.models.tokenizer import clip_tokenizer, save_clip_tokenizer

# Small but not degenerate: several heads, hidden != intermediate != projection,
# 16 patches + a class token, 2 layers so the residual stream is exercised.
TINY_TEXT = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=77)
TINY_VISION = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                   image_size=32, patch_size=8)
TINY_PROJECTION_DIM = 16
# logit_scale of trained OpenAI CLIPs (exp = 100), so logits look like real ones.
TRAINED_LOGIT_SCALE = float(np.log(100.0))


def random_clip_model(config, seed: int = 0):
    """A transformers `CLIPModel` for `config` with seeded random weights (numpy generator)."""
    import contextlib

    import torch
    from transformers import CLIPModel

    try:  # skip torch's init: every weight is overwritten below (seconds saved at ViT-B/32 size)
        from transformers.initialization import no_init_weights
    except ImportError:
        no_init_weights = contextlib.nullcontext
    rng = np.random.default_rng(seed)
    with no_init_weights():
        model = CLIPModel(config).eval()
    state = {}
    for name, p in sorted(model.state_dict().items()):
        if not p.is_floating_point() or name.endswith("position_ids"):
            continue
        if name == "logit_scale":
            state[name] = torch.tensor(TRAINED_LOGIT_SCALE)
            continue
        # Uniform with unit variance: twice as fast to draw as normal at ViT-B/32 size.
        x = rng.random(tuple(p.shape), dtype=np.float32)
        x -= 0.5
        x *= np.float32(np.sqrt(12.0))
        if name.endswith("bias"):
            x *= 0.1
        elif p.ndim == 1 and "norm" in name:  # LayerNorm scale
            x = 1 + 0.2 * x
        elif "embedding" in name and p.ndim == 2:  # token / position tables
            x *= 0.5
        elif p.ndim >= 2:  # Linear [out, in] and Conv [out, c, k, k]: keep activations O(1)
            x /= np.sqrt(np.prod(p.shape[1:]))
        state[name] = torch.from_numpy(x)  # (the class embedding keeps unit variance)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if [k for k in missing if not k.endswith("position_ids")] or unexpected:
        raise RuntimeError(f"random CLIP state does not match CLIPModel: missing {missing}, unexpected {unexpected}")
    return model


def save_random_clip(path: str | os.PathLike, config=None, seed: int = 0, image_size: int | None = None) -> str:
    """Save a random CLIP (default: `CLIPConfig()`, i.e. ViT-B/32-shaped) with tokenizer and preprocessor config.

    The text config keeps its own token ids (real OpenAI configs say eos_token_id=2, the
    legacy argmax pooling); the tiny tokenizer's ids are all below the vocab size.
    """
    from transformers import CLIPConfig, CLIPImageProcessor

    path = str(path)
    save_clip_tokenizer(path)
    config = config if config is not None else CLIPConfig()
    model = random_clip_model(config, seed)
    from sdkit.quiet import quiet_hf  # no "Writing model shards" bar: a notebook's first run would store it

    with quiet_hf(messages=True):
        model.save_pretrained(path, safe_serialization=True)
    size = image_size or config.vision_config.image_size
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(path)
    return path


def tiny_clip_config(vocab_ids: dict, **config_overrides):
    """The tiny `CLIPConfig`; `config_overrides` go to `CLIPConfig` (text_config/vision_config dicts merge)."""
    from transformers import CLIPConfig

    text = {**TINY_TEXT, **vocab_ids, **config_overrides.pop("text_config", {})}
    vision = {**TINY_VISION, **config_overrides.pop("vision_config", {})}
    kw = dict(projection_dim=TINY_PROJECTION_DIM, **config_overrides)
    return CLIPConfig(text_config=text, vision_config=vision, **kw)


def save_tiny_clip(path: str | os.PathLike, seed: int = 0, **config_overrides) -> str:
    """Save the tiny random CLIP (Hub layout) to `path` and return it."""
    tokenizer = clip_tokenizer()  # save_random_clip saves it
    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.eos_token_id)
    return save_random_clip(path, tiny_clip_config(ids, **config_overrides), seed=seed)


# Seed 3: with random weights most seeds give all-negative cosines against the tiny pipelines' images, so every
# shown CLIP score (floored at 0) reads 0.00 and a demo looks broken; seed 3 gives a spread of 10-40.
TINY_CLIP_SEED = 3


def tiny_clip_path(seed: int = TINY_CLIP_SEED, **config_overrides) -> str:
    """The tiny CLIP's directory in the sdkit cache, built on first use (atomically)."""
    key = build_key([sys.modules[__name__], sys.modules[save_clip_tokenizer.__module__]], seed, config_overrides)
    build = lambda d: save_tiny_clip(d, seed=seed, **config_overrides)  # noqa: E731
    return str(build_atomically(cache_root() / "tiny" / f"clip-{key}", build))
