"""Rank scored candidates within each prompt (best first, ties broken by seed), and `rerank`: score a run's
candidates against their prompts, rank them and record the scores on disk, the one call notebooks, the CLI
and the explorer share:

    ranked = rerank(run, scorer="flax")      # best first within each prompt
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sdkit.results import Ranked, Scores, format_members, score_label
from sdkit.scoring.ensemble import member_scores, recombine
from sdkit.scoring.base import takes_tensors
from sdkit.scoring.scorers import scorer_for


def with_scores(candidates: Sequence[Any], scores: Scores) -> list:
    """Copies of dataclass `candidates` carrying their `Scores` (score, logit, scorer): where a score lives.
    Other objects come back as they are (`rank` keeps their scores on the `Ranked` entry)."""
    candidates = list(candidates)
    if len(candidates) != len(scores.logits) or len(scores.logits) != len(scores.clip_score):
        raise ValueError(f"got {len(candidates)} candidates but {len(scores.logits)} logits and "
                         f"{len(scores.clip_score)} CLIP scores; score exactly the candidates you rank")
    bad = np.flatnonzero(~np.isfinite(np.asarray(scores.logits, np.float64)))
    if len(bad):
        raise ValueError(f"logits at {bad.tolist()} are not finite ({np.asarray(scores.logits)[bad].tolist()}); "
                         "cannot rank them (half precision overflow?)")
    return [_with_score(c, float(sc), float(lg), scores.scorer, member_scores(scores, i) or None)
            for i, (c, sc, lg) in enumerate(zip(candidates, scores.clip_score, scores.logits))]


def score_candidates(candidates: Sequence[Any], scorer: Any) -> list:
    """Score `candidates` (with `.image` and `.prompt`) against their own prompts; copies carrying the scores, in
    input order. What rerank, the explorer, sweeps and the toy world share.

    One scorer call, except for finished images (PIL) on a machine with an accelerator and a scorer that takes
    tensors: those go to the device in calls of `CHUNK` images of one size (`tensor_device`), the same scores."""
    candidates = list(candidates)
    if not candidates:
        return []
    device = tensor_device(scorer, candidates)
    if device is None:
        return _scored(candidates, scorer, images_for(scorer, candidates))
    out: list = [None] * len(candidates)
    by_size: dict[tuple, list[int]] = {}
    for i, c in enumerate(candidates):
        by_size.setdefault(c.image.size, []).append(i)
    step = chunk_size(scorer)
    for rows in by_size.values():
        for a in range(0, len(rows), step):
            part = rows[a:a + step]
            chunk = [candidates[i] for i in part]
            for i, c in zip(part, _scored(chunk, scorer, pil_to_tensor([c.image for c in chunk], device))):
                out[i] = c
    return out  # an ensemble's combined scores are set again over all of them when ranked (`recombine`)


def _scored(candidates: list, scorer: Any, images) -> list:
    scores = scorer(images, [c.prompt for c in candidates])
    if not scores.scorer:  # a scorer of one's own that does not label its Scores: its name, if it has one
        scores = dataclasses.replace(scores, scorer=getattr(scorer, "name", ""))
    return with_scores(candidates, scores)


# Images per scorer call when finished images are scored on the device: the call size the H200 measured (5,496
# images/s), which also bounds the tensor preprocessing's float64 work (about 6 MB an image at 512²).
CHUNK = 64


def chunk_size(scorer: Any) -> int:
    """`CHUNK` rounded to whole forward passes of `scorer` (its batch size times its devices; an ensemble's members'
    least common multiple), so that the chunked calls batch the images as one call would: the same last bits."""
    step = _forward_pass(scorer)
    return max(step, CHUNK // step * step)


def _forward_pass(scorer: Any) -> int:
    members = getattr(scorer, "members", None)
    if isinstance(members, dict) and members:
        return math.lcm(*(_forward_pass(m) for m in members.values()))
    return int(getattr(scorer, "batch_size", 1) or 1) * max(1, len(getattr(scorer, "devices", None) or [None]))


def tensor_device(scorer: Any, candidates: Sequence[Any]):
    """The torch device finished `candidates` are scored on as a tensor, or None for PIL's path: a scorer that takes
    tensors, candidates without a live tensor (`pixels`), and an accelerator (the scorer's own torch device, else
    the one torch sees first), where the tensor preprocessing runs many times faster than PIL's."""
    import torch
    from PIL import Image

    from sdkit.generation import TENSOR_DEVICES
    from sdkit.load.devices import auto_device

    if not takes_tensors(scorer) or any(getattr(c, "pixels", None) is not None for c in candidates):
        return None
    if not all(isinstance(c.image, Image.Image) and c.image.mode == "RGB" for c in candidates):
        return None
    device = getattr(scorer, "device", None)
    device = torch.device(device if isinstance(device, (str, torch.device)) else auto_device())
    return device if device.type in TENSOR_DEVICES else None


