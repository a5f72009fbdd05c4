"""CLIP image preprocessing in numpy/PIL, step for step as transformers' CLIPImageProcessor (PIL backend).

Resize the shortest side (PIL bicubic on uint8), center crop (zero padding if too
small), rescale by 1/255 in float64, normalize with the CLIP mean/std in float32.
Matching the reference bit for bit matters: scores of two backends then differ
only by the model, never by the pixels fed to it. About 300 lines: the PIL and the tensor paths are one
recipe, kept side by side so that they stay the same step for step.
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from sdkit.images import to_rgb

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


# --- the same preprocessing on a torch tensor, on its own device -----------------------------------------
#
# Pillow resizes 8-bit images in two passes (one per axis), each a weighted sum with fixed-point
# coefficients (22 fractional bits) rounded and clipped back to uint8 (libImaging/Resample.c). Below, the
# same coefficients are computed the same way and applied as a float64 matrix product: every product is an
# integer below 2**30 and every sum below 2**35, exact in float64, so the result is Pillow's bit for bit and
# scores of a tensor batch equal those of its PIL images exactly. Which pass comes first matters (the
# intermediate is rounded) and differs between Pillow versions (13 runs the vertical one first for some
# sizes), so it is read off Pillow itself, once per size, on a probe image (`_pil_pass_order`).

_PIL_PRECISION_BITS = 32 - 8 - 2


def _box(x):
    return 1.0 if -0.5 < x <= 0.5 else 0.0


def _bilinear(x):
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


_F054, _F046 = float(np.float32(0.54)), float(np.float32(0.46))  # Pillow writes 0.54f, 0.46f


def _hamming(x):
    x = abs(x)
    if x == 0.0:
        return 1.0
    if x >= 1.0:
        return 0.0
    x *= math.pi
    return math.sin(x) / x * (_F054 + _F046 * math.cos(x))


def _bicubic(x, a=-0.5):
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def _sinc(x):
    if x == 0.0:
        return 1.0
    x *= math.pi
    return math.sin(x) / x


def _lanczos(x):
    return _sinc(x) * _sinc(x / 3) if -3.0 <= x < 3.0 else 0.0


# PIL resample id -> (filter, support), as Pillow defines them.
_PIL_FILTERS = {
    Image.Resampling.BOX: (_box, 0.5), Image.Resampling.BILINEAR: (_bilinear, 1.0),
    Image.Resampling.HAMMING: (_hamming, 1.0), Image.Resampling.BICUBIC: (_bicubic, 2.0),
    Image.Resampling.LANCZOS: (_lanczos, 3.0),
}


@functools.lru_cache(maxsize=64)
def pil_resize_weights(in_size: int, out_size: int, resample: int = Image.Resampling.BICUBIC) -> np.ndarray:
    """(out_size, in_size) integer weights of Pillow's 8-bit resize along one axis (value = weight * 2**22)."""
    if resample not in _PIL_FILTERS:
        raise ValueError(f"resample={resample!r}: tensor preprocessing supports PIL's BOX, BILINEAR, HAMMING, "
                         "BICUBIC and LANCZOS filters (NEAREST has no weights to reproduce)")
    filt, support = _PIL_FILTERS[resample]
    scale = filterscale = in_size / out_size
    filterscale = max(filterscale, 1.0)
    support *= filterscale
    w = np.zeros((out_size, in_size), np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # int(): C's truncation toward zero
        xmax = min(int(center + support + 0.5), in_size)
        k = [filt((x + xmin - center + 0.5) / filterscale) for x in range(xmax - xmin)]
        total = sum(k)  # summed in order, as Pillow does
        if total != 0.0:
            k = [v / total for v in k]
        w[xx, xmin:xmax] = [int(v * (1 << _PIL_PRECISION_BITS) + (0.5 if v >= 0 else -0.5)) for v in k]
    w.flags.writeable = False  # cached and shared
    return w


def _resize_pass(levels, weights, axis: int):
    """One of Pillow's passes over `axis` (-1 width, -2 height) of a float64 tensor of uint8 levels."""
    import torch

    w = torch.tensor(weights, dtype=torch.float64, device=levels.device)
    acc = levels @ w.T if axis == -1 else w @ levels
    # Pillow: ss = 2**21 + sum; clip8(ss) = 0 if ss <= 0, 255 if ss >= 256 * 2**22, else ss >> 22.
    return torch.floor((acc + (1 << (_PIL_PRECISION_BITS - 1))) / (1 << _PIL_PRECISION_BITS)).clamp_(0, 255)


def _resize_levels(x, h: int, w: int, new_h: int, new_w: int, resample: int, order: str):
    for axis in order:  # Pillow skips a pass whose size does not change
        if axis == "h" and new_w != w:
            x = _resize_pass(x, pil_resize_weights(w, new_w, resample), -1)
        elif axis == "v" and new_h != h:
            x = _resize_pass(x, pil_resize_weights(h, new_h, resample), -2)
    return x


@functools.lru_cache(maxsize=64)
def _pil_pass_order(h: int, w: int, new_h: int, new_w: int, resample: int) -> str:
    """"hv" or "vh": the pass order with which this Pillow resizes (h, w) to (new_h, new_w), found on a probe."""
    import torch

    probe = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    ref = np.asarray(Image.fromarray(probe).resize((new_w, new_h), resample=resample)).transpose(2, 0, 1)
    x = torch.from_numpy(probe.transpose(2, 0, 1).astype(np.float64))
    for order in ("hv", "vh"):
        if np.array_equal(_resize_levels(x, h, w, new_h, new_w, resample, order).numpy(), ref):
            return order
    import warnings

    warnings.warn(f"this Pillow ({Image.__version__}) resizes {w}x{h} -> {new_w}x{new_h} in a way sdkit does not "
                  "reproduce; tensor batches are scored from pixels that may differ by a level from the PIL path",
                  RuntimeWarning, stacklevel=3)
    return "hv"


def preprocess_tensor(images, config: ImageConfig = ImageConfig()):
    """A float tensor (N, 3, H, W) in [0, 1] (diffusers' `output_type="pt"`) -> float32 (N, 3, h, w) CLIP pixels.

    Runs on the tensor's device and gives exactly what `preprocess` gives for the same images as 8-bit PIL
    images (diffusers' `numpy_to_pil`: round(x * 255)): the same uint8 levels, Pillow's resize reproduced
    bit for bit, the same crop, rescale and normalisation. On MPS (no float64) the arithmetic runs on the CPU.
    """
    import torch

    if not isinstance(images, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"image tensor has shape {tuple(images.shape)}; expected (N, 3, H, W)")
    if not images.is_floating_point():
        raise TypeError(f"image tensor has dtype {images.dtype}; expected a float tensor in [0, 1] "
                        "(diffusers' output_type='pt')")
    device = images.device
    work = torch.device("cpu") if device.type == "mps" else device
    # The 8-bit levels a PIL image of this tensor holds: diffusers' numpy_to_pil rounds x * 255 in float32.
    x = (images.detach().to(work, torch.float32) * 255).round().clamp_(0, 255).to(torch.float64)
    h, w = x.shape[-2:]
    if config.do_resize:
        new_w, new_h = _resize_size(w, h, config)
        order = _pil_pass_order(h, w, new_h, new_w, config.resample) if (new_w, new_h) != (w, h) else ""
        x = _resize_levels(x, h, w, new_h, new_w, config.resample, order)
    if config.do_center_crop:
        x = _center_crop_tensor(x, config.crop_size)
    x = (x * config.rescale_factor if config.do_rescale else x).to(torch.float32)  # float64, then float32: as numpy
    if config.do_normalize:
        mean = torch.tensor(config.image_mean, dtype=torch.float32, device=work).view(-1, 1, 1)
        std = torch.tensor(config.image_std, dtype=torch.float32, device=work).view(-1, 1, 1)
        x = (x - mean) / std
    return x.contiguous().to(device)


def _center_crop_tensor(x, crop: tuple[int, int]):
    """`_center_crop` for (..., H, W) tensors."""
    import torch.nn.functional as F

    ch, cw = crop
    h, w = x.shape[-2:]
    if h < ch or w < cw:
        nh, nw = max(h, ch), max(w, cw)
        top, left = math.ceil((nh - h) / 2), math.ceil((nw - w) / 2)
        x = F.pad(x, (left, nw - w - left, top, nh - h - top))
        h, w = nh, nw
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[..., top:top + ch, left:left + cw]
