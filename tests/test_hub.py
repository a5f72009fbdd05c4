"""sdkit.load.hub: local folders and Hub ids (an offline Hub cache here) for pipelines and CLIPs; safetensors
only, and one error type, ModelNotAvailable."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sdkit.errors import ModelNotAvailable
from sdkit.load.pipeline import load_pipeline
from sdkit.models.tiny import install_in_hub_cache
from sdkit.models.tiny_clip import tiny_clip_path
from sdkit.scoring.flax.weights import load_flax_clip


@pytest.fixture(scope="module")
def tiny():
    return tiny_clip_path()


# --- pipelines ----------------------------------------------------------------------------------------------


def test_missing_local_path(tmp_path):
    with pytest.raises(ModelNotAvailable, match="no such directory"):
        load_pipeline(str(tmp_path / "nope"))
    with pytest.raises(ModelNotAvailable, match="no model_index.json"):
        load_pipeline(str(tmp_path))


def test_pickle_only_weights_are_refused(tmp_path, tiny_path):
    bad = tmp_path / "pickled"
    shutil.copytree(tiny_path, bad)
    for f in (bad / "unet").glob("*.safetensors"):
        torch.save(load_file(f), f.with_suffix(".bin"))
        f.unlink()
    with pytest.raises(ModelNotAvailable, match="only pickle weights"):
        load_pipeline(str(bad))


def test_deleted_tutorial_ids_resolve_to_mirrors(tmp_path, tiny_path, tiny_inpaint_path):
    cache = tmp_path / "hub"
    install_in_hub_cache(tiny_path, "stable-diffusion-v1-5/stable-diffusion-v1-5", cache)
    install_in_hub_cache(tiny_inpaint_path, "stable-diffusion-v1-5/stable-diffusion-inpainting", cache)
    code = textwrap.dedent("""
        from sdkit.load.pipeline import load_pipeline
        from sdkit.load.state import pipeline_info
        a = load_pipeline("runwayml/stable-diffusion-v1-5")
        b = load_pipeline("runwayml/stable-diffusion-inpainting", "inpainting")
        print("IDS", pipeline_info(a).model_id, pipeline_info(b).model_id)
    """)
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "IDS stable-diffusion-v1-5/stable-diffusion-v1-5 stable-diffusion-v1-5/stable-diffusion-inpainting" in out.stdout
    assert "sdkit: runwayml/stable-diffusion-v1-5 was deleted from the Hub; using its mirror" in out.stderr


# --- CLIPs --------------------------------------------------------------------------------------------------


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty Hub cache with HF_HUB_OFFLINE=1 (set on the module constants, which read the env at import)."""
    from huggingface_hub import constants

    root = str(tmp_path / "hub")
    os.makedirs(root)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", root)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", root)
    return root


def test_load_from_hub_cache_offline(tiny, offline_hub):
    install_in_hub_cache(tiny, "sdkit-test/tiny-clip", offline_hub)
    from_hub, from_dir = load_flax_clip("sdkit-test/tiny-clip"), load_flax_clip(tiny)
    assert from_hub.path.startswith(offline_hub) and "snapshots" in from_hub.path
    for a, b in zip(*(map(np.asarray, jax.tree.leaves(c.params)) for c in (from_hub, from_dir))):
        np.testing.assert_array_equal(a, b)


def test_unknown_clip_id_offline(offline_hub):
    with pytest.raises(ModelNotAvailable, match="unknown CLIP 'sdkit-test/no-such-clip'.*HF_HUB_OFFLINE"):
        load_flax_clip("sdkit-test/no-such-clip")
    with pytest.raises(ModelNotAvailable, match="unknown CLIP '/no/such/dir'"):
        load_flax_clip("/no/such/dir")


def test_not_a_clip(tmp_path, tiny):
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelNotAvailable, match="not a CLIP checkpoint: config.json says model_type='bert'"):
        load_flax_clip(tmp_path / "bert")
    shutil.copytree(tiny, tmp_path / "text-only")
    config = json.loads((tmp_path / "text-only" / "config.json").read_text())
    (tmp_path / "text-only" / "config.json").write_text(json.dumps({**config["text_config"]}))
    with pytest.raises(ModelNotAvailable, match="model_type='clip_text_model'"):
        load_flax_clip(tmp_path / "text-only")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotAvailable, match="no config.json"):
        load_flax_clip(tmp_path / "empty")


def test_pickle_only_checkpoints_are_refused(tmp_path, tiny, offline_hub):
    src = tmp_path / "pickled"
    src.mkdir()
    shutil.copy(os.path.join(tiny, "config.json"), src)
    torch.save({"logit_scale": torch.tensor(1.0)}, src / "pytorch_model.bin")
    with pytest.raises(ModelNotAvailable, match=r"no safetensors.*pytorch_model\.bin.*never loads pickle"):
        load_flax_clip(src)
    install_in_hub_cache(src, "sdkit-test/pickled-clip", offline_hub)
    with pytest.raises(ModelNotAvailable, match="never loads pickle"):
        load_flax_clip("sdkit-test/pickled-clip")
