"""CLIP in flax.linen, loaded from the Hub's safetensors (transformers 5 has no Flax CLIP any more).

The architecture is transformers' `CLIPModel` (Radford et al. 2021, "Learning Transferable
Visual Models From Natural Language Supervision"): a causal text transformer pooled at the
EOS token, a ViT with a class token and pre-LayerNorm, linear projections and `logit_scale`.
Module and parameter names mirror the PyTorch state dict, so conversion is a rename plus
transposes. Parity with transformers within 1e-4 (fp32) is tested in tests/test_clip_flax.py.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from dataclasses import dataclass, field, fields
from functools import partial


def configure_jax_memory() -> None:
    """Stop JAX from grabbing 75% of GPU memory, which would starve the PyTorch pipeline.

    Sets XLA_PYTHON_CLIENT_PREALLOCATE=false before JAX's backends start, unless the user
    chose an allocator setting. Too late once JAX runs on a GPU: then it warns instead.
    """
    user_set = [k for k in ("XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION",
                            "XLA_PYTHON_CLIENT_ALLOCATOR") if k in os.environ]
    if user_set:
        return
    if "jax" in sys.modules:
        try:
            from jax._src import xla_bridge

            started = xla_bridge.backends_are_initialized()
        except (ImportError, AttributeError):
            started = False
        if started:
            import jax

            if any(d.platform != "cpu" for d in jax.devices()):
                warnings.warn("JAX was initialised before sdkit with GPU memory preallocation on (75% of the "
                              "GPU); the PyTorch pipeline may run out of memory. Import sdkit first, or set "
                              "XLA_PYTHON_CLIENT_PREALLOCATE=false before JAX starts.", RuntimeWarning, stacklevel=3)
            return
    os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"


configure_jax_memory()  # before the first `import jax` below starts anything

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402

ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),  # OpenAI CLIP's activation
    "gelu": partial(jax.nn.gelu, approximate=False),  # LAION / OpenCLIP checkpoints
    "gelu_new": partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
}


# --- config -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextConfig:
    """`text_config` of a CLIP config.json; defaults are transformers' `CLIPTextConfig` defaults."""

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int = 49407  # 2 in OpenAI's configs: the legacy "argmax token id" pooling


