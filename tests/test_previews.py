"""x0 previews (sdkit.search.previews): the reference is diffusers itself, on sdkit's tiny models."""

import inspect

import diffusers
import numpy as np
import pytest
import torch

from sdkit.errors import ModelNotAvailable
from sdkit.generation import generate
from sdkit.load.pipeline import load_pipeline
from sdkit.load.previewer import load_previewer
from sdkit.load.schedulers import SCHEDULERS, make_scheduler
from sdkit.search.previews import capture_previews, decode_previews, x0_prediction

# Their last step lands exactly on the x0 of that step (sigma_next = 0); DDIM and PNDM go to alphas_cumprod[0]
# (set_alpha_to_one=False), a little noise short of it.
# Two schedulers (one DDPM-family, one k-diffusion) in make test-fast; every one in make test.
GENERATING = [n if n in ("DDIM", "Euler a") else pytest.param(n, marks=pytest.mark.slow) for n in SCHEDULERS]
EXACT_LAST = {"Euler", "Euler a", "Heun", "DPM++ 2M", "DPM++ 2M Karras", "UniPC"}


def diff(a, b) -> float:
    return (a.float() - b.float()).abs().max().item()


def pixel_diff(a, b) -> float:
    return np.abs(np.asarray(a, float) - np.asarray(b, float)).mean()


def reference_x0(name, scheduler, out, eps, t, x, ddim):
    """diffusers' own x0 for the step just taken."""
    if getattr(out, "pred_original_sample", None) is not None:  # DDIM, Euler, Euler a, Heun
        return out.pred_original_sample
    if name == "PNDM":  # PNDM's step exposes none: DDIM's for the same noise prediction, timestep and sample
        return ddim.step(eps, t, x).pred_original_sample
    return scheduler.model_outputs[-1]  # DPM++ / UniPC: what their convert_model_output returned inside step()


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_x0_is_the_schedulers_own_and_changes_nothing(name, tiny_pipe):
    config = tiny_pipe.scheduler.config
    observed, untouched = make_scheduler(name, config), make_scheduler(name, config)
    ddim = make_scheduler("DDIM", config)
    for s in (observed, untouched, ddim):
        s.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x = y = torch.randn(3, 4, 8, 8, generator=g) * observed.init_noise_sigma
    exposed = worst = wrong = 0.0
    noisy = "generator" in inspect.signature(observed.step).parameters  # Euler a: the same noise for both
    for i, t in enumerate(observed.timesteps):
        kwargs = lambda: {"generator": torch.Generator().manual_seed(i)} if noisy else {}  # noqa: E731
        eps = torch.randn(3, 4, 8, 8, generator=g) + 0.1 * observed.scale_model_input(x, t)  # as if from a UNet
        mine = x0_prediction(observed, eps, t, x)
        out = observed.step(eps, t, x, **kwargs())
        exposed += getattr(out, "pred_original_sample", None) is not None
        worst = max(worst, diff(mine, reference_x0(name, observed, out, eps, t, x, ddim)))
        # A deliberately wrong preview: taken after the step, where the scheduler has moved on to the next sigma.
        later = observed.timesteps[min(len(observed.timesteps) - 1, (observed.timesteps == t).nonzero()[-1].item() + 1)]
        wrong = max(wrong, diff(x0_prediction(observed, eps, later, x), reference_x0(name, observed, out, eps, t, x, ddim)))
        untouched.scale_model_input(y, t)
        y_next = untouched.step(eps, t, y, **kwargs()).prev_sample
        assert torch.equal(out.prev_sample, y_next), "x0_prediction changed the scheduler's course"
        x, y = out.prev_sample, y_next
    assert worst < 1e-5, f"{name}: x0 differs from diffusers' by {worst}"
    assert wrong > 100 * 1e-5, f"{name}: the test cannot tell a wrong x0 ({wrong})"
    assert bool(exposed) == (name in {"DDIM", "Euler", "Euler a", "Heun"})


def pipe_latents(pipe, n=2, steps=4, **kwargs):
    return pipe(prompt=["a red circle"] * n, num_inference_steps=steps, guidance_scale=2.0,
                generator=[torch.Generator().manual_seed(s) for s in range(n)], **kwargs).images


