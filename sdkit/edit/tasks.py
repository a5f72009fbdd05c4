"""Image-to-image, inpainting and outpainting as N seeded candidates, exactly like text-to-image.

Each task first prepares its inputs (load, check, fit to multiples of 8), before any
model work, then runs `sdkit.generation.generate` with the image and mask as
`pipe_kwargs` and its settings as `extra`: seeds, batching, cancelling, saving,
metadata and ranking are text-to-image's. Results come back at the original size.

Kept pixels stay kept: the VAE round trip changes every pixel a little (diffusers'
inpaint pipeline does not promise otherwise), so each result is pasted back onto the
original with the feathered mask before it is saved. Outside the (grown, unfeathered)
mask the result is bit-identical to the input. About 300 lines: the three tasks share preparing, the
finishing wrapper and `redo`, which remakes any of them from its record.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from PIL import Image

from sdkit.results import Run
from sdkit.generation import generate
from sdkit.edit.masks import (Fit, box_mask, check_mask, check_mask_blur, check_mask_grow, feather_mask, fit_size,
                              from_working, grow_mask, is_box, load_image, load_mask, outpaint_canvas, paste_back,
                              to_working)
from sdkit.load.state import pipeline_info, remember
from sdkit.save import image_hash

DEFAULT_STEPS = inspect.signature(generate).parameters["num_inference_steps"].default
_OURS = ("image", "mask_image", "strength", "height", "width")


@dataclass
class EditInputs:
    """An edit's inputs, loaded and checked: everything but the model."""

    task: str  # "image-to-image" or "inpainting" (outpainting is inpainting on a bigger canvas)
    image: Image.Image  # what the pipeline gets, at the working size
    mask_image: Image.Image | None  # the hard (grown) mask at the working size; None for image-to-image
    original: Image.Image  # the init image (the extended canvas, for outpainting) at the original size
    blend: np.ndarray | None  # paste-back weights at the original size: 0 = kept bit for bit
    fit: Fit
    strength: float
    extra: dict = field(default_factory=dict)  # recorded in every candidate's metadata

    def finish(self, image: Image.Image, nsfw: bool = False) -> Image.Image:
        """A pipeline output -> the result: original size, kept pixels pasted back."""
        if nsfw:  # keep the safety checker's black image whole; pasting back would un-black part of it
            return Image.new("RGB", self.fit.size)
        image = from_working(image, self.fit)
        return image if self.blend is None else paste_back(self.original, image, self.blend)


def check_strength(strength, num_inference_steps=DEFAULT_STEPS) -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise ValueError(f"strength={strength!r}: must be in (0, 1]; 1 repaints fully, img2img usually uses 0.5-0.8")
    if isinstance(num_inference_steps, int) and int(num_inference_steps * strength) < 1:
        raise ValueError(f"strength={strength} with num_inference_steps={num_inference_steps} runs "
                         f"int({num_inference_steps} * {strength}) = 0 denoising steps; raise one of them")
    return float(strength)


def prepare_img2img(image, *, strength: float = 0.75, num_inference_steps: int = DEFAULT_STEPS,
                    height: int | None = None, width: int | None = None, resize_mode: str = "pad") -> EditInputs:
    """Load and check an image-to-image job (see `img2img`)."""
    strength = check_strength(strength, num_inference_steps)
    original = load_image(image)
    fit = fit_size(original.size, height=height, width=width, resize_mode=resize_mode)
    extra = {"strength": strength, "init_image_hash": image_hash(original), "image_size": list(original.size),
             "resize_mode": fit.mode}
    return EditInputs("image-to-image", to_working(original, fit), None, original, None, fit, strength, extra)


def _prepare_masked(original, mask, *, strength, mask_blur, mask_grow, height, width, resize_mode, what, extra):
    """Shared by inpainting and outpainting: grow, check, feather, fit."""
    grown = grow_mask(mask, mask_grow)
    if mask_grow < 0:
        try:
            check_mask(grown, f"mask_image after mask_grow={mask_grow}")
        except ValueError as e:
            raise ValueError(f"{e} Shrink less.") from None
    fit = fit_size(original.size, height=height, width=width, resize_mode=resize_mode)
    working_mask = to_working(grown, fit, is_mask=True)
    if fit.mode == "resize":
        try:
            check_mask(working_mask, f"{what} resized to {fit.working[0]}x{fit.working[1]}")
        except ValueError as e:
            raise ValueError(f"{e} The mask is too thin to survive resizing: grow it, or use resize_mode='pad'.") from None
    extra.update({"strength": strength, "mask_blur": mask_blur, "mask_grow": mask_grow,
                  "image_size": list(original.size), "resize_mode": fit.mode})
    return EditInputs("inpainting", to_working(original, fit), working_mask, original,
                      feather_mask(grown, mask_blur), fit, strength, extra)


