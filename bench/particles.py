"""Particle resampling (FK steering) in the toy world: top-1 adherence at best-of-N's compute, paired with best-of-N.

    make bench-particles                                   # = .venv/bin/python bench/particles.py
    .venv/bin/python bench/particles.py --tune-groups 0 --report-groups 1 --steps 6 --out /tmp/p   # smoke, ~2 min

How it measures:

1. Every run is real: `sdkit.search.particle_resampling` and `best_of_n` on the CI toy world, 12 prompts
   at once, `--steps` Euler a steps (the stochastic sampler particles need), guidance 2. A set is one prompt and
   group g; its candidates have seeds `seed + g * 32 + k`, the seeds bench/search.py gives set (prompt, g), so
   every strategy sees the same seeds. The final pick of each set is judged by the pixel checker
   (`sdkit.toy.shapes.check`), never by CLIP.
2. Tune: on `--tune-groups` every `--lambdas` x `--schedules` setting runs with n=8; the best top-1 is chosen
   (ties: the cheaper schedule).
3. Report: on `--report-groups` (held out) the chosen setting with n=8 and n=4, best-of-4/8/16 with Euler a, and
   best-of-8 with DDIM (bench/search.py's baseline), with bootstrap 95% intervals and paired intervals against
   best-of-8 (Euler a) on the same sets. Wall times are the runs' own (two workers side by side: ratios only).
4. Fresh bases: the chosen setting, best-of-8/16 and the same schedule with the tiny previewer (at n=8 and at the
   most particles that fit best-of-8's modelled GPU time) again on `--report-bases`, seed bases nothing was tuned
   on (96 sets each), per base and pooled: the figure that holds, where one base's can carry the winner's curse.

Results are cached per run under $SDKIT_CACHE/bench/particles/ (a killed run resumes). Writes
bench/results/particles.{json,md}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make `sdkit` and `bench` importable from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import write_results  # noqa: E402
from bench.search import interval  # noqa: E402  (one bootstrap for every toy-world benchmark)

ROOT = Path(__file__).resolve().parent.parent
POOL = 32  # seeds per set in bench/search.py: set (prompt, g) starts at seed + g * POOL
_W: dict = {}


def _init(world: str, threads: int) -> None:
    import torch

    from sdkit.load.pipeline import load_pipeline
    from sdkit.scoring.scorers import scorer_for

    torch.set_num_threads(threads)
    _W["world"] = world
    base = load_pipeline(str(Path(world) / "pipeline"), device="cpu", dtype="fp32", safety_checker=False,
                         batch_invariant=True)
    _W["pipes"] = {"DDIM": base, "Euler a": load_pipeline(str(Path(world) / "pipeline"), device="cpu", dtype="fp32",
                                                          safety_checker=False, batch_invariant=True,
                                                          scheduler="Euler a")}
    _W["scorer"] = scorer_for("flax", "", str(Path(world) / "clip"))
    from sdkit.search import best_of_n
    from sdkit.toy import shapes

    for n in (4, 8, 16):  # compile the scorer for every batch shape first, so no run's wall time holds a compile
        best_of_n(_W["pipes"]["Euler a"], list(shapes.PROMPTS), _W["scorer"], n=n, seed=0, num_inference_steps=1,
                  progress=False)


def run_job(job: dict) -> dict:
    """One strategy on one group (12 sets): per set, whether the pick matches its prompt, and what it cost."""
    from sdkit.search import strategy_named
    from sdkit.toy import shapes

    pipe = _W["pipes"][job["scheduler"]]
    prompts = list(shapes.PROMPTS)
    kw = dict(n=job["n"], seed=job["seed"] + job["group"] * POOL, num_inference_steps=job["steps"],
              guidance_scale=job["guidance"], progress=False)
    if job["strategy"] == "particle_resampling":
        kw.update(resample_at=job["resample_at"], lambda_=job["lambda_"])
    if job["strategy"] == "successive_halving":
        kw.update(prune_at=job["prune_at"], keep=job["keep"])
    if job["strategy"] == "draft_then_finish":
        kw.update(draft_steps=job["draft_steps"], keep=job["keep"])
    if job.get("previewer") == "tiny":
        if "tiny" not in _W:  # the toy world's AutoencoderTiny, distilled once per machine (sdkit.toy.previewer)
            from sdkit.load.previewer import load_previewer
            from sdkit.toy.previewer import toy_previewer_path

            _W["tiny"] = load_previewer(toy_previewer_path(_W["world"]))
        kw["previewer"] = _W["tiny"]
    search = strategy_named(job["strategy"])(pipe, prompts, _W["scorer"], **kw).search
    best = {c.prompt: c for c in search.best}
    every = {p: [shapes.check(np.asarray(r.candidate.image)).matches(p) for r in search.ranked
                 if r.candidate.prompt == p] for p in prompts}
    c = search.compute
    return {"won": [bool(shapes.check(np.asarray(best[p].image)).matches(p)) for p in prompts],
            "any": [any(every[p]) for p in prompts], "mean": [float(np.mean(every[p])) for p in prompts],
            "copied": [sum(len(r.candidate.extra["search"].get("lineage", [0])) > 1 for r in search.ranked
                           if r.candidate.prompt == p) for p in prompts],
            "unet_evaluations": c.unet_evaluations / len(prompts), "preview_decodes": c.preview_decodes / len(prompts),
            "scored_images": c.scored_images / len(prompts), "wall_s": c.wall_s / len(prompts)}


def label_of(job: dict) -> str:
    tiny = ", tiny previewer" if job.get("previewer") == "tiny" else ""
    if job["strategy"] == "best_of_n":
        return f"best-of-{job['n']} ({job['scheduler']})"
    if job["strategy"] == "draft_then_finish":
        return f"draft-then-finish n={job['n']} draft_steps={job['draft_steps']} keep={job['keep']} ({job['scheduler']})"
    if job["strategy"] == "successive_halving":
        return (f"successive-halving n={job['n']} prune_at={tuple(job['prune_at'])} keep={tuple(job['keep'])} "
                f"({job['scheduler']}){tiny}")
    return f"particles n={job['n']} resample_at={tuple(job['resample_at'])} lambda={job['lambda_']:g}{tiny}"


def _cache_dir(args) -> Path:
    from sdkit.models.cache import cache_root
    from sdkit.toy.world import content_hash

    key = json.dumps([content_hash(args.world), args.steps, args.guidance, args.seed])
    return cache_root() / "bench" / "particles" / hashlib.sha256(key.encode()).hexdigest()[:12]


def run_all(jobs: list[dict], args) -> list[dict]:
    """Every job's result, from the cache or run in `--workers` processes (progress on stderr)."""
    cache = _cache_dir(args)
    cache.mkdir(parents=True, exist_ok=True)
    files = [cache / (hashlib.sha256(json.dumps(j, sort_keys=True).encode()).hexdigest()[:16] + ".json") for j in jobs]
    todo = [(j, f) for j, f in zip(jobs, files) if not f.exists()]
    print(f"{len(jobs) - len(todo)} of {len(jobs)} runs cached in {cache}; {len(todo)} to run", file=sys.stderr)
    if todo:
        start = time.perf_counter()
        ctx = multiprocessing.get_context("spawn")  # JAX and torch threads do not survive fork
        with ctx.Pool(args.workers, initializer=_init, initargs=(str(args.world), args.threads)) as pool:
            for k, (res, (j, f)) in enumerate(zip(pool.imap(run_job, [j for j, _ in todo]), todo), start=1):
                tmp = f.with_suffix(".tmp")
                tmp.write_text(json.dumps(res))
                os.replace(tmp, f)  # whole or absent: a killed run leaves no half result
                left = (time.perf_counter() - start) / k * (len(todo) - k)
                print(f"  {k}/{len(todo)} {label_of(j)} group {j['group']}: top-1 {np.mean(res['won']):.2f}; "
                      f"~{left / 60:.0f} min left", file=sys.stderr)
    return [{**j, **json.loads(f.read_text())} for j, f in zip(jobs, files)]


