"""Exact regeneration at batched speed (sdkit.load.rows): the GPU's mode, batched with recorded rows, forced on
the CPU (`load_pipeline(..., batch_invariant=False)`), with the same code a GPU runs."""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch

import sdkit.load.rows as rows
from sdkit import fingerprint
from sdkit.generation import generate
from sdkit.load.invariance import install
from sdkit.load.rows import Arithmetic, alone_or_together, runs
from sdkit.load.state import ModuleState
from sdkit.search import particle_resampling, regenerate, successive_halving

FAST = dict(num_inference_steps=4, guidance_scale=2.0, progress=False)


@pytest.fixture(scope="module")
def batched():
    from sdkit.load.pipeline import load_pipeline

    return load_pipeline("sdkit:tiny", batch_invariant=False)


def same(a, b) -> bool:
    return np.array_equal(np.asarray(a.image), np.asarray(b.image))


class Calls:
    """The UNet's inputs as it sees them (inside sdkit's wrapper), and the VAE decode's batch sizes."""

    def __init__(self, pipe, monkeypatch):
        self.unet, self.decode = [], []
        forward = pipe.unet.forward.__wrapped__
        decode = pipe.vae.decode.__wrapped__

        def spy_forward(sample, *args, **kwargs):
            self.unet.append(sample.detach().clone())
            return forward(sample, *args, **kwargs)

        def spy_decode(z, *args, **kwargs):
            self.decode.append(z.shape[0])
            return decode(z, *args, **kwargs)

        # The wrappers call what they wrapped through their closure: replace the closure's target.
        for wrapper, spy in ((pipe.unet.forward, spy_forward), (pipe.vae.decode, spy_decode)):
            cell = next(c for c in wrapper.__closure__ if c.cell_contents is wrapper.__wrapped__)
            monkeypatch.setattr(cell, "cell_contents", spy)


def test_every_candidate_records_its_rows_and_regenerates_exactly(batched, tmp_path):
    run = generate(batched, "a red circle", n=5, seed=0, batch_size=3, output_dir=tmp_path, **FAST)
    assert [c.arithmetic["unet"] for c in run] == [[[0, 3, 0]], [[0, 3, 1]], [[0, 3, 2]], [[0, 2, 0]], [[0, 2, 1]]]
    assert [c.arithmetic["decode"] for c in run] == [[3, 0], [3, 1], [3, 2], [2, 0], [2, 1]]
    assert run[0].arithmetic["device"] and run[0].arithmetic["software"]["torch"] == torch.__version__
    for c in run:
        assert same(regenerate(c.path, pipe=batched), c)


def test_the_replay_pads_each_call_to_the_recorded_size_with_the_candidate_in_its_row(batched, monkeypatch):
    run = generate(batched, "a red circle", n=4, seed=0, batch_size=4, **FAST)
    c = run[2]
    calls = Calls(batched, monkeypatch)
    again = regenerate(c.params(), pipe=batched)
    assert same(again, c)
    assert [len(x) for x in calls.unet] == [8] * FAST["num_inference_steps"]  # 4 candidates, a guidance pair each
    for x in calls.unet:
        filled = [i for i in range(8) if x[i].abs().sum() > 0]
        assert filled == [2, 6]  # row 2 of 4, unconditional and conditional halves
    assert calls.decode == [4]
    # A changed record changes the calls: the replay follows what it is given.
    changed = copy.deepcopy(c.params())
    changed["arithmetic"]["unet"], changed["arithmetic"]["decode"] = [[0, 3, 0], [2, 5, 4]], [1, 0]
    calls.unet.clear(), calls.decode.clear()
    regenerate(changed, pipe=batched)
    assert [len(x) for x in calls.unet] == [6, 6, 10, 10] and calls.decode == [1]
    assert [i for i in range(10) if calls.unet[-1][i].abs().sum() > 0] == [4, 9]


def test_padding_contents_do_not_matter(batched, monkeypatch):
    run = generate(batched, "a red circle", n=4, seed=1, batch_size=4, **FAST)
    gather = rows.gather

    def noisy(x, where, size, copies, total):  # random padding rows instead of zeros
        out = gather(x, where, size, copies, total)
        if out is x:
            return out
        keep = {c * size + r for r in where.values() for c in range(copies)}
        out = out.clone()
        for i in range(len(out)):
            if i not in keep:
                out[i] = torch.randn_like(out[i])
        return out

    monkeypatch.setattr(rows, "gather", noisy)
    for c in run:
        assert same(regenerate(c.params(), pipe=batched), c)


def test_another_device_is_said_once_with_why(batched):
    c = generate(batched, "a red circle", n=1, seed=2, **FAST)[0]
    meta = copy.deepcopy(c.params())
    meta["arithmetic"]["device"] = "NVIDIA H200"
    meta["arithmetic"]["software"]["cuda"] = "13.0"
    with pytest.warns(UserWarning, match=r"other hardware or software \(device 'NVIDIA H200' then.*cuda 13.0 then"):
        again = regenerate(meta, pipe=batched)
    assert same(again, c)  # the same rows replayed: here, the same pixels


