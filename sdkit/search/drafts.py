"""draft_then_finish: what users do by hand, as a search: many cheap drafts, cull, finish the best."""

from __future__ import annotations

from typing import Any, Sequence

from sdkit.checks import is_int
from sdkit.ranking import rank
from sdkit.results import Run
from sdkit.search.family import counting, open_search


def check(n, num_inference_steps, strength=None, *, keep=2, draft_steps=6, **_) -> None:
    """draft_then_finish's settings, or a ValueError naming the bad one; `strength`: an edit's."""
    if not is_int(n) or n < 1:
        raise ValueError(f"n={n!r} drafts per prompt: must be an integer >= 1")
    if not is_int(keep) or not 1 <= keep <= n:
        raise ValueError(f"keep={keep!r}: must be an integer from 1 to n={n} (the drafts per prompt)")
    if not is_int(num_inference_steps) or num_inference_steps < 2:
        raise ValueError(f"num_inference_steps={num_inference_steps!r}: must be an integer >= 2 for drafts to be shorter")
    if not is_int(draft_steps) or not 1 <= draft_steps < num_inference_steps:
        raise ValueError(f"draft_steps={draft_steps!r}: must be an integer from 1 to num_inference_steps - 1 "
                         f"= {num_inference_steps - 1}")
    if strength is not None and int(draft_steps * strength) < 1:
        raise ValueError(f"draft_steps={draft_steps} with strength={strength} runs int({draft_steps} * {strength}) = 0 "
                         "denoising steps; raise draft_steps")


def draft_then_finish(pipe, prompt: str | Sequence[str], scorer: Any = "flax", *, n: int = 16, keep: int = 2,
                      draft_steps: int = 6, num_inference_steps: int = 30, **kwargs) -> Run:
    """N drafts per prompt at `draft_steps`, ranked; the best `keep` of each prompt made again with the same seeds
    at `num_inference_steps`, and ranked by their final score (what users do by hand: cull, then finish).

    Drafts stay in memory (`run.search.drafts`); the finished candidates are saved under one run id, each keeping
    its draft's index (so its file name) and recording the draft's rank and score in `extra["search"]`.
    """
    edit = kwargs.get("edit")
    check(n, num_inference_steps, edit.strength if edit is not None else None, keep=keep, draft_steps=draft_steps)
    s = open_search("draft_then_finish", pipe, prompt, scorer, n=n,
                    settings={"n": n, "keep": keep, "draft_steps": draft_steps}, **kwargs)
    with counting(s.pipe, s.compute):
        drafts = s.make(n=n, seed=s.base, num_inference_steps=draft_steps, save=False)
        drafted = rank(s.score(drafts.candidates))
        finished, cancelled = [], drafts.cancelled
        for p in ([] if cancelled else s.prompts):  # a cancelled draft round finishes nothing
            chosen = [r for r in drafted if r.candidate.prompt == p and r.rank <= keep]

            def before_save(batch, chosen=chosen):
                by_seed = {r.candidate.seed: r for r in chosen}
                for c in batch:
                    r = by_seed[c.seed]
                    c.index = r.candidate.index  # unique within the run id: prompts share seeds
                    c.extra["search"] = {**s.settings, "draft_rank": r.rank, "draft_score": r.score}
                return s.score(batch)

            run = s.make([p], n=len(chosen), seeds=[r.candidate.seed for r in chosen],
                         num_inference_steps=num_inference_steps, before_save=before_save)
            finished += run.candidates
            if run.cancelled:
                cancelled = True
                break
    drafts.cancelled = cancelled
    return s.close(drafts, finished, drafts=[r.candidate for r in drafted])
