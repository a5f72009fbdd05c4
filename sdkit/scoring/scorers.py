"""Score candidate images against their prompts. Every scorer has one signature:

    scorer(images: Sequence[PIL.Image.Image] | torch.Tensor, prompts: Sequence[str]) -> Scores

`images` are PIL images, or a float tensor (N, 3, H, W) in [0, 1] as diffusers' `output_type="pt"`
gives: that batch is preprocessed on its own device with the same result as its PIL images
(`sdkit.scoring.preprocess.preprocess_tensor`), so pipeline output reaches the scorer without a PIL round
trip (the PyTorch scorer takes it as is, the Flax scorer through DLPack when JAX shares the GPU).
`prompts` has length 1 (shared) or len(images) (candidate i against prompts[i]). Which verifiers ship (clip,
pickscore, hpsv2, aesthetic) and how to add one: `sdkit.scoring.verifiers`; several combined: `sdkit.scoring.ensemble`.
Two CLIP backends ship, both on the `CLIPScorer` base here: `FlaxCLIPScorer`
(`sdkit.scoring.flax.scorer`: sdkit's Flax CLIP, data-parallel over all local JAX devices) and
`TorchCLIPScorer` (`sdkit.scoring.torch_clip`: transformers' `CLIPModel`). Both use the same
tokenizer and the same preprocessing (`sdkit.scoring.preprocess`), so they differ only by the model.
`load_scorer` imports the backend it picks, and only that one.

This module imports neither JAX nor torch. Importing it sets XLA_PYTHON_CLIENT_PREALLOCATE=false
(unless you set it) so JAX, once started, does not take 75% of the GPU from the PyTorch pipeline;
see `sdkit.scoring.flax.memory`.
"""

from __future__ import annotations

import importlib
import sys
import threading
import warnings
from collections import OrderedDict
from typing import Any, Protocol, Sequence

import numpy as np
from PIL import Image

import sdkit.scoring.flax  # noqa: F401  (first: configures JAX memory before JAX starts; imports no JAX)
from sdkit.load.hub import resolve_processor
from sdkit.results import Scores
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


