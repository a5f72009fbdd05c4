"""LoRAs (`sdkit.load.loras`): applied as plain diffusers applies them, in PEFT and kohya layout, recorded with
each image, reapplied by `regenerate`, refused when they cannot be made again. Tiny LoRAs made here with peft."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("peft")

from loras import make_lora, to_kohya  # noqa: E402
from sdkit.generation import generate  # noqa: E402
from sdkit.load.loras import adapters  # noqa: E402
from sdkit.load.pipeline import load_pipeline  # noqa: E402
from sdkit.models.builtin import builtin_pipeline_path  # noqa: E402
from sdkit.save import read_metadata, read_parameters  # noqa: E402

STEPS = 3


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny SD LoRA in PEFT layout, the same in kohya layout, a second SD LoRA and a tiny SDXL one (each file
    named as A1111 would show it)."""
    root = tmp_path_factory.mktemp("loras")
    sd = make_lora(builtin_pipeline_path("sdkit:tiny"), root / "sd")
    (root / "style.safetensors").write_bytes(sd.read_bytes())
    xl = make_lora(builtin_pipeline_path("sdkit:tiny-xl"), root / "xl", seed=1)
    other = make_lora(builtin_pipeline_path("sdkit:tiny"), root / "other", seed=2)
    return {"peft": root / "style.safetensors", "kohya": to_kohya(sd, root / "style_kohya.safetensors"),
            "other": other, "xl": xl, "xl_kohya": to_kohya(xl, root / "xl_kohya.safetensors", xl=True)}


def image(pipe, seed=1, **kw):
    run = generate(pipe, "a red circle", n=1, seeds=[seed], num_inference_steps=STEPS, progress=False, **kw)
    return np.asarray(run[0].image)


