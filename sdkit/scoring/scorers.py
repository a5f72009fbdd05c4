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

import threading
import warnings
from typing import Any

import sdkit.scoring.flax  # noqa: F401  (first: configures JAX memory before JAX starts; imports no JAX)
from sdkit.scoring.base import (  # noqa: F401  (re-exported: the names scorers are imported by)
    BACKENDS, DEFAULT_CLIP, CLIPScorer, Scorer, check_inputs, check_processor, clip_rule, is_tensor,
)

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
            name ("clip", "pickscore", "hpsv2", "aesthetic", "toy-reward"; `sdkit.scoring.verifiers`), or several as
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
