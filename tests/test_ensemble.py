"""sdkit.scoring.ensemble: several verifiers on one scale within each prompt's candidates, their scores kept per
candidate (PNG metadata, manifest, grid caption), checked before loading; an ensemble drives a search on sdkit:toy."""

import json

import numpy as np
import pytest
from PIL import Image
from scipy.stats import rankdata, zscore

from sdkit.results import Candidate, MemberScore, Scores
from sdkit.scoring.ensemble import Ensemble, combine_scores
from sdkit.scoring.scorers import load_scorer


def fixed(name, values):
    """A scorer of the family's signature giving `values[i]` to image i (its red level picks i)."""
    def scorer(images, prompts):
        v = np.array([values[int(np.asarray(im)[0, 0, 0])] for im in images], np.float32)
        return Scores(logits=v, clip_score=v * 10, scorer=f"{name}:fixed")
    return scorer


def image(i):
    return Image.new("RGB", (8, 8), (i, 0, 0))


A = [3.0, 1.0, 2.0, 2.0, 10.0, 0.0]
B = [0.5, 0.9, 0.1, 0.4, 0.3, 0.2]
PROMPTS = ["p", "p", "p", "q", "q", "q"]


@pytest.mark.parametrize("combine", ["zscore", "rank"])
def test_combined_within_each_prompt_as_scipy_computes_it(combine):
    weights = {"a": 2.0, "b": 0.5}
    got = combine_scores({"a": np.array(A), "b": np.array(B)}, PROMPTS, weights, combine)
    scale = zscore if combine == "zscore" else (lambda x: (rankdata(x) - 1) / (len(x) - 1) - 0.5)
    ref = np.concatenate([(2.0 * scale(np.array(A[s])) + 0.5 * scale(np.array(B[s]))) / 2.5
                          for s in (slice(0, 3), slice(3, 6))])
    np.testing.assert_allclose(got, ref, atol=1e-6)
    # Only the weights' ratio counts; a lone candidate or equal scores get 0.
    np.testing.assert_allclose(got, combine_scores({"a": np.array(A), "b": np.array(B)}, PROMPTS,
                                                   {"a": 4.0, "b": 1.0}, combine), atol=1e-6)
    assert combine_scores({"a": np.array([5.0])}, ["p"], {"a": 1.0}, combine).tolist() == [0.0]


def test_ensemble_keeps_members_and_ranks_the_same_in_batches_as_at_once(tmp_path):
    from sdkit.ranking import rank, score_candidates

    ens = Ensemble({"a": fixed("a", A), "b": fixed("b", B)}, {"a": 1.0, "b": 3.0})
    cands = [Candidate(image=image(i), prompt=PROMPTS[i], seed=i, index=i) for i in range(6)]
    s = ens([c.image for c in cands], PROMPTS)
    assert s.scorer == "ensemble-zscore:a:1,b:3" and list(s.members) == ["a", "b"]
    np.testing.assert_array_equal(s.members["a"].logits, np.float32(A))
    at_once = rank(score_candidates(cands, ens))
    batched = rank([c for pair in zip(cands[::2], cands[1::2]) for c in score_candidates(pair, ens)])
    assert [(r.candidate.seed, r.rank) for r in batched] == [(r.candidate.seed, r.rank) for r in at_once]
    assert [r.score for r in batched] == pytest.approx([r.score for r in at_once])
    top = at_once[0].candidate
    assert top.members == {"a": MemberScore("a:fixed", 1.0, A[top.seed] * 10, A[top.seed]),
                           "b": MemberScore("b:fixed", 3.0, pytest.approx(B[top.seed] * 10), pytest.approx(B[top.seed]))}
    ranks = rank(score_candidates(cands, Ensemble(ens.members, {"a": 1.0, "b": 0.0})))  # b recorded, not counted
    assert [r.candidate.seed for r in ranks if r.rank == 1] == [int(np.argmax(A[:3])), 3 + int(np.argmax(A[3:]))]


def test_members_in_png_metadata_manifest_and_grid(tmp_path):
    from sdkit.ranking import record_scores, rank, score_candidates
    from sdkit.save import load_candidate, read_manifest, read_parameters, save_candidate
    from sdkit.show.grid import entries, label, save_ranked_grid

    ens = Ensemble({"clip": fixed("clip-flax", A), "aesthetic": fixed("aesthetic-flax", B)},
                   {"clip": 1.0, "aesthetic": 0.5}, combine="rank")
    cands = [save_candidate(Candidate(image=image(i), prompt=PROMPTS[i], seed=i, index=i, run_id="r"), tmp_path)
             for i in range(6)]
    ranked = rank(score_candidates(cands, ens))
    record_scores([r.candidate for r in ranked])
    best = ranked[0].candidate
    back = load_candidate(best.path)
    assert back.members == best.members and isinstance(back.members["clip"], MemberScore)
    assert back.score == pytest.approx(best.score) and back.scorer == "ensemble-rank:clip:1,aesthetic:0.5"
    params = read_parameters(best.path)
    assert f"Ensemble score: {best.score:.2f}" in params
    assert f"CLIP score (clip, weight 1): {A[best.seed] * 10:.2f}" in params
    assert f"Aesthetic score (aesthetic, weight 0.5): {B[best.seed] * 10:.2f}" in params
    line = next(r for r in read_manifest(tmp_path) if r["seed"] == best.seed)
    assert line["members"]["aesthetic"] == {"scorer": "aesthetic-flax:fixed", "weight": 0.5,
                                            "score": pytest.approx(B[best.seed] * 10), "logit": pytest.approx(B[best.seed])}
    caption = label(entries(ranked)[0])
    assert caption.splitlines() == [f"#1  {best.score:.2f}", f"seed {best.seed}", f"clip {A[best.seed] * 10:.2f}",
                                    f"aesthetic {B[best.seed] * 10:.2f}"]
    grid = save_ranked_grid(ranked, tmp_path)
    cells = json.loads(Image.open(grid).text["sdkit-grid"])
    assert cells[0]["members"] == {"clip": pytest.approx(A[best.seed] * 10), "aesthetic": pytest.approx(B[best.seed] * 10)}