@pytest.mark.parametrize("name", GENERATING)
def test_last_preview_is_the_final_latents(name):
    pipe = load_pipeline("sdkit:tiny", scheduler=name)
    with capture_previews(pipe) as previews:
        final = pipe_latents(pipe, output_type="latent")
    last, first = previews.at(-1), previews.at(0)
    # Measured, as a share of the latents' range: after the last step Euler, Euler a, Heun, DPM++ and UniPC 0
    # (bit-exact), DDIM and PNDM 2e-3; after the first 0.1 (DDIM, Euler) to 0.44 (Euler a).
    tolerance = 1e-6 if name in EXACT_LAST else 1e-2
    scale = final.abs().max().item()
    assert diff(last, final) <= tolerance * scale
    assert diff(first, final) > 5e-2 * scale  # the first step's preview is far: the check can fail


def test_decode_previews_is_the_pipelines_decoding(tiny_pipe):
    latents = pipe_latents(tiny_pipe, output_type="latent")
    images = pipe_latents(tiny_pipe)
    decoded = decode_previews(latents, tiny_pipe.vae)
    assert [im.size for im in decoded] == [im.size for im in images]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(decoded, images))
    assert decode_previews(latents[0], tiny_pipe.vae, batch_size=1)[0].size == images[0].size


@pytest.mark.parametrize("name", GENERATING)
def test_capture_during_generate_changes_no_image(name):
    pipe = load_pipeline("sdkit:tiny", scheduler=name)
    args = dict(n=3, seed=0, num_inference_steps=4, progress=False)
    plain = generate(pipe, "a red circle", **args)
    seen = []
    with capture_previews(pipe, on_step=seen.append) as previews:
        captured = generate(pipe, "a red circle", **args)
    assert "step" not in vars(pipe.scheduler) and "set_timesteps" not in vars(pipe.scheduler)  # restored
    assert all(np.array_equal(np.asarray(a.image), np.asarray(b.image)) for a, b in zip(plain, captured))
    loop = len(pipe.scheduler.timesteps)  # 4 steps; Heun evaluates twice a step, PNDM's Runge-Kutta start more
    assert previews.rows == [2, 1] and len(previews) == 3  # generate's CPU batches of 2
    assert seen == previews.steps and len(previews.steps) == 2 * loop
    for k in range(3):
        rows = previews.of(k)
        assert [step for step, _, _ in rows] == list(range(loop))
        assert [t for _, t, _ in rows] == [float(t) for t in pipe.scheduler.timesteps]
        assert all(x0.shape == (4, 8, 8) for _, _, x0 in rows)
    assert torch.equal(previews.at(-1)[2], previews.of(2)[-1][2])
    # Decoded by the pipeline's VAE, the last previews are the candidates (DDIM, PNDM: within a level or so).
    decoded = decode_previews(previews.at(-1), pipe.vae)
    gap = max(pixel_diff(a, b.image) for a, b in zip(decoded, captured))
    assert gap <= (0.0 if name in EXACT_LAST else 1.0), gap


def test_capture_keeps_only_the_steps_asked_for(tiny_pipe):
    with capture_previews(tiny_pipe, steps={0, -1}) as previews:
        pipe_latents(tiny_pipe, n=1, steps=5, output_type="latent")
    assert [s.step for s in previews.steps] == [0, 4]
    with pytest.raises(KeyError, match="step 2 was not recorded"):
        previews.at(2)


def tiny_taesd():
    torch.manual_seed(0)
    return diffusers.AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                                     num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1), latent_channels=4)


def test_tiny_previewer_decodes_as_the_pipeline_would(tiny_pipe, tmp_path):
    tiny_taesd().save_pretrained(tmp_path / "taesd", safe_serialization=True)
    assert (tmp_path / "taesd" / "diffusion_pytorch_model.safetensors").exists()
    previewer = load_previewer(tmp_path / "taesd")
    assert isinstance(previewer, diffusers.AutoencoderTiny) and previewer.config.scaling_factor == 1.0
    with capture_previews(tiny_pipe) as previews:
        latents = pipe_latents(tiny_pipe, output_type="latent")
    images = decode_previews(previews.at(1), previewer)
    assert [im.size for im in images] == [(64, 64)] * 2
    # TAESD as diffusers' docs use it: in place of the pipeline's VAE, decoding the pipeline's latents as they are.
    with_taesd = diffusers.StableDiffusionPipeline(**tiny_pipe.components)
    with_taesd.vae = previewer
    expected = pipe_latents(with_taesd)
    decoded = decode_previews(latents, previewer)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(decoded, expected))
    assert not np.array_equal(np.asarray(decode_previews(latents / 0.18215, previewer)[0]), np.asarray(expected[0]))


