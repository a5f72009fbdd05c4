"""SDXL through sdkit: recognised from model_index.json, the same pixels as a plain diffusers call, candidates
batch-invariant on the CPU (two text encoders and the pooled embedding included), regenerate exact, edits,
and kinds sdkit does not run refused by name before any weights load.

One fixture is built here from diffusers' own test recipe for SDXL (`get_dummy_components` in diffusers'
tests/pipelines/stable_diffusion_xl: widths 2/4, norm_num_groups 1, a 2-level VAE), not by sdkit's builder, so
that what sdkit's own tiny-xl hides (its sizes, its tokenizer) cannot make these tests pass.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import sdkit
from sdkit.errors import ModelNotAvailable
from sdkit.load.kinds import UnsupportedModel, family_of
from sdkit.load.invariance import own_memory
from sdkit.load.pipeline import load_pipeline
from sdkit.models.builtin import builtin_pipeline_path, defaults_for
from sdkit.save import read_parameters

STEPS = 4


def pixels(image) -> np.ndarray:
    return np.asarray(image)


@pytest.fixture(scope="module")
def diffusers_recipe_xl(tmp_path_factory):
    """An SDXL folder built from diffusers' test recipe (their numbers, our code), with sdkit's tiny tokenizer."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from sdkit.models.tokenizer import clip_tokenizer

    torch.manual_seed(0)
    tok = clip_tokenizer()
    unet = UNet2DConditionModel(
        block_out_channels=(2, 4), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64, norm_num_groups=1)
    vae = AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        sample_size=128)
    config = CLIPTextConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, hidden_size=32,
                            intermediate_size=37, layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=5,
                            pad_token_id=tok.eos_token_id, vocab_size=len(tok), hidden_act="gelu", projection_dim=32)
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=CLIPTextModel(config), text_encoder_2=CLIPTextModelWithProjection(config),
        tokenizer=tok, tokenizer_2=tok, unet=unet, add_watermarker=False,
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                         beta_schedule="scaled_linear", timestep_spacing="leading"))
    folder = tmp_path_factory.mktemp("recipe-xl")
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def _plain(folder, cls="StableDiffusionXLPipeline"):
    import diffusers

    pipe = getattr(diffusers, cls).from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    own_memory(pipe)  # the same weights in fresh memory, as sdkit holds them (sdkit.load.invariance.own_memory)
    return pipe


@pytest.mark.parametrize("model", ["sdkit:tiny-xl", "recipe"])
def test_sdxl_equals_plain_diffusers_and_is_batch_invariant(model, diffusers_recipe_xl):
    folder = diffusers_recipe_xl if model == "recipe" else builtin_pipeline_path(model)
    pipe = load_pipeline(str(folder) if model == "recipe" else model)
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    run = sdkit.generate(pipe, ["a red circle", "a blue square"], n=3, seed=11, num_inference_steps=STEPS,
                         guidance_scale=5.0, batch_size=3, progress=False)
    ref = _plain(folder)("a blue square", num_inference_steps=STEPS, guidance_scale=5.0,
                         generator=torch.Generator().manual_seed(12)).images[0]
    assert np.array_equal(pixels(run.candidates[4].image), pixels(ref))  # the plain call, to the pixel
    alone = sdkit.generate(pipe, "a blue square", n=1, seeds=[12], num_inference_steps=STEPS, guidance_scale=5.0,
                           progress=False)
    assert np.array_equal(pixels(alone.candidates[0].image), pixels(run.candidates[4].image))
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor  # the model's own size by default
    assert run.candidates[0].image.size == (size, size)
    assert run.candidates[0].extra["sdxl"]["original_size"] == [size, size]


