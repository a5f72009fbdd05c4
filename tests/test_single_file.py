"""sdkit.load.single_file: original-layout .safetensors checkpoints load through diffusers' `from_single_file` to the
pixels of the folder they came from; pickles, adapters and other model kinds are refused before any weights load.

The fixtures are the tiny pipelines written in the original key layout by `tests/ldm_layout.py` (the mapping of
diffusers' conversion scripts), so the round trip folder -> file -> pipeline is checked against the folder itself.
"""

import json
import os
import shutil

import numpy as np
import pytest
import safetensors.torch
import torch
from safetensors.torch import save_file

from ldm_layout import to_single_file
from sdkit.errors import ModelNotAvailable
from sdkit.generation import generate
from sdkit.load.pipeline import load_pipeline, resolve
from sdkit.load.single_file import convert_to_safetensors, detect
from sdkit.load.invariance import own_memory
from sdkit.load.state import module_state, pipeline_info

FAST = dict(num_inference_steps=3, progress=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_path, tiny_inpaint_path):
    out = tmp_path_factory.mktemp("single")
    return {"sd1": to_single_file(tiny_path, out / "tiny-sd1.safetensors"),
            "inpaint": to_single_file(tiny_inpaint_path, out / "tiny-inpaint.safetensors")}


@pytest.fixture(scope="module")
def sd2_path(tmp_path_factory, tiny_path):
    """An SD 2.x-shaped tiny pipeline: linear projections, per-level heads, an OpenCLIP-style (gelu) text encoder
    64 wide (SD 1.x's is 32 here, as 768 vs 1024 for real ones), v-prediction."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(2)
    tokenizer = CLIPTokenizer.from_pretrained(tiny_path / "tokenizer")
    te = json.loads((tiny_path / "text_encoder" / "config.json").read_text())
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, hidden_act="gelu",
        vocab_size=te["vocab_size"], max_position_embeddings=77, bos_token_id=te["bos_token_id"],
        eos_token_id=te["eos_token_id"], pad_token_id=te["pad_token_id"]))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64, attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=8)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction")
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(tiny_path / "vae"), text_encoder=text_encoder, tokenizer=tokenizer,
        unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    folder = tmp_path_factory.mktemp("sd2") / "tiny-sd2"
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def _same_weights(a, b):
    for name in ("unet", "vae", "text_encoder"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert sa.keys() == sb.keys(), name
        for k in sa:
            assert torch.equal(sa[k], sb[k]), f"{name}.{k}"


def _pixels(run):
    return [np.asarray(c.image) for c in run]


@pytest.mark.parametrize("which", ["sd1", "sd2"])
def test_file_gives_the_folders_pixels(which, files, tiny_path, sd2_path, tmp_path):
    folder = tiny_path if which == "sd1" else sd2_path
    file = files["sd1"] if which == "sd1" else to_single_file(sd2_path, tmp_path / "tiny-sd2.safetensors")
    assert detect(file).model_type == ("v1" if which == "sd1" else "v2")
    from_file = load_pipeline(str(file), config=str(folder), dtype="fp32")
    from_folder = load_pipeline(str(folder), dtype="fp32")
    assert type(from_file).__name__ == "StableDiffusionPipeline"
    assert from_file.scheduler.config.prediction_type == ("epsilon" if which == "sd1" else "v_prediction")
    _same_weights(from_file, from_folder)
    # The same post-load steps as a folder: sdkit's wrappers, and the model as the user named it.
    assert module_state(from_file.unet).installed and module_state(from_file.unet).batch_invariant
    assert pipeline_info(from_file).model_id == str(file)
    a = generate(from_file, "a red circle", n=2, seed=7, guidance_scale=5.0, **FAST)
    b = generate(from_folder, "a red circle", n=2, seed=7, guidance_scale=5.0, **FAST)
    assert all(np.array_equal(x, y) for x, y in zip(_pixels(a), _pixels(b)))
    assert a[0].model_id == str(file) and a[0].seed == 7

    # Plain diffusers, the reference: from_single_file on the file equals from_pretrained on the folder.
    from diffusers import StableDiffusionPipeline

    plain_file = StableDiffusionPipeline.from_single_file(str(file), config=str(folder), dtype=torch.float32,
                                                          local_files_only=True)
    plain_folder = StableDiffusionPipeline.from_pretrained(folder, dtype=torch.float32, safety_checker=None,
                                                           requires_safety_checker=False)
    for plain in (plain_file, plain_folder):  # weights in fresh memory: the kernels' last bit follows addresses
        own_memory(plain)
    call = dict(prompt="a red circle", num_inference_steps=3, guidance_scale=5.0, output_type="np")
    x = plain_file(**call, generator=torch.Generator().manual_seed(3)).images
    y = plain_folder(**call, generator=torch.Generator().manual_seed(3)).images
    assert np.array_equal(x, y) and x.std() > 0


def test_cache_keys_on_the_file_as_it_is_now(files, tiny_path, tmp_path):
    file = tmp_path / "copy.safetensors"
    shutil.copy(files["sd1"], file)
    a = load_pipeline(str(file), config=str(tiny_path))
    assert load_pipeline(str(file), config=str(tiny_path)) is a
    img2img = load_pipeline(str(file), "image-to-image", config=str(tiny_path))
    assert type(img2img).__name__ == "StableDiffusionImg2ImgPipeline" and img2img.unet is a.unet
    os.utime(file, ns=(1, 1))  # replaced in place: loaded again
    assert load_pipeline(str(file), config=str(tiny_path)) is not a


def test_inpainting_file_needs_inpainting_configs(files, tiny_path, tiny_inpaint_path):
    found = detect(files["inpaint"])
    assert (found.model_type, found.family, found.in_channels) == ("inpainting", "sd", 9)
    with pytest.raises(ModelNotAvailable, match=r"inpainting checkpoint \(UNet input channels: 9,.*with 4 input channels"):
        load_pipeline(str(files["inpaint"]), "inpainting", config=str(tiny_path))
    pipe = load_pipeline(str(files["inpaint"]), "inpainting", config=str(tiny_inpaint_path))
    assert type(pipe).__name__ == "StableDiffusionInpaintPipeline"
    with pytest.raises(ValueError, match="is an inpainting checkpoint"):
        load_pipeline(str(files["inpaint"]), config=str(tiny_inpaint_path))


def test_configs_of_another_kind_are_refused(files, tiny_path, sd2_path, tmp_path):
    sd2 = to_single_file(sd2_path, tmp_path / "sd2.safetensors")
    with pytest.raises(ModelNotAvailable, match=r"cross-attention width 64.*32"):
        load_pipeline(str(sd2), config=str(tiny_path))


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE=1 and an empty cache (set on huggingface_hub's constants too, which read the env at import)."""
    from huggingface_hub import constants

    root = tmp_path / "hub"
    root.mkdir()
    for name, value in (("HF_HUB_OFFLINE", True), ("HF_HUB_CACHE", str(root))):
        monkeypatch.setenv(name, "1" if value is True else value)
        monkeypatch.setattr(constants, name, value)
    return root


