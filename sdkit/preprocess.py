"""CLIP image preprocessing in numpy/PIL, step for step as transformers' CLIPImageProcessor (PIL backend).

Resize the shortest side (PIL bicubic on uint8), center crop (zero padding if too
small), rescale by 1/255 in float64, normalize with the CLIP mean/std in float32.
Matching the reference bit for bit matters: scores of two backends then differ
only by the model, never by the pixels fed to it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImageConfig:
    """The fields of `preprocessor_config.json` that CLIP uses; defaults are OpenAI CLIP's."""

    do_resize: bool = True
    shortest_edge: int | None = 224  # resize so the short side is this (aspect kept)...
    size: tuple[int, int] | None = None  # ...or to exactly (height, width) when set
    resample: int = Image.Resampling.BICUBIC
    do_center_crop: bool = True
    crop_size: tuple[int, int] = (224, 224)  # (height, width)
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = OPENAI_CLIP_STD
    do_convert_rgb: bool = True

    @classmethod
    def from_dict(cls, d: dict) -> "ImageConfig":
        # Hub configs spell sizes three ways: 224, {"shortest_edge": 224}, {"height":..,"width":..}.
        kw: dict = {}
        size = d.get("size", 224)
        if isinstance(size, int):
            kw["shortest_edge"] = size
        elif "shortest_edge" in size:
            kw["shortest_edge"] = int(size["shortest_edge"])
        elif "height" in size and "width" in size:
            kw["shortest_edge"], kw["size"] = None, (int(size["height"]), int(size["width"]))
        else:
            raise ValueError(f"preprocessor size {size!r} is not supported; expected an int, "
                             "{'shortest_edge': n} or {'height': h, 'width': w}")
        crop = d.get("crop_size", 224)
        kw["crop_size"] = (crop, crop) if isinstance(crop, int) else (int(crop["height"]), int(crop["width"]))
        for key in ("do_resize", "do_center_crop", "do_rescale", "do_normalize", "do_convert_rgb"):
            if key in d:
                kw[key] = bool(d[key])
        if "resample" in d:
            kw["resample"] = int(d["resample"])
        if "rescale_factor" in d:
            kw["rescale_factor"] = float(d["rescale_factor"])
        for key in ("image_mean", "image_std"):
            if key in d:
                v = d[key]
                kw[key] = tuple(float(x) for x in (v if isinstance(v, (list, tuple)) else [v] * 3))
        return cls(**kw)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "ImageConfig":
        """Read `preprocessor_config.json` from a checkpoint directory; OpenAI's defaults if it has none."""
        file = os.path.join(path, "preprocessor_config.json")
        if not os.path.exists(file):
            return cls()
        with open(file) as f:
            return cls.from_dict(json.load(f))


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with transparency composited on white (as transformers does), not dropped."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def _resize_size(width: int, height: int, config: ImageConfig) -> tuple[int, int]:
    """(width, height) after resizing; int() truncation as in transformers/torchvision."""
    if config.size is not None:
        return config.size[1], config.size[0]
    s = config.shortest_edge
    if width <= height:
        return s, int(s * height / width)
    return int(s * width / height), s


def _center_crop(x: np.ndarray, crop: tuple[int, int]) -> np.ndarray:
    """Center crop an (H, W, C) array, zero-padding sides that are too small."""
    ch, cw = crop
    h, w = x.shape[:2]
    if h < ch or w < cw:
        nh, nw = max(h, ch), max(w, cw)
        top, left = math.ceil((nh - h) / 2), math.ceil((nw - w) / 2)
        padded = np.zeros((nh, nw) + x.shape[2:], x.dtype)
        padded[top:top + h, left:left + w] = x
        x, h, w = padded, nh, nw
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[top:top + ch, left:left + cw]


def preprocess_image(image: Image.Image, config: ImageConfig = ImageConfig()) -> np.ndarray:
    """One PIL image -> float32 (3, H, W) pixel values for CLIP."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL.Image.Image, got {type(image).__name__}")
    if config.do_convert_rgb:
        image = to_rgb(image)
    if config.do_resize:
        image = image.resize(_resize_size(*image.size, config), resample=config.resample)
    x = np.asarray(image)
    if x.ndim == 2:
        x = x[:, :, None]
    if config.do_center_crop:
        x = _center_crop(x, config.crop_size)
    x = x.astype(np.float64) * config.rescale_factor if config.do_rescale else x.astype(np.float64)
    x = x.astype(np.float32)
    if config.do_normalize:
        x = (x - np.asarray(config.image_mean, np.float32)) / np.asarray(config.image_std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess(images: Sequence[Image.Image], config: ImageConfig = ImageConfig()) -> np.ndarray:
    """A batch of PIL images -> float32 (N, 3, H, W), as `CLIPImageProcessor(...)["pixel_values"]`."""
    return np.stack([preprocess_image(im, config) for im in images])
