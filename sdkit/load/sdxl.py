"""SDXL's own settings as sdkit records them: its conditioning (sizes, crop, the refiner's aesthetic scores,
how the VAE decoded) and the base -> refiner hand-off, checked before any denoising."""

from __future__ import annotations

import torch

from sdkit.load.invariance import adopt
from sdkit.load.schedulers import scheduler_name
from sdkit.load.state import pipeline_info


def sdxl_conditioning(pipe, height: int, width: int, pipe_kwargs: dict | None) -> dict:
    """SDXL's own conditioning as it ran, for the record (`{"sdxl": {...}}`; {} for SD 1.x/2.x): sizes and crop
    (diffusers' defaults made explicit), the refiner's aesthetic scores, and how the VAE decoded."""
    info = pipeline_info(pipe)
    if info.family == "sd":
        return {}
    kw = pipe_kwargs or {}
    rec = {"original_size": list(kw.get("original_size") or (height, width)),
           "crops_coords_top_left": list(kw.get("crops_coords_top_left") or (0, 0)),
           "target_size": list(kw.get("target_size") or (height, width))}
    for k in ("negative_original_size", "negative_crops_coords_top_left", "negative_target_size"):
        if kw.get(k) is not None:
            rec[k] = list(kw[k])
    if info.family == "sdxl-refiner":
        rec["aesthetic_score"] = float(kw.get("aesthetic_score", 6.0))
        rec["negative_aesthetic_score"] = float(kw.get("negative_aesthetic_score", 2.5))
    vae = getattr(pipe, "vae", None)
    upcast = vae is not None and vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    rec["vae"] = info.vae or "own"
    rec["vae_decode"] = "float32 (upcast: the VAE overflows in float16)" if upcast else str(
        getattr(vae, "dtype", "")).replace("torch.", "")
    return {"sdxl": rec}


def check_refiner(pipe, refiner, denoising_end) -> dict:
    """Refuse a hand-off that cannot run, before any denoising; what to record of one that can."""
    if refiner is None and denoising_end is None:
        return {}
    if refiner is None or denoising_end is None:
        raise ValueError(f"refiner={'given' if refiner is not None else None}, denoising_end={denoising_end!r}: give "
                         "both (e.g. refiner=load_pipeline('stabilityai/stable-diffusion-xl-refiner-1.0', "
                         "'image-to-image'), denoising_end=0.8), or neither")
    if isinstance(denoising_end, bool) or not isinstance(denoising_end, (int, float)) or not 0 < denoising_end < 1:
        raise ValueError(f"denoising_end={denoising_end!r}: the share of the schedule the base model denoises, "
                         "strictly between 0 and 1 (e.g. 0.8)")
    adopt(refiner)
    base, ref = pipeline_info(pipe), pipeline_info(refiner)
    if base.family != "sdxl" or base.task != "text-to-image":
        raise ValueError(f"a refiner finishes an SDXL base model's text-to-image latents; this pipeline is "
                         f"{base.family} {base.task!r}")
    if ref.family not in ("sdxl", "sdxl-refiner") or "Img2Img" not in type(refiner).__name__:
        raise ValueError(f"refiner: {type(refiner).__name__} ({ref.family}) cannot take latents; load an SDXL refiner "
                         "(or base) with task='image-to-image'")
    return {"refiner": {"model_id": ref.model_id, "revision": ref.revision, "scheduler": scheduler_name(refiner.scheduler),
                        "dtype": ref.dtype, "denoising_end": float(denoising_end),
                        **({"loras": [lora.record() for lora in ref.loras]} if ref.loras else {})}}
