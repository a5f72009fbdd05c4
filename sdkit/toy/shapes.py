"""The toy world's data: one coloured shape on black, and a checker that reads it back.

Every image is fully described by its caption ("a red circle") plus a position
and a size, so the quality of a generated image is measurable: `check` reads
shape and colour back from the pixels alone, with no learned model involved.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

SHAPES = ("circle", "square", "triangle")
# Pure-ish primaries; `sample` jitters each channel so a model cannot memorise one RGB value.
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 70, 230),
    "yellow": (230, 210, 40),
}
PROMPTS = tuple(f"a {c} {s}" for s in SHAPES for c in COLORS)  # 12 captions, shape-major

IMAGE_SIZE = 32
MIN_RADIUS, MAX_RADIUS = 5, 11  # half-extent in pixels: shapes 10-22 px wide on 32 x 32
_SUPERSAMPLE = 4  # anti-aliased edges, so shapes look drawn rather than stamped


@dataclass(frozen=True)
class Shape:
    """One drawable shape: what the caption says plus where it is."""

    shape: str
    color: str
    cx: float  # centre, in pixels from the top-left corner
    cy: float
    r: float  # half-extent: circle radius, half the square's side, half the triangle's base and height

    @property
    def prompt(self) -> str:
        return f"a {self.color} {self.shape}"


def parse_prompt(prompt: str) -> tuple[str, str]:
    """"a red circle" -> ("circle", "red"); raises on anything outside the toy world."""
    words = prompt.lower().split()
    if len(words) != 3 or words[0] != "a" or words[1] not in COLORS or words[2] not in SHAPES:
        raise ValueError(f"not a toy-world prompt: {prompt!r}; expected one of {PROMPTS}")
    return words[2], words[1]


def coverage(shape: str, cx: float, cy: float, r: float, size: int = IMAGE_SIZE, supersample: int = _SUPERSAMPLE) -> np.ndarray:
    """Fraction of each pixel covered by the shape, float32 (size, size)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    n = size * supersample
    # Sub-pixel sample centres, in pixel units.
    t = (np.arange(n, dtype=np.float32) + 0.5) / supersample
    inside = is_inside(shape, t[None, :], t[:, None], cx, cy, r)
    return inside.reshape(size, supersample, size, supersample).mean(axis=(1, 3)).astype(np.float32)


