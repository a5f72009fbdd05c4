"""Tiny add-ons for the tiny models, in the layouts users bring them in: a LoRA folder (A1111's `models/Lora`,
one file in diffusers' PEFT layout, one in kohya's) and an A1111 textual-inversion embedding. Built on first use
(deterministic from a seed, a few hundred KB) like the tiny models: what the notebooks use with SDKIT_MODELS=tiny,
where a user's own files go with the real models."""

from __future__ import annotations

import sys
from pathlib import Path

from sdkit.models.cache import build_atomically, build_key, cache_root
from sdkit.quiet import quiet_hf

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
# kohya's module prefixes (A1111, ComfyUI): SD 1.x/2.x name one text encoder `lora_te_`, SDXL its two `lora_te1_`, `lora_te2_`.
_KOHYA = {"unet": "lora_unet_", "text_encoder": "lora_te_", "text_encoder_2": "lora_te2_"}


def make_lora(model_path, out: Path, *, seed: int = 0, rank: int = 4, alpha: float = 8.0) -> Path:
    """A random LoRA (both matrices non-zero, so it changes the picture) on the attention of the UNet and every
    text encoder of the diffusers pipeline at `model_path`, made with peft, saved by diffusers' `save_lora_weights`
    (PEFT layout) as `out/pytorch_lora_weights.safetensors`."""
    import diffusers
    import torch
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    with quiet_hf(messages=True):
        pipe = diffusers.DiffusionPipeline.from_pretrained(model_path)
    torch.manual_seed(seed)
    layers, metadata = {}, {}
    for name, targets in (("unet", UNET_TARGETS), ("text_encoder", TEXT_TARGETS), ("text_encoder_2", TEXT_TARGETS)):
        module = getattr(pipe, name, None)
        if module is None:
            continue
        # init_lora_weights=False: both matrices random (PEFT's default starts B at zero: no change at all).
        config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=False, target_modules=targets)
        inject_adapter_in_model(config, module)
        layers[f"{name}_lora_layers"] = get_peft_model_state_dict(module)
        metadata[f"{name}_lora_adapter_metadata"] = config.to_dict()
    out.mkdir(parents=True, exist_ok=True)
    type(pipe).save_lora_weights(out, **layers, **metadata, safe_serialization=True)
    return out / "pytorch_lora_weights.safetensors"


def to_kohya(peft_file: Path, out: Path, *, alpha: float = 8.0, xl: bool = False) -> Path:
    """The same LoRA in kohya's layout (what A1111 and ComfyUI LoRAs use): `unet.down_blocks.0....attn1.to_q.lora_A
    .weight` becomes `lora_unet_down_blocks_0_..._attn1_to_q.lora_down.weight` (B: `lora_up`), each module with its
    `alpha`; SDXL's text encoders are `lora_te1_` and `lora_te2_`."""
    import torch
    from safetensors.torch import load_file, save_file

    prefixes = {**_KOHYA, "text_encoder": "lora_te1_"} if xl else _KOHYA
    kohya = {}
    for key, tensor in load_file(peft_file).items():
        component, rest = key.split(".", 1)
        module, matrix = rest.rsplit(".lora_", 1)  # "A.weight" or "B.weight"
        if component.startswith("text_encoder") and not module.startswith("text_model."):
            module = "text_model." + module  # kohya's names have it; transformers 5's CLIPTextModel does not
        name = prefixes[component] + module.replace(".", "_")
        kohya[f"{name}.lora_{'down' if matrix == 'A.weight' else 'up'}.weight"] = tensor
        kohya[f"{name}.alpha"] = torch.tensor(alpha)
    save_file(kohya, out)
    return out


def tiny_lora_dir(model: str = "sdkit:tiny") -> Path:
    """A LoRA folder for the SD-shaped built-in `model` ("sdkit:tiny" or "sdkit:toy"): `paper_cut.safetensors`
    (PEFT layout) and `styles/ink.safetensors` (kohya layout, another seed), as `<lora:paper_cut:0.8>` finds them."""
    from sdkit.models.builtin import builtin_pipeline_path

    source = builtin_pipeline_path(model)

    def build(d: Path) -> None:
        made = make_lora(source, d / "made", seed=0)
        made.rename(d / "paper_cut.safetensors")
        (d / "styles").mkdir()
        to_kohya(make_lora(source, d / "made", seed=1), d / "styles" / "ink.safetensors")
        for f in (d / "made").iterdir():
            f.unlink()
        (d / "made").rmdir()

    key = build_key([sys.modules[__name__]], model, source.name)
    return build_atomically(cache_root() / "tiny" / f"loras-{model.replace(':', '-')}-{key}", build)


def tiny_embedding(model: str = "sdkit:tiny", token: str = "mystyle") -> Path:
    """An A1111 textual-inversion embedding (`{"emb_params": (2, width)}`, two vectors) for the SD-shaped built-in
    `model`'s text encoder, saved as `<token>.safetensors` (A1111 takes the token from the file name)."""
    import json

    import torch
    from safetensors.torch import save_file

    from sdkit.models.builtin import builtin_pipeline_path

    source = builtin_pipeline_path(model)
    width = json.loads((source / "text_encoder" / "config.json").read_text())["hidden_size"]

    def build(d: Path) -> None:
        g = torch.Generator().manual_seed(0)
        save_file({"emb_params": torch.randn(2, width, generator=g)}, d / f"{token}.safetensors")

    key = build_key([sys.modules[__name__]], model, source.name, token)
    return build_atomically(cache_root() / "tiny" / f"embeddings-{model.replace(':', '-')}-{key}", build) / \
        f"{token}.safetensors"