def pil_to_tensor(images: Sequence[Any], device):
    """RGB PIL images of one size -> float32 (N, 3, H, W) in [0, 1] on `device`: what diffusers' `output_type="pt"`
    would have handed over for them (the tensor preprocessing reads its 8-bit levels back exactly)."""
    import torch

    levels = torch.from_numpy(np.stack([np.asarray(im, dtype=np.uint8) for im in images]))
    return levels.to(device).permute(0, 3, 1, 2).float().div_(255)


def images_for(scorer: Any, candidates: Sequence[Any]):
    """What `scorer` is handed: the candidates' pixels as one tensor on the pipeline's device where each carries
    them (a search on an accelerator) and the scorer takes tensors (the same scores as their PIL images, without
    the PIL round trip: on the H200 5,500 images/s against 250); else their PIL images."""
    pixels = [getattr(c, "pixels", None) for c in candidates]
    if takes_tensors(scorer) and all(p is not None for p in pixels):
        import torch

        return torch.stack(pixels)
    return [c.image for c in candidates]


def rank(candidates: Sequence[Any], scores: Scores | None = None) -> list[Ranked]:
    """Rank `candidates` (objects with `.prompt` and `.seed`) per prompt, by `scores` or, without, by the
    scores they carry (`score_candidates`).

    Prompt groups come in the order their prompt first appears; within a group the highest logit
    comes first and equal logits go by ascending seed, so the order is stable across runs. Sorting
    by the logit rather than the floored CLIP score keeps the order among negative cosines.
    """
    candidates = list(candidates)
    if scores is None:
        candidates = recombine(candidates)  # an ensemble's scores are relative: over all that are ranked
        unscored = [c.seed for c in candidates if getattr(c, "logit", None) is None]
        if unscored:
            raise ValueError(f"candidates with seeds {unscored} carry no score; score them first "
                             "(score_candidates, rerank) or pass their Scores")
        scored = candidates
        own = [None] * len(candidates)
    else:
        scored = recombine(with_scores(candidates, scores))
        own = [None if _carries(c) else (float(sc), float(lg))
               for c, sc, lg in zip(scored, scores.clip_score, scores.logits)]
    logit = [float(c.logit) if o is None else o[1] for c, o in zip(scored, own)]
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(scored):
        groups.setdefault(c.prompt, []).append(i)
    out = []
    for members in groups.values():
        members.sort(key=lambda i: (-logit[i], scored[i].seed))
        out.extend(Ranked(scored[i], r, own[i]) for r, i in enumerate(members, start=1))
    return out


def _with_score(candidate: Any, score: float, logit: float, scorer: str, members=None) -> Any:
    """A copy of a dataclass candidate with its score fields set (the input is not mutated)."""
    if not dataclasses.is_dataclass(candidate):
        return candidate
    names = {f.name for f in dataclasses.fields(candidate)}
    fields = (("score", score), ("logit", logit), ("scorer", scorer), ("members", members), ("pixels", None))
    updates = {k: v for k, v in fields if k in names}
    return dataclasses.replace(candidate, **updates) if updates else candidate


def _carries(candidate: Any) -> bool:
    return dataclasses.is_dataclass(candidate) and {"score", "logit"} <= {f.name for f in dataclasses.fields(candidate)}


def format_ranking(ranked: Sequence[Ranked], limit: int | None = None) -> str:
    """A plain-text table of a ranking: prompt, rank, CLIP score, seed (what notebooks and the CLI print)."""
    lines, prompt = [], None
    for r in ranked:
        c = r.candidate
        if c.prompt != prompt:
            prompt = c.prompt
            lines.append(f"{prompt!r}")
        if limit is None or r.rank <= limit:
            flag = "  [NSFW-flagged]" if getattr(c, "nsfw", False) else ""
            members = format_members(getattr(c, "members", None))
            lines.append(f"  #{r.rank:<3d} {score_label(getattr(c, 'scorer', None))} {r.score:6.2f}   seed {c.seed}{flag}"
                         + (f"   ({members})" if members else ""))
    return "\n".join(lines)


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
    if scorer is None:  # None means "no scoring" everywhere in sdkit: nothing to rank by
        raise ValueError("rerank(..., scorer=None): nothing to rank by; pass 'flax', 'torch', 'auto' or a scorer")
    cands: Sequence = list(getattr(candidates, "candidates", candidates))
    if not cands:
        raise ValueError("nothing to rerank: the run has no candidates (was it cancelled before the first batch?)")
    model = next((c.model_id for c in cands if getattr(c, "model_id", "")), "")
    ranked = rank(score_candidates(cands, scorer_for(scorer, model, clip_model)))
    if save:
        record_scores([r.candidate for r in ranked])
    return ranked


def record_scores(candidates: Sequence[Any]) -> None:
    """Write scored candidates' metadata into their saved PNGs and append their manifest lines, folder by folder."""
    from sdkit.save import update_scores

    by_dir: dict[str, list] = {}
    for c in candidates:
        if getattr(c, "path", None):
            by_dir.setdefault(str(Path(c.path).parent), []).append(c)
    for d, cs in by_dir.items():
        update_scores(d, cs)
