"""The `sweep` subcommand: prompts × seeds × a parameter grid, here or on Ray, resumable.

    sdkit sweep "a red circle" "a blue square" -n 8 --model sdkit:toy --scorer torch \\
        --grid guidance_scale=2,4,7.5 --grid "scheduler=DDIM,Euler a" --steps 20 --out outputs
    sdkit sweep --prompts-file prompts.txt ... --ray                     # the same on a local Ray
    sdkit sweep --prompts-file prompts.txt ... --ray-address auto        # ... or on a running cluster
    sdkit sweep ... -n 16 --scorer torch --search successive_halving     # a search per prompt × grid point
    sdkit sweep ... --scorer clip:1,aesthetic:0.5 --lora style.safetensors:0.8   # verifiers; a LoRA on every worker

Images go to `OUT/<run id>/`, the run id being a fingerprint of the sweep: running the
same command again resumes it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sdkit.cli.search import add_scorer_args, add_search_args, search_settings

# How a --grid value is parsed; text values are taken whole (negative prompts contain commas).
_TYPES = {"guidance_scale": float, "num_inference_steps": int, "height": int, "width": int, "scheduler": str}


def add_parser(sub) -> None:
    p = sub.add_parser("sweep", help="prompts × seeds × parameter grid, locally or on Ray; resumable")
    p.add_argument("prompt", nargs="*", help="one or more prompts")
    p.add_argument("--prompts-file", type=Path, default=None, help="a file with one prompt per line")
    p.add_argument("-n", "--n", type=int, default=4, help="candidates per prompt and grid point (default 4): seed, seed+1, ...")
    p.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=None,
                   help="explicit seeds per prompt, comma-separated (overrides -n/--seed)")
    p.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2",
                   help="sweep a parameter (repeatable): guidance_scale, num_inference_steps, scheduler, height, "
                        "width (comma-separated values), negative_prompt (one value per --grid)")
    p.add_argument("--steps", dest="num_inference_steps", type=int, default=None, help="fixed num_inference_steps")
    p.add_argument("--guidance", dest="guidance_scale", type=float, default=None, help="fixed guidance_scale")
    p.add_argument("--scheduler", default=None, help="fixed scheduler (DDIM, 'Euler a', ...)")
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--model", default="sdkit:tiny", help="Hub id, local folder, or 'sdkit:tiny' / 'sdkit:toy'")
    add_scorer_args(p, default=None)
    p.add_argument("--lora", action="append", default=[], metavar="PATH[:WEIGHT]",
                   help="a LoRA .safetensors file (diffusers or kohya/A1111 layout) and its weight (default 1); repeatable")
    p.add_argument("--clip-model", default=None, help="the scorer's CLIP checkpoint (default: the one that belongs with --model)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--no-safety-checker", action="store_true")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per unit of work (default 4; with --search a unit is one whole search)")
    p.add_argument("--max-items", type=int, default=10_000, help="refuse bigger sweeps without --yes (default 10000)")
    p.add_argument("--yes", action="store_true", help="run a sweep bigger than --max-items")
    p.add_argument("--name", default="sweep", help="prefix of the run id and file names")
    p.add_argument("--out", default="outputs", help="output folder; the sweep gets OUT/<run id>/ (default outputs/)")
    p.add_argument("--ray", action="store_true", help="run on Ray (a local one unless --ray-address)")
    p.add_argument("--ray-address", default=None, help="join a Ray cluster: 'auto' or 'ray://head:10001' (implies --ray)")
    p.add_argument("--workers", type=int, default=None, help="Ray actors (default: one per GPU, else 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_search_args(p)
    p.set_defaults(func=run)


def parse_grid(args) -> dict:
    """--grid entries and the fixed-value flags, as a Sweep grid. Names are checked by Sweep."""
    grid: dict[str, list] = {}
    for entry in args.grid:
        name, sep, text = entry.partition("=")
        if not sep or not text:
            raise ValueError(f"--grid {entry!r}: expected NAME=VALUE[,VALUE...]")
        if name == "negative_prompt":
            values = [text]
        else:
            kind = _TYPES.get(name, str)
            try:
                values = [kind(v.strip()) for v in text.split(",")]
            except ValueError:
                raise ValueError(f"--grid {entry!r}: {name} takes {kind.__name__} values") from None
        grid.setdefault(name, []).extend(values)
    for name in ("num_inference_steps", "guidance_scale", "scheduler", "negative_prompt", "height", "width"):
        value = getattr(args, name)
        if value is not None:
            if name in grid:
                raise ValueError(f"{name} is given both as a fixed value and in --grid; pick one")
            grid[name] = value
    return grid


def run(args) -> int:
    from sdkit.cli.generate import parse_loras, read_prompts
    from sdkit.sweep.run import run_sweep
    from sdkit.sweep.spec import Sweep

    if args.scorer == "none":
        args.scorer = None
    if args.search is not None and args.scorer is None:
        raise ValueError(f"--search {args.search} without --scorer: a search ranks by a scorer; add --scorer flax "
                         "or --scorer torch (or verifiers, e.g. --scorer clip:1,aesthetic:0.5)")
    settings = search_settings(args)  # checked against --search; then against -n and the steps by Sweep
    if settings is not None:
        settings.pop("clip_model", None)  # the sweep's own --clip-model sets its scorer
    sweep = Sweep(read_prompts(args), n=args.n, seeds=args.seeds, seed=args.seed,
                  grid=parse_grid(args), model=args.model, scorer=args.scorer, clip_model=args.clip_model,
                  scorer_backend=args.scorer_backend, combine=args.combine, loras=parse_loras(args.lora),
                  device=args.device, dtype=args.dtype, safety_checker=not args.no_safety_checker,
                  max_items=args.max_items, confirm=args.yes, name=args.name, search=args.search,
                  search_kwargs=settings, **({} if args.batch_size is None else {"batch_size": args.batch_size}))
    ray = args.ray or args.ray_address is not None
    if args.workers is not None and not ray:
        raise ValueError("--workers is for Ray runs; add --ray")
    out = Path(args.out) / sweep.run_id
    print(f"sweep {sweep.run_id}: {len(sweep)} images in {out}")
    try:
        result = run_sweep(sweep, out, backend="ray" if ray else "local", ray_address=args.ray_address,
                           workers=args.workers, progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"stopped; finished images are kept in {out}; run the same command again to resume")
        return 130
    print(f"{result.generated} generated, {result.skipped} already done, {len(result.candidates)} of {result.total} "
          f"in {result.output_dir} (manifest: {result.manifest})")
    if sweep.search is not None:
        print(f"search {sweep.search}: {len(result.pruned)} of {result.total} seeds pruned (listed in the manifest)")
    if result.ranked:
        for r in (r for r in result.ranked if r.rank == 1):
            c = r.candidate
            print(f"best for {c.prompt!r}: {Path(c.path).name}  score={r.score:.2f}  seed={c.seed}  "
                  f"guidance_scale={c.guidance_scale:g}  steps={c.num_inference_steps}  scheduler={c.scheduler}")
    return 0