def summarise(results: list[dict], units: list[tuple[int, int]], rng) -> dict[str, dict]:
    """Per label over `units` ((seed base, group) pairs): top-1 with its interval, per-set wins (in unit order),
    mean counts and wall."""
    out: dict[str, dict] = {}
    for label in dict.fromkeys(label_of(r) for r in results):
        rows = sorted((r for r in results if label_of(r) == label and (r["seed"], r["group"]) in units),
                      key=lambda r: (r["seed"], r["group"]))
        if [(r["seed"], r["group"]) for r in rows] != sorted(units):
            continue
        won = np.array([w for r in rows for w in r["won"]], float)
        out[label] = {"label": label, **{k: rows[0][k] for k in ("strategy", "n", "scheduler")},
                      **{k: rows[0][k] for k in ("resample_at", "lambda_", "prune_at", "keep", "draft_steps", "previewer")
                         if k in rows[0]},
                      "sets": len(won), "top1": float(won.mean()), "ci": interval(won, rng), "_won": won,
                      "best_possible": float(np.mean([a for r in rows for a in r["any"]])),
                      "mean_adherence": float(np.mean([m for r in rows for m in r["mean"]])),
                      "copied_per_set": float(np.mean([c for r in rows for c in r["copied"]])),
                      **{k: float(np.mean([r[k] for r in rows])) for k in
                         ("unet_evaluations", "preview_decodes", "scored_images", "wall_s")},
                      "_wall": [r["wall_s"] for r in rows]}
    return out


