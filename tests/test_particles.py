"""sdkit.search.particle_resampling (FK steering): particles resampled by their previews' scores, each image remade from its
lineage; on the tiny pipeline with a stochastic sampler."""

import numpy as np
import pytest

from conftest import pixels, red  # shared with test_strategies.py
from sdkit import generate, regenerate
from sdkit.load.pipeline import load_pipeline
from sdkit.results import Lineage, Scores
from sdkit.save import read_metadata
from sdkit.search import default_resampling, particle_resampling, strategy_named
from sdkit.search.particles import resample

PROMPTS = ["a red circle", "a cat"]


def test_every_particle_regenerates_from_its_png_by_its_lineage(euler_a, tmp_path):
    s = particle_resampling(euler_a, PROMPTS, red, n=4, seed=0, num_inference_steps=6, resample_at=(1, 2, 4),
                            lambda_=3.0, output_dir=tmp_path, progress=False).search
    assert len(s.ranked) == 8 and s.compute.unet_evaluations == 8 * 6
    assert s.compute.preview_decodes == 8 * 3 and s.compute.scored_images == 8 * 3 + 8
    lineages = [r.candidate.extra["search"]["lineage"] for r in s.ranked]
    assert any(len(x) > 2 for x in lineages)  # copied more than once: the replay has several hand-overs
    for r in s.ranked:
        c = r.candidate
        lineage = read_metadata(c.path)["extra"]["search"]["lineage"]
        assert lineage[-1][1] == c.seed and lineage[0][0] == 0 and [s for s, _ in lineage] == sorted({s for s, _ in lineage})
        again = regenerate(c.path, euler_a)
        assert np.array_equal(pixels(again), pixels(c)) and again.seed == c.seed
    # A copied particle is not its seed's plain image; an uncopied one is.
    for r in s.ranked:
        c = r.candidate
        plain = generate(euler_a, c.prompt, n=1, seeds=[c.seed], num_inference_steps=6, progress=False).candidates[0]
        assert np.array_equal(pixels(plain), pixels(c)) == (len(c.extra["search"]["lineage"]) == 1)
    with pytest.raises(ValueError, match="resampled particle.*no overrides"):
        regenerate(s.ranked[0].candidate.path, euler_a, num_inference_steps=8)


def test_lineage_of_a_particle_reads_from_its_png(euler_a, tmp_path):
    """`Lineage.of` reads a particle's ancestry from the candidate and from its PNG's metadata alike."""
    run = particle_resampling(euler_a, "a cat", red, n=4, seed=2, num_inference_steps=4, resample_at=(1, 2),
                              lambda_=3.0, output_dir=tmp_path, progress=False)
    for c in run:
        meta = read_metadata(c.path)
        lineage = Lineage.of(meta)
        assert lineage == Lineage.of(c) and isinstance(lineage, Lineage)
        assert lineage.to_json() == meta["extra"]["search"]["lineage"]
        assert lineage.hops[0][0] == 0 and lineage.hops[-1][1] == c.seed
        assert lineage.seeds == list(dict.fromkeys(seed for _, seed in lineage.hops)) and c.seed in lineage.seeds
        assert all(isinstance(step, int) and isinstance(seed, int) for step, seed in lineage.hops)
    plain = generate(euler_a, "a cat", n=1, seed=0, num_inference_steps=2, output_dir=tmp_path / "plain", progress=False)
    assert Lineage.of(read_metadata(plain[0].path)) is None and Lineage.of(plain[0]) is None  # not a particle


def test_resampling_follows_the_scores(euler_a):
    """A scorer that likes one seed's previews makes every particle its descendant at the first resampling."""
    def likes_seed_6(images, prompts):
        logits = np.zeros(len(images), np.float32)
        logits[2] = 1.0  # seeds 4..7: row 2 is seed 6
        return Scores(logits=logits, clip_score=100 * logits, scorer="x")

    s = particle_resampling(euler_a, "a cat", likes_seed_6, n=4, seed=4, num_inference_steps=4, resample_at=(1,),
                            lambda_=1.0, progress=False).search
    assert sorted(tuple(map(tuple, r.candidate.extra["search"]["lineage"])) for r in s.ranked) == \
        [((0, 6),), ((0, 6), (1, 4)), ((0, 6), (1, 5)), ((0, 6), (1, 7))]


