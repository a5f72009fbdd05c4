"""Search strategies: the best image per prompt for the compute spent. Every strategy has one signature,

    search = strategy(pipe, prompt, scorer, *, n=..., seed=..., num_inference_steps=..., output_dir=..., **generate_kwargs)

and returns a `Search`: the finished candidates ranked per prompt, and what they cost (`search.compute`: UNet
evaluations, images scored, wall time), so strategies compare on the same footing. A new strategy is a new
function of this shape.

    best_of_n(pipe, "a red circle", "flax", n=8, seed=0)                      # today's generate + rerank
    draft_then_finish(pipe, "a red circle", "flax", n=16, keep=2, draft_steps=6)
    successive_halving(pipe, "a red circle", "flax", n=16, prune_at=(2, 6), keep=(4, 2))  # prune on x0 previews

Finished candidates are ordinary `generate` outputs (their own seed, all their steps), so `sdkit.regenerate`
makes each again bit for bit from its PNG; their metadata records the search (`extra["search"]`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import secrets
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
    pruned: list[dict] = field(default_factory=list)  # successive_halving: prompt, seed, step, preview score

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


def _check_schedule(n, prune_at, keep, num_inference_steps) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if not is_int(n) or n < 2:
        raise ValueError(f"n={n!r} candidates per prompt: must be an integer >= 2 for pruning to choose")
    prune_at, keep = tuple(prune_at), tuple(keep)
    if not prune_at or len(prune_at) != len(keep):
        raise ValueError(f"prune_at={list(prune_at)} and keep={list(keep)}: give one keep count per pruning step")
    if not all(is_int(s) for s in prune_at) or list(prune_at) != sorted(set(prune_at)) or not (
            1 <= prune_at[0] and prune_at[-1] < num_inference_steps):
        raise ValueError(f"prune_at={list(prune_at)}: increasing steps from 1 to num_inference_steps - 1 "
                         f"= {num_inference_steps - 1}")
    if not all(is_int(k) for k in keep) or not all(1 <= b <= a for a, b in zip((n - 1, *keep), keep)):
        raise ValueError(f"keep={list(keep)}: non-increasing counts from 1 to n - 1 = {n - 1}")
    return prune_at, keep


def successive_halving(pipe, prompt: str | Sequence[str], scorer: Any = "flax", *, n: int = 16,
                       prune_at: Sequence[int] = (2, 6), keep: Sequence[int] = (4, 2), num_inference_steps: int = 20,
                       seed: int | None = None, previewer=None, clip_model: str | None = None, output_dir=None,
                       progress: bool = True, **generate_kwargs) -> Search:
    """N candidates per prompt denoised together; after step `prune_at[j]` each live candidate's x0 preview
    (decoded by `previewer`, default the pipeline's VAE; an `AutoencoderTiny` is cheaper) is scored against its
    own prompt and only the best `keep[j]` of each prompt go on. The survivors are finished and ranked by their
    final score. Pruned candidates cost no more UNet evaluations (`sdkit.load.invariance.skipping`), and a
    survivor's trajectory is the one it has alone, so it regenerates bit for bit from its PNG.

    Only the survivors are saved; the pruned ones are listed in `search.pruned` (seed, step, preview score) and,
    with `output_dir`, in `<run_id>.search.json`, so finishing one later is `generate(..., seeds=[seed])`.
    """
    from sdkit.generation import generate
    from sdkit.load.invariance import skipping
    from sdkit.search.previews import capture_previews, decode_previews

    prompts = as_prompt_list(prompt)
    prune_at, keep = _check_schedule(n, prune_at, keep, num_inference_steps)
    if not getattr(pipe.unet, "_sdkit_per_sample", False):  # on GPUs invariance is off by default
        raise ValueError("successive_halving prunes candidates mid-way without touching the survivors, which needs "
                         "a batch-invariant pipeline: load_pipeline(..., batch_invariant=True)")
    out = None
    if output_dir is not None:
        from sdkit.checks import check_output_dir
        from sdkit.save import recover

        out = check_output_dir(output_dir)
        recover(out)
    base = seed if seed is not None else secrets.randbits(31)
    seeds = [base + k for k in range(n)]
    settings = {"strategy": "successive_halving", "n": n, "prune_at": list(prune_at), "keep": list(keep)}
    scorer = scorer_for(scorer, getattr(pipe, "_sdkit", {}).get("model_id", ""), clip_model)
    compute, pruned, previewed = Compute(), {}, {}
    with counting(pipe, compute), skipping(pipe) as skip, \
            capture_previews(pipe, steps=[s - 1 for s in prune_at]) as previews:

        def prune(p):
            if p.finished is not None or p.step not in prune_at:
                return
            live = [i for i in range(len(prompts) * n) if i not in skip]
            images = decode_previews(previews.at(p.step - 1)[live], previewer or pipe.vae)
            compute.preview_decodes += len(live)
            looks = score_candidates([Candidate(image=im, prompt=prompts[i // n], seed=seeds[i % n], index=i)
                                      for i, im in zip(live, images)], scorer)
            compute.scored_images += len(looks)
            for r in rank(looks):
                i = r.candidate.index
                previewed.setdefault(i, {})[p.step] = r.score
                if r.rank > keep[prune_at.index(p.step)]:
                    skip.add(i)
                    pruned[i] = {"prompt": r.candidate.prompt, "seed": r.candidate.seed, "step": p.step,
                                 "preview_score": r.score}

        run = generate(pipe, prompts, n=n, seeds=seeds, num_inference_steps=num_inference_steps,
                       batch_size=len(prompts) * n, callback=prune, progress=progress, **generate_kwargs)
        survivors = [c for c in run.candidates if c.index not in pruned]
        for c in survivors:
            c.extra["search"] = {**settings, "preview_scores": {str(s): v for s, v in previewed[c.index].items()}}
        scored = score_candidates(survivors, scorer)
        compute.scored_images += len(scored)
    if out is not None:
        from sdkit.files import write_once
        from sdkit.save import save_candidate

        scored = [save_candidate(c, out) for c in scored]
        write_once(out / f"{run.run_id}.search.json",
                   json.dumps({**settings, "pruned": list(pruned.values())}, indent=1).encode())
    return Search("successive_halving", {k: v for k, v in settings.items() if k != "strategy"}, rank(scored), compute,
                  pruned=list(pruned.values()))
