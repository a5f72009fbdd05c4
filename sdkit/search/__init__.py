"""Verifier-guided search: the best image per prompt for the compute spent. A stage above generation: a strategy
calls `generate` (with a `before_save` hook that scores and keeps candidates), never the other way round.

Every strategy is a function of one signature, k-diffusion style,

    run = strategy(pipe, prompt, scorer="flax", *, n=..., seed=..., num_inference_steps=..., <its settings>,
                   clip_model=None, edit=None, output_dir=None, **generate_kwargs)

and returns a `Run` of the finished candidates whose `run.search` is a `Search`: `.ranked` best first per prompt,
`.best`, `.compute` (UNet evaluations, preview decodes, images scored, wall time), `.pruned` (`Pruned` records).

    from sdkit.search import best_of_n, successive_halving, particle_resampling, finish_pruned
    run = successive_halving(pipe, "a red circle", "flax", n=32, seed=0, num_inference_steps=20)
    finish_pruned(pipe, run.search.pruned[0])     # a pruned candidate at full steps
    run = successive_halving(pipe, "a red circle", n=16, edit=prepare_img2img(image, strength=0.6))  # an edit

`scorer` is what the search ranks by ("flax", "torch", "auto" or a scorer object; None is refused). Each finished
image is saved once, as soon as its batch is decoded, with its scores and the search in `extra["search"]`;
`sdkit.regenerate` makes any of them again from its PNG (`replay`: a particle by following its `Lineage`).

The modules: `family` (what every strategy shares: the opening, counting, preview scoring, the closing),
`baseline` (best_of_n), `drafts` (draft_then_finish), `halving` (successive_halving), `particles`
(particle_resampling), `previews` (x0 previews and scheduler-step hooks), `replay` (regenerate, finish_pruned),
`registry` (strategies by name, `check_search` before any model work).

Adding a strategy: write `sdkit/search/<noun>.py` with a function of the signature above that opens with
`family.open_search(...)`, makes candidates with `opening.make(before_save=...)` inside `family.counting`, and
ends with `opening.close(run, scored)`; give the module a `check(n, num_inference_steps, strength, **settings)`
that raises ValueError on bad settings; add its name to `registry.STRATEGIES`. Its keyword parameters that are
not common arguments are its settings (the CLI's and sweeps' `search_kwargs`).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "best_of_n": "baseline", "draft_then_finish": "drafts", "successive_halving": "halving",
    "particle_resampling": "particles", "default_schedule": "halving", "default_resampling": "particles",
    "finish_pruned": "replay", "regenerate": "replay",
    "STRATEGIES": "registry", "strategy_named": "registry", "check_search": "registry",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'sdkit.search' has no attribute {name!r}")
