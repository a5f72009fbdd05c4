"""sdkit: Stable Diffusion candidates, CLIP reranking and ranked grids for notebooks.

    from sdkit import load_pipeline, generate, rerank, ranked_grid
    pipe = load_pipeline("stable-diffusion-v1-5/stable-diffusion-v1-5")
    run = generate(pipe, "Kermit the Frog on the Iron Throne", n=10, seed=0, output_dir="outputs")
    ranked_grid(rerank(run, "flax"))

Names are imported lazily: `import sdkit` imports neither torch, JAX, ipywidgets nor matplotlib, and JAX
starts only when a Flax scorer is used.

The house, in the order the data flows (`LAYERS`; a module imports only from its own layer or those
before it, never in a circle: tests/test_layout.py walks the imports):

    foundations  errors, checks, results (Candidate, Run, Scores, Ranked), fingerprints, files, images, quiet, progress
    models       models/ (sdkit:tiny, the tiny CLIP, tokenizers, the built-in registry, the one cache
                 builder) and the toy world's shapes, trainer and weights (toy/shapes, train, world, previewer,
                 second_clip)
    load         load/ (Hub resolver, devices, schedulers, batch invariance, load_pipeline)
    save         save (PNG metadata, manifest, recovery), runs (recorded settings, resume)
    generation   generation (generate)
    edit         edit/ (img2img, inpaint, outpaint; masks)
    scoring      scoring/ (scorers: Flax and PyTorch CLIP, preprocessing)
    ranking      ranking (score_candidates, rank, rerank)
    search       search/ (x0 previews; the strategies, one module each; regenerate and finish_pruned)
    show         show/ (ranked grid, gallery, heatmap)
    sweep        sweep/ (the spec; run_sweep; the worker, here or on Ray)
    tools        toy/adherence (the toy world's measurement), toy/reward (its reward model, built from generated
                 candidates), notebook (nbval helpers)
    explorer     show/explorer/ (form, session, widgets)
    cli          cli/ (one module per subcommand)
"""

from __future__ import annotations

import importlib
import logging
import sys

__version__ = "0.1.0"

_EXPORTS = {
    "Candidate": "results", "Run": "results",
    "generate": "generation", "regenerate": "search.replay", "Progress": "results",
    "load_pipeline": "load.pipeline",
    "read_manifest": "save", "read_metadata": "save",
    "img2img": "edit.tasks", "inpaint": "edit.tasks", "outpaint": "edit.tasks",
    "box_mask": "edit.masks", "show_mask": "edit.masks",
    "load_scorer": "scoring.scorers", "Scores": "results",
    "rank": "ranking", "Ranked": "results", "rerank": "ranking", "format_ranking": "ranking",
    "ranked_grid": "show.grid", "image_grid": "show.grid", "save_ranked_grid": "show.grid", "enlarge": "show.grid",
    "gallery": "show.gallery", "score_heatmap": "show.heatmap",
    "explore": "show.explorer.widgets",
    "fingerprint": "fingerprints",
    "Sweep": "sweep.spec", "run_sweep": "sweep.run",
    "best_of_n": "search.baseline", "draft_then_finish": "search.drafts", "successive_halving": "search.halving",
    "particle_resampling": "search.particles", "finish_pruned": "search.replay",
    "Search": "results", "Compute": "results", "Pruned": "results", "Lineage": "results",
}
__all__ = sorted(_EXPORTS)

# Data flows down with no exception: no module imports one in a layer above it (tests/test_layout.py, which
# counts `importlib.import_module("sdkit...")` literals as imports too).
UPWARD = {}

# Module-name prefixes per layer, bottom first; a module's layer is that of its longest matching prefix.
LAYERS = (
    ("sdkit", "sdkit.errors", "sdkit.checks", "sdkit.results", "sdkit.fingerprints", "sdkit.files",
     "sdkit.images", "sdkit.quiet", "sdkit.progress"),
    ("sdkit.models", "sdkit.toy", "sdkit.toy.shapes", "sdkit.toy.display", "sdkit.toy.train", "sdkit.toy.world"),
    ("sdkit.load",),
    ("sdkit.save", "sdkit.runs"),
    ("sdkit.generation",),
    ("sdkit.edit",),
    ("sdkit.scoring",),
    ("sdkit.ranking",),
    ("sdkit.search",),
    ("sdkit.show",),
    ("sdkit.sweep",),
    ("sdkit.toy.adherence", "sdkit.toy.reward", "sdkit.toy.__main__", "sdkit.notebook"),
    ("sdkit.show.explorer",),
    ("sdkit.cli", "sdkit.__main__"),
)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sdkit' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (a notebook's, pytest's capture), not the one at import."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def _library_logger() -> None:
    # As transformers and diffusers do for theirs: sdkit's messages ("resuming run ...", "out of memory;
    # retrying with batch_size=4") reach stderr as "sdkit: ..." with no logging setup by the user; INFO and up.
    log = logging.getLogger(__name__)
    if not log.handlers:
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("sdkit: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def _quiet_known_noise() -> None:
    # transformers 5 warns on every import that CLIPImageProcessor falls back to its PIL
    # implementation without torchvision. That fallback is what sdkit relies on (PyPI
    # torchvision does not match every torch build), so the warning only adds noise.

    class _DropTorchvisionFallback(logging.Filter):
        def filter(self, record):
            return "requires torchvision" not in record.getMessage()

    for name in ("transformers", "transformers.utils.import_utils"):  # filters act where the record is made
        logging.getLogger(name).addFilter(_DropTorchvisionFallback())

    # diffusers' SDXL img2img/inpaint pipelines cast a force_upcast VAE to fp32 on every call, and each cast
    # warns that "modules ... should be kept in float32: []": an empty list, so nothing to act on.
    class _DropEmptyFp32List(logging.Filter):
        def filter(self, record):
            return "should be kept in float32: []" not in record.getMessage()

    logging.getLogger("diffusers.models.modeling_utils").addFilter(_DropEmptyFp32List())


_library_logger()
_quiet_known_noise()
