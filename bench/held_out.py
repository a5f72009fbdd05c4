"""The held-out candidates that the verifier benchmarks (bench/hacking.py, bench/reward.py) rank: one loader, one cache.

For each seed base B, the 12 toy prompts are generated from seeds B .. B + groups * 8 - 1 (a set is one prompt's 8
consecutive seeds) with the pipeline bench/search.py uses (batch-invariant, as `load_pipeline` makes it on the CPU:
seed s is the same image in any batch) and judged by the pixel checker. The default bases, 2_000_000 and
3_000_000, were never used to train or tune anything. Cached per world, base and settings under
$SDKIT_CACHE/bench/held_out/ (1536 candidates take ~10 min on one core); the first run's generation time is
reported again when the cache is read.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

N = 8  # candidates per set: best-of-8, bench/search.py's baseline


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments that choose the candidates, the same in every benchmark that reads them."""
    p.add_argument("--world", type=Path, default=None, help="toy world folder (default: the shipped CI world)")
    p.add_argument("--bases", type=lambda t: [int(x) for x in t.split(",")], default=[2_000_000, 3_000_000],
                   help="seed bases (default 2000000,3000000: never used to train or tune anything)")
    p.add_argument("--groups", type=int, default=8, help="sets of 8 per prompt and base (default 8: 96 sets a base)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--fresh", action="store_true", help="regenerate the cached candidates")


def check_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.groups < 1 or args.steps < 1:
        p.error(f"--groups={args.groups}, --steps={args.steps}: both must be >= 1")
    if args.world is None:
        from sdkit.toy.world import toy_world_path

        args.world = toy_world_path("ci", log=None)


def candidates(args, base: int, clock: dict):
    """Base `base`'s candidates as a `sdkit.toy.reward.Labelled`, prompt-major, seeds ascending (cached)."""
    from sdkit.models.cache import cache_root
    from sdkit.toy.reward import Labelled, generate_labelled, load_toy_pipeline
    from sdkit.toy.world import content_hash

    key = f"{content_hash(args.world)[:12]}-{base}-{args.groups}x{N}-{args.steps}-{args.guidance:g}"
    path = cache_root() / "bench" / "held_out" / f"{key}.npz"
    timing = path.with_suffix(".json")
    if path.exists() and not args.fresh:
        clock[f"generate_{base}_s"] = json.loads(timing.read_text())["generate_s"]
        return Labelled.load(path)
    import torch

    torch.set_num_threads(1)  # per-candidate UNet calls this small gain nothing from a second thread
    t = time.perf_counter()
    data = generate_labelled(load_toy_pipeline(args.world, batch_invariant=True), range(base, base + args.groups * N),
                             num_inference_steps=args.steps, guidance_scale=args.guidance, batch_size=N,
                             log=lambda m: print(f"base {base}:{m}", file=sys.stderr, flush=True))
    clock[f"generate_{base}_s"] = time.perf_counter() - t
    path.parent.mkdir(parents=True, exist_ok=True)
    data.save(path.with_suffix(".tmp.npz"))
    timing.write_text(json.dumps({"generate_s": clock[f"generate_{base}_s"]}))
    path.with_suffix(".tmp.npz").rename(path)  # last: a cache entry is whole or absent
    return data


def score(data, scorers: dict, clock: dict) -> dict:
    """Each scorer's logits over every candidate, flat (the caller groups them into sets of N)."""
    import numpy as np
    from PIL import Image

    from sdkit.toy import shapes

    images = [Image.fromarray(im) for im in data.images]
    prompts = [shapes.PROMPTS[p] for p in data.prompt]
    out = {}
    for name, scorer in scorers.items():
        t = time.perf_counter()
        out[name] = np.asarray(scorer(images, prompts).logits, np.float64)
        clock[f"score_{name}_s"] = clock.get(f"score_{name}_s", 0) + time.perf_counter() - t
    return out


def set_labels(data) -> list[str]:
    """One label per set (prompt, group): what `sdkit.scoring.ensemble.combine_scores` combines within."""
    return [f"{p}/{i // N}" for i, p in enumerate(data.prompt)]
