"""Tiny LoRAs for the tests, made with `peft` on sdkit's tiny models: one in diffusers' PEFT layout (what
`save_lora_weights` writes) and the same weights in kohya's layout (what A1111 and ComfyUI LoRAs use)."""

from __future__ import annotations

from pathlib import Path

import torch

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
# kohya's module prefixes: SD 1.x/2.x name one text encoder `lora_te_`, SDXL its two `lora_te1_` and `lora_te2_`.
KOHYA = {"unet": "lora_unet_", "text_encoder": "lora_te_", "text_encoder_2": "lora_te2_"}
KOHYA_XL = {**KOHYA, "text_encoder": "lora_te1_"}


def make_lora(model_path, out: Path, *, seed: int = 0, rank: int = 4, alpha: float = 8.0) -> Path:
    """A random LoRA (non-zero up and down weights, so it changes the picture) for the diffusers pipeline at
    `model_path`, on its UNet's attention and every text encoder's; saved by diffusers' `save_lora_weights`."""
    import diffusers
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    pipe = diffusers.DiffusionPipeline.from_pretrained(model_path)
    torch.manual_seed(seed)
    layers, metadata = {}, {}
    for name, targets in (("unet", UNET_TARGETS), ("text_encoder", TEXT_TARGETS), ("text_encoder_2", TEXT_TARGETS)):
        module = getattr(pipe, name, None)
        if module is None:
            continue
        # init_lora_weights=False: both matrices random (PEFT's default starts B at zero: no change at all).
        config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=False, target_modules=targets)
        inject_adapter_in_model(config, module)  # peft's own (transformers' add_adapter asks for a newer peft)
        layers[f"{name}_lora_layers"] = get_peft_model_state_dict(module)
        metadata[f"{name}_lora_adapter_metadata"] = config.to_dict()
    out.mkdir(parents=True, exist_ok=True)
    type(pipe).save_lora_weights(out, **layers, **metadata, safe_serialization=True)
    return out / "pytorch_lora_weights.safetensors"


def to_kohya(peft_file: Path, out: Path, *, alpha: float = 8.0, xl: bool = False) -> Path:
    """The same LoRA in kohya's layout: `unet.down_blocks.0....attn1.to_q.lora_A.weight` becomes
    `lora_unet_down_blocks_0_..._attn1_to_q.lora_down.weight` (B: `lora_up`), each module with its `alpha`."""
    from safetensors.torch import load_file, save_file

    prefixes = KOHYA_XL if xl else KOHYA
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