def sparse(steps: int) -> list[int]:
    """Resampling after 10%, 25% and 50% of the steps: the first default, tuned against every 2 steps (the default
    since, `sdkit.search.default_resampling`) and reported beside the chosen setting with lambda 1."""
    return sorted({max(1, round(f * steps)) for f in (0.1, 0.25, 0.5)})


def gpu_budget_n(steps: int, resample_at: list[int]) -> int:
    """The most particles with a tiny previewer whose modelled GPU time (bench/gpu_model.py, 12 prompts sharing calls)
    stays within best-of-8's: fixed by cost alone, before any quality is seen."""
    from bench.gpu_model import Costs, seconds

    costs = Costs()
    budget = seconds({"strategy": "best_of_n", "n": 8}, steps=steps, prompts=12, costs=costs)
    fits = [n for n in range(2, 9) if seconds({"strategy": "particle_resampling", "n": n, "resample_at": resample_at,
                                               "previewer": "tiny"}, steps=steps, prompts=12, costs=costs) <= budget]
    return max(fits)


def on_fresh_bases(args, chosen: dict, fk, bon, rng) -> dict:
    """The chosen setting (and best-of-N beside it) on seed bases nobody tuned on: per base and pooled, each paired
    with best-of-8 (Euler a) on the same seeds. Also the chosen schedule with the tiny previewer, at n=8 and at the
    most particles that fit best-of-8's modelled GPU time."""
    at, lam = chosen["resample_at"], chosen["lambda_"]
    n_gpu = gpu_budget_n(args.steps, at)
    jobs, groups = [], list(range(args.base_groups))
    for b in args.report_bases:
        for g in groups:
            with_base = lambda job: {**job, "seed": b}  # noqa: E731
            jobs += [with_base(bon(8, "Euler a", g)), with_base(bon(16, "Euler a", g)), with_base(bon(8, "DDIM", g)),
                     with_base(fk(8, at, lam, g)), with_base({**fk(8, at, lam, g), "previewer": "tiny"}),
                     with_base({**fk(n_gpu, at, lam, g), "previewer": "tiny"})]
            if (at, lam) != (sparse(args.steps), 1.0):
                jobs.append(with_base(fk(8, sparse(args.steps), 1.0, g)))
    rows = paired(run_all(jobs, args), args.report_bases, groups, "best-of-8 (Euler a)", rng)
    return {"bases": args.report_bases, "groups": groups, "sets": rows["best-of-8 (Euler a)"]["sets"],
            "gpu_budget_n": n_gpu, "rows": [_public(r) for r in rows.values()]}


