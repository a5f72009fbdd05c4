"""Device defaults: one denoising step at SD 1.5 size, sdkit's CPU default vs diffusers' fp32 default.

A step is one UNet call on the classifier-free-guidance pair (batch 2, 77 text
tokens). SDXL's UNet (2.6B, 1024²) gets the same two cases, through the same code,
in the same tables. The variants show where the time goes: bf16 weights and activations,
channels_last, one UNet call per row (splitting the CFG pair), fused QKV. A
bf16 GEMM runs in the same interleaved loop, so "share of GEMM peak" is a ratio
measured side by side too. Correctness: each variant's noise prediction vs
fp32, and the PSNR of whole images from the same seed (sdkit default vs fp32).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch

from sdkit import generate, load_pipeline
from sdkit.load.invariance import is_batch_invariant
from sdkit.load.state import pipeline_info

from .models import model_path
from .report import compare, ratio, table
from .timing import interleaved, summary

PROMPT = "a photograph of a red horse in a field"
DIFFUSERS = "diffusers default (fp32)"
SDKIT = "sdkit default"


def _per_sample(forward, x, t, e, **kw):
    one = lambda v, i: {k: one(u, i) for k, u in v.items()} if isinstance(v, dict) else v[i:i + 1]  # noqa: E731
    return torch.cat([forward(x[i:i + 1], t[i:i + 1], e[i:i + 1], return_dict=False, **one(kw, i))[0]
                      for i in range(len(x))])


def step_inputs(unet, size: int, device: str):
    """One classifier-free-guidance step's UNet inputs in fp32, as diffusers' pipelines build them: the latent
    twice (`cat([latents] * 2)`, which sdkit's row wrapper keeps in one call), an unconditional and a conditional
    text embedding, and for SDXL (`text_time`) the pooled embeddings and the size/crop ids of a `size`² image."""
    h = size // 8
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, unet.config.in_channels, h, h, generator=g).repeat(2, 1, 1, 1)
    e = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    kw = {}
    if unet.config.addition_embed_type == "text_time":
        time_ids = torch.tensor([[size, size, 0, 0, size, size]] * 2, dtype=torch.float32)  # original, crop, target
        pooled = unet.config.projection_class_embeddings_input_dim - time_ids.shape[1] * unet.config.addition_time_embed_dim
        kw = {"added_cond_kwargs": {"text_embeds": torch.randn(2, pooled, generator=g), "time_ids": time_ids}}
    return x.to(device), e.to(device), torch.tensor([500, 500], device=device), _cast(kw, torch.float32, device)


def _cast(v, dtype, device=None):
    """Floating tensors of `v` (nested dicts of them) in `dtype`, as the pipeline in that dtype would pass them."""
    if isinstance(v, dict):
        return {k: _cast(u, dtype, device) for k, u in v.items()}
    return v.to(device=device, dtype=dtype)


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def psnr(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mse = np.mean((a - b) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


OP_KINDS = {"attention": ("scaled_dot_product", "softmax", "bmm"), "convolution": ("convolution",),
            "linear layers": ("addmm", "aten::mm")}


def time_by_op(fn) -> dict[str, float]:
    """Seconds of one call by kind of op: self CPU time from torch.profiler (CPU only)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    out = dict.fromkeys([*OP_KINDS, "everything else"], 0.0)
    for ev in prof.key_averages():
        kind = next((k for k, names in OP_KINDS.items() if any(n in ev.key for n in names)), "everything else")
        out[kind] += ev.self_cpu_time_total / 1e6
    return out


@dataclass(frozen=True)
class Variant:
    name: str
    dtype: torch.dtype
    channels_last: bool = False
    per_sample: bool = False  # one UNet call per row: splits the CFG pair (sdkit keeps each pair in one call)
    fused_qkv: bool = False
    compiled: bool = False  # torch.compile (inductor, frozen weights); its first call is the compile
    extra: bool = False  # only with --all-variants: measured once, not worth every run


BF, HALF = torch.bfloat16, torch.float16
# The fp32 baseline and sdkit's own default are always measured too.
VARIANTS = {
    "cpu": [Variant("fp32, CFG pair split (sdkit's CPU default before bench/)", torch.float32, per_sample=True),
            Variant("fp32 + channels_last", torch.float32, channels_last=True),
            Variant("bf16", BF),
            Variant("bf16 + channels_last", BF, channels_last=True),
            Variant("bf16 + channels_last + torch.compile", BF, channels_last=True, compiled=True),
            Variant("bf16 + channels_last, CFG pair split (one row per call)", BF, channels_last=True, per_sample=True),
            Variant("bf16 + channels_last + fused QKV", BF, channels_last=True, fused_qkv=True, extra=True)],
    "cuda": [Variant("fp16, batched", HALF),
             Variant("fp16 + channels_last, batched", HALF, channels_last=True),
             Variant("bf16, batched", BF),
             Variant("fp16 + fused QKV, batched", HALF, fused_qkv=True, extra=True),
             Variant("fp16 + torch.compile, batched", HALF, compiled=True, extra=True)],
}


def _is_channels_last(unet) -> bool:
    w = unet.conv_in.weight
    return w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()


def step_cases(path, size: int, sdkit_pipe, device: str, all_variants: bool = False, compile: bool = True,
               variants: bool = True):
    """Callables for one CFG UNet step per variant (`variants=False`: diffusers' and sdkit's defaults only), and
    the fp32 reference UNet."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import FusedAttnProcessor2_0

    ref = UNet2DConditionModel.from_pretrained(path / "unet").eval().to(device)  # from_pretrained's default: fp32
    x32, e32, t, kw32 = step_inputs(ref, size, device)
    sd_unet = sdkit_pipe.unet
    # sdkit's own UNet, without its per-candidate wrapper, serves the variant with its dtype and layout.
    batched = getattr(sd_unet.forward, "__wrapped__", sd_unet.forward)
    unets = {(sd_unet.dtype, _is_channels_last(sd_unet)): (sd_unet, batched)}
    plain_procs = {}

    def unet_for(dtype, cl):
        if (dtype, cl) not in unets:
            u = UNet2DConditionModel.from_pretrained(path / "unet", dtype=dtype).eval().to(device)
            if cl:
                u = u.to(memory_format=torch.channels_last)
            unets[(dtype, cl)] = (u, u.forward)
        return unets[(dtype, cl)]

    def case(v: Variant):
        unet, fwd = unet_for(v.dtype, v.channels_last)
        x, e, kw = x32.to(v.dtype), e32.to(v.dtype), _cast(kw32, v.dtype)
        if v.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if v.compiled:
            import torch._inductor.config as inductor

            compiled = torch.compile(unet)  # a wrapper: `unet` itself stays eager for the other cases

            def fwd(*a, _c=compiled, **k):
                with inductor.patch(freezing=True):  # weights as constants: oneDNN prepacks them once
                    return _c(*a, **k)
        call = (lambda: _per_sample(fwd, x, t, e, **kw)) if v.per_sample else \
            (lambda: fwd(x, t, e, return_dict=False, **kw)[0])
        if not v.fused_qkv:
            return call
        if id(unet) not in plain_procs:
            plain_procs[id(unet)] = unet.attn_processors
            unet.fuse_qkv_projections()  # adds the fused weights; the plain processors ignore them
            unet.set_attn_processor(dict(plain_procs[id(unet)]))
        fused_procs = {k: FusedAttnProcessor2_0() for k in plain_procs[id(unet)]}

        def run_fused():
            unet.set_attn_processor(dict(fused_procs))
            try:
                return call()
            finally:
                unet.set_attn_processor(dict(plain_procs[id(unet)]))
        return run_fused

    sd_dtype = sd_unet.dtype
    kw_sd = _cast(kw32, sd_dtype)
    cases = {DIFFUSERS: lambda: ref(x32, t, e32, return_dict=False, **kw32)[0],
             SDKIT: lambda: sd_unet(x32.to(sd_dtype), t, e32.to(sd_dtype), return_dict=False, **kw_sd)[0]}
    if not variants:
        return cases, ref
    # One candidate's CFG step is one batch-2 call with or without sdkit's per-candidate wrapper.
    sd_variant = Variant(SDKIT, sd_dtype, _is_channels_last(sd_unet))
    for v in VARIANTS["cuda" if device.startswith("cuda") else "cpu"]:
        if (v.extra and not all_variants) or (v.compiled and not compile):
            continue
        if dataclasses.replace(v, name=SDKIT) != sd_variant:  # that one is measured as sdkit's default
            cases[v.name] = case(v)
    return cases, ref


def run(cfg) -> dict:
    out, rows = _sd15(cfg)
    if cfg.xl_model:  # after SD 1.5's models are freed: the SDXL pair holds ~17 GB in fp32 + bf16
        rows += _add_xl(out, cfg)
    out["tables"].insert(0, table(["case", "TFLOP/s median (spread)", "rel. L2 error vs fp32 (one step)",
                                   "first call (s, incl. compile)"], rows))
    return out


def _sd15(cfg) -> tuple[dict, list]:
    """SD 1.5's step, every variant, and whole images: the section's dict and its TFLOP/s table's rows."""
    from diffusers import StableDiffusionPipeline

    path = model_path(cfg.big_model)
    sdkit_pipe = load_pipeline(str(path), device=cfg.device)
    device = pipeline_info(sdkit_pipe).device
    cases, ref = step_cases(path, cfg.dtype_size, sdkit_pipe, device, cfg.all_variants, cfg.compile)
    low = torch.float16 if device.startswith("cuda") else torch.bfloat16  # the GEMM peak that matters here

    # Correctness of one step: relative L2 error of the noise prediction vs fp32.
    with torch.inference_mode():
        outs, first_call = {}, {}
        for k, f in cases.items():  # also the warm-up: oneDNN primitives, torch.compile
            t0 = time.perf_counter()
            outs[k] = f().float()
            first_call[k] = time.perf_counter() - t0
        flops = count_flops(cases[SDKIT])  # the same FLOPs as fp32 (per-row calls too), counted faster
        n = cfg.gemm_n
        a = torch.randn(n, n, device=device, dtype=low)
        b = torch.randn(n, n, device=device, dtype=low)
        a32, b32 = a.float(), b.float()
        gemm_reps = max(1, round(cfg.gemm_flops / (2 * n**3)))  # long enough to time, short next to a step
        gemm = f"GEMM {str(low).replace('torch.', '')}"
        cases[gemm] = lambda: [a @ b for _ in range(gemm_reps)]
        cases["GEMM fp32"] = lambda: [a32 @ b32 for _ in range(max(1, gemm_reps // 4))]
        times = interleaved(cases, reps=cfg.dtype_reps, warmup=0)  # warmed up by the correctness pass
        # Where a step's time goes, fp32 vs sdkit's default: shows which ops the low precision speeds up.
        by_op = {k: time_by_op(cases[k]) for k in (DIFFUSERS, SDKIT)} if device == "cpu" else {}
    rel = {k: float((o - outs[DIFFUSERS]).norm() / outs[DIFFUSERS].norm()) for k, o in outs.items()}
    gemm_flops = {gemm: 2 * n**3 * gemm_reps, "GEMM fp32": 2 * n**3 * max(1, gemm_reps // 4)}
    gemm_peak = [gemm_flops[gemm] / t for t in times[gemm]]
    tflops = {k: [flops / t / 1e12 for t in ts] for k, ts in times.items() if not k.startswith("GEMM")}

    # Whole images from the same seed: sdkit's default pipeline vs diffusers' default fp32 pipeline.
    # dtype given explicitly: transformers 5 would otherwise take it from config.json, which the tiny
    # model's fp16 variant overwrote.
    ref_pipe = StableDiffusionPipeline.from_pretrained(path, unet=ref, use_safetensors=True, dtype=torch.float32)
    ref_pipe.to(device)
    ref_pipe.set_progress_bar_config(disable=True)
    kw = dict(num_inference_steps=cfg.psnr_steps, guidance_scale=7.5, height=cfg.psnr_size, width=cfg.psnr_size)
    seeds = [0, 1]
    sd_images = generate(sdkit_pipe, PROMPT, n=len(seeds), seeds=seeds, progress=False, **kw).images
    ref_images = [ref_pipe(PROMPT, generator=torch.Generator("cpu").manual_seed(s), **kw).images[0] for s in seeds]
    psnrs = [psnr(x, y) for x, y in zip(sd_images, ref_images)]
    del ref_pipe, ref

    info = pipeline_info(sdkit_pipe)
    per_sample = is_batch_invariant(sdkit_pipe)
    ratios_ = [compare(f"{device} default speed-up, {cfg.dtype_size}² step", times, DIFFUSERS, SDKIT,
                       what=f"{DIFFUSERS} / {SDKIT} (time)", target=(">=", 2.5))]
    for k in cases:
        if k not in (DIFFUSERS, SDKIT) and not k.startswith("GEMM"):
            ratios_.append(compare(f"speed-up: {k}", times, DIFFUSERS, k, what=f"{DIFFUSERS} / {k} (time)"))
    share = lambda k: [f * 1e12 / p for f, p in zip(tflops[k], gemm_peak)]  # noqa: E731  per repetition
    ratios_.append(ratio(f"share of {gemm} peak: {SDKIT}", share(SDKIT), what=f"UNet FLOP/s / {gemm} FLOP/s",
                         target=(">=", 0.5)))
    best_k = max(tflops, key=lambda k: np.median(tflops[k]))
    if best_k != SDKIT:
        ratios_.append(ratio(f"share of {gemm} peak: {best_k}", share(best_k), what=f"UNet FLOP/s / {gemm} FLOP/s",
                             note="the fastest variant"))
    fmt = lambda xs: f"{np.median(xs):.3g} ({min(xs):.3g}–{max(xs):.3g})"  # noqa: E731
    rows = [[k, fmt(tflops[k]), f"{rel[k]:.2e}", f"{first_call[k]:.3g}"] for k in tflops]
    rows += [[k, fmt([gemm_flops[k] / t / 1e12 for t in times[k]]), "–", "–"] for k in gemm_flops]
    tables_by_op = []
    if by_op:
        f32, sd = by_op[DIFFUSERS], by_op[SDKIT]
        tables_by_op = [table(["op kind (one step, self CPU time, torch.profiler)", f"{DIFFUSERS} (s)", f"{SDKIT} (s)",
                               "speed-up"],
                              [[k, f32[k], sd[k], f"{f32[k] / sd[k]:.2f}×" if sd[k] else "–"] for k in f32]
                              + [["total", sum(f32.values()), sum(sd.values()),
                                  f"{sum(f32.values()) / sum(sd.values()):.2f}×"]])]
    return {
        "title": f"3. Device defaults: one denoising step on {device}, sdkit's default vs diffusers' fp32",
        "setup": (f"{cfg.big_model} UNet, one CFG step (batch 2) at {cfg.dtype_size}², {flops / 1e12:.3g} TFLOP "
                  f"(torch FlopCounterMode); sdkit default = `load_pipeline(device={device!r})`: "
                  f"{info.dtype}, channels_last {_is_channels_last(sdkit_pipe.unet)}, per-candidate UNet {per_sample}. {gemm} {n}×{n} ×{gemm_reps} in the same loop. "
                  f"PSNR: {len(seeds)} images, {cfg.psnr_steps} DDIM steps at {cfg.psnr_size}², same seeds."),
        "times": summary(times),
        "ratios": ratios_,
        "tables": [*tables_by_op,
                   table(["image PSNR vs diffusers fp32, same seed (dB)", "value"],
                         [[f"seed {s}", p] for s, p in zip(seeds, psnrs)])],
        "data": {"flops": flops, "rel_error": rel, "psnr": psnrs, "tflops": tflops, "gemm_peak_flops_per_s": gemm_peak,
                 "sdkit_dtype": info.dtype, "sdkit_per_sample": per_sample, "first_call": first_call,
                 "seconds_by_op": by_op},
    }, rows


def _add_xl(out: dict, cfg) -> list:
    """SDXL's UNet, one CFG step at `cfg.xl_size`: diffusers' fp32 default vs sdkit's default, the same two cases
    and code as SD 1.5's, added to `out`'s times and ratios; returns its TFLOP/s table rows."""
    from sdkit.load.pipeline import clear_cache

    clear_cache()  # SD 1.5's pipeline
    path = model_path(cfg.xl_model)
    sdkit_pipe = load_pipeline(str(path), device=cfg.device)
    device = pipeline_info(sdkit_pipe).device
    cases, ref = step_cases(path, cfg.xl_size, sdkit_pipe, device, variants=False)
    tag = f"{cfg.xl_model} {cfg.xl_size}²"
    d, s = f"{tag}: {DIFFUSERS}", f"{tag}: {SDKIT}"
    cases = {d: cases[DIFFUSERS], s: cases[SDKIT]}
    with torch.inference_mode():
        first_call, outs = {}, {}
        for k, f in cases.items():  # also the warm-up
            t0 = time.perf_counter()
            outs[k] = f().float()
            first_call[k] = time.perf_counter() - t0
        flops = count_flops(cases[s])  # one more sdkit step: ~1 min on 2 cores at 1024²
        times = interleaved(cases, reps=cfg.xl_reps, warmup=0)
    rel = float((outs[s] - outs[d]).norm() / outs[d].norm())
    info = pipeline_info(sdkit_pipe)
    default = (f"{info.dtype}, channels_last {_is_channels_last(sdkit_pipe.unet)}, per-candidate UNet "
               f"{is_batch_invariant(sdkit_pipe)}")
    params = sum(p.numel() for p in ref.parameters())
    del cases, ref, sdkit_pipe
    clear_cache()
    out["times"] |= summary(times)
    i = next(k for k, r in enumerate(out["ratios"]) if r["name"].startswith(f"{device} default speed-up")) + 1
    out["ratios"].insert(i, compare(f"{device} default speed-up, {tag} step", times, d, s,
                                    what=f"{DIFFUSERS} / {SDKIT} (time)"))
    out["setup"] += (f" {tag}: SDXL's UNet ({params / 1e6:,.1f}M parameters, text_time conditioning), one CFG step "
                     f"(batch 2) at {cfg.xl_size}², {flops / 1e12:.3g} TFLOP, the same two cases and code (sdkit default: "
                     f"{default}); {cfg.xl_reps} interleaved repetitions after a warm-up.")
    out["data"]["xl"] = {"model": cfg.xl_model, "size": cfg.xl_size, "params": params, "flops": flops,
                         "rel_error": rel, "first_call": first_call, "sdkit_dtype": info.dtype}
    fmt = lambda xs: f"{np.median(xs):.3g} ({min(xs):.3g}–{max(xs):.3g})"  # noqa: E731
    return [[k, fmt([flops / t / 1e12 for t in times[k]]), f"{0.0 if k == d else rel:.2e}", f"{first_call[k]:.3g}"]
            for k in (d, s)]
