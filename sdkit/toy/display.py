"""Display helper: toy images are 32 x 32, so enlarge them with crisp pixels."""

from __future__ import annotations

from PIL import Image


def upscale(image: Image.Image, factor: int = 8) -> Image.Image:
    """Nearest-neighbour enlargement, so a 32 x 32 shape shows as sharp pixels rather than a blur."""
    if not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor must be a positive int, got {factor!r}")
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