def paired(results: list[dict], bases: list[int], groups: list[int], baseline: str, rng) -> dict[str, dict]:
    """Per label over `groups` of every base in `bases`, pooled: `summarise`'s figures, the paired difference with
    `baseline` on the same seeds (with its interval), and each base's top-1 and difference (the spread across bases)."""
    units = {b: [(b, g) for g in groups] for b in bases}
    pooled = summarise(results, [u for us in units.values() for u in us], rng)
    per_base = {b: summarise(results, us, rng) for b, us in units.items()}
    out = {}
    for label, r in pooled.items():
        d = r["_won"] - pooled[baseline]["_won"]
        out[label] = {**r, "diff": float(d.mean()), "diff_ci": interval(d, rng),
                      "by_base": [{"base": b, "top1": per_base[b][label]["top1"],
                                   "diff": float(np.mean(per_base[b][label]["_won"] - per_base[b][baseline]["_won"]))}
                                  for b in bases]}
    return out


def quality_cells(r: dict) -> str:
    """A row's markdown cells: top-1 | 95% | vs best-of-8 (paired 95%) | per base: top-1, vs best-of-8."""
    per = "; ".join(f"{b['top1']:.3f}, {b['diff']:+.3f}" for b in r["by_base"])
    return (f"{r['top1']:.3f} | {r['ci'][0]:.3f}–{r['ci'][1]:.3f} | {r['diff']:+.3f} ({r['diff_ci'][0]:+.3f}…"
            f"{r['diff_ci'][1]:+.3f}) | {per}")


def markdown(res: dict) -> str:
    s = res["settings"]
    L = [f"# Particle resampling (FK steering) in the toy world ({s['steps']} Euler a steps, guidance {s['guidance']:g})",
         "", f"Machine: {res['machine']}. Settings chosen on groups {s['tune_groups']} ({res['tune_sets']} sets), "
         f"reported on groups {s['report_groups']} ({res['report_sets']} sets, held out). Every figure is from real "
         "runs; 95% intervals: bootstrap over sets, the paired one of the difference with best-of-8 (Euler a) on the "
         "same seeds. Wall: the runs' own seconds per prompt, two workers side by side.", "", "## Verdict", "",
         res["verdict"], "", "## Held-out sets", "",
         "| strategy | UNet evals / prompt | preview decodes | top-1 | 95% | vs best-of-8 Euler a (paired 95%) | "
         "best possible | particles copied / set | wall vs best-of-8, median (min–max over groups) |",
         "|---|---|---|---|---|---|---|---|---|"]
    for r in res["report"]:
        w = r["wall_ratio"]
        L.append(f"| {r['label']} | {r['unet_evaluations']:.0f} | {r['preview_decodes']:.0f} | {r['top1']:.3f} | "
                 f"{r['ci'][0]:.3f}–{r['ci'][1]:.3f} | {r['diff']:+.3f} ({r['diff_ci'][0]:+.3f}…{r['diff_ci'][1]:+.3f}) | "
                 f"{r['best_possible']:.3f} | {r['copied_per_set']:.1f} | {w[0]:.2f} ({w[1]:.2f}–{w[2]:.2f}) |")
    if res.get("fresh"):
        f = res["fresh"]
        L += ["", f"## On seed bases nobody tuned on ({', '.join(map(str, f['bases']))}; {f['sets']} sets)", "",
              f"The chosen setting and best-of-N again, on groups {f['groups'][0]}-{f['groups'][-1]} of each base "
              "(seeds base + g * 32 + k); per base: that base's top-1 and its difference with best-of-8 (Euler a), "
              "the spread across bases. Tiny previewer: the toy world's `AutoencoderTiny` (`sdkit:toy`); "
              f"n={f['gpu_budget_n']} is the most particles with it whose modelled GPU time (bench/gpu_model.py) "
              "fits best-of-8's, fixed by cost before any quality was seen.", "",
              "| strategy | UNet evals / prompt | preview decodes | top-1 | 95% | vs best-of-8 Euler a (paired 95%) | "
              "per base: top-1, vs best-of-8 |", "|---|---|---|---|---|---|---|"]
        L += [f"| {r['label']} | {r['unet_evaluations']:.0f} | {r['preview_decodes']:.0f} | {quality_cells(r)} |"
              for r in f["rows"]]
    L += ["", "## Tuning sets (n=8)", "", "| setting | top-1 | 95% | preview decodes |", "|---|---|---|---|"]
    L += [f"| {r['label']} | {r['top1']:.3f} | {r['ci'][0]:.3f}–{r['ci'][1]:.3f} | {r['preview_decodes']:.0f} |"
          for r in res["tune"]]
    return "\n".join(L) + "\n"


