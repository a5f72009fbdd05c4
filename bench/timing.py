"""Interleaved A/B timing: every ratio is measured side by side, repetition by repetition.

The machines are shared, so absolute times drift by 2x while a neighbour's job
runs. Running the cases in turn within each repetition (and in reverse order on
odd repetitions) puts the same neighbour load on every case; the ratio of each
repetition is then a fair sample, and the median of those ratios is reported
with its spread (min-max).
"""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable


@dataclass
class Stat:
    """Median and spread of a list of samples (seconds, or a ratio)."""

    median: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, xs: list[float]) -> "Stat":
        return cls(statistics.median(xs), min(xs), max(xs), len(xs))

    def spread(self) -> str:
        return f"{self.min:.3g}–{self.max:.3g}"

    def to_dict(self) -> dict:
        return asdict(self)


def interleaved(cases: dict[str, Callable[[], object]], reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call for each case; cases alternate within every repetition."""
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            cases[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        for name in (names if r % 2 == 0 else names[::-1]):
            gc.collect()  # no collector pause inside someone else's timing
            t0 = time.perf_counter()
            cases[name]()
            _sync()
            times[name].append(time.perf_counter() - t0)
    return times


def _sync() -> None:
    """Wait for queued GPU work, so the time is the work's and not the launch's."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def ratios(times: dict[str, list[float]], num: str, den: str) -> list[float]:
    """Per-repetition `times[num] / times[den]`."""
    return [a / b for a, b in zip(times[num], times[den])]


def best_ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    """Ratio of the fastest repetitions: the pair least slowed by other jobs."""
    return min(times[num]) / min(times[den])


def summary(times: dict[str, list[float]]) -> dict[str, dict]:
    return {name: Stat.of(ts).to_dict() for name, ts in times.items()}
