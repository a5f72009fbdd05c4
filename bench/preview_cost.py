"""What one x0 preview costs, in UNet steps, on SD 1.5-shaped random models (512x512, fp32, CPU).

    .venv/bin/python bench/preview_cost.py                 # SD 1.5 shapes, 5 calls per case (first = warm-up)
    .venv/bin/python bench/preview_cost.py --repeats 9
    .venv/bin/python bench/preview_cost.py --dry-run       # sdkit's tiny models: structure only, seconds

Times, interleaved within each repetition (`bench.timing.interleaved`): one UNet step for one candidate
with classifier-free guidance (batch 2, as the pipeline calls it), one preview decode of that
candidate's latent with the SD 1.5 VAE and with a TAESD-shaped `AutoencoderTiny`, both through
`sdkit.search.previews.decode_previews`, and one CLIP score of one image with sdkit's torch scorer at
the default CLIP's shape (ViT-B/32). Speed does not depend on weight values, so random weights stand
in for the real checkpoints (`bench/models.py`). Writes bench/results/preview_cost.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `sdkit` and `bench` importable from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import describe  # noqa: E402
from bench.report import compare, ratio_table, times_table, write_results  # noqa: E402
from bench.timing import interleaved, summary  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a photograph of a red horse in a field"
UNET, VAE, TINY, CLIP = ("UNet step (CFG, batch 2)", "preview: AutoencoderKL decode", "preview: AutoencoderTiny decode",
                         "CLIP score, 1 image")
# madebyollin/taesd's config.json is diffusers' AutoencoderTiny defaults (64-channel blocks, encoder (1,3,3,3),
# decoder (3,3,3,1), 4 latent channels, scaling_factor 1.0); spelled out so a change of defaults cannot move it.
TAESD = dict(in_channels=3, out_channels=3, encoder_block_out_channels=(64, 64, 64, 64),
             decoder_block_out_channels=(64, 64, 64, 64), act_fn="relu", upsample_fn="nearest", latent_channels=4,
             upsampling_scaling_factor=2, num_encoder_blocks=(1, 3, 3, 3), num_decoder_blocks=(3, 3, 3, 1),
             latent_magnitude=3, latent_shift=0.5, force_upcast=False, scaling_factor=1.0, shift_factor=0.0)
DRY_TAESD = {**TAESD, "encoder_block_out_channels": (8,) * 4, "decoder_block_out_channels": (8,) * 4}


def load(dry_run: bool, seed: int = 0):
    """(unet, vae, tiny previewer, CLIP folder, height) for the SD 1.5 shapes, or sdkit's tiny models."""
    import torch
    from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel

    from bench.models import clip_b32_path, sd15_path, tiny_clip, tiny_path

    path = tiny_path() if dry_run else sd15_path(seed)
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", use_safetensors=True).eval()
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", use_safetensors=True).eval()
    torch.manual_seed(seed)
    tiny = AutoencoderTiny(**(DRY_TAESD if dry_run else TAESD)).eval()
    height = unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1)
    return unet, vae, tiny, tiny_clip() if dry_run else clip_b32_path(seed), height


def cases(unet, vae, tiny, clip: str | None, height: int) -> dict:
    """The timed calls, each as sdkit's search makes it for one candidate."""
    import torch

    from sdkit.search.previews import decode_previews

    g = torch.Generator().manual_seed(0)
    side = height // 2 ** (len(vae.config.block_out_channels) - 1)
    latents = torch.randn(1, unet.config.in_channels, side, side, generator=g)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)  # negative + positive prompt
    t = torch.tensor(500)

    def unet_step():
        with torch.no_grad():  # the pipeline's CFG: both halves in one call, then the guidance combine
            uncond, cond = unet(torch.cat([latents] * 2), t, encoder_hidden_states=text, return_dict=False)[0].chunk(2)
            return uncond + 7.5 * (cond - uncond)

    out = {UNET: unet_step, VAE: lambda: decode_previews(latents, vae), TINY: lambda: decode_previews(latents, tiny)}
    if clip is not None:
        from sdkit.scoring.scorers import load_scorer

        scorer = load_scorer("torch", clip, device="cpu", dtype=torch.float32)
        image = decode_previews(latents, tiny)
        out[CLIP] = lambda: scorer(image, PROMPT)
    return out