@dataclass(frozen=True)
class VisionConfig:
    """`vision_config` of a CLIP config.json; defaults are transformers' `CLIPVisionConfig` defaults."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5


def _check_heads(config) -> None:
    if config.hidden_size % config.num_attention_heads:
        raise ValueError(f"hidden_size {config.hidden_size} is not a multiple of num_attention_heads "
                         f"{config.num_attention_heads}")
    if config.hidden_act not in ACTIVATIONS:
        raise ValueError(f"hidden_act {config.hidden_act!r} is not supported; expected one of {sorted(ACTIVATIONS)}")


@dataclass(frozen=True)
class CLIPConfig:
    """A CLIP config.json (`model_type: clip`)."""

    text_config: TextConfig = field(default_factory=TextConfig)
    vision_config: VisionConfig = field(default_factory=VisionConfig)
    projection_dim: int = 512

    def __post_init__(self):
        _check_heads(self.text_config)
        _check_heads(self.vision_config)

    @classmethod
    def from_dict(cls, d: dict) -> "CLIPConfig":
        def pick(klass, name):
            # Old configs (e.g. openai/clip-vit-large-patch14) carry `text_config_dict`, which wins over
            # `text_config` entirely (missing keys take defaults), as in transformers' CLIPConfig.
            sub = d.get(f"{name}_dict")
            sub = d.get(name) or {} if sub is None else sub
            return klass(**{f.name: sub[f.name] for f in fields(klass) if sub.get(f.name) is not None})

        return cls(pick(TextConfig, "text_config"), pick(VisionConfig, "vision_config"), d.get("projection_dim", 512))


# --- modules (names = PyTorch state-dict names) ------------------------------------------------

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
    config: TextConfig | VisionConfig
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

    config: TextConfig | VisionConfig
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
        c = self.config
        x = TextEmbeddings(c, self.dtype, name="embeddings")(input_ids)
        t = input_ids.shape[-1]
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
        c = self.config
        x = VisionEmbeddings(c, self.dtype, name="embeddings")(pixel_values)
        x = LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype, name="pre_layrnorm")(x)
        x = Encoder(c, self.dtype, name="encoder")(x)
        return LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype, name="post_layernorm")(x[:, 0])


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


# --- weights ----------------------------------------------------------------------------------


def params_from_state_dict(state: dict[str, np.ndarray], config: CLIPConfig, dtype=jnp.float32) -> dict:
    """PyTorch `CLIPModel` state dict (numpy arrays) -> this module's params; checks names and shapes."""
    params: dict = {}
    for key, value in state.items():
        if key.endswith("position_ids"):  # buffers some old checkpoints saved
            continue
        parts = key.split(".")
        if "layers" in parts:  # encoder.layers.3.mlp.fc1.weight -> encoder/layers_3/mlp/fc1/weight
            i = parts.index("layers")
            parts[i:i + 2] = [f"layers_{parts[i + 1]}"]
        leaf, owner = parts[-1], parts[-2] if len(parts) > 1 else ""
        value = np.asarray(value, np.float32)
        if leaf == "weight" and owner == "patch_embedding":  # Conv2d [D, C, p, p] -> Dense [C*p*p, D]
            parts[-1], value = "kernel", value.reshape(value.shape[0], -1).T
        elif leaf == "weight" and owner in ("token_embedding", "position_embedding"):
            parts[-1] = "embedding"
        elif leaf == "weight" and "norm" in owner:  # layer_norm1, final_layer_norm, pre_layrnorm, ...
            parts[-1] = "scale"
        elif leaf == "weight":  # Linear [out, in] -> Dense kernel [in, out]
            parts[-1], value = "kernel", value.T
        node = params
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = np.array(value)  # a copy: detaches from the memory map
    _check_tree(params, config)
    # Cast on the host (no transient fp32 copy on the accelerator); logit_scale stays fp32, since
    # exp(bf16(4.6052)) would be 98.9, not 100.
    params = {k: v if k == "logit_scale" else jax.tree.map(lambda x: x.astype(np.dtype(dtype)), v)
              for k, v in params.items()}
    return jax.tree.map(jnp.asarray, params)


def _check_tree(params: dict, config: CLIPConfig) -> None:
    expected = jax.eval_shape(lambda: CLIP(config).init(jax.random.key(0), *_dummy_inputs(config)))["params"]
    want = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(expected)}
    got = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(params)}
    missing, unexpected = sorted(want.keys() - got.keys()), sorted(got.keys() - want.keys())
    wrong = sorted(f"{k}: {got[k]} (config says {want[k]})" for k in want.keys() & got.keys() if got[k] != want[k])
    if missing or unexpected or wrong:
        raise ValueError(f"weights do not fit a CLIP of this config.json: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}")


def _dummy_inputs(config: CLIPConfig):
    v = config.vision_config
    return (jnp.zeros((1, config.text_config.max_position_embeddings), jnp.int32),
            jnp.zeros((1, v.num_channels, v.image_size, v.image_size), jnp.float32))


# --- loading ----------------------------------------------------------------------------------

