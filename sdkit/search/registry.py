"""The strategies by name, and checking a search's settings before any model work (the CLI, sweeps and the
explorer start searches by name)."""

from __future__ import annotations

import functools
import importlib
import inspect
from typing import Any, Callable

from sdkit.results import Run

# name -> the module that holds it (the function has the name). A new strategy: one module, one line here.
STRATEGIES = {"best_of_n": "baseline", "draft_then_finish": "drafts", "successive_halving": "halving",
              "particle_resampling": "particles"}


def _common() -> frozenset[str]:
    """Arguments every strategy takes and hands on (the pipeline and prompt, generate's own, the scorer and its
    checkpoint, an edit), not settings."""
    from sdkit.generation import generate

    own = {k for k, p in inspect.signature(generate).parameters.items() if p.kind != p.VAR_KEYWORD}
    return frozenset(own - {"before_save"} | {"clip_model", "edit", "scorer"})


def strategy_named(name: str) -> Callable[..., Run]:
    """The strategy called `name` (one of `STRATEGIES`)."""
    if name not in STRATEGIES:
        raise ValueError(f"search={name!r}: no such strategy; use one of {', '.join(STRATEGIES)}, or call a function "
                         "of the strategy signature yourself")
    return getattr(importlib.import_module(f"sdkit.search.{STRATEGIES[name]}"), name)


def resolve(search) -> Callable[..., Run]:
    """A strategy by its name, or `search` itself if it is a function (e.g. a functools.partial of one)."""
    if isinstance(search, str):
        return strategy_named(search)
    if callable(search):
        return search
    raise ValueError(f"search={search!r}: give a strategy name ({', '.join(STRATEGIES)}) or a function of the strategy "
                     "signature strategy(pipe, prompt, scorer, *, n, seed, num_inference_steps, **kwargs) -> Run")


def settings_of(strategy) -> dict[str, Any]:
    """A strategy's own settings, with their defaults: the keyword parameters it declares that every strategy takes
    too are not settings."""
    try:
        params = inspect.signature(strategy).parameters
    except (TypeError, ValueError):  # a builtin or C callable: it declares nothing we can read
        return {}
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    common = _common()
    return {k: p.default for k, p in params.items() if p.kind in kinds and k not in common}


def check_search(search, settings: dict | None = None, *, n: int, num_inference_steps: int,
                 strength: float | None = None) -> tuple[Callable[..., Run], dict]:
    """Resolve `search` and check `settings` (for the built-in strategies, their values too, against `n`,
    `num_inference_steps` and an edit's `strength`) without any model work: (strategy, settings), or a ValueError
    naming what is wrong."""
    strategy = resolve(search)
    settings = dict(settings or {})
    own = settings_of(strategy)
    name = getattr(strategy, "__name__", None) or getattr(getattr(strategy, "func", None), "__name__", repr(strategy))
    clash = sorted(set(settings) & _common())
    if clash:
        raise ValueError(f"settings {clash}: arguments every strategy takes; pass them to the strategy itself")
    unknown = sorted(set(settings) - set(own))
    if unknown:
        raise ValueError(f"settings {unknown}: {name} takes " + (
            ", ".join(sorted(own)) if own else "no settings of its own") + " (other arguments are generate's)")
    base = strategy
    while isinstance(base, functools.partial):
        base = base.func
    check = getattr(importlib.import_module(base.__module__), "check", None) if base.__name__ in STRATEGIES else None
    if check is not None:
        given = {**{k: v for k, v in own.items() if v is not inspect.Parameter.empty}, **settings}
        check(n, num_inference_steps, strength, **given)
    return strategy, settings
