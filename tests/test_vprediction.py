"""SD 2.x v-prediction (768-v checkpoints) keeps working: a tiny SD2-shaped model with
`prediction_type="v_prediction"` gives diffusers' pixels with the samplers users pick, regenerates exactly from
its PNG, and survives a search."""

from __future__ import annotations

import json
import shutil

import diffusers
import numpy as np
import pytest
import torch

import sdkit
from sdkit.load.invariance import own_memory
from sdkit.load.pipeline import load_pipeline
from sdkit.load.schedulers import SCHEDULERS
from sdkit.search import successive_halving
from conftest import red

STEPS = 4


@pytest.fixture(scope="module")
def vpred_folder(tmp_path_factory):
    """sdkit:tiny's layout with an SD 2.x-shaped UNet (linear projections, per-level head sizes) and a
    v-prediction scheduler, saved like a Hub repo."""
    from diffusers import UNet2DConditionModel

    from sdkit.models.builtin import builtin_pipeline_path

    folder = tmp_path_factory.mktemp("vpred") / "sd2-v"
    shutil.copytree(builtin_pipeline_path("sdkit:tiny"), folder)
    torch.manual_seed(2)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=8)
    shutil.rmtree(folder / "unet")
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    config_file = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config["prediction_type"] = "v_prediction"
    config_file.write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("name", ["DDIM", "Euler a", "DPM++ 2M Karras"])
def test_vprediction_gives_diffusers_pixels(vpred_folder, name):
    pipe = load_pipeline(str(vpred_folder), scheduler=name, dtype="fp32")
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    run = sdkit.generate(pipe, "a red circle", n=2, seed=3, num_inference_steps=STEPS, batch_size=2, progress=False)
    plain = diffusers.StableDiffusionPipeline.from_pretrained(vpred_folder, safety_checker=None,
                                                              requires_safety_checker=False)
    cls, overrides = SCHEDULERS[name]
    plain.scheduler = getattr(diffusers, cls).from_config(plain.scheduler.config, **overrides)
    plain.set_progress_bar_config(disable=True)
    own_memory(plain)  # the same weights in fresh memory, as sdkit holds them (sdkit.load.invariance.own_memory)
    ref = plain("a red circle", num_inference_steps=STEPS, generator=torch.Generator().manual_seed(4)).images[0]
    assert np.array_equal(np.asarray(run.candidates[1].image), np.asarray(ref))


def test_vprediction_regenerates_and_survives_a_search(vpred_folder, tmp_path):
    pipe = load_pipeline(str(vpred_folder), scheduler="Euler a", dtype="fp32")
    run = successive_halving(pipe, "a red circle", red, n=4, prune_at=(1,), keep=(1,),
                                          num_inference_steps=STEPS, seed=8, output_dir=tmp_path, progress=False)
    best = run.search.ranked[0].candidate
    again = sdkit.regenerate(best.path)
    assert np.array_equal(np.asarray(again.image), np.asarray(best.image))
    plain = sdkit.generate(pipe, "a red circle", n=1, seeds=[best.seed], num_inference_steps=STEPS, progress=False)
    assert np.array_equal(np.asarray(plain.candidates[0].image), np.asarray(best.image))  # the survivor is exact