def prepare_inpaint(image, mask_image, *, strength: float = 1.0, mask_blur: int = 4, mask_grow: int = 0,
                    resize_mask: bool = False, num_inference_steps: int = DEFAULT_STEPS, height: int | None = None,
                    width: int | None = None, resize_mode: str = "pad") -> EditInputs:
    """Load and check an inpainting job (see `inpaint`)."""
    strength = check_strength(strength, num_inference_steps)
    mask_blur, mask_grow = check_mask_blur(mask_blur), check_mask_grow(mask_grow)
    original = load_image(image)
    extra = {}
    if is_box(mask_image):
        extra["mask_box"] = [int(v) for v in mask_image]
        mask = box_mask(original.size, mask_image, "mask_image")
    else:
        mask = load_mask(mask_image)
    extra["init_image_hash"] = image_hash(original)
    extra["mask_hash"] = image_hash(mask)
    if mask.size != original.size:
        if not resize_mask:
            raise ValueError(f"mask_image is {mask.width}x{mask.height} but image is {original.width}x{original.height} "
                             "(width x height); give a mask of the same size, or resize_mask=True to stretch it")
        mask = mask.resize(original.size, Image.Resampling.NEAREST)
        extra["resize_mask"] = True
    check_mask(mask)
    return _prepare_masked(original, mask, strength=strength, mask_blur=mask_blur, mask_grow=mask_grow, height=height,
                           width=width, resize_mode=resize_mode, what="mask_image", extra=extra)


def prepare_outpaint(image, *, left: int = 0, right: int = 0, top: int = 0, bottom: int = 0, strength: float = 1.0,
                     mask_blur: int = 8, mask_grow: int = 8, num_inference_steps: int = DEFAULT_STEPS,
                     height: int | None = None, width: int | None = None, resize_mode: str = "pad") -> EditInputs:
    """Load and check an outpainting job (see `outpaint`)."""
    strength = check_strength(strength, num_inference_steps)
    mask_blur, mask_grow = check_mask_blur(mask_blur), check_mask_grow(mask_grow)
    if mask_grow < 0:
        raise ValueError(f"mask_grow={mask_grow}: outpainting grows the new area into the image to make a seam; "
                         "use 0 or more")
    source = load_image(image)
    canvas, mask = outpaint_canvas(source, left=left, right=right, top=top, bottom=bottom)
    extra = {"outpaint": f"left={left} right={right} top={top} bottom={bottom}", "init_image_hash": image_hash(source),
             "mask_hash": image_hash(mask)}
    return _prepare_masked(canvas, mask, strength=strength, mask_blur=mask_blur, mask_grow=mask_grow, height=height,
                           width=width, resize_mode=resize_mode, what="outpaint mask", extra=extra)


def pipeline_for(pipe, task: str):
    """`pipe` as a pipeline for `task`, sharing its weights (diffusers' `from_pipe`, no reload)."""
    from sdkit.load.kinds import check_family_task, family_of_pipeline, pipeline_class

    info = pipeline_info(pipe)
    family = family_of_pipeline(pipe)
    channels = pipe.unet.config.in_channels
    if channels == 9 and task != "inpainting":
        raise ValueError(f"{info.model_id or type(pipe).__name__!r} is an inpainting checkpoint (9-channel UNet); "
                         f"it cannot do {task!r}. Use inpaint()/outpaint(), or a text-to-image checkpoint.")
    check_family_task(family, task, info.model_id or type(pipe).__name__)
    cls = pipeline_class(family, task)
    if isinstance(pipe, cls):
        return pipe
    from sdkit.quiet import quiet_hf

    with quiet_hf(messages=True):
        new = cls.from_pipe(pipe)
    new.set_progress_bar_config(disable=True)
    remember(new, **{**vars(info), "task": task})  # vars: a shallow copy (asdict would turn its Loras into dicts)
    return new


