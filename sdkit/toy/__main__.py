"""Train the toy world from scratch, compare it with the shipped one, and print what reranking buys.

    python -m sdkit.toy                      # = make toy: trains the CI-sized world (~5 min on 2 cores),
                                             #   then says whether it matches the shipped world
    python -m sdkit.toy --shipped            # evaluate the shipped world only (no training)
    python -m sdkit.toy --size full --json bench/results/toy_quality.json
    python -m sdkit.toy --ship               # maintainers: train, evaluate, and replace sdkit/toy/fixture/
    python -m sdkit.toy reward --out DIR     # build the toy reward model (sdkit.toy.reward) from the shipped world
    python -m sdkit.toy reward --ship        # maintainers: build it and replace sdkit/toy/fixture/reward
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

FIGURES = ("adherence", "random_pick", "best_possible", "top1", "control")


def reward_main(argv) -> int:
    """`python -m sdkit.toy reward`: build (and with --ship, ship) the toy reward model."""
    import dataclasses

    from sdkit.toy.reward import RewardSettings

    d = RewardSettings()
    p = argparse.ArgumentParser(prog="python -m sdkit.toy reward", description="Build the toy reward model.")
    p.add_argument("--out", type=Path, help="write the model folder here")
    p.add_argument("--ship", action="store_true", help="write it to sdkit/toy/fixture/reward")
    p.add_argument("--world", type=Path, default=None, help="toy world folder (default: the shipped one)")
    p.add_argument("--seed", type=int, default=d.seed, help=f"first training seed (default {d.seed})")
    p.add_argument("--seeds-per-prompt", type=int, default=d.seeds_per_prompt)
    p.add_argument("--val-seeds", type=int, default=d.val_seeds)
    p.add_argument("--steps", type=int, default=d.steps, help=f"training steps (default {d.steps})")
    p.add_argument("--num-inference-steps", type=int, default=d.num_inference_steps)
    p.add_argument("--candidates", type=Path, default=None, metavar="NPZ",
                   help="the generated, checked training candidates: read if the file exists (it must hold exactly "
                        "the seeds asked for), else written once generated")
    args = p.parse_args(argv)
    if (args.out is None) == (not args.ship):
        p.error("give --out DIR or --ship (one of them)")
    from sdkit.toy import REWARD_DIR
    from sdkit.toy.reward import build_reward
    from sdkit.toy.world import FIXTURE

    settings = dataclasses.replace(d, seed=args.seed, seeds_per_prompt=args.seeds_per_prompt, val_seeds=args.val_seeds,
                                   steps=args.steps, num_inference_steps=args.num_inference_steps)
    out = FIXTURE / REWARD_DIR if args.ship else args.out
    info = build_reward(out, args.world, settings, candidates=args.candidates)
    print(f"wrote {out} (content sha256 {info['content_sha256'][:16]}..., {info['times']})")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["reward"]:
        return reward_main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m sdkit.toy", description=__doc__.splitlines()[0])
    p.add_argument("--size", default="ci", help="'ci' (minutes; the shipped world's size) or 'full' (the README's figures)")
    p.add_argument("--shipped", action="store_true", help="evaluate the shipped world, do not train")
    p.add_argument("--ship", action="store_true", help="replace the shipped world (sdkit/toy/fixture) with this training")
    p.add_argument("-n", type=int, default=8, help="candidates per set (default 8)")
    p.add_argument("--groups", type=int, default=8, help="sets per prompt (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=20, help="DDIM steps (default 20)")
    p.add_argument("--guidance", type=float, default=2.0, help="guidance scale (default 2)")
    p.add_argument("--scorers", default="torch,flax", help="comma-separated CLIP backends (default torch,flax)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--train-only", action="store_true", help="build the world, skip the evaluation")
    args = p.parse_args(argv)
    if args.shipped and (args.ship or args.size != "ci"):
        p.error("--shipped evaluates the shipped CI world; it goes with neither --ship nor --size")

    from sdkit.toy.world import FIXTURE, load_world_info, ship_world, shipped_world_path, toy_world_path

    shipped = shipped_world_path()
    shipped_info = json.loads((shipped / "SHIPPED.json").read_text()) if shipped else None
    if args.shipped:
        if shipped is None:
            p.error(f"this copy of sdkit has no shipped toy world ({FIXTURE} is missing)")
        world = shipped
    else:
        world = toy_world_path(args.size, train=True)
    info = load_world_info(world)
    t = info["times"]
    print(f"toy world: {world}\n  trained in {t['total_s']:.0f}s (vae {t['vae_s']:.0f}s, clip {t['clip_s']:.0f}s, "
          f"unet {t['unet_s']:.0f}s); CLIP zero-shot {info['clip_zero_shot']:.3f} on held-out shapes")

    same = None
    if args.size == "ci" and not args.shipped and shipped_info:
        # Compare as shipped: the fresh weights stored the way the fixture stores them.
        with tempfile.TemporaryDirectory() as tmp:
            same = ship_world(world, Path(tmp) / "w")["content_sha256"] == shipped_info["content_sha256"]
        where = shipped_info["trained_on"]
        print("  matches the shipped world bit for bit" if same else
              f"  differs from the shipped world (trained on {where['cpu']}, {where['threads']} thread(s), "
              f"torch {where['torch']}): training runs in bf16, whose kernels differ between CPUs; figures below")
    if args.train_only:
        return 0

    from sdkit.toy.adherence import evaluate

    q = evaluate(world, n=args.n, groups=args.groups, seed=args.seed, num_inference_steps=args.steps,
                 guidance_scale=args.guidance, scorers=[s for s in args.scorers.split(",") if s])
    print(q.table())
    figures = {k: getattr(q, k) for k in FIGURES}
    if same is False and shipped_info.get("figures"):
        print("  this build vs the shipped world:")
        for k in FIGURES:
            print(f"    {k:<14} {_fmt(figures[k]):<32} shipped {_fmt(shipped_info['figures'].get(k))}")
    if args.ship:
        shipped_info = ship_world(world, FIXTURE, figures=figures)
        print(f"shipped {world} -> {FIXTURE} (content sha256 {shipped_info['content_sha256'][:16]}...)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"quality": q.to_dict(), "world": info}, indent=2))
        print(f"wrote {args.json}")
    return 0


def _fmt(v) -> str:
    if isinstance(v, dict):
        return " ".join(f"{k} {x:.3f}" for k, x in v.items())
    return "-" if v is None else f"{v:.3f}"


if __name__ == "__main__":
    sys.exit(main())