def test_sdxl_conditioning_is_recorded_and_regenerated(tmp_path):
    pipe = load_pipeline("sdkit:tiny-xl")
    cond = {"original_size": (128, 96), "crops_coords_top_left": (8, 0)}
    run = sdkit.generate(pipe, "a red circle", n=2, seed=3, num_inference_steps=STEPS, guidance_scale=5.0,
                         output_dir=tmp_path, pipe_kwargs=cond, progress=False)
    plain = sdkit.generate(pipe, "a red circle", n=1, seeds=[4], num_inference_steps=STEPS, guidance_scale=5.0,
                           progress=False)
    assert not np.array_equal(pixels(plain.candidates[0].image), pixels(run.candidates[1].image))  # it matters
    rec = sdkit.read_metadata(run.candidates[1].path)["extra"]["sdxl"]
    assert rec["original_size"] == [128, 96] and rec["crops_coords_top_left"] == [8, 0]
    assert rec["target_size"] == [64, 64] and rec["vae_decode"] == "float32"
    again = sdkit.regenerate(run.candidates[1].path)
    assert np.array_equal(pixels(again.image), pixels(run.candidates[1].image))


def test_sdxl_edits_run_and_are_invariant(capfd):
    pipe = load_pipeline("sdkit:tiny-xl")
    start = sdkit.generate(pipe, "a red circle", n=1, seed=0, num_inference_steps=STEPS, progress=False).candidates[0]
    run = sdkit.img2img(pipe, "a blue circle", start.image, strength=0.6, n=2, seed=1, num_inference_steps=STEPS,
                        progress=False)
    alone = sdkit.img2img(pipe, "a blue circle", start.image, strength=0.6, n=1, seeds=[2], num_inference_steps=STEPS,
                          progress=False)
    assert np.array_equal(pixels(run.candidates[1].image), pixels(alone.candidates[0].image))
    mask = (8, 8, 40, 40)
    inpainter = load_pipeline("sdkit:tiny-xl-inpainting", "inpainting")
    assert type(inpainter).__name__ == "StableDiffusionXLInpaintPipeline"
    painted = sdkit.inpaint(inpainter, "a green square", start.image, mask, n=2, seed=5, num_inference_steps=STEPS,
                            progress=False)
    outside = pixels(painted.candidates[0].image)[48:, 48:]
    assert np.array_equal(outside, pixels(start.image)[48:, 48:])  # kept bit for bit outside the mask
    wider = sdkit.outpaint(inpainter, "a green square", start.image, right=16, n=2, seed=5, num_inference_steps=STEPS,
                           progress=False)
    assert wider.candidates[0].image.size == (80, 64)
    assert np.array_equal(pixels(wider.candidates[0].image)[:, :40], pixels(start.image)[:, :40])  # the old canvas
    # diffusers' SDXL edit pipelines cast the force_upcast VAE to fp32 on every call, each time warning about "an
    # empty list" of fp32 modules; sdkit filters that one message (sdkit/__init__.py) so notebooks stay clean.
    assert "kept in float32" not in capfd.readouterr().err


def test_the_refiner_is_recognised_and_cannot_draw_from_text_alone():
    folder = builtin_pipeline_path("sdkit:tiny-xl-refiner")
    assert family_of(folder, "x") == "sdxl-refiner"
    with pytest.raises(ValueError, match="refiner"):
        load_pipeline("sdkit:tiny-xl-refiner")
    refiner = load_pipeline("sdkit:tiny-xl-refiner", "image-to-image")
    assert type(refiner).__name__ == "StableDiffusionXLImg2ImgPipeline" and refiner.text_encoder is None


@pytest.mark.parametrize("class_name, components, words", [
    ("StableDiffusion3Pipeline", {"transformer": ["diffusers", "SD3Transformer2DModel"]}, "transformer"),
    ("FluxPipeline", {"transformer": ["diffusers", "FluxTransformer2DModel"]}, "FluxPipeline"),
    ("AnimateDiffPipeline", {"unet": ["diffusers", "UNetMotionModel"], "motion_adapter": ["x", "y"]}, "video"),
    ("KandinskyV22Pipeline", {"unet": ["diffusers", "UNet2DConditionModel"]}, "KandinskyV22Pipeline"),
])
def test_other_kinds_are_refused_by_name_before_loading(tmp_path, class_name, components, words):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": class_name, **components}))
    with pytest.raises(UnsupportedModel, match=words) as e:
        load_pipeline(str(tmp_path))  # no weights exist: a refusal after loading would be another error
    assert "SDXL" in str(e.value) and isinstance(e.value, ModelNotAvailable)


