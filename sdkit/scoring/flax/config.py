"""A CLIP config.json as frozen dataclasses, read as transformers' `CLIPConfig` reads it, and the
activations it may name (`hidden_act`)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from functools import partial

import jax

ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),  # OpenAI CLIP's activation
    "gelu": partial(jax.nn.gelu, approximate=False),  # LAION / OpenCLIP checkpoints
    "gelu_new": partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
}


@dataclass(frozen=True)
class TowerConfig:
    """What both towers' configs hold; defaults are transformers' `CLIPVisionConfig` defaults."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    # the same in both towers' defaults
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                             f"{self.num_attention_heads}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported; expected one of {sorted(ACTIVATIONS)}")


@dataclass(frozen=True)
class TextConfig(TowerConfig):
    """`text_config` of a CLIP config.json; defaults are transformers' `CLIPTextConfig` defaults."""

    hidden_size: int = 512
    intermediate_size: int = 2048
    num_attention_heads: int = 8
    # the text tower's own
    vocab_size: int = 49408
    max_position_embeddings: int = 77
    eos_token_id: int = 49407  # 2 in OpenAI's configs: the legacy "argmax token id" pooling


@dataclass(frozen=True)
class VisionConfig(TowerConfig):
    """`vision_config` of a CLIP config.json; defaults are transformers' `CLIPVisionConfig` defaults."""

    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32


@dataclass(frozen=True)
class CLIPConfig:
    """A CLIP config.json (`model_type: clip`)."""

    text_config: TextConfig = field(default_factory=TextConfig)
    vision_config: VisionConfig = field(default_factory=VisionConfig)
    projection_dim: int = 512

    @classmethod
    def from_dict(cls, d: dict) -> "CLIPConfig":
        def pick(klass, name):
            # Old configs (e.g. openai/clip-vit-large-patch14) carry `text_config_dict`, which wins over
            # `text_config` entirely (missing keys take defaults), as in transformers' CLIPConfig.
            sub = d.get(f"{name}_dict")
            sub = d.get(name) or {} if sub is None else sub
            return klass(**{f.name: sub[f.name] for f in fields(klass) if sub.get(f.name) is not None})

        return cls(pick(TextConfig, "text_config"), pick(VisionConfig, "vision_config"), d.get("projection_dim", 512))
