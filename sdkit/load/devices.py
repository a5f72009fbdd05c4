"""Where a model runs and in which dtype: the auto device, device and dtype names, bf16 detection.

One picker for pipelines (`sdkit.load.pipeline`) and the PyTorch CLIP scorer (`sdkit.scoring.torch_clip`).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch


def auto_device() -> str:
    """"cuda" > "mps" > "cpu": the first one torch sees."""
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_device(device) -> str:
    """A device string from "auto"/None, a name ('cpu', 'cuda[:N]', 'mps', 'xpu') or a torch.device."""
    if device in (None, "auto"):
        return auto_device()
    device = str(device)
    kind = device.split(":")[0]
    if kind not in ("cpu", "cuda", "mps", "xpu"):
        raise ValueError(f"device={device!r}: use 'auto', 'cpu', 'cuda[:N]', 'mps' or 'xpu'")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but torch sees no CUDA GPU (torch {torch.__version__}); use 'cpu' or 'auto'")
    return device


def cpu_has_bf16() -> bool:
    """Native bfloat16 arithmetic on this CPU (AVX512-BF16 or AMX); elsewhere torch emulates it, slowly."""
    cpu = torch.cpu
    return any(getattr(cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


# bf16 pays on a CPU only when big matrix products dominate: SD 1.5's UNet (860M parameters) runs a 512² step
# 1.7-1.9x faster than in fp32 (bench/results/latest.md), but sdkit's tiny and toy UNets (0.2M, 1M) run 5% slower,
# per-op overhead and casts outweighing the arithmetic. Every SD-family UNet has 300M or more.
CPU_BF16_MIN_PARAMS = 100_000_000


def auto_dtype(device: str, unet_params: int | None = None) -> torch.dtype:
    """fp16 on GPUs (what SD 1.x ships for them); bf16 on CPUs with native bf16 for big UNets; else fp32.

    `unet_params`: the UNet's size, when known (see `unet_parameters`); unknown counts as big.
    """
    if device.split(":")[0] in ("cuda", "mps"):
        return torch.float16
    big = unet_params is None or unet_params >= CPU_BF16_MIN_PARAMS
    return torch.bfloat16 if device == "cpu" and big and cpu_has_bf16() else torch.float32


def unet_parameters(path) -> int | None:
    """Parameters of the UNet in a diffusers folder, from its safetensors headers (no weights are read)."""
    from safetensors import safe_open

    files = sorted((Path(path) / "unet").glob("*.safetensors"))
    if not files:
        return None
    shapes = {}  # by tensor name: an fp16 variant beside the fp32 file holds the same tensors
    for f in files:
        with safe_open(f, framework="pt") as sf:
            shapes.update({k: sf.get_slice(k).get_shape() for k in sf.keys()})
    return sum(math.prod(s) for s in shapes.values())


_DTYPES = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float32": torch.float32, "fp32": torch.float32}


def resolve_dtype(dtype, device: str) -> torch.dtype:
    """A torch dtype from "auto"/None (`auto_dtype`), a name ('fp16', 'bfloat16', ...) or a torch.dtype."""
    if dtype in (None, "auto"):
        return auto_dtype(device)
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ValueError(f"dtype={dtype!r}: use 'auto', a torch.dtype, or one of {sorted(_DTYPES)}")


# Candidates per call on a GPU, from the H200's measured curve (bench/results/gpu/, SD 1.5 shapes, fp16, 512²):
# one UNet step costs 43 / 13 / 7.5 / 6.3 / 5.9 / 5.7 ms per candidate at 1 / 2 / 4 / 8 / 16 / 32 candidates a
# call, and 20 steps 0.68 / 0.23 / 0.15 s per image at batch 1 / 4 / 8. Past 16 little is left to gain (4%) for
# more memory. Peak memory grew 4.6 -> 8.1 GB from batch 1 to 8: about 0.5 GB per candidate at 512².
GPU_BATCH = 16
GPU_GB_PER_CANDIDATE = 0.5


def max_rows(device: str) -> int | None:
    """Candidates per UNet call at most when they run together: a GPU's default batch (also when a search holds
    more); None elsewhere."""
    return default_batch_size(device) if str(device).startswith("cuda") else None


def default_batch_size(device, height: int = 512, width: int = 512) -> int:
    """Candidates denoised together by default: 2 on a CPU (compute bound; small batches keep memory flat), on
    CUDA the measured curve's knee (16) or what fits in 80% of the free memory at this size, 4 elsewhere."""
    device = torch.device(device)
    if device.type == "cpu":
        return 2
    if device.type != "cuda":
        return 4
    free_gb = torch.cuda.mem_get_info(device)[0] / 1e9
    need = GPU_GB_PER_CANDIDATE * height * width / 512 ** 2
    return max(1, min(GPU_BATCH, int(0.8 * free_gb / need)))


def is_oom(e: BaseException) -> bool:
    """Whether `e` is an accelerator's out-of-memory error."""
    if isinstance(e, torch.OutOfMemoryError):
        return True
    return isinstance(e, RuntimeError) and "out of memory" in str(e).lower()  # MPS and older CUDA builds


def free_memory() -> None:
    """Hand cached accelerator memory back (before a retry with a smaller batch)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if getattr(torch, "mps", None) is not None and torch.backends.mps.is_available():
        torch.mps.empty_cache()
