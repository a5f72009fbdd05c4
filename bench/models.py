"""Random-weight models with the real SD 1.5 / CLIP shapes, saved in the Hub layout.

Speed does not depend on weight values, so these stand in for the real
checkpoints (which cannot be downloaded here): the same configs, the same
`from_pretrained` path, random weights. Built once and cached under
`$SDKIT_CACHE/bench/` (the SD 1.5 one is ~4.3 GB in fp32, ~1 min to build).
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path

import torch

from sdkit.models.cache import build_atomically, cache_root
from sdkit.models.tokenizer import save_clip_tokenizer

# Shapes of stable-diffusion-v1-5/stable-diffusion-v1-5's config.json files.
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)
# CLIP ViT-L/14's text tower (openai/clip-vit-large-patch14), as SD 1.5 uses it.
SD15_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)


def _sd15_components(tokenizer, seed: int):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
    # The vocabulary is sdkit's small offline one; the embedding table size does not change the speed.
    return dict(
        unet=UNet2DConditionModel(**SD15_UNET),
        vae=AutoencoderKL(**SD15_VAE),
        text_encoder=CLIPTextModel(CLIPTextConfig(**SD15_TEXT, **ids)),
        scheduler=DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                clip_sample=False, set_alpha_to_one=False, steps_offset=1),
    )


def _save_sd15(directory: Path, seed: int) -> None:
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    save_clip_tokenizer(directory / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(directory / "tokenizer")
    # No safety checker: it runs once per image, not per step, and is not what is measured here.
    pipe = StableDiffusionPipeline(tokenizer=tokenizer, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False, image_encoder=None,
                                   **_sd15_components(tokenizer, seed))
    pipe.save_pretrained(directory, safe_serialization=True)


def sd15_path(seed: int = 0) -> Path:
    """Directory of a random-weight SD 1.5-shaped pipeline (UNet 860M, VAE, ViT-L/14 text), built on first use."""
    key = hashlib.sha256((inspect.getsource(_sd15_components) + repr((SD15_UNET, SD15_VAE, SD15_TEXT, seed)))
                         .encode()).hexdigest()[:12]
    final = cache_root() / "bench" / f"sd15-random-seed{seed}-{key}"
    return build_atomically(final, lambda d: _save_sd15(Path(d), seed))


def tiny_path() -> Path:
    """sdkit's tiny text-to-image pipeline (64x64), for overhead checks and the smoke run."""
    from sdkit.models.tiny import tiny_pipeline_path

    return tiny_pipeline_path("text-to-image")


def clip_b32_path(seed: int = 0) -> str:
    """A random CLIP ViT-B/32 (openai/clip-vit-base-patch32 shapes) in the Hub layout."""
    from sdkit.models.tiny_clip import save_random_clip

    final = cache_root() / "bench" / f"clip-vit-b32-random-seed{seed}"
    return str(build_atomically(final, lambda d: save_random_clip(d, seed=seed)))


def tiny_clip() -> str:
    from sdkit.models.tiny_clip import tiny_clip_path

    return tiny_clip_path()


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def model_path(name: str) -> Path:
    """"sd15" (the SD 1.5-shaped model) or "tiny"."""
    paths = {"sd15": sd15_path, "tiny": tiny_path}
    if name not in paths:
        raise ValueError(f"model={name!r}: bench models are {sorted(paths)}")
    return paths[name]()
