"""Tiny random-weight SDXL pipelines (base, inpainting, refiner), saved in the exact Hugging Face layout.

`sdkit:tiny-xl` is to SDXL what `sdkit:tiny` is to SD 1.x: the same loading and generation code as
`stabilityai/stable-diffusion-xl-base-1.0`, in about a second and a few MB. Every structural trait of SDXL is
kept at toy width: two text encoders (the second with a projection, whose pooled embedding conditions the
UNet), hidden states from the penultimate layer concatenated as cross-attention context, `text_time` added
conditioning (original size, crop, target size; the refiner's aesthetic score instead of the target size),
linear-projection transformers with more layers deeper down, Euler with "leading" spacing, and a VAE whose
config says `force_upcast` (SDXL's own VAE overflows in fp16). Pictures are noise: the weights are random.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from sdkit.models.cache import build_atomically, build_key, cache_root
from sdkit.models.tiny import TINY_WORDS, save_pipeline
from sdkit.models.tokenizer import save_clip_tokenizer
from sdkit.quiet import quiet_hf

KINDS = ("text-to-image", "inpainting", "refiner")
TIME_EMBED = 8  # addition_time_embed_dim; the real model's is 256
TEXT_WIDTH = 32  # each text encoder's hidden size; the real ones are 768 and 1280


def _text_config(vocab_size: int, eos: int, bos: int, projection: bool):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(hidden_size=TEXT_WIDTH, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                          vocab_size=vocab_size, max_position_embeddings=77, bos_token_id=bos, eos_token_id=eos,
                          pad_token_id=eos, hidden_act="gelu", projection_dim=TEXT_WIDTH if projection else 512)


def _components(kind: str, seed: int, vocab_size: int, eos: int, bos: int) -> dict:
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    refiner = kind == "refiner"
    # The base conditions on [original size, crop, target size] (6 numbers) and the pooled text embedding;
    # the refiner on [original size, crop, aesthetic score] (5) and cross-attends to the second encoder only.
    time_ids = 5 if refiner else 6
    unet = UNet2DConditionModel(
        sample_size=8,  # latent 8x8 -> 64x64 images with the VAE below
        in_channels=9 if kind == "inpainting" else 4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),  # SDXL: no attention at the top level
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        cross_attention_dim=TEXT_WIDTH if refiner else 2 * TEXT_WIDTH,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED,
        projection_class_embeddings_input_dim=time_ids * TIME_EMBED + TEXT_WIDTH,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        block_out_channels=(8, 8, 16, 16),  # four levels: scale factor 8, as in SDXL
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=8, sample_size=64,
        scaling_factor=0.13025, force_upcast=True,  # SDXL's VAE: its scale, and decoded in fp32 under fp16
    )
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    parts = dict(unet=unet, vae=vae, scheduler=scheduler,
                 text_encoder_2=CLIPTextModelWithProjection(_text_config(vocab_size, eos, bos, True)))
    parts["text_encoder"] = None if refiner else CLIPTextModel(_text_config(vocab_size, eos, bos, False))
    return parts


def save_tiny_xl_pipeline(save_directory, kind: str = "text-to-image", seed: int = 0, fp16_variant: bool = True):
    """Build a tiny random SDXL pipeline of `kind` and save it like a Hub repo (fp32 files, plus an fp16 variant)."""
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLInpaintPipeline, StableDiffusionXLPipeline

    _check_kind(kind)
    save_directory = Path(save_directory)
    tokenizer = save_clip_tokenizer(save_directory / "tokenizer_2", words=TINY_WORDS)
    parts = _components(kind, seed, len(tokenizer), tokenizer.eos_token_id, tokenizer.bos_token_id)
    if kind == "refiner":
        pipe = StableDiffusionXLImg2ImgPipeline(tokenizer=None, tokenizer_2=tokenizer, requires_aesthetics_score=True,
                                                force_zeros_for_empty_prompt=False, add_watermarker=False, **parts)
    else:
        save_clip_tokenizer(save_directory / "tokenizer", words=TINY_WORDS)
        cls = StableDiffusionXLInpaintPipeline if kind == "inpainting" else StableDiffusionXLPipeline
        pipe = cls(tokenizer=tokenizer, tokenizer_2=tokenizer, add_watermarker=False, **parts)
    return save_pipeline(pipe, save_directory, fp16_variant)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: tiny SDXL pipelines exist for {list(KINDS)}")


def tiny_xl_pipeline_path(kind: str = "text-to-image", seed: int = 0) -> Path:
    """Directory of the cached tiny SDXL pipeline of `kind`, built on first use (~1 s, a few MB)."""
    _check_kind(kind)
    key = build_key([sys.modules[__name__], sys.modules[save_pipeline.__module__],
                     sys.modules[save_clip_tokenizer.__module__]], kind, seed)
    with quiet_hf(messages=True):
        return build_atomically(cache_root() / "tiny" / f"sdxl-{kind}-seed{seed}-{key}",
                                lambda d: save_tiny_xl_pipeline(d, kind=kind, seed=seed))
