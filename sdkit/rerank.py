"""Score a run's candidates against their prompts, rank them, and record the scores on disk.

The one call notebooks, the CLI and the explorer share:

    ranked = rerank(run, scorer="flax")      # best first within each prompt
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Sequence

_scorers: dict[tuple, Any] = {}
_lock = threading.Lock()


def clip_beside(model: str) -> str | None:
    """The CLIP shipped beside a local model folder, as a toy world lays them out (`<world>/pipeline`,
    `<world>/clip`); None if there is none."""
    if not isinstance(model, str) or not model.strip() or model.startswith("sdkit:"):
        return None
    folder = Path(model.strip()).expanduser()
    clip = folder.parent / "clip"
    return str(clip) if folder.is_dir() and (clip / "config.json").is_file() else None


def clip_for(model: str) -> str:
    """The CLIP that belongs with a model: the tiny random CLIP for tiny models, the toy world's own CLIP
    (also for a folder with a `clip/` beside it), else the tutorial's `openai/clip-vit-base-patch32`."""
    if model.startswith("sdkit:tiny"):
        from .tiny_clip import tiny_clip_path

        return str(tiny_clip_path())
    if model == "sdkit:toy":
        from .toy.world import toy_world_path

        return str(Path(toy_world_path()) / "clip")
    beside = clip_beside(model)
    if beside is not None:
        return beside
    from .score import DEFAULT_CLIP

    return DEFAULT_CLIP


def get_scorer(backend: str = "flax", model_id: str | None = None, **kwargs):
    """A cached scorer: loading a CLIP and compiling it is done once per (backend, model)."""
    from .score import DEFAULT_CLIP, load_scorer

    model_id = model_id or DEFAULT_CLIP
    key = (backend, str(model_id), tuple(sorted(kwargs.items())))
    with _lock:
        if key not in _scorers:
            _scorers[key] = load_scorer(backend, str(model_id), **kwargs)
        return _scorers[key]


def rerank(candidates, scorer: Any = "flax", *, clip_model: str | None = None, save: bool = True) -> list:
    """Score `candidates` (a Run or a list) with `scorer` and rank them per prompt, best first.

    Args:
        candidates: a `Run` or candidates with `.image`, `.prompt`, `.seed`.
        scorer: "flax", "torch", "auto" (Flax unless only torch sees the GPU; see `load_scorer`), or a scorer
            object (anything with the `scorer(images, prompts)` signature).
        clip_model: CLIP id or path for a named backend; default: the CLIP that belongs with the
            candidates' model (see `clip_for`).
        save: write the scores into each saved PNG's metadata and append manifest lines.

    Returns:
        `Ranked` entries (candidate, rank, score, logit), grouped by prompt, best first.
    """
    from .rank import rank

    cands: Sequence = list(getattr(candidates, "candidates", candidates))
    if not cands:
        raise ValueError("nothing to rerank: the run has no candidates (was it cancelled before the first batch?)")
    if isinstance(scorer, str):
        model = next((c.model_id for c in cands if getattr(c, "model_id", "")), "")
        scorer = get_scorer(scorer, clip_model or clip_for(model))
    scores = scorer([c.image for c in cands], [c.prompt for c in cands])
    ranked = rank(cands, scores)
    if save:
        from .save import update_scores

        by_dir: dict[str, list] = {}
        for r in ranked:
            if getattr(r.candidate, "path", None):
                by_dir.setdefault(str(Path(r.candidate.path).parent), []).append(r.candidate)
        for d, cs in by_dir.items():
            update_scores(d, cs)
    return ranked
