"""What kind of checkpoint a folder holds, read from its `model_index.json` before any weights load, and the
diffusers pipeline class sdkit uses for it and a task.

sdkit runs the UNet families: Stable Diffusion 1.x/2.x ("sd", eps or v-prediction) and SDXL ("sdxl", two
text encoders and a pooled embedding; "sdxl-refiner", the refiner's one encoder and aesthetic score).
Transformer families (SD3, Flux, PixArt...) and video pipelines are refused with their own name, saying what
sdkit supports, instead of failing inside the loader.
"""

from __future__ import annotations

import json
from pathlib import Path

from sdkit.errors import ModelNotAvailable

TASKS = ("text-to-image", "image-to-image", "inpainting")
FAMILIES = ("sd", "sdxl", "sdxl-refiner")

# (family, task) -> diffusers class. The refiner has no text-to-image: it refines a base model's latents or
# an image (`generate(..., refiner=...)`, or img2img).
PIPELINE_CLASSES = {
    ("sd", "text-to-image"): "StableDiffusionPipeline",
    ("sd", "image-to-image"): "StableDiffusionImg2ImgPipeline",
    ("sd", "inpainting"): "StableDiffusionInpaintPipeline",
    ("sdxl", "text-to-image"): "StableDiffusionXLPipeline",
    ("sdxl", "image-to-image"): "StableDiffusionXLImg2ImgPipeline",
    ("sdxl", "inpainting"): "StableDiffusionXLInpaintPipeline",
    ("sdxl-refiner", "image-to-image"): "StableDiffusionXLImg2ImgPipeline",
    ("sdxl-refiner", "inpainting"): "StableDiffusionXLInpaintPipeline",
}
SUPPORTED = ("Stable Diffusion 1.x/2.x (StableDiffusionPipeline and its img2img/inpaint siblings, eps or "
             "v-prediction) and SDXL (StableDiffusionXLPipeline, its refiner and inpainting checkpoints), as "
             "diffusers folders, Hub ids or single .safetensors files")


class UnsupportedModel(ModelNotAvailable):
    """A well-formed checkpoint of a kind sdkit does not run (SD3, Flux, a video model...)."""


def _unsupported(model: str, what: str) -> UnsupportedModel:
    return UnsupportedModel(f"model {model!r} is {what}; sdkit runs {SUPPORTED}")


def family_of_index(index: dict, model: str) -> str:
    """The family a `model_index.json` describes: from its `_class_name`, and for SDXL whether the first text
    encoder is there (the refiner has only the second)."""
    name = index.get("_class_name") or ""
    has_te1 = index.get("text_encoder") not in (None, [None, None])
    if name.startswith("StableDiffusionXL") or "text_encoder_2" in index:
        if "ControlNet" in name or "Adapter" in name:
            raise _unsupported(model, f"a {name} (a ControlNet/adapter pipeline)")
        return "sdxl" if has_te1 else "sdxl-refiner"
    if name.startswith(("StableDiffusionPipeline", "StableDiffusionImg2Img", "StableDiffusionInpaint")) or (
            not name and "unet" in index):
        return "sd"
    if not name:
        raise _unsupported(model, f"a pipeline folder whose model_index.json names no _class_name and no unet "
                                  f"(components: {sorted(k for k in index if not k.startswith('_'))})")
    if "transformer" in index:
        raise _unsupported(model, f"a {name}: a transformer (DiT) model, not a UNet one")
    if "Video" in name or "motion_adapter" in index:
        raise _unsupported(model, f"a {name}: a video model")
    raise _unsupported(model, f"a {name}")


def family_of(path: Path, model: str) -> str:
    """The family of the diffusers folder `path` (`model` names it in errors)."""
    file = Path(path) / "model_index.json"
    try:
        index = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise ModelNotAvailable(f"model {model!r}: cannot read {file} ({type(e).__name__}: {e})") from None
    if not isinstance(index, dict):
        raise ModelNotAvailable(f"model {model!r}: {file} is not a JSON object")
    return family_of_index(index, model)


def unet_setting(path: Path, name: str, model: str = "") -> int:
    """An integer of the UNet's config.json (`in_channels`, `cross_attention_dim`), read without loading it."""
    file = Path(path) / "unet" / "config.json"
    try:
        return int(json.loads(file.read_text())[name])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelNotAvailable(f"model {model or str(path)!r}: cannot read the UNet's {name} from {file} "
                                f"({type(e).__name__}: {e})") from None


def check_family_task(family: str, task: str, model: str) -> None:
    """Refuse a task the family has no pipeline for (a refiner drawing from text alone)."""
    if task not in TASKS:
        raise ValueError(f"task={task!r}: choose one of {list(TASKS)}")
    if (family, task) not in PIPELINE_CLASSES:
        can = [t for f, t in PIPELINE_CLASSES if f == family]
        raise ValueError(f"{model!r} is an SDXL refiner: it refines images and latents ({can}), it does not draw "
                         f"from text alone. Load it with task='image-to-image' and pass it to generate(..., "
                         "refiner=...) after an SDXL base model")


def check_task(task: str, path: Path, model: str, family: str = "sd") -> None:
    """Refuse a task the checkpoint cannot do, before loading it."""
    check_family_task(family, task, model)
    channels = unet_setting(path, "in_channels", model)
    if channels == 9 and task != "inpainting":
        raise ValueError(
            f"{model!r} is an inpainting checkpoint (its UNet takes 9 input channels: latents, mask and masked "
            f"image), so it cannot do {task!r}. Use task='inpainting', or a text-to-image checkpoint such as "
            "'stable-diffusion-v1-5/stable-diffusion-v1-5'."
        )
    if channels not in (4, 9):
        raise ValueError(f"{model!r}: a UNet with {channels} input channels is not a Stable Diffusion layout")


def pipeline_class(family: str, task: str):
    """The diffusers class for `family` and `task`."""
    import diffusers

    return getattr(diffusers, PIPELINE_CLASSES[family, task])


def family_of_pipeline(pipe) -> str:
    """The family of a loaded pipeline (one sdkit did not load too): from its components."""
    if getattr(pipe, "unet", None) is None:
        raise _unsupported(type(pipe).__name__, f"a {type(pipe).__name__} with no UNet")
    if hasattr(pipe, "text_encoder_2"):
        return "sdxl" if getattr(pipe, "text_encoder", None) is not None else "sdxl-refiner"
    return "sd"
