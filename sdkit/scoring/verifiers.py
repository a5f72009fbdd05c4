"""The verifiers sdkit ranks by, one function each, all of one signature (k-diffusion's samplers are the model):

    verifier(backend="flax", model=<its checkpoint>, **kwargs) -> scorer     # scorer(images, prompts) -> Scores

    clip       CLIP score (Hessel et al. 2021) of any CLIP checkpoint; the default
    pickscore  PickScore (Kirstain et al. 2023): yuvalkirstain/PickScore_v1 with the processor of
               laion/CLIP-ViT-H-14-laion2B-s32B-b79K; exp(logit_scale) * cosine, as its authors compute it
    hpsv2      HPS v2.1 (Wu et al. 2023): open_clip's ViT-H-14 fine-tuned on human preferences, converted once to a
               CLIPModel folder (`python -m sdkit.scoring.convert hpsv2 HPS_v2.1_compressed.pt`); the cosine
    toy-reward the toy world's reward model (`sdkit.toy.reward`): its CLIP fine-tuned on the pixel checker's
               judgements of generated candidates, shipped in sdkit/toy/fixture/reward; scored as PickScore
    aesthetic  LAION aesthetic predictor v2 (Schuhmann 2022): an MLP on L2-normalised CLIP ViT-L/14 image
               embeddings (`python -m sdkit.scoring.convert aesthetic sac+logos+ava1-l14-linearMSE.pth`);
               prompt-independent

The CLIP-based ones run on either backend (sdkit's Flax CLIP sharded over every local JAX device, or transformers'
PyTorch `CLIPModel`), cache text embeddings per prompt, and differ only by checkpoint, processor and `rule` (how a
cosine becomes (logits, shown score)). Ranking sorts by `Scores.logits`; `Scores.clip_score` is the number shown.
Adding a verifier: a function of the signature above, named in `VERIFIERS`. ImageReward is not here: it is BLIP
with its own BERT and checkpoint layout, not a transformers class (README, "Verifiers").
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import numpy as np

from sdkit.errors import ModelNotAvailable
from sdkit.results import Scores
from sdkit.scoring.base import BACKENDS, DEFAULT_CLIP, CLIPScorer, check_inputs, check_processor, clip_rule

PICKSCORE = "yuvalkirstain/PickScore_v1"
LAION_VIT_H = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"  # PickScore's processor; open_clip ViT-H-14's tokenizer/pixels
AESTHETIC_CLIP = "openai/clip-vit-large-patch14"  # the predictor was trained on this CLIP's image embeddings
AESTHETIC_LAYERS = (0, 2, 4, 6, 7)  # the Linear layers of its nn.Sequential (1, 3, 5 are Dropout)


def converted(name: str) -> Path:
    """Where `python -m sdkit.scoring.convert` writes a converted checkpoint, and the verifiers look for it."""
    from sdkit.models.cache import cache_root

    return cache_root() / "verifiers" / name


HPSV2 = "hpsv2.1"  # converted(HPSV2): a CLIPModel folder
AESTHETIC_HEAD = "aesthetic-v2-sac-logos-ava1-l14-linearMSE.safetensors"  # converted(AESTHETIC_HEAD)


def pickscore_rule(cosine, logit_scale):
    """PickScore: exp(logit_scale) * cosine, both ranked by and shown."""
    score = np.float32(logit_scale) * cosine
    return score, score


def hps_rule(cosine, logit_scale):
    """HPS v2: the cosine (what its authors return), shown x 100 (as their benchmark tables)."""
    return cosine, 100 * cosine


def clip_backend(backend: str, model, *, verifier: str, rule, processor=None, **kwargs) -> CLIPScorer:
    """A CLIP-based verifier on a backend; its processor is checked before any weights load."""
    from sdkit.load.hub import resolve_clip, resolve_processor

    if processor is None:  # the checkpoint's own: it must have one (PickScore_v1 is read with LAION's)
        check_processor(resolve_clip(model, kwargs.get("revision"), kwargs.get("cache_dir")), verifier, str(model))
    else:
        check_processor(resolve_processor(processor), verifier, str(model))
    module, cls = BACKENDS[backend]
    return getattr(importlib.import_module(module), cls)(model, verifier=verifier, rule=rule, processor=processor,
                                                         **kwargs)


def clip(backend: str = "flax", model=DEFAULT_CLIP, **kwargs) -> CLIPScorer:
    """CLIP score (Hessel et al. 2021, "CLIPScore"): logits exp(logit_scale) * cosine, shown max(100 * cosine, 0)."""
    return clip_backend(backend, model, verifier="clip", rule=clip_rule, **kwargs)


def pickscore(backend: str = "flax", model=PICKSCORE, *, processor=LAION_VIT_H, **kwargs) -> CLIPScorer:
    """PickScore (Kirstain et al. 2023, "Pick-a-Pic"): a ViT-H/14 CLIPModel; exp(logit_scale) * cosine."""
    return clip_backend(backend, model, verifier="pickscore", rule=pickscore_rule, processor=processor, **kwargs)


def hpsv2(backend: str = "flax", model=None, *, processor=LAION_VIT_H, **kwargs) -> CLIPScorer:
    """HPS v2.1 (Wu et al. 2023, "Human Preference Score v2"): the cosine of its open_clip ViT-H-14, converted."""
    if model is None:
        model = converted(HPSV2)
        if not (model / "config.json").exists():
            raise ModelNotAvailable(f"hpsv2: no converted HPS v2.1 at {model}. Download HPS_v2.1_compressed.pt "
                                    "(Hub: xswu/HPSv2) and run `python -m sdkit.scoring.convert hpsv2 "
                                    "HPS_v2.1_compressed.pt` once, or pass model= a converted folder")
    return clip_backend(backend, str(model), verifier="hpsv2", rule=hps_rule, processor=processor, **kwargs)


def toy_reward(backend: str = "flax", model=None, **kwargs) -> CLIPScorer:
    """The toy world's reward model (`sdkit.toy.reward`; default the shipped one): exp(logit_scale) * cosine."""
    if model is None:
        from sdkit.toy import shipped_reward_path

        model = shipped_reward_path()
    return clip_backend(backend, str(model), verifier="toy-reward", rule=pickscore_rule, **kwargs)


