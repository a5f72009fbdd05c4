"""Train the toy world's models on the CPU, deterministically from one seed.

Order: VAE, then CLIP (it also sees VAE reconstructions, the blur it will have to
judge), then the UNet on the VAE's latents, conditioned on the CLIP text tower.
Everything is a stock Hugging Face class (`AutoencoderKL`, `CLIPModel`,
`UNet2DConditionModel`), so the saved files load through the same code as real
checkpoints. Same seed + same thread count gave bit-identical weights here.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from sdkit.toy import shapes

# CLIP's normalisation; the saved preprocessor_config.json uses the same numbers.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


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


def _autocast(on: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if on else contextlib.nullcontext()


class _Log:
    """Progress lines: `name step/total loss elapsed`, about every `every` steps."""

    def __init__(self, name: str, total: int, log, every: int = 100):
        self.name, self.total, self.log, self.every, self.t0 = name, total, log, every, time.perf_counter()
        self.acc = []

    def __call__(self, step: int, loss: float):
        self.acc.append(loss)
        if self.log and ((step + 1) % self.every == 0 or step + 1 == self.total):
            self.log(f"  {self.name} {step + 1:5d}/{self.total} loss {np.mean(self.acc):.4f}  {self.elapsed():.0f}s")
            self.acc = []

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def _lr(step: int, total: int, base: float, warmup: int = 50) -> float:
    # Linear warmup then cosine to zero: short runs end on small steps.
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1], the VAE's range."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def clip_pixels(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images -> CLIP-normalised pixel values (same as the saved CLIPImageProcessor at 32 x 32)."""
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return ((x + 1) / 2 - mean) / std


# ---- junk: images that match no prompt, so CLIP learns to score them low ----------------------

# Purple, cyan, white, pink, grey: far from every colour of the world (orange or brown would pass as yellow).
_OFF_COLORS = ((170, 60, 200), (40, 200, 200), (220, 220, 220), (240, 120, 200), (120, 120, 120))


def _warped(shape: str, x, y, s, rng, amplitude: float) -> np.ndarray:
    # A smooth random displacement field (bilinear from a 4 x 4 grid): lumpy, dented outlines.
    from scipy import ndimage

    grid = rng.normal(0, amplitude, size=(2, 4, 4))
    n = x.shape[1]
    dx, dy = (ndimage.zoom(g, n / 4, order=1, mode="nearest") for g in grid)
    return shapes.is_inside(shape, x + dx, y + dy, s.cx, s.cy, s.r)


JUNK_KINDS = ("stretched", "two shapes", "off colour", "upside down", "lumpy", "dented", "faint")


