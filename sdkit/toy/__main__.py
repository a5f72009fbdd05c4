"""Train the toy world (cached) and print what reranking buys.

    python -m sdkit.toy                      # the CI-sized world, ~5 min on 2 cores the first time
    python -m sdkit.toy --size full --json bench/results/toy_quality.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sdkit.toy", description=__doc__.splitlines()[0])
    p.add_argument("--size", default="ci", help="'ci' (minutes) or 'full' (the README's figures)")
    p.add_argument("-n", type=int, default=8, help="candidates per set (default 8)")
    p.add_argument("--groups", type=int, default=8, help="sets per prompt (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    p.add_argument("--guidance", type=float, default=2.0, help="guidance scale (default 2)")
    p.add_argument("--scorers", default="torch,flax", help="comma-separated CLIP backends (default torch,flax)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--train-only", action="store_true", help="build the world, skip the evaluation")
    args = p.parse_args(argv)

    from .world import load_world_info, toy_world_path

    world = toy_world_path(args.size)
    info = load_world_info(world)
    t = info["times"]
    print(f"toy world: {world}\n  trained in {t['total_s']:.0f}s (vae {t['vae_s']:.0f}s, clip {t['clip_s']:.0f}s, "
          f"unet {t['unet_s']:.0f}s); CLIP zero-shot {info['clip_zero_shot']:.3f} on held-out shapes")
    if args.train_only:
        return 0

    from .evaluate import evaluate

    q = evaluate(world, n=args.n, groups=args.groups, seed=args.seed, num_inference_steps=args.steps,
                 guidance_scale=args.guidance, scorers=[s for s in args.scorers.split(",") if s])
    print(q.table())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"quality": q.to_dict(), "world": info}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
