"""Batch invariance: candidate k must not depend on which batch it was denoised in.

CPU kernels (oneDNN convolutions, GEMM blocking) choose their algorithm by
batch size, so the same latent gives last-bit-different outputs in a batch of
8 and in a batch of 3, and after 30 steps that can flip a pixel. Running the
UNet one sample at a time (and the VAE too, via its slicing) gives every
candidate the same arithmetic in any batch. On a CPU this costs little: the
UNet is compute bound already at batch 1 (bench/ measures it). On GPUs batching
pays, so it is off there by default and results are reproducible per batch
size only.
"""

from __future__ import annotations

import functools

import torch


def make_batch_invariant(pipe) -> None:
    """Run `pipe.unet` per sample and decode the VAE per sample. Idempotent."""
    unet = pipe.unet
    if not getattr(unet, "_sdkit_per_sample", False):
        unet.forward = _per_sample(unet.forward)
        unet._sdkit_per_sample = True
    pipe.vae.enable_slicing()  # diffusers' slicing decodes one latent at a time


def _per_sample(forward):
    @functools.wraps(forward)
    def wrapped(sample, timestep, encoder_hidden_states=None, *args, return_dict: bool = True, **kwargs):
        b = sample.shape[0]
        if b == 1:
            return forward(sample, timestep, encoder_hidden_states, *args, return_dict=return_dict, **kwargs)
        outs = []
        for i in range(b):
            t = timestep[i : i + 1] if torch.is_tensor(timestep) and timestep.ndim and timestep.shape[0] == b else timestep
            ehs = encoder_hidden_states[i : i + 1] if encoder_hidden_states is not None else None
            kw = {k: _slice(v, i, b) for k, v in kwargs.items()}
            outs.append(forward(sample[i : i + 1], t, ehs, *args, return_dict=False, **kw)[0])
        out = torch.cat(outs)
        if not return_dict:
            return (out,)
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=out)

    return wrapped


def _slice(v, i, b):
    if torch.is_tensor(v) and v.ndim and v.shape[0] == b:
        return v[i : i + 1]
    if isinstance(v, dict):
        return {k: _slice(x, i, b) for k, x in v.items()}
    return v