def aesthetic(backend: str = "flax", model=AESTHETIC_CLIP, *, head=None, **kwargs) -> "AestheticScorer":
    """LAION aesthetic predictor v2 (Schuhmann 2022): its MLP on CLIP ViT-L/14's L2-normalised image embeddings.

    `head`: the predictor's safetensors (default: where `python -m sdkit.scoring.convert aesthetic` writes it).
    """
    config = clip_config(model)
    if config.get("model_type") != "clip" or "vision_config" not in config:
        raise ValueError(f"aesthetic scores images, but {str(model)!r} has no image tower (model_type "
                         f"{config.get('model_type')!r}); give a full CLIP (model_type 'clip', a CLIPModel), "
                         f"by default {AESTHETIC_CLIP}")
    head = Path(head) if head is not None else converted(AESTHETIC_HEAD)
    weights = read_aesthetic_head(head)
    width, projection = weights["layers.0.weight"].shape[1], config.get("projection_dim", 512)
    if width != projection:
        raise ValueError(f"aesthetic head {head.name} reads {width}-wide image embeddings, but CLIP {str(model)!r} "
                         f"gives {projection}; the LAION predictor v2 goes with {AESTHETIC_CLIP} (768)")
    return AestheticScorer(clip(backend, model, **kwargs), weights, head.name)


VERIFIERS = {"clip": clip, "pickscore": pickscore, "hpsv2": hpsv2, "aesthetic": aesthetic, "toy-reward": toy_reward}


class AestheticScorer:
    """Scores from a linear head on a CLIP's normalised image embeddings; prompts are checked, not read."""

    verifier = "aesthetic"
    takes_tensors = True

    def __init__(self, clip: CLIPScorer, head: dict[str, np.ndarray], head_name: str):
        self.clip, self.head, self.head_name = clip, head, head_name
        self.name, self.model_id = f"aesthetic-{clip.backend}", f"{clip.model_id}+{head_name}"

    def __call__(self, images, prompts) -> Scores:
        images, _ = check_inputs(images, prompts)
        score = aesthetic_mlp(self.head, self.clip.image_embeds(images))
        return Scores(logits=score, clip_score=score, scorer=f"{self.name}:{self.model_id}")


def aesthetic_mlp(head: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The predictor's nn.Sequential at eval (Dropout is the identity; it has no activations): (N, D) -> (N,)."""
    for i in AESTHETIC_LAYERS:
        x = x @ head[f"layers.{i}.weight"].T + head[f"layers.{i}.bias"]
    return x[:, 0].astype(np.float32)


def read_aesthetic_head(file) -> dict[str, np.ndarray]:
    """The predictor's weights from safetensors, checked: its five Linear layers, chained, one output."""
    from safetensors.numpy import load_file

    file = Path(file)
    if file.suffix != ".safetensors":
        raise ValueError(f"aesthetic head {file}: sdkit loads safetensors only; convert the .pth once with "
                         f"`python -m sdkit.scoring.convert aesthetic {file}`")
    if not file.exists():
        raise ModelNotAvailable(f"aesthetic: no head at {file}. Download sac+logos+ava1-l14-linearMSE.pth "
                                "(github.com/christophschuhmann/improved-aesthetic-predictor) and run `python -m "
                                "sdkit.scoring.convert aesthetic sac+logos+ava1-l14-linearMSE.pth` once, or pass head=")
    head = {k: v.astype(np.float32) for k, v in load_file(str(file)).items()}
    expected = {f"layers.{i}.{p}" for i in AESTHETIC_LAYERS for p in ("weight", "bias")}
    if set(head) != expected:
        raise ValueError(f"aesthetic head {file}: keys {sorted(head)[:6]} are not the LAION predictor v2's "
                         f"{sorted(expected)}")
    width = head["layers.0.weight"].shape[1]
    for i in AESTHETIC_LAYERS:
        w, b = head[f"layers.{i}.weight"], head[f"layers.{i}.bias"]
        if w.ndim != 2 or w.shape[1] != width or b.shape != (w.shape[0],):
            raise ValueError(f"aesthetic head {file}: layers.{i} is {w.shape} + {b.shape}, expected (out, {width})")
        width = w.shape[0]
    if width != 1:
        raise ValueError(f"aesthetic head {file}: gives {width} outputs, expected 1")
    return head


def clip_config(model) -> dict:
    """A checkpoint's config.json (a Hub id: that file alone), read before any weights are fetched."""
    from sdkit.load.hub import local_dir, looks_like_path, snapshot

    name = os.fspath(model)
    label = f"CLIP {name!r}"
    path = local_dir(name, label) if looks_like_path(name) else snapshot(name, label, allow_patterns=["config.json"])
    file = path / "config.json"
    if not file.exists():
        raise ModelNotAvailable(f"{name!r} is not a CLIP checkpoint: no config.json in {path}")
    return json.loads(file.read_text())
