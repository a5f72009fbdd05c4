"""sdkit.load.invariance: one UNet call per candidate, its classifier-free-guidance pair kept together."""

import functools

import numpy as np
import pytest
import torch

from sdkit import generate, load_pipeline
from sdkit.load.invariance import cfg_pairs, is_batch_invariant
from sdkit.load.rows import rows_unet
from sdkit.load.schedulers import SCHEDULERS
from sdkit.load.state import ModuleState, module_state

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

    assert is_batch_invariant(pipe)  # the CPU's default
    monkeypatch.setattr(pipe.unet, "forward", rows_unet(spy, ModuleState(installed=True, batch_invariant=True), pipe.unet.config.out_channels))
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


@pytest.fixture(scope="module")
def third_party_path(tmp_path_factory):
    """A pipeline sdkit did not build: diffusers' own test components (`get_dummy_components()` of
    tests/pipelines/stable_diffusion/test_stable_diffusion.py), saved with `save_pretrained`."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=2)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False)
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=[4, 8], in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=2,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=2, hidden_size=32, intermediate_size=37, layer_norm_eps=1e-05,
        num_attention_heads=4, num_hidden_layers=5, pad_token_id=1, vocab_size=1000))
    # diffusers' tests download hf-internal-testing/tiny-random-clip; offline, a byte-level BPE vocabulary
    # (transformers' own byte map, no merges) gives ids below the encoder's 1000.
    symbols = list(bytes_to_unicode().values())
    vocab = {"<|startoftext|>": 0, "<pad>": 1, "<|endoftext|>": 2}
    for s in symbols + [s + "</w>" for s in symbols]:
        vocab.setdefault(s, len(vocab))
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    pipe = StableDiffusionPipeline(unet=unet, scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    path = tmp_path_factory.mktemp("third_party") / "pipe"
    pipe.save_pretrained(path)
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
@pytest.mark.parametrize("model", ["sdkit:tiny", "third-party"])
def test_candidate_is_bit_identical_in_batches_of_1_2_3_8(model, scheduler, third_party_path):
    """With guidance, 10 steps: enough for a 1e-7 difference in a batched prompt embedding to reach the
    pixels under an ancestral sampler (it did on the third-party pipeline before prompts were encoded alone)."""
    pipe = load_pipeline(third_party_path if model == "third-party" else model, scheduler=scheduler)
    kw = dict(n=8, seed=0, num_inference_steps=10, progress=False, negative_prompt="")
    prompt = "A painting of a squirrel eating a burger"
    alone = [np.asarray(c.image) for c in generate(pipe, prompt, batch_size=1, **kw)]
    assert not np.array_equal(alone[0], alone[1])
    for bs in (2, 3, 8):
        batched = [np.asarray(c.image) for c in generate(pipe, prompt, batch_size=bs, **kw)]
        differ = [k for k, (a, b) in enumerate(zip(alone, batched)) if not np.array_equal(a, b)]
        assert differ == [], f"{model}, {scheduler}, batch {bs}: candidates {differ} differ from alone"


@pytest.mark.slow  # every scheduler, twice
@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_skipped_candidates_leave_the_others_bit_identical(scheduler):
    """What pruning relies on: stopping some candidates' UNet evaluations mid-way changes nothing for the rest."""
    from sdkit.load.invariance import skipping

    pipe = load_pipeline("sdkit:tiny", scheduler=scheduler)
    kw = dict(num_inference_steps=5, height=64, width=64, batch_size=4, progress=False)
    ref = generate(pipe, ["a red circle", "a cat"], n=2, seed=3, **kw)
    calls = []
    inner = pipe.unet.forward.__wrapped__  # the UNet's own forward: count the evaluations that reach it

    def counted(sample, *a, **k):
        calls.append(sample.shape[0])
        return inner(sample, *a, **k)

    with skipping(pipe) as skip:
        real = pipe.unet.forward
        pipe.unet.forward = functools.wraps(real)(rows_unet(counted, module_state(pipe.unet), pipe.unet.config.out_channels))

        def prune(progress):
            if progress.step == 2 and progress.finished is None:
                skip.update({1, 2})  # "a red circle" seed 4 and "a cat" seed 3

        try:
            run = generate(pipe, ["a red circle", "a cat"], n=2, seed=3, callback=prune, **kw)
        finally:
            pipe.unet.forward = real
    assert module_state(pipe.unet).skip is None  # the block is over: nothing skipped any more
    same = [np.array_equal(np.asarray(a.image), np.asarray(b.image)) for a, b in zip(run, ref)]
    assert same == [True, False, False, True]
    pipe.scheduler.set_timesteps(5)  # UNet evaluations per candidate (Heun: two per step but the last)
    evaluations = len(pipe.scheduler.timesteps)
    assert len(calls) == 4 * 2 + 2 * (evaluations - 2), (scheduler, len(calls))
