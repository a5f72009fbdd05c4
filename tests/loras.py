"""Tiny LoRAs for the tests, made with `peft` on sdkit's tiny models (`sdkit.models.tiny_addons`, which the notebooks
use too): one in diffusers' PEFT layout (what `save_lora_weights` writes) and the same weights in kohya's layout (what
A1111 and ComfyUI LoRAs use; diffusers' own converter reads it back, so a wrong conversion shows as other pixels)."""

from sdkit.models.tiny_addons import make_lora, to_kohya  # noqa: F401
