"""Image fingerprints for notebook regression tests that survive last-bit float differences between CPUs.

nbval ignores images, so each notebook prints a fingerprint of its pictures: the mean brightness
(ITU-R 601 luma, 0-255) of each quarter of each image, to two decimals, e.g. `117.42/96.05/130.77/88.19`.
Another CPU's kernels move a few pixel values by one level, which moves these means by about 0.001;
a new seed, scheduler, model, prompt or guidance scale moves them by 0.05 or more (measured on the tiny
model; README, "Regression testing"). `sdkit.notebook`'s check lets decimal numbers differ by one unit
in their last printed digit and nothing else, so the fingerprint fails on a real change and not on a
CPU's rounding. A hash of coarse features cannot do both: fine enough to see a guidance change, its
quantisation boundaries fall where another CPU's rounding crosses them.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
from PIL import Image

GRID = 2  # quarters: enough places to notice a change, few enough numbers to read
LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601, as PIL's convert("L"), without its rounding


def quarter_means(image: Image.Image) -> np.ndarray:
    """Mean luma of each cell of a GRID x GRID split of `image`, row by row."""
    a = np.asarray(image.convert("RGB"), dtype=np.float64) @ LUMA
    h, w = a.shape
    ys = np.linspace(0, h, min(GRID, h) + 1).astype(int)
    xs = np.linspace(0, w, min(GRID, w) + 1).astype(int)
    return np.array([a[ys[i]:ys[i + 1], xs[j]:xs[j + 1]].mean() for i in range(len(ys) - 1) for j in range(len(xs) - 1)])


def fingerprint(images: Image.Image | Iterable[Image.Image]) -> str:
    """One `q1/q2/q3/q4` group of quarter brightnesses per image, space-separated, in order."""
    if isinstance(images, Image.Image):
        images = [images]
    groups = []
    for im in images:
        if im is None:
            raise ValueError("fingerprint got None instead of an image")
        groups.append("/".join(f"{m:.2f}" for m in quarter_means(im)))
    if not groups:
        raise ValueError("fingerprint needs at least one image")
    return " ".join(groups)