@pytest.fixture
def no_weights_loaded(monkeypatch):
    """Refusals come before any weights load: loading a safetensors file or a pickle fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded")
    for module, name in ((safetensors.torch, "load_file"), (safetensors.torch, "load"), (torch, "load")):
        monkeypatch.setattr(module, name, refuse)


def test_configs_from_the_hub_cache_offline(files, tiny_path, offline_hub):
    from sdkit.models.tiny import install_in_hub_cache

    install_in_hub_cache(tiny_path, "stable-diffusion-v1-5/stable-diffusion-v1-5", offline_hub)
    # No config=: the repo diffusers pairs with an SD 1.x file, found in the cache.
    assert resolve(str(files["sd1"])).path.is_relative_to(offline_hub / "models--stable-diffusion-v1-5--stable-diffusion-v1-5")
    pipe = load_pipeline(str(files["sd1"]))
    assert type(pipe).__name__ == "StableDiffusionPipeline" and pipeline_info(pipe).model_id == str(files["sd1"])


def test_no_configs_offline_says_what_to_download(files, offline_hub, no_weights_loaded):
    with pytest.raises(ModelNotAvailable, match=r"hf download stable-diffusion-v1-5/stable-diffusion-v1-5 "
                                                r"--include \"\*\.json\" \"\*\.txt\".*config="):
        load_pipeline(str(files["sd1"]))
    with pytest.raises(ModelNotAvailable, match=r"hf download someone/configs --include"):
        load_pipeline(str(files["sd1"]), config="someone/configs")


def test_pickles_are_refused_and_convert_once(tmp_path, tiny_path, monkeypatch):
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.input_blocks.0.0.weight": torch.ones(2, 4, 3, 3)}}, ckpt)
    with monkeypatch.context() as m:
        m.setattr(torch, "load", lambda *a, **k: pytest.fail("unpickled"))
        for suffix in (".ckpt", ".pt", ".pth", ".bin"):
            if suffix != ".ckpt":
                shutil.copy(ckpt, ckpt.with_suffix(suffix))
            with pytest.raises(ModelNotAvailable, match=rf"pickle checkpoint \({suffix}\).*arbitrary code.*"
                                                         "convert_to_safetensors"):
                load_pipeline(str(ckpt.with_suffix(suffix)))
    out = convert_to_safetensors(ckpt)  # explicit: torch.load(weights_only=True), on request only
    assert out == tmp_path / "model.safetensors"
    assert safetensors.torch.load_file(out)["model.diffusion_model.input_blocks.0.0.weight"].shape == (2, 4, 3, 3)


@pytest.mark.parametrize("tensors,match", [
    ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 32),
      "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": ()}, r"a LoRA \(kohya keys"),
    ({"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": (4, 32)}, r"a LoRA \(PEFT"),
    ({"emb_params": (2, 768)}, "a textual-inversion embedding"),
    ({"clip_l": (2, 768), "clip_g": (2, 1280)}, "a textual-inversion embedding"),
    ({"double_blocks.0.img_attn.norm.key_norm.scale": (128,), "img_in.weight": (3072, 64)}, r"a Flux checkpoint"),
    ({"model.diffusion_model.head.modulation": (1, 2, 1536),
      "model.diffusion_model.patch_embedding.weight": (1536, 16, 1, 2, 2)}, r"a Wan \(video\) checkpoint"),
    ({"down_blocks.0.resnets.0.conv1.weight": (8, 8, 3, 3)}, "without a Stable Diffusion UNet in the original layout"),
])
def test_other_files_are_refused_by_what_they_are(tensors, match, tmp_path, no_weights_loaded):
    file = tmp_path / "other.safetensors"
    save_file({k: torch.zeros(s) for k, s in tensors.items()}, str(file))
    with pytest.raises(ModelNotAvailable, match=match + ".*sdkit loads single-file Stable Diffusion 1.x, 2.x and SDXL"):
        load_pipeline(str(file))


def test_missing_and_misnamed_files(tmp_path, no_weights_loaded):
    for name in ("nope.safetensors", "model.ckpt", str(tmp_path / "nope.safetensors")):
        with pytest.raises(ModelNotAvailable, match=r"no such file \(a name ending in .safetensors or .ckpt is a file, never a Hub id\)"):
            load_pipeline(name)
    (tmp_path / "weights.npz").write_bytes(b"\0" * 16)
    with pytest.raises(ModelNotAvailable, match="must be a .safetensors file"):
        load_pipeline(str(tmp_path / "weights.npz"))
    (tmp_path / "fake.safetensors").write_bytes(b"PK\3\4 not safetensors")
    with pytest.raises(ModelNotAvailable, match="not a readable .safetensors file"):
        load_pipeline(str(tmp_path / "fake.safetensors"))


def test_config_is_only_for_files(tiny_path, files):
    with pytest.raises(ValueError, match="config=.* is for single-file checkpoints"):
        load_pipeline(str(tiny_path), config=str(tiny_path))
    with pytest.raises(ModelNotAvailable, match="config='/no/such/folder': no such directory"):
        load_pipeline(str(files["sd1"]), config="/no/such/folder")


@pytest.mark.parametrize("kind,model_type,cls", [
    ("text-to-image", "xl_base", "StableDiffusionXLPipeline"),
    ("refiner", "xl_refiner", "StableDiffusionXLImg2ImgPipeline"),
    ("inpainting", "xl_inpaint", "StableDiffusionXLInpaintPipeline"),
])
def test_sdxl_files_give_the_folders_pixels(kind, model_type, cls, tmp_path):
    """SDXL base, refiner and inpainting files (two text encoders, or the refiner's one) load to the folder's
    weights and pixels. tiny-xl's encoders share a width, the case diffusers' own loader mistakes (see
    `single_file._second_encoder_if_ambiguous`), so this also checks that the second encoder is its own."""
    from sdkit.models.tiny_xl import tiny_xl_pipeline_path

    folder = tiny_xl_pipeline_path(kind)
    file = to_single_file(folder, tmp_path / f"tiny-xl-{kind}.safetensors")
    found = detect(file)
    assert (found.model_type, found.family) == (model_type, "sdxl-refiner" if kind == "refiner" else "sdxl")
    task = {"refiner": "image-to-image"}.get(kind, kind)
    from_file = load_pipeline(str(file), task, config=str(folder), dtype="fp32")
    from_folder = load_pipeline(str(folder), task, dtype="fp32")
    assert type(from_file).__name__ == cls
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        a, b = getattr(from_file, name, None), getattr(from_folder, name, None)
        assert (a is None) == (b is None), name
        if a is not None:
            sa, sb = a.state_dict(), b.state_dict()
            assert sa.keys() == sb.keys(), name
            assert all(torch.equal(sa[k], sb[k]) for k in sa), name
    if kind == "text-to-image":
        a = generate(from_file, "a red circle", n=2, seed=7, **FAST)
        b = generate(from_folder, "a red circle", n=2, seed=7, **FAST)
        assert all(np.array_equal(x, y) for x, y in zip(_pixels(a), _pixels(b)))
        assert a[0].model_id == str(file) and a[0].extra["sdxl"] == b[0].extra["sdxl"]


def test_a_single_files_image_regenerates_with_the_config_folder_it_named(files, tiny_path, tmp_path, monkeypatch):
    """The config folder the user named is recorded, so `regenerate(png)` loads the file the same way again
    (without it, a file whose configs are not in the Hugging Face cache could not be loaded at all)."""
    import sdkit.load.pipeline
    from sdkit.save import read_metadata
    from sdkit.search.replay import regenerate

    pipe = load_pipeline(str(files["sd1"]), config=str(tiny_path), dtype="fp32")
    run = generate(pipe, "a red circle", n=2, seed=4, output_dir=tmp_path, **FAST)
    assert read_metadata(run[1].path)["extra"]["config"] == str(tiny_path)
    monkeypatch.setattr(sdkit.load.pipeline, "_cache", {})  # a fresh start: regenerate must load the file itself
    again = regenerate(run[1].path)
    assert np.array_equal(np.asarray(again.image), np.asarray(run[1].image))
    assert again.model_id == str(files["sd1"]) and again.extra["config"] == str(tiny_path)
