"""The `generate` subcommand: N candidates per prompt, saved with metadata (then scored and ranked)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sdkit.checks import read_prompt_file
from sdkit.cli.search import (ONE_BATCH, add_scorer_args, add_search_args, checked_search, cli_scorer, compute_line,
                              run_search)


def add_common_args(p: argparse.ArgumentParser) -> None:
    """Arguments every generating subcommand shares (diffusers' names, dashed)."""
    p.add_argument("-n", "--n", type=int, default=4, help="candidates per prompt (default 4)")
    p.add_argument("--seed", type=int, default=None, help="base seed: candidate k gets seed+k (default: random, recorded)")
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=None, help="explicit seeds, comma-separated, one per candidate")
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--steps", dest="num_inference_steps", type=int, default=30, help="num_inference_steps (default 30)")
    p.add_argument("--guidance", dest="guidance_scale", type=float, default=7.5, help="guidance_scale (default 7.5)")
    p.add_argument("--height", type=int, default=None, help="default: the model's native size")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--model", default="sdkit:tiny",
                   help="Hub id, local folder, or built-in 'sdkit:tiny' / 'sdkit:toy' (default: sdkit:tiny, random weights)")
    p.add_argument("--vae", default=None, help="another VAE (Hub id or folder), e.g. madebyollin/sdxl-vae-fp16-fix for SDXL in fp16")
    p.add_argument("--config", default=None, metavar="FOLDER",
                   help="for a single-file checkpoint (--model x.safetensors): the diffusers folder or Hub id with its configs")
    p.add_argument("--scheduler", default=None, help="DDIM, PNDM, Euler, 'Euler a', Heun, 'DPM++ 2M', 'DPM++ 2M Karras', UniPC")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", help="auto (fp16 on GPUs; bf16 on CPUs with native bf16 for UNets of 100M+ parameters; else fp32), fp16, bf16, fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet: minutes to compile, then faster steps")
    p.add_argument("--no-safety-checker", action="store_true", help="remove the NSFW safety checker (explicit opt-out)")
    p.add_argument("--low-memory", action="store_true", help="attention/VAE slicing, VAE tiling, CPU offload (4-8 GB GPUs)")
    p.add_argument("--lora", action="append", default=[], metavar="PATH[:WEIGHT]",
                   help="a LoRA .safetensors file (diffusers or kohya/A1111 layout) and its weight (default 1); repeatable")
    p.add_argument("--lora-dir", default=None, metavar="FOLDER",
                   help="where a prompt's <lora:name:weight> tags find name.safetensors (default: $SDKIT_LORA_DIR)")
    p.add_argument("--embedding", action="append", default=[], metavar="PATH",
                   help="a textual-inversion .safetensors file (A1111, diffusers or SDXL layout), used in prompts by its "
                        "token (A1111's: the file name); repeatable")
    p.add_argument("--out", default="outputs", help="output folder; each run gets a subfolder (default outputs/)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_scorer_args(p, default="flax")
    p.add_argument("--clip-model", default=None,
                   help="CLIP id or folder (default: openai/clip-vit-base-patch32; the matching CLIP for sdkit:tiny/toy)")


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="text-to-image: N seeded candidates per prompt")
    p.add_argument("prompt", nargs="*", help="one or more prompts")
    p.add_argument("--prompts-file", type=Path, default=None, help="a file with one prompt per line")
    p.add_argument("--resume", metavar="FOLDER", type=Path, default=None,
                   help="finish a killed or stopped run in its folder, with its recorded settings (prompts, seeds, "
                        "model...); options that differ from them are refused")
    add_common_args(p)
    p.add_argument("--refiner", default=None, help="SDXL: a refiner (Hub id, folder or file) that finishes each candidate")
    p.add_argument("--denoising-end", type=float, default=None,
                   help="SDXL with --refiner: the fraction of the steps the base runs before handing over (default 0.8)")
    add_search_args(p)
    p.set_defaults(func=run)


def read_prompts(args) -> list[str]:
    prompts = list(args.prompt)
    if args.prompts_file is not None:
        prompts += read_prompt_file(args.prompts_file)
    if not prompts:
        raise ValueError("no prompt given: pass prompts as arguments or --prompts-file FILE")
    return prompts


def parse_loras(values) -> dict[str, float] | None:
    """--lora PATH[:WEIGHT] values as load_pipeline's `loras` (a path may hold colons: the weight is the last part)."""
    loras = {}
    for value in values or ():
        path, weight = value, 1.0
        head, sep, tail = value.rpartition(":")
        if sep:
            try:
                path, weight = head, float(tail)
            except ValueError:
                pass  # the colon is the path's own (C:\\...)
        loras[path] = weight
    return loras or None


def pipeline_from_args(args, task: str, **kwargs):
    from sdkit.load.pipeline import load_pipeline

    if getattr(args, "search", None) in ONE_BATCH:
        # Pruning mid-way leaves survivors untouched only with the batch-invariant UNet (off on GPUs by default).
        kwargs.setdefault("batch_invariant", True)
    return load_pipeline(args.model, task, device=args.device, dtype=args.dtype, scheduler=args.scheduler,
                         safety_checker=not args.no_safety_checker, low_memory=args.low_memory, compile=args.compile,
                         vae=args.vae, config=args.config, loras=parse_loras(args.lora),
                         embeddings=list(args.embedding) or None, lora_dir=args.lora_dir, **kwargs)


