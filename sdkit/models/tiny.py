"""Tiny random-weight Stable Diffusion pipelines, saved in the exact Hugging Face layout.

They exist so that notebooks and tests run the same loading code as real Hub
checkpoints, in seconds and a few MB, with no download. Users get them too:
`load_pipeline("sdkit:tiny")` is a model for testing your own notebooks in CI.

The pictures are noise: the weights are random. For pictures that mean
something, see `sdkit.toy` (a world of trained shapes).
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
from pathlib import Path

import torch

from sdkit.models.tokenizer import DEFAULT_WORDS, save_clip_tokenizer
from sdkit.models.cache import build_atomically, build_key, cache_root
from sdkit.quiet import quiet_hf

# Words of the tutorials' prompts get one token each, so those prompts fit the tiny text encoder's 77
# tokens as they fit the real tokenizer's (byte-level spelling would overflow and warn).
TUTORIAL_WORDS = (
    "alice wonderland ultra hd realistic futuristic detailed octane render photoshopped photorealistic soft "
    "pastel aesthetic magical background anime 90's vintage digital sharp focus surrealism akira line "
    "beautiful abstract chesire 3d highly 8k calgary flames winning stanley cup dome moustaches all around "
    "cute little kitty minimalist flowers lots hat watercolor lighthouse dusk garden oil"
).split()
TINY_WORDS = tuple(DEFAULT_WORDS) + tuple(TUTORIAL_WORDS)

TASK_UNET_CHANNELS = {"text-to-image": 4, "inpainting": 9}


def _components(task: str, seed: int, vocab_size: int, eos: int, bos: int):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    # Real SD 1.x block structure at toy width: 2 levels, cross-attention at both.
    unet = UNet2DConditionModel(
        sample_size=8,  # latent 8x8 -> 64x64 images with the VAE below
        in_channels=TASK_UNET_CHANNELS[task],
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    # Four levels so the VAE scale factor is 8, as in every SD 1.x checkpoint.
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
    )
    text_config = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        vocab_size=vocab_size, max_position_embeddings=77, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )
    # A real safety checker at toy size. Its thresholds (concept weights) of 1.0
    # can never be exceeded by a cosine, so nothing is flagged unless a test
    # lowers them.
    checker_config = CLIPConfig(
        text_config=text_config,
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    safety_checker = StableDiffusionSafetyChecker(checker_config)
    feature_extractor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_center_crop=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, scheduler=scheduler,
                safety_checker=safety_checker, feature_extractor=feature_extractor)


def save_tiny_pipeline(save_directory, task: str = "text-to-image", seed: int = 0, fp16_variant: bool = True):
    """Build a tiny random pipeline for `task` and save it like a Hub repo (plus an fp16 variant)."""
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

    _check_task(task)
    save_directory = Path(save_directory)
    tokenizer = save_clip_tokenizer(save_directory / "tokenizer", words=TINY_WORDS)
    parts = _components(task, seed, len(tokenizer), tokenizer.eos_token_id, tokenizer.bos_token_id)
    cls = StableDiffusionInpaintPipeline if task == "inpainting" else StableDiffusionPipeline
    pipe = cls(tokenizer=tokenizer, requires_safety_checker=True, image_encoder=None, **parts)
    return save_pipeline(pipe, save_directory, fp16_variant)


def save_pipeline(pipe, save_directory: Path, fp16_variant: bool) -> Path:
    """Save `pipe` like a Hub repo: fp32 safetensors, and an fp16 variant if asked."""
    if fp16_variant:  # first: the configs written last (fp32) are what plain diffusers' from_pretrained reads
        # a copy: casting there and back would round the fp32 weights to fp16's precision
        copy.deepcopy(pipe).to(torch.float16).save_pretrained(save_directory, safe_serialization=True, variant="fp16")
    pipe.save_pretrained(save_directory, safe_serialization=True)
    return save_directory


def _check_task(task: str) -> None:
    if task not in TASK_UNET_CHANNELS:
        raise ValueError(f"task={task!r}: tiny pipelines exist for {sorted(TASK_UNET_CHANNELS)}")


def tiny_pipeline_path(task: str = "text-to-image", seed: int = 0) -> Path:
    """Directory of the cached tiny pipeline for `task`, built on first use (~1 s, ~2 MB)."""
    _check_task(task)
    key = build_key([sys.modules[__name__], sys.modules[save_clip_tokenizer.__module__]], task, seed)
    with quiet_hf(messages=True):
        return build_atomically(cache_root() / "tiny" / f"sd-{task}-seed{seed}-{key}",
                                lambda d: save_tiny_pipeline(d, task=task, seed=seed))


def install_in_hub_cache(src, repo_id: str, cache_dir, revision: str = "0" * 40) -> Path:
    """Copy a saved model into a Hugging Face Hub cache as `repo_id`, the way `hf download` lays it out.

    With `HF_HUB_CACHE=cache_dir` and `HF_HUB_OFFLINE=1`, `from_pretrained(repo_id)`
    then resolves it through huggingface_hub's real cache lookup.
    """
    repo_dir = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    snap = repo_dir / "snapshots" / revision
    if snap.exists():
        shutil.rmtree(snap)
    shutil.copytree(src, snap)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(revision)
    return snap


def describe(path) -> dict:
    """Sizes of a saved pipeline, for docs and sanity checks."""
    path = Path(path)
    files = [p for p in path.rglob("*") if p.is_file()]
    return {
        "files": len(files),
        "bytes": sum(p.stat().st_size for p in files),
        "components": sorted(json.loads((path / "model_index.json").read_text()).keys() - {"_class_name", "_diffusers_version"}),
    }
