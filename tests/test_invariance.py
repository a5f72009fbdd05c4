"""sdkit.invariance: one UNet call per candidate, its classifier-free-guidance pair kept together."""

import numpy as np
import torch

from sdkit import generate, load_pipeline
from sdkit.invariance import _per_candidate, cfg_pairs

FAST = dict(num_inference_steps=3, height=64, width=64)


def test_cfg_pairs_reads_diffusers_layout():
    latents = torch.randn(3, 4, 8, 8)
    assert cfg_pairs(torch.cat([latents] * 2))  # what every diffusers SD pipeline passes with guidance
    assert not cfg_pairs(latents)  # odd batch
    assert not cfg_pairs(latents[:2])  # two distinct latents: two candidates without guidance
    assert not cfg_pairs(torch.cat([latents, latents + 1e-6]))


def test_one_call_per_candidate_with_its_pair(monkeypatch):
    pipe = load_pipeline("sdkit:tiny")
    inner = pipe.unet.forward.__wrapped__  # the UNet's own forward
    calls = []

    def spy(sample, t, ehs, *a, **k):
        calls.append((sample.shape[0], ehs.clone()))
        return inner(sample, t, ehs, *a, **k)

    monkeypatch.setattr(pipe.unet, "forward", _per_candidate(spy))
    generate(pipe, ["a red circle", "a cat", "a dog"], n=1, seed=0, batch_size=3, negative_prompt="ugly", **FAST)
    assert [b for b, _ in calls] == [2] * 9  # 3 steps x 3 candidates, each one call of [uncond, cond]
    uncond, cond = calls[0][1][0], calls[0][1][1]
    assert not torch.equal(uncond, cond)  # the pair is the negative and the positive prompt
    assert torch.equal(calls[0][1][0], calls[1][1][0])  # same negative prompt for every candidate
    assert not torch.equal(calls[0][1][1], calls[1][1][1])  # each candidate its own prompt
    calls.clear()
    generate(pipe, "a red circle", n=3, seed=0, batch_size=3, guidance_scale=1.0, **FAST)
    assert [b for b, _ in calls] == [1] * 9  # no guidance: one row per candidate


def test_candidate_is_the_same_in_any_batch_without_guidance():
    pipe = load_pipeline("sdkit:tiny")
    kw = dict(guidance_scale=1.0, **FAST)
    b4 = [np.asarray(c.image) for c in generate(pipe, "a red circle", n=4, seed=7, batch_size=4, **kw)]
    b1 = [np.asarray(c.image) for c in generate(pipe, "a red circle", n=4, seed=7, batch_size=1, **kw)]
    assert all(np.array_equal(a, b) for a, b in zip(b4, b1))
    assert not np.array_equal(b4[0], b4[1])


def test_same_as_one_batched_call_per_candidate(tiny_pipe):
    """Per-candidate is the tutorial's loop: each candidate equals its own diffusers call, unwrapped."""
    run = generate(tiny_pipe, "a green triangle", n=2, seeds=[3, 4], batch_size=2, **FAST)
    wrapper = tiny_pipe.unet.forward
    tiny_pipe.unet.forward = wrapper.__wrapped__
    try:
        for c in run:
            ref = tiny_pipe("a green triangle", generator=torch.Generator("cpu").manual_seed(c.seed), **FAST).images[0]
            assert np.array_equal(np.asarray(c.image), np.asarray(ref))
    finally:
        tiny_pipe.unet.forward = wrapper
