"""Image fingerprints for regression tests that survive last-bit float differences between CPUs.

Raw pixel hashes break when another CPU rounds one value differently; a
fingerprint of a block-averaged, coarsely quantised image does not, yet it
changes when the picture changes (a new seed, scheduler or model). nbval
ignores images, so each notebook prints these short strings instead.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np
from PIL import Image

GRID = 4  # average over a 4x4 grid of blocks: local noise cancels, composition stays
LEVELS = 8  # 3 bits per channel: far coarser than any float rounding, finer than any real change


def _features(image: Image.Image) -> np.ndarray:
    a = np.asarray(image.convert("RGB"), dtype=np.float64)
    h, w = a.shape[:2]
    gh, gw = min(GRID, h), min(GRID, w)
    ys = np.linspace(0, h, gh + 1).astype(int)
    xs = np.linspace(0, w, gw + 1).astype(int)
    blocks = np.array([[a[ys[i]:ys[i + 1], xs[j]:xs[j + 1]].mean(axis=(0, 1)) for j in range(gw)] for i in range(gh)])
    return np.floor(blocks / 256.0 * LEVELS).astype(np.uint8)


def fingerprint(images: Image.Image | Iterable[Image.Image]) -> str:
    """A 12-hex-digit fingerprint of one image or a sequence of images (order matters)."""
    if isinstance(images, Image.Image):
        images = [images]
    h = hashlib.sha256()
    n = 0
    for im in images:
        if im is None:
            raise ValueError("fingerprint got None instead of an image")
        h.update(repr(im.size).encode() + _features(im).tobytes())
        n += 1
    if n == 0:
        raise ValueError("fingerprint needs at least one image")
    return h.hexdigest()[:12]
