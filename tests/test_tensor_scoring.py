"""On an accelerator a search scores the pipeline's own tensor (no PIL round trip); the same scores as PIL's path.
The accelerator path is forced on the CPU here (`sdkit.generation.TENSOR_DEVICES`): the same code a GPU runs."""

from __future__ import annotations

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
