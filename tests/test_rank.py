"""Ranking: per prompt, best first, ties by seed, score fields carried."""

from dataclasses import dataclass

import numpy as np
import pytest

from sdkit.ranking import rank
from sdkit.results import Ranked, Scores


@dataclass
class Cand:
    prompt: str
    seed: int
    score: float | None = None
    logit: float | None = None
    scorer: str | None = None


def scores(logits, scale=100.0):
    logits = np.asarray(logits, np.float32)
    return Scores(logits=logits, clip_score=np.maximum(100 * logits / scale, 0), scorer="clip-flax:tiny")


def order(ranked):
    return [(r.candidate.prompt, r.candidate.seed, r.rank) for r in ranked]


def test_per_prompt_best_first_prompt_order_kept():
    cands = [Cand("b", 1), Cand("a", 2), Cand("b", 3), Cand("a", 4), Cand("b", 5)]
    ranked = rank(cands, scores([10, 30, 20, 5, 15]))
    assert order(ranked) == [("b", 3, 1), ("b", 5, 2), ("b", 1, 3), ("a", 2, 1), ("a", 4, 2)]
    assert all(isinstance(r, Ranked) for r in ranked)
    assert [r.logit for r in ranked] == [20, 15, 10, 30, 5]
    assert [r.score for r in ranked] == pytest.approx([20, 15, 10, 30, 5])


def test_ties_broken_by_seed_whatever_the_input_order():
    cands = [Cand("p", 9), Cand("p", 2), Cand("p", 5), Cand("p", 1)]
    logits = [7.0, 7.0, 8.0, 7.0]
    assert [r.candidate.seed for r in rank(cands, scores(logits))] == [5, 1, 2, 9]
    perm = [3, 0, 2, 1]
    assert [r.candidate.seed for r in rank([cands[i] for i in perm], scores([logits[i] for i in perm]))] == [5, 1, 2, 9]


def test_order_by_logit_not_by_floored_clip_score():
    # Both cosines are negative: CLIP score 0 for both, but the logits still order them.
    ranked = rank([Cand("p", 1), Cand("p", 2)], scores([-30.0, -5.0]))
    assert [r.candidate.seed for r in ranked] == [2, 1]
    assert [r.score for r in ranked] == [0.0, 0.0]


def test_dataclass_candidates_get_their_scores_and_are_not_mutated():
    cands = [Cand("p", 1), Cand("p", 2)]
    ranked = rank(cands, scores([12.5, 40.0]))
    best = ranked[0].candidate
    assert (best.seed, best.score, best.logit, best.scorer) == (2, pytest.approx(40.0), 40.0, "clip-flax:tiny")
    assert cands[1].score is None  # copies, not the caller's objects


def test_any_object_with_prompt_and_seed():
    class Plain:
        def __init__(self, prompt, seed):
            self.prompt, self.seed = prompt, seed

    items = [Plain("p", 3), Plain("p", 4)]
    ranked = rank(items, scores([1.0, 2.0]))
    assert ranked[0].candidate is items[1] and ranked[0].rank == 1


def test_bad_input():
    with pytest.raises(ValueError, match="got 3 candidates but 2 logits"):
        rank([Cand("p", 1)] * 3, scores([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"logits at \[1\] are not finite"):
        rank([Cand("p", 1), Cand("p", 2)], scores([1.0, np.nan]))
    assert rank([], scores([])) == []
