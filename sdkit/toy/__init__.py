"""The toy world: coloured shapes, a pixel checker, and a tiny CLIP and Stable Diffusion trained on them.

Real weights cannot be loaded everywhere (CI, these machines); this world makes image
quality measurable without them. `toy_world_path()` trains (once, cached) and returns a
directory with `pipeline/` (loads as "sdkit:toy") and `clip/`; `evaluate` measures prompt
adherence with and without CLIP reranking (`sdkit.toy.adherence`).
"""

import importlib
from pathlib import Path

from sdkit.toy.display import upscale
from sdkit.toy.shapes import COLORS, PROMPTS, SHAPES, check, checker_accuracy, sample

_LAZY = {"toy_world_path": "sdkit.toy.world", "evaluate": "sdkit.toy.adherence"}
REWARD_DIR = "reward"  # the toy reward model (sdkit.toy.reward), beside the world's pipeline/ and clip/ in fixture/
__all__ = ["shipped_reward_path", "COLORS", "PROMPTS", "SHAPES", "check", "checker_accuracy", "sample", "upscale", *_LAZY]


def shipped_reward_path() -> Path:
    """The shipped toy reward model (sdkit/toy/fixture/reward), or FileNotFoundError naming where it should be. Here,
    not in sdkit.toy.reward (which generates with sdkit and trains, a layer up), so that scorers can find it."""
    path = Path(__file__).parent / "fixture" / REWARD_DIR
    if not (path / "reward.json").is_file():
        raise FileNotFoundError(f"no toy reward model at {path} (this copy of sdkit lacks it); build one with "
                                "`python -m sdkit.toy reward --out DIR` and pass model=DIR")
    return path


def __getattr__(name):
    # Lazy: importing the checker should not import torch, diffusers and JAX.
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sdkit.toy' has no attribute {name!r}")
