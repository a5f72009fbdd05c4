"""sdkit.load.pipeline: load once and share between tasks, schedulers by name, task checks, dtype and layout."""

import shutil

import pytest
import torch

from sdkit.load.devices import cpu_has_bf16
from sdkit.load.pipeline import load_pipeline, resolve
from sdkit.load.state import module_state, pipeline_info


def test_auto_device_and_dtype_on_cpu(tiny_pipe):
    assert tiny_pipe.device.type == "cpu"
    # The tiny UNet is too small for bf16 to pay (bench/), so fp32 on every CPU: the same pixels everywhere.
    assert tiny_pipe.unet.dtype == tiny_pipe.vae.dtype == tiny_pipe.text_encoder.dtype == torch.float32
    assert tiny_pipe.unet.conv_in.weight.is_contiguous()
    assert pipeline_info(tiny_pipe).dtype == "float32"
    assert pipeline_info(tiny_pipe).model_id == "sdkit:tiny"


def test_sdkit_hangs_nothing_on_diffusers_objects():
    """What sdkit remembers of a pipeline and its modules lives in sdkit.load.state, not in their attributes."""
    from sdkit.load.invariance import is_batch_invariant

    pipe = load_pipeline("sdkit:tiny", scheduler="Euler a")  # from_pipe of the cached one
    assert is_batch_invariant(pipe) and pipeline_info(pipe).task == "text-to-image"
    own_cls, _ = pipeline_info(pipe).own_scheduler
    assert own_cls.__name__ == "DDIMScheduler" and type(pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    for obj in (pipe, pipe.unet, pipe.text_encoder, pipe.vae, pipe.scheduler):
        assert not [k for k in vars(obj) if "sdkit" in k], type(obj).__name__


def test_big_unet_gets_bf16_and_nhwc_where_the_cpu_has_it(tmp_path, monkeypatch):
    from sdkit.load import devices
    from sdkit.models.tiny import tiny_pipeline_path

    path = tmp_path / "copy"
    shutil.copytree(tiny_pipeline_path(), path)
    monkeypatch.setattr(devices, "CPU_BF16_MIN_PARAMS", 200_000)  # the tiny UNet (203,204) counts as big
    pipe = load_pipeline(str(path))
    bf16 = cpu_has_bf16()
    # bf16 where the CPU has it natively (bench/: 1.9x faster than fp32 at SD 1.5 size), the UNet in NHWC for oneDNN.
    assert pipe.unet.dtype == pipe.vae.dtype == pipe.text_encoder.dtype == (torch.bfloat16 if bf16 else torch.float32)
    w = pipe.unet.conv_in.weight
    assert (w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()) == bf16
    assert pipeline_info(pipe).dtype == str(pipe.unet.dtype).removeprefix("torch.")


def test_cached_and_shared_between_tasks(tiny_pipe):
    assert load_pipeline("sdkit:tiny") is tiny_pipe
    img2img = load_pipeline("sdkit:tiny", "image-to-image")
    assert type(img2img).__name__ == "StableDiffusionImg2ImgPipeline"
    assert img2img.unet is tiny_pipe.unet and img2img.vae is tiny_pipe.vae  # no reload


def test_one_model_by_two_names_shares_weights_and_records_each_name(tiny_pipe):
    """A built-in name and its folder are the same weights: shared, but each pipeline records the name it was
    asked for (a cache keyed on the weights alone handed back the first name, so PNGs named the wrong model)."""
    from sdkit.models.builtin import builtin_pipeline_path

    by_path = load_pipeline(str(builtin_pipeline_path("sdkit:tiny")))
    assert by_path is not tiny_pipe and by_path.unet is tiny_pipe.unet
    assert pipeline_info(by_path).model_id == str(builtin_pipeline_path("sdkit:tiny"))
    assert pipeline_info(tiny_pipe).model_id == "sdkit:tiny"
    assert load_pipeline("sdkit:tiny") is tiny_pipe


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_sharing_keeps_the_dtype_and_layout(tmp_path, dtype):
    """diffusers' from_pipe casts shared modules to fp32 unless told otherwise; the base must not change."""
    from sdkit.models.tiny import tiny_pipeline_path

    path = tmp_path / "copy"
    shutil.copytree(tiny_pipeline_path(), path)
    base = load_pipeline(str(path), dtype=dtype)
    layout = base.unet.conv_in.weight.stride()
    others = [load_pipeline(str(path), "image-to-image", dtype=dtype), load_pipeline(str(path), dtype=dtype, scheduler="Euler a")]
    for pipe in [base, *others]:
        assert pipe.unet is base.unet
        assert {m.dtype for m in (pipe.unet, pipe.vae, pipe.text_encoder)} == {dtype}
        assert pipe.unet.conv_in.weight.stride() == layout


def test_scheduler_none_is_the_models_own_whatever_was_loaded_first(tmp_path):
    """A pipeline made by from_pipe must not inherit the base's scheduler, nor share its state."""
    from sdkit.models.tiny import tiny_pipeline_path

    path = tmp_path / "copy"
    shutil.copytree(tiny_pipeline_path(), path)  # a path of its own: nothing cached for it yet
    euler = load_pipeline(str(path), scheduler="Euler a")
    own = load_pipeline(str(path))
    img2img = load_pipeline(str(path), "image-to-image")
    dpm = load_pipeline(str(path), scheduler="DPM++ 2M Karras")
    dpm2 = load_pipeline(str(path), "image-to-image", scheduler="DPM++ 2M")
    assert own.unet is euler.unet  # weights shared
    assert type(own.scheduler).__name__ == type(img2img.scheduler).__name__ == "DDIMScheduler"  # the model's own
    assert type(euler.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    assert dpm.scheduler.config.use_karras_sigmas and not dpm2.scheduler.config.use_karras_sigmas
    schedulers = [euler.scheduler, own.scheduler, img2img.scheduler, dpm.scheduler, dpm2.scheduler]
    assert len({id(x) for x in schedulers}) == len(schedulers)  # no shared step state


@pytest.mark.parametrize("name,cls", [("Euler a", "EulerAncestralDiscreteScheduler"), ("DPM++ 2M", "DPMSolverMultistepScheduler"),
                                      ("UniPC", "UniPCMultistepScheduler"), ("PNDM", "PNDMScheduler")])
def test_scheduler_by_name(tiny_pipe, name, cls):
    pipe = load_pipeline("sdkit:tiny", scheduler=name)
    assert type(pipe.scheduler).__name__ == cls
    assert pipe.unet is tiny_pipe.unet
    assert type(tiny_pipe.scheduler).__name__ == "DDIMScheduler"  # the cached default is untouched


def test_karras_variant_is_distinct():
    pipe = load_pipeline("sdkit:tiny", scheduler="DPM++ 2M Karras")
    assert pipe.scheduler.config.use_karras_sigmas is True


@pytest.mark.parametrize("kwargs,match", [
    (dict(scheduler="Euler b"), "scheduler='Euler b' is not known"),
    (dict(task="upscale"), "task='upscale'"),
    (dict(dtype="int8"), "dtype='int8'"),
    (dict(device="tpu"), "device='tpu'"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_pipeline("sdkit:tiny", **kwargs)


def test_inpainting_checkpoint_refuses_text_to_image():
    with pytest.raises(ValueError, match="inpainting checkpoint .*9 input channels"):
        load_pipeline("sdkit:tiny-inpainting", "text-to-image")
    assert type(load_pipeline("sdkit:tiny-inpainting", "inpainting")).__name__ == "StableDiffusionInpaintPipeline"


def test_safety_checker_opt_out(tiny_path):
    pipe = load_pipeline(str(tiny_path), safety_checker=False)
    assert pipe.safety_checker is None
    assert load_pipeline(str(tiny_path)).safety_checker is not None


def test_fp16_variant_chosen_when_loading_fp16(tiny_path):
    assert resolve(str(tiny_path), dtype=torch.float16).variant == "fp16"
    assert resolve(str(tiny_path), dtype=torch.float32).variant is None


@pytest.mark.slow  # inductor compiles the tiny UNet: ~1 min on 2 cores
def test_compile_matches_eager_and_stays_batch_invariant(tmp_path):
    import numpy as np

    from sdkit import generate
    from sdkit.models.tiny import tiny_pipeline_path

    path = tmp_path / "copy"
    shutil.copytree(tiny_pipeline_path(), path)
    eager = load_pipeline(str(path), dtype="fp32")
    compiled = load_pipeline(str(path), dtype="fp32", compile=True)
    assert compiled.unet is not eager.unet and module_state(compiled.unet).compiled
    kw = dict(n=3, seed=0, num_inference_steps=3, height=64, width=64, progress=False)
    a = [np.asarray(c.image, np.int16) for c in generate(eager, "a red circle", batch_size=3, **kw)]
    b = [np.asarray(c.image, np.int16) for c in generate(compiled, "a red circle", batch_size=3, **kw)]
    c = [np.asarray(c.image, np.int16) for c in generate(compiled, "a red circle", batch_size=1, **kw)]
    assert max(np.abs(x - y).max() for x, y in zip(a, b)) <= 2  # the same pictures, up to rounding
    assert all(np.array_equal(x, y) for x, y in zip(b, c))  # one compiled call per candidate in any batch