def is_inside(shape: str, x, y, cx: float, cy: float, r: float) -> np.ndarray:
    """Whether points (x, y) lie inside the shape (broadcasting arrays)."""
    if shape == "circle":
        return (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    if shape == "square":
        return (np.abs(x - cx) <= r) & (np.abs(y - cy) <= r)
    # upright isosceles triangle: apex at the top, base at the bottom, width = height = 2r
    rel = (y - (cy - r)) / (2 * r)  # 0 at the apex, 1 at the base
    return (rel >= 0) & (rel <= 1) & (np.abs(x - cx) <= r * rel)


def render(s: Shape, rgb=None, size: int = IMAGE_SIZE) -> np.ndarray:
    """Draw one shape on black: uint8 (size, size, 3)."""
    rgb = np.asarray(COLORS[s.color] if rgb is None else rgb, dtype=np.float32)
    cov = coverage(s.shape, s.cx, s.cy, s.r, size)
    return np.round(cov[..., None] * rgb).astype(np.uint8)


def random_shape(rng: np.random.Generator, shape: str | None = None, color: str | None = None, size: int = IMAGE_SIZE) -> Shape:
    """A shape at a random position and size that fits inside the image."""
    shape = shape or SHAPES[rng.integers(len(SHAPES))]
    color = color or tuple(COLORS)[rng.integers(len(COLORS))]
    r = rng.uniform(MIN_RADIUS, MAX_RADIUS) * size / IMAGE_SIZE
    cx, cy = rng.uniform(r + 1, size - r - 1, size=2)
    return Shape(shape, color, float(cx), float(cy), float(r))


def sample(n: int, seed: int, size: int = IMAGE_SIZE, jitter: int = 20):
    """`n` random images, deterministic from `seed`.

    Returns (images uint8 (n, size, size, 3), labels int64 (n,) indexing PROMPTS, shapes list[Shape]).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    shapes = []
    for i in range(n):
        s = random_shape(rng, size=size)
        rgb = np.clip(np.array(COLORS[s.color]) + rng.integers(-jitter, jitter + 1, size=3), 0, 255)
        images[i] = render(s, rgb, size)
        shapes.append(s)
    labels = np.array([PROMPTS.index(s.prompt) for s in shapes], dtype=np.int64)
    return images, labels, shapes


# ---- the checker ----------------------------------------------------------------------------

_FOREGROUND = 80  # max channel above this (of 255) is paint; the background is black
_MIN_PIXELS = 24  # smaller blobs are specks, not a shape (the smallest shape covers ~40 px)
# The best-fitting ideal shape must overlap the paint this much (soft IoU): clean shapes score
# ~0.99 and VAE reconstructions of them >= 0.80, while ellipses of aspect 1.5, two merged shapes,
# rings, upside-down triangles and lumpy blobs stay below it.
_MIN_IOU = 0.78
_MAX_STRAY = 0.15  # paint outside the main blob, as a fraction of it: more means "not one shape"


@dataclass(frozen=True)
class Check:
    """What the checker read from an image; shape/color are None when it cannot tell."""

    shape: str | None
    color: str | None
    iou: float  # overlap of the paint with the best-fitting ideal shape

    def matches(self, prompt: str) -> bool:
        return (self.shape, self.color) == parse_prompt(prompt)


_CHROMA = {c: np.array(v, np.float32) / sum(v) for c, v in COLORS.items()}
# Half the distance between the two closest colours (red and yellow): an orange or grey blob
# is no colour at all rather than whichever is nearest.
_MAX_CHROMA_DIST = 0.5 * min(
    float(np.linalg.norm(_CHROMA[a] - _CHROMA[b])) for a in _CHROMA for b in _CHROMA if a < b
)


def _color_class(mean_rgb: np.ndarray) -> str | None:
    # Nearest colour in chromaticity (rgb / sum), so brightness and jitter do not matter.
    chroma = mean_rgb / max(float(mean_rgb.sum()), 1e-6)
    dist = {c: float(np.linalg.norm(chroma - p)) for c, p in _CHROMA.items()}
    best = min(dist, key=dist.get)
    return best if dist[best] <= _MAX_CHROMA_DIST else None


def check(image) -> Check:
    """Read shape and colour back from pixels alone.

    The paint is every pixel whose brightest channel exceeds `_FOREGROUND`; its largest
    connected blob must hold nearly all of it. The colour is the nearest of COLORS in
    chromaticity; the shape is whichever ideal circle/square/triangle, fitted to the blob by
    area and centroid, overlaps it best, if that overlap (soft IoU) reaches `_MIN_IOU`.
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {img.shape}")
    img = img.astype(np.float32)
    if img.max() <= 1.0 and np.issubdtype(np.asarray(image).dtype, np.floating):
        img = img * 255
    paint = img.max(axis=-1) > _FOREGROUND
    blobs, n = ndimage.label(paint)
    if n == 0:
        return Check(None, None, 0.0)
    sizes = np.bincount(blobs.ravel())[1:]
    main = blobs == (np.argmax(sizes) + 1)
    area = int(main.sum())
    if area < _MIN_PIXELS or (paint.sum() - area) > _MAX_STRAY * area:
        return Check(None, None, 0.0)
    color = _color_class(img[main].mean(axis=0))
    # Soft mask: brightness relative to the blob's own, i.e. the fraction of each pixel painted,
    # which keeps the anti-aliased edges' sub-pixel information (small circles vs squares).
    value = img.max(axis=-1)
    bg = float(np.median(value[~paint])) if (~paint).any() else 0.0  # generated black is not 0
    peak = float(np.percentile(value[main], 90))
    soft = np.clip((value - bg) / max(peak - bg, 1.0), 0, 1) * ndimage.binary_dilation(main)
    mass = float(soft.sum())
    ys, xs = np.indices(soft.shape) + 0.5  # pixel centres, as in `coverage`
    xbar, ybar = float((soft * xs).sum() / mass), float((soft * ys).sum() / mass)
    # Each ideal shape is fitted by moments: same area, same centroid.
    fits = {
        "circle": (xbar, ybar, np.sqrt(mass / np.pi)),
        "square": (xbar, ybar, np.sqrt(mass) / 2),
        "triangle": (xbar, ybar - np.sqrt(mass / 2) / 3, np.sqrt(mass / 2)),  # centroid is r/3 below centre
    }
    h, w = soft.shape
    best, best_iou = None, 0.0
    for shape, (cx, cy, r) in fits.items():
        ideal = coverage(shape, cx, cy, r, size=max(h, w))[:h, :w]
        iou = float(np.minimum(ideal, soft).sum() / np.maximum(ideal, soft).sum())
        if iou > best_iou:
            best, best_iou = shape, iou
    return Check(best if best_iou >= _MIN_IOU else None, color, best_iou)


def checker_accuracy(n: int = 2000, seed: int = 10_000) -> float:
    """Fraction of `n` fresh procedural images whose caption `check` reads back exactly."""
    images, _, shapes = sample(n, seed)
    return float(np.mean([check(im).matches(s.prompt) for im, s in zip(images, shapes)]))