def test_searches_run_batched_and_their_survivors_and_particles_regenerate_exactly(batched, tmp_path):
    from conftest import red
    from sdkit.load.pipeline import load_pipeline

    run = successive_halving(batched, ["a red circle", "a blue square"], red, n=8, seed=0, output_dir=tmp_path / "h",
                             **{**FAST, "num_inference_steps": 8})
    assert len(run) == 2 and run.search.pruned
    for c in run:
        sizes = [size for _, size, _ in c.arithmetic["unet"]]
        assert sizes[0] == 16 and sizes == sorted(sizes, reverse=True)  # both prompts share calls; pruned ones leave
        assert same(regenerate(c.path, pipe=batched), c)
    euler = load_pipeline("sdkit:tiny", batch_invariant=False, scheduler="Euler a")
    run = particle_resampling(euler, "a red circle", red, n=4, seed=0, lambda_=3.0, output_dir=tmp_path / "p",
                              **{**FAST, "num_inference_steps": 8})
    assert any(len(c.extra["search"]["lineage"]) > 1 for c in run)  # some particles were copied
    for c in run:
        assert same(regenerate(c.path, pipe=euler), c)


def test_a_resumed_batched_run_makes_the_missing_candidates_in_their_original_rows(batched, tmp_path):
    whole = generate(batched, "a red circle", n=8, seed=3, batch_size=4, **FAST)
    stop = threading.Event()
    part = generate(batched, "a red circle", n=8, seed=3, batch_size=4, output_dir=tmp_path, run_id="r",
                    callback=lambda p: p.finished and stop.set(), cancel=stop, **FAST)
    assert part.cancelled and len(part) == 4
    (tmp_path / part[1].path).unlink()  # a hole in the first batch too
    resumed = generate(batched, "a red circle", n=8, seed=3, batch_size=2, output_dir=tmp_path, run_id="r", **FAST)
    assert resumed.resumed == 3 and len(resumed) == 8
    assert [c.arithmetic["unet"] for c in resumed] == [[[0, 4, k]] for k in range(4)] * 2
    assert all(same(a, b) for a, b in zip(resumed, whole))


def test_a_resumed_batch_of_long_and_short_prompts_replays_their_separate_calls(batched, tmp_path):
    long = "a red circle, " + ", ".join(["soft light", "paper texture"] * 30)  # > 77 tokens: two chunks
    prompts = [long, "a red circle"]
    whole = generate(batched, prompts, n=3, seed=3, batch_size=4, **FAST)
    assert [c.arithmetic["unet"] for c in whole] == [[[0, 3, 0]], [[0, 3, 1]], [[0, 3, 2]], [[0, 1, 0]],
                                                     [[0, 2, 0]], [[0, 2, 1]]]  # batch 1: 3 long rows, 1 short
    stop = threading.Event()
    part = generate(batched, prompts, n=3, seed=3, batch_size=4, output_dir=tmp_path, run_id="r",
                    callback=lambda p: p.finished and stop.set(), cancel=stop, **FAST)
    assert part.cancelled and len(part) == 4
    (tmp_path / part[1].path).unlink()  # a long prompt's row of the first batch
    (tmp_path / part[3].path).unlink()  # the short prompt's row there, alone in its call
    resumed = generate(batched, prompts, n=3, seed=3, batch_size=2, output_dir=tmp_path, run_id="r", **FAST)
    assert resumed.resumed == 2 and len(resumed) == 6
    assert [c.arithmetic["unet"] for c in resumed] == [c.arithmetic["unet"] for c in whole]
    assert all(same(a, b) for a, b in zip(resumed, whole))


def test_live_candidates_are_split_into_even_calls_of_at_most_max_rows():
    state = ModuleState(installed=True, batch_invariant=False, max_rows=3)
    assert [size for size, _ in alone_or_together(state, list(range(8)))] == [3, 3, 2]
    assert alone_or_together(state, [1, 5])[0] == (2, {1: 0, 5: 1})
    state.batch_invariant = True
    assert alone_or_together(state, [4, 6]) == [(1, {4: 0}), (1, {6: 0})]
    assert runs([(8, 3), (8, 3), (4, 1), (2, 0), (2, 0)]) == [[0, 8, 3], [2, 4, 1], [3, 2, 0]]
    a = Arithmetic([[0, 8, 3], [2, 4, 1]], [4, 1])
    assert [a.at(i) for i in range(4)] == [(8, 3), (8, 3), (4, 1), (4, 1)] and not a.alone


def test_the_cpu_default_runs_each_candidate_alone_and_says_so(tiny_pipe):
    install(tiny_pipe, batch_invariant=True)
    run = generate(tiny_pipe, "a red circle", n=3, seed=0, batch_size=3, **FAST)
    assert all(c.arithmetic["unet"] == [[0, 1, 0]] and c.arithmetic["decode"] == [1, 0] for c in run)
    assert all(Arithmetic.from_json(c.arithmetic).alone for c in run)
    alone = generate(tiny_pipe, "a red circle", n=3, seed=0, batch_size=1, **FAST)
    assert all(same(a, b) for a, b in zip(run, alone))
    assert fingerprint(run[0].image)
