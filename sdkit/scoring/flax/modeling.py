"""CLIP's forward pass in flax.linen, and `FlaxCLIP`, a loaded model (module, params, config).

The architecture is transformers' `CLIPModel` (Radford et al. 2021, "Learning Transferable
Visual Models From Natural Language Supervision"): a causal text transformer pooled at the
EOS token, a ViT with a class token and pre-LayerNorm, linear projections and `logit_scale`.
Module and parameter names mirror the PyTorch state dict, so conversion (`weights`) is a rename plus
transposes. Parity with transformers within 1e-4 (fp32) is tested in tests/test_flax_clip.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from sdkit.scoring.flax.config import ACTIVATIONS, CLIPConfig, TextConfig, TowerConfig, VisionConfig

# Two-pass variance, as torch computes it; the fast E[x^2]-E[x]^2 form loses digits when |mean| >> std.
LayerNorm = partial(nn.LayerNorm, use_fast_variance=False)


class Attention(nn.Module):
    hidden_size: int
    num_heads: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None):
        b, t, _ = x.shape
        head_dim = self.hidden_size // self.num_heads
        dense = partial(nn.Dense, self.hidden_size, dtype=self.dtype)
        q, k, v = (dense(name=n)(x).reshape(b, t, self.num_heads, head_dim) for n in ("q_proj", "k_proj", "v_proj"))
        w = jnp.einsum("bqhd,bkhd->bhqk", q, k) * head_dim**-0.5
        if mask is not None:
            w = jnp.where(mask, w, jnp.finfo(w.dtype).min)
        w = jax.nn.softmax(w.astype(jnp.float32), axis=-1).astype(self.dtype)  # softmax in fp32, as torch
        out = jnp.einsum("bhqk,bkhd->bqhd", w, v).reshape(b, t, self.hidden_size)
        return dense(name="out_proj")(out)


class MLP(nn.Module):
    hidden_size: int
    intermediate_size: int
    hidden_act: str
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = ACTIVATIONS[self.hidden_act](nn.Dense(self.intermediate_size, dtype=self.dtype, name="fc1")(x))
        return nn.Dense(self.hidden_size, dtype=self.dtype, name="fc2")(x)


class EncoderLayer(nn.Module):
    config: TowerConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None):
        c = self.config
        h = LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype, name="layer_norm1")(x)
        x = x + Attention(c.hidden_size, c.num_attention_heads, self.dtype, name="self_attn")(h, mask)
        h = LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype, name="layer_norm2")(x)
        return x + MLP(c.hidden_size, c.intermediate_size, c.hidden_act, self.dtype, name="mlp")(h)


class Encoder(nn.Module):
    """Pre-LayerNorm transformer layers `layers_0`... (PyTorch: `layers.0`...)."""

    config: TowerConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None):
        for i in range(self.config.num_hidden_layers):
            x = EncoderLayer(self.config, self.dtype, name=f"layers_{i}")(x, mask)
        return x


class TextEmbeddings(nn.Module):
    config: TextConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids):
        c, t = self.config, input_ids.shape[-1]
        if t > c.max_position_embeddings:
            raise ValueError(f"{t} tokens > max_position_embeddings={c.max_position_embeddings}")
        x = nn.Embed(c.vocab_size, c.hidden_size, dtype=self.dtype, name="token_embedding")(input_ids)
        return x + nn.Embed(c.max_position_embeddings, c.hidden_size, dtype=self.dtype,
                            name="position_embedding")(jnp.arange(t))


class VisionEmbeddings(nn.Module):
    config: VisionConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, pixel_values):
        c = self.config
        b, ch, h, w = pixel_values.shape  # NCHW, as CLIPImageProcessor returns
        if (h, w) != (c.image_size, c.image_size):
            raise ValueError(f"pixel_values are {h}x{w}, the model takes {c.image_size}x{c.image_size}")
        p, g = c.patch_size, c.image_size // c.patch_size
        # The stride-p conv as one matmul over flattened (C, p, p) patches: same maths, faster on CPU.
        patches = pixel_values.reshape(b, ch, g, p, g, p).transpose(0, 2, 4, 1, 3, 5).reshape(b, g * g, ch * p * p)
        x = nn.Dense(c.hidden_size, use_bias=False, dtype=self.dtype, name="patch_embedding")(patches)
        cls = self.param("class_embedding", nn.initializers.normal(1.0), (c.hidden_size,))
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, c.hidden_size)), x], axis=1)
        positions = nn.Embed(g * g + 1, c.hidden_size, dtype=self.dtype, name="position_embedding")
        return x + positions(jnp.arange(g * g + 1))


class TextTransformer(nn.Module):
    config: TextConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids):
        x = TextEmbeddings(self.config, self.dtype, name="embeddings")(input_ids)
        c, t = self.config, input_ids.shape[-1]
        causal = jnp.tril(jnp.ones((t, t), bool))[None, None]
        x = Encoder(c, self.dtype, name="encoder")(x, causal)
        x = LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype, name="final_layer_norm")(x)
        if c.eos_token_id == 2:
            eos = jnp.argmax(input_ids, axis=-1)  # legacy configs: EOS has the highest id
        else:
            eos = jnp.argmax(input_ids == c.eos_token_id, axis=-1)  # first EOS (padding may be EOS too)
        return x[jnp.arange(x.shape[0]), eos]


class VisionTransformer(nn.Module):
    config: VisionConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, pixel_values):
        norm = partial(LayerNorm, epsilon=self.config.layer_norm_eps, dtype=self.dtype)
        x = VisionEmbeddings(self.config, self.dtype, name="embeddings")(pixel_values)
        x = norm(name="pre_layrnorm")(x)
        x = Encoder(self.config, self.dtype, name="encoder")(x)
        return norm(name="post_layernorm")(x[:, 0])  # the class token


class CLIP(nn.Module):
    """transformers' `CLIPModel` forward: `get_text_features`, `get_image_features`, `__call__`."""

    config: CLIPConfig
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        c = self.config
        self.text_model = TextTransformer(c.text_config, self.dtype)
        self.vision_model = VisionTransformer(c.vision_config, self.dtype)
        self.text_projection = nn.Dense(c.projection_dim, use_bias=False, dtype=self.dtype)
        self.visual_projection = nn.Dense(c.projection_dim, use_bias=False, dtype=self.dtype)
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(2.6592), ())

    def get_text_features(self, input_ids):
        """Projected EOS features (unnormalised), (B, projection_dim)."""
        return self.text_projection(self.text_model(input_ids))

    def get_image_features(self, pixel_values):
        """Projected class-token features (unnormalised), (B, projection_dim)."""
        return self.visual_projection(self.vision_model(pixel_values))

    def __call__(self, input_ids, pixel_values):
        """(logits_per_image, text_embeds, image_embeds), embeds L2-normalised in fp32."""
        text = normalize(self.get_text_features(input_ids))
        image = normalize(self.get_image_features(pixel_values))
        return jnp.exp(self.logit_scale.astype(jnp.float32)) * image @ text.T, text, image


def normalize(x):
    x = x.astype(jnp.float32)
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


@dataclass
class FlaxCLIP:
    """A loaded CLIP: the linen module, its params, its config and the local directory it came from.

    Calling it (or its `get_*_features`) runs jitted, compiled once per input shape.
    """

    module: CLIP
    params: dict
    config: CLIPConfig
    path: str
    model_id: str

    def __post_init__(self):
        apply = self.module.apply
        self._text = jax.jit(lambda p, ids: apply({"params": p}, ids, method=CLIP.get_text_features))
        self._image = jax.jit(lambda p, x: apply({"params": p}, x, method=CLIP.get_image_features))
        self._both = jax.jit(lambda p, ids, x: apply({"params": p}, ids, x))

    def get_text_features(self, input_ids):
        return self._text(self.params, input_ids)

    def get_image_features(self, pixel_values):
        return self._image(self.params, pixel_values)

    def __call__(self, input_ids, pixel_values):
        """(logits_per_image, text_embeds, image_embeds), as transformers' `CLIPModel` outputs."""
        return self._both(self.params, input_ids, pixel_values)
