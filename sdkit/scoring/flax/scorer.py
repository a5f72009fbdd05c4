"""`FlaxCLIPScorer`: CLIP scores from sdkit's Flax CLIP, data-parallel over all local JAX devices."""

from __future__ import annotations

import numpy as np

from sdkit.scoring.flax.modeling import CLIP, normalize
from sdkit.scoring.flax.weights import load_flax_clip
from sdkit.scoring.base import DEFAULT_CLIP, CLIPScorer


def _text_embeds(module, params, input_ids):
    return normalize(module.apply({"params": params}, input_ids, method=CLIP.get_text_features))


def _image_embeds(module, params, pixel_values):
    return normalize(module.apply({"params": params}, pixel_values, method=CLIP.get_image_features))


def _image_cosine(module, params, pixel_values, index, text):
    # Each image against its own prompt: gather by index, never by stride over a device axis.
    return (_image_embeds(module, params, pixel_values) * text[index]).sum(-1)


class FlaxCLIPScorer(CLIPScorer):
    """CLIP scores from sdkit's Flax CLIP, data-parallel over `devices` (default: `jax.local_devices()`).

    Parallelism is `jax.shard_map` under `jax.jit` over a 1-D device `Mesh`, not `jax.pmap`:
    pmap is in maintenance mode since JAX 0.8 and is itself now built on jit + shard_map. Params
    are placed once, replicated; images and their prompt indices are sharded on the batch axis;
    the per-device function is exactly the one-device program. Arrays stay global and in input
    order, so there is no stride indexing to get wrong (dalle-mini's `logits[:, i::p, i]` breaks
    for some device counts).

    Every forward pass runs `batch_size` images per device (the last one padded, padding dropped).
    XLA's matmuls round differently for different batch shapes, so a fixed per-device shape is what
    makes scores identical, bit for bit, on 1 or 8 devices; it also means one compile. Prompts are
    encoded one at a time on the first device, padded to a power-of-two length (a causal mask makes
    EOS pooling blind to padding), so a prompt's embedding never depends on its batch-mates.

    Args:
        model: Hub id or local directory of a CLIP checkpoint (safetensors).
        dtype: None for float32; "bfloat16"/"float16" to halve params and compute on accelerators.
        devices: the JAX devices to use.
        batch_size: images per device per forward pass (None: 4 on CPU, where small batches are as
            fast and waste less padding; 32 on GPU/TPU). Up to this many - 1 are padding per call.
    """

    backend = "flax"

    def __init__(self, model: str = DEFAULT_CLIP, *, dtype=None, devices=None, batch_size: int | None = None,
                 revision: str | None = None, cache_dir: str | None = None, **verifier):
        import jax
        import jax.numpy as jnp
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

        self.devices = list(devices) if devices is not None else jax.local_devices()
        if batch_size is None:
            batch_size = 4 if self.devices[0].platform == "cpu" else 32
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        dtype = jnp.dtype(dtype or jnp.float32)
        if dtype not in (jnp.float32, jnp.bfloat16, jnp.float16):
            raise ValueError(f"dtype {dtype} is not supported; use None (float32), 'bfloat16' or 'float16'")
        clip = load_flax_clip(model, dtype=dtype, revision=revision, cache_dir=cache_dir)
        super().__init__(str(model), clip.path, float(np.asarray(clip.params["logit_scale"], np.float32)),
                         clip.config.text_config.max_position_embeddings, **verifier)
        self.config, self.dtype, self.batch_size = clip.config, dtype, batch_size
        self.mesh = Mesh(np.array(self.devices), ("batch",))
        self._replicated = NamedSharding(self.mesh, P())
        self._batched = NamedSharding(self.mesh, P("batch"))
        self.last_transfer = None  # how the last call's pixels reached JAX: "pil", "numpy" or "dlpack"
        self.params = jax.device_put(clip.params, self._replicated)  # once, reused by every call
        # The first device's replica, for text: a view of the same buffers, no copy.
        self._params0 = jax.tree.map(lambda a: a.addressable_shards[0].data, self.params)
        module = clip.module
        self._text_fn = jax.jit(lambda p, ids: _text_embeds(module, p, ids))
        self._image_fn = jax.jit(jax.shard_map(
            lambda p, x, i, t: _image_cosine(module, p, x, i, t), mesh=self.mesh,
            in_specs=(P(), P("batch"), P("batch"), P()), out_specs=P("batch")))
        self._embed_fn = jax.jit(jax.shard_map(
            lambda p, x: _image_embeds(module, p, x), mesh=self.mesh, in_specs=(P(), P("batch")),
            out_specs=P("batch")))

    @staticmethod
    def _pad(x, size: int):
        if size <= len(x):
            return x
        import jax.numpy as jnp

        xp = np if isinstance(x, np.ndarray) else jnp  # numpy from PIL; a JAX array from DLPack
        return xp.concatenate([x, xp.zeros((size - len(x),) + x.shape[1:], x.dtype)])

    def handover(self, pixels) -> str:
        """How a torch pixel tensor reaches JAX: "dlpack" (no copy) when both are on a GPU, else "numpy"."""
        return "dlpack" if pixels.device.type == "cuda" and self.devices[0].platform == "gpu" else "numpy"

    def _to_jax(self, pixels):
        """A torch pixel tensor -> numpy (CPU) or a JAX array sharded over the batch axis (DLPack)."""
        import jax

        self.last_transfer = self.handover(pixels)
        if self.last_transfer == "numpy":
            return pixels.cpu().numpy()
        # The tensor's own GPU buffer, seen by JAX; device_put then moves only what other devices need.
        return jax.dlpack.from_dlpack(pixels.contiguous())

    def _encode_text(self, input_ids: np.ndarray) -> np.ndarray:
        eos = self.tokenizer.eos_token_id
        out = []
        for ids in input_ids:
            n = int(np.argmax(ids == eos)) + 1 if eos in ids else len(ids)  # tokens up to the first EOS
            n = min(max(8, 1 << (n - 1).bit_length()), len(ids))  # 8, 16, 32, 64 or all 77: few compiles
            out.append(self._text_fn(self._params0, ids[None, :n]))
        return np.concatenate([np.asarray(e) for e in out])

    def _cosine(self, pixel_values, index: np.ndarray, text: np.ndarray) -> np.ndarray:
        import jax

        # Pad the prompt table to a power of two, so a new number of prompts rarely recompiles.
        text = self._pad(text.astype(np.float32), 1 << max(len(text) - 1, 0).bit_length())
        text = jax.device_put(text, self._replicated)  # once per call, not once per batch
        return self._sharded(pixel_values, lambda x, a, step: self._image_fn(
            self.params, x, self._pad(index[a:a + step], step), text))

    def _image_embeds(self, pixel_values) -> np.ndarray:
        return self._sharded(pixel_values, lambda x, a, step: self._embed_fn(self.params, x))

    def _sharded(self, pixel_values, fn) -> np.ndarray:
        """fn(x, start, step) over padded global batches of `step` = devices x batch_size images, sharded on the
        batch axis; the results concatenated in input order, padding dropped."""
        import jax

        if isinstance(pixel_values, np.ndarray):
            self.last_transfer = "pil"
        else:
            pixel_values = self._to_jax(pixel_values)
        pixel_values = pixel_values.astype(self.dtype)
        on_device = not isinstance(pixel_values, np.ndarray)
        step = len(self.devices) * self.batch_size
        out = []
        for a in range(0, len(pixel_values), step):  # dispatched asynchronously, fetched below
            x = self._pad(pixel_values[a:a + step], step)
            if on_device:  # committed to one GPU: spread it over the mesh as the jitted function expects
                x = jax.device_put(x, self._batched)
            out.append(fn(x, a, step))
        return np.concatenate([np.asarray(o) for o in out])[: len(pixel_values)]
