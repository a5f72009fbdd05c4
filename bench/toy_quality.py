"""What CLIP reranking buys, in the toy shapes world: a table over sizes and guidance scales.

    .venv/bin/python bench/toy_quality.py                          # the CI world, guidance 1 and 2
    .venv/bin/python bench/toy_quality.py --size ci,full --guidance 1,2,4 --groups 8

Trains each world on first use (cached, minutes), then for every guidance scale generates
12 prompts x groups x n candidates with sdkit's `generate`, checks each image with the pixel
checker, and reranks with both CLIP scorers (see `sdkit.toy.adherence`). Writes
bench/results/toy_quality.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `sdkit` importable from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sdkit.toy.adherence import evaluate  # noqa: E402
from sdkit.toy.world import load_world_info, toy_world_path  # noqa: E402

from bench.report import write_results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def markdown(rows: list[dict]) -> str:
    scorers = list(rows[0]["quality"]["top1"]) if rows else []
    head = (["world", "train s", "guidance", "mean", "random pick"] + [f"top-1 {s}" for s in scorers]
            + [f"control {s}" for s in scorers] + ["best possible"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        q = r["quality"]
        cells = [r["size"], f"{r['world']['times']['total_s']:.0f}", f"{q['guidance_scale']:g}", f"{q['adherence']:.3f}",
                 f"{q['random_pick']:.3f} ± {q['random_pick_sd']:.3f}"]
        cells += [f"{q['top1'][s]:.3f}" for s in scorers] + [f"{q['control'][s]:.3f}" for s in scorers]
        cells.append(f"{q['best_possible']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    q = rows[0]["quality"] if rows else {}
    note = (f"\n{q.get('n')} candidates per set, {q.get('groups')} sets per prompt, 12 prompts, "
            f"{q.get('num_inference_steps')} DDIM steps, seeds from {q.get('seed')}. Adherence = fraction whose "
            "pixel-checked shape and colour match the prompt.\n") if rows else ""
    return "\n".join(lines) + "\n" + note


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="ci", help="comma-separated world sizes (ci, full)")
    p.add_argument("--guidance", default="1,2", help="comma-separated guidance scales")
    p.add_argument("-n", type=int, default=8)
    p.add_argument("--groups", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scorers", default="torch,flax")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "toy_quality")
    args = p.parse_args(argv)

    rows = []
    for size in args.size.split(","):
        world = toy_world_path(size)
        info = load_world_info(world)
        for g in (float(x) for x in args.guidance.split(",")):
            t = time.perf_counter()
            q = evaluate(world, n=args.n, groups=args.groups, seed=args.seed, num_inference_steps=args.steps,
                         guidance_scale=g, scorers=args.scorers.split(","), log=None)
            print(q.table(), f"\n  ({time.perf_counter() - t:.0f}s)\n", flush=True)
            rows.append({"size": size, "quality": q.to_dict(), "world": info})
    write_results(args.out, rows, markdown(rows), indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
