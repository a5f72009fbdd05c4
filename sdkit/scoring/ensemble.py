"""Several verifiers as one scorer: each member scores every candidate, and their scores are put on a common scale
among the candidates of one prompt before a weighted mean (imports neither torch nor JAX).

    scorer = load_scorer("clip:1,pickscore:1,aesthetic:0.5")      # or ["clip", "pickscore"], weights={...}

Two ways to make the scales common (`combine`):
    "zscore" (default): (score - mean) / std over the prompt's candidates, per member. Keeps by how much a candidate
             leads on each verifier, in that verifier's own spread; a lone candidate (or all equal) gets 0.
    "rank":  the candidate's rank among the prompt's candidates, per member, mapped to [-0.5, 0.5] (best 0.5, ties
             share their mean rank). Only the order counts: robust to one verifier's outliers or odd tails.
The combined score is sum(weight * scaled) / sum(weights), so only the weights' ratios matter; a weight of 0 keeps
a member recorded but out of the ranking. Being relative, a combined score depends on which candidates it was
computed among: `sdkit.ranking.rank` combines again over every candidate it ranks (from each member's own score,
which every candidate keeps in `.members`), so scoring in batches gives the same ranking as scoring all at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from sdkit.results import MemberScore, Scores
from sdkit.scoring.base import check_inputs, takes_tensors

COMBINE = ("zscore", "rank")
DEFAULT_COMBINE = "zscore"


def parse_spec(spec: Any, weights: dict[str, float] | None = None) -> dict[str, float]:
    """{name: weight} from "clip:1,aesthetic:0.5", ["clip", "aesthetic"] or {"clip": 1}, checked against `known`
    names by the caller; `weights` override; a missing weight is 1."""
    if isinstance(spec, str):
        items = [part.strip() for part in spec.split(",")]
        if "" in items:
            raise ValueError(f"scorer spec {spec!r} has an empty entry; write e.g. 'clip:1,aesthetic:0.5'")
        pairs = [tuple(part.split(":", 1)) if ":" in part else (part, "1") for part in items]
    elif isinstance(spec, dict):
        pairs = list(spec.items())
    else:
        pairs = [(name, 1.0) for name in spec]
    out: dict[str, float] = {}
    for name, weight in pairs:
        name = str(name).strip()
        if name in out:
            raise ValueError(f"scorer {name!r} named twice in {spec!r}; give each verifier once")
        out[name] = check_weight(name, weight)
    for name, weight in (weights or {}).items():
        if name not in out:
            raise ValueError(f"weights name {name!r}, which is not one of the ensemble's scorers {sorted(out)}")
        out[name] = check_weight(name, weight)
    if not any(out.values()):
        raise ValueError(f"every weight in {out} is 0: nothing to rank by; give at least one member a weight > 0")
    return out


def check_weight(name: str, weight: Any) -> float:
    """A finite weight >= 0 (from a number or the spec's text), or a ValueError naming it."""
    try:
        w = float(weight)
    except (TypeError, ValueError):
        raise ValueError(f"weight {weight!r} of scorer {name!r} is not a number; write e.g. '{name}:0.5'") from None
    if not math.isfinite(w) or w < 0 or isinstance(weight, bool):
        raise ValueError(f"weight {weight!r} of scorer {name!r} must be a finite number >= 0")
    return w


def scaled(values: np.ndarray, combine: str) -> np.ndarray:
    """One member's scores among one prompt's candidates on the common scale (`combine`)."""
    values = np.asarray(values, np.float64)
    if combine == "zscore":
        std = values.std()
        return np.zeros_like(values) if not std > 0 else (values - values.mean()) / std
    if len(values) < 2:
        return np.zeros_like(values)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values), dtype=np.float64)
    for v in np.unique(values):  # ties share their mean rank
        ranks[values == v] = ranks[values == v].mean()
    return ranks / (len(values) - 1) - 0.5


def combine_scores(members: dict[str, np.ndarray], prompts: Sequence[str], weights: dict[str, float],
                   combine: str = DEFAULT_COMBINE) -> np.ndarray:
    """The weighted mean of each member's scaled scores, scaled within each prompt's candidates; float32 (N,)."""
    if combine not in COMBINE:
        raise ValueError(f"combine={combine!r}; expected one of {COMBINE}")
    prompts = list(prompts)
    out = np.zeros(len(prompts))
    total = sum(weights.values())
    for prompt in dict.fromkeys(prompts):
        rows = np.array([i for i, p in enumerate(prompts) if p == prompt])
        for name, w in weights.items():
            out[rows] += w * scaled(np.asarray(members[name])[rows], combine)
    return (out / total).astype(np.float32)


@dataclass
class Ensemble:
    """Members scoring together (see the module docstring); itself a scorer: ensemble(images, prompts) -> Scores,
    whose `members` holds each member's own Scores."""

    members: dict[str, Any]  # name -> scorer
    weights: dict[str, float]
    combine: str = DEFAULT_COMBINE

    def __post_init__(self):
        if self.combine not in COMBINE:
            raise ValueError(f"combine={self.combine!r}; expected one of {COMBINE}")
        if set(self.members) != set(self.weights):
            raise ValueError(f"members {sorted(self.members)} and weights {sorted(self.weights)} differ")

    @property
    def name(self) -> str:
        return f"ensemble-{self.combine}"

    @property
    def takes_tensors(self) -> bool:
        return all(takes_tensors(m) for m in self.members.values())

    @property
    def model_id(self) -> str:
        return ",".join(f"{n}:{w:g}" for n, w in self.weights.items())

    def __call__(self, images, prompts) -> Scores:
        images, prompts = check_inputs(images, prompts)
        each = {name: scorer(images, prompts) for name, scorer in self.members.items()}
        combined = combine_scores({n: s.logits for n, s in each.items()}, prompts, self.weights, self.combine)
        return Scores(logits=combined, clip_score=combined, scorer=f"{self.name}:{self.model_id}", members=each,
                      weights=dict(self.weights))


def member_scores(scores: Scores, i: int) -> dict[str, MemberScore]:
    """Candidate i's score by each member of an ensemble's `scores` ({} for a single scorer's)."""
    return {name: MemberScore(s.scorer, scores.weights[name], float(s.clip_score[i]), float(s.logits[i]))
            for name, s in scores.members.items()}


def recombine(candidates: Sequence[Any]) -> list:
    """Copies of ensemble-scored candidates with score and logit combined again over all of them, per prompt
    (from each member's own logit and weight, with the combine their scorer label names); others as they are."""
    import dataclasses

    candidates = list(candidates)
    ensemble = [i for i, c in enumerate(candidates) if getattr(c, "members", None)
                and str(getattr(c, "scorer", "")).startswith("ensemble-")]
    by_scorer: dict[str, list[int]] = {}
    for i in ensemble:
        by_scorer.setdefault(candidates[i].scorer, []).append(i)
    for label, rows in by_scorer.items():
        combine = label.split(":", 1)[0].removeprefix("ensemble-")
        first = candidates[rows[0]].members
        weights = {name: m.weight for name, m in first.items()}
        logits = {name: np.array([candidates[i].members[name].logit for i in rows]) for name in weights}
        combined = combine_scores(logits, [candidates[i].prompt for i in rows], weights, combine)
        for i, v in zip(rows, combined):
            candidates[i] = dataclasses.replace(candidates[i], score=float(v), logit=float(v))
    return candidates
