"""sdkit's own errors. Bad arguments raise ValueError/TypeError naming the value (see `sdkit.checks`); what
sdkit cannot do for a well-formed request raises an `SdkitError`, which the CLI catches by type."""

from __future__ import annotations

from typing import Any


class SdkitError(Exception):
    """Something sdkit could not do; the message says what to do about it."""


class ModelNotAvailable(SdkitError, RuntimeError):
    """The model (a pipeline or a CLIP) cannot be found or fetched, or is not in a form sdkit loads."""


class GenerationError(SdkitError, RuntimeError):
    """Generation failed after some candidates finished; `.run` holds those (already on disk)."""

    def __init__(self, message: str, run: Any):
        super().__init__(message)
        self.run = run


class Cancelled(Exception):
    """Raised inside the denoising loop to stop at the next step (control flow, not a failure)."""
