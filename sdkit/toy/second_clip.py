"""A second toy CLIP: the world's CLIP recipe trained again from another seed (or at another size), so a benchmark
can rank by one verifier and measure the other (bench/hacking.py). Trained on first use (about a minute on one
core) and cached under `<cache>/toy/clip-<key>/`, keyed by its settings, the world's tensors and the training code:

    from sdkit.toy.second_clip import second_clip_path
    scorer = load_scorer("clip", str(second_clip_path()))          # the shipped world's CLIP: <world>/clip

Same data recipe as the world's CLIP (`sdkit.toy.world._build`): a pool of `pool_size` rendered shapes, a quarter as
many junk images, and VAE reconstructions of the first `recon_pool` of each, made with the world's own VAE (the one
that decodes the images this CLIP will judge). The seed draws everything that is drawn: the pool, the junk, the
reconstruction noise, the initial weights and the batches. (The world's CLIP also gave the pipeline its text
encoder; this one shares nothing with the pipeline but the VAE whose reconstructions it sees.)
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from sdkit.models.cache import build_atomically, build_key, cache_root
from sdkit.quiet import quiet_hf
from sdkit.toy import shapes, train
from sdkit.toy.settings import ClipSettings


@dataclasses.dataclass(frozen=True)
class SecondClipSettings:
    seed: int = 1  # the world's CLIP is seed 0: another draw of the same recipe
    clip: ClipSettings | None = None  # None: the world's own CLIP settings (same size and steps)
    pool_size: int | None = None  # None: the world's (20 000); smaller only for tests


def resolved(world: Path, s: SecondClipSettings) -> tuple[SecondClipSettings, dict]:
    """`s` with the world's CLIP settings and pool size filled in, and the world's settings."""
    from sdkit.toy.world import load_world_info

    ws = load_world_info(world)["settings"]
    s = dataclasses.replace(s, clip=s.clip or ClipSettings(**ws["clip"]), pool_size=s.pool_size or ws["pool_size"])
    if s.seed == ws["seed"] and s.clip == ClipSettings(**ws["clip"]) and s.pool_size == ws["pool_size"]:
        raise ValueError(f"SecondClipSettings(seed={s.seed}) with the world's CLIP settings would retrain the world's "
                         "own CLIP; give another seed or other ClipSettings")
    return s, ws


def second_clip_key(world: Path, s: SecondClipSettings) -> str:
    from sdkit.toy import junk
    from sdkit.toy.world import content_hash

    return build_key([sys.modules[__name__], train, shapes, junk], s, content_hash(world))


def second_clip_path(world: str | Path | None = None, settings: SecondClipSettings = SecondClipSettings(),
                     log=None) -> Path:
    """The second CLIP's folder (a CLIPModel checkpoint, tokenizer and preprocessor, as `<world>/clip`), built once."""
    from sdkit.toy.world import toy_world_path

    world = Path(world) if world is not None else toy_world_path("ci", log=log)
    s, _ = resolved(world, settings)
    final = cache_root() / "toy" / f"clip-seed{s.seed}-{second_clip_key(world, s)}"

    def build(tmp: Path) -> None:
        if log:
            log(f"sdkit.toy: training a second toy CLIP (seed {s.seed}) into {final} (once per machine)")
        build_second_clip(tmp, world, s, log=log)

    return build_atomically(final, build)


def build_second_clip(out: str | Path, world: str | Path, s: SecondClipSettings = SecondClipSettings(),
                      log=None) -> dict:
    """Train the CLIP of `s` on the world's data recipe and save it to `out` with `<world>/clip`'s tokenizer and
    preprocessor."""
    s, ws = resolved(Path(world), s)
    threads = torch.get_num_threads()
    torch.set_num_threads(ws["threads"])  # the world's count: weights are bit-identical for a fixed count
    try:
        with quiet_hf(messages=True):  # our own progress lines, not "Writing model shards" bars
            return _build(Path(out), Path(world), s, ws, log)
    finally:
        torch.set_num_threads(threads)


def _build(out: Path, world: Path, s: SecondClipSettings, ws: dict, log) -> dict:
    from diffusers import AutoencoderKL
    from transformers import CLIPImageProcessor, CLIPTokenizer

    from sdkit.toy.junk import junk
    from sdkit.toy.world import check_tokenizer

    t0 = time.perf_counter()
    tokenizer = CLIPTokenizer.from_pretrained(world / "clip")
    check_tokenizer(tokenizer)
    images, labels, _ = shapes.sample(s.pool_size, seed=s.seed)
    pool, labels = train.to_tensor(images), torch.from_numpy(labels)
    junk_pool = train.to_tensor(junk(s.pool_size // 4, seed=s.seed + 1)[0])
    recon = None
    if s.clip.recon_fraction > 0:
        vae = AutoencoderKL.from_pretrained(world / "pipeline" / "vae", use_safetensors=True).eval()
        k, bf16 = s.clip.recon_pool, ws["vae"]["bf16"]
        recon = (train.reconstruct(vae, pool[:k], seed=s.seed, bf16=bf16), labels[:k])
        junk_pool = torch.cat([junk_pool, train.reconstruct(vae, junk_pool[:k // 4], seed=s.seed + 1, bf16=bf16)])
    clip = train.train_clip(s.clip, tokenizer, pool, labels, junk_pool, seed=s.seed, recon=recon, log=log)
    held_images, held_labels, _ = shapes.sample(2000, seed=s.seed + 10_000)
    zero_shot = train.zero_shot_accuracy(clip, tokenizer, held_images, held_labels)
    clip.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    CLIPImageProcessor.from_pretrained(world / "clip").save_pretrained(out)
    info = {"settings": dataclasses.asdict(s), "world": str(world), "world_settings": ws,
            "train_s": round(time.perf_counter() - t0, 1), "clip_zero_shot": zero_shot,
            "clip_parameters": sum(p.numel() for p in clip.parameters()), "torch": torch.__version__}
    (out / "second_clip.json").write_text(json.dumps(info, indent=1))
    if log:
        log(f"  second clip: zero-shot accuracy {zero_shot:.3f} on 2000 held-out images, {info['train_s']:.0f}s")
    return info
