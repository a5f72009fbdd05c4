"""A CLIP checkpoint into Flax: safetensors -> PyTorch state dict (numpy) -> this package's params.

Read with safetensors' own numpy reader; `ml_dtypes` (which JAX ships) registers bfloat16 with numpy,
so bf16 checkpoints load as ml_dtypes.bfloat16 arrays, which the converter widens to fp32 exactly.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, where safetensors' numpy reader finds it)
import numpy as np

from sdkit.load.hub import resolve_clip
from sdkit.scoring.flax.config import CLIPConfig
from sdkit.scoring.flax.modeling import CLIP, FlaxCLIP


def read_safetensors(file: str) -> dict[str, np.ndarray]:
    """All tensors of one .safetensors file, as numpy arrays (bf16 as ml_dtypes.bfloat16)."""
    from safetensors import safe_open

    with safe_open(file, framework="numpy") as f:
        return {key: f.get_tensor(key) for key in f.keys()}


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
        node[parts[-1]] = np.array(value)  # a copy: detaches from the reader's buffer
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


def load_flax_clip(model: str | os.PathLike = "openai/clip-vit-base-patch32", *, dtype=jnp.float32,
                   revision: str | None = None, cache_dir: str | None = None) -> FlaxCLIP:
    """Load a Hub CLIP (`openai/clip-vit-base-patch32`, `openai/clip-vit-large-patch14`, ...) into Flax.

    Args:
        model: Hub id or local directory with config.json and model.safetensors.
        dtype: params and compute dtype; `jnp.bfloat16`/`jnp.float16` halve memory on accelerators
            (LayerNorm statistics, softmax and the final normalisation stay fp32).
        revision, cache_dir: passed to `huggingface_hub.snapshot_download` (`sdkit.load.hub.resolve_clip`).
    """
    dtype = jnp.dtype(dtype)
    path = resolve_clip(model, revision, cache_dir)
    with open(os.path.join(path, "config.json")) as f:
        config = CLIPConfig.from_dict(json.load(f))
    params = params_from_state_dict(load_state_dict(path), config, dtype)
    return FlaxCLIP(CLIP(config, dtype), params, config, path, os.fspath(model))
