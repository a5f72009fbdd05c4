"""Junk: images that match no prompt, so the toy CLIP learns to score them low (its 'no caption' class)."""

from __future__ import annotations

import numpy as np

from sdkit.toy import shapes

# Purple, cyan, white, pink, grey: far from every colour of the world (orange or brown would pass as yellow).
_OFF_COLORS = ((170, 60, 200), (40, 200, 200), (220, 220, 220), (240, 120, 200), (120, 120, 120))


def _warped(shape: str, x, y, s, rng, amplitude: float) -> np.ndarray:
    # A smooth random displacement field (bilinear from a 4 x 4 grid): lumpy, dented outlines.
    from scipy import ndimage

    grid = rng.normal(0, amplitude, size=(2, 4, 4))
    n = x.shape[1]
    dx, dy = (ndimage.zoom(g, n / 4, order=1, mode="nearest") for g in grid)
    return shapes.is_inside(shape, x + dx, y + dy, s.cx, s.cy, s.r)


JUNK_KINDS = ("stretched", "two shapes", "off colour", "upside down", "lumpy", "dented", "faint")


def junk(n: int, seed: int, size: int = shapes.IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Images no caption describes, for CLIP's 'no caption' class: (uint8 images, kind indices into JUNK_KINDS).

    They are the ways a half-trained generator fails: lumpy or dented shapes, two shapes,
    stretched shapes, upside-down triangles, colours outside the world, nothing. Mild lumps
    and dents are still the shape, so any drawing the world's definition (`shapes.check`)
    accepts as a caption is drawn again: the labels stay consistent with the captions.
    CLIP never sees a generated image or a verdict on one.
    """
    rng = np.random.default_rng(seed)
    out = np.zeros((n, size, size, 3), np.uint8)
    kinds = rng.integers(len(JUNK_KINDS), size=n)
    t = (np.arange(size * 4, dtype=np.float32) + 0.5) / 4
    y, x = np.broadcast_arrays(t[:, None], t[None, :])
    for i, kind in enumerate(kinds):
        for _ in range(20):
            out[i] = _junk_one(kind, rng, x, y, size)
            c = shapes.check(out[i])
            if c.shape is None or c.color is None:
                break
    return out, kinds


def _junk_one(kind: int, rng, x, y, size: int) -> np.ndarray:
    """One junk drawing of JUNK_KINDS[kind]."""
    pool = lambda inside: inside.reshape(size, 4, size, 4).mean(axis=(1, 3))  # noqa: E731
    s = shapes.random_shape(rng, size=size)
    rgb = np.array(shapes.COLORS[s.color], np.float32)
    if kind == 0:  # ellipse or rectangle, aspect 1.5-2.5
        a = rng.uniform(1.5, 2.5)
        rx, ry = (s.r, s.r / a) if rng.random() < 0.5 else (s.r / a, s.r)
        inside = (((x - s.cx) / rx) ** 2 + ((y - s.cy) / ry) ** 2 <= 1) if rng.random() < 0.5 else (
            (np.abs(x - s.cx) <= rx) & (np.abs(y - s.cy) <= ry))
        cov = pool(inside)
    elif kind == 1:  # two shapes of similar size
        s2 = shapes.random_shape(rng, size=size)
        r2 = s.r * 0.7 * rng.uniform(0.9, 1.1)
        cov = np.maximum(shapes.coverage(s.shape, s.cx, s.cy, s.r * 0.7, size),
                         shapes.coverage(s2.shape, s2.cx, s2.cy, r2, size))
    elif kind == 2:  # a real shape in a colour outside the world
        rgb = np.array(_OFF_COLORS[rng.integers(len(_OFF_COLORS))], np.float32)
        cov = shapes.coverage(s.shape, s.cx, s.cy, s.r, size)
    elif kind == 3:  # upside-down triangle
        cov = shapes.coverage("triangle", s.cx, size - s.cy, s.r, size)[::-1]
    elif kind == 4:  # lumpy: 2-3 overlapping parts merged into one blob
        inside = np.zeros_like(x, dtype=bool)
        for _ in range(rng.integers(2, 4)):
            part = shapes.SHAPES[rng.integers(2)]  # circles and squares
            ox, oy = rng.uniform(0.25, 0.6, size=2) * s.r * rng.choice([-1, 1], size=2)
            inside |= shapes.is_inside(part, x, y, s.cx + ox, s.cy + oy, s.r * rng.uniform(0.5, 0.7))
        cov = pool(inside)
    elif kind == 5:  # dented: the right shape, badly warped
        cov = pool(_warped(s.shape, x, y, s, rng, amplitude=s.r * rng.uniform(0.3, 0.7)))
    else:  # a faint smudge or nothing at all
        cov = shapes.coverage("circle", s.cx, s.cy, s.r, size) * rng.uniform(0, 0.3)
    return np.round(cov[..., None] * rgb).astype(np.uint8)
