"""Verifier-guided search: x0 previews of candidates while they denoise (`previews`), search strategies
(`strategies`). The strategies' names are here too, loaded on first use:

    from sdkit.search import successive_halving, finish_pruned
    run = sdkit.generate(pipe, "a red circle", n=16, seed=0, num_inference_steps=20, search="successive_halving")
    finish_pruned(pipe, run.search.pruned[0])      # a pruned candidate at full steps
"""

from __future__ import annotations

import importlib

_EXPORTS = {name: "strategies" for name in (
    "best_of_n", "draft_then_finish", "successive_halving", "finish_pruned", "check_search", "default_schedule",
    "Search", "Compute", "STRATEGIES")}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'sdkit.search' has no attribute {name!r}")
