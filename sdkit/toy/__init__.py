"""The toy world: coloured shapes, a pixel checker, and a tiny CLIP and Stable Diffusion trained on them.

Real weights cannot be loaded everywhere (CI, these machines); this world makes image
quality measurable without them. `toy_world_path()` trains (once, cached) and returns a
directory with `pipeline/` (loads as "sdkit:toy") and `clip/`; `evaluate` measures prompt
adherence with and without CLIP reranking (`sdkit.toy.adherence`).
"""

import importlib

from sdkit.toy.display import upscale
from sdkit.toy.shapes import COLORS, PROMPTS, SHAPES, check, checker_accuracy, sample

_LAZY = {"toy_world_path": "sdkit.toy.world", "evaluate": "sdkit.toy.adherence"}
__all__ = ["COLORS", "PROMPTS", "SHAPES", "check", "checker_accuracy", "sample", "upscale", *_LAZY]


def __getattr__(name):
    # Lazy: importing the checker should not import torch, diffusers and JAX.
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sdkit.toy' has no attribute {name!r}")
