"""What every scorer shares, below the verifiers, the ensemble and `load_scorer` (`sdkit.scoring.scorers`, which
re-exports all of it): the signature, input checks, the CLIP base both backends build on, and the backends' table.
Imports neither JAX nor torch."""

from __future__ import annotations

import sys
import warnings
from collections import OrderedDict
from typing import Protocol, Sequence

import numpy as np
from PIL import Image

from sdkit.load.hub import resolve_processor
from sdkit.results import Scores
from sdkit.scoring.preprocess import ImageConfig, preprocess, preprocess_tensor

DEFAULT_CLIP = "openai/clip-vit-base-patch32"


class Scorer(Protocol):
    name: str
    model_id: str

    def __call__(self, images, prompts: Sequence[str] | str) -> Scores: ...  # PIL images or an (N, 3, H, W) tensor


def takes_tensors(scorer) -> bool:
    """Whether `scorer` is known to take a pixel tensor as well as PIL images (sdkit's scorers and their
    ensembles); a scorer of one's own is handed PIL images unless it sets `takes_tensors = True`."""
    return bool(getattr(scorer, "takes_tensors", False))


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
    takes_tensors = True

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
