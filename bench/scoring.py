"""Scoring: sdkit's Flax and PyTorch CLIP scorers vs transformers' CLIPModel used directly, images/s.

ViT-B/32 shapes (openai/clip-vit-base-patch32), random weights, 512x512 PIL
images (what SD 1.5 makes) against one prompt, as when ranking N candidates.
Everything runs in one subprocess started with two simulated JAX CPU devices
(`--xla_force_host_platform_device_count=2`, which must be set before JAX
starts), so "1 vs 2 devices" is interleaved with the rest. The model-only
cases take preprocessed pixels and show how much of each scorer is the model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .report import compare, table
from .timing import interleaved, summary

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a photograph of a red horse in a field"
TRANSFORMERS = "transformers CLIPModel + CLIPProcessor"
FLAX1, FLAX2 = "sdkit flax scorer, 1 device", "sdkit flax scorer, 2 devices"


def _images(n: int, size: int = 512):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def image_size(model: str) -> int:
    return 512 if model == "b32" else 64  # SD 1.5's output; small for the smoke run


def child(model: str, n_images: int, batch: int, reps: int) -> dict:
    """Runs in the subprocess (XLA_FLAGS already set): every case interleaved, seconds per call."""
    import jax
    import numpy as np
    import torch
    from transformers import CLIPModel, CLIPProcessor

    from sdkit.scoring.flax.weights import load_flax_clip
    from sdkit.scoring.preprocess import preprocess
    from sdkit.scoring.scorers import load_scorer

    from .models import clip_b32_path, tiny_clip

    path = clip_b32_path() if model == "b32" else tiny_clip()
    images = _images(n_images, image_size(model))
    devices = jax.devices()
    cases, first_call = {}, {}

    model_t = CLIPModel.from_pretrained(path, use_safetensors=True).eval()
    processor = CLIPProcessor.from_pretrained(path)

    def transformers_direct():
        out = []
        with torch.inference_mode():
            for a in range(0, len(images), batch):
                inputs = processor(text=[PROMPT], images=images[a:a + batch], return_tensors="pt", padding=True)
                out.append(model_t(**inputs).logits_per_image[:, 0])
        return torch.cat(out).numpy()

    cases[TRANSFORMERS] = transformers_direct
    scorers = {
        "sdkit torch scorer": load_scorer("torch", path, device="cpu", batch_size=batch),
        FLAX1: load_scorer("flax", path, devices=devices[:1], batch_size=batch),
        "sdkit flax scorer bf16, 1 device": load_scorer("flax", path, devices=devices[:1], batch_size=batch,
                                                        dtype="bfloat16"),
    }
    if len(devices) > 1:
        scorers[FLAX2] = load_scorer("flax", path, devices=devices[:2], batch_size=batch // 2)
    for name, scorer in scorers.items():
        cases[name] = lambda s=scorer: s(images, PROMPT)
    # The model alone, on preprocessed pixels.
    pixels = preprocess(images[:batch], scorers[FLAX1].image_config)
    flax_clip = load_flax_clip(path)
    pix_t = torch.from_numpy(pixels)

    def torch_model():
        with torch.inference_mode():
            return model_t.get_image_features(pixel_values=pix_t)

    cases[f"model only: torch, batch {batch}"] = torch_model
    cases[f"model only: flax, batch {batch}"] = lambda: flax_clip.get_image_features(pixels).block_until_ready()
    cases[f"preprocess only, batch {batch}"] = lambda: preprocess(images[:batch], scorers[FLAX1].image_config)
    # CLIP is mostly fp32 GEMMs: the two libraries' GEMM on the same matrices explains the model-only ratio.
    g = 2048 if model == "b32" else 256
    a_np = np.random.default_rng(0).standard_normal((g, g), dtype=np.float32)
    a_t, a_j = torch.from_numpy(a_np), jax.device_put(a_np, devices[0])
    gemm_xla = jax.jit(lambda x: x @ x)
    cases[f"GEMM fp32 {g}², torch"] = lambda: a_t @ a_t
    cases[f"GEMM fp32 {g}², XLA"] = lambda: gemm_xla(a_j).block_until_ready()

    for name, fn in cases.items():  # first call: includes XLA compilation for the Flax cases
        t0 = time.perf_counter()
        fn()
        first_call[name] = time.perf_counter() - t0
    ref = scorers["sdkit torch scorer"](images, PROMPT).logits
    agree = {name: float(np.max(np.abs(s(images, PROMPT).logits - ref))) for name, s in scorers.items()}
    agree[TRANSFORMERS] = float(np.max(np.abs(transformers_direct() - ref)))
    times = interleaved(cases, reps=reps, warmup=0)
    counts = {name: (batch if name.startswith(("model only", "preprocess only")) else 1 if name.startswith("GEMM")
                     else n_images) for name in cases}
    g64 = a_np.astype(np.float64) @ a_np.astype(np.float64)
    gemm_error = {"torch": float(np.abs((a_t @ a_t).numpy() - g64).max()),
                  "XLA": float(np.abs(np.asarray(gemm_xla(a_j)) - g64).max())}
    return {"times": times, "first_call": first_call, "max_abs_logit_diff_vs_torch_scorer": agree,
            "images": counts, "devices": len(devices), "gemm_n": g, "gemm_max_abs_error_vs_fp64": gemm_error, "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "torch_threads": torch.get_num_threads()}


def run(cfg) -> dict:
    env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip(),
               PYTHONWARNINGS="ignore", TRANSFORMERS_VERBOSITY="error")
    if cfg.threads:
        env["OMP_NUM_THREADS"] = str(cfg.threads)
    args = [sys.executable, "-m", "bench.scoring", cfg.scoring_model, str(cfg.scoring_images), str(cfg.scoring_batch),
            str(cfg.scoring_reps)]
    p = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    if p.returncode != 0:
        raise RuntimeError(f"scoring child failed:\n{p.stderr[-3000:]}")
    d = json.loads(p.stdout.strip().splitlines()[-1])
    times = d["times"]
    per_image = {k: [t / d["images"][k] for t in ts] for k, ts in times.items()}
    ratios_ = [compare("Flax scorer vs transformers CLIPModel", per_image, TRANSFORMERS, FLAX1,
                       what=f"{TRANSFORMERS} / {FLAX1} (time per image)", target=(">=", 1.0)),
               compare("PyTorch scorer vs transformers CLIPModel", per_image, TRANSFORMERS, "sdkit torch scorer",
                       what=f"{TRANSFORMERS} / sdkit torch scorer (time per image)"),
               compare("Flax bf16 vs fp32 scorer", per_image, FLAX1, "sdkit flax scorer bf16, 1 device",
                       what="fp32 / bf16 (time per image)")]
    if FLAX2 in times:
        ratios_.append(compare("Flax scorer, 2 vs 1 simulated devices", per_image, FLAX1, FLAX2,
                               what="1 device / 2 devices (time per image)"))
    mb = f"model only: flax, batch {cfg.scoring_batch}"
    ratios_.append(compare("model only: Flax vs PyTorch", per_image, f"model only: torch, batch {cfg.scoring_batch}", mb,
                           what="torch / flax (time per image)"))
    g = d["gemm_n"]
    ratios_.append(compare("fp32 GEMM: XLA vs torch", times, f"GEMM fp32 {g}², torch", f"GEMM fp32 {g}², XLA",
                           what=f"torch / XLA (time, {g}×{g} fp32 matmul)"))
    gemm_tflops = {k: [2 * g**3 / t / 1e12 for t in ts] for k, ts in times.items() if k.startswith("GEMM")}
    ips = {k: [1 / t for t in ts] for k, ts in per_image.items() if not k.startswith("GEMM")}
    fmt = lambda xs: f"{sorted(xs)[len(xs) // 2]:.3g} ({min(xs):.3g}–{max(xs):.3g})"  # noqa: E731
    rows = [[k, fmt(ips[k]), f"{d['first_call'][k]:.3g}", d["max_abs_logit_diff_vs_torch_scorer"].get(k, "–")]
            for k in ips]
    gemm_rows = [[k, fmt(v), d["gemm_max_abs_error_vs_fp64"][k.rsplit(", ", 1)[1]]] for k, v in gemm_tflops.items()]
    return {
        "title": "4. Scoring: Flax vs PyTorch CLIP, images per second",
        "setup": (f"CLIP {'ViT-B/32' if cfg.scoring_model == 'b32' else 'tiny'} shapes, random weights, "
                  f"{cfg.scoring_images} images of {image_size(cfg.scoring_model)}² against one prompt, batch {cfg.scoring_batch} per forward pass "
                  f"(split over the devices for 2 devices), fp32 unless marked; one subprocess with XLA_FLAGS "
                  f"`{d['xla_flags']}`, torch threads {d['torch_threads']}."),
        "times": summary({k: v for k, v in per_image.items() if not k.startswith("GEMM")}),
        "unit": "s per image",
        "ratios": ratios_,
        "tables": [table(["case", "images/s median (spread)", "first call (s, incl. compile)",
                          "max abs(logit − torch scorer)"], rows),
                   table(["fp32 GEMM, one thread pool each", "TFLOP/s median (spread)", "max abs error vs fp64"], gemm_rows)],
        "data": d,
    }


if __name__ == "__main__":
    print(json.dumps(child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))))