# Only what scoring needs; never *.bin / *.pt / *.msgpack / *.h5 (pickle or other frameworks),
# and not OpenCLIP's own `open_clip_model.safetensors` that LAION repos also carry.
ALLOW_PATTERNS = ["config.json", "model.safetensors", "model.safetensors.index.json", "model-*.safetensors",
                  "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                  "special_tokens_map.json", "preprocessor_config.json"]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def resolve_checkpoint(model_id_or_path: str | os.PathLike, revision: str | None = None,
                       cache_dir: str | None = None) -> str:
    """A local directory holding a CLIP's config.json and safetensors weights.

    Local directories are used as they are; anything else is a Hub id resolved by
    `huggingface_hub.snapshot_download` (so the cache, HF_HUB_OFFLINE and HF_HUB_CACHE apply).
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, HfHubHTTPError, LocalEntryNotFoundError

    name = os.fspath(model_id_or_path)
    if os.path.isdir(name):
        path = name
    else:
        try:
            path = snapshot_download(name, revision=revision, cache_dir=cache_dir, allow_patterns=ALLOW_PATTERNS)
        except (HFValidationError, HfHubHTTPError, LocalEntryNotFoundError) as e:
            raise ValueError(f"unknown CLIP {name!r}: not a local directory, and the Hugging Face Hub "
                             f"could not provide it ({type(e).__name__}: {str(e).splitlines()[0]}). Pass a Hub id "
                             "such as 'openai/clip-vit-base-patch32' or a directory with config.json and "
                             "model.safetensors; offline (HF_HUB_OFFLINE=1), it must be in the cache.") from e
    _check_clip_dir(path, name)
    return path


def _check_clip_dir(path: str, name: str) -> None:
    config_file = os.path.join(path, "config.json")
    if not os.path.exists(config_file):
        raise ValueError(f"{name!r} is not a CLIP checkpoint: no config.json in {path}")
    with open(config_file) as f:
        model_type = json.load(f).get("model_type")
    if model_type != "clip":
        raise ValueError(f"{name!r} is not a CLIP checkpoint: config.json says model_type={model_type!r}, "
                         "expected 'clip' (a full CLIPModel with text and vision towers)")
    files = os.listdir(path)
    if not {"model.safetensors", "model.safetensors.index.json"} & set(files):
        if not os.path.isdir(name):  # we only downloaded the allowed files; ask the Hub what else there is
            try:
                from huggingface_hub import list_repo_files

                files += list_repo_files(name)
            except Exception:  # offline or unreachable: report what the cache holds
                pass
        pickles = sorted({f for f in files if f.endswith(PICKLE_SUFFIXES)})
        found = f"only pickle weights {pickles}" if pickles else "no model.safetensors"
        raise ValueError(f"{name!r} has no safetensors weights ({found}); sdkit never loads pickle checkpoints. "
                         "Use a repo or revision with model.safetensors, or convert it once "
                         "(transformers: `save_pretrained(..., safe_serialization=True)`).")


# safetensors dtype codes -> numpy (ml_dtypes' bfloat16 ships with JAX; numpy has none).
SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
                      "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
                      "BOOL": np.bool_}


def read_safetensors(file: str) -> dict[str, np.ndarray]:
    """Memory-map a .safetensors file: 8-byte header length, JSON header, raw little-endian tensors.

    Read directly rather than with `safetensors.numpy`, which cannot represent bf16 checkpoints.
    """
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    data = np.memmap(file, np.uint8, mode="r", offset=8 + n)
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if info["dtype"] not in SAFETENSORS_DTYPES:
            raise ValueError(f"{file}: tensor {key!r} has dtype {info['dtype']}, "
                             f"expected one of {sorted(SAFETENSORS_DTYPES)}")
        start, end = info["data_offsets"]
        out[key] = data[start:end].view(SAFETENSORS_DTYPES[info["dtype"]]).reshape(info["shape"])
    return out


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """All tensors of a checkpoint directory's model*.safetensors (sharded or not), as numpy."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    state: dict = {}
    for file in files:
        state.update(read_safetensors(os.path.join(path, file)))
    return state


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


def load_flax_clip(model_id_or_path: str | os.PathLike = "openai/clip-vit-base-patch32", *, dtype=jnp.float32,
                   revision: str | None = None, cache_dir: str | None = None) -> FlaxCLIP:
    """Load a Hub CLIP (`openai/clip-vit-base-patch32`, `openai/clip-vit-large-patch14`, ...) into Flax.

    Args:
        model_id_or_path: Hub id or local directory with config.json and model.safetensors.
        dtype: params and compute dtype; `jnp.bfloat16`/`jnp.float16` halve memory on accelerators
            (LayerNorm statistics, softmax and the final normalisation stay fp32).
        revision, cache_dir: passed to `huggingface_hub.snapshot_download`.
    """
    dtype = jnp.dtype(dtype)
    path = resolve_checkpoint(model_id_or_path, revision, cache_dir)
    with open(os.path.join(path, "config.json")) as f:
        config = CLIPConfig.from_dict(json.load(f))
    params = params_from_state_dict(load_state_dict(path), config, dtype)
    return FlaxCLIP(CLIP(config, dtype), params, config, path, os.fspath(model_id_or_path))
