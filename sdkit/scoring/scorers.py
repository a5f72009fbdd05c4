"""Score candidate images against their prompts. Every scorer has one signature:

    scorer(images: Sequence[PIL.Image.Image] | torch.Tensor, prompts: Sequence[str]) -> Scores

`images` are PIL images, or a float tensor (N, 3, H, W) in [0, 1] as diffusers' `output_type="pt"`
gives: that batch is preprocessed on its own device with the same result as its PIL images
(`sdkit.scoring.preprocess.preprocess_tensor`), so pipeline output reaches the scorer without a PIL round
trip (the PyTorch scorer takes it as is, the Flax scorer through DLPack when JAX shares the GPU).
`prompts` has length 1 (shared) or len(images) (candidate i against prompts[i]). A new
scorer (LAION aesthetic, PickScore, ...) is a new class of this shape with `.name` and
`.model_id`. Two CLIP backends ship: `FlaxCLIPScorer` (sdkit's Flax CLIP, data-parallel over
all local JAX devices) and `TorchCLIPScorer` (transformers' `CLIPModel`). Both use the same
tokenizer and the same preprocessing (`sdkit.scoring.preprocess`), so they differ only by the model.

Importing this module sets XLA_PYTHON_CLIENT_PREALLOCATE=false (unless you set it) so JAX
does not take 75% of the GPU from the PyTorch pipeline; see `flax_clip.configure_jax_memory`.
"""

from __future__ import annotations

import sys
import threading
import warnings
from collections import OrderedDict
from typing import Protocol, Sequence

import numpy as np
from PIL import Image

from sdkit.scoring import flax_clip  # noqa: F401  (first: configures JAX memory before JAX starts)
from sdkit.results import Scores
from sdkit.scoring.flax_clip import resolve_checkpoint
from sdkit.scoring.preprocess import ImageConfig, preprocess, preprocess_tensor

DEFAULT_CLIP = "openai/clip-vit-base-patch32"


class Scorer(Protocol):
    name: str
    model_id: str

    def __call__(self, images, prompts: Sequence[str] | str) -> Scores: ...  # PIL images or an (N, 3, H, W) tensor


def is_tensor(x) -> bool:
    """A torch tensor (without importing torch for callers that never made one)."""
    return "torch" in sys.modules and isinstance(x, sys.modules["torch"].Tensor)


def check_inputs(images, prompts: Sequence[str] | str) -> tuple:
    """Validate a scorer call; returns the images (a list, or the tensor) and one prompt per image."""
    if is_tensor(images):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"image tensor has shape {tuple(images.shape)}; expected (N, 3, H, W), "
                             "as diffusers' output_type='pt' gives")
        if not images.is_floating_point():
            raise TypeError(f"image tensor has dtype {images.dtype}; expected a float tensor in [0, 1]")
    else:
        images = list(images)
        for i, im in enumerate(images):
            if not isinstance(im, Image.Image):
                raise TypeError(f"images[{i}] is a {type(im).__name__}, expected a PIL.Image.Image")
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not len(images):
        raise ValueError("no images to score: `images` is empty")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"prompts[{i}] is a {type(p).__name__}, expected a str")
    if len(prompts) not in (1, len(images)):
        raise ValueError(f"got {len(prompts)} prompts for {len(images)} images; pass 1 prompt (shared) "
                         f"or exactly {len(images)} (one per image)")
    return images, prompts * len(images) if len(prompts) == 1 else prompts


