"""Sweeps: every prompt × seed × grid point, in this process or on Ray, resumable and exactly once on disk.

    sweep = Sweep(["a red circle", "a blue square"], n=8, model="sdkit:toy", scorer="torch",
                  grid={"guidance_scale": [2, 4, 7.5], "num_inference_steps": 20})
    result = run_sweep(sweep, "outputs/study")                      # here, in one process
    result = run_sweep(sweep, "/shared/study", backend="ray")       # the same work on Ray
    Sweep(prompts, n=16, scorer="torch", search="successive_halving", grid=...)  # a search per prompt × grid point

Item k of a sweep (a prompt, a seed, a grid point) always has index k, so its file
name `{run_id}-{index:03d}-s{seed}.png` is fixed (`run_id` is a fingerprint of the
description): that is what makes a sweep resumable and exactly-once on disk
(see `sdkit.sweep.run`). This module is the description: checked when created,
before any model is loaded.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from sdkit.checks import as_prompt_list, check_generate_args, check_seed, is_int, read_prompt_file
from sdkit.results import Candidate
from sdkit.save import file_name

# generate()'s per-image settings a grid may vary (`scheduler` goes to load_pipeline).
GRID_PARAMS = ("guidance_scale", "num_inference_steps", "scheduler", "negative_prompt", "height", "width")
BACKENDS = ("flax", "torch", "auto")  # scorer names that mean "CLIP on this backend"


@dataclass(frozen=True)
class SweepItem:
    """One image of a sweep."""

    index: int  # position in the sweep; fixes the file name
    prompt: str
    seed: int
    params: dict[str, Any]  # the grid point: a value for each name in the grid


@dataclass(frozen=True)
class Sweep:
    """What to generate: every prompt × every seed × every point of `grid`. Validated on creation."""

    prompts: Sequence[str] | os.PathLike  # a list, or a Path to a file with one prompt per line ('#' lines skipped)
    n: int = 4  # candidates per prompt and grid point, with seeds seed, seed+1, ... (as `generate`)
    seeds: Sequence[int] | None = None  # explicit seeds instead (overrides n and seed)
    seed: int = 0  # base seed; every prompt and grid point gets the same seeds, so comparisons are paired
    grid: Mapping[str, Any] = field(default_factory=dict)  # name -> list of values (swept) or one value (fixed)
    model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    # "flax", "torch", "auto" (CLIP there), a verifier spec ("pickscore", "clip:1,aesthetic:0.5"; both loaded once
    # per worker, see load_scorer), a scorer object (anything with the `scorer(images, prompts) -> Scores`
    # signature; on Ray it is pickled to each worker), or None
    scorer: Any = None
    clip_model: str | None = None  # a named scorer's CLIP; None: the one that belongs with the model (clip_for)
    scorer_backend: str = "flax"  # where the verifiers of a spec run ("flax", "torch", "auto")
    combine: str | None = None  # several verifiers: "zscore" (default) or "rank" (sdkit.scoring.ensemble)
    loras: Mapping[str, float] | None = None  # {path: weight} on every worker (load_pipeline's loras=)
    # [path, weight, sha256] of each LoRA, hashed once when created: the run id holds the files' contents.
    _lora_key: tuple = field(default=(), init=False, repr=False, compare=False)
    device: str = "auto"  # on each worker
    dtype: str = "auto"
    safety_checker: bool = True
    batch_size: int = 4  # images generated together, and retried together if a worker dies (a search: all its seeds)
    max_items: int = 10_000  # bigger sweeps need confirm=True: a stray grid value can mean days of GPU time
    confirm: bool = False
    name: str = "sweep"  # prefix of the run id, hence of every file name
    # A strategy name (sdkit.search.STRATEGIES): each prompt × grid point is one search over its n seeds,
    # and only its survivors are saved (the rest are "pruned": true manifest lines). Needs a scorer.
    search: str | None = None
    search_kwargs: Mapping[str, Any] | None = None  # the strategy's settings (JSON values; previewer: a path or id)

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731  (frozen: normalise once, here)
        set_("prompts", _prompt_list(self.prompts))
        set_("seeds", _seed_list(self.n, self.seeds, self.seed))
        set_("n", len(self.seeds))
        set_("grid", _check_grid(self.grid))
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(f"model={self.model!r}: give a Hub id, a local diffusers folder or 'sdkit:tiny'")
        _check_scorer(self)
        if self.loras:
            from sdkit.load.loras import check_loras

            checked = check_loras(dict(self.loras))  # here, before any worker starts: a missing file or bad weight named
            set_("loras", {x.path: x.weight for x in checked})
            set_("_lora_key", tuple((x.path, x.weight, x.sha256) for x in checked))
        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size!r}: must be an integer >= 1")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name or ""):
            raise ValueError(f"name={self.name!r}: use letters, digits, '_', '.', '-' (it starts every file name)")
        if self.search is not None or self.search_kwargs:
            set_("search_kwargs", _check_search(self))
        total = len(self)
        if total > self.max_items and not self.confirm:
            sizes = " × ".join([f"{len(self.prompts)} prompts", f"{len(self.seeds)} seeds"] +
                               [f"{len(v)} {k}" for k, v in self.grid.items() if len(v) > 1])
            raise ValueError(f"this sweep has {total} images ({sizes}), over max_items={self.max_items}; "
                             "pass confirm=True if you mean it, or raise max_items")

    def __len__(self) -> int:
        n = len(self.prompts) * len(self.seeds)
        for values in self.grid.values():
            n *= len(values)
        return n

    @property
    def run_id(self) -> str:
        """`{name}-{fingerprint}` of everything that decides the pixels: the same description, the same files."""
        what = [self.model, list(self.prompts), list(self.seeds), [[k, list(v)] for k, v in self.grid.items()],
                self.device, self.dtype, self.safety_checker]
        if self.search is not None:  # which seeds survive, hence which files exist, depends on these too
            what.append([self.search, self.search_kwargs, _scorer_key(self), self.clip_model])
        if self._lora_key:  # the files' contents, not only their names: another file at the same path is another run
            what.append([list(x) for x in self._lora_key])
        return f"{self.name}-{hashlib.sha256(json.dumps(what).encode()).hexdigest()[:8]}"

    def items(self) -> list[SweepItem]:
        """Every image, prompt by prompt, grid point by grid point, seed by seed."""
        points = [dict(zip(self.grid, values)) for values in itertools.product(*self.grid.values())]
        combos = itertools.product(self.prompts, points, self.seeds)
        return [SweepItem(i, p, s, g) for i, (p, g, s) in enumerate(combos)]

    def units(self) -> list[list[int]]:
        """Item indices in units of work: one prompt and grid point, up to `batch_size` seeds (with a search, all
        its seeds: the search chooses among them).

        Fixed by the description, so a local run and a Ray run batch the same images together.
        """
        per_point = len(self.seeds)
        if self.search is not None:
            return [list(range(start, start + per_point)) for start in range(0, len(self), per_point)]
        return [list(range(start + k, start + min(k + self.batch_size, per_point)))
                for start in range(0, len(self), per_point) for k in range(0, per_point, self.batch_size)]

    def file_name(self, item: SweepItem) -> str:
        return file_name(Candidate(image=None, prompt=item.prompt, seed=item.seed, index=item.index, run_id=self.run_id))


def _prompt_list(prompts) -> tuple[str, ...]:
    if isinstance(prompts, os.PathLike):
        prompts = read_prompt_file(prompts, "prompts")
    elif isinstance(prompts, str):
        if os.path.isfile(prompts):
            raise ValueError(f"prompts={prompts!r} is a file name: pass Path({prompts!r}) to read prompts from it, "
                             "or a list of prompts")
        prompts = [prompts]
    prompts = as_prompt_list(list(prompts), "prompts")
    dup = next((p for i, p in enumerate(prompts) if p in prompts[:i]), None)
    if dup is not None:
        raise ValueError(f"prompt {dup!r} is listed twice; each prompt once (its seeds already repeat it)")
    return tuple(prompts)


def _seed_list(n, seeds, seed) -> tuple[int, ...]:
    check_seed(seed)
    if is_int(seeds):
        raise TypeError(f"seeds={seeds!r} is a count: say n={seeds} (as in generate), or give a list of seeds")
    if seeds is None:
        if not is_int(n) or n < 1:
            raise ValueError(f"n={n!r} candidates: must be an integer >= 1")
        seeds = range(seed, seed + n)
    seeds = tuple(seeds)
    if not seeds:
        raise ValueError("seeds is an empty list; give at least one seed, or a count n")
    for s in seeds:
        check_seed(s, "seeds")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds {list(seeds)} repeat a seed; the same seed gives the same image")
    return seeds


def default_steps() -> int:
    """generate's default num_inference_steps: a grid point's steps where the grid sets none, searches too (a strategy's
    own default differs, so a sweep passes this one)."""
    import inspect

    from sdkit.generation import generate

    return inspect.signature(generate).parameters["num_inference_steps"].default


def _check_search(sweep: Sweep) -> dict:
    """The search's settings, checked for every grid point's steps, before any model is loaded."""
    from sdkit.load.schedulers import SCHEDULERS
    from sdkit.search.particles import STOCHASTIC
    from sdkit.search.registry import STRATEGIES, check_search

    search, kwargs = sweep.search, dict(sweep.search_kwargs or {})
    if search is None:
        raise ValueError(f"search_kwargs={kwargs!r} without search=: they set a search up")
    if not isinstance(search, str):  # a name travels to Ray workers and into the run id
        raise ValueError(f"search={search!r}: a sweep takes a strategy name, one of {', '.join(STRATEGIES)}")
    if sweep.scorer is None:
        raise ValueError(f"search={search!r} with scorer=None: a search ranks by a scorer; use 'flax', 'torch', "
                         "'auto', a verifier spec or a scorer object")
    if list(sweep.seeds) != list(range(sweep.seeds[0], sweep.seeds[0] + len(sweep.seeds))):
        raise ValueError(f"seeds={list(sweep.seeds)} with search={search!r}: a search numbers its candidates from one "
                         "seed (candidate k gets seed + k); give n= and seed=")
    for k, v in kwargs.items():
        try:
            json.dumps(v)
        except TypeError:
            raise ValueError(f"search_kwargs[{k!r}]={v!r}: a sweep's settings must be JSON values (they go into the "
                             "run id); give a previewer as its folder or Hub id") from None
    if search == "particle_resampling":  # checked here, as the model's own scheduler is known only once loaded
        for name in sweep.grid.get("scheduler", (None,)):
            if name is None or SCHEDULERS[name][0] not in STOCHASTIC:
                raise ValueError(f"search='particle_resampling' with scheduler={name!r}: resampled particles part ways "
                                 "only with a stochastic sampler; put scheduler='Euler a' in the grid")
    for steps in sweep.grid.get("num_inference_steps", (default_steps(),)):
        check_search(search, kwargs, n=len(sweep.seeds), num_inference_steps=steps)
    return dict(sorted(kwargs.items()))  # the run id does not depend on the order they were given in


def _check_scorer(sweep: Sweep) -> None:
    """The scorer settings, checked before any model loads (a ValueError naming the bad one)."""
    from sdkit.scoring.ensemble import COMBINE
    from sdkit.scoring.scorers import checked_spec

    scorer = sweep.scorer
    if not (scorer is None or callable(scorer) or isinstance(scorer, str)):
        raise ValueError(f"scorer={scorer!r}: use 'flax', 'torch', 'auto', a verifier spec such as "
                         "'clip:1,aesthetic:0.5', a scorer object, or None")
    spec = isinstance(scorer, str) and scorer not in BACKENDS
    if spec:
        try:
            checked_spec(scorer)
        except ValueError as e:
            raise ValueError(f"scorer={scorer!r}: {e}") from None
    if sweep.clip_model is not None and not isinstance(scorer, str):
        raise ValueError(f"clip_model={sweep.clip_model!r} is for a named scorer ('flax', 'torch', 'auto' or a "
                         f"verifier spec); scorer={scorer!r} already is one")
    if sweep.scorer_backend not in BACKENDS:
        raise ValueError(f"scorer_backend={sweep.scorer_backend!r}: one of {', '.join(BACKENDS)}")
    if sweep.combine is not None and sweep.combine not in COMBINE:
        raise ValueError(f"combine={sweep.combine!r}: one of {', '.join(COMBINE)}")
    if not spec and (sweep.scorer_backend != "flax" or sweep.combine is not None):
        raise ValueError(f"scorer_backend={sweep.scorer_backend!r}, combine={sweep.combine!r} are for verifiers named in "
                         f"scorer (e.g. 'clip:1,aesthetic:0.5'); scorer={scorer!r} " +
                         ("names its backend itself" if isinstance(scorer, str) else "is not a spec"))


def scorer_options(sweep: Sweep) -> dict:
    """`scorer_for`'s options for the sweep's verifier spec (none for a backend name or an object)."""
    if not isinstance(sweep.scorer, str) or sweep.scorer in BACKENDS:
        return {}
    return {"backend": sweep.scorer_backend} | ({"combine": sweep.combine} if sweep.combine else {})


def _scorer_key(sweep: Sweep) -> str:
    """A scorer as the run id records it: its name (a spec with its backend and combine), or what the object is
    called."""
    scorer = sweep.scorer
    if isinstance(scorer, str):
        options = scorer_options(sweep)
        return scorer + "".join(f" {k}={v}" for k, v in options.items())  # a backend name: as before (old run ids)
    if getattr(scorer, "model_id", None):
        return f"{type(scorer).__qualname__}:{scorer.model_id}"
    return f"{getattr(scorer, '__module__', '')}.{getattr(scorer, '__qualname__', type(scorer).__qualname__)}"


def _check_grid(grid) -> dict[str, tuple]:
    from sdkit.load.schedulers import check_scheduler

    if not isinstance(grid, Mapping):
        raise TypeError(f"grid must be a dict of parameter name -> values, got {type(grid).__name__}")
    out = {}
    for name, values in grid.items():
        if name not in GRID_PARAMS:
            raise ValueError(f"grid parameter {name!r} is not known; allowed: {list(GRID_PARAMS)}")
        values = tuple(values) if isinstance(values, (list, tuple, range)) else (values,)
        if not values:
            raise ValueError(f"grid[{name!r}] is an empty list; give at least one value")
        for v in values:
            if name == "scheduler":
                check_scheduler(v)
            elif name == "negative_prompt":
                if v is not None and not isinstance(v, str):
                    raise ValueError(f"grid['negative_prompt'] value {v!r}: must be a string or None")
            else:
                args = dict(num_inference_steps=1, guidance_scale=1.0, height=None, width=None)
                args[name] = v
                check_generate_args(n=1, seeds=None, batch_size=None, **args)
        if len(set(values)) != len(values):
            raise ValueError(f"grid[{name!r}] = {list(values)} repeats a value")
        out[name] = values
    return out
