"""Textual inversion (`sdkit.load.embeddings`): tiny embeddings made here, in A1111's, diffusers' and SDXL's layout,
equal to plain diffusers' `load_textual_inversion`, kept out of pipelines without them, recorded, reapplied by
`regenerate` (in a fresh process, with a weighted prompt), and refused when made for another text encoder."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

pytest.importorskip("compel")

from sdkit.generation import generate  # noqa: E402
from sdkit.load.invariance import own_memory  # noqa: E402
from sdkit.load.pipeline import load_pipeline  # noqa: E402
from sdkit.models.builtin import builtin_pipeline_path  # noqa: E402
from sdkit.save import read_metadata, read_parameters  # noqa: E402

STEPS = 3
WIDTH = 32  # the tiny models' text encoders (both of tiny-xl's)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("embeddings")
    g = torch.Generator().manual_seed(0)
    out = {"a1111": root / "mystyle.safetensors", "diffusers": root / "learned.safetensors",
           "xl": root / "xlstyle.safetensors", "wide": root / "wide.safetensors"}
    save_file({"emb_params": torch.randn(2, WIDTH, generator=g)}, out["a1111"])  # two vectors
    save_file({"<cat-toy>": torch.randn(WIDTH, generator=g)}, out["diffusers"])
    save_file({"clip_l": torch.randn(1, WIDTH, generator=g), "clip_g": torch.randn(1, WIDTH, generator=g)}, out["xl"])
    save_file({"emb_params": torch.randn(1, 48, generator=g)}, out["wide"])
    return out


def image(pipe, prompt, seed=1, **kw):
    return np.asarray(generate(pipe, prompt, n=1, seeds=[seed], num_inference_steps=STEPS, progress=False, **kw)[0].image)


def plain(model, loads=()):
    import diffusers

    pipe = diffusers.DiffusionPipeline.from_pretrained(builtin_pipeline_path(model), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    for args in loads:
        pipe.load_textual_inversion(*args[:1], **args[1])
    own_memory(pipe)
    return pipe


def plain_image(pipe, prompt, seed=1):
    out = pipe(prompt, num_inference_steps=STEPS, guidance_scale=7.5, generator=torch.Generator().manual_seed(seed))
    return np.asarray(out.images[0])


def test_an_a1111_embedding_gives_plain_diffusers_pixels_by_its_file_name(files):
    from safetensors.torch import load_file

    pipe = load_pipeline("sdkit:tiny", safety_checker=False, embeddings=[files["a1111"]])
    ours = image(pipe, "a red circle, mystyle")
    vec = load_file(str(files["a1111"]))["emb_params"]
    ref = plain("sdkit:tiny", [(vec, {"token": "mystyle"})])
    assert np.array_equal(ours, plain_image(ref, "a red circle, mystyle"))
    assert not np.array_equal(ours, image(pipe, "a red circle"))


def test_a_diffusers_embedding_uses_its_own_token(files):
    pipe = load_pipeline("sdkit:tiny", embeddings=[files["diffusers"]])
    ref = plain("sdkit:tiny", [(str(files["diffusers"]), {})])
    assert np.array_equal(image(pipe, "a <cat-toy> circle"), plain_image(ref, "a <cat-toy> circle"))


def test_an_sdxl_embedding_on_both_text_encoders_gives_plain_diffusers_pixels(files):
    from safetensors.torch import load_file

    d = load_file(str(files["xl"]))
    pipe = load_pipeline("sdkit:tiny-xl", embeddings=[files["xl"]])
    ref = plain("sdkit:tiny-xl", [(d["clip_l"], {"token": "xlstyle"})])  # diffusers' documented SDXL recipe
    ref.load_textual_inversion(d["clip_g"], token="xlstyle", text_encoder=ref.text_encoder_2, tokenizer=ref.tokenizer_2)
    own_memory(ref)
    assert np.array_equal(image(pipe, "xlstyle, a red circle"), plain_image(ref, "xlstyle, a red circle"))


def test_weighted_embedding_token_and_the_cache_never_shares_an_embedded_tokenizer(files):
    with_it = load_pipeline("sdkit:tiny", embeddings=[files["a1111"]])
    assert not np.array_equal(image(with_it, "a circle, (mystyle:1.4)"), image(with_it, "a circle, mystyle"))
    without = load_pipeline("sdkit:tiny")
    assert "mystyle" not in without.tokenizer.get_vocab() and "mystyle" in with_it.tokenizer.get_vocab()
    assert without.text_encoder is not with_it.text_encoder
    assert np.array_equal(image(without, "a red circle, mystyle"), plain_image(plain("sdkit:tiny"), "a red circle, mystyle"))


def test_the_image_records_its_embeddings_and_a1111s_ti_hashes(files, tmp_path):
    sd_parsers = pytest.importorskip("sd_parsers")
    pipe = load_pipeline("sdkit:tiny", embeddings=[files["a1111"]])
    c = generate(pipe, "a red circle, mystyle", n=1, seed=3, num_inference_steps=STEPS, progress=False,
                 output_dir=tmp_path)[0]
    short = hashlib.sha256(files["a1111"].read_bytes()).hexdigest()[:12]
    (rec,) = read_metadata(c.path)["embeddings"]
    assert (rec["path"], rec["token"], rec["sha256"][:12]) == (str(files["a1111"]), "mystyle", short)
    text = read_parameters(c.path)
    assert f"TI hashes: \"mystyle: {short}\"" in text and f'"embed:mystyle": "{short}"' in text
    info = sd_parsers.ParserManager().parse(c.path)
    assert info.prompts[0].value == "a red circle, mystyle"
    assert info.metadata["Hashes"] == {"embed:mystyle": short}


def test_regenerate_in_a_fresh_process_remakes_a_weighted_prompt_with_an_embedding(files, tmp_path):
    pipe = load_pipeline("sdkit:tiny", embeddings=[files["a1111"]])
    png = generate(pipe, "a (red:1.3) circle, [mystyle]", n=1, seed=3, num_inference_steps=STEPS, progress=False,
                   output_dir=tmp_path)[0].path
    code = (f"import numpy as np, PIL.Image as I, sdkit.search.replay as r; c = r.regenerate({png!r}); "
            f"print(np.array_equal(np.asarray(c.image), np.asarray(I.open({png!r}).convert('RGB'))), "
            "c.embeddings[0]['token'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert out.stdout.split() == ["True", "mystyle"], out.stderr[-2000:]


def test_regenerate_names_a_missing_or_changed_embedding(files, tmp_path):
    from sdkit.search.replay import regenerate

    file = tmp_path / "gone.safetensors"
    file.write_bytes(files["a1111"].read_bytes())
    c = generate(load_pipeline("sdkit:tiny", embeddings=[file]), "gone", n=1, seed=3, num_inference_steps=1,
                 progress=False, output_dir=tmp_path)[0]
    with pytest.raises(ValueError, match="made with embeddings \\['gone'\\]; the pipeline given has none"):
        regenerate(c.path, pipe=load_pipeline("sdkit:tiny"))
    file.write_bytes(files["wide"].read_bytes())
    with pytest.raises(ValueError, match="gone.safetensors.*sha256"):
        regenerate(c.path)
    file.unlink()
    with pytest.raises(FileNotFoundError, match="gone.safetensors.*not there"):
        regenerate(c.path)


def test_an_embedding_for_another_text_encoder_is_refused_by_name(files):
    with pytest.raises(ValueError, match="embedding .*wide.safetensors' is 48 wide; this pipeline's text_encoder takes 32"):
        load_pipeline("sdkit:tiny", embeddings=[files["wide"]])
    with pytest.raises(ValueError, match="mystyle.safetensors' has vectors for \\['text_encoder'\\]; this SDXL"):
        load_pipeline("sdkit:tiny-xl", embeddings=[files["a1111"]])
    with pytest.raises(FileNotFoundError, match="embedding 'nope.safetensors': no such file"):
        load_pipeline("sdkit:tiny", embeddings=["nope.safetensors"])


def test_cli_embedding(files, tmp_path):
    from sdkit.cli.main import main

    assert main(["generate", "a red circle, mystyle", "-n", "1", "--seed", "2", "--steps", "1", "--scorer", "none",
                 "--embedding", str(files["a1111"]), "--out", str(tmp_path)]) == 0
    (png,) = tmp_path.glob("*/*.png")
    assert [r["token"] for r in read_metadata(png)["embeddings"]] == ["mystyle"]
    assert main(["generate", "--resume", str(png.parent), "--scorer", "none"]) == 0