def test_a_pipeline_sdkit_did_not_load_gets_its_wrappers_and_regenerates(tmp_path):
    folder = builtin_pipeline_path("sdkit:tiny-xl")
    mine = _plain(folder)
    run = sdkit.generate(mine, "a red circle", n=3, seed=20, num_inference_steps=STEPS, guidance_scale=5.0,
                         batch_size=3, output_dir=tmp_path, progress=False)
    alone = sdkit.generate(mine, "a red circle", n=1, seeds=[22], num_inference_steps=STEPS, guidance_scale=5.0,
                           progress=False)
    assert np.array_equal(pixels(run.candidates[2].image), pixels(alone.candidates[0].image))
    meta = sdkit.read_metadata(run.candidates[2].path)
    assert meta["dtype"] == "float32" and meta["model_id"] == str(folder)
    again = sdkit.regenerate(run.candidates[2].path, pipe=mine)
    assert np.array_equal(pixels(again.image), pixels(run.candidates[2].image))
    fresh = sdkit.regenerate(run.candidates[2].path)  # loads what the PNG names
    assert np.array_equal(pixels(fresh.image), pixels(run.candidates[2].image))


def test_sdxl_defaults_are_its_own():
    assert defaults_for("sdkit:tiny-xl").guidance_scale == 5.0
    assert defaults_for("sdkit:tiny").guidance_scale == 7.5
    assert defaults_for("sdkit:tiny-xl").size == 64


def test_the_refiner_hand_off_is_diffusers_own_recorded_and_regenerated(tmp_path):
    base = load_pipeline("sdkit:tiny-xl")
    refiner = load_pipeline("sdkit:tiny-xl-refiner", "image-to-image")
    run = sdkit.generate(base, ["a red circle", "a blue square"], n=2, seed=30, num_inference_steps=6,
                         guidance_scale=5.0, batch_size=4, refiner=refiner, denoising_end=0.7, output_dir=tmp_path,
                         progress=False)
    # diffusers' documented two-step recipe, one candidate alone, with its own generator carried over
    plain_base, plain_ref = _plain(builtin_pipeline_path("sdkit:tiny-xl")), _plain(
        builtin_pipeline_path("sdkit:tiny-xl-refiner"), "StableDiffusionXLImg2ImgPipeline")
    g = torch.Generator().manual_seed(31)
    latents = plain_base("a blue square", num_inference_steps=6, guidance_scale=5.0, denoising_end=0.7,
                         output_type="latent", generator=g).images
    ref = plain_ref("a blue square", image=latents, num_inference_steps=6, guidance_scale=5.0, denoising_start=0.7,
                    generator=g).images[0]
    assert np.array_equal(pixels(run.candidates[3].image), pixels(ref))
    unrefined = sdkit.generate(base, "a blue square", n=1, seeds=[31], num_inference_steps=6, guidance_scale=5.0,
                               progress=False)
    assert not np.array_equal(pixels(unrefined.candidates[0].image), pixels(ref))
    meta = sdkit.read_metadata(run.candidates[3].path)
    assert meta["extra"]["refiner"]["model_id"] == "sdkit:tiny-xl-refiner"
    assert 'Refiner: "sdkit:tiny-xl-refiner", Refiner switch at: 0.7' in read_parameters(run.candidates[3].path)
    again = sdkit.regenerate(run.candidates[3].path)  # loads the refiner it names
    assert np.array_equal(pixels(again.image), pixels(ref))


@pytest.mark.parametrize("kwargs, words", [
    ({"denoising_end": 0.8}, "give both"),
    ({"refiner": "R", "denoising_end": 1.5}, "strictly between 0 and 1"),
    ({"refiner": "R", "denoising_end": "0.8"}, "strictly between"),
])
def test_a_bad_hand_off_is_refused_before_denoising(kwargs, words):
    base = load_pipeline("sdkit:tiny-xl")
    if kwargs.get("refiner") == "R":
        kwargs = {**kwargs, "refiner": load_pipeline("sdkit:tiny-xl-refiner", "image-to-image")}
    with pytest.raises(ValueError, match=words):
        sdkit.generate(base, "a red circle", n=1, seed=0, num_inference_steps=STEPS, progress=False, **kwargs)