def check_refiner_args(args) -> float | None:
    """`--refiner` / `--denoising-end` checked before any model loads: the hand-off point, or None without one."""
    refiner, end = getattr(args, "refiner", None), getattr(args, "denoising_end", None)
    if refiner is None:
        if end is not None:
            raise ValueError(f"--denoising-end {end}: only with --refiner (the base hands over to it at that point)")
        return None
    end = 0.8 if end is None else end
    if not 0 < end < 1:
        raise ValueError(f"--denoising-end {end}: must be between 0 and 1 (the fraction of steps the base runs)")
    if getattr(args, "search", None) is not None:
        raise ValueError("--refiner with --search: a search ranks the base's candidates; refine its winner from "
                         "Python (sdkit.generate(..., seeds=[winner's seed], refiner=..., denoising_end=...))")
    return end


def generate_kwargs(args) -> dict:
    return dict(n=args.n, seed=args.seed, seeds=args.seeds, negative_prompt=args.negative_prompt,
                num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale,
                height=args.height, width=args.width, batch_size=args.batch_size, progress=not args.quiet)


def finish(run, args) -> int:
    """Score, rank and draw the grid (unless --scorer none), report; exit 130 if interrupted (finished images are kept)."""
    search = getattr(run, "search", None)
    if (args.scorer != "none" or search is not None) and len(run):
        from sdkit.ranking import rerank
        from sdkit.results import format_members, score_label
        from sdkit.show.grid import save_ranked_grid

        # A search has scored and ranked its candidates (and recorded the scores) already.
        ranked = search.ranked if search is not None else rerank(run, cli_scorer(args), clip_model=args.clip_model)
        grid = save_ranked_grid(ranked, run.output_dir)
        what = score_label(ranked[0].candidate.scorer)
        how = "100 x cosine, " if what == "CLIP score" else ""
        print(f"ranked by {what} ({how}{ranked[0].candidate.scorer}):")
        for r in ranked:
            c = r.candidate
            members = format_members(c.members)
            print(f"  #{r.rank}  score={r.score:6.2f}  logit={r.logit:7.3f}  seed={c.seed}  {Path(c.path).name}  {c.prompt!r}"
                  + (f"  ({members})" if members else "") + ("  [NSFW-flagged]" if c.nsfw else ""))
        print(f"ranked grid: {grid}")
    else:
        for c in run.candidates:
            print(f"{Path(c.path).name if c.path else '-'}  seed={c.seed}  {c.prompt!r}" + ("  [NSFW-flagged]" if c.nsfw else ""))
    print(f"{len(run)} images in {run.output_dir} (manifest: {run.manifest})")
    if search is not None:
        from sdkit.checks import count_steps

        strength = getattr(args, "strength", None)  # the edit commands'
        print(compute_line(run, args.n, count_steps(args.num_inference_steps, {"strength": strength or 1.0})))
    return 130 if run.cancelled else 0


def find_run(folder: Path) -> tuple[Path, dict]:
    """The run folder (or its `<run_id>.run.json`) given to --resume, and the settings recorded there."""
    from sdkit.runs import read_run_settings

    folder = Path(folder)
    if folder.is_file() and folder.name.endswith(".run.json"):
        files, folder = [folder], folder.parent
    elif folder.is_dir():
        files = sorted(folder.glob("*.run.json"))
    else:
        raise FileNotFoundError(f"--resume {folder}: no such folder")
    if len(files) != 1:
        raise ValueError(f"--resume {folder}: " + (
            "no sdkit run here (no <run_id>.run.json: not a run folder, or made before sdkit recorded runs)" if not files else
            f"{len(files)} runs here ({', '.join(f.name for f in files)}); give the one to resume"))
    return folder, read_run_settings(folder, files[0].name[: -len(".run.json")])


def _check_explicit(args, rec: dict, folder: Path) -> None:
    """Refuse options given with --resume that differ from the recorded run, before any model is loaded."""
    explicit = getattr(args, "explicit", set())
    if "out" in explicit:
        raise ValueError(f"--out with --resume: a resumed run is finished in its own folder ({folder})")
    given = {}
    if {"prompt", "prompts_file"} & explicit:
        given["prompts"] = read_prompts(args)
    if "n" in explicit:
        given["n"] = args.n
    n = args.n if "n" in explicit else rec["n"]
    if "seeds" in explicit:
        given["seeds"] = args.seeds
    elif "seed" in explicit:
        given["seeds"] = [args.seed + k for k in range(n)]
    if "negative_prompt" in explicit:
        given["negative_prompts"] = [args.negative_prompt] * len(rec["prompts"])
    for dest in ("num_inference_steps", "guidance_scale", "height", "width", "scheduler"):
        if dest in explicit:
            given[dest] = getattr(args, dest)
    if "model" in explicit:
        given["model_id"] = args.model
    if "lora" in explicit:
        given["loras"] = parse_loras(args.lora) or {}
        rec = {**rec, "loras": {x["path"]: x["weight"] for x in rec.get("loras") or ()}}
    diffs = [f"{k} was {rec.get(k)!r}, now {v!r}" for k, v in given.items() if rec.get(k) != v]
    if diffs:
        raise ValueError(f"--resume {folder}: run {rec['run_id']} was started with other settings: " + "; ".join(diffs) +
                         ". Leave these options out to take the recorded ones, or start a new run")


