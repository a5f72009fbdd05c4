import numpy as np

from sdkit import generate
from sdkit.ranking import rank
from sdkit.models.builtin import clip_for
from sdkit.ranking import rerank
from sdkit.scoring.scorers import get_scorer
from sdkit.save import read_manifest, read_metadata, read_parameters


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