def test_previewer_takes_dtype_and_device_as_load_pipeline_does(tmp_path):
    tiny_taesd().save_pretrained(tmp_path / "taesd", safe_serialization=True)
    assert load_previewer(tmp_path / "taesd").dtype == torch.float32  # None: the weights' own
    assert load_previewer(tmp_path / "taesd", dtype="bf16").dtype == torch.bfloat16
    assert load_previewer(tmp_path / "taesd", dtype=torch.float16, device="cpu").dtype == torch.float16
    on_cpu = load_previewer(tmp_path / "taesd", dtype="auto", device="auto" if not torch.cuda.is_available() else "cpu")
    assert on_cpu.dtype == torch.float32 and on_cpu.device.type == "cpu"  # tiny: bf16 would only slow it
    with pytest.raises(ValueError, match="dtype='half'"):
        load_previewer(tmp_path / "taesd", dtype="half")
    with pytest.raises(TypeError, match="torch_dtype"):  # one name in sdkit's API: dtype, as load_pipeline's
        load_previewer(tmp_path / "taesd", torch_dtype=torch.float16)


def test_previewer_refuses_pickles_and_other_models(tmp_path):
    tiny_taesd().save_pretrained(tmp_path / "pickled", safe_serialization=False)
    with pytest.raises(ModelNotAvailable, match=r"only pickle weights \['diffusion_pytorch_model.bin'\]"):
        load_previewer(tmp_path / "pickled")
    diffusers.AutoencoderKL(block_out_channels=(8,), norm_num_groups=8).save_pretrained(tmp_path / "kl")
    with pytest.raises(ModelNotAvailable, match="not an AutoencoderTiny.*AutoencoderKL"):
        load_previewer(tmp_path / "kl")
    with pytest.raises(ModelNotAvailable, match="no such directory"):
        load_previewer(tmp_path / "missing")


@pytest.mark.slow
def test_toy_world_last_previews_look_like_the_images():
    pipe = load_pipeline("sdkit:toy")
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    with capture_previews(pipe, steps={0, -1}) as previews:
        run = generate(pipe, ["a red circle", "a blue square"], n=1, seed=0, num_inference_steps=20,
                       guidance_scale=2.0, progress=False)
    last = [pixel_diff(a, c.image) for a, c in zip(decode_previews(previews.at(-1), pipe.vae), run)]
    first = [pixel_diff(a, c.image) for a, c in zip(decode_previews(previews.at(0), pipe.vae), run)]
    # Measured: ~0.5 levels (of 255) after the last step; ~22 after the first, which shows only a blur.
    assert max(last) < 2.0, last
    assert min(first) > 10.0, first


def test_toy_previewer_learns_the_toy_vaes_decoding(tmp_path, monkeypatch):
    """sdkit:toy's tiny previewer, distilled briefly: loads as a safetensors AutoencoderTiny, decodes the world's
    latents at the world's size, and its decodes move towards the VAE's (PSNR vs the untrained net's)."""
    import sdkit.toy.previewer as toy_previewer
    from sdkit.toy import shapes, train
    from sdkit.toy.world import toy_world_path

    world = toy_world_path("ci", log=None)
    s = toy_previewer.PreviewerSettings(steps=60, samples=256)
    info = toy_previewer.build_previewer(tmp_path / "p", world, s)
    assert (tmp_path / "p" / "diffusion_pytorch_model.safetensors").exists()
    monkeypatch.setattr(toy_previewer, "toy_previewer_path", lambda: tmp_path / "p")
    tiny = load_previewer("sdkit:toy")
    assert isinstance(tiny, diffusers.AutoencoderTiny) and tiny.config.scaling_factor == 1.0
    vae = diffusers.AutoencoderKL.from_pretrained(world / "pipeline" / "vae").eval()
    images, _, _ = shapes.sample(16, seed=123)
    z = train.encode(vae, train.to_tensor(images))[0] * vae.config.scaling_factor
    want = np.stack([np.asarray(im, float) for im in decode_previews(z, vae)])

    def psnr(model):
        got = np.stack([np.asarray(im, float) for im in decode_previews(z, model)])
        assert got.shape == want.shape == (16, shapes.IMAGE_SIZE, shapes.IMAGE_SIZE, 3)
        return 10 * np.log10(255 ** 2 / ((got - want) ** 2).mean())

    torch.manual_seed(0)
    untrained = toy_previewer.make_previewer(s, 4).eval()
    assert psnr(tiny) > psnr(untrained) + 3, (psnr(tiny), psnr(untrained), info)
    assert info["psnr_vs_vae_db"]["clean"] > 0 and info["settings"]["steps"] == 60
