"""Input validation at the boundary: fail before any model work, naming the bad value."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import warnings
from pathlib import Path
from typing import Sequence


# Seeds are recorded as signed 64-bit-safe integers (JSON, Parquet, Ray): [0, 2**63).
MAX_SEED = 2**63


def is_int(v) -> bool:
    """An int that is not a bool (Python counts True as 1: `steps=True` would run one step)."""
    return isinstance(v, int) and not isinstance(v, bool)


def check_seed(seed, within: str | None = None) -> int:
    """`seed` itself, or a ValueError naming it (`within`: the list it came from, e.g. "seeds")."""
    if not is_int(seed) or not 0 <= seed < MAX_SEED:
        what = f"seed {seed!r} in {within}" if within else f"seed={seed!r}"
        raise ValueError(f"{what}: must be an integer in [0, 2**63)")
    return seed


def as_prompt_list(prompt: str | Sequence[str], name: str = "prompt") -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise ValueError(f"{name} is an empty list; give at least one prompt")
    for p in prompts:
        if not isinstance(p, str):
            raise TypeError(f"{name} must be a string or a list of strings, got {type(p).__name__}: {p!r}")
        if not p.strip():
            raise ValueError(f"{name}={p!r} is empty or whitespace; describe the image you want")
    return prompts


def read_prompt_file(path, what: str = "--prompts-file") -> list[str]:
    """One prompt per line; blank lines and lines starting with '#' (after spaces) are skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r}: no such file")
    prompts = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if not prompts:
        raise ValueError(f"{what} {str(path)!r} has no prompts (one per line; '#' lines are skipped)")
    return prompts


def check_generate_args(*, n, seeds, num_inference_steps, guidance_scale, height, width, batch_size) -> None:
    if not is_int(n) or n < 1:
        raise ValueError(f"n={n!r} candidates: must be an integer >= 1")
    if seeds is not None:
        if len(seeds) != n:
            raise ValueError(f"seeds has {len(seeds)} entries but n={n}; give exactly one seed per candidate")
        for s in seeds:
            check_seed(s, "seeds")
    # bool is an int to Python: True would run one step.
    if not isinstance(num_inference_steps, int) or isinstance(num_inference_steps, bool) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps={num_inference_steps!r}: must be an integer >= 1")
    # NaN compares false with everything (guidance silently off), inf gives a black image.
    if (not isinstance(guidance_scale, (int, float)) or isinstance(guidance_scale, bool)
            or not math.isfinite(guidance_scale) or guidance_scale < 0):
        raise ValueError(f"guidance_scale={guidance_scale!r}: must be a finite number >= 0 (1 or less disables guidance)")
    for name, v in (("height", height), ("width", width)):
        if v is not None and (not isinstance(v, int) or v <= 0 or v % 8):
            raise ValueError(f"{name}={v!r}: must be a positive multiple of 8 (the VAE downsamples by 8)")
    if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1):
        raise ValueError(f"batch_size={batch_size!r}: must be an integer >= 1")


def count_steps(num_inference_steps: int, pipe_kwargs: dict | None = None) -> int:
    """The denoising steps a call really runs: img2img and inpainting with `strength` < 1 skip the first ones
    (diffusers runs int(num_inference_steps * strength) of them)."""
    strength = float((pipe_kwargs or {}).get("strength", 1.0))
    return max(1, min(num_inference_steps, int(num_inference_steps * strength)))


def check_output_dir(output_dir) -> Path:
    """Create `output_dir` if needed and prove it is writable, before generating anything."""
    path = Path(output_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"output_dir={str(output_dir)!r} cannot be created: {e.strerror}") from None
    if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"output_dir={str(output_dir)!r} is not a writable directory")
    return path


def warn_long_prompts(tokenizer, prompts: Sequence[str | None], what: str = "prompt") -> None:
    """CLIP's text encoder sees at most `model_max_length` tokens; say so instead of truncating silently."""
    limit = getattr(tokenizer, "model_max_length", 77)
    for p in dict.fromkeys(p for p in prompts if p):
        n = len(tokenizer(p, truncation=False, verbose=False)["input_ids"])  # verbose: no transformers warning too
        if n > limit:
            warnings.warn(
                f"{what} is {n} tokens; the text encoder reads only the first {limit} (incl. start/end), "
                f"the rest is ignored: {p[:60]!r}...",
                stacklevel=3,
            )


# What diffusers and transformers log about a prompt over the text encoder's limit; sdkit's own
# warning (warn_long_prompts) says it once, without printing the whole truncated text.
_TRUNCATION_LOGS = ("The following part of your input was truncated",
                    "Token indices sequence length is longer than the specified maximum")
_quiet_lock = threading.Lock()
_quiet_users = 0


class _DropTruncationLogs(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_TRUNCATION_LOGS)


_DROP = _DropTruncationLogs()


def _truncation_loggers() -> list[logging.Logger]:
    names = [n for n in logging.root.manager.loggerDict if n.startswith("diffusers.pipelines.")]
    names.append("transformers.tokenization_utils_base")
    return [logging.getLogger(n) for n in names]


@contextlib.contextmanager
def quiet_truncation_logs():
    """Within: diffusers' and transformers' truncation messages are dropped (the filter sits on the loggers
    that emit them, so it works whatever handlers a user has). Thread-safe; nests."""
    global _quiet_users
    with _quiet_lock:
        _quiet_users += 1
        loggers = _truncation_loggers()
        for lg in loggers:
            lg.addFilter(_DROP)  # adding twice is a no-op
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_users -= 1
            if not _quiet_users:
                for lg in _truncation_loggers():
                    lg.removeFilter(_DROP)