def junk(n: int, seed: int, size: int = shapes.IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Images no caption describes, for CLIP's 'no caption' class: (uint8 images, kind indices into JUNK_KINDS).

    They are the ways a half-trained generator fails: lumpy or dented shapes, two shapes,
    stretched shapes, upside-down triangles, colours outside the world, nothing. Mild lumps
    and dents are still the shape, so any drawing the world's definition (`shapes.check`)
    accepts as a caption is drawn again: the labels stay consistent with the captions.
    CLIP never sees a generated image or a verdict on one.
    """
    rng = np.random.default_rng(seed)
    out = np.zeros((n, size, size, 3), np.uint8)
    kinds = rng.integers(len(JUNK_KINDS), size=n)
    t = (np.arange(size * 4, dtype=np.float32) + 0.5) / 4
    y, x = np.broadcast_arrays(t[:, None], t[None, :])
    for i, kind in enumerate(kinds):
        for _ in range(20):
            out[i] = _junk_one(kind, rng, x, y, size)
            c = shapes.check(out[i])
            if c.shape is None or c.color is None:
                break
    return out, kinds


def _junk_one(kind: int, rng, x, y, size: int) -> np.ndarray:
    """One junk drawing of JUNK_KINDS[kind]."""
    pool = lambda inside: inside.reshape(size, 4, size, 4).mean(axis=(1, 3))  # noqa: E731
    s = shapes.random_shape(rng, size=size)
    rgb = np.array(shapes.COLORS[s.color], np.float32)
    if kind == 0:  # ellipse or rectangle, aspect 1.5-2.5
        a = rng.uniform(1.5, 2.5)
        rx, ry = (s.r, s.r / a) if rng.random() < 0.5 else (s.r / a, s.r)
        inside = (((x - s.cx) / rx) ** 2 + ((y - s.cy) / ry) ** 2 <= 1) if rng.random() < 0.5 else (
            (np.abs(x - s.cx) <= rx) & (np.abs(y - s.cy) <= ry))
        cov = pool(inside)
    elif kind == 1:  # two shapes of similar size
        s2 = shapes.random_shape(rng, size=size)
        r2 = s.r * 0.7 * rng.uniform(0.9, 1.1)
        cov = np.maximum(shapes.coverage(s.shape, s.cx, s.cy, s.r * 0.7, size),
                         shapes.coverage(s2.shape, s2.cx, s2.cy, r2, size))
    elif kind == 2:  # a real shape in a colour outside the world
        rgb = np.array(_OFF_COLORS[rng.integers(len(_OFF_COLORS))], np.float32)
        cov = shapes.coverage(s.shape, s.cx, s.cy, s.r, size)
    elif kind == 3:  # upside-down triangle
        cov = shapes.coverage("triangle", s.cx, size - s.cy, s.r, size)[::-1]
    elif kind == 4:  # lumpy: 2-3 overlapping parts merged into one blob
        inside = np.zeros_like(x, dtype=bool)
        for _ in range(rng.integers(2, 4)):
            part = shapes.SHAPES[rng.integers(2)]  # circles and squares
            ox, oy = rng.uniform(0.25, 0.6, size=2) * s.r * rng.choice([-1, 1], size=2)
            inside |= shapes.is_inside(part, x, y, s.cx + ox, s.cy + oy, s.r * rng.uniform(0.5, 0.7))
        cov = pool(inside)
    elif kind == 5:  # dented: the right shape, badly warped
        cov = pool(_warped(s.shape, x, y, s, rng, amplitude=s.r * rng.uniform(0.3, 0.7)))
    else:  # a faint smudge or nothing at all
        cov = shapes.coverage("circle", s.cx, s.cy, s.r, size) * rng.uniform(0, 0.3)
    return np.round(cov[..., None] * rgb).astype(np.uint8)


# ---- VAE ----------------------------------------------------------------------------------------


def make_vae(s: VaeSettings):
    from diffusers import AutoencoderKL

    n = len(s.channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=s.latent_channels, block_out_channels=s.channels,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        layers_per_block=1, norm_num_groups=8, sample_size=shapes.IMAGE_SIZE,
        mid_block_add_attention=False,  # attention at 16 x 16 costs more than it gives on shapes
    )


def train_vae(s: VaeSettings, pool: torch.Tensor, seed: int, log=print):
    """Reconstruction (L1 + MSE) plus a small KL; sets `scaling_factor` so latents have unit std."""
    torch.manual_seed(seed)
    vae = make_vae(s).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=s.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    progress = _Log("vae", s.steps, log)
    for step in range(s.steps):
        for g in opt.param_groups:
            g["lr"] = _lr(step, s.steps, s.lr)
        x = pool[torch.randint(len(pool), (s.batch_size,), generator=gen)]
        with _autocast(s.bf16):
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
            rec = vae.decode(z).sample.float()
        kl = post.kl().mean() / x[0].numel()
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + s.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        progress(step, loss.item())
    vae.eval()
    with torch.no_grad():
        z = vae.encode(pool[:2048]).latent_dist.mean
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    return vae


@torch.no_grad()
def encode(vae, x: torch.Tensor, batch: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image, in fp32 (done once; the UNet samples from them)."""
    means, stds = [], []
    for i in range(0, len(x), batch):
        post = vae.encode(x[i:i + batch]).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def reconstruct(vae, x: torch.Tensor, seed: int, bf16: bool = False, batch: int = 256) -> torch.Tensor:
    """Encode, sample and decode: what the VAE does to an image, blur and all."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, len(x), batch):
        with _autocast(bf16):
            post = vae.encode(x[i:i + batch]).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
            out.append(vae.decode(z).sample.float().clamp(-1, 1))
    return torch.cat(out)


# ---- CLIP ---------------------------------------------------------------------------------------


def make_clip(s: ClipSettings, tokenizer):
    from transformers import CLIPConfig, CLIPModel

    common = dict(hidden_size=s.width, intermediate_size=4 * s.width, num_hidden_layers=s.layers,
                  num_attention_heads=s.heads)
    config = CLIPConfig(
        text_config=dict(common, vocab_size=len(tokenizer), max_position_embeddings=tokenizer.model_max_length,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(common, image_size=shapes.IMAGE_SIZE, patch_size=s.patch_size),
        projection_dim=s.projection_dim,
    )
    return CLIPModel(config)


def prompt_ids(tokenizer, prompts) -> torch.Tensor:
    return tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    # Generated images are a little blurry, noisy and off in brightness; the ranking must not care.
    b = len(x)
    blur = torch.tensor([1.0, 2.0, 1.0])
    k = (blur[:, None] * blur[None, :] / 16).expand(3, 1, 3, 3)
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=3)
    use_blur = (torch.rand(b, 1, 1, 1, generator=gen) < 0.3).float()
    x = use_blur * blurred + (1 - use_blur) * x
    gain = torch.empty(b, 1, 1, 1).uniform_(0.8, 1.1, generator=gen)
    noise = torch.randn(x.shape, generator=gen) * torch.empty(b, 1, 1, 1).uniform_(0, 0.08, generator=gen)
    return ((x + 1) * gain - 1 + noise).clamp(-1, 1)


def train_clip(s: ClipSettings, tokenizer, pool: torch.Tensor, labels: torch.Tensor, junk_pool: torch.Tensor,
               seed: int, recon: tuple[torch.Tensor, torch.Tensor] | None = None, log=print):
    """Contrastive training against the 12 captions, plus a 'no caption' class for junk.

    Captions repeat within a batch, so the loss is CLIP's in both directions over the
    12 distinct captions (image -> its caption; caption -> all its images). Junk images
    must score below a learned threshold logit for every caption, which teaches the
    ranking that a stretched or two-headed shape is worse than a clean one. `recon`
    (images, labels) are VAE reconstructions, mixed in at `recon_fraction`.
    """
    torch.manual_seed(seed)
    model = make_clip(s, tokenizer).train()
    null_logit = torch.nn.Parameter(torch.tensor(5.0))
    opt = torch.optim.AdamW(list(model.parameters()) + [null_logit], lr=s.lr, weight_decay=0.05)
    ids = prompt_ids(tokenizer, shapes.PROMPTS)
    gen = torch.Generator().manual_seed(seed + 1)
    n_junk = int(round(s.batch_size * s.junk_fraction))
    progress = _Log("clip", s.steps, log)
    for step in range(s.steps):
        for g in opt.param_groups:
            g["lr"] = _lr(step, s.steps, s.lr)
        n_recon = int(round((s.batch_size - n_junk) * s.recon_fraction)) if recon is not None else 0
        idx = torch.randint(len(pool), (s.batch_size - n_junk - n_recon,), generator=gen)
        x, y = [pool[idx]], [labels[idx]]
        if n_recon:
            r = torch.randint(len(recon[0]), (n_recon,), generator=gen)
            x.append(recon[0][r])
            y.append(recon[1][r])
        x.append(junk_pool[torch.randint(len(junk_pool), (n_junk,), generator=gen)])
        y.append(torch.full((n_junk,), len(shapes.PROMPTS)))
        x, y = torch.cat(x), torch.cat(y)
        with _autocast(s.bf16):
            img = model.visual_projection(model.vision_model(pixel_values=clip_pixels(_augment(x, gen))).pooler_output)
            txt = model.text_projection(model.text_model(input_ids=ids).pooler_output)
        img, txt = F.normalize(img.float(), dim=-1), F.normalize(txt.float(), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T  # (B, 12)
        with_null = torch.cat([logits, null_logit.expand(len(x), 1)], dim=1)
        loss_img = F.cross_entropy(with_null, y)
        # caption -> image: every image of that caption is a positive.
        logp = logits.T.log_softmax(dim=1)  # (12, B)
        pos = F.one_hot(y, len(shapes.PROMPTS) + 1)[:, :-1].T.bool()
        has = pos.any(dim=1)
        loss_txt = -torch.logsumexp(logp.masked_fill(~pos, -torch.inf), dim=1)[has].mean()
        loss = (loss_img + loss_txt) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        progress(step, loss.item())
    return model.eval()


@torch.no_grad()
def zero_shot_accuracy(model, tokenizer, images: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of images whose highest-scoring caption among the 12 is their own."""
    txt = F.normalize(model.text_projection(model.text_model(input_ids=prompt_ids(tokenizer, shapes.PROMPTS)).pooler_output), dim=-1)
    img = model.visual_projection(model.vision_model(pixel_values=clip_pixels(to_tensor(images))).pooler_output)
    pred = (F.normalize(img, dim=-1) @ txt.T).argmax(dim=1).numpy()
    return float((pred == labels).mean())


# ---- UNet ---------------------------------------------------------------------------------------


def make_unet(s: UnetSettings, cross_attention_dim: int, latent_size: int, latent_channels: int):
    from diffusers import UNet2DConditionModel

    n = len(s.channels)
    return UNet2DConditionModel(
        sample_size=latent_size, in_channels=latent_channels, out_channels=latent_channels,
        block_out_channels=s.channels, layers_per_block=s.layers_per_block,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        cross_attention_dim=cross_attention_dim, attention_head_dim=4, norm_num_groups=8,
    )


def make_scheduler(prediction_type: str = "epsilon"):
    """SD's DDIM settings, so the toy pipeline is configured like the real one."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type)


@torch.no_grad()
def prompt_embeds(text_encoder, tokenizer, prompts) -> torch.Tensor:
    """What the pipeline feeds the UNet: the text tower's last hidden state, (N, max_length, width)."""
    return text_encoder(prompt_ids(tokenizer, prompts))[0]


def train_unet(s: UnetSettings, latents: tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor,
               embeds: torch.Tensor, scaling_factor: float, seed: int, log=print):
    """Denoising on SD's noise schedule (v or epsilon), Min-SNR weighted, with prompt dropout; returns the EMA.

    `embeds` holds the 12 captions' embeddings and then the empty prompt's; they are
    computed once, since the text tower is frozen.
    """
    mean, std = latents
    torch.manual_seed(seed)
    unet = make_unet(s, embeds.shape[-1], mean.shape[-1], mean.shape[1]).train()
    fmt = torch.channels_last if s.channels_last else torch.contiguous_format
    unet.to(memory_format=fmt)
    ema = [p.detach().clone() for p in unet.parameters()]
    opt = torch.optim.AdamW(unet.parameters(), lr=s.lr, weight_decay=0.0)
    if s.prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type={s.prediction_type!r}: use 'epsilon' or 'v_prediction'")
    sched = make_scheduler(s.prediction_type)
    alphas = sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    # Min-SNR-gamma: the same weight on the x0 error, expressed for each target's loss.
    weight = snr.clamp(max=s.min_snr_gamma) / (snr if s.prediction_type == "epsilon" else snr + 1)
    gen = torch.Generator().manual_seed(seed + 2)
    uncond = len(embeds) - 1
    progress = _Log("unet", s.steps, log)
    for step in range(s.steps):
        for g in opt.param_groups:
            g["lr"] = _lr(step, s.steps, s.lr)
        idx = torch.randint(len(mean), (s.batch_size,), generator=gen)
        x0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)) * scaling_factor
        t = torch.randint(sched.config.num_train_timesteps, (s.batch_size,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        xt = sched.add_noise(x0, eps, t).contiguous(memory_format=fmt)
        target = eps if s.prediction_type == "epsilon" else sched.get_velocity(x0, eps, t)
        cond = labels[idx].clone()
        cond[torch.rand(s.batch_size, generator=gen) < s.cfg_dropout] = uncond
        with _autocast(s.bf16):
            pred = unet(xt, t, encoder_hidden_states=embeds[cond]).sample.float()
        loss = (weight[t] * ((pred - target) ** 2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        decay = min(s.ema_decay, (1 + step) / (10 + step))  # warm-up: early EMA follows the weights
        with torch.no_grad():
            for e, p in zip(ema, unet.parameters()):
                e.lerp_(p, 1 - decay)
        progress(step, loss.item())
    with torch.no_grad():
        for e, p in zip(ema, unet.parameters()):
            p.copy_(e)
    return unet.to(memory_format=torch.contiguous_format).eval()
