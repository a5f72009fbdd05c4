"""sdkit.load.devices: the auto device and dtype, bf16 detection, the UNet's size from its headers."""

import shutil
from pathlib import Path

import pytest
import torch

from sdkit.load import devices
from sdkit.load.devices import resolve_device, unet_parameters


def test_unet_parameters_from_headers_match_the_loaded_model(tiny_pipe, tmp_path):
    from sdkit.models.tiny import tiny_pipeline_path

    n = sum(p.numel() for p in tiny_pipe.unet.parameters())
    assert unet_parameters(tiny_pipeline_path()) == n
    path = tmp_path / "variant"
    shutil.copytree(tiny_pipeline_path(), path)
    unet = path / "unet"
    shutil.copy(unet / "diffusion_pytorch_model.safetensors", unet / "diffusion_pytorch_model.fp16.safetensors")
    assert unet_parameters(path) == n  # a variant holds the same tensors, not more
    shutil.rmtree(unet)
    assert unet_parameters(path) is None


def test_cpu_bf16_detection_follows_the_cpu_flags(monkeypatch):
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if "flags" in flags:  # Linux: torch's check agrees with the kernel's list
        native = " avx512_bf16" in flags or " amx_tile" in flags
        assert devices.cpu_has_bf16() == native
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: False)
    assert devices.auto_dtype("cpu") == torch.float32
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: True)
    assert devices.auto_dtype("cpu") == devices.auto_dtype("cpu", 860_000_000) == torch.bfloat16
    assert devices.auto_dtype("cpu", 1_000_000) == torch.float32  # small UNets: bf16 is slower there
    assert devices.auto_dtype("cuda") == devices.auto_dtype("cuda:1") == devices.auto_dtype("mps") == torch.float16
    assert devices.auto_dtype("cuda", 1_000_000) == torch.float16


def test_the_torch_scorer_picks_its_device_with_the_pipelines_picker(monkeypatch):
    """One picker: "auto" is what pipelines get, and a device torch lacks is refused the same way."""
    from sdkit.models.tiny_clip import tiny_clip_path
    from sdkit.scoring.torch_clip import TorchCLIPScorer

    assert resolve_device("auto") == devices.auto_device()
    assert TorchCLIPScorer(tiny_clip_path(), device="auto").device == torch.device(resolve_device("auto"))
    with pytest.raises(ValueError, match="device='tpu'"):
        TorchCLIPScorer(tiny_clip_path(), device="tpu")