def markdown(result: dict) -> str:
    m, times = result["machine"], result["times"]
    dry = " (dry run: sdkit's tiny models, not real figures)" if result["dry_run"] else ""
    by = {r["name"]: r for r in result["ratios"]}
    vae, tiny = by["VAE preview / UNet step"], by["tiny preview / UNet step"]
    lines = [
        f"# What one x0 preview costs, in UNet steps{dry}", "",
        f"Machine: {m['cpu']} ({m['cores']} cores, torch threads {m['torch_threads']}, {m['cpu_flags']}), "
        f"load average at start {m['loadavg']}; torch {m['torch']}, diffusers {m['diffusers']}; sdkit commit "
        f"{m['commit']}; {m['date']}.", "",
        f"{result['setup']} dtype float32, torch.no_grad, {result['repeats']} calls per case, the first a warm-up "
        f"(dropped); cases interleaved within each repetition, order reversed on odd ones. Median and min–max "
        f"over the {result['repeats'] - 1} timed repetitions; every ratio is taken per repetition. "
        f"Produced by `make bench-preview-cost` (`bench/preview_cost.py`), {result['elapsed_s']:.0f} s in all.", "",
        "## Ratios", "", ratio_table(result["ratios"]), "",
        "## Seconds per call", "", times_table(times), "",
        "## How to read it", "",
        f"A search whose previews cost p UNet steps each adds p × (number of preview decodes) to its count of UNet "
        f"evaluations (one evaluation = one CFG step of one candidate, as above). Here p ≈ {vae['median']:.2g} "
        f"with the VAE and ≈ {tiny['median']:.2g} with a TAESD-shaped AutoencoderTiny; e.g. 8 candidates "
        f"previewed at 2 prune points = 16 decodes ≈ {16 * vae['median']:.3g} (VAE) or "
        f"{16 * tiny['median']:.2g} (tiny) extra UNet steps, against 8 × the step count for the full runs.",
    ]
    if CLIP in times:
        lines += ["", f"Scoring a preview (one image, sdkit's torch scorer, {result['clip']}) costs "
                      f"{by['CLIP score / UNet step']['median']:.2g} UNet steps on top."]
    else:
        lines += ["", "CLIP scoring was not measured (--no-clip)."]
    lines += ["", "Caveats: one CPU, fp32 only; on a GPU, or in bf16, the ratios differ (the VAE decoder's "
                  "convolutions at 512² and the UNet's attention do not speed up alike). Random weights: the "
                  "cost does not depend on weight values. The tiny previewer has diffusers' AutoencoderTiny default "
                  "shape (TAESD's: 64-channel blocks, decoder (3,3,3,1), 4 latent channels, scaling_factor 1). "
                  "Absolute seconds move with the machine's other load (see the load average); the ratios are taken "
                  "within each repetition, so they move much less."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="calls per case, the first a warm-up (>= 2)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--no-clip", action="store_true", help="skip the CLIP score")
    p.add_argument("--dry-run", action="store_true", help="sdkit's tiny models instead of the SD 1.5 shapes")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "preview_cost",
                   help="output path without suffix: writes .json and .md")
    args = p.parse_args(argv)
    if args.repeats < 2:
        p.error(f"--repeats {args.repeats}: needs >= 2 (the first call of each case is a warm-up)")
    if args.threads < 1:
        p.error(f"--threads {args.threads}: needs >= 1")

    import torch

    torch.set_num_threads(args.threads)
    start, machine = time.perf_counter(), describe()  # the load average before this run adds its own
    unet, vae, tiny, clip, height = load(args.dry_run)
    calls = cases(unet, vae, tiny, None if args.no_clip else clip, height)
    times = interleaved(calls, args.repeats - 1, warmup=1)
    ratios = [compare("VAE preview / UNet step", times, VAE, UNET),
              compare("tiny preview / UNet step", times, TINY, UNET),
              compare("VAE / tiny preview", times, VAE, TINY)]
    if CLIP in times:
        ratios.append(compare("CLIP score / UNet step", times, CLIP, UNET))
    side = height // 2 ** (len(vae.config.block_out_channels) - 1)
    mparams = lambda module: f"{sum(x.numel() for x in module.parameters()) / 1e6:.3g}M"  # noqa: E731
    result = {
        "dry_run": args.dry_run, "repeats": args.repeats, "dtype": "float32", "height": height, "width": height,
        "setup": (f"{'sdkit tiny' if args.dry_run else 'SD 1.5-shaped'} UNet ({mparams(unet)} params) at "
                  f"{height}x{height} (latent {side}x{side}), one call on batch 2 (CFG); AutoencoderKL "
                  f"({mparams(vae.decoder)} decoder params) and AutoencoderTiny ({mparams(tiny.decoder)} decoder "
                  "params) each decoding one latent via decode_previews (decode + postprocess to PIL)."),
        "clip": None if args.no_clip else "sdkit tiny CLIP" if args.dry_run else "ViT-B/32 shape (DEFAULT_CLIP), 224²",
        "taesd_config": DRY_TAESD if args.dry_run else TAESD,
        "machine": machine, "times": summary(times), "samples": times, "ratios": ratios,
        "elapsed_s": time.perf_counter() - start,
    }
    write_results(args.out, result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
