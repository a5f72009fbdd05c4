"""Images and masks for image-to-image, inpainting and outpainting: load, check, grow, feather, fit to size.

Conventions (the inpainting tutorial's and diffusers'): a mask is single-channel,
white = repaint, black = keep. Grey values are thresholded at 128, as diffusers'
mask processor does (`do_binarize`: >= 0.5 is white), so the mask sdkit checks is
the mask the pipeline sees.

Sizes are (width, height) and boxes (left, top, right, bottom), as in PIL. The steps stay in
one module (~300 lines): sdkit.edit.tasks runs them together, in this file's order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

from sdkit.images import to_rgb

# Largest side, in pixels, of the image a pipeline works on (and of an outpainted canvas).
# SD 1.x/2.x were trained at 512-768; at 2048 a 1.5-sized UNet already needs ~10 GB for
# attention. Bigger images: pass height=/width= to work at a smaller size.
MAX_SIDE = 2048

RESIZE_MODES = ("pad", "resize")


# -- loading ---------------------------------------------------------------------------------------

def _open(path, name: str) -> Image.Image:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{name}={str(path)!r}: no such file")
    try:
        with Image.open(path) as im:
            im.load()  # decode now, so a truncated file fails here and not inside the pipeline
            return ImageOps.exif_transpose(im)  # phone photos: honour the rotation the viewer shows
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{name}={str(path)!r} is not a readable image ({type(e).__name__}: {e})") from None


def _as_pil(x, name: str, allowed: str) -> Image.Image:
    """A file path, numpy array or PIL image as a PIL image, in whatever mode it has."""
    if isinstance(x, (str, os.PathLike)):
        return _open(x, name)
    if isinstance(x, np.ndarray):
        return Image.fromarray(_to_uint8(x, name))
    if isinstance(x, Image.Image):
        return x
    raise TypeError(f"{name} must be {allowed}, got {type(x).__name__}")


def load_image(image, name: str = "image") -> Image.Image:
    """A PIL image, numpy array (H, W[, C], uint8 or floats in [0, 1]) or file path -> RGB PIL image.

    Transparency is composited on white (as CLIP's preprocessing does), not dropped.
    """
    image = _as_pil(image, name, "a PIL image, a numpy array or a file path")
    if image.width < 1 or image.height < 1:
        raise ValueError(f"{name} is empty (size {image.size})")
    return to_rgb(image)


def _to_uint8(a: np.ndarray, name: str) -> np.ndarray:
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ValueError(f"{name}: array of shape {a.shape}; expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)")
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if a.dtype == np.uint8:
        return a
    if np.issubdtype(a.dtype, np.floating):
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        if np.isnan(a).any() or lo < 0 or hi > 1:
            raise ValueError(f"{name}: float array with values in [{lo:g}, {hi:g}]; floats must lie in [0, 1]")
        return np.round(a * 255).astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer):
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 255:
            raise ValueError(f"{name}: integer array with values in [{lo}, {hi}]; integers must lie in [0, 255]")
        return a.astype(np.uint8)
    raise ValueError(f"{name}: array of dtype {a.dtype}; use bool, uint8, or floats in [0, 1]")


def load_mask(mask, name: str = "mask_image") -> Image.Image:
    """A PIL image (any mode), numpy array or file path -> binary "L" mask (0 or 255).

    For a rectangle use `box_mask` (`inpaint` also takes a (left, top, right, bottom) box directly).
    Colour masks are converted to grey; transparent pixels count as black (keep), so a
    mask painted on a transparent layer works.
    """
    mask = _as_pil(mask, name, "a PIL image, a numpy array, a file path or a box")
    if "A" in mask.getbands() or mask.info.get("transparency") is not None:
        rgba = mask.convert("RGBA")
        mask = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    if mask.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        a = np.asarray(mask, dtype=np.float64)
        top = 65535.0 if a.max() > 255 else 255.0  # 16-bit masks
        grey = np.clip(a / top * 255, 0, 255).astype(np.uint8)
    else:
        grey = np.asarray(mask.convert("L"))
    return Image.fromarray(np.where(grey >= 128, 255, 0).astype(np.uint8), "L")


def box_mask(size: tuple[int, int], box, name: str = "box") -> Image.Image:
    """A mask of `size` (width, height), white inside `box` = (left, top, right, bottom), right/bottom exclusive."""
    w, h = size
    try:
        left, top, right, bottom = (int(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={box!r}: give four integers (left, top, right, bottom)") from None
    if not (0 <= left < right <= w and 0 <= top < bottom <= h):
        raise ValueError(f"{name}={box!r}: must satisfy 0 <= left < right <= {w} (width) and "
                         f"0 <= top < bottom <= {h} (height)")
    a = np.zeros((h, w), np.uint8)
    a[top:bottom, left:right] = 255
    return Image.fromarray(a, "L")


def is_box(x) -> bool:
    return isinstance(x, (tuple, list)) and len(x) == 4 and all(isinstance(v, (int, np.integer)) for v in x)


def check_mask(mask: Image.Image, what: str = "mask_image") -> int:
    """Number of white pixels; an all-black mask is an error (there would be nothing to repaint)."""
    white = int(np.count_nonzero(np.asarray(mask)))
    if white == 0:
        raise ValueError(f"{what} is all black (0 of {mask.width * mask.height} pixels white): nothing to repaint. "
                         "White = repaint, black = keep.")
    return white


# -- grow, shrink, feather -------------------------------------------------------------------------

def check_mask_grow(pixels) -> int:
    if not isinstance(pixels, (int, np.integer)) or isinstance(pixels, bool):
        raise ValueError(f"mask_grow={pixels!r}: must be an integer number of pixels (negative shrinks)")
    return int(pixels)


def check_mask_blur(radius) -> int:
    if not isinstance(radius, (int, np.integer)) or isinstance(radius, bool) or radius < 0:
        raise ValueError(f"mask_blur={radius!r}: must be an integer >= 0 (pixels of feather; 0 = hard edge)")
    return int(radius)


def grow_mask(mask: Image.Image, pixels: int) -> Image.Image:
    """Grow the white area by `pixels` (a square neighbourhood, PIL's MaxFilter), or shrink it if negative
    (MinFilter)."""
    pixels = check_mask_grow(pixels)
    # |pixels| passes of the 3x3 filter equal one (2|pixels| + 1)-wide filter (square windows compose,
    # edges replicated), in time linear in |pixels| where the wide filter's is quadratic.
    step = ImageFilter.MaxFilter(3) if pixels > 0 else ImageFilter.MinFilter(3)
    for _ in range(abs(pixels)):
        mask = mask.filter(step)
    return mask


def feather_mask(mask: Image.Image, radius: int) -> np.ndarray:
    """Blend weights in [0, 1] (float32, H x W): 0 wherever `mask` is black, rising smoothly to 1 over
    `radius` pixels inside the white area.

    The feather only goes inwards, so pixels outside the mask are never touched by
    the paste-back. Weight is a smoothstep of the (chessboard) distance to the nearest
    kept pixel; every white pixel gets a weight > 0, so thin strokes are not lost.
    """
    radius = check_mask_blur(radius)
    white = np.asarray(mask) > 0
    if radius == 0:
        return white.astype(np.float32)
    # distance (capped at radius + 1) = how many successive 1-pixel erosions a pixel survives.
    dist = np.zeros(white.shape, np.float32)
    cur = Image.fromarray(white.astype(np.uint8) * 255, "L")
    for _ in range(radius + 1):
        if cur.getbbox() is None:  # all black: nothing left to erode
            break
        dist += np.asarray(cur) > 0
        cur = cur.filter(ImageFilter.MinFilter(3))
    t = dist / (radius + 1)
    return (t * t * (3 - 2 * t)).astype(np.float32)


def paste_back(original: Image.Image, generated: Image.Image, blend: np.ndarray) -> Image.Image:
    """original * (1 - blend) + generated * blend; exactly `original` wherever blend is 0.

    The VAE round trip changes every pixel a little, kept ones too, so sdkit pastes
    the result back onto the original: "keep" then means bit-identical.
    """
    o = np.asarray(original.convert("RGB"), np.float32)
    g = np.asarray(generated.convert("RGB"), np.float32)
    b = blend[:, :, None]
    mixed = np.clip(np.round(o * (1 - b) + g * b), 0, 255).astype(np.uint8)
    return Image.fromarray(np.where(b > 0, mixed, o.astype(np.uint8)), "RGB")


# -- sizes -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Fit:
    """How an image was brought to the size the pipeline works at, and how to undo it."""

    size: tuple[int, int]  # original (width, height): results are returned at this size
    working: tuple[int, int]  # (width, height) the pipeline runs at, multiples of 8
    mode: str  # "none", "pad" (edge pixels added right/bottom, cut off after) or "resize"


def fit_size(size: tuple[int, int], *, height: int | None = None, width: int | None = None,
             resize_mode: str = "pad") -> Fit:
    """Choose the working size: `height`/`width` if given, else `size` itself, padded or resized to multiples of 8."""
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode={resize_mode!r}: choose 'pad' (add up to 7 edge pixels, cut off after) "
                         "or 'resize' (scale to the nearest multiple of 8 and back)")
    w, h = size
    if (height is None) != (width is None):
        raise ValueError(f"height={height!r}, width={width!r}: give both or neither (neither = the image's own size)")
    if height is not None:
        for name, v in (("height", height), ("width", width)):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0 or v % 8:
                raise ValueError(f"{name}={v!r}: must be a positive multiple of 8 (the VAE downsamples by 8)")
        fit = Fit(size, (width, height), "none" if (width, height) == (w, h) else "resize")
    elif w % 8 == 0 and h % 8 == 0:
        fit = Fit(size, (w, h), "none")
    elif resize_mode == "pad":
        fit = Fit(size, (-(-w // 8) * 8, -(-h // 8) * 8), "pad")
    else:
        fit = Fit(size, (max(8, round(w / 8) * 8), max(8, round(h / 8) * 8)), "resize")
    ww, wh = fit.working
    if max(ww, wh) > MAX_SIDE:
        raise ValueError(f"working size {ww}x{wh} exceeds sdkit.edit.masks.MAX_SIDE={MAX_SIDE} pixels per side; pass "
                         "height= and width= (multiples of 8) to work at a smaller size; the result is resized back")
    return fit


def to_working(image: Image.Image, fit: Fit, *, is_mask: bool = False) -> Image.Image:
    if fit.mode == "none":
        return image
    if fit.mode == "pad":
        a = np.asarray(image)
        dw, dh = fit.working[0] - fit.size[0], fit.working[1] - fit.size[1]
        pad = [(0, dh), (0, dw)] + [(0, 0)] * (a.ndim - 2)
        return Image.fromarray(np.pad(a, pad, mode="edge"), image.mode)
    # NEAREST keeps a mask binary; LANCZOS is what diffusers' image processor resizes with.
    return image.resize(fit.working, Image.Resampling.NEAREST if is_mask else Image.Resampling.LANCZOS)


def from_working(image: Image.Image, fit: Fit) -> Image.Image:
    """Back to the original size: cut the padding off, or resize back."""
    if fit.mode == "none":
        return image
    if fit.mode == "pad":
        return image.crop((0, 0) + fit.size)
    return image.resize(fit.size, Image.Resampling.LANCZOS)


# -- outpainting -----------------------------------------------------------------------------------

def outpaint_canvas(image: Image.Image, *, left: int = 0, right: int = 0, top: int = 0,
                    bottom: int = 0) -> tuple[Image.Image, Image.Image]:
    """Extend `image` by the given pixels: (canvas, mask). The new area repeats the edge pixels
    (a neutral start for strength < 1) and is white in the mask."""
    extents = {"left": left, "right": right, "top": top, "bottom": bottom}
    for k, v in extents.items():
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{k}={v!r}: outpaint extents must be integers >= 0 (pixels to add on that side)")
    if not any(extents.values()):
        raise ValueError("left, right, top and bottom are all 0: give the pixels to add on at least one side")
    w, h = image.width + left + right, image.height + top + bottom
    if max(w, h) > MAX_SIDE:
        raise ValueError(f"outpainted canvas would be {w}x{h} (from {image.width}x{image.height} with left={left}, "
                         f"right={right}, top={top}, bottom={bottom}); the limit is sdkit.edit.masks.MAX_SIDE={MAX_SIDE} "
                         "pixels per side")
    a = np.pad(np.asarray(image.convert("RGB")), [(top, bottom), (left, right), (0, 0)], mode="edge")
    m = np.full((h, w), 255, np.uint8)
    m[top:top + image.height, left:left + image.width] = 0
    return Image.fromarray(a, "RGB"), Image.fromarray(m, "L")


# -- showing ---------------------------------------------------------------------------------------

def show_mask(image, mask, *, mask_grow: int = 0, mask_blur: int = 0, gap: int = 4) -> Image.Image:
    """Image | mask | overlay side by side, to check a mask before generating.

    With `mask_grow`/`mask_blur` it shows the mask as sdkit will use it: grown, and the
    feathered blend weights (grey = partly repainted).
    """
    image = load_image(image)
    mask = box_mask(image.size, mask) if is_box(mask) else load_mask(mask)
    if mask.size != image.size:
        raise ValueError(f"mask size {mask.size} != image size {image.size} (width, height)")
    weights = feather_mask(grow_mask(mask, mask_grow), mask_blur)
    grey = Image.fromarray(np.round(weights * 255).astype(np.uint8), "L")
    red = np.zeros((image.height, image.width, 3), np.float32)
    red[..., 0] = 255
    w = weights[:, :, None] * 0.5  # half-transparent red over what will be repainted
    overlay = np.round(np.asarray(image, np.float32) * (1 - w) + red * w).astype(np.uint8)
    out = Image.new("RGB", (image.width * 3 + gap * 2, image.height), "white")
    for i, panel in enumerate((image, grey.convert("RGB"), Image.fromarray(overlay, "RGB"))):
        out.paste(panel, (i * (image.width + gap), 0))
    return out
