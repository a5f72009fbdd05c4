import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path
import pytest

from sdkit.models.tiny import describe, install_in_hub_cache, save_tiny_pipeline


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.safetensors")):
        h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_layout_is_the_hub_layout(tiny_path):
    index = json.loads((tiny_path / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    for comp in ("unet", "vae", "text_encoder", "safety_checker"):
        assert (tiny_path / comp / "config.json").exists(), comp
        assert list((tiny_path / comp).glob("*.safetensors")), comp
        assert list((tiny_path / comp).glob("*.fp16.safetensors")), comp
    for f in ("tokenizer/vocab.json", "tokenizer/merges.txt", "scheduler/scheduler_config.json",
              "feature_extractor/preprocessor_config.json"):
        assert (tiny_path / f).exists(), f
    # No pickle anywhere, and small.
    assert not [p for p in tiny_path.rglob("*") if p.suffix in (".bin", ".ckpt", ".pt", ".pkl")]
    assert describe(tiny_path)["bytes"] < 5_000_000


def test_inpainting_model_has_nine_channels(tiny_inpaint_path):
    cfg = json.loads((tiny_inpaint_path / "unet" / "config.json").read_text())
    assert cfg["in_channels"] == 9
    assert json.loads((tiny_inpaint_path / "model_index.json").read_text())["_class_name"] == "StableDiffusionInpaintPipeline"


def test_build_is_deterministic(tmp_path, tiny_path):
    save_tiny_pipeline(tmp_path / "a", seed=0)
    assert _digest(tmp_path / "a") == _digest(tiny_path)
    save_tiny_pipeline(tmp_path / "b", seed=1, fp16_variant=False)
    assert _digest(tmp_path / "b") != _digest(tiny_path)


def test_hub_cache_layout_offline(tmp_path, tiny_path):
    """A Hub id resolves through huggingface_hub's real cache lookup with HF_HUB_OFFLINE=1."""
    cache = tmp_path / "hub"
    install_in_hub_cache(tiny_path, "someorg/tiny-sd", cache)
    code = textwrap.dedent("""
        import sys
        from sdkit.load.pipeline import load_pipeline
        from sdkit.generation import generate
        from sdkit.load.state import pipeline_info
        pipe = load_pipeline("someorg/tiny-sd")
        print("PATH", pipeline_info(pipe).model_id, type(pipe).__name__)
        run = generate(pipe, "a red circle", n=1, seed=3, num_inference_steps=2, progress=False)
        print("SIZE", run[0].image.size, run[0].model_id)
        try:
            load_pipeline("someorg/not-cached")
        except Exception as e:
            print("ERR", type(e).__name__, e)
    """)
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "PATH someorg/tiny-sd StableDiffusionPipeline" in out.stdout
    assert "SIZE (64, 64) someorg/tiny-sd" in out.stdout
    assert "ERR ModelNotAvailable" in out.stdout and "hf download someorg/not-cached" in out.stdout


@pytest.mark.parametrize("model, cls", [("sdkit:tiny", "StableDiffusionPipeline"),
                                        ("sdkit:tiny-xl", "StableDiffusionXLPipeline")])
def test_the_tiny_models_load_with_plain_diffusers_to_sdkits_pixels(model, cls):
    """The default files are fp32 (configs included): plain `from_pretrained` gives sdkit's image; the fp16
    variant loads too."""
    import json

    import diffusers
    import numpy as np
    import torch

    import sdkit
    from sdkit.load.invariance import own_memory
    from sdkit.load.pipeline import load_pipeline
    from sdkit.models.builtin import builtin_pipeline_path

    folder = builtin_pipeline_path(model)
    assert json.loads((folder / "text_encoder" / "config.json").read_text()).get("dtype") in (None, "float32")
    plain = getattr(diffusers, cls).from_pretrained(folder)
    plain.set_progress_bar_config(disable=True)
    own_memory(plain)  # the same weights in fresh memory, as sdkit holds them (sdkit.load.invariance.own_memory)
    image = plain("a red circle", num_inference_steps=3, guidance_scale=5.0,
                  generator=torch.Generator().manual_seed(9)).images[0]
    ours = sdkit.generate(load_pipeline(model, dtype="fp32"), "a red circle", n=1, seeds=[9], num_inference_steps=3,
                          guidance_scale=5.0, progress=False).candidates[0].image
    assert np.array_equal(np.asarray(image), np.asarray(ours))
    w = plain.unet.conv_in.weight  # full fp32 precision (not weights rounded through the fp16 variant's save)
    assert not torch.equal(w, w.half().float())
    half = getattr(diffusers, cls).from_pretrained(folder, variant="fp16", dtype=torch.float16)
    assert half.unet.dtype == torch.float16 and half.text_encoder.dtype == torch.float16
