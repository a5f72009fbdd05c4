"""On an accelerator a search scores the pipeline's own tensor (no PIL round trip); the same scores as PIL's path.
The accelerator path is forced on the CPU here (`sdkit.generation.TENSOR_DEVICES`): the same code a GPU runs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from conftest import red
from sdkit import generation
from sdkit.save import read_metadata
from sdkit.scoring.scorers import load_scorer
from sdkit.search import successive_halving


class Spy:
    """A scorer that records what it was handed (a tensor or PIL images) and scores with the tiny CLIP."""

    takes_tensors = True

    def __init__(self, scorer):
        self.scorer, self.name, self.model_id, self.seen = scorer, scorer.name, scorer.model_id, []

    def __call__(self, images, prompts):
        self.seen.append(type(images).__name__)
        return self.scorer(images, prompts)


@pytest.fixture(scope="module")
def clip():
    from sdkit.models.tiny_clip import tiny_clip_path

    return load_scorer("torch", tiny_clip_path())


def _search(pipe, scorer, out):
    return successive_halving(pipe, ["a red circle", "a cat"], scorer, n=4, prune_at=(1,), keep=(2,), seed=3,
                              num_inference_steps=3, output_dir=out)


def test_a_search_on_an_accelerator_scores_the_tensor_with_the_pil_paths_scores(tiny_pipe, clip, tmp_path,
                                                                                monkeypatch):
    by_pil = Spy(clip)
    pil = _search(tiny_pipe, by_pil, tmp_path / "pil")
    assert set(by_pil.seen) == {"list"}  # the CPU: PIL images
    monkeypatch.setattr(generation, "TENSOR_DEVICES", ("cpu",))
    by_tensor = Spy(clip)
    run = _search(tiny_pipe, by_tensor, tmp_path / "tensor")
    assert set(by_tensor.seen) == {"Tensor"} and len(by_tensor.seen) == len(by_pil.seen)  # previews and finals
    assert [c.seed for c in run] == [c.seed for c in pil]  # the same survivors
    for a, b in zip(run, pil):
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
        assert a.logit == b.logit and a.score == b.score  # preprocessing on the tensor is PIL's, bit for bit
        assert a.pixels is None  # no device memory held by a finished run
        assert "pixels" not in read_metadata(a.path)
    assert [p.record()["extra"]["search"]["preview_scores"] for p in run.search.pruned] == \
        [p.record()["extra"]["search"]["preview_scores"] for p in pil.search.pruned]


def test_a_scorer_of_ones_own_still_gets_pil_images_on_an_accelerator(tiny_pipe, tmp_path, monkeypatch):
    monkeypatch.setattr(generation, "TENSOR_DEVICES", ("cpu",))
    seen = []

    def mine(images, prompts):
        seen.append(type(images).__name__)
        return red(images, prompts)

    run = _search(tiny_pipe, mine, tmp_path)
    assert set(seen) == {"list"} and len(run) == 4


def _finished(tiny_pipe, n=10):
    from sdkit.generation import generate

    return generate(tiny_pipe, ["a red circle", "a cat"], n=n // 2, seed=5, num_inference_steps=2, progress=False)


def test_rerank_of_a_finished_run_scores_it_on_the_device_in_chunks_with_the_pil_paths_scores(tiny_pipe, clip,
                                                                                            monkeypatch):
    from sdkit import ranking
    from sdkit.ranking import rerank

    run = _finished(tiny_pipe)
    by_pil = Spy(clip)
    pil = rerank(run, by_pil, save=False)
    assert by_pil.seen == ["list"]  # the CPU: one call of PIL images, as before
    monkeypatch.setattr(generation, "TENSOR_DEVICES", ("cpu",))
    monkeypatch.setattr(ranking, "CHUNK", 4)
    by_tensor = Spy(clip)
    tensor = rerank(run, by_tensor, save=False)
    assert by_tensor.seen == ["Tensor"] * 3  # 10 images in calls of at most 4
    assert [(r.candidate.seed, r.candidate.prompt, r.rank) for r in tensor] == \
        [(r.candidate.seed, r.candidate.prompt, r.rank) for r in pil]
    assert [(r.logit, r.score) for r in tensor] == [(r.logit, r.score) for r in pil]  # bit for bit
    assert all(r.candidate.pixels is None for r in tensor)


def test_finished_images_of_two_sizes_go_in_separate_calls_and_come_back_in_order(tiny_pipe, clip, monkeypatch):
    from sdkit.ranking import score_candidates

    run = _finished(tiny_pipe, n=4)
    small = [dataclasses.replace(c, image=c.image.resize((24, 24))) for c in run.candidates[:2]]
    cands = [run.candidates[0], small[0], run.candidates[1], small[1]]
    expected = [c.logit for c in score_candidates(cands, clip)]  # the CPU: one call of PIL images
    monkeypatch.setattr(generation, "TENSOR_DEVICES", ("cpu",))
    spy = Spy(clip)
    got = score_candidates(cands, spy)
    assert spy.seen == ["Tensor", "Tensor"] and [c.image.size for c in got] == [c.image.size for c in cands]
    assert [c.logit for c in got] == expected


def test_an_ensemble_reranked_on_the_device_in_chunks_ranks_as_one_pil_call(tiny_pipe, clip, monkeypatch):
    """Each chunk's combined score is relative to that chunk; ranking combines the members' scores again over all."""
    from sdkit import ranking
    from sdkit.ranking import rerank
    from sdkit.scoring.ensemble import Ensemble

    def shifted(images, prompts):  # a second member that disagrees with the first
        s = clip(images, prompts)
        return dataclasses.replace(s, logits=-s.logits, scorer="neg-" + s.scorer)

    shifted.takes_tensors = True
    ens = Ensemble({"clip": clip, "neg": shifted}, {"clip": 1.0, "neg": 0.5})
    run = _finished(tiny_pipe)
    monkeypatch.setattr(clip, "batch_size", 2)  # forward passes of 2 images, in one call or in chunks
    pil = rerank(run, ens, save=False)
    monkeypatch.setattr(generation, "TENSOR_DEVICES", ("cpu",))
    monkeypatch.setattr(ranking, "CHUNK", 5)
    assert ranking.chunk_size(ens) == 4  # whole forward passes of its CLIP member
    spy = Spy(ens)
    spy.members = ens.members
    tensor = rerank(run, spy, save=False)
    assert spy.seen == ["Tensor"] * 3
    assert [(r.candidate.seed, r.candidate.prompt, r.rank, r.logit) for r in tensor] == \
        [(r.candidate.seed, r.candidate.prompt, r.rank, r.logit) for r in pil]
    assert [r.candidate.members["neg"].logit for r in tensor] == [r.candidate.members["neg"].logit for r in pil]


def test_chunks_hold_whole_forward_passes_of_the_scorer():
    from types import SimpleNamespace

    from sdkit.ranking import CHUNK, chunk_size

    assert chunk_size(SimpleNamespace()) == CHUNK == 64
    assert chunk_size(SimpleNamespace(batch_size=24)) == 48
    assert chunk_size(SimpleNamespace(batch_size=4, devices=[0, 1, 2])) == 60
    assert chunk_size(SimpleNamespace(batch_size=128)) == 128
    members = {"a": SimpleNamespace(batch_size=6), "b": SimpleNamespace(batch_size=4)}
    assert chunk_size(SimpleNamespace(members=members)) == 60  # multiples of 12 feed both whole passes


def test_pil_images_back_to_a_tensor_preprocess_as_the_decoded_tensor_did():
    """pil_to_tensor(the PIL images diffusers makes of a decoded tensor) is CLIP-preprocessed exactly as that tensor."""
    import torch
    from diffusers.image_processor import VaeImageProcessor

    from sdkit.ranking import pil_to_tensor
    from sdkit.scoring.preprocess import ImageConfig, preprocess, preprocess_tensor

    decoded = torch.rand(3, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    images = VaeImageProcessor.numpy_to_pil(VaeImageProcessor.pt_to_numpy(decoded))
    back = pil_to_tensor(images, "cpu")
    assert back.shape == decoded.shape and back.dtype == torch.float32
    config = ImageConfig()
    assert torch.equal(preprocess_tensor(back, config), preprocess_tensor(decoded, config))
    assert np.array_equal(preprocess_tensor(back, config).numpy(), preprocess(images, config))