def plain_diffusers(model, lora=None, weight=1.0, seed=1):
    """The reference: diffusers alone, `load_lora_weights` + `set_adapters`, DDIM as sdkit's tiny model has."""
    import diffusers

    pipe = diffusers.DiffusionPipeline.from_pretrained(builtin_pipeline_path(model), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    if lora is not None:
        pipe.load_lora_weights(str(lora), adapter_name="x")
        pipe.set_adapters(["x"], [weight])
    from sdkit.load.invariance import own_memory

    own_memory(pipe)  # weights in fresh memory, as sdkit holds them: CPU kernels' last bits depend on addresses
    out = pipe("a red circle", num_inference_steps=STEPS, guidance_scale=7.5,  # generate's default (SDXL's is 5)
               generator=torch.Generator().manual_seed(seed))
    return np.asarray(out.images[0])


def test_a_lora_gives_plain_diffusers_pixels_at_any_weight_and_zero_is_the_base_model(files):
    base = image(load_pipeline("sdkit:tiny", safety_checker=False))
    assert np.array_equal(base, plain_diffusers("sdkit:tiny"))
    seen = []
    for weight in (0.0, 0.5, 1.0):
        ours = image(load_pipeline("sdkit:tiny", safety_checker=False, loras={files["peft"]: weight}))
        assert np.array_equal(ours, plain_diffusers("sdkit:tiny", files["peft"], weight)), weight
        seen.append(ours)
    assert np.array_equal(seen[0], base)
    assert not np.array_equal(seen[1], base) and not np.array_equal(seen[2], seen[1])


def test_kohya_layout_gives_the_peft_files_pixels(files):
    peft = image(load_pipeline("sdkit:tiny", loras={files["peft"]: 0.7}))
    kohya = load_pipeline("sdkit:tiny", loras={files["kohya"]: 0.7})
    assert kohya.get_list_adapters() == {"unet": ["sdkit_0"], "text_encoder": ["sdkit_0"]}
    assert np.array_equal(image(kohya), peft)
    # The text-encoder half is applied too: the UNet half alone makes another image.
    from safetensors.torch import load_file, save_file

    unet_only = files["kohya"].with_name("unet_only.safetensors")
    save_file({k: v for k, v in load_file(files["kohya"]).items() if k.startswith("lora_unet_")}, unet_only)
    assert not np.array_equal(image(load_pipeline("sdkit:tiny", loras={unet_only: 0.7})), peft)


def test_sdxl_lora_in_both_layouts(files):
    base = image(load_pipeline("sdkit:tiny-xl"))
    peft = image(load_pipeline("sdkit:tiny-xl", loras={files["xl"]: 1.0}))
    assert not np.array_equal(peft, base)
    assert np.array_equal(image(load_pipeline("sdkit:tiny-xl", loras={files["xl_kohya"]: 1.0})), peft)
    assert np.array_equal(peft, plain_diffusers("sdkit:tiny-xl", files["xl"], 1.0))


def test_two_loras_and_their_weights_change_without_reloading(files):
    both = load_pipeline("sdkit:tiny", loras={files["peft"]: 0.5, files["other"]: 0.5})
    other = load_pipeline("sdkit:tiny", loras={files["peft"]: 0.5, files["other"]: -0.8})
    assert other is not both and other.unet is both.unet  # the same files: the same modules, no reload
    a, b = image(both), image(other)
    assert not np.array_equal(a, b)
    assert np.array_equal(image(both), a)  # each pipeline's own weights, set before each call
    assert len(set(adapters(both))) == 2


def test_the_cache_never_hands_a_lora_module_to_a_request_without_it(files):
    lora = load_pipeline("sdkit:tiny", loras={files["peft"]: 1.0})
    for pipe in (load_pipeline("sdkit:tiny"), load_pipeline("sdkit:tiny", scheduler="Euler a"),
                 load_pipeline("sdkit:tiny", "image-to-image")):
        assert pipe.unet is not lora.unet and pipe.text_encoder is not lora.text_encoder
        assert not adapters(pipe)
    assert load_pipeline("sdkit:tiny", scheduler="Euler a", loras={files["peft"]: 1.0}).unet is lora.unet


def test_batch_invariance_holds_with_a_lora(files):
    pipe = load_pipeline("sdkit:tiny", loras={files["peft"]: 0.8})
    batch = generate(pipe, "a red circle", n=3, seed=5, num_inference_steps=STEPS, batch_size=3, progress=False)
    alone = generate(pipe, "a red circle", n=1, seeds=[6], num_inference_steps=STEPS, progress=False)
    assert np.array_equal(np.asarray(batch[1].image), np.asarray(alone[0].image))


def autov3(path: Path) -> str:
    """Civitai's and A1111's LoRA hash, written out here: sha256 of what follows the safetensors header."""
    data = path.read_bytes()
    return hashlib.sha256(data[8 + int.from_bytes(data[:8], "little"):]).hexdigest()[:12]


def test_loras_are_recorded_in_the_png_the_manifest_and_a1111_text(files, tmp_path):
    pipe = load_pipeline("sdkit:tiny", loras={files["peft"]: 0.5, str(files["other"]): 1.0})
    run = generate(pipe, "a red circle", n=1, seed=3, num_inference_steps=STEPS, progress=False, output_dir=tmp_path)
    rec = read_metadata(run[0].path)["loras"]
    assert [(r["path"], r["weight"], r["sha256"]) for r in rec] == [
        (str(files["peft"]), 0.5, hashlib.sha256(files["peft"].read_bytes()).hexdigest()),
        (str(files["other"]), 1.0, hashlib.sha256(files["other"].read_bytes()).hexdigest())]
    manifest = [json.loads(x) for x in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert manifest[0]["loras"] == rec
    text = read_parameters(run[0].path)
    first, settings = text.splitlines()[0], text.splitlines()[-1]
    assert first == "a red circle <lora:style:0.5> <lora:pytorch_lora_weights:1>"
    assert (f'Lora hashes: "style: {autov3(files["peft"])}, pytorch_lora_weights: {autov3(files["other"])}"'
            in settings)


def test_sd_parsers_reads_the_loras(files, tmp_path):
    """A third-party reader: sd-parsers gets the prompt with its <lora:...> tags and the hashes (from Civitai's
    `Hashes`; it splits A1111's quoted "Lora hashes" at its commas and colons, for A1111's own images too)."""
    sd_parsers = pytest.importorskip("sd_parsers")
    pipe = load_pipeline("sdkit:tiny", loras={files["peft"]: 0.5})
    path = generate(pipe, "a red circle", n=1, seed=3, num_inference_steps=STEPS, progress=False,
                    output_dir=tmp_path)[0].path
    info = sd_parsers.ParserManager().parse(path)
    assert info is not None and info.generator.name == "AUTOMATIC1111"
    assert info.prompts[0].value == "a red circle <lora:style:0.5>"
    assert info.metadata["Hashes"] == {"lora:style": autov3(files["peft"])}
    assert [s.parameters["seed"] for s in info.samplers] == ["3"]


def test_regenerate_in_a_fresh_process_reapplies_the_loras(files, tmp_path):
    pipe = load_pipeline("sdkit:tiny", loras={files["peft"]: 0.5})
    made = generate(pipe, "a red circle", n=1, seed=3, num_inference_steps=STEPS, progress=False, output_dir=tmp_path)
    png = made[0].path
    code = (f"import numpy as np, PIL.Image as I, sdkit.search.replay as r; c = r.regenerate({png!r}); "
            f"print(np.array_equal(np.asarray(c.image), np.asarray(I.open({png!r}).convert('RGB'))), c.loras[0]['weight'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert out.stdout.split() == ["True", "0.5"], out.stderr[-2000:]


def test_regenerate_names_a_missing_or_changed_lora_file(files, tmp_path):
    from sdkit.search.replay import regenerate

    lora = tmp_path / "gone.safetensors"
    lora.write_bytes(files["peft"].read_bytes())
    made = generate(load_pipeline("sdkit:tiny", loras={lora: 1.0}), "a red circle", n=1, seed=3,
                    num_inference_steps=STEPS, progress=False, output_dir=tmp_path)
    lora.write_bytes(files["other"].read_bytes())
    with pytest.raises(ValueError, match="gone.safetensors.*sha256"):
        regenerate(made[0].path)
    lora.unlink()
    with pytest.raises(FileNotFoundError, match="gone.safetensors.*not there"):
        regenerate(made[0].path)
    with pytest.raises(ValueError, match="made with LoRAs gone.safetensors:1; the pipeline given has none"):
        regenerate(made[0].path, pipe=load_pipeline("sdkit:tiny"))


def test_pipe_kwargs_are_recorded_as_json_replayed_and_checked_on_resume(files, tmp_path):
    from sdkit.search.replay import regenerate

    pipe = load_pipeline("sdkit:tiny", loras={files["peft"]: 1.0})
    half = {"cross_attention_kwargs": {"scale": 0.5}}
    run = generate(pipe, "a red circle", n=1, seed=3, num_inference_steps=STEPS, progress=False, output_dir=tmp_path,
                   run_id="r", pipe_kwargs=half)
    assert json.loads((tmp_path / "r.run.json").read_text())["pipe_kwargs"] == half
    assert read_metadata(run[0].path)["pipe_kwargs"] == half
    assert not np.array_equal(np.asarray(run[0].image), image(pipe, seed=3))  # the scale does something
    assert np.array_equal(np.asarray(regenerate(run[0].path).image), np.asarray(run[0].image))
    with pytest.raises(ValueError, match=r"pipe_kwargs was \{'cross_attention_kwargs': \{'scale': 0.5\}\}, now .*1.0"):
        generate(pipe, "a red circle", n=1, seed=3, num_inference_steps=STEPS, progress=False, output_dir=tmp_path,
                 run_id="r", pipe_kwargs={"cross_attention_kwargs": {"scale": 1.0}})
    other = load_pipeline("sdkit:tiny", loras={files["peft"]: 0.9})
    with pytest.raises(ValueError, match=r"loras was .*'weight': 1.0.*now .*'weight': 0.9"):
        generate(other, "a red circle", n=1, seed=3, num_inference_steps=STEPS, progress=False, output_dir=tmp_path,
                 run_id="r", pipe_kwargs=half)


@pytest.mark.parametrize("model, lora, error, match", [
    ("sdkit:tiny", "xl", ValueError, "is an SDXL LoRA .*second text encoder.*SD 1.x/2.x"),
    ("sdkit:tiny-xl", "peft", ValueError, "cross-attention is 32 wide|32-wide.*takes 64"),
    ("sdkit:tiny", "missing", FileNotFoundError, "missing.safetensors.*no such file"),
    ("sdkit:tiny", "ckpt", ValueError, r"style.ckpt.*pickle"),
    ("sdkit:tiny", "nan", ValueError, "weight nan must be a finite number"),
])
def test_bad_loras_are_refused_by_name_before_any_weights_load(files, monkeypatch, model, lora, error, match):
    import diffusers

    def no_loading(*a, **k):
        raise AssertionError("loaded weights")

    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", no_loading)
    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pipe", no_loading)
    path = {"missing": files["peft"].with_name("missing.safetensors"), "ckpt": files["peft"].with_name("style.ckpt"),
            "nan": files["peft"]}.get(lora, files.get(lora))
    with pytest.raises(error, match=match):
        load_pipeline(model, loras={path: float("nan") if lora == "nan" else 1.0})


def test_a_lora_loaded_by_hand_is_refused_by_generate(files):
    import diffusers

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(builtin_pipeline_path("sdkit:tiny"))
    pipe.load_lora_weights(str(files["peft"]), adapter_name="mine")
    with pytest.raises(ValueError, match=r"LoRA adapters sdkit did not apply \(mine\).*loras=\{path: weight\}"):
        image(pipe)


def test_without_peft_loras_are_refused_before_loading(files, monkeypatch):
    from diffusers.utils import constants

    from sdkit.errors import ModelNotAvailable

    monkeypatch.setattr(constants, "USE_PEFT_BACKEND", False)
    with pytest.raises(ModelNotAvailable, match=r"LoRAs need the `peft` package, \S+ or newer.*pip install -U peft"):
        load_pipeline("sdkit:tiny", loras={files["other"]: 0.3})


def test_cli_lora_with_weight(files, tmp_path, capsys):
    from sdkit.cli.main import main

    assert main(["generate", "a red circle", "-n", "1", "--seed", "2", "--steps", str(STEPS), "--scorer", "none",
                 "--lora", f"{files['peft']}:0.25", "--out", str(tmp_path)]) == 0
    (png,) = tmp_path.glob("*/*.png")
    assert [(r["path"], r["weight"]) for r in read_metadata(png)["loras"]] == [(str(files["peft"]), 0.25)]
    assert main(["generate", "x", "--lora", str(tmp_path / "none.safetensors"), "--out", str(tmp_path)]) == 2
    assert "none.safetensors': no such file" in capsys.readouterr().err
    # --resume takes the recorded LoRAs, and refuses another weight by name.
    assert main(["generate", "--resume", str(png.parent), "--lora", f"{files['peft']}:0.5", "--scorer", "none"]) == 2
    assert f"loras was {{{str(files['peft'])!r}: 0.25}}, now {{{str(files['peft'])!r}: 0.5}}" in capsys.readouterr().err
    assert main(["generate", "--resume", str(png.parent), "--scorer", "none"]) == 0
    assert "1 kept, 0 made" in capsys.readouterr().out


def test_a_single_files_model_hash_is_a1111s_autov2(tmp_path, tiny_path):
    """A1111's "Model hash" for a single file: the first 10 hex of its sha256 (a folder has none)."""
    from ldm_layout import to_single_file

    file = to_single_file(tiny_path, tmp_path / "tiny.safetensors")
    pipe = load_pipeline(str(file), config=str(tiny_path))
    c = generate(pipe, "a red circle", n=1, seed=3, num_inference_steps=2, progress=False, output_dir=tmp_path)[0]
    autov2 = hashlib.sha256(file.read_bytes()).hexdigest()[:10]
    assert c.model_hash == autov2 and read_metadata(c.path)["model_hash"] == autov2
    assert f"Model hash: {autov2}, Model: " in read_parameters(c.path)
    assert f'Hashes: {{"model": "{autov2}"}}' in read_parameters(c.path)
    folder = generate(load_pipeline("sdkit:tiny"), "a red circle", n=1, seed=3, num_inference_steps=2, progress=False)
    assert folder[0].model_hash is None


@pytest.mark.parametrize("renamed, match", [
    ({"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q":
      "lora_unet_down_blocks_7_attentions_0_transformer_blocks_0_attn1_to_q"}, "down_blocks.7.attentions.0"),
    ({"lora_unet_down_blocks": "lora_unet_side_blocks", "lora_unet_up_blocks": "lora_unet_side_blocks",
      "lora_te_text_model_encoder": "lora_te_text_model_decoder"}, "side.blocks"),
])
def test_a_lora_whose_layers_are_not_in_the_model_is_refused(files, tmp_path, renamed, match):
    """Some or all of its layers missing from the model (diffusers would warn and go on, or fail on an index)."""
    from safetensors.torch import load_file, save_file

    tensors = {}
    for key, value in load_file(files["kohya"]).items():
        for old, new in renamed.items():
            key = key.replace(old, new)
        tensors[key] = value
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, bad)
    with pytest.raises(ValueError, match=f"LoRA '{bad}' does not fit this model.*{match}"):
        load_pipeline("sdkit:tiny", loras={bad: 1.0})
