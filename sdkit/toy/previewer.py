"""A tiny previewer for the toy world: diffusers' `AutoencoderTiny` whose decoder is distilled from the world's
VAE decoder (TAESD's recipe at toy scale), so searches, tests and benchmarks take the same cheap-preview path a
user takes with `madebyollin/taesd`. Trained on first use (about a minute on 2 cores) and cached:

    from sdkit.load.previewer import load_previewer
    previewer = load_previewer("sdkit:toy")        # = load_previewer(toy_previewer_path())

Its inputs are the pipeline's latents as they are (`scaling_factor` 1.0, as TAESD), including the blurred,
shrunken x0 predictions of early denoising steps: training mixes clean latents of rendered shapes with such
blends, and the targets are the VAE's own decodes of the same latents.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from sdkit.models.cache import build_atomically, build_key, cache_root
from sdkit.toy import shapes, train


@dataclasses.dataclass(frozen=True)
class PreviewerSettings:
    channels: tuple[int, ...] = (32, 32)  # decoder blocks (equal, as TAESD: diffusers chains them); 2x upsampling between
    steps: int = 800
    batch_size: int = 64
    lr: float = 2e-3
    samples: int = 4096  # rendered shapes whose latents it learns from
    seed: int = 0
    threads: int = 1


def make_previewer(s: PreviewerSettings, latent_channels: int):
    """An untrained AutoencoderTiny that decodes the toy world's latents (16 x 16 -> 32 x 32)."""
    from diffusers import AutoencoderTiny

    n = len(s.channels)
    return AutoencoderTiny(
        in_channels=3, out_channels=3, latent_channels=latent_channels,
        encoder_block_out_channels=tuple(reversed(s.channels)), decoder_block_out_channels=s.channels,
        num_encoder_blocks=(1,) * n, num_decoder_blocks=(1,) * n, upsampling_scaling_factor=2,
        scaling_factor=1.0,  # it decodes the diffusion model's latents as they are
    )


def previewer_key(world: Path, s: PreviewerSettings) -> str:
    from sdkit.toy.world import content_hash

    return build_key([sys.modules[__name__], train], s, content_hash(world))


def toy_previewer_path(world: str | Path | None = None, settings: PreviewerSettings = PreviewerSettings(),
                       log=None) -> Path:
    """The folder of the toy world's tiny previewer (`AutoencoderTiny.save_pretrained` layout), built once."""
    from sdkit.toy.world import toy_world_path

    world = Path(world) if world is not None else toy_world_path("ci", log=log)
    final = cache_root() / "toy" / f"previewer-{previewer_key(world, settings)}"

    def build(tmp: Path) -> None:
        if log:
            log(f"sdkit.toy: distilling a tiny previewer from {world}'s VAE into {final} (once per machine)")
        build_previewer(tmp, world, settings, log=log)

    return build_atomically(final, build)


def _blend(z: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Half the batch as it is; the other half like an early x0 prediction: shrunk towards a blurred copy."""
    a = torch.rand((len(z), 1, 1, 1), generator=gen)
    shrink = 0.3 + 0.7 * torch.rand((len(z), 1, 1, 1), generator=gen)
    blurred = F.avg_pool2d(z, 5, stride=1, padding=2, count_include_pad=False)
    early = shrink * (a * z + (1 - a) * blurred)
    keep = (torch.arange(len(z)) % 2 == 0).view(-1, 1, 1, 1)
    return torch.where(keep, z, early)


def build_previewer(out: str | Path, world: str | Path, s: PreviewerSettings = PreviewerSettings(), log=None) -> dict:
    """Distil the previewer's decoder from `world`'s VAE decoder (MSE on the VAE's decodes) and save it to `out`."""
    from diffusers import AutoencoderKL

    out, world = Path(out), Path(world)
    threads = torch.get_num_threads()
    torch.set_num_threads(s.threads)
    try:
        t0 = time.perf_counter()
        torch.manual_seed(s.seed)
        vae = AutoencoderKL.from_pretrained(world / "pipeline" / "vae", use_safetensors=True).eval()
        sf = vae.config.scaling_factor
        images, _, _ = shapes.sample(s.samples + 512, seed=s.seed + 7)
        z = train.encode(vae, train.to_tensor(images))[0] * sf  # the pipeline's latents
        z, held_out = z[:s.samples], z[s.samples:]
        tiny = make_previewer(s, vae.config.latent_channels).train()
        opt = torch.optim.AdamW(tiny.decoder.parameters(), lr=s.lr, weight_decay=0.0)
        gen = torch.Generator().manual_seed(s.seed)
        for step in range(s.steps):
            for group in opt.param_groups:  # cosine decay: a smooth end without a tuned schedule
                group["lr"] = s.lr * 0.5 * (1 + torch.cos(torch.tensor(step / s.steps * torch.pi)).item())
            x = _blend(z[torch.randint(len(z), (s.batch_size,), generator=gen)], gen)
            with torch.no_grad():
                target = vae.decode(x / sf).sample.clamp(-1, 1)
            loss = F.mse_loss(tiny.decode(x).sample, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if log and (step + 1) % 200 == 0:
                log(f"  previewer step {step + 1}/{s.steps}: mse {loss.item():.4f}")
        tiny.eval()
        with torch.no_grad():
            psnr = {}
            for name, x in (("clean", held_out), ("early", _blend(held_out, torch.Generator().manual_seed(1)))):
                mse = F.mse_loss(tiny.decode(x).sample.clamp(-1, 1), vae.decode(x / sf).sample.clamp(-1, 1))
                psnr[name] = round(float(10 * torch.log10(4 / mse)), 2)  # peak-to-peak 2 in [-1, 1]
        tiny.save_pretrained(out, safe_serialization=True)
        info = {"settings": dataclasses.asdict(s), "world": str(world), "train_s": round(time.perf_counter() - t0, 1),
                "psnr_vs_vae_db": psnr, "parameters": sum(p.numel() for p in tiny.decoder.parameters())}
        (out / "previewer.json").write_text(json.dumps(info, indent=1))
        if log:
            log(f"  previewer: {psnr['clean']} dB (clean latents), {psnr['early']} dB (early-step blends) from the VAE's decodes")
        return info
    finally:
        torch.set_num_threads(threads)