class _Finishing:
    """The pipeline, with each output image finished (original size, paste-back) before `generate` saves it."""

    def __init__(self, pipe, inputs: EditInputs):
        self.pipeline, self._inputs = pipe, inputs  # `pipeline`: what sdkit.load.state describes it by

    def __getattr__(self, name):
        return getattr(self.pipeline, name)

    def __call__(self, **kwargs):
        # One copy per candidate: given a single image, diffusers' inpaint pipeline VAE-encodes it with
        # the batch's first generator only, so candidate k would depend on which batch it is in.
        k = len(kwargs["generator"])
        for name in ("image", "mask_image"):
            if name in kwargs:
                kwargs[name] = [kwargs[name]] * k
        result = self.pipeline(**kwargs)
        flags = getattr(result, "nsfw_content_detected", None) or [False] * len(result.images)  # SDXL: no checker
        result.images = [self._inputs.finish(im, bool(f)) for im, f in zip(result.images, flags)]
        return result


def run_edit(pipe, prompt: str | Sequence[str], inputs: EditInputs, *, pipe_kwargs: dict | None = None,
             extra: dict | None = None, **kwargs) -> Run:
    """Generate candidates for prepared `inputs`; `kwargs` go to `generate` (n, seed, seeds, ...)."""
    for k in ("height", "width"):
        if k in kwargs:
            raise TypeError(f"{k}= is decided by the image; pass it to prepare_*(), img2img(), inpaint() or outpaint()")
    clash = sorted(set(pipe_kwargs or {}) & set(_OURS))
    if clash:
        raise ValueError(f"pipe_kwargs sets {clash}; these come from the task's own arguments")
    pipe = pipeline_for(pipe, inputs.task)
    call = {"image": inputs.image, "strength": inputs.strength, **(pipe_kwargs or {})}
    if inputs.mask_image is not None:
        call["mask_image"] = inputs.mask_image
    width, height = inputs.fit.working
    return generate(_Finishing(pipe, inputs), prompt, height=height, width=width, pipe_kwargs=call,
                    extra={**(extra or {}), **inputs.extra}, **kwargs)


def img2img(pipe, prompt: str | Sequence[str], image, *, strength: float = 0.75, height: int | None = None,
            width: int | None = None, resize_mode: str = "pad", **kwargs) -> Run:
    """Image-to-image: N seeded candidates that start from `image` noised to `strength`.

    Args:
        pipe: any pipeline from `load_pipeline` of a text-to-image checkpoint; its weights are reused.
        prompt: one prompt or a list; each gets `n` candidates.
        image: PIL image, numpy array or file path.
        strength: in (0, 1]: how much noise is added; 1 ignores the image's content. Runs
            int(num_inference_steps * strength) denoising steps.
        height, width: work at this size (multiples of 8; both or neither); the result is resized back.
            Default: the image's own size.
        resize_mode: for sizes that are not multiples of 8: "pad" (default: repeat the edge pixels
            right/bottom, cut them off after; no resampling) or "resize" (to the nearest multiple
            of 8 and back). Results always have the image's original size.
        **kwargs: as in `generate` (n, seed, seeds, negative_prompt, num_inference_steps,
            guidance_scale, batch_size, output_dir, run_id, callback, cancel, progress, pipe_kwargs, extra).
            To search over an edit, prepare it (`prepare_img2img`, ...) and hand it to a strategy of `sdkit.search`
            as `edit=`; its steps (prune_at, draft_steps) count the steps that run.
    """
    inputs = prepare_img2img(image, strength=strength, num_inference_steps=kwargs.get("num_inference_steps", DEFAULT_STEPS),
                             height=height, width=width, resize_mode=resize_mode)
    return run_edit(pipe, prompt, inputs, **kwargs)


def inpaint(pipe, prompt: str | Sequence[str], image, mask_image, *, strength: float = 1.0, mask_blur: int = 4,
            mask_grow: int = 0, resize_mask: bool = False, height: int | None = None, width: int | None = None,
            resize_mode: str = "pad", **kwargs) -> Run:
    """Inpainting: repaint the white part of `mask_image`, keep the black part bit for bit.

    Args:
        pipe: a pipeline from `load_pipeline`: a 9-channel inpainting checkpoint (best) or any
            text-to-image one (diffusers blends the latents outside the mask); weights are reused.
        image: PIL image, numpy array or file path. A white image with an all-white mask
            generates from scratch (the tutorial's blank canvas).
        mask_image: PIL image (any mode), numpy array, file path, or a (left, top, right, bottom)
            box. White (>= 128) = repaint, black = keep; transparent = keep.
        strength: in (0, 1]; 1 (default) ignores what is under the mask.
        mask_blur: feather width in pixels. The feather runs inwards from the mask's edge, so
            nothing outside the mask changes (default 4, A1111's default blur).
        mask_grow: grow the mask by this many pixels (negative shrinks) before anything else.
        resize_mask: stretch a mask of another size to the image's; otherwise that is an error.
        height, width, resize_mode, **kwargs: as in `img2img`.
    """
    inputs = prepare_inpaint(image, mask_image, strength=strength, mask_blur=mask_blur, mask_grow=mask_grow,
                             resize_mask=resize_mask, num_inference_steps=kwargs.get("num_inference_steps", DEFAULT_STEPS),
                             height=height, width=width, resize_mode=resize_mode)
    return run_edit(pipe, prompt, inputs, **kwargs)