@pytest.mark.parametrize("spec,kwargs,match", [
    ("clip:nan,aesthetic", {}, r"weight 'nan' of scorer 'clip' must be a finite number >= 0"),
    ("clip:inf", {}, r"weight 'inf' of scorer 'clip' must be a finite number"),
    ("clip:1,aesthetic:-0.5", {}, r"weight '-0.5' of scorer 'aesthetic' must be a finite number >= 0"),
    ("clip:heavy", {}, r"weight 'heavy' of scorer 'clip' is not a number"),
    (["clip", "pickscore"], {"weights": {"pickscore": float("nan")}}, r"weight nan of scorer 'pickscore'"),
    (["clip"], {"weights": {"aesthetic": 1}}, r"weights name 'aesthetic', which is not one of .*\['clip'\]"),
    ("clip,imagereward", {}, r"unknown scorer 'imagereward'; expected one of \['aesthetic', 'clip', 'hpsv2', 'pickscore', 'toy-reward'\]"),
    ("clip,clip:2", {}, r"scorer 'clip' named twice"),
    ("clip:0,aesthetic:0", {}, r"every weight .* is 0"),
    ("clip,,aesthetic", {}, r"has an empty entry"),
    ("clip,aesthetic", {"combine": "mean"}, r"combine='mean'; expected one of \('zscore', 'rank'\)"),
    ("clip,aesthetic", {"model": "/some/clip"}, r"model='/some/clip' for the ensemble .*give a dict"),
    ("clip,aesthetic", {"model": {"pickscore": "x"}}, r"model names \['pickscore'\], which are not among"),
])
def test_bad_ensembles_refused_before_any_model_loads(spec, kwargs, match, monkeypatch):
    import sdkit.scoring.verifiers as verifiers

    for name in verifiers.VERIFIERS:
        monkeypatch.setitem(verifiers.VERIFIERS, name, lambda *a, **k: pytest.fail("loaded a model first"))
    with pytest.raises(ValueError, match=match):
        load_scorer(spec, **kwargs)


def test_cli_refuses_a_bad_scorer_spec_as_it_parses(capsys):
    from sdkit.cli.main import main

    for spec, said in (("clip:1,aesthetic:nan", "weight 'nan' of scorer 'aesthetic'"), ("clip,hps", "unknown scorer 'hps'")):
        with pytest.raises(SystemExit) as e:
            main(["generate", "a red circle", "--scorer", spec])
        assert e.value.code == 2 and said in capsys.readouterr().err


def test_an_ensemble_drives_a_search_on_the_toy_world(tmp_path):
    """best_of_n on sdkit:toy (its trained CLIP) ranked by CLIP + aesthetic (a random head on that CLIP), scored a
    candidate at a time: the ranking and every PNG hold the scores combined over all of a prompt's candidates."""
    import torch

    from sdkit.load.pipeline import load_pipeline
    from sdkit.models.builtin import clip_for
    from sdkit.save import read_metadata
    from sdkit.search import best_of_n
    from sdkit.scoring.convert import convert_aesthetic
    from test_verifiers import laion_mlp

    torch.save(laion_mlp(64, seed=1).state_dict(), tmp_path / "head.pth")
    head = str(convert_aesthetic(tmp_path / "head.pth", tmp_path / "head.safetensors"))
    clip = clip_for("sdkit:toy")
    scorer = load_scorer("clip:1,aesthetic:1", {"clip": clip, "aesthetic": {"model": clip, "head": head}},
                         backend="torch", device="cpu")
    pipe = load_pipeline("sdkit:toy")
    prompts = ["a red circle", "a blue square"]
    run = best_of_n(pipe, prompts, scorer, n=4, seed=0, num_inference_steps=4, batch_size=1,
                    output_dir=tmp_path / "out")
    finished = run.candidates
    members = {n: np.array([c.members[n].logit for c in finished]) for n in ("clip", "aesthetic")}
    expected = combine_scores(members, [c.prompt for c in finished], {"clip": 1.0, "aesthetic": 1.0})
    np.testing.assert_allclose([c.score for c in finished], expected, atol=1e-6)
    assert np.ptp(expected) > 0.5  # not the per-batch zeros
    for c in finished:
        meta = read_metadata(c.path)
        assert meta["score"] == pytest.approx(c.score) and set(meta["members"]) == {"clip", "aesthetic"}
    for prompt in prompts:
        best = [r.candidate for r in run.search.ranked if r.rank == 1 and r.candidate.prompt == prompt][0]
        assert best.score == max(c.score for c in finished if c.prompt == prompt)
