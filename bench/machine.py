"""The machine a result came from: CPU, cores, the instruction sets that decide bf16 speed, versions."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Flags that decide which kernels oneDNN can use for bf16 (AMX tiles vs AVX-512 BF16 dot products).
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16")


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return model, flags


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "not installed"


def sdkit_commit() -> str:
    """sdkit's own commit: $SDKIT_COMMIT if the caller says, else the checkout's own .git (never an enclosing
    repository's: a tree copied into another repository once printed that repository's HEAD), else "unknown"."""
    if os.environ.get("SDKIT_COMMIT"):
        return os.environ["SDKIT_COMMIT"]
    if not (ROOT / ".git").exists():
        return "unknown"
    try:
        out = subprocess.run(["git", "--git-dir", str(ROOT / ".git"), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out or "unknown"


def describe() -> dict:
    import torch

    model, flags = _cpuinfo()
    commit = sdkit_commit()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_flags": " ".join(f for f in FLAGS if f in flags) or "unknown",
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "gpu": gpu,
        "loadavg": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        **{pkg: _version(pkg) for pkg in ("torch", "diffusers", "transformers", "jax", "jaxlib", "flax")},
        "commit": commit,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
