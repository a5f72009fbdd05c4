"""The GPU check: what sdkit's GPU defaults do on SD 1.5- and SDXL-shaped random models, in 8 minutes on one GPU.

    bench/gpu_check.sh OUT_DIR                          # a CUDA machine: installs a carried diffusers wheel if needed
    python bench/gpu_check.py --out DIR [--budget 420]  # the check itself
    python bench/gpu_check.py --dry-run --out DIR       # the same code on the CPU with sdkit's tiny models, seconds

Sections, in order (each guarded: a failure is recorded with its traceback and the rest still run; a
global time budget skips what no longer fits, saying so):

- models: builds the SD 1.5-shaped pipeline and a ViT-B/32 CLIP with random weights (bench/models.py).
- pipeline: sdkit's defaults (`load_pipeline`: fp16 + SDPA on CUDA) against a bare diffusers pipeline loaded
  from the same folder in the same dtype; per-image time at batch 1, 4 and 8, identical pixels, peak memory.
- scorer: the Flax scorer on the GPU in the same process as the pipeline: both fit, JAX's share of GPU
  memory (no 75% preallocation), scores against the CPU within 1e-3, images/s against the PyTorch scorer,
  PIL images against the pipeline's tensor handed over without a PIL round trip (DLPack for JAX).
- reproducibility: the same seed and batch size twice; each seed in batches of 1, 4 and 8, with the UNet
  batched and batch-invariant (`batch_invariant=`), pixel differences measured.
- search: each strategy's real wall time on the default (batched) pipeline against best-of-8, its UNet
  evaluations and previews (VAE and a TAESD-shaped `AutoencoderTiny`), and its modelled time (bench/gpu_model.py).
- replay: batched candidates, search survivors and particles made again from their metadata (their recorded
  rows), bit for bit; the time of one replay against its share of a batch.
- compile: `load_pipeline(compile=True)` against eager: first call (compilation), per-image time, pixels.
- sdxl: an SDXL-shaped random pipeline (real shapes, built on the GPU in fp16) at 1024², a few Euler steps:
  sdkit's defaults (fp16, the VAE decoding in fp32: force_upcast) against a bare `StableDiffusionXLPipeline`
  with the same generators, per-image time at batch 1 and 4, peak memory, pixels; one VAE decode in fp32 (the
  upcast) against fp16 (what an fp16-fix VAE runs). Last, under its own cap: it uses what the budget has left.

Writes DIR/gpu_check.json (every figure) and DIR/gpu_check.md (tables) after every section, so a run cut
short keeps what it measured. The dry run takes the same path on the CPU, sdkit:tiny and the tiny CLIP,
so that the script cannot rot between GPU runs (tests/test_bench.py runs it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "bench"

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a photograph of a red horse in a field"
SECTIONS = ("models", "pipeline", "scorer", "reproducibility", "search", "replay", "compile", "sdxl")
SCORE_TOLERANCE = 1e-3  # max |logit difference| allowed between the GPU and the CPU (the bound)


@dataclass(frozen=True)
class Plan:
    """What the check runs. GPU sizes are SD 1.5's; each section's `need_s` is its least time to start."""

    dry_run: bool = False
    device: str = "cuda"
    big_model: str = "sd15"  # bench/models.py names: "sd15" (SD 1.5 shapes, random) or "tiny"
    clip: str = "b32"  # "b32" (ViT-B/32 shapes, random) or "tiny"
    size: int = 512
    steps: int = 20
    batches: tuple[int, ...] = (1, 4, 8)
    reps: int = 3
    threads: int = 0  # torch CPU threads; 0 keeps torch's default
    score_images: int = 64
    score_reps: int = 3
    repro_seeds: int = 8
    compile_batch: int = 4
    compile: bool = True
    # sdxl: bench/models.py's SDXL shapes ("sdxl-tiny" in the dry run) at their native size, a few steps.
    xl_model: str = "sdxl"
    xl_size: int = 1024
    xl_steps: int = 6  # enough for per-step time to dominate the per-image decode; few, to fit the budget
    xl_batches: tuple[int, ...] = (1, 4)
    xl_reps: int = 2
    xl_cap_s: float = 120  # the section's own cap (estimated ~70 s: XL_STEP_S), within what the budget has left
    need_s: tuple[tuple[str, float], ...] = (("pipeline", 45), ("scorer", 30), ("reproducibility", 30),
                                              ("search", 60), ("replay", 30), ("compile", 150), ("sdxl", 60))


# SDXL's time on a GPU, estimated from the H200's SD 1.5 figures (bench/results/gpu/): a 1024² CFG step is 8.4x the
# FLOPs of a 512² one (13.5 vs 1.6 TFLOP, torch's FlopCounterMode), and SD 1.5 ran 6.3 ms per candidate-step at batch
# 8 (~255 TFLOP/s by the same count): ~55 ms per candidate-step at that rate, rounded up to 80 ms for batch 1's lower
# use of the GPU. A 1024² VAE decode in fp32 (the upcast): 4x the pixels of the 27 ms fp16 512² one, and fp32: ~0.2 s.
# 6 steps at batch 1 and 4, both sides, a warm-up and 2 repetitions: ~30 s; building the model on the GPU (~7 GB of
# fp16 written) and loading it twice: ~40 s. So ~70 s, after the other sections' ~340 s (their H200 runs: 17 + 37 +
# 53 + 52 s, compile 83 s, search and replay ~100 s estimated) of the 420 s budget.
XL_STEP_S = 0.08  # seconds per candidate-step, 1024², fp16 (estimate above)
XL_DECODE_S = 0.2  # seconds per 1024² image decoded in fp32 (estimate above)


# The dry run: tiny models, few steps, one CPU thread (two stall each other on a busy 2-core machine), and
# torch.compile off (inductor takes a minute on the tiny UNet here; --compile turns it on).
DRY = dict(dry_run=True, device="cpu", big_model="tiny", clip="tiny", size=64, steps=2, reps=1, threads=1,
           score_images=8, score_reps=1, repro_seeds=4, compile=False,
           xl_model="sdxl-tiny", xl_size=64, xl_steps=2, xl_reps=1, xl_cap_s=60,
           need_s=(("pipeline", 1), ("scorer", 1), ("reproducibility", 1), ("search", 1), ("replay", 1),
                   ("compile", 10), ("sdxl", 1)))


class OutOfTime(Exception):
    """The global budget has no room for the next piece of work."""


class Clock:
    def __init__(self, budget_s: float, name: str = "budget"):
        self.t0, self.budget_s, self.name = time.monotonic(), budget_s, name

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def need(self, seconds: float, what: str) -> None:
        if self.left() < seconds:
            raise OutOfTime(f"{what}: needs ~{seconds:.0f} s, {max(self.left(), 0):.0f} s of the "
                            f"{self.budget_s:.0f} s {self.name} left")


class PeakMemory:
    """Peak memory since reset(): the CUDA caching allocator's peak on a GPU, this process's peak RSS on a CPU."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.kind = "torch.cuda.max_memory_allocated" if self.cuda else "peak RSS (VmHWM)"

    def reset(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM to the current RSS
        except OSError:
            self.kind = "peak RSS (VmHWM) since the process started"

    def peak_mb(self) -> float:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**20
        from .memory import peak_mb

        return peak_mb()


# --- small helpers ---------------------------------------------------------------------------------------


def arrays(images) -> list:
    import numpy as np

    return [np.asarray(im.convert("RGB"), dtype=np.int16) for im in images]


def pixel_diff(a, b) -> dict:
    """How far two lists of images are apart: max level difference, share of differing values, PSNR (dB)."""
    import numpy as np

    xa, xb = np.stack(arrays(a)), np.stack(arrays(b))
    d = np.abs(xa - xb)
    mse = float((d.astype(np.float64) ** 2).mean())
    return {"identical": bool(d.max() == 0), "max_abs": int(d.max()), "fraction_differing": float((d > 0).mean()),
            "psnr_db": None if mse == 0 else float(10 * np.log10(255**2 / mse))}


def stat(xs: list[float]) -> dict:
    from .timing import Stat

    return Stat.of(xs).to_dict() | {"samples": list(xs)}


def check(name: str, value, target: str, passed: bool | None) -> dict:
    """One line of the summary: a measured value against what it should be (passed None: a figure, no target)."""
    return {"name": name, "value": value, "target": target, "passed": passed}


def gpu_info(device: str) -> dict:
    import torch

    info = {"torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(0)
        info |= {"name": p.name, "memory_gb": round(p.total_memory / 2**30, 1), "capability": f"{p.major}.{p.minor}"}
    try:
        import jax

        info["jax_backend"] = jax.default_backend()
        info["jax_devices"] = [str(d) for d in jax.devices()]
    except Exception as e:  # a broken JAX install is a finding, not a crash
        info["jax_error"] = f"{type(e).__name__}: {e}"
    info["XLA_PYTHON_CLIENT_PREALLOCATE"] = os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE")
    return info


# --- sections ---------------------------------------------------------------------------------------------


class Check:
    """State shared by the sections: the plan, the clock, the models, the loaded pipeline."""

    def __init__(self, plan: Plan, clock: Clock):
        self.plan, self.clock = plan, clock
        self.memory = PeakMemory(plan.device)
        self.model_path = self.clip_path = None
        self._pipe = None

    def kw(self, steps: int | None = None, size: int | None = None) -> dict:
        p = self.plan
        return dict(num_inference_steps=steps or p.steps, guidance_scale=7.5, height=size or p.size,
                    width=size or p.size)

    def paths(self):
        if self.model_path is None:
            self.section_models()
        return self.model_path, self.clip_path

    def pipe(self):
        """sdkit's default pipeline for this device (load_pipeline caches it: every section shares one)."""
        from sdkit import load_pipeline

        return load_pipeline(str(self.paths()[0]), device=self.plan.device)

    def generate(self, pipe, seeds, batch_size: int):
        from sdkit import generate

        return generate(pipe, PROMPT, n=len(seeds), seeds=list(seeds), batch_size=batch_size, progress=False,
                        **self.kw()).images

    # models
    def section_models(self) -> dict:
        from . import models

        t0 = time.perf_counter()
        self.model_path = models.model_path(self.plan.big_model)
        t1 = time.perf_counter()
        self.clip_path = models.clip_b32_path() if self.plan.clip == "b32" else models.tiny_clip()
        t2 = time.perf_counter()
        return {"data": {"model": str(self.model_path), "clip": str(self.clip_path),
                         "build_or_load_s": {"pipeline": t1 - t0, "clip": t2 - t1}}, "checks": []}

    # pipeline
    def section_pipeline(self) -> dict:
        import diffusers
        import torch

        from sdkit.load.invariance import is_batch_invariant, own_memory
        from sdkit.load.pipeline import _DTYPE_KW
        from sdkit.load.state import pipeline_info

        from .overhead import bare_call

        p, clock = self.plan, self.clock
        path = str(self.paths()[0])
        t0 = time.perf_counter()
        pipe = self.pipe()
        load_s = time.perf_counter() - t0
        dtype = getattr(torch, pipeline_info(pipe).dtype)
        # A bare diffusers pipeline from the same folder, in the dtype sdkit chose: what a tutorial writes.
        bare = diffusers.StableDiffusionPipeline.from_pretrained(path, safety_checker=None, requires_safety_checker=False,
                                                                use_safetensors=True, **{_DTYPE_KW: dtype}).to(p.device)
        own_memory(bare)  # CPU only: the same weights at sdkit's alignment (a weight's address moves CPU last bits)
        bare.set_progress_bar_config(disable=True)
        processors = sorted({type(a).__name__ for a in pipe.unet.attn_processors.values()})
        data = {"dtype": pipeline_info(pipe).dtype, "attention": processors, "load_s": load_s,
                "batch_invariant": is_batch_invariant(pipe),
                "memory_kind": self.memory.kind, "batches": {}}
        checks = [check("sdkit default dtype", data["dtype"], "float16 on CUDA",
                        data["dtype"] == "float16" if p.device.startswith("cuda") else None),
                  check("attention processor", ", ".join(processors), "AttnProcessor2_0 (SDPA)",
                        processors == ["AttnProcessor2_0"])]
        seeds_all = list(range(max(p.batches)))
        for b in p.batches:
            # ~20 ms per image and step at 512² is a generous guess for a big GPU; 2 sides, warm-up + reps calls.
            clock.need(2 * b * p.steps * 0.02 * (p.reps + 1) if not p.dry_run else 1, f"batch {b}")
            seeds = seeds_all[:b]
            sd = lambda: self.generate(pipe, seeds, b)  # noqa: E731
            plain = lambda: bare_call(bare, PROMPT, seeds, b, **self.kw())  # noqa: E731
            data["batches"][b], more = self.sides(sd, plain, b, data["batch_invariant"], p.reps, f"batch {b}")
            checks += more
        del bare
        return {"data": data, "checks": checks}

    def sides(self, sd, plain, b: int, batch_invariant: bool, reps: int, label: str) -> tuple[dict, list]:
        """sdkit's call `sd` against the bare diffusers call `plain` on the same seeds (batch `b`): each one's peak
        memory (its first call, also the warm-up), seconds per image over interleaved repetitions, their ratio and
        the pixels; and the checks on them."""
        from .timing import interleaved

        self.memory.reset()
        a = sd()
        peak_sdkit = self.memory.peak_mb()
        self.memory.reset()
        c = plain()
        peak_bare = self.memory.peak_mb()
        times = interleaved({"sdkit": sd, "bare": plain}, reps=reps, warmup=0)
        per_image = {k: [t / b for t in ts] for k, ts in times.items()}
        ratio = [x / y for x, y in zip(times["sdkit"], times["bare"])]
        diff = pixel_diff(a, c)
        entry = {"s_per_image": {k: stat(v) for k, v in per_image.items()}, "ratio": stat(ratio), "pixels": diff,
                 "peak_mb": {"sdkit": peak_sdkit, "bare": peak_bare}}
        # Like for like at batch 1. In a batch, sdkit encodes each prompt alone (so that a candidate's replay
        # alone has its embedding: sdkit.load.rows) while the bare call encodes them together, which may move
        # last bits (at most 2 levels); on the CPU sdkit also runs the UNet per candidate (reproducibility
        # measures what invariance costs and buys).
        same_work = b == 1
        last_bits = not same_work and not batch_invariant
        checks = [check(f"{label}: pixels sdkit vs bare diffusers, max level diff", diff["max_abs"],
                        "0 (identical)" if same_work else "<= 2 (prompts encoded one at a time)" if last_bits
                        else "figure (per-candidate vs batched UNet)",
                        diff["identical"] if same_work else diff["max_abs"] <= 2 if last_bits else None),
                  check(f"{label}: time sdkit / bare (median)", round(stat(ratio)["median"], 4),
                        "<= 1.01" if same_work or last_bits else "figure (per-candidate vs batched UNet)",
                        stat(ratio)["median"] <= 1.01 if same_work or last_bits else None)]
        return entry, checks

    # scorer
    def section_scorer(self) -> dict:
        import jax
        import numpy as np
        import torch
        from diffusers.image_processor import VaeImageProcessor

        from sdkit.scoring.flax.scorer import FlaxCLIPScorer
        from sdkit.scoring.torch_clip import TorchCLIPScorer

        from .timing import interleaved

        p = self.plan
        clip = str(self.paths()[1])
        pipe = self.pipe()
        b = max(p.batches)
        gens = [torch.Generator("cpu").manual_seed(s) for s in range(b)]
        # The pipeline's own tensor output (what generate could hand over), tiled to the number to score.
        out = pipe(prompt=[PROMPT] * b, generator=gens, output_type="pt", **self.kw(steps=2)).images
        tensor = out.repeat((p.score_images + b - 1) // b, 1, 1, 1)[: p.score_images]
        to_pil = lambda t: VaeImageProcessor.numpy_to_pil(VaeImageProcessor.pt_to_numpy(t))  # noqa: E731
        pils = to_pil(tensor)
        data = {"images": len(pils), "tensor": {"shape": list(tensor.shape), "dtype": str(tensor.dtype),
                                                "device": str(tensor.device)}}
        from sdkit.scoring.scorers import load_scorer

        data["auto_scorer"] = type(load_scorer("auto", clip)).__name__  # Flax if JAX sees the GPU, else torch
        flax = FlaxCLIPScorer(clip)  # every local JAX device: the GPU on a GPU machine
        torch_s = TorchCLIPScorer(clip, device=p.device)
        data["flax_devices"] = [str(d) for d in flax.devices]
        logits = {"flax, PIL": flax(pils, PROMPT).logits}
        logits["flax, tensor"] = flax(tensor, PROMPT).logits
        data["flax_tensor_transfer"] = flax.last_transfer  # "dlpack" when JAX and torch share the GPU
        # A finished run's PIL images as rerank hands them over on an accelerator (sdkit.ranking.pil_to_tensor).
        from sdkit.ranking import pil_to_tensor

        logits["flax, PIL -> device tensor"] = flax(pil_to_tensor(pils, tensor.device), PROMPT).logits
        logits["torch, PIL"] = torch_s(pils, PROMPT).logits
        logits["torch, tensor"] = torch_s(tensor, PROMPT).logits
        # JAX may run float32 matrix products in TF32 on GPUs: the same scores at full precision, for the record.
        with jax.default_matmul_precision("highest"):
            logits["flax, PIL, matmul precision highest"] = flax(pils, PROMPT).logits
        # Likewise torch: cuDNN convolutions (CLIP's patch embedding) may use TF32 unless told not to.
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            logits["torch, PIL, cuDNN TF32 off"] = torch_s(pils, PROMPT).logits
        cpu_flax = FlaxCLIPScorer(clip, devices=jax.devices("cpu"))
        logits["CPU flax, PIL"] = cpu_flax(pils, PROMPT).logits
        logits["CPU torch, PIL"] = TorchCLIPScorer(clip, device="cpu")(pils, PROMPT).logits
        ref = logits["CPU flax, PIL"]
        diffs = {k: float(np.abs(v - ref).max()) for k, v in logits.items()}
        data["max_abs_logit_diff_vs_cpu_flax"] = diffs
        data["tensor_vs_pil"] = {"flax": float(np.abs(logits["flax, tensor"] - logits["flax, PIL"]).max()),
                                 "torch": float(np.abs(logits["torch, tensor"] - logits["torch, PIL"]).max()),
                                 "flax, rerank": float(np.abs(logits["flax, PIL -> device tensor"]
                                                              - logits["flax, PIL"]).max())}
        checks = [check("load_scorer('auto') picks", data["auto_scorer"], "FlaxCLIPScorer where JAX sees the GPU",
                        data["auto_scorer"] == "FlaxCLIPScorer" if jax.default_backend() == "gpu" else None),
                  check("Flax on this device vs Flax on the CPU, max |logit diff|", diffs["flax, PIL"],
                        f"<= {SCORE_TOLERANCE:g}", diffs["flax, PIL"] <= SCORE_TOLERANCE),
                  check("PyTorch scorer on this device vs the CPU, max |logit diff|",
                        float(np.abs(logits["torch, PIL"] - logits["CPU torch, PIL"]).max()), f"<= {SCORE_TOLERANCE:g}",
                        float(np.abs(logits["torch, PIL"] - logits["CPU torch, PIL"]).max()) <= SCORE_TOLERANCE),
                  check("tensor hand-over vs PIL, max |logit diff| (flax, torch, flax from PIL as rerank does)",
                        list(data["tensor_vs_pil"].values()), "0 (same pixels)",
                        max(data["tensor_vs_pil"].values()) == 0)]
        # Both fit: the pipeline runs its biggest batch with the scorers resident.
        self.memory.reset()
        self.generate(pipe, list(range(b)), b)
        data["pipeline_peak_mb_with_scorers"] = self.memory.peak_mb()
        data["memory"] = self._memory_split()
        checks.append(check("pipeline batch after the scorers loaded", "ran", "no out-of-memory", True))
        if "jax_fraction" in data["memory"]:
            f = data["memory"]["jax_fraction"]
            checks.append(check("GPU memory not held by torch (JAX + contexts), share", round(f, 3),
                                "< 0.5 (JAX preallocating would hold 0.75)", f < 0.5))
        cases = {"flax, PIL": lambda: flax(pils, PROMPT), "flax, tensor": lambda: flax(tensor, PROMPT),
                 "torch, PIL": lambda: torch_s(pils, PROMPT), "torch, tensor": lambda: torch_s(tensor, PROMPT),
                 "flax, PIL -> device tensor (rerank)": lambda: flax(pil_to_tensor(pils, tensor.device), PROMPT),
                 "tensor -> PIL only (the round trip avoided)": lambda: to_pil(tensor)}
        times = interleaved(cases, reps=p.score_reps, warmup=1)
        ips = {k: [len(pils) / t for t in ts] for k, ts in times.items()}
        data["images_per_s"] = {k: stat(v) for k, v in ips.items()}
        r = [a / c for a, c in zip(ips["flax, PIL"], ips["torch, PIL"])]
        data["flax_over_torch"] = stat(r)
        checks.append(check("images/s, Flax / PyTorch scorer (PIL input, median)", round(stat(r)["median"], 3),
                            ">= 1", stat(r)["median"] >= 1))
        rt = [a / c for a, c in zip(ips["flax, tensor"], ips["flax, PIL"])]
        checks.append(check("images/s, Flax tensor / Flax PIL (median)", round(stat(rt)["median"], 3), "figure", None))
        # Seconds a tensor call takes by its size: bench/gpu_model.py charges a search's preview scores from this
        # curve (without it, every call up to `images` costs what `images` did).
        sizes = [k for k in (1, 8, 32) if k < len(pils)]
        calls = {f"{name} b{k}": (lambda score=score, k=k: score(tensor[:k], PROMPT))
                 for name, score in (("flax", flax), ("torch", torch_s)) for k in sizes}
        data["tensor_s_per_call"] = {k: stat(v) for k, v in interleaved(calls, reps=p.score_reps, warmup=1).items()}
        return {"data": data, "checks": checks}

    def _memory_split(self) -> dict:
        """Who holds the GPU's memory: torch's allocator, and the rest of the process (JAX, CUDA contexts)."""
        import jax
        import torch

        out = {}
        if self.plan.device.startswith("cuda"):
            free, total = torch.cuda.mem_get_info()
            reserved = torch.cuda.memory_reserved()
            out |= {"total_gb": total / 2**30, "used_gb": (total - free) / 2**30, "torch_reserved_gb": reserved / 2**30,
                    "jax_fraction": (total - free - reserved) / total}
        stats = [d.memory_stats() for d in jax.local_devices()]
        if stats and stats[0]:
            keep = ("bytes_in_use", "peak_bytes_in_use", "bytes_limit", "bytes_reserved", "pool_bytes")
            out["jax_memory_stats"] = [{k: s[k] for k in keep if k in s} for s in stats]
        return out

    # reproducibility
    def section_reproducibility(self) -> dict:
        from sdkit import load_pipeline
        from sdkit.load.invariance import is_batch_invariant

        from .timing import interleaved

        p, clock = self.plan, self.clock
        seeds = list(range(p.repro_seeds))
        data, checks, per_image = {}, [], {}
        default = is_batch_invariant(self.pipe())
        for invariant in (default, not default):  # the device's default first
            clock.need(10 if not p.dry_run else 0.5, f"batch_invariant={invariant}")
            pipe = load_pipeline(str(self.paths()[0]), device=p.device, batch_invariant=invariant)
            mode = f"batch_invariant={invariant}" + (" (default)" if invariant == default else "")
            runs = {bs: self.generate(pipe, seeds, bs) for bs in sorted({1, *p.batches}) if bs <= len(seeds)}
            big = max(runs)
            again = self.generate(pipe, seeds, big)
            d = {"two_runs": pixel_diff(runs[big], again),
                 "vs_batch_1": {bs: pixel_diff(runs[1], imgs) for bs, imgs in runs.items() if bs != 1}}
            times = interleaved({"run": lambda: self.generate(pipe, seeds[:big], big)}, reps=p.reps, warmup=0)
            d["batch"], d["s_per_image"] = big, stat([t / big for t in times["run"]])
            per_image[invariant] = d["s_per_image"]["median"]
            data[mode] = d
            checks.append(check(f"{mode}: same seeds, batch {big}, two runs, max level diff", d["two_runs"]["max_abs"],
                                "0 (identical)", d["two_runs"]["identical"]))
            for bs, diff in d["vs_batch_1"].items():
                checks.append(check(f"{mode}: batch {bs} vs batch 1, max level diff (share differing)",
                                    f"{diff['max_abs']} ({diff['fraction_differing']:.3g})",
                                    "0 (identical)" if invariant else "figure", diff["identical"] if invariant else None))
        cost = per_image[True] / per_image[False]
        checks.append(check(f"time per image, batch-invariant / batched UNet, batch {big}", round(cost, 3), "figure", None))
        return {"data": data, "invariance_cost": cost, "checks": checks}

    # compile
    def section_compile(self) -> dict:
        from sdkit import load_pipeline

        from .timing import interleaved

        p = self.plan
        if not p.compile:
            return {"skipped": "torch.compile off for this run (the dry run: inductor takes minutes on a CPU; "
                               "--compile turns it on)"}
        self.clock.need(dict(p.need_s)["compile"], "torch.compile")
        b, seeds = p.compile_batch, list(range(p.compile_batch))
        eager = self.pipe()
        compiled = load_pipeline(str(self.paths()[0]), device=p.device, compile=True)
        t0 = time.perf_counter()
        first = self.generate(compiled, seeds, b)
        first_s = time.perf_counter() - t0
        ref = self.generate(eager, seeds, b)
        times = interleaved({"eager": lambda: self.generate(eager, seeds, b),
                             "compiled": lambda: self.generate(compiled, seeds, b)}, reps=p.reps, warmup=0)
        speedup = [e / c for e, c in zip(times["eager"], times["compiled"])]
        diff = pixel_diff(ref, first)
        data = {"batch": b, "first_call_s": first_s, "s_per_image": {k: stat([t / b for t in v]) for k, v in times.items()},
                "speedup": stat(speedup), "pixels_vs_eager": diff}
        return {"data": data, "checks": [
            check(f"torch.compile speed-up, batch {b} (median)", round(stat(speedup)["median"], 3), "figure", None),
            check("torch.compile first call (s, compiles)", round(first_s, 1), "figure", None),
            check("compiled vs eager pixels, max level diff", diff["max_abs"], "figure (last-bit differences expected)",
                  None)]}

    # sdxl
    def section_sdxl(self) -> dict:
        """SDXL at its native size: sdkit's defaults against a bare `StableDiffusionXLPipeline` from the same folder
        (`sides`), and what the VAE's fp32 upcast costs next to an fp16 decode."""
        import diffusers
        import torch

        from sdkit import generate, load_pipeline
        from sdkit.load.invariance import is_batch_invariant, own_memory
        from sdkit.load.pipeline import _DTYPE_KW, clear_cache
        from sdkit.load.state import pipeline_info

        from .models import sdxl_path
        from .overhead import bare_call

        p, gpu = self.plan, self.plan.device.startswith("cuda")
        cap = Clock(min(p.xl_cap_s, self.clock.left()), "sdxl cap")  # its own cap, inside what the budget left
        clear_cache()  # the SD 1.5 pipelines: the peak memory measured is SDXL's, and they would crowd it
        _free_gpu()
        t0 = time.perf_counter()
        # fp16 on a GPU, saved as the "fp16" variant only (half the bytes to write); fp32 files on the CPU.
        built = torch.float16 if gpu else torch.float32
        path = sdxl_path(p.xl_model, dtype=built, device=p.device)
        t1 = time.perf_counter()
        pipe = load_pipeline(str(path), device=p.device)  # sdkit's defaults: fp16 + SDPA on a GPU
        info = pipeline_info(pipe)
        dtype = getattr(torch, info.dtype)
        # What an SDXL tutorial writes, from the same folder and in the same dtype.
        bare = diffusers.StableDiffusionXLPipeline.from_pretrained(
            path, variant="fp16" if built == torch.float16 else None, use_safetensors=True, **{_DTYPE_KW: dtype})
        bare.to(p.device)
        own_memory(bare)  # CPU only: the same weights at sdkit's alignment (a weight's address moves CPU last bits)
        bare.set_progress_bar_config(disable=True)
        t2 = time.perf_counter()
        kw = self.kw(steps=p.xl_steps, size=p.xl_size)
        invariant = is_batch_invariant(pipe)
        data = {"model": p.xl_model, "size": p.xl_size, "steps": p.xl_steps, "dtype": info.dtype,
                "scheduler": type(pipe.scheduler).__name__, "batch_invariant": invariant,
                "unet_params": sum(x.numel() for x in pipe.unet.parameters()),
                "build_s": t1 - t0, "load_s": t2 - t1, "memory_kind": self.memory.kind, "batches": {}, "skipped": []}
        if gpu:
            data["resident_mb"] = torch.cuda.memory_allocated() / 2**20  # both pipelines' weights, in every peak
        checks = [check("SDXL: sdkit default dtype", info.dtype, "float16 on CUDA",
                        info.dtype == "float16" if gpu else None)]
        last = {}

        def sd(seeds, b):
            last["run"] = generate(pipe, PROMPT, n=len(seeds), seeds=list(seeds), batch_size=b, progress=False, **kw)
            return last["run"].images

        for b in p.xl_batches:
            try:
                need = 2 * (p.xl_reps + 1) * b * (p.xl_steps * XL_STEP_S + XL_DECODE_S) if gpu else 0.1
                cap.need(need, f"SDXL batch {b}")
            except OutOfTime as e:  # the section's cap or the budget: what ran so far is kept
                data["skipped"].append(str(e))
                break
            seeds = list(range(b))
            data["batches"][b], more = self.sides(lambda: sd(seeds, b), lambda: bare_call(bare, PROMPT, seeds, b, **kw),
                                                  b, invariant, p.xl_reps, f"SDXL batch {b}")
            checks += more
        if "run" in last:
            data["vae_decode"] = last["run"].candidates[0].extra["sdxl"]["vae_decode"]
            checks.append(check("SDXL: how sdkit's VAE decoded", data["vae_decode"],
                                "float32 (upcast) under fp16", "upcast" in data["vae_decode"] if gpu else None))
        del bare
        try:
            cap.need(4 * (XL_DECODE_S if gpu else 0.1), "SDXL VAE decode, fp32 vs fp16")
            data["vae"] = self.vae_decode_cost(path, built)
            checks.append(check(f"SDXL: one {p.xl_size}² decode, fp32 (upcast) / fp16 time (median)",
                                round(data["vae"]["fp32_over_fp16"]["median"], 3), "figure", None))
        except OutOfTime as e:
            data["skipped"].append(str(e))
        return {"data": data, "checks": checks}

    def vae_decode_cost(self, path, built) -> dict:
        """One image's decode by the folder's VAE in fp32 (what sdkit and diffusers do under fp16 for SDXL's VAE,
        whose config says force_upcast) and in fp16 (what an fp16-fix VAE, e.g. madebyollin/sdxl-vae-fp16-fix,
        runs). Random weights: this times the two; whether fp16 overflows depends on real weights."""
        import torch
        from diffusers import AutoencoderKL

        from sdkit.load.pipeline import _DTYPE_KW

        from .timing import interleaved

        p = self.plan
        variant = "fp16" if built == torch.float16 else None
        vaes = {str(dt).replace("torch.", ""): AutoencoderKL.from_pretrained(
            path / "vae", variant=variant, use_safetensors=True, **{_DTYPE_KW: dt}).to(p.device).eval()
            for dt in (torch.float32, torch.float16)}
        h = p.xl_size // 8
        z = torch.randn(1, 4, h, h, generator=torch.Generator().manual_seed(0)).to(p.device)
        with torch.inference_mode():
            cases = {k: (lambda v=v: v.decode(z.to(v.dtype) / v.config.scaling_factor).sample) for k, v in vaes.items()}
            finite = {k: bool(torch.isfinite(f()).all()) for k, f in cases.items()}  # also the warm-up
            times = interleaved(cases, reps=max(2, p.xl_reps), warmup=0)
        ratio = [a / b for a, b in zip(times["float32"], times["float16"])]
        return {"s_per_image": {k: stat(v) for k, v in times.items()}, "fp32_over_fp16": stat(ratio), "finite": finite}

    # search and replay
    def previewer(self):
        """A TAESD-shaped AutoencoderTiny with random weights (bench/preview_cost.py's config), on the device."""
        import torch
        from diffusers import AutoencoderTiny

        from .preview_cost import DRY_TAESD, TAESD

        torch.manual_seed(0)
        vae = AutoencoderTiny(**(DRY_TAESD if self.plan.dry_run else TAESD)).eval()
        return vae.to(self.plan.device, torch.float16 if self.plan.device.startswith("cuda") else torch.float32)

    def search_pipes(self):
        """The device's default pipeline, batched here even in the dry run (the GPU's path, forced on the CPU),
        with DDIM and with Euler a (particles)."""
        from sdkit import load_pipeline

        path, p = str(self.paths()[0]), self.plan
        return (load_pipeline(path, device=p.device, batch_invariant=False),
                load_pipeline(path, device=p.device, batch_invariant=False, scheduler="Euler a"))

    def section_search(self) -> dict:
        from sdkit.load.invariance import is_batch_invariant
        from sdkit.scoring.scorers import load_scorer
        from sdkit.search import best_of_n, draft_then_finish, particle_resampling, successive_halving

        from .gpu_model import Costs, seconds
        from .timing import interleaved

        p = self.plan
        self.clock.need(dict(p.need_s).get("search", 60), "search")
        ddim, euler = self.search_pipes()
        scorer = load_scorer("flax", self.paths()[1])
        tiny = self.previewer()
        kw = dict(seed=100, progress=False, **self.kw())
        cases = {
            "best_of_n n=8": (best_of_n, ddim, {"n": 8}),
            "successive_halving n=32 (VAE previews)": (successive_halving, ddim, {"n": 32}),
            "successive_halving n=32 (tiny previews)": (successive_halving, ddim, {"n": 32, "previewer": tiny}),
            "draft_then_finish n=16 keep=2": (draft_then_finish, ddim, {"n": 16, "keep": 2,  # drafts at 30% of the steps
                                                                        "draft_steps": max(1, p.steps * 3 // 10)}),
            "particle_resampling n=8 (tiny previews)": (particle_resampling, euler, {"n": 8, "previewer": tiny}),
        }
        runs = {}

        def case(name):
            strategy, pipe, own = cases[name]
            return lambda: runs.__setitem__(name, strategy(pipe, PROMPT, scorer, **own, **kw))

        times = interleaved({name: case(name) for name in cases}, reps=max(1, p.reps - 1), warmup=1)
        costs, data, checks = Costs(), {}, []
        for name, (strategy, _, own) in cases.items():
            run = runs[name]
            c = run.search.compute
            cfg = {"strategy": strategy.__name__, **run.search.settings,
                   "previewer": "tiny" if own.get("previewer") is not None else "vae"}
            modelled = seconds(cfg, steps=p.steps, prompts=1)
            data[name] = {"wall_s": stat(times[name]), "unet_evaluations": c.unet_evaluations,
                          "preview_decodes": c.preview_decodes, "scored_images": c.scored_images,
                          "settings": {k: v for k, v in run.search.settings.items() if k != "previewer"},
                          "modelled_h200_s": modelled, "best_seed": run.search.best[0].seed}
        base = data["best_of_n n=8"]["wall_s"]["median"]
        for name, d in data.items():
            checks.append(check(f"{name}: wall s (vs best-of-8), modelled H200 s", f"{d['wall_s']['median']:.3f} "
                                f"({d['wall_s']['median'] / base:.2f}), {d['modelled_h200_s']:.3f}", "figure", None))
        checks.append(check("search runs on the default pipeline (batched, rows recorded)",
                            not is_batch_invariant(ddim), "True", not is_batch_invariant(ddim)))
        self.search_runs = runs
        return {"data": data, "checks": checks}

    def section_replay(self) -> dict:
        """Batched candidates, search survivors and particles made again from their metadata, bit for bit."""
        from sdkit.search import regenerate

        from .timing import interleaved

        p = self.plan
        self.clock.need(dict(p.need_s).get("replay", 30), "replay")
        ddim, euler = self.search_pipes()
        batch = max(p.batches)
        plain = self.generate_run(ddim, list(range(batch)), batch)
        runs = getattr(self, "search_runs", {})
        groups = {"batched candidates (batch %d)" % batch: (ddim, plain.candidates[-2:])}
        for name, pipe in (("successive_halving n=32 (VAE previews)", ddim),
                           ("particle_resampling n=8 (tiny previews)", euler)):
            if name in runs:
                groups[name] = (pipe, runs[name].candidates[:2])
        data, checks = {}, []
        for name, (pipe, cands) in groups.items():
            again = [regenerate(c.params(), pipe=pipe) for c in cands]
            diff = pixel_diff([c.image for c in cands], [a.image for a in again])
            data[name] = {"pixels": diff, "arithmetic": [c.arithmetic for c in cands],
                          "lineages": [c.extra.get("search", {}).get("lineage") for c in cands]}
            checks.append(check(f"replay: {name}, {len(cands)} regenerated from metadata, max level diff",
                                diff["max_abs"], "0 (identical)", diff["identical"]))
        c = plain.candidates[-1]
        times = interleaved({"regenerate": lambda: regenerate(c.params(), pipe=ddim),
                             "batch": lambda: self.generate_run(ddim, list(range(batch)), batch)},
                            reps=p.reps, warmup=0)
        ratio = [r / (b / batch) for r, b in zip(times["regenerate"], times["batch"])]
        data["regenerate_vs_batch_share"] = stat(ratio)
        checks.append(check(f"replay time of one batched candidate / its share of the batch of {batch} (median)",
                            round(stat(ratio)["median"], 2), "figure", None))
        return {"data": data, "checks": checks}

    def generate_run(self, pipe, seeds, batch_size: int):
        from sdkit import generate

        return generate(pipe, PROMPT, n=len(seeds), seeds=list(seeds), batch_size=batch_size, progress=False,
                        **self.kw())


# --- running and reporting --------------------------------------------------------------------------------


def run(plan: Plan, out: Path, budget_s: float, only: list[str]) -> dict:
    from . import machine

    clock = Clock(budget_s)
    chk = Check(plan, clock)
    result = {"dry_run": plan.dry_run, "plan": dataclasses.asdict(plan), "budget_s": budget_s,
              "machine": machine.describe() | {"gpu_info": gpu_info(plan.device)}, "sections": {}}
    for name in only:
        t0 = time.perf_counter()
        print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
        try:
            if name != "models":
                clock.need(dict(plan.need_s).get(name, 0), name)
            entry = getattr(chk, f"section_{name}")()
            entry["status"] = "skipped" if "skipped" in entry else "ok"
        except OutOfTime as e:
            entry = {"status": "skipped", "skipped": str(e)}
        except Exception as e:  # recorded; the next section still runs
            entry = {"status": "failed", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
            _free_gpu()
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        result["sections"][name] = entry
        result["elapsed_s"] = round(clock.elapsed(), 1)
        write(result, out)  # after every section: a run cut short keeps what it measured
        print(f"gpu_check: {name} {entry['status']} in {entry['seconds']} s", file=sys.stderr, flush=True)
    return result


def _free_gpu() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def markdown(result: dict) -> str:
    m, g = result["machine"], result["machine"]["gpu_info"]
    where = "dry run on the CPU with sdkit's tiny models: checks the script, not the GPU" if result["dry_run"] else \
        f"{g.get('name', 'no GPU')}"
    lines = [f"# sdkit GPU check ({where})", "",
             f"{m['date']}, commit {m['commit']}; torch {m['torch']} (CUDA {g.get('torch_cuda') or 'none: a CPU build'}), jax {m['jax']} "
             f"({g.get('jax_backend', g.get('jax_error'))}), diffusers {m['diffusers']}, transformers {m['transformers']}; "
             f"CPU {m['cpu']}, {m['cores']} cores; XLA_PYTHON_CLIENT_PREALLOCATE={g.get('XLA_PYTHON_CLIENT_PREALLOCATE')}; "
             f"{result['elapsed_s']} s of a {result['budget_s']:.0f} s budget.", "",
             "| section | status | seconds | note |", "| --- | --- | --- | --- |"]
    for name, s in result["sections"].items():
        note = s.get("skipped") or s.get("error") or ""
        lines.append(f"| {name} | {s['status']} | {s['seconds']} | {note} |")
    lines += ["", "## Checks", "", "| section | measure | value | target | passed |", "| --- | --- | --- | --- | --- |"]
    for name, s in result["sections"].items():
        for c in s.get("checks", []):
            passed = {True: "yes", False: "**no**", None: "–"}[c["passed"]]
            lines.append(f"| {name} | {c['name']} | {_fmt(c['value'])} | {c['target']} | {passed} |")
    pipe = result["sections"].get("pipeline", {}).get("data")
    if pipe:
        lines += ["", f"## Pipeline: sdkit ({pipe['dtype']}, {', '.join(pipe['attention'])}) vs bare diffusers", "",
                  f"Seconds per image, median of {result['plan']['reps']} interleaved runs, {result['plan']['steps']} "
                  f"DDIM steps at {result['plan']['size']}²; peak memory as {pipe['memory_kind']}.", "",
                  "| batch | sdkit s/image | bare s/image | sdkit / bare | identical | peak MB sdkit | peak MB bare |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for b, d in pipe["batches"].items():
            lines.append(f"| {b} | {d['s_per_image']['sdkit']['median']:.4g} | {d['s_per_image']['bare']['median']:.4g} | "
                         f"{d['ratio']['median']:.4f} | {d['pixels']['identical']} | {d['peak_mb']['sdkit']:.0f} | "
                         f"{d['peak_mb']['bare']:.0f} |")
    sc = result["sections"].get("scorer", {}).get("data")
    if sc:
        lines += ["", f"## Scorer: {sc['images']} images, Flax on {', '.join(sc['flax_devices'])}; tensor hand-over to "
                      f"JAX by {sc['flax_tensor_transfer']}", "", "| case | images/s (median) | max abs logit diff vs CPU Flax |",
                  "| --- | --- | --- |"]
        for k, v in sc["images_per_s"].items():
            lines.append(f"| {k} | {v['median']:.4g} | {_fmt(sc['max_abs_logit_diff_vs_cpu_flax'].get(k, '–'))} |")
        if sc.get("tensor_s_per_call"):
            lines += ["", "Tensor calls by size (ms, median): " + ", ".join(
                f"{k} {1000 * v['median']:.3g}" for k, v in sc["tensor_s_per_call"].items())]
        if sc.get("memory"):
            lines += ["", "Memory: " + json.dumps({k: v for k, v in sc["memory"].items()}, default=str)]
    rp = result["sections"].get("reproducibility", {}).get("data")
    if rp:
        lines += ["", "## Reproducibility: each seed against itself in batch 1", "",
                  "| mode | compared | max level diff | share differing | PSNR dB |", "| --- | --- | --- | --- | --- |"]
        for mode, d in rp.items():
            rows = [("two runs, same batch", d["two_runs"])] + [(f"batch {b} vs 1", x) for b, x in d["vs_batch_1"].items()]
            for what, x in rows:
                psnr = "∞" if x["psnr_db"] is None else f"{x['psnr_db']:.1f}"
                lines.append(f"| {mode} | {what} | {x['max_abs']} | {x['fraction_differing']:.3g} | {psnr} |")
    xl = result["sections"].get("sdxl", {}).get("data")
    if xl:
        plan = result["plan"]
        resident = f"; both pipelines' weights: {xl['resident_mb']:.0f} MB of each peak" if "resident_mb" in xl else ""
        lines += ["", f"## SDXL: sdkit ({xl['dtype']}, VAE decode: {xl.get('vae_decode', 'not run')}) vs bare "
                      f"StableDiffusionXLPipeline", "",
                  f"{xl['model']} (random weights, {xl['unet_params'] / 1e6:,.1f}M-parameter UNet), {xl['steps']} "
                  f"{xl['scheduler']} steps at {xl['size']}², seconds per image, median of {plan['xl_reps']} interleaved "
                  f"runs; peak memory as {xl['memory_kind']}{resident}. Built in {xl['build_s']:.0f} s, both "
                  f"pipelines loaded in {xl['load_s']:.0f} s.", "",
                  "| batch | sdkit s/image | bare s/image | sdkit / bare | identical | peak MB sdkit | peak MB bare |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for b, d in xl["batches"].items():
            lines.append(f"| {b} | {d['s_per_image']['sdkit']['median']:.4g} | {d['s_per_image']['bare']['median']:.4g} | "
                         f"{d['ratio']['median']:.4f} | {d['pixels']['identical']} | {d['peak_mb']['sdkit']:.0f} | "
                         f"{d['peak_mb']['bare']:.0f} |")
        if "vae" in xl:
            v = xl["vae"]
            lines += ["", f"One {xl['size']}² VAE decode: fp32 (the upcast) {v['s_per_image']['float32']['median']:.4g} s, "
                          f"fp16 (an fp16-fix VAE's dtype) {v['s_per_image']['float16']['median']:.4g} s "
                          f"({v['fp32_over_fp16']['median']:.3g}x); output finite: {v['finite']} (random weights: "
                          "timing only, fp16 safety needs the real fixed VAE)."]
        for why in xl["skipped"]:
            lines += ["", f"Skipped: {why}."]
    for name, s in result["sections"].items():
        if s["status"] == "failed":
            lines += ["", f"## {name} failed", "", "```", s["traceback"].rstrip(), "```"]
    return "\n".join(lines) + "\n"


def write(result: dict, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / "gpu_check.json", out / "gpu_check.md"
    js.write_text(json.dumps(result, indent=1, default=str))
    md.write_text(markdown(result))
    return js, md


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    ap.add_argument("--dry-run", action="store_true", help="the same check on the CPU with sdkit's tiny models")
    ap.add_argument("--budget", type=float, default=420, help="seconds for the whole check (default 420: 8 minutes "
                    "with the wheel install and a margin)")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--compile", action="store_true", help="dry run: include torch.compile (a minute or more on a CPU)")
    args = ap.parse_args(argv)
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in wanted if s not in SECTIONS]
    if bad:
        ap.error(f"--only {','.join(bad)}: sections are {','.join(SECTIONS)}")
    if args.budget <= 0:
        ap.error(f"--budget {args.budget:g}: must be > 0 seconds")
    import sdkit.scoring.scorers  # noqa: F401  (first: sets XLA_PYTHON_CLIENT_PREALLOCATE=false before JAX starts)
    import torch

    plan = Plan(**DRY) if args.dry_run else Plan()
    if args.compile:
        plan = dataclasses.replace(plan, compile=True)
    if not plan.dry_run and not torch.cuda.is_available():
        ap.error(f"torch {torch.__version__} sees no CUDA GPU; use --dry-run on a CPU")
    if plan.threads:
        torch.set_num_threads(plan.threads)
    import warnings

    warnings.filterwarnings("ignore", message=".*torchvision.*")
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    result = run(plan, args.out, args.budget, [s for s in SECTIONS if s in wanted])
    print(markdown(result))
    failed = [n for n, s in result["sections"].items() if s["status"] == "failed"]
    print(f"wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}"
          + (f"; failed: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model here is built locally; the GPU machine has no network
    sys.exit(main())
