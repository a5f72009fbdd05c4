"""What a toy world is trained with: one frozen dataclass per model, and the world's (seed, threads, data)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ClipSettings:
    width: int = 64  # text and vision towers; the UNet's cross-attention width follows it
    layers: int = 2
    heads: int = 4
    patch_size: int = 4  # 8 x 8 patches of a 32 x 32 image
    projection_dim: int = 64
    steps: int = 600
    batch_size: int = 64
    lr: float = 2e-3
    junk_fraction: float = 0.25  # images that match no prompt (lumps, two shapes, off colours...)
    recon_fraction: float = 0.5  # images passed through the VAE first, as generated images are
    recon_pool: int = 4000  # how many images are reconstructed once for that (decoding all costs minutes)
    bf16: bool = False  # measured: autocast is slower than fp32 for a 64-wide transformer here


@dataclass(frozen=True)
class VaeSettings:
    channels: tuple = (16, 32)  # two levels: 32 x 32 x 3 -> 16 x 16 x 4
    latent_channels: int = 4
    steps: int = 500
    batch_size: int = 32
    lr: float = 2e-3
    kl_weight: float = 1e-5  # small: sharp reconstructions matter more than a perfect Gaussian
    bf16: bool = True  # measured: autocast ~1.4x faster for these 32 x 32 convolutions


@dataclass(frozen=True)
class UnetSettings:
    channels: tuple = (16, 32, 64)  # latent 16 -> 8 -> 4; cross-attention only at 8 and 4
    layers_per_block: int = 1
    steps: int = 1500
    batch_size: int = 32
    lr: float = 2e-3
    cfg_dropout: float = 0.1  # prompt replaced by "" so classifier-free guidance has an unconditional model
    # v as SD 2.x: colours come out right. Epsilon (SD 1.x) barely weighs the high-noise steps
    # where colour is decided, so at a small budget it draws the right shape in the wrong colour.
    prediction_type: str = "v_prediction"
    min_snr_gamma: float = 5.0  # Min-SNR weighting (Hang et al. 2023): faster convergence
    ema_decay: float = 0.995  # the saved UNet is the EMA; short runs need a short horizon
    bf16: bool = False  # measured: at 16-64 channels on 16 x 16 latents autocast is slower than fp32...
    channels_last: bool = True  # ...and channels-last fp32 convolutions are the fastest


@dataclass(frozen=True)
class WorldSettings:
    seed: int = 0
    # One thread: these ops are too small to split, and with other jobs on the machine two
    # threads ran 3-5x slower than one (measured). Weights are bit-identical for a fixed count.
    threads: int = 1
    max_length: int = 8  # "<bos> a red circle <eos>" is 5 tokens; 77 would cost attention for nothing
    pool_size: int = 20_000  # procedural images drawn once and reused; the world has few degrees of freedom
    clip: ClipSettings = field(default_factory=ClipSettings)
    vae: VaeSettings = field(default_factory=VaeSettings)
    unet: UnetSettings = field(default_factory=UnetSettings)
