"""sdkit.ranking: rank (per prompt, best first, ties by seed, scores carried by the candidates),
score_candidates, and rerank (score, rank, record on disk)."""

from dataclasses import dataclass

import numpy as np
import pytest

from sdkit import generate
from sdkit.models.builtin import clip_for
from sdkit.ranking import rank, rerank, score_candidates
from sdkit.results import Ranked, Scores
from sdkit.save import read_manifest, read_metadata, read_parameters
from sdkit.scoring.scorers import get_scorer


@dataclass
class Cand:
    prompt: str
    seed: int
    score: float | None = None
    logit: float | None = None
    scorer: str | None = None
    image: object = None


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


def test_rerank_scores_ranks_and_records(tiny_pipe, tmp_path):
    run = generate(tiny_pipe, ["a red circle", "a cat"], n=3, seed=0, num_inference_steps=2, output_dir=tmp_path, progress=False)
    ranked = rerank(run, "torch")
    scorer = get_scorer("torch", clip_for("sdkit:tiny"))
    direct = rank(run.candidates, scorer(run.images, [c.prompt for c in run]))
    assert [(r.candidate.index, r.rank) for r in ranked] == [(r.candidate.index, r.rank) for r in direct]
    np.testing.assert_allclose([r.logit for r in ranked], [r.logit for r in direct])
    assert [r.candidate.prompt for r in ranked] == ["a red circle"] * 3 + ["a cat"] * 3
    for r in ranked:  # recorded on disk, in the PNG and the manifest's last line for that file
        meta = read_metadata(r.candidate.path)
        assert meta["logit"] == r.logit and meta["scorer"].startswith(scorer.name)
        assert f"CLIP score: {r.score:.2f}" in read_parameters(r.candidate.path)
    assert {rec["file"]: rec["logit"] for rec in read_manifest(tmp_path)} == {
        r.candidate.path.split("/")[-1]: r.logit for r in ranked}


def test_rerank_with_a_scorer_object_and_no_saving(tiny_pipe):
    from sdkit.results import Scores

    run = generate(tiny_pipe, "a cat", n=3, seed=0, num_inference_steps=2, progress=False)

    def brightness(images, prompts):  # any callable with the scorer signature works
        b = np.array([np.asarray(im).mean() for im in images])
        return Scores(logits=b, clip_score=b, scorer="brightness")

    ranked = rerank(run, brightness, save=False)
    means = [np.asarray(r.candidate.image).mean() for r in ranked]
    assert means == sorted(means, reverse=True)


def test_rerank_of_nothing_is_an_error():
    import pytest

    with pytest.raises(ValueError, match="no candidates"):
        rerank([], "torch")


def test_rank_without_scores_ranks_by_the_scores_candidates_carry():
    scored = score_candidates([Cand("p", 1), Cand("p", 2), Cand("q", 3)],
                              lambda images, prompts: scores([5.0, 9.0, 1.0]))
    assert [c.score for c in scored] == pytest.approx([5.0, 9.0, 1.0]) and scored[0].scorer == "clip-flax:tiny"
    assert order(rank(scored)) == order(rank([Cand("p", 1), Cand("p", 2), Cand("q", 3)], scores([5.0, 9.0, 1.0])))
    assert [r.score for r in rank(scored)] == pytest.approx([9.0, 5.0, 1.0])  # read from the candidates
    with pytest.raises(ValueError, match=r"seeds \[2\] carry no score"):
        rank([scored[0], Cand("p", 2)])
    assert score_candidates([], None) == []
