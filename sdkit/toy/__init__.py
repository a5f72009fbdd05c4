"""The toy world: coloured shapes, a pixel checker, and a tiny CLIP and Stable Diffusion trained on them.

Real weights cannot be loaded everywhere (CI, these machines); this world makes image
quality measurable without them. `toy_world_path()` trains (once, cached) and returns a
directory with `pipeline/` (loads as "sdkit:toy") and `clip/`; `evaluate` measures prompt
adherence with and without CLIP reranking.
"""

from .display import upscale
from .shapes import COLORS, PROMPTS, SHAPES, check, checker_accuracy, sample

__all__ = ["COLORS", "PROMPTS", "SHAPES", "check", "checker_accuracy", "sample", "upscale",
           "toy_world_path", "evaluate"]


def __getattr__(name):
    # Lazy: importing the checker should not import torch, diffusers and JAX.
    if name == "toy_world_path":
        from .world import toy_world_path

        return toy_world_path
    if name == "evaluate":
        from .evaluate import evaluate

        return evaluate
    raise AttributeError(f"module 'sdkit.toy' has no attribute {name!r}")