def test_fp16_decodes_with_the_vae_upcast_and_says_so():
    pipe = load_pipeline("sdkit:tiny-xl", dtype="fp16")  # the tiny VAE's config says force_upcast, as SDXL's does
    run = sdkit.generate(pipe, "a red circle", n=1, seed=0, num_inference_steps=2, progress=False)
    assert run.candidates[0].extra["sdxl"]["vae_decode"].startswith("float32 (upcast")
    assert pipe.vae.dtype == torch.float16  # diffusers casts it back after the decode
    assert pixels(run.candidates[0].image).std() > 0  # not a black (NaN) image


def test_the_cli_runs_sdxl(tmp_path, capsys):
    from sdkit.cli.main import main

    rc = main(["generate", "a red circle", "-n", "2", "--seed", "0", "--steps", "2", "--model", "sdkit:tiny-xl",
               "--out", str(tmp_path)])
    assert rc == 0
    metas = [sdkit.read_metadata(p) for p in sorted(tmp_path.glob("*/*-s[0-9]*.png"))]
    assert len(metas) == 2 and all(m["extra"]["sdxl"]["original_size"] == [64, 64] for m in metas)


def test_the_cli_refines_and_a_resume_refines_again(tmp_path, capsys):
    """--refiner/--denoising-end run the hand-off; a killed run resumed from its folder loads the recorded refiner
    (a resume without it made unrefined images recorded as refined) and remakes the lost image to the pixel."""
    import json

    from sdkit.cli.main import main

    rc = main(["generate", "a red circle", "-n", "2", "--seed", "0", "--steps", "4", "--model", "sdkit:tiny-xl",
               "--refiner", "sdkit:tiny-xl-refiner", "--denoising-end", "0.5", "--scorer", "none", "--out", str(tmp_path)])
    assert rc == 0
    folder = next(tmp_path.iterdir())
    pngs = sorted(folder.glob("*-s[0-9]*.png"))
    assert [sdkit.read_metadata(p)["extra"]["refiner"]["denoising_end"] for p in pngs] == [0.5, 0.5]
    lost = pngs[1]
    from PIL import Image

    before = np.asarray(Image.open(lost).convert("RGB"))
    lost.unlink()  # as if killed before its last image: no file, no manifest line
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(line + "\n" for line in manifest.read_text().splitlines()
                                if json.loads(line)["file"] != lost.name))
    capsys.readouterr()
    assert main(["generate", "--resume", str(folder), "--scorer", "none"]) == 0
    assert "1 kept, 1 made" in capsys.readouterr().out
    assert np.array_equal(np.asarray(Image.open(lost).convert("RGB")), before)
    with pytest.raises(ValueError, match=r"records a refiner"):  # the same in Python: the record needs its refiner
        sdkit.generate(load_pipeline("sdkit:tiny-xl"), "a red circle", n=1, seed=0, num_inference_steps=4,
                       extra={"refiner": {"model_id": "sdkit:tiny-xl-refiner", "denoising_end": 0.5}}, progress=False)


@pytest.mark.parametrize("args, words", [
    (["--denoising-end", "0.5"], "only with --refiner"),
    (["--refiner", "sdkit:tiny-xl-refiner", "--denoising-end", "1.5"], "between 0 and 1"),
])
def test_bad_refiner_flags_are_one_line_before_loading(args, words, tmp_path, capsys, monkeypatch):
    import sdkit.load.pipeline
    from sdkit.cli.main import main

    monkeypatch.setattr(sdkit.load.pipeline, "load_pipeline", lambda *a, **k: pytest.fail("loaded a model"))
    assert main(["generate", "a red circle", "--model", "sdkit:tiny-xl", "--out", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_the_cli_refuses_other_kinds_in_one_line(tmp_path, capsys):
    from sdkit.cli.main import main

    folder = tmp_path / "sd3"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline",
                                                          "transformer": ["diffusers", "SD3Transformer2DModel"]}))
    rc = main(["generate", "a red circle", "-n", "1", "--model", str(folder), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc != 0 and "Traceback" not in err
    assert "sdkit: error: model" in err and "StableDiffusion3Pipeline" in err and "SDXL" in err
