"""Device defaults: one denoising step at SD 1.5 size, sdkit's CPU default vs diffusers' fp32 default.

A step is one UNet call on the classifier-free-guidance pair (batch 2, 77 text
tokens). The variants show where the time goes: bf16 weights and activations,
channels_last, per-sample UNet calls (sdkit's batch invariance), fused QKV. A
bf16 GEMM runs in the same interleaved loop, so "share of GEMM peak" is a ratio
measured side by side too. Correctness: each variant's noise prediction vs
fp32, and the PSNR of whole images from the same seed (sdkit default vs fp32).
"""

from __future__ import annotations

import numpy as np
import torch

from sdkit import generate, load_pipeline

from .models import model_path
from .report import compare, ratio, table
from .timing import interleaved, summary

PROMPT = "a photograph of a red horse in a field"
DIFFUSERS = "diffusers default (fp32)"
SDKIT = "sdkit default"


def _per_sample(forward, x, t, e):
    return torch.cat([forward(x[i:i + 1], t[i:i + 1], e[i:i + 1], return_dict=False)[0] for i in range(len(x))])


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


# (name, dtype, channels_last, per-sample UNet, fused QKV) per device type; the fp32 baseline and
# sdkit's own default are always measured too.
VARIANTS = {
    "cpu": [("bf16, batched", torch.bfloat16, False, False, False),
            ("bf16, per-sample", torch.bfloat16, False, True, False),
            ("bf16 + channels_last, batched", torch.bfloat16, True, False, False),
            ("bf16 + channels_last, per-sample", torch.bfloat16, True, True, False),
            ("bf16 + channels_last + fused QKV, batched", torch.bfloat16, True, False, True)],
    "cuda": [("fp16, batched", torch.float16, False, False, False),
             ("fp16 + channels_last, batched", torch.float16, True, False, False),
             ("fp16 + fused QKV, batched", torch.float16, False, False, True),
             ("bf16, batched", torch.bfloat16, False, False, False)],
}


def _is_channels_last(unet) -> bool:
    w = unet.conv_in.weight
    return w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()


def step_cases(path, size: int, sdkit_pipe, device: str):
    """Callables for one CFG UNet step per variant, and the fp32 reference UNet."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import FusedAttnProcessor2_0

    h = size // 8
    g = torch.Generator().manual_seed(0)
    x32 = torch.randn(2, 4, h, h, generator=g).to(device)
    e32 = torch.randn(2, 77, sdkit_pipe.unet.config.cross_attention_dim, generator=g).to(device)
    t = torch.tensor([500, 500], device=device)
    ref = UNet2DConditionModel.from_pretrained(path / "unet").eval().to(device)  # from_pretrained's default: fp32
    sd_unet = sdkit_pipe.unet
    # sdkit's own UNet, without its per-sample wrapper, serves the variant with its dtype and layout.
    unets = {(sd_unet.dtype, _is_channels_last(sd_unet)): (sd_unet, getattr(sd_unet.forward, "__wrapped__", sd_unet.forward))}
    plain_procs = {}

    def unet_for(dtype, cl):
        if (dtype, cl) not in unets:
            u = UNet2DConditionModel.from_pretrained(path / "unet", dtype=dtype).eval().to(device)
            if cl:
                u = u.to(memory_format=torch.channels_last)
            unets[(dtype, cl)] = (u, u.forward)
        return unets[(dtype, cl)]

    def case(dtype, cl, per_sample, fused):
        unet, fwd = unet_for(dtype, cl)
        x, e = x32.to(dtype), e32.to(dtype)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        call = (lambda: _per_sample(fwd, x, t, e)) if per_sample else (lambda: fwd(x, t, e, return_dict=False)[0])
        if not fused:
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
    cases = {DIFFUSERS: lambda: ref(x32, t, e32, return_dict=False)[0],
             SDKIT: lambda: sd_unet(x32.to(sd_dtype), t, e32.to(sd_dtype), return_dict=False)[0]}
    sd_variant = (sd_dtype, _is_channels_last(sd_unet), bool(getattr(sd_unet, "_sdkit_per_sample", False)), False)
    for name, *variant in VARIANTS["cuda" if device.startswith("cuda") else "cpu"]:
        if tuple(variant) != sd_variant:  # that one is measured as sdkit's default
            cases[name] = case(*variant)
    return cases, ref


def run(cfg) -> dict:
    from diffusers import StableDiffusionPipeline

    path = model_path(cfg.big_model)
    sdkit_pipe = load_pipeline(str(path), device=cfg.device)
    device = sdkit_pipe._sdkit["device"]
    cases, ref = step_cases(path, cfg.dtype_size, sdkit_pipe, device)
    low = torch.float16 if device.startswith("cuda") else torch.bfloat16  # the GEMM peak that matters here

    # Correctness of one step: relative L2 error of the noise prediction vs fp32.
    with torch.inference_mode():
        outs = {k: f().float() for k, f in cases.items()}
        flops = count_flops(cases[SDKIT])  # the same FLOPs as fp32 (per-sample calls too), counted faster
        n = cfg.gemm_n
        a = torch.randn(n, n, device=device, dtype=low)
        b = torch.randn(n, n, device=device, dtype=low)
        a32, b32 = a.float(), b.float()
        gemm_reps = max(1, round(cfg.gemm_flops / (2 * n**3)))  # long enough to time, short next to a step
        gemm = f"GEMM {str(low).replace('torch.', '')}"
        cases[gemm] = lambda: [a @ b for _ in range(gemm_reps)]
        cases["GEMM fp32"] = lambda: [a32 @ b32 for _ in range(max(1, gemm_reps // 4))]
        times = interleaved(cases, reps=cfg.dtype_reps, warmup=0)  # warmed up by the correctness pass
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

    info = sdkit_pipe._sdkit
    per_sample = bool(getattr(sdkit_pipe.unet, "_sdkit_per_sample", False))
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
    rows = [[k, fmt(tflops[k]), f"{rel[k]:.2e}"] for k in tflops]
    rows += [[k, fmt([gemm_flops[k] / t / 1e12 for t in times[k]]), "–"] for k in gemm_flops]
    return {
        "title": f"3. Device defaults: one denoising step on {device}, sdkit's default vs diffusers' fp32",
        "setup": (f"{cfg.big_model} UNet, one CFG step (batch 2) at {cfg.dtype_size}², {flops / 1e12:.3g} TFLOP "
                  f"(torch FlopCounterMode); sdkit default = `load_pipeline(device={device!r})`: "
                  f"{info['dtype']}, channels_last {_is_channels_last(sdkit_pipe.unet)}, per-sample UNet {per_sample}. {gemm} {n}×{n} ×{gemm_reps} in the same loop. "
                  f"PSNR: {len(seeds)} images, {cfg.psnr_steps} DDIM steps at {cfg.psnr_size}², same seeds."),
        "times": summary(times),
        "ratios": ratios_,
        "tables": [table(["case", "TFLOP/s median (spread)", "rel. L2 error vs fp32 (one step)"], rows),
                   table(["image PSNR vs diffusers fp32, same seed (dB)", "value"],
                         [[f"seed {s}", p] for s, p in zip(seeds, psnrs)])],
        "data": {"flops": flops, "rel_error": rel, "psnr": psnrs, "tflops": tflops, "gemm_peak_flops_per_s": gemm_peak,
                 "sdkit_dtype": info["dtype"], "sdkit_per_sample": per_sample},
    }