def _public(r: dict) -> dict:
    return {k: v for k, v in r.items() if not k.startswith("_")}


def main(argv=None) -> int:
    from bench.search import groups_of

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", type=Path, default=None, help="toy world folder (default: the shipped CI world)")
    p.add_argument("--tune-groups", type=groups_of, default=groups_of("0-3"))
    p.add_argument("--report-groups", type=groups_of, default=groups_of("4-11"))
    p.add_argument("--lambdas", type=lambda t: [float(x) for x in t.split(",")], default=[0.1, 0.3, 1.0, 3.0])
    p.add_argument("--schedules", type=lambda t: [[int(x) for x in part.split(",")] for part in t.split(";")],
                   default=None, help="resampling steps to try, ';' between schedules (default: after 10/25/50%% of "
                                      "the steps; and every 2 steps)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report-bases", type=lambda t: [int(x) for x in t.split(",") if x], default=[2_000_000, 3_000_000],
                   help="seed bases nobody tuned on, where the chosen setting is reported again (default 2000000,3000000, "
                        "bench/held_out.py's; '' for none)")
    p.add_argument("--base-groups", type=int, default=8,
                   help="groups 0..K-1 of each of --report-bases (default 8: 96 sets a base, as many as --report-groups)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "particles")
    args = p.parse_args(argv)
    if args.base_groups < 1:
        p.error(f"--base-groups={args.base_groups}: must be >= 1")
    if args.seed in args.report_bases:
        p.error(f"--report-bases {args.report_bases} holds --seed {args.seed}, the base settings are tuned on")
    if set(args.tune_groups) & set(args.report_groups):
        p.error(f"--tune-groups {args.tune_groups} and --report-groups {args.report_groups} overlap: report held-out sets")
    if args.steps < 4:
        p.error(f"--steps={args.steps}: must be >= 4")
    if args.world is None:
        from sdkit.toy.world import toy_world_path

        args.world = toy_world_path("ci", log=None)
    schedules = args.schedules or [sparse(args.steps), list(range(2, args.steps, 2))]
    common = dict(steps=args.steps, guidance=args.guidance, seed=args.seed)
    fk = lambda n, at, lam, g: dict(strategy="particle_resampling", scheduler="Euler a", n=n, resample_at=at,  # noqa: E731
                                    lambda_=lam, group=g, **common)
    bon = lambda n, sched, g: dict(strategy="best_of_n", scheduler=sched, n=n, group=g, **common)  # noqa: E731
    tune_jobs = [bon(8, "Euler a", g) for g in args.tune_groups]
    tune_jobs += [fk(8, at, lam, g) for at in schedules for lam in args.lambdas for g in args.tune_groups]
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    tune = summarise(run_all(tune_jobs, args), [(args.seed, g) for g in args.tune_groups], rng)
    settings = [r for r in tune.values() if r["strategy"] == "particle_resampling"]
    chosen = max(settings, key=lambda r: (r["top1"], -len(r["resample_at"])))
    report_jobs = [bon(n, "Euler a", g) for n in (4, 8, 16) for g in args.report_groups]
    report_jobs += [bon(8, "DDIM", g) for g in args.report_groups]
    report_jobs += [fk(n, chosen["resample_at"], chosen["lambda_"], g) for n in (4, 8) for g in args.report_groups]
    if (chosen["resample_at"], chosen["lambda_"]) != (sparse(args.steps), 1.0):  # what fewer looks buy
        report_jobs += [fk(8, sparse(args.steps), 1.0, g) for g in args.report_groups]
    report = summarise(run_all(report_jobs, args), [(args.seed, g) for g in args.report_groups], rng)
    base = report["best-of-8 (Euler a)"]
    for r in report.values():
        d = r["_won"] - base["_won"]
        r["diff"], r["diff_ci"] = float(d.mean()), interval(d, rng)
        w = np.array(r["_wall"]) / np.array(base["_wall"])
        r["wall_ratio"] = [float(np.median(w)), float(w.min()), float(w.max())]
    fresh = on_fresh_bases(args, chosen, fk, bon, rng) if args.report_bases else None
    fk8 = report[label_of(fk(8, chosen["resample_at"], chosen["lambda_"], 0))]
    verdict = (f"At best-of-8's UNet evaluations ({fk8['unet_evaluations']:.0f} per prompt, plus "
               f"{fk8['preview_decodes']:.0f} preview decodes) the tuned particles reach top-1 {fk8['top1']:.3f} against "
               f"best-of-8's {base['top1']:.3f} with the same sampler: {fk8['diff']:+.3f} "
               f"(paired 95% {fk8['diff_ci'][0]:+.3f}…{fk8['diff_ci'][1]:+.3f}). The +0.05 target is "
               + ("**met**" if fk8["diff"] >= 0.05 and fk8["diff_ci"][0] > 0 else
                  "met by the mean only (the interval includes 0)" if fk8["diff"] >= 0.05 else "**not met**") + ".")
    if fresh:
        f8 = next(r for r in fresh["rows"] if r["label"] == fk8["label"])
        verdict += (f" On {fresh['sets']} sets from seed bases nobody tuned on ({', '.join(map(str, fresh['bases']))}) "
                    f"the same setting gets {f8['top1']:.3f}: {f8['diff']:+.3f} (paired 95% {f8['diff_ci'][0]:+.3f}…"
                    f"{f8['diff_ci'][1]:+.3f}; per base " + ", ".join(f"{b['diff']:+.3f}" for b in f8["by_base"])
                    + "), so the target is " + ("**met** there" if f8["diff"] >= 0.05 and f8["diff_ci"][0] > 0 else
                                                "met by the mean only there" if f8["diff"] >= 0.05 else
                                                "**not met** there") + ".")
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    try:
        machine = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")) \
            + f", {os.cpu_count()} cores"
    except (OSError, StopIteration):
        pass
    res = {"settings": {**common, "tune_groups": args.tune_groups, "report_groups": args.report_groups,
                        "lambdas": args.lambdas, "schedules": schedules, "workers": args.workers,
                        "threads": args.threads, "world": str(args.world)},
           "machine": machine, "tune_sets": 12 * len(args.tune_groups), "report_sets": 12 * len(args.report_groups),
           "chosen": _public(chosen), "verdict": verdict, "wall_s": time.perf_counter() - start,
           "tune": [_public(r) for r in tune.values()], "report": [_public(r) for r in report.values()],
           **({"fresh": fresh} if fresh else {})}
    write_results(args.out, res, markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