def clip_rule(cosine: np.ndarray, logit_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """CLIP score (Hessel et al. 2021): logits exp(logit_scale) * cosine, shown max(100 * cosine, 0)."""
    return np.float32(logit_scale) * cosine, np.maximum(100 * cosine, 0)


class CLIPScorer:
    """What both CLIP backends share: validation, tokenization, the prompt-embedding cache, the maths.

    `verifier` names what the cosine is turned into by `rule` ((cosine, exp(logit_scale)) -> (logits, shown));
    `processor`: the folder with the tokenizer and preprocessor_config.json when the checkpoint's own has none.
    """

    backend = ""

    def __init__(self, model: str, path: str, logit_scale: float, max_position_embeddings: int,
                 cache_size: int = 1024, *, processor: str | None = None, verifier: str = "clip", rule=clip_rule):
        from transformers import CLIPTokenizer

        self.model_id, self.path = model, path  # model_id: the checkpoint as named, recorded in every Scores
        self.verifier, self.rule, self.name = verifier, rule, f"{verifier}-{self.backend}"
        self.processor = resolve_processor(processor) if processor else path
        check_processor(self.processor, verifier, model)
        self.tokenizer = CLIPTokenizer.from_pretrained(self.processor)
        self.image_config = ImageConfig.from_pretrained(self.processor)
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
        cosine = self._cosine(self.pixels(images), index, text).astype(np.float32)
        logits, shown = self.rule(cosine, self.logit_scale)
        return Scores(logits=logits, clip_score=shown, scorer=f"{self.name}:{self.model_id}")

    def pixels(self, images):
        """CLIP's pixel values of checked images; a tensor's on its own device, the same as its PIL images give."""
        return preprocess_tensor(images, self.image_config) if is_tensor(images) else preprocess(images, self.image_config)

    def image_embeds(self, images) -> np.ndarray:
        """L2-normalised image embeddings (N, projection_dim), float32 (what prompt-free heads read)."""
        images, _ = check_inputs(images, [""])
        return self._image_embeds(self.pixels(images)).astype(np.float32)

    # Backends implement these three.
    def _encode_text(self, input_ids: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _cosine(self, pixel_values, index: np.ndarray, text: np.ndarray) -> np.ndarray:
        """cos(image i, text[index[i]]) for each image; `pixel_values` is numpy or a torch tensor."""
        raise NotImplementedError

    def _image_embeds(self, pixel_values) -> np.ndarray:
        raise NotImplementedError


def check_processor(path: str, verifier: str, model: str) -> None:
    """A folder with CLIP's tokenizer and preprocessor_config.json, or a ValueError naming what is missing."""
    import os

    missing = [f for f in ("preprocessor_config.json",) if not os.path.exists(os.path.join(path, f))]
    if not any(os.path.exists(os.path.join(path, f)) for f in ("tokenizer.json", "vocab.json")):
        missing.append("tokenizer.json or vocab.json + merges.txt")
    if missing:
        raise ValueError(f"{verifier} scorer of {model!r}: no processor in {path} (missing {', '.join(missing)}); "
                         "pass processor= (a Hub id or folder with CLIP's tokenizer and preprocessor_config.json; "
                         f"{verifier}'s default is in sdkit.scoring.verifiers)")


# backend -> (module, class), imported when picked: the torch scorer never loads JAX, nor the Flax one torch.
BACKENDS = {"flax": ("sdkit.scoring.flax.scorer", "FlaxCLIPScorer"),
            "torch": ("sdkit.scoring.torch_clip", "TorchCLIPScorer")}
CHOICES = (*BACKENDS, "auto")
_warned_jax_cpu = False


def jax_has_accelerator() -> bool:
    """JAX's default backend is a GPU or TPU (not the CPU)."""
    import jax

    return jax.default_backend() != "cpu"


def torch_accelerator() -> str | None:
    """"cuda" or "mps" when torch sees that device, else None."""
    from sdkit.load.devices import auto_device

    device = auto_device()
    return None if device == "cpu" else device


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


def pick_backend(backend: str, kwargs: dict) -> str:
    """"flax" or "torch" for a backend choice ("auto": Flax, unless torch has a GPU that JAX does not see)."""
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
    return backend


def checked_spec(scorer: Any, weights=None) -> dict[str, float]:
    """{verifier: weight} of a scorer spec (a name, "clip:1,aesthetic:0.5", a list, a dict), or a ValueError naming the
    unknown scorer or bad weight and what is allowed. Loads nothing."""
    from sdkit.scoring.ensemble import parse_spec
    from sdkit.scoring.verifiers import VERIFIERS

    names = parse_spec(scorer, weights)
    unknown = [n for n in names if n not in VERIFIERS]
    if unknown:
        raise ValueError(f"unknown scorer {unknown[0]!r}; expected one of {sorted(VERIFIERS)} (or a backend "
                         f"{sorted(CHOICES)} for CLIP), several as 'clip:1,aesthetic:0.5'")
    return names


def load_scorer(scorer: Any = "flax", model: Any = None, *, backend: str | None = None, weights=None,
                combine: str | None = None, **kwargs) -> Scorer:
    """A scorer: one verifier, or several as an `Ensemble` (`sdkit.scoring.ensemble`).

    Args:
        scorer: a backend ("flax", "torch", "auto": the CLIP scorer there, as before verifiers had names), a verifier
            name ("clip", "pickscore", "hpsv2", "aesthetic"; `sdkit.scoring.verifiers`), or several as
            "clip:1,aesthetic:0.5", a list of names or a {name: weight} dict (an ensemble; a missing weight is 1).
        model: a verifier's checkpoint (Hub id or folder; default its own, e.g. DEFAULT_CLIP) or its keyword
            arguments ({"model": ..., "processor": ..., "head": ...}); for an ensemble a dict {name: either}.
        backend: "flax" (default: sdkit's Flax CLIP on all JAX devices), "torch" (transformers' CLIPModel) or
            "auto" (Flax, unless torch has a GPU that JAX does not see, then torch on that GPU). "flax" with a
            CPU-only JAX next to a CUDA torch keeps Flax (on the CPU) and warns once with the install command;
            so does "auto" as it falls back.
        weights: an ensemble's {name: weight} (override the spec's); finite and >= 0.
        combine: an ensemble's "zscore" (default) or "rank".
        kwargs: to every backend scorer (flax: dtype, devices, batch_size; torch: device, dtype, batch_size; both:
            revision, cache_dir).

    Names, weights and combine are checked before any model loads (a ValueError naming the bad one and what is
    allowed). A checkpoint that cannot be found, or has no safetensors weights, raises
    `sdkit.errors.ModelNotAvailable` (`sdkit.load.hub`).
    """
    from sdkit.scoring.ensemble import COMBINE, DEFAULT_COMBINE, Ensemble
    from sdkit.scoring.verifiers import VERIFIERS

    if isinstance(scorer, str) and scorer in CHOICES:  # a backend: its CLIP scorer
        if backend is not None and backend != scorer:
            raise ValueError(f"load_scorer({scorer!r}, backend={backend!r}): two backends; name a verifier "
                             f"({sorted(VERIFIERS)}) with backend=, or a backend alone")
        scorer, backend = "clip", scorer
    names = checked_spec(scorer, weights)
    single = isinstance(scorer, str) and "," not in scorer and ":" not in scorer and not weights and combine is None
    if single:
        models = {scorer: model} if model is not None else {}
    elif model is not None and not isinstance(model, dict):
        raise ValueError(f"model={model!r} for the ensemble {sorted(names)}: give a dict {{name: checkpoint}}")
    else:
        models = model or {}
    stray = sorted(set(models) - set(names))
    if stray:
        raise ValueError(f"model names {stray}, which are not among the scorers {sorted(names)}")
    combine = combine or DEFAULT_COMBINE
    if combine not in COMBINE:
        raise ValueError(f"combine={combine!r}; expected one of {COMBINE}")
    backend = pick_backend(backend or "flax", kwargs)
    members = {}
    for name in names:
        own = models.get(name)
        own = dict(own) if isinstance(own, dict) else ({"model": own} if own is not None else {})
        members[name] = VERIFIERS[name](backend, **own, **kwargs)
    return members[next(iter(names))] if single else Ensemble(members, names, combine)


_scorers: dict[tuple, "Scorer"] = {}
_scorers_lock = threading.Lock()


def get_scorer(scorer: Any = "flax", model: Any = None, **kwargs):
    """A cached `load_scorer(scorer, model, **kwargs)`: loading the models and compiling them is done once per
    (scorer, checkpoint, options). For a backend alone, `model` defaults to DEFAULT_CLIP."""
    if isinstance(scorer, str) and scorer in CHOICES:
        model = str(model or DEFAULT_CLIP)
    key = (repr(scorer), repr(model), repr(sorted(kwargs.items())))
    with _scorers_lock:
        if key not in _scorers:
            _scorers[key] = load_scorer(scorer, model, **kwargs)
        return _scorers[key]


def scorer_for(scorer: Any, model: str, clip_model: str | None = None, **options):
    """The one "scorer argument -> scorer" of sdkit (rerank, search, sweeps, the explorer all take it so):

    None: no scoring (returns None); a name ("flax", "torch", "auto"): that backend, loaded once
    (`get_scorer`) with CLIP `clip_model`, or by default the CLIP that belongs with the pipeline checkpoint
    `model` (`sdkit.models.builtin.clip_for`); a verifier spec ("pickscore", "clip:1,aesthetic:0.5"; `load_scorer`)
    on `options`' backend (default flax), its "clip" with that same CLIP and the others with their own checkpoints;
    anything else: a scorer object, returned as it is.
    """
    if scorer is None or not isinstance(scorer, str):
        return scorer
    from sdkit.models.builtin import clip_for

    clip = clip_model or clip_for(model or "")
    if scorer in CHOICES:
        return get_scorer(scorer, clip)
    names = checked_spec(scorer)  # a malformed spec fails here, before the CLIP is looked up
    if "clip" not in names:
        return get_scorer(scorer, None, **options)
    return get_scorer(scorer, clip if scorer.strip() == "clip" else {"clip": clip}, **options)
