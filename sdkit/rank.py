"""Rank scored candidates within each prompt: best first, ties broken by seed."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:  # importing sdkit.score starts JAX; ranking needs none of it
    from .score import Scores


@dataclass
class Ranked:
    """One candidate's place among those of its prompt."""

    candidate: Any  # the candidate (with its seed and prompt); sdkit Candidates get score/logit filled in
    rank: int  # 1 = best within its prompt
    score: float  # CLIP score: max(100 * cosine, 0), the number shown
    logit: float  # raw CLIP logit, exp(logit_scale) * cosine, what the order is by


def rank(candidates: Sequence[Any], scores: Scores) -> list[Ranked]:
    """Rank `candidates` (objects with `.prompt` and `.seed`) by `scores`, per prompt.

    Prompt groups come in the order their prompt first appears; within a group the highest logit
    comes first and equal logits go by ascending seed, so the order is stable across runs. Sorting
    by the logit rather than the floored CLIP score keeps the order among negative cosines.
    """
    candidates = list(candidates)
    if len(candidates) != len(scores.logits) or len(scores.logits) != len(scores.clip_score):
        raise ValueError(f"got {len(candidates)} candidates but {len(scores.logits)} logits and "
                         f"{len(scores.clip_score)} CLIP scores; score exactly the candidates you rank")
    bad = np.flatnonzero(~np.isfinite(np.asarray(scores.logits, np.float64)))
    if len(bad):
        raise ValueError(f"logits at {bad.tolist()} are not finite ({np.asarray(scores.logits)[bad].tolist()}); "
                         "cannot rank them (half precision overflow?)")
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(candidates):
        groups.setdefault(c.prompt, []).append(i)
    out = []
    for members in groups.values():
        members.sort(key=lambda i: (-float(scores.logits[i]), candidates[i].seed))
        for r, i in enumerate(members, start=1):
            score, logit = float(scores.clip_score[i]), float(scores.logits[i])
            out.append(Ranked(_with_score(candidates[i], score, logit, scores.scorer), r, score, logit))
    return out


def _with_score(candidate: Any, score: float, logit: float, scorer: str) -> Any:
    """A copy of a dataclass candidate with its score fields set (the input is not mutated)."""
    if not dataclasses.is_dataclass(candidate):
        return candidate
    names = {f.name for f in dataclasses.fields(candidate)}
    updates = {k: v for k, v in (("score", score), ("logit", logit), ("scorer", scorer)) if k in names}
    return dataclasses.replace(candidate, **updates) if updates else candidate


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
            lines.append(f"  #{r.rank:<3d} CLIP score {r.score:6.2f}   seed {c.seed}{flag}")
    return "\n".join(lines)