def resume(args) -> int:
    """`generate --resume FOLDER`: the recorded settings, checked against what the command line says."""
    from sdkit.checks import check_generate_args
    from sdkit.generation import generate
    from sdkit.load.schedulers import SCHEDULERS

    folder, rec = find_run(args.resume)
    if rec.get("task", "text-to-image") != "text-to-image":
        raise ValueError(f"--resume {folder}: run {rec['run_id']} is {rec['task']!r}; resume it from Python with "
                         "sdkit.img2img/inpaint and the same image (its init image and mask are recorded only as hashes)")
    _check_explicit(args, rec, folder)
    check_generate_args(n=rec["n"], seeds=rec["seeds"], num_inference_steps=rec["num_inference_steps"],
                        guidance_scale=rec["guidance_scale"], height=rec["height"], width=rec["width"],
                        batch_size=args.batch_size)
    from sdkit.load import embeddings
    from sdkit.load.loras import from_records
    from sdkit.load.pipeline import load_pipeline

    scheduler = rec["scheduler"] if rec["scheduler"] in SCHEDULERS else None  # else: the model's own
    extra = rec.get("extra") or {}
    vae = (extra.get("sdxl") or {}).get("vae", "own")
    pipe = load_pipeline(rec["model_id"], "text-to-image", device=args.device,
                         dtype=args.dtype if "dtype" in getattr(args, "explicit", set()) else rec["dtype"],
                         revision=rec.get("revision"), scheduler=scheduler, safety_checker=not args.no_safety_checker,
                         low_memory=args.low_memory, compile=args.compile, config=extra.get("config"),
                         loras=from_records(rec.get("loras")), embeddings=embeddings.from_records(rec.get("embeddings")),
                         lora_dir=args.lora_dir, vae=None if vae == "own" else vae)
    from sdkit.search.replay import recorded_refiner

    negs = rec["negative_prompts"]
    result = generate(pipe, rec["prompts"], n=rec["n"], seeds=rec["seeds"],
                      negative_prompt=None if all(x is None for x in negs) else negs,
                      num_inference_steps=rec["num_inference_steps"], guidance_scale=rec["guidance_scale"],
                      height=rec["height"], width=rec["width"], batch_size=args.batch_size, output_dir=folder,
                      run_id=rec["run_id"], progress=not args.quiet, extra=rec.get("extra") or None,
                      **recorded_refiner(rec, None))
    made = len(result) - result.resumed
    print(f"resumed run {rec['run_id']}: {result.resumed} kept, {made} made")
    if not made and any(folder.glob(f"{rec['run_id']}-grid*.png")):
        args.scorer = "none"  # complete and already ranked: make nothing, not even a second grid
    return finish(result, args)


def run(args) -> int:
    if getattr(args, "resume", None) is not None:
        if getattr(args, "search", None) is not None:
            raise ValueError(f"--resume with --search: a search cannot be resumed (which candidates it keeps depends "
                             f"on all of them); start it again, or finish one of its pruned candidates from Python "
                             f"with sdkit.search.finish_pruned(pipe, {str(args.resume)!r}, seed=...)")
        return resume(args)
    from sdkit.checks import check_generate_args, check_output_dir
    from sdkit.generation import generate
    from sdkit.save import new_run_id
    from sdkit.load.schedulers import check_scheduler

    from sdkit.checks import as_prompt_list

    prompts = as_prompt_list(read_prompts(args))
    # Validate everything before loading a model: loading a real one takes minutes.
    check_generate_args(n=args.n, seeds=args.seeds, num_inference_steps=args.num_inference_steps,
                        guidance_scale=args.guidance_scale, height=args.height, width=args.width, batch_size=args.batch_size)
    check_scheduler(args.scheduler)
    settings = checked_search(args)
    end = check_refiner_args(args)
    run_id = new_run_id()
    out = check_output_dir(Path(args.out) / run_id)
    pipe = pipeline_from_args(args, "text-to-image")
    kwargs = dict(generate_kwargs(args), output_dir=out, run_id=run_id)
    if end is not None:
        from sdkit.load.pipeline import load_pipeline

        kwargs.update(denoising_end=end, refiner=load_pipeline(args.refiner, "image-to-image", device=args.device,
                                                               dtype=args.dtype, low_memory=args.low_memory))
    if settings is None:
        result = generate(pipe, prompts, **kwargs)
    else:  # a search: the strategy calls generate itself
        result = run_search(args, settings, pipe, prompts, **kwargs)
    return finish(result, args)