def outpaint(pipe, prompt: str | Sequence[str], image, *, left: int = 0, right: int = 0, top: int = 0, bottom: int = 0,
             strength: float = 1.0, mask_blur: int = 8, mask_grow: int = 8, height: int | None = None,
             width: int | None = None, resize_mode: str = "pad", **kwargs) -> Run:
    """Outpainting: extend the canvas by `left`/`right`/`top`/`bottom` pixels and paint the new area.

    The mask is the new area grown `mask_grow` pixels into the image; the result is blended
    across that band with a `mask_blur`-pixel feather, so the seam is smooth. With the
    defaults (8 and 8) the new area is fully generated and the outer 8 pixels of the image
    are cross-faded. The canvas may be at most `sdkit.edit.masks.MAX_SIDE` pixels per side.
    Other arguments as in `inpaint`; results have the canvas size.
    """
    inputs = prepare_outpaint(image, left=left, right=right, top=top, bottom=bottom, strength=strength,
                              mask_blur=mask_blur, mask_grow=mask_grow,
                              num_inference_steps=kwargs.get("num_inference_steps", DEFAULT_STEPS),
                              height=height, width=width, resize_mode=resize_mode)
    return run_edit(pipe, prompt, inputs, **kwargs)


def redo(pipe, record: dict, image, mask_image=None, **kwargs) -> Run:
    """Make a recorded edit candidate again: its seed and settings from `record` (a PNG's metadata, a manifest
    line, a search's pruned record), its init image (and mask) from you; they must be the recorded ones (hashes).

    `kwargs` go to `generate` (e.g. output_dir, extra, progress); the candidate is made at the recorded steps.
    """
    ex = dict(record.get("extra") or {})
    task = record.get("task", "text-to-image")
    steps = record["num_inference_steps"]
    # The recorded mode is the fit's ("none", "pad", "resize"); a resize worked at the recorded size.
    resized = ex.get("resize_mode") == "resize"
    size = dict(height=record["height"], width=record["width"]) if resized else {}
    common = dict(strength=ex.get("strength", 1.0), num_inference_steps=steps,
                  resize_mode="resize" if resized else "pad", **size)
    if task == "image-to-image":
        inputs = prepare_img2img(image, **common)
    elif task == "inpainting" and "outpaint" in ex:
        sides = {k: int(v) for k, v in (kv.split("=") for kv in ex["outpaint"].split())}
        inputs = prepare_outpaint(image, mask_blur=ex["mask_blur"], mask_grow=ex["mask_grow"], **sides, **common)
    elif task == "inpainting":
        mask = mask_image if mask_image is not None else ex.get("mask_box")
        if mask is None:
            raise ValueError("the record is an inpainting with a mask image, recorded only as a hash: pass mask_image=")
        inputs = prepare_inpaint(image, mask, mask_blur=ex["mask_blur"], mask_grow=ex["mask_grow"],
                                 resize_mask=ex.get("resize_mask", False), **common)
    else:
        raise ValueError(f"task={task!r}: redo() remakes edits (image-to-image, inpainting); use sdkit.regenerate")
    for name in ("init_image_hash", "mask_hash"):
        if ex.get(name) and inputs.extra.get(name) != ex[name]:
            what = "image" if name == "init_image_hash" else "mask_image"
            raise ValueError(f"{what} is not the recorded one: its hash is {inputs.extra.get(name)}, the record's "
                             f"{ex[name]}")
    kept = {k: v for k, v in ex.items() if k not in inputs.extra}  # e.g. a search's record
    kwargs["extra"] = {**kept, **(kwargs.get("extra") or {})}
    return run_edit(pipe, record["prompt"], inputs, n=1, seeds=[record["seed"]],
                    negative_prompt=record.get("negative_prompt"), num_inference_steps=steps,
                    guidance_scale=record["guidance_scale"], **kwargs)
