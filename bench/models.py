"""Random-weight models with the real SD 1.5 / SDXL / CLIP shapes, saved in the Hub layout.

Speed does not depend on weight values, so these stand in for the real
checkpoints (which cannot be downloaded here): the same configs, the same
`from_pretrained` path, random weights. Built once and cached under
`$SDKIT_CACHE/bench/` (the SD 1.5 one is ~4.3 GB in fp32, ~1 min to build; the SDXL one ~14 GB, or
~7 GB as an fp16 variant only, which is how the GPU check builds it).
"""

from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path

import torch

from sdkit.models.cache import build_atomically, cache_root
from sdkit.models.tokenizer import save_clip_tokenizer
from sdkit.quiet import quiet_hf

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


# Shapes of stabilityai/stable-diffusion-xl-base-1.0's config.json files: a 2.6B UNet, its VAE (SD 1.5's shapes,
# another scale, decoded in fp32 under fp16: force_upcast), CLIP ViT-L/14's text tower and OpenCLIP ViT-bigG/14's
# (with its projection, whose pooled output conditions the UNet).
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
    cross_attention_dim=2048, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816, norm_num_groups=32,
)
SDXL_VAE = dict(SD15_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
SDXL_TEXT = SD15_TEXT
SDXL_TEXT_2 = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                   max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)
# The same structure at toy width (the smoke run and the GPU check's dry run build it with the same code): two
# levels, text_time conditioning (6 time ids x 8 + the pooled 32), linear projections, more layers deeper down.
SDXL_TINY_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2), attention_head_dim=(2, 4), use_linear_projection=True,
    cross_attention_dim=64, addition_embed_type="text_time", addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=6 * 8 + 32, norm_num_groups=8,
)
SDXL_TINY_VAE = dict(SDXL_VAE, layers_per_block=1, block_out_channels=(8, 8, 16, 16), norm_num_groups=8, sample_size=64)
SDXL_TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      max_position_embeddings=77, hidden_act="gelu", projection_dim=32)
SDXL_SHAPES = {"sdxl": (SDXL_UNET, SDXL_VAE, SDXL_TEXT, SDXL_TEXT_2),
               "sdxl-tiny": (SDXL_TINY_UNET, SDXL_TINY_VAE, SDXL_TINY_TEXT, SDXL_TINY_TEXT)}


def _save_sdxl(directory: Path, shapes: str, seed: int, dtype: torch.dtype, device: str) -> None:
    """Build and save an SDXL-shaped pipeline, the UNet last and alone: fp32 peak memory ~10 GB, not ~14."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    unet_cfg, vae_cfg, text_cfg, text_2_cfg = SDXL_SHAPES[shapes]
    # fp16 files are saved as the "fp16" variant only (what SDXL repos ship; load_pipeline and a tutorial's
    # `variant="fp16"` read them); fp32 files as the default ones.
    save = dict(safe_serialization=True, variant="fp16" if dtype == torch.float16 else None)
    tokenizer = save_clip_tokenizer(directory / "tokenizer")
    tokenizer_2 = save_clip_tokenizer(directory / "tokenizer_2")  # the same offline vocabulary, as tiny-xl's
    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    with torch.device(device):  # random init on a GPU takes a second; 3.5B parameters on one CPU core, a minute
        parts = dict(vae=AutoencoderKL(**vae_cfg), text_encoder=CLIPTextModel(CLIPTextConfig(**text_cfg, **ids)),
                     text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**text_2_cfg, **ids)))
    pipe = StableDiffusionXLPipeline(
        tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=None,
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                         steps_offset=1, timestep_spacing="leading"),
        add_watermarker=False, **{k: m.to(dtype) for k, m in parts.items()})
    pipe.save_pretrained(directory, **save)
    del pipe, parts
    with torch.device(device):
        unet = UNet2DConditionModel(**unet_cfg)
    unet.to(dtype).save_pretrained(directory / "unet", **save)
    index = json.loads((directory / "model_index.json").read_text())
    index["unet"] = ["diffusers", "UNet2DConditionModel"]  # saved without it above
    (directory / "model_index.json").write_text(json.dumps(index, indent=2))


def sdxl_path(shapes: str = "sdxl", seed: int = 0, dtype: torch.dtype = torch.float32, device: str = "cpu") -> Path:
    """Directory of a random-weight SDXL-shaped pipeline ("sdxl": real shapes; "sdxl-tiny": the same structure at
    toy width), built on first use on `device`; fp16 is saved as the "fp16" variant only."""
    if shapes not in SDXL_SHAPES:
        raise ValueError(f"shapes={shapes!r}: SDXL-shaped bench models are {sorted(SDXL_SHAPES)}")
    if dtype not in (torch.float32, torch.float16):
        raise ValueError(f"dtype={dtype}: saved as fp32 files or an fp16 variant")
    key = hashlib.sha256((inspect.getsource(_save_sdxl) + repr((SDXL_SHAPES[shapes], seed))).encode()).hexdigest()[:12]
    kind = str(device).split(":")[0]  # weights drawn on a GPU differ from a CPU's: another folder
    final = cache_root() / "bench" / f"{shapes}-random-seed{seed}-{str(dtype).replace('torch.', '')}-{kind}-{key}"
    with quiet_hf(messages=True):  # diffusers' notes on casting and a pipeline saved without its UNet
        return build_atomically(final, lambda d: _save_sdxl(Path(d), shapes, seed, dtype, device))


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
    """"sd15" (the SD 1.5-shaped model), "tiny", or fp32 "sdxl" / "sdxl-tiny" (`sdxl_path`)."""
    paths = {"sd15": sd15_path, "tiny": tiny_path, "sdxl": sdxl_path, "sdxl-tiny": lambda: sdxl_path("sdxl-tiny")}
    if name not in paths:
        raise ValueError(f"model={name!r}: bench models are {sorted(paths)}")
    return paths[name]()
