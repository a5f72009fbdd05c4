"""A tiny previewer: diffusers' `AutoencoderTiny` (TAESD) that decodes a pipeline's latents for a fraction of the
VAE's cost, loaded from a folder or a Hub id, safetensors only. `sdkit.search.previews.decode_previews` takes it in
place of the pipeline's VAE:

    previewer = load_previewer("madebyollin/taesd")     # SD 1.x; "sdkit:toy" for the toy world
"""

from __future__ import annotations

import contextlib
import json
import os

from sdkit.errors import ModelNotAvailable
from sdkit.load.hub import local_dir, local_files, looks_like_path, no_safetensors, repo_files, snapshot

# What a TAESD-style previewer needs; never pickles (*.bin, *.pth: unpickling can run code).
PREVIEWER_FILES = ["config.json", "diffusion_pytorch_model*.safetensors", "diffusion_pytorch_model.safetensors.index.json"]


def load_previewer(model: str | os.PathLike, *, revision: str | None = None, cache_dir: str | None = None,
                   device=None, dtype=None):
    """A tiny previewer: diffusers' `AutoencoderTiny` from a local folder or a Hub id, safetensors only.

    E.g. `load_previewer("madebyollin/taesd")` for SD 1.x models; its decoder costs a small fraction of the VAE's.
    `"sdkit:toy"` is the toy world's own, distilled from its VAE on first use (`sdkit.toy.previewer`).

    device: None leaves it where it loads (the CPU); else "auto" or a device, as `load_pipeline` takes it.
    dtype: None keeps its weights' own (float32 for TAESD); else as `load_pipeline` takes it: "fp16", "bf16",
        "fp32", a torch.dtype, or "auto" (fp16 on GPUs; fp32 on CPUs, where bf16 slows a model this small).
    Pass the pipeline's, `device=pipe.device, dtype=pipe.vae.dtype`, to decode its latents where they are.
    """
    device, dtype = _placement(device, dtype)
    name = os.fspath(model)
    label = f"previewer {name!r}"
    if name == "sdkit:toy":
        from sdkit.toy.previewer import toy_previewer_path

        name = str(toy_previewer_path())
    on_hub = not looks_like_path(name)
    path = snapshot(name, label, allow_patterns=PREVIEWER_FILES, revision=revision, cache_dir=cache_dir,
                    hint="; or pass a folder saved by AutoencoderTiny.save_pretrained") if on_hub else local_dir(name, label)
    config = path / "config.json"
    cls_name = json.loads(config.read_text()).get("_class_name") if config.exists() else None
    if cls_name != "AutoencoderTiny":
        found = f"config.json says _class_name={cls_name!r}" if config.exists() else f"no config.json in {path}"
        raise ModelNotAvailable(f"{label} is not an AutoencoderTiny (TAESD) folder: {found}")
    files = local_files(path)
    if not any(f.startswith("diffusion_pytorch_model") and f.endswith((".safetensors", ".safetensors.index.json"))
               for f in files):
        if on_hub:  # only the allowed files were downloaded: ask the Hub what else there is
            with contextlib.suppress(ModelNotAvailable, ValueError):
                files = repo_files(name, path, label, revision)
        raise no_safetensors(label, "the folder", files)
    from diffusers import AutoencoderTiny

    vae = AutoencoderTiny.from_pretrained(path, use_safetensors=True, torch_dtype=dtype)
    return vae.to(device).eval() if device is not None else vae.eval()


def _placement(device, dtype) -> tuple:
    """(device, torch dtype) with sdkit's names resolved as `load_pipeline` resolves them (None stays None)."""
    from sdkit.load.devices import auto_dtype, resolve_device, resolve_dtype

    if device is not None:
        device = resolve_device(device)
    if dtype == "auto":  # a previewer is tiny (TAESD's decoder: 1M parameters), so never bf16 on a CPU
        dtype = auto_dtype(device or "cpu", unet_params=0)
    elif dtype is not None:
        dtype = resolve_dtype(dtype, device or "cpu")
    return device, dtype
