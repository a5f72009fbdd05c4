"""sdkit: Stable Diffusion candidates, CLIP reranking and ranked grids for notebooks.

    from sdkit import load_pipeline, generate, rerank, ranked_grid
    pipe = load_pipeline("stable-diffusion-v1-5/stable-diffusion-v1-5")
    run = generate(pipe, "Kermit the Frog on the Iron Throne", n=10, seed=0, output_dir="outputs")
    ranked_grid(rerank(run, "flax"))

Names are imported lazily: `import sdkit` is quick, and JAX starts only when a Flax scorer is used.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Candidate": "candidate", "Run": "candidate",
    "generate": "generate", "regenerate": "generate", "Progress": "generate",
    "load_pipeline": "load",
    "read_manifest": "save", "read_metadata": "save",
    "img2img": "edit", "inpaint": "edit", "outpaint": "edit",
    "box_mask": "masks", "show_mask": "masks",
    "load_scorer": "score", "Scores": "score",
    "rank": "rank", "Ranked": "rank",
    "rerank": "rerank",
    "ranked_grid": "grid", "image_grid": "grid", "save_ranked_grid": "grid", "enlarge": "grid", "gallery": "gallery",
    "score_heatmap": "heatmap",
    "explore": "explorer",
    "fingerprint": "fingerprint",
    "Sweep": "sweep", "run_sweep": "sweep",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sdkit' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)


# These names are also submodule names (sdkit/generate.py defines generate, ...). Importing a submodule
# sets the package attribute to the module, so they are bound eagerly here, once, to the functions.
from .fingerprint import fingerprint  # noqa: E402
from .gallery import gallery  # noqa: E402
from .generate import generate  # noqa: E402
from .rank import rank  # noqa: E402
from .rerank import rerank  # noqa: E402


def _quiet_known_noise() -> None:
    # transformers 5 warns on every import that CLIPImageProcessor falls back to its PIL
    # implementation without torchvision. That fallback is what sdkit relies on (PyPI
    # torchvision does not match every torch build), so the warning only adds noise.
    import logging

    class _DropTorchvisionFallback(logging.Filter):
        def filter(self, record):
            return "requires torchvision" not in record.getMessage()

    for name in ("transformers", "transformers.utils.import_utils"):  # filters act where the record is made
        logging.getLogger(name).addFilter(_DropTorchvisionFallback())


_quiet_known_noise()
