"""Search strategies: the best image per prompt for the compute spent. Every strategy has one signature,

    search = strategy(pipe, prompt, scorer, *, n=..., seed=..., num_inference_steps=..., output_dir=..., **generate_kwargs)

and returns a `Search`: the finished candidates ranked per prompt, and what they cost (`search.compute`: UNet
evaluations, images scored, wall time), so strategies compare on the same footing. A new strategy is a new
function of this shape.

    best_of_n(pipe, "a red circle", "flax", n=8, seed=0)                      # today's generate + rerank
    draft_then_finish(pipe, "a red circle", "flax", n=16, keep=2, draft_steps=6)

Finished candidates are ordinary `generate` outputs (their own seed, all their steps), so `sdkit.regenerate`
makes each again bit for bit from its PNG; their metadata records the search (`extra["search"]`).
"""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from sdkit.checks import as_prompt_list, is_int
from sdkit.load.invariance import cfg_pairs
from sdkit.ranking import rank, record_scores, score_candidates, scorer_for
from sdkit.results import Candidate, Ranked


@dataclass
class Compute:
    """What a search spent. A UNet evaluation is one candidate through the UNet once (a classifier-free-guidance
    pair counts once, as in best-of-N's own count), so best-of-N with N candidates and S DDIM steps costs N * S."""

    unet_evaluations: int = 0
    scored_images: int = 0
    preview_decodes: int = 0
    wall_s: float = 0.0

    def ratio(self, other: "Compute") -> float:
        """This search's UNet evaluations as a fraction of `other`'s (e.g. of best-of-8's)."""
        return self.unet_evaluations / other.unet_evaluations


@dataclass
class Search:
    """A search's outcome: `ranked` holds the finished candidates, best first within each prompt."""

    strategy: str
    settings: dict[str, Any]
    ranked: list[Ranked]
    compute: Compute
    drafts: list[Candidate] = field(default_factory=list)  # draft_then_finish: every draft, scored

    @property
    def best(self) -> list[Candidate]:
        """The winner of each prompt, in prompt order."""
        return [r.candidate for r in self.ranked if r.rank == 1]


@contextlib.contextmanager
def counting(pipe, compute: Compute):
    """Count UNet evaluations (candidates per call) and wall time inside the block; the UNet is restored after."""
    unet = pipe.unet
    had_own = "forward" in vars(unet)  # sdkit's batch-invariant wrapper lives on the instance
    inner = unet.forward

    @functools.wraps(inner)
    def forward(sample, *args, **kwargs):
        b = sample.shape[0]
        candidates = b // 2 if cfg_pairs(sample) else b
        skipped = vars(unet).get("_sdkit_skip") or ()  # pruned candidates cost nothing (load.invariance.skipping)
        compute.unet_evaluations += candidates - sum(1 for i in skipped if i < candidates)
        return inner(sample, *args, **kwargs)

    unet.forward = forward
    start = time.perf_counter()
    try:
        yield compute
    finally:
        compute.wall_s += time.perf_counter() - start
        if had_own:
            unet.forward = inner
        else:
            del unet.forward


def best_of_n(pipe, prompt: str | Sequence[str], scorer: Any = "flax", *, n: int = 8, seed: int | None = None,
              clip_model: str | None = None, output_dir=None, **generate_kwargs) -> Search:
    """N candidates per prompt to the last step, scored and ranked: the baseline every search is measured against."""
    from sdkit.generation import generate

    scorer = scorer_for(scorer, getattr(pipe, "_sdkit", {}).get("model_id", ""), clip_model)
    compute = Compute()
    with counting(pipe, compute):
        run = generate(pipe, prompt, n=n, seed=seed, output_dir=output_dir, **generate_kwargs)
        for c in run.candidates:
            c.extra["search"] = {"strategy": "best_of_n", "n": n}
        scored = score_candidates(run.candidates, scorer)
        compute.scored_images += len(scored)
        record_scores(scored)
    return Search("best_of_n", {"n": n}, rank(scored), compute)


def draft_then_finish(pipe, prompt: str | Sequence[str], scorer: Any = "flax", *, n: int = 16, keep: int = 2,
                      draft_steps: int = 6, num_inference_steps: int = 30, seed: int | None = None,
                      clip_model: str | None = None, output_dir=None, progress: bool = True,
                      **generate_kwargs) -> Search:
    """N drafts per prompt at `draft_steps`, ranked; the best `keep` of each prompt made again with the same seeds
    at `num_inference_steps`, and ranked by their final score (what users do by hand: cull, then finish).

    Drafts stay in memory (`search.drafts`); the finished candidates are saved like `generate`'s, each with its
    draft's rank and score in `extra["search"]`.
    """
    from sdkit.generation import generate

    prompts = as_prompt_list(prompt)
    if not is_int(n) or n < 1:
        raise ValueError(f"n={n!r} drafts per prompt: must be an integer >= 1")
    if not is_int(keep) or not 1 <= keep <= n:
        raise ValueError(f"keep={keep!r}: must be an integer from 1 to n={n} (the drafts per prompt)")
    if not is_int(num_inference_steps) or num_inference_steps < 2:
        raise ValueError(f"num_inference_steps={num_inference_steps!r}: must be an integer >= 2 for drafts to be shorter")
    if not is_int(draft_steps) or not 1 <= draft_steps < num_inference_steps:
        raise ValueError(f"draft_steps={draft_steps!r}: must be an integer from 1 to num_inference_steps - 1 "
                         f"= {num_inference_steps - 1}")
    settings = {"strategy": "draft_then_finish", "n": n, "keep": keep, "draft_steps": draft_steps}
    scorer = scorer_for(scorer, getattr(pipe, "_sdkit", {}).get("model_id", ""), clip_model)
    compute = Compute()
    with counting(pipe, compute):
        drafts = generate(pipe, prompts, n=n, seed=seed, num_inference_steps=draft_steps, progress=progress,
                          **generate_kwargs)
        drafted = rank(score_candidates(drafts.candidates, scorer))
        compute.scored_images += len(drafted)
        finished = []
        for p in prompts:
            chosen = [r for r in drafted if r.candidate.prompt == p and r.rank <= keep]
            run = generate(pipe, p, n=len(chosen), seeds=[r.candidate.seed for r in chosen],
                           num_inference_steps=num_inference_steps, output_dir=output_dir, progress=progress,
                           **generate_kwargs)
            for c, r in zip(run.candidates, chosen):  # generate keeps the seeds' order
                c.extra["search"] = {**settings, "draft_rank": r.rank, "draft_score": r.score}
            finished += run.candidates
        scored = score_candidates(finished, scorer)
        compute.scored_images += len(scored)
        record_scores(scored)
    return Search("draft_then_finish", {k: v for k, v in settings.items() if k != "strategy"}, rank(scored),
                  compute, drafts=[r.candidate for r in drafted])
