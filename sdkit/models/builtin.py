"""The built-in model registry: the only place that knows sdkit's own models (`sdkit:tiny`,
`sdkit:tiny-inpainting`, `sdkit:toy`), where they are built, and which CLIP belongs with a model; and what a
model wants by default, found from its config files alone: native size, steps, guidance, prompts.

Nothing here loads weights or downloads; defaults are read without training either: the explorer asks when
it opens, and opening must be instant (for the toy world, before it is even trained).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# The tutorials' settings for Stable Diffusion 1.x, and those `sdkit.toy.adherence` measures the toy world with
# (it was trained with little guidance: at 7.5 its shapes burn out).
SD_STEPS, SD_GUIDANCE = 30, 7.5
TUTORIAL_CLIP = "openai/clip-vit-base-patch32"  # sdkit.scoring.scorers.DEFAULT_CLIP (tested), named without importing JAX
TOY_STEPS, TOY_GUIDANCE = 20, 2.0
BUILTIN = ("sdkit:tiny", "sdkit:tiny-inpainting", "sdkit:tiny-xl", "sdkit:tiny-xl-inpainting", "sdkit:tiny-xl-refiner",
           "sdkit:toy")
# SDXL: diffusers' default guidance for it (its model card's examples use 5-7), and the steps sdkit uses for SD.
XL_GUIDANCE = 5.0


@dataclass(frozen=True)
class ModelDefaults:
    size: int | None  # native height = width in pixels; None if the configs cannot be read
    num_inference_steps: int
    guidance_scale: float
    prompt: str  # a prompt it can draw ("" when it can draw anything)
    hint: str  # what it can draw, in a sentence ("" when it can draw anything)


def local_folder(model: str) -> Path | None:
    """`model` as an existing local folder, else None."""
    if not isinstance(model, str) or not model.strip() or model.startswith("sdkit:"):
        return None
    path = Path(model.strip()).expanduser()
    return path if path.is_dir() else None


def is_toy_world(model: str) -> bool:
    """"sdkit:toy", or a toy world's `pipeline/` folder (it has `world.json` beside it)."""
    if model == "sdkit:toy":
        return True
    path = local_folder(model)
    return path is not None and (path.parent / "world.json").is_file()


def _config(model: str, name: str) -> dict | None:
    """A config file (`unet/config.json`, `model_index.json`) of a local folder, a built-in tiny model, or a Hub id
    already in the cache."""
    if model.startswith("sdkit:tiny"):
        if model not in BUILTIN:
            return None
        file = builtin_pipeline_path(model) / name  # built on first use: about a second, a few MB
    elif (folder := local_folder(model)) is not None:
        file = folder / name
    elif model.startswith("sdkit:"):
        return None
    else:  # a Hub id: only what the cache already holds, never the network
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model, name)
        if not isinstance(found, str):
            return None
        file = Path(found)
    return json.loads(file.read_text()) if file.is_file() else None


def native_size(model: str) -> int | None:
    """UNet sample_size x VAE scale factor (what diffusers uses when no size is given), from config files only."""
    if model == "sdkit:toy":
        from sdkit.toy.shapes import IMAGE_SIZE

        return IMAGE_SIZE  # the size it is trained at; asking its config would train it first (minutes)
    try:
        unet = _config(model, "unet/config.json")
        if unet is None or not isinstance(unet.get("sample_size"), int):
            return None
        vae = _config(model, "vae/config.json") or {}
        levels = len(vae.get("block_out_channels", (0, 0, 0, 0)))  # diffusers: 2 ** (levels - 1); SD 1.x has 4
        return unet["sample_size"] * 2 ** (levels - 1)
    except Exception:  # an unreadable config only costs the hint: generation uses the pipeline's own size
        return None


def toy_hint() -> str:
    from sdkit.toy.shapes import COLORS, SHAPES

    return (f"The toy world draws one shape on black: 'a <colour> <shape>' with colour {' / '.join(COLORS)} "
            f"and shape {' / '.join(SHAPES)}; other prompts give noise.")


def defaults_for(model: str) -> ModelDefaults:
    """Settings that give good pictures with `model`, for a panel's first open."""
    if is_toy_world(model):
        from sdkit.toy.shapes import PROMPTS

        return ModelDefaults(native_size(model), TOY_STEPS, TOY_GUIDANCE, PROMPTS[0], toy_hint())
    try:
        xl = str((_config(model, "model_index.json") or {}).get("_class_name", "")).startswith("StableDiffusionXL")
    except Exception:  # an unreadable index only costs the default guidance
        xl = False
    return ModelDefaults(native_size(model), SD_STEPS, XL_GUIDANCE if xl else SD_GUIDANCE, "", "")


def default_clip_label(model: str) -> str:
    """Which CLIP `clip_for(model)` will pick, said without building or downloading it."""
    if model.startswith("sdkit:tiny"):
        return "sdkit's tiny CLIP"
    if model == "sdkit:toy":
        return "the toy world's clip/"
    return clip_beside(model) or TUTORIAL_CLIP


def clip_beside(model: str) -> str | None:
    """The CLIP shipped beside a local model folder, as a toy world lays them out (`<world>/pipeline`,
    `<world>/clip`); None if there is none."""
    if not isinstance(model, str) or not model.strip() or model.startswith("sdkit:"):
        return None
    folder = Path(model.strip()).expanduser()
    clip = folder.parent / "clip"
    return str(clip) if folder.is_dir() and (clip / "config.json").is_file() else None


def clip_for(model: str) -> str:
    """The CLIP that belongs with a model: the tiny random CLIP for tiny models, the toy world's own CLIP
    (also for a folder with a `clip/` beside it), else the tutorial's `openai/clip-vit-base-patch32`."""
    if model.startswith("sdkit:tiny"):
        from sdkit.models.tiny_clip import tiny_clip_path

        return str(tiny_clip_path())
    if model == "sdkit:toy":
        from sdkit.toy.world import toy_world_path

        return str(Path(toy_world_path()) / "clip")
    beside = clip_beside(model)
    if beside is not None:
        return beside
    return TUTORIAL_CLIP


def builtin_pipeline_path(model: str) -> Path:
    """The folder of a built-in pipeline, built (or, for the toy world, unpacked) on first use."""
    from sdkit.models.tiny import tiny_pipeline_path

    if model == "sdkit:tiny":
        return tiny_pipeline_path("text-to-image")
    if model == "sdkit:tiny-inpainting":
        return tiny_pipeline_path("inpainting")
    if model.startswith("sdkit:tiny-xl"):
        from sdkit.models.tiny_xl import tiny_xl_pipeline_path

        kind = {"sdkit:tiny-xl": "text-to-image", "sdkit:tiny-xl-inpainting": "inpainting",
                "sdkit:tiny-xl-refiner": "refiner"}.get(model)
        if kind is not None:
            return tiny_xl_pipeline_path(kind)
    if model == "sdkit:toy":
        from sdkit.toy.world import toy_world_path

        return Path(toy_world_path()) / "pipeline"
    raise ValueError(f"model={model!r}: built-in models are {list(BUILTIN)}")