class CLIPScorer:
    """What both CLIP backends share: validation, tokenization, the prompt-embedding cache, the maths."""

    name = "clip"

    def __init__(self, model_id: str, path: str, logit_scale: float, max_position_embeddings: int,
                 cache_size: int = 1024):
        from transformers import CLIPTokenizer

        self.model_id, self.path = model_id, path
        self.tokenizer = CLIPTokenizer.from_pretrained(path)
        self.image_config = ImageConfig.from_pretrained(path)
        self.max_length = min(self.tokenizer.model_max_length, max_position_embeddings)
        self.logit_scale = float(np.exp(logit_scale))
        self._text_cache: OrderedDict[str, np.ndarray] = OrderedDict()  # prompt -> normalised embedding
        self._cache_size = cache_size

    def tokenize(self, prompts: list[str]) -> np.ndarray:
        """Token ids (len(prompts), max_length), padded; prompts over the limit truncated with a warning."""
        lengths = [len(ids) for ids in self.tokenizer(prompts, verbose=False)["input_ids"]]
        for p, n in zip(prompts, lengths):
            if n > self.max_length:
                warnings.warn(f"prompt has {n} tokens, CLIP reads {self.max_length}; scoring it truncated "
                              f"(as CLIP does): {p[:60]!r}...", UserWarning, stacklevel=4)
        ids = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="np")["input_ids"]
        return ids.astype(np.int32)

    def encode_prompt(self, prompts: list[str]) -> np.ndarray:
        """L2-normalised text embeddings (len(prompts), D); each distinct prompt is encoded once and cached."""
        todo = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if todo:
            for p, e in zip(todo, self._encode_text(self.tokenize(todo))):
                self._text_cache[p] = e
        out = np.stack([self._text_cache[p] for p in prompts])
        for p in prompts:
            self._text_cache.move_to_end(p)
        while len(self._text_cache) > self._cache_size:
            self._text_cache.popitem(last=False)
        return out

    def __call__(self, images, prompts: Sequence[str] | str) -> Scores:
        """Score image i against prompts[i] (or the single prompt). See the module docstring."""
        images, prompts = check_inputs(images, prompts)
        unique = list(dict.fromkeys(prompts))  # text is encoded per prompt, not per image
        index = np.array([unique.index(p) for p in prompts], np.int32)
        text = self.encode_prompt(unique)
        if is_tensor(images):  # on the tensor's device; the same pixels as its PIL images would give
            pixels = preprocess_tensor(images, self.image_config)
        else:
            pixels = preprocess(images, self.image_config)
        cosine = self._cosine(pixels, index, text).astype(np.float32)
        return Scores(logits=np.float32(self.logit_scale) * cosine, clip_score=np.maximum(100 * cosine, 0),
                      scorer=f"{self.name}:{self.model_id}")

    # Backends implement these two.
    def _encode_text(self, input_ids: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _cosine(self, pixel_values, index: np.ndarray, text: np.ndarray) -> np.ndarray:
        """cos(image i, text[index[i]]) for each image; `pixel_values` is numpy or a torch tensor."""
        raise NotImplementedError


def _text_embeds(module, params, input_ids):
    return flax_clip.normalize(module.apply({"params": params}, input_ids, method=flax_clip.CLIP.get_text_features))


def _image_cosine(module, params, pixel_values, index, text):
    # Each image against its own prompt: gather by index, never by stride over a device axis.
    image = flax_clip.normalize(module.apply({"params": params}, pixel_values,
                                             method=flax_clip.CLIP.get_image_features))
    return (image * text[index]).sum(-1)


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
        model_id: Hub id or local directory of a CLIP checkpoint (safetensors).
        dtype: None for float32; "bfloat16"/"float16" to halve params and compute on accelerators.
        devices: the JAX devices to use.
        batch_size: images per device per forward pass (None: 4 on CPU, where small batches are as
            fast and waste less padding; 32 on GPU/TPU). Up to this many - 1 are padding per call.
    """

    name = "clip-flax"

    def __init__(self, model_id: str = DEFAULT_CLIP, *, dtype=None, devices=None, batch_size: int | None = None,
                 revision: str | None = None, cache_dir: str | None = None):
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
        clip = flax_clip.load_flax_clip(model_id, dtype=dtype, revision=revision, cache_dir=cache_dir)
        super().__init__(str(model_id), clip.path, float(np.asarray(clip.params["logit_scale"], np.float32)),
                         clip.config.text_config.max_position_embeddings)
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
            out.append(self._image_fn(self.params, x, self._pad(index[a:a + step], step), text))
        return np.concatenate([np.asarray(o) for o in out])[: len(pixel_values)]


def _torch_device(device):
    import torch

    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


class TorchCLIPScorer(CLIPScorer):
    """CLIP scores from transformers' PyTorch `CLIPModel` on one device ("auto": cuda, mps, else cpu).

    Args:
        model_id: Hub id or local directory of a CLIP checkpoint (safetensors only, never pickle).
        device: torch device or "auto".
        dtype: None for float32, or a torch dtype / name ("float16", "bfloat16").
        batch_size: images per forward pass.
    """

    name = "clip-torch"

    def __init__(self, model_id: str = DEFAULT_CLIP, *, device="auto", dtype=None, batch_size: int = 16,
                 revision: str | None = None, cache_dir: str | None = None):
        import torch
        from transformers import CLIPModel

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        path = resolve_checkpoint(model_id, revision, cache_dir)
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else (dtype or torch.float32)
        self.device, self.dtype, self.batch_size = _torch_device(device), dtype, batch_size
        from sdkit.quiet import quiet_hf

        with quiet_hf():
            self.model = CLIPModel.from_pretrained(path, use_safetensors=True, dtype=dtype).to(self.device).eval()
        super().__init__(str(model_id), path, float(self.model.logit_scale.detach().float()),
                         self.model.config.text_config.max_position_embeddings)

    def _encode_text(self, input_ids: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            ids = torch.from_numpy(input_ids.astype(np.int64)).to(self.device)
            e = self.model.get_text_features(input_ids=ids).pooler_output.float()
            return (e / e.norm(dim=-1, keepdim=True)).cpu().numpy()

    def _cosine(self, pixel_values: np.ndarray, index: np.ndarray, text: np.ndarray) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            t = torch.from_numpy(text).to(self.device)
            for a in range(0, len(pixel_values), self.batch_size):
                x = pixel_values[a:a + self.batch_size]
                x = (x if torch.is_tensor(x) else torch.from_numpy(x)).to(self.device, self.dtype)
                e = self.model.get_image_features(pixel_values=x).pooler_output.float()
                e = e / e.norm(dim=-1, keepdim=True)
                i = torch.from_numpy(index[a:a + self.batch_size].astype(np.int64)).to(self.device)
                out.append((e * t[i]).sum(-1).cpu().numpy())
        return np.concatenate(out)


BACKENDS = {"flax": FlaxCLIPScorer, "torch": TorchCLIPScorer}
CHOICES = (*BACKENDS, "auto")
_warned_jax_cpu = False


def jax_has_accelerator() -> bool:
    """JAX's default backend is a GPU or TPU (not the CPU)."""
    import jax

    return jax.default_backend() != "cpu"


def torch_accelerator() -> str | None:
    """"cuda" or "mps" when torch sees that device, else None."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return None


def jax_cuda_fix() -> str:
    """The command that installs a JAX matching torch's CUDA (major version)."""
    import torch

    major = (torch.version.cuda or "12").split(".")[0]
    extra = "cuda13" if major == "13" else "cuda12"  # JAX ships CUDA 12 and CUDA 13 plugins
    return f'pip install -U "jax[{extra}]"'


def _warn_jax_on_cpu(fallback: bool) -> None:
    """Once per process: torch has a CUDA GPU, JAX does not, so Flax would score on the CPU."""
    global _warned_jax_cpu
    if _warned_jax_cpu:
        return
    _warned_jax_cpu = True
    import jax
    import torch

    then = ("load_scorer('auto') uses the PyTorch scorer on the GPU instead" if fallback else
            "the Flax scorer runs on the CPU (load_scorer('auto') or 'torch' would use the GPU)")
    warnings.warn(f"JAX {jax.__version__} sees no GPU (backend {jax.default_backend()!r}) while torch "
                  f"{torch.__version__} sees CUDA {torch.version.cuda}: {then}. To score with Flax on the GPU, "
                  f"run `{jax_cuda_fix()}` (or pip install 'sdkit[cuda]') and restart Python.",
                  RuntimeWarning, stacklevel=3)


def load_scorer(backend: str = "flax", model_id: str = DEFAULT_CLIP, **kwargs) -> Scorer:
    """A CLIP scorer. backend "flax": sdkit's Flax CLIP on all JAX devices; "torch": transformers' CLIPModel;
    "auto": Flax, unless torch has a GPU that JAX does not see (a CPU-only JAX), then torch on that GPU.

    "flax" with a CPU-only JAX next to a CUDA torch keeps Flax (on the CPU) and warns once with the install
    command; so does "auto" as it falls back. `kwargs` go to the scorer class (flax: dtype, devices,
    batch_size; torch: device, dtype, batch_size; both: revision, cache_dir).
    """
    if backend not in CHOICES:
        raise ValueError(f"unknown scorer backend {backend!r}; expected one of {sorted(CHOICES)}")
    if backend in ("flax", "auto") and "devices" not in kwargs and "device" not in kwargs:
        gpu = torch_accelerator()
        if gpu is not None and not jax_has_accelerator():
            if gpu == "cuda":
                _warn_jax_on_cpu(fallback=backend == "auto")
            if backend == "auto":
                backend = "torch"
    if backend == "auto":
        backend = "torch" if "device" in kwargs else "flax"
    return BACKENDS[backend](model_id, **kwargs)


_scorers: dict[tuple, "Scorer"] = {}
_scorers_lock = threading.Lock()


def get_scorer(backend: str = "flax", model_id: str | None = None, **kwargs):
    """A cached scorer: loading a CLIP and compiling it is done once per (backend, model)."""
    model_id = model_id or DEFAULT_CLIP
    key = (backend, str(model_id), tuple(sorted(kwargs.items())))
    with _scorers_lock:
        if key not in _scorers:
            _scorers[key] = load_scorer(backend, str(model_id), **kwargs)
        return _scorers[key]