def test_resample_draws_by_weight_and_keeps_drawn_rows_in_place():
    weights = np.array([0.1, 0.6, 0.0, 0.3])
    for k in range(20):
        parents = resample(weights, np.random.default_rng(k))
        draws = np.random.default_rng(k).choice(4, size=4, p=weights / weights.sum())
        assert sorted(parents) == sorted(draws.tolist())  # the same multiset of particles
        assert all(parents[p] == p for p in parents) and 2 not in parents


def test_ddim_with_eta_is_stochastic_enough_and_records_it(tiny_pipe):
    s = particle_resampling(tiny_pipe, "a cat", red, n=3, seed=1, num_inference_steps=4, resample_at=(1, 2),
                            lambda_=5.0, pipe_kwargs={"eta": 1.0}, progress=False).search
    c = s.best[0]
    assert c.extra["search"]["eta"] == 1.0
    assert np.array_equal(pixels(regenerate(c.params() | {"extra": c.extra}, tiny_pipe)), pixels(c))


def test_it_runs_by_name_with_its_defaults(euler_a):
    run = strategy_named("particle_resampling")(euler_a, "a cat", red, n=3, seed=0, num_inference_steps=10,
                                                progress=False)
    assert run.search.settings["resample_at"] == list(default_resampling(10)) == list(range(1, 10))
    assert default_resampling(20) == tuple(range(2, 20, 2))  # the measured default (bench/results/particles.md)
    assert run.search.settings["lambda_"] == 0.3 and len(run) == 3


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=1), r"n=1 particles per prompt: must be an integer >= 2"),
    (dict(resample_at=(4,)), r"resample_at=\[4\]: increasing steps from 1 to num_inference_steps - 1 = 3"),
    (dict(resample_at=(2, 1)), r"resample_at=\[2, 1\]"),
    (dict(lambda_=-1), r"lambda_=-1: the potential's sharpness, a number >= 0"),
    (dict(batch_size=2), r"batch_size=2: particle_resampling moves particles between rows"),
])
def test_bad_settings_are_refused_before_any_work(euler_a, monkeypatch, kwargs, match):
    monkeypatch.setattr(type(euler_a), "__call__", lambda *a, **k: pytest.fail("generated before checking"))
    with pytest.raises(ValueError, match=match):
        particle_resampling(euler_a, "a cat", red, **(dict(n=4, num_inference_steps=4) | kwargs))


def test_deterministic_samplers_and_edits_are_refused(tiny_pipe, euler_a):
    with pytest.raises(ValueError, match=r"needs a stochastic sampler.*DDIMScheduler with eta=0.*'Euler a'"):
        particle_resampling(tiny_pipe, "a cat", red, n=2, num_inference_steps=4)
    from sdkit.edit.tasks import prepare_img2img
    from PIL import Image

    with pytest.raises(ValueError, match="particle_resampling is for text-to-image"):
        particle_resampling(euler_a, "a cat", red, n=2, num_inference_steps=4,
                            edit=prepare_img2img(Image.new("RGB", (16, 16)), strength=0.5, num_inference_steps=4))


def test_cli_particle_resampling(tmp_path, capsys, monkeypatch):
    from sdkit.cli.main import main

    assert main(["a cat", "-n", "3", "--seed", "0", "--steps", "4", "--scheduler", "Euler a", "--out", str(tmp_path),
                 "--quiet", "--scorer", "torch", "--search", "particle_resampling", "--resample-at", "1,2",
                 "--lambda", "2"]) == 0
    out = capsys.readouterr().out
    assert "search particle_resampling: 12 UNet evaluations (1.00 of 12), 6 preview decodes" in out
    import sdkit.load.pipeline

    monkeypatch.setattr(sdkit.load.pipeline, "load_pipeline", lambda *a, **k: pytest.fail("loaded before checking"))
    assert main(["a cat", "--search", "particle_resampling"]) == 2
    assert "add --scheduler 'Euler a'" in capsys.readouterr().err
    assert main(["a cat", "--scheduler", "Euler a", "--search", "particle_resampling", "--prune-at", "1"]) == 2
    assert "--search particle_resampling takes --resample-at, --lambda, --previewer" in capsys.readouterr().err
