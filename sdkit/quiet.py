"""The one way sdkit hushes diffusers and transformers: their per-component loading and "Writing model shards"
bars (seconds of work, and tqdm widgets whose stored text changes every run in a notebook), and, when asked,
their warnings. Whatever was set before the block is restored after it, as it was."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def quiet_hf(messages: bool = False):
    """Hide diffusers/transformers progress bars inside the block; `messages=True` also mutes their warnings
    (building sdkit's own models, `from_pipe`'s warning about an empty list of fp32 modules)."""
    from diffusers.utils import logging as dl
    from transformers.utils import logging as tl

    bars = (dl.is_progress_bar_enabled(), tl.is_progress_bar_enabled())
    levels = (dl.get_verbosity(), tl.get_verbosity())
    dl.disable_progress_bar()
    tl.disable_progress_bar()
    if messages:
        dl.set_verbosity_error()
        tl.set_verbosity_error()
    try:
        yield
    finally:
        dl.set_verbosity(levels[0])
        tl.set_verbosity(levels[1])
        for enabled, lib in zip(bars, (dl, tl)):
            if enabled:
                lib.enable_progress_bar()
