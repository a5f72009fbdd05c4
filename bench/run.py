"""Run sdkit's benchmarks and write bench/results/latest.{json,md}.

    .venv/bin/python bench/run.py               # full run, SD 1.5-shaped random models (~10 min on 2 quiet cores)
    .venv/bin/python bench/run.py --smoke --out /tmp/b   # tiny models, seconds; checks the harness only
    .venv/bin/python bench/run.py --only dtype,memory    # a subset

Every figure is a ratio measured side by side in this run (see bench/timing.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script (`make bench`): make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "bench"

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ("overhead", "batching", "dtype", "scoring", "memory")


@dataclass(frozen=True)
class Config:
    """What each benchmark runs. Sizes are small and steps few so a full run takes minutes."""

    smoke: bool = False
    device: str = "auto"  # as load_pipeline: cuda > mps > cpu
    threads: int = 0  # torch CPU threads; 0 keeps torch's default (one per core), as users get
    big_model: str = "sd15"  # SD 1.5 shapes, random weights (bench/models.py); "tiny" in the smoke run
    reps: int = 3  # repetitions per ratio for the big model (each is seconds; the machine is shared)
    tiny_reps: int = 20  # the tiny model is fast: more repetitions resolve milliseconds
    # 1. overhead: a short generate call; sdkit's cost per call does not depend on the size.
    overhead_size: int = 128
    overhead_steps: int = 2
    overhead_n: int = 1
    overhead_batch: int = 1
    overhead_reps: int = 9  # a 1% target on ~2 s calls needs more repetitions than the other ratios
    # 2. batching: N candidates at 256^2, generate end to end.
    batching_size: int = 256
    batching_n: int = 2
    batching_steps: int = 2
    # 3. device defaults: one CFG step at SD 1.5's native 512^2; PSNR from a short run at 256^2.
    dtype_size: int = 512
    dtype_reps: int = 3
    psnr_size: int = 256
    psnr_steps: int = 8
    compile: bool = True  # the torch.compile variant (~2 min to compile on 2 cores); off in the smoke run
    all_variants: bool = False  # also the variants that were measured once and did not pay (bench/README.md)
    # ... and SDXL's UNet at its native 1024^2 (bench/models.py, 2.6B, ~1-2 min a step on 2 cores): diffusers' and
    # sdkit's defaults only, few repetitions. "" skips it (--no-xl): it needs ~14 GB of disk and ~17 GB of memory.
    xl_model: str = "sdxl"
    xl_size: int = 1024
    xl_reps: int = 2
    gemm_n: int = 4096
    gemm_flops: float = 3e11  # per timed GEMM case: ~0.3 s at this CPU's bf16 peak
    # 4. scoring: CLIP ViT-B/32 shapes, images per second.
    scoring_model: str = "b32"  # "tiny" in the smoke run
    scoring_images: int = 32
    scoring_batch: int = 16
    scoring_reps: int = 3
    # 5. memory: peak RSS of whole runs in fresh subprocesses, tiny UNet but full-size 512^2 images.
    memory_size: int = 512
    memory_ns: tuple[int, int] = (4, 32)
    memory_batch: int = 4
    memory_steps: int = 2
    memory_reps: int = 2  # RSS barely varies; two runs each show that it does not


# One thread in the smoke run: on a busy shared machine two OpenMP threads wait on each other for
# every one of the tiny model's hundreds of small ops (10-80x slower); the smoke run times nothing.
SMOKE = dict(smoke=True, threads=1, big_model="tiny", reps=2, tiny_reps=2, overhead_reps=2, overhead_size=64,
             batching_size=64, batching_n=2, batching_steps=1, dtype_size=64, dtype_reps=2, compile=False, psnr_size=64,
             xl_model="sdxl-tiny", xl_size=64,
             psnr_steps=2, gemm_n=256, gemm_flops=1e8,
             scoring_model="tiny", scoring_images=8, scoring_batch=4, scoring_reps=2, memory_size=64,
             memory_ns=(2, 4), memory_batch=2, memory_steps=1, memory_reps=1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny models and 2 repetitions: checks the harness, not speed")
    ap.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="where latest.{json,md} go")
    ap.add_argument("--reps", type=int, help="override the repetitions of every big-model ratio")
    ap.add_argument("--device", default="auto", help="torch device for the pipelines (default: as load_pipeline)")
    ap.add_argument("--no-compile", action="store_true", help="device defaults: skip the torch.compile variant")
    ap.add_argument("--all-variants", action="store_true", help="device defaults: also the variants that did not pay")
    ap.add_argument("--no-xl", action="store_true", help="device defaults: skip the SDXL step (~14 GB disk, ~17 GB RAM)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, i.e. one per core)")
    args = ap.parse_args(argv)
    wanted = [b.strip() for b in args.only.split(",") if b.strip()]
    bad = [b for b in wanted if b not in BENCHMARKS]
    if bad:
        ap.error(f"--only {','.join(bad)}: benchmarks are {','.join(BENCHMARKS)}")
    only = [b for b in BENCHMARKS if b in wanted]
    from sdkit.load.devices import resolve_device

    cfg = Config(**SMOKE) if args.smoke else Config()
    cfg = dataclasses.replace(cfg, device=resolve_device(args.device))
    if args.reps is not None:
        if args.reps < 1:
            ap.error(f"--reps {args.reps}: must be >= 1")
        cfg = dataclasses.replace(cfg, reps=args.reps, dtype_reps=args.reps, overhead_reps=args.reps, xl_reps=args.reps)
    if args.no_compile:
        cfg = dataclasses.replace(cfg, compile=False)
    if args.no_xl:
        cfg = dataclasses.replace(cfg, xl_model="")
    if args.all_variants:
        cfg = dataclasses.replace(cfg, all_variants=True)
    if args.threads is not None:
        cfg = dataclasses.replace(cfg, threads=args.threads)
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    warnings.filterwarnings("ignore", message=".*torchvision.*")
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()  # loading bars would bury the results
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    from . import machine, report

    result = {"smoke": cfg.smoke, "config": dataclasses.asdict(cfg), "machine": machine.describe(),
              "benchmarks": {}, "seconds": {}}
    import importlib

    for name in only:
        t0 = time.perf_counter()
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        result["benchmarks"][name] = importlib.import_module(f".{name}", __package__).run(cfg)
        result["seconds"][name] = round(time.perf_counter() - t0, 1)
        print(f"bench: {name} done in {result['seconds'][name]} s", file=sys.stderr, flush=True)
    js, md = report.write(result, args.out)
    # The README's table comes from full runs of every benchmark into bench/results, never a smoke run.
    if not cfg.smoke and only == list(BENCHMARKS) and args.out.resolve() == (ROOT / "bench" / "results").resolve():
        report.update_readme(ROOT / "README.md", result)
        print("updated the table in README.md", file=sys.stderr)
    print(md.read_text())
    print(f"wrote {js} and {md}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model here is built locally
    sys.exit(main())
