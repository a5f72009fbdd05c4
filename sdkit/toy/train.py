"""Train the toy world's models on the CPU, deterministically from one seed.

Order: VAE, then CLIP (it also sees VAE reconstructions, the blur it will have to
judge), then the UNet on the VAE's latents, conditioned on the CLIP text tower.
Everything is a stock Hugging Face class (`AutoencoderKL`, `CLIPModel`,
`UNet2DConditionModel`), so the saved files load through the same code as real
checkpoints. The three trainers share one loop (`_fit`); each brings its batch loss. Same
seed + same thread count gave bit-identical weights here. Over 300 lines: the three trainers share one
loop and one data recipe, which would only be scattered by a split.
"""

from __future__ import annotations

import contextlib
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from sdkit.toy import shapes
from sdkit.toy.settings import ClipSettings, UnetSettings, VaeSettings

# CLIP's normalisation; the saved preprocessor_config.json uses the same numbers.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _autocast(on: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if on else contextlib.nullcontext()


def _lr(step: int, total: int, base: float, warmup: int = 50) -> float:
    # Linear warmup then cosine to zero: short runs end on small steps.
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _fit(name: str, params, s, weight_decay: float, batch_loss, log, after_step=None) -> None:
    """The one training loop: AdamW on `params` for `s.steps` steps of `s.lr` (warmup + cosine).

    `batch_loss()` draws a batch and returns its loss; `after_step(step)` runs after each update (the EMA)."""
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=weight_decay)
    t0, losses = time.perf_counter(), []
    for step in range(s.steps):
        for g in opt.param_groups:
            g["lr"] = _lr(step, s.steps, s.lr)
        loss = batch_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if after_step is not None:
            after_step(step)
        losses.append(loss.item())
        if log and ((step + 1) % 100 == 0 or step + 1 == s.steps):  # a progress line about every 100 steps
            log(f"  {name} {step + 1:5d}/{s.steps} loss {np.mean(losses):.4f}  {time.perf_counter() - t0:.0f}s")
            losses = []


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1], the VAE's range."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def clip_pixels(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images -> CLIP-normalised pixel values (same as the saved CLIPImageProcessor at 32 x 32)."""
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return ((x + 1) / 2 - mean) / std


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
    gen = torch.Generator().manual_seed(seed)

    def batch_loss() -> torch.Tensor:
        x = pool[torch.randint(len(pool), (s.batch_size,), generator=gen)]
        with _autocast(s.bf16):
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
            rec = vae.decode(z).sample.float()
        kl = post.kl().mean() / x[0].numel()
        return F.l1_loss(rec, x) + F.mse_loss(rec, x) + s.kl_weight * kl

    _fit("vae", vae.parameters(), s, 0.0, batch_loss, log)
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
    ids = prompt_ids(tokenizer, shapes.PROMPTS)
    gen = torch.Generator().manual_seed(seed + 1)
    n_junk = int(round(s.batch_size * s.junk_fraction))

    def batch_loss() -> torch.Tensor:
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
        return (loss_img + loss_txt) / 2

    _fit("clip", list(model.parameters()) + [null_logit], s, 0.05, batch_loss, log)
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
    if s.prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type={s.prediction_type!r}: use 'epsilon' or 'v_prediction'")
    sched = make_scheduler(s.prediction_type)
    alphas = sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    # Min-SNR-gamma: the same weight on the x0 error, expressed for each target's loss.
    weight = snr.clamp(max=s.min_snr_gamma) / (snr if s.prediction_type == "epsilon" else snr + 1)
    gen = torch.Generator().manual_seed(seed + 2)
    uncond = len(embeds) - 1

    def batch_loss() -> torch.Tensor:
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
        return (weight[t] * ((pred - target) ** 2).mean(dim=(1, 2, 3))).mean()

    @torch.no_grad()
    def update_ema(step: int) -> None:
        decay = min(s.ema_decay, (1 + step) / (10 + step))  # warm-up: early EMA follows the weights
        for e, p in zip(ema, unet.parameters()):
            e.lerp_(p, 1 - decay)

    _fit("unet", unet.parameters(), s, 0.0, batch_loss, log, after_step=update_ema)
    with torch.no_grad():
        for e, p in zip(ema, unet.parameters()):
            p.copy_(e)
    return unet.to(memory_format=torch.contiguous_format).eval()
