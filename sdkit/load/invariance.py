"""Batch invariance: candidate k must not depend on which batch it was denoised in.

CPU kernels (oneDNN convolutions, GEMM blocking) choose their algorithm by
batch size, so the same latent gives last-bit-different outputs in a batch of
8 and in a batch of 3, and after 30 steps that can flip a pixel. Running the
text encoder one prompt at a time, the UNet one candidate at a time and the VAE
one image at a time (via its slicing) gives every candidate the same arithmetic
in any batch. The text encoder matters too: a prompt's embedding computed in a
batch of 3 differs from its embedding alone by ~1e-7, which ancestral samplers
amplify into pixels (seen with diffusers' own test components). With classifier-free guidance a
candidate is a pair of rows, [unconditional, conditional], and the pair stays
together: one UNet call of batch 2 per candidate, the same call the tutorial's
one-image-at-a-time loop makes, so invariance costs nothing next to that loop
(bench/ measures it). On GPUs batching pays, so invariance is off there by
default and results are reproducible per batch size only.
"""

from __future__ import annotations

import contextlib
import functools

import torch

from sdkit.load.state import ModuleState, module_state


def make_batch_invariant(pipe) -> None:
    """Encode each prompt alone, run `pipe.unet` per candidate and the VAE per sample. Idempotent."""
    unet = pipe.unet
    state = module_state(unet)
    if not state.batch_invariant:
        unet.forward = _per_candidate(unet.forward, state, unet.config.out_channels)
        state.batch_invariant = True
    for name in ("text_encoder", "text_encoder_2"):  # SDXL has two
        encoder = getattr(pipe, name, None)
        if encoder is not None and not module_state(encoder).batch_invariant:
            encoder.forward = _per_row(encoder.forward)
            module_state(encoder).batch_invariant = True
    pipe.vae.enable_slicing()  # diffusers' slicing encodes and decodes one image at a time


def is_batch_invariant(pipe) -> bool:
    """Whether `pipe`'s UNet runs one candidate at a time (`make_batch_invariant`)."""
    return module_state(pipe.unet).batch_invariant


def cfg_pairs(sample: torch.Tensor) -> bool:
    """True when `sample` is diffusers' classifier-free-guidance batch: `cat([latents] * 2)`.

    Every diffusers SD pipeline builds it that way (the 9-channel inpainting input too), so
    the two halves are equal exactly; without guidance the rows are distinct latents. Read
    from the tensor, not from a pipeline, because pipelines made with `from_pipe` share one UNet.
    """
    b = sample.shape[0]
    return b % 2 == 0 and torch.equal(sample[: b // 2], sample[b // 2 :])


@contextlib.contextmanager
def skipping(pipe):
    """A set of candidates (positions in the batch being denoised) whose UNet evaluations are skipped inside the
    block: a search adds the ones it prunes. Their noise prediction is zero; every other candidate runs alone as
    always, so a survivor's trajectory is the one it has in any batch. Needs `make_batch_invariant`."""
    state = module_state(pipe.unet)
    if not state.batch_invariant:
        raise RuntimeError("skipping candidates needs the batch-invariant UNet (sdkit.load.invariance.make_batch_invariant)")
    state.skip = set()
    try:
        yield state.skip
    finally:
        state.skip = None


def _per_candidate(forward, state: ModuleState, out_channels: int):
    @functools.wraps(forward)
    def wrapped(sample, timestep, encoder_hidden_states=None, *args, return_dict: bool = True, **kwargs):
        b = sample.shape[0]
        if cfg_pairs(sample):
            half = b // 2
            groups = [torch.tensor([i, i + half], device=sample.device) for i in range(half)]
        else:
            groups = [torch.tensor([i], device=sample.device) for i in range(b)]
        skip = state.skip or ()
        if len(groups) == 1 and not skip:
            return forward(sample, timestep, encoder_hidden_states, *args, return_dict=return_dict, **kwargs)
        outs = {}
        for i, rows in enumerate(groups):
            if i in skip:
                continue
            t = timestep[rows] if torch.is_tensor(timestep) and timestep.ndim and timestep.shape[0] == b else timestep
            ehs = encoder_hidden_states[rows] if encoder_hidden_states is not None else None
            kw = {k: _take(v, rows, b) for k, v in kwargs.items()}
            outs[i] = forward(sample[rows], t, ehs, *args, return_dict=False, **kw)[0]
        if outs:
            like = next(iter(outs.values()))
            shape, dtype = like.shape[1:], like.dtype
        else:  # every candidate skipped (an inpainting UNet takes 9 channels and returns 4)
            shape, dtype = (out_channels, *sample.shape[2:]), sample.dtype
        out = torch.zeros((b, *shape), dtype=dtype, device=sample.device)
        for i, o in outs.items():
            out[groups[i]] = o
        if not return_dict:
            return (out,)
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=out)

    return wrapped


def _take(v, rows, b):
    if torch.is_tensor(v) and v.ndim and v.shape[0] == b:
        return v[rows]
    if isinstance(v, dict):
        return {k: _take(x, rows, b) for k, x in v.items()}
    return v


def _per_row(forward):
    """A text encoder's forward, one prompt (row of `input_ids`) at a time, outputs concatenated."""
    @functools.wraps(forward)
    def wrapped(input_ids=None, *args, **kwargs):
        if input_ids is None or input_ids.ndim != 2 or input_ids.shape[0] == 1 or args:
            return forward(input_ids, *args, **kwargs)
        b = input_ids.shape[0]
        outs = [forward(input_ids[i:i + 1], **{k: _take(v, slice(i, i + 1), b) for k, v in kwargs.items()})
                for i in range(b)]
        return _concat(outs)

    return wrapped


def _concat(outs):
    """Concatenate per-row model outputs (a ModelOutput, tuple or tensor) along the batch."""
    first = outs[0]
    if torch.is_tensor(first):
        return torch.cat(outs)
    if first is None:
        return None
    if isinstance(first, dict):  # transformers' ModelOutput is an ordered dict
        return type(first)(**{k: _concat([o[k] for o in outs]) for k in first.keys()})
    if isinstance(first, (tuple, list)):
        return type(first)(_concat(list(parts)) for parts in zip(*outs))
    return first
