"""Batch invariance: candidate k must not depend on which batch it was denoised in, and how sdkit's wrappers
get onto a pipeline's modules.

CPU kernels (oneDNN convolutions, GEMM blocking) choose their algorithm by
batch size, so the same latent gives last-bit-different outputs in a batch of
8 and in a batch of 3, and after 30 steps that can flip a pixel. Running the
text encoder one prompt at a time, the UNet one candidate at a time and the VAE
one image at a time gives every candidate the same arithmetic in any batch. The
text encoder matters too: a prompt's embedding computed in a batch of 3 differs
from its embedding alone by ~1e-7, which ancestral samplers amplify into pixels
(seen with diffusers' own test components). With classifier-free guidance a
candidate is a pair of rows, [unconditional, conditional], and the pair stays
together: one UNet call of batch 2 per candidate, the same call the tutorial's
one-image-at-a-time loop makes, so invariance costs nothing next to that loop
(bench/ measures it). That is the CPU's default.

On GPUs batching pays (4x at batch 8 on an H200), so there the UNet and the VAE run the live candidates
together, and `sdkit.load.rows` records each candidate's batch size and row so that it is made again exactly
by padding (recorded shapes). The text encoder encodes one prompt at a time on every device: cheap, and a
prompt's embedding then never depends on its batch-mates.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging

import torch

from sdkit.load.rows import cfg_pairs  # noqa: F401  (re-exported: where callers find it)
from sdkit.load.state import module_state


def install(pipe, *, batch_invariant: bool, max_rows: int | None = None) -> None:
    """sdkit's wrappers on `pipe`'s modules (once; later calls only change the mode): prompts encoded one at a
    time; the UNet and the VAE decode through `sdkit.load.rows`, each candidate alone (`batch_invariant`, the
    CPU's default) or the live ones together, at most `max_rows` per call, with their rows recorded."""
    from sdkit.load.rows import rows_decode, rows_unet  # noqa: F811

    unet, vae = pipe.unet, pipe.vae
    if not module_state(unet).installed:
        own_memory(pipe)
        unet.forward = rows_unet(unet.forward, module_state(unet), unet.config.out_channels)
    if not module_state(vae).installed:
        vae.decode = rows_decode(vae, module_state(vae))
    for module in (unet, vae):
        state = module_state(module)
        state.installed, state.batch_invariant, state.max_rows = True, bool(batch_invariant), max_rows
    for name in ("text_encoder", "text_encoder_2"):  # SDXL has two
        encoder = getattr(pipe, name, None)
        if encoder is not None and not module_state(encoder).installed:
            encoder.forward = _per_row(encoder.forward)
            module_state(encoder).installed = True
    if batch_invariant:  # x0 previews too, decoded outside rows_decode, one image at a time
        vae.enable_slicing()


def own_memory(pipe) -> None:
    """Copy `pipe`'s CPU weights into memory of their own. The CPU's matrix kernels can round the last bit
    differently with a weight's address (measured: one Linear, equal weights at offsets 40 and 44 mod 64, gave
    different outputs), and loaders leave weights wherever the file put them: a single file and the folder
    it came from gave different pixels. Fresh allocations are 64-byte aligned, so the pixels depend on the
    weights' values only."""
    for name, module in pipe.components.items():
        if not isinstance(module, torch.nn.Module):
            continue
        for t in itertools.chain(module.parameters(), module.buffers()):
            if t.device.type == "cpu":
                t.data = t.data.clone()


def adopt(pipe) -> None:
    """A pipeline sdkit did not load (built by hand, `from_single_file`) gets sdkit's row wrappers as
    `load_pipeline` would put them (per candidate on the CPU), so its promises hold; one with no UNet (SD3,
    Flux) is refused by name."""
    from sdkit.load.devices import max_rows
    from sdkit.load.kinds import family_of_pipeline

    inner = getattr(pipe, "pipeline", pipe)  # an edit's wrapper: its pipeline
    family_of_pipeline(inner)  # refuses what sdkit cannot run
    if not has_rows(inner):
        device = str(inner.device)
        install(inner, batch_invariant=device == "cpu", max_rows=max_rows(device))
        inner.set_progress_bar_config(disable=True)
        logging.getLogger(__name__).info("sdkit's row wrappers installed on a %s it did not load", type(inner).__name__)


def is_batch_invariant(pipe) -> bool:
    """Whether `pipe`'s UNet runs one candidate at a time (`install(..., batch_invariant=True)`)."""
    state = module_state(pipe.unet)
    return state.installed and state.batch_invariant


def has_rows(pipe) -> bool:
    """Whether `pipe` runs through sdkit's row wrappers (`install`; every `load_pipeline` pipeline does)."""
    return module_state(pipe.unet).installed and module_state(pipe.vae).installed


@contextlib.contextmanager
def skipping(pipe):
    """A set of candidates (positions in the batch being denoised) whose UNet evaluations (and final decode) are
    skipped inside the block: a search adds the ones it prunes. Their noise prediction is zero; the others run as
    always (alone, or together with their recorded rows), so a survivor is made again exactly. Needs `install`."""
    if not has_rows(pipe):
        raise RuntimeError("skipping candidates needs sdkit's row wrappers: a pipeline from load_pipeline, or "
                           "sdkit.load.invariance.install(pipe, batch_invariant=...)")
    states = [module_state(pipe.unet), module_state(pipe.vae)]
    skip: set[int] = set()
    for state in states:
        state.skip = skip
    try:
        yield skip
    finally:
        for state in states:
            state.skip = None


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
