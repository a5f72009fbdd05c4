"""Batching: N candidates through sdkit's default vs one pipeline call per image (the tutorials' loop).

All cases use the same loaded weights (sdkit's defaults for the device), so only
the batching differs. On the CPU sdkit runs the UNet one candidate (one CFG
pair) at a time by default (batch invariance, see sdkit/invariance.py); the
"batched UNet" cases switch that off for the duration of the call, to show what
it costs.
"""

from __future__ import annotations

import contextlib

import torch

from sdkit import generate, load_pipeline
from sdkit.load.devices import default_batch_size
from sdkit.load.invariance import is_batch_invariant
from sdkit.load.state import pipeline_info

from .models import model_path
from .report import compare
from .timing import interleaved, summary

PROMPT = "a photograph of a red horse in a field"


@contextlib.contextmanager
def batched_unet(pipe):
    """Undo sdkit's per-candidate UNet and VAE slicing while inside (diffusers' own behaviour)."""
    unet = pipe.unet
    wrapped = unet.__dict__.get("forward")
    if wrapped is None or not hasattr(wrapped, "__wrapped__"):
        yield
        return
    unet.forward = wrapped.__wrapped__
    pipe.vae.disable_slicing()
    try:
        yield
    finally:
        unet.forward = wrapped
        pipe.vae.enable_slicing()


def tutorial_loop(pipe, seeds, **kw):
    """One diffusers call per image, as in the diffusers tutorials."""
    return [pipe(PROMPT, generator=torch.Generator("cpu").manual_seed(s), **kw).images[0] for s in seeds]


def run(cfg) -> dict:
    pipe = load_pipeline(str(model_path(cfg.big_model)), device=cfg.device)
    n, bs = cfg.batching_n, default_batch_size(pipe.device)
    seeds = list(range(n))
    kw = dict(num_inference_steps=cfg.batching_steps, guidance_scale=7.5, height=cfg.batching_size,
              width=cfg.batching_size)

    def loop_batched():
        with batched_unet(pipe):
            return tutorial_loop(pipe, seeds, **kw)

    def sdkit_default():
        return generate(pipe, PROMPT, n=n, seeds=seeds, progress=False, **kw)

    def all_batched():
        with batched_unet(pipe):
            return generate(pipe, PROMPT, n=n, seeds=seeds, batch_size=n, progress=False, **kw)

    loop, default, full = "one call per image", f"sdkit default (batch {bs})", f"batch {n}, batched UNet"
    cases = {loop: loop_batched, default: sdkit_default, full: all_batched}
    per_sample = is_batch_invariant(pipe)
    if per_sample and n != bs:
        cases[f"batch {n}, per-candidate UNet"] = lambda: generate(pipe, PROMPT, n=n, seeds=seeds, batch_size=n,
                                                                progress=False, **kw)
    times = interleaved(cases, reps=cfg.reps)
    per_image = {k: [t / n for t in ts] for k, ts in times.items()}
    ratios_ = [compare("sdkit default vs one call per image", per_image, default, loop,
                       what=f"{default} / {loop} (time per image)",
                       note="below 1 means sdkit's default is faster per image"),
               compare(f"batching {n} (batched UNet) vs one call per image", per_image, full, loop,
                       what=f"{full} / {loop} (time per image)")]
    if per_sample:
        slow = default if n == bs else f"batch {n}, per-candidate UNet"
        ratios_.append(compare(f"cost of batch invariance at batch {n}", per_image, slow, full,
                               what=f"per-candidate / batched UNet, batch {n} (time)"))
    return {
        "title": "2. Batching: N candidates vs one call per image",
        "setup": (f"{cfg.big_model}, {n} candidates at {cfg.batching_size}², {cfg.batching_steps} DDIM steps, guidance 7.5, "
                  f"sdkit's {pipeline_info(pipe).device} defaults ({pipeline_info(pipe).dtype}, per-candidate UNet {per_sample}); "
                  f"times are per image."),
        "times": summary(per_image),
        "ratios": ratios_,
        "data": {"per_image": per_image, "default_batch_size": bs, "per_sample": per_sample},
    }
