"""Search strategies: the best image per prompt for the compute spent. Every strategy has one signature,

    search = strategy(pipe, prompt, scorer, *, n=..., seed=..., num_inference_steps=..., output_dir=..., **generate_kwargs)

and returns a `Search`: the finished candidates ranked per prompt, and what they cost (`search.compute`: UNet
evaluations, preview decodes, images scored, wall time), so strategies compare on the same footing. A new
strategy is a new function of this shape; called by `generate(..., search=...)` it gets generate's arguments as
keywords (n, seed, num_inference_steps, guidance_scale, height, width, progress, output_dir, run_id...; those
that are None are left out) and its own settings, the keyword parameters it declares, from `search_kwargs`.

    best_of_n(pipe, "a red circle", "flax", n=8, seed=0)                      # today's generate + rerank
    draft_then_finish(pipe, "a red circle", "flax", n=16, keep=2, draft_steps=6)
    successive_halving(pipe, "a red circle", "flax", n=16, prune_at=(2, 6), keep=(4, 2))  # prune on x0 previews
    particle_resampling(euler_a_pipe, "a red circle", "flax", n=8, resample_at=(2, 5, 10))  # FK steering

Finished candidates are ordinary `generate` outputs (their own seed, all their steps), so `sdkit.regenerate`
makes each again bit for bit from its PNG; their metadata records the search (`extra["search"]`). With an
`output_dir`, a search saves its finished candidates under one run id, writes `<run_id>.search.json` (settings,
compute, the pruned) and lists each pruned candidate in the manifest as a `"pruned": true` line (no image;
`read_manifest` leaves them out, `sdkit.save.read_pruned` reads them), which `finish_pruned` finishes in one call.

`generate(pipe, prompt, search="successive_halving", search_kwargs={...})` runs a strategy by name
(`STRATEGIES`) or any function of the signature; `check_search` validates one before any model work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import json
import secrets
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from sdkit.checks import as_prompt_list, count_steps, is_int
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

    def describe(self, baseline: int | None = None, *, wall: bool = True) -> str:
        """One line of counts; `baseline`: the UNet evaluations to compare with (e.g. best-of-N's n * steps per
        prompt, times the prompts). `wall=False` leaves the time out (stored notebook outputs)."""
        vs = f" ({self.unet_evaluations / baseline:.2f} of {baseline})" if baseline else ""
        return (f"{self.unet_evaluations} UNet evaluations{vs}, {self.preview_decodes} preview decodes, "
                f"{self.scored_images} images scored" + (f", {self.wall_s:.1f} s" if wall else ""))

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
    # successive_halving: one record per pruned candidate (its manifest line): prompt, seed, step, preview_score
    # and the settings `finish_pruned` needs.
    pruned: list[dict] = field(default_factory=list)
    run_id: str | None = None  # the run id the finished candidates carry (and their files are named by)
    cancelled: bool = False  # stopped by `cancel` (or Ctrl-C): only what finished is ranked

    def format_pruned(self, limit: int | None = None) -> str:
        """The pruned candidates as lines, the latest-stopped and best-previewed first (the ones worth finishing);
        `limit` lines at most, the rest counted."""
        order = sorted(self.pruned, key=lambda p: (-p["step"], -p["preview_score"], p["seed"]))
        shown = order if limit is None else order[:limit]
        lines = [f"{p['prompt']!r} seed {p['seed']:>3}  stopped after step {p['step']:>3}  preview score "
                 f"{p['preview_score']:6.2f}" for p in shown]
        if len(order) > len(shown):
            lines.append(f"... and {len(order) - len(shown)} more, stopped after step "
                         + ", ".join(str(s) for s in sorted({p["step"] for p in order[len(shown):]})))
        return "\n".join(lines) if lines else "nothing was pruned"

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


def _prepare(output_dir) -> Path | None:
    """The checked output folder, `recover`ed like generate's (a search saves its finished candidates itself)."""
    if output_dir is None:
        return None
    from sdkit.checks import check_output_dir
    from sdkit.save import recover

    out = check_output_dir(output_dir)
    recover(out)
    return out


def _write_record(out: Path | None, search: Search) -> None:
    """`<run_id>.search.json`: the strategy, its settings, what it cost and the pruned candidates."""
    if out is None or not search.run_id:
        return
    from sdkit.files import write_once

    record = {"strategy": search.strategy, **search.settings, "run_id": search.run_id,
              "compute": dataclasses.asdict(search.compute), "pruned": search.pruned}
    write_once(out / f"{search.run_id}.search.json", json.dumps(record, indent=1, default=repr).encode())


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
    search = Search("best_of_n", {"n": n}, rank(scored), compute, run_id=run.run_id, cancelled=run.cancelled)
    _write_record(Path(run.output_dir) if run.output_dir else None, search)
    return search


def _check_draft(n, keep, draft_steps, num_inference_steps, pipe_kwargs=None) -> None:
    if not is_int(n) or n < 1:
        raise ValueError(f"n={n!r} drafts per prompt: must be an integer >= 1")
    if not is_int(keep) or not 1 <= keep <= n:
        raise ValueError(f"keep={keep!r}: must be an integer from 1 to n={n} (the drafts per prompt)")
    if not is_int(num_inference_steps) or num_inference_steps < 2:
        raise ValueError(f"num_inference_steps={num_inference_steps!r}: must be an integer >= 2 for drafts to be shorter")
    if not is_int(draft_steps) or not 1 <= draft_steps < num_inference_steps:
        raise ValueError(f"draft_steps={draft_steps!r}: must be an integer from 1 to num_inference_steps - 1 "
                         f"= {num_inference_steps - 1}")
    strength = (pipe_kwargs or {}).get("strength")
    if strength is not None and int(draft_steps * strength) < 1:
        raise ValueError(f"draft_steps={draft_steps} with strength={strength} runs int({draft_steps} * {strength}) = 0 "
                         "denoising steps; raise draft_steps")


def draft_then_finish(pipe, prompt: str | Sequence[str], scorer: Any = "flax", *, n: int = 16, keep: int = 2,
                      draft_steps: int = 6, num_inference_steps: int = 30, seed: int | None = None,
                      clip_model: str | None = None, output_dir=None, progress: bool = True,
                      **generate_kwargs) -> Search:
    """N drafts per prompt at `draft_steps`, ranked; the best `keep` of each prompt made again with the same seeds
    at `num_inference_steps`, and ranked by their final score (what users do by hand: cull, then finish).

    Drafts stay in memory (`search.drafts`); the finished candidates are saved under one run id, each keeping its
    draft's index (so its file name) and recording the draft's rank and score in `extra["search"]`.
    """
    from sdkit.generation import generate
    from sdkit.save import new_run_id, save_candidate

    prompts = as_prompt_list(prompt)
    _check_draft(n, keep, draft_steps, num_inference_steps, generate_kwargs.get("pipe_kwargs"))
    out = _prepare(output_dir)
    run_id = generate_kwargs.pop("run_id", None) or new_run_id()
    settings = {"strategy": "draft_then_finish", "n": n, "keep": keep, "draft_steps": draft_steps}
    scorer = scorer_for(scorer, getattr(pipe, "_sdkit", {}).get("model_id", ""), clip_model)
    compute = Compute()
    with counting(pipe, compute):
        drafts = generate(pipe, prompts, n=n, seed=seed, num_inference_steps=draft_steps, progress=progress,
                          run_id=run_id, **generate_kwargs)
        drafted = rank(score_candidates(drafts.candidates, scorer))
        compute.scored_images += len(drafted)
        finished, cancelled = [], drafts.cancelled
        for p in ([] if cancelled else prompts):  # a cancelled draft round finishes nothing
            chosen = [r for r in drafted if r.candidate.prompt == p and r.rank <= keep]
            run = generate(pipe, p, n=len(chosen), seeds=[r.candidate.seed for r in chosen],
                           num_inference_steps=num_inference_steps, progress=progress, run_id=run_id, **generate_kwargs)
            for c, r in zip(run.candidates, chosen):  # generate keeps the seeds' order
                c.index = r.candidate.index  # unique within the run id: prompts share seeds
                c.extra["search"] = {**settings, "draft_rank": r.rank, "draft_score": r.score}
                if out is not None:
                    save_candidate(c, out)  # saved as soon as it exists, like generate's
            finished += run.candidates
            if run.cancelled:
                cancelled = True
                break
        scored = score_candidates(finished, scorer)
        compute.scored_images += len(scored)
        record_scores(scored)
    search = Search("draft_then_finish", {k: v for k, v in settings.items() if k != "strategy"}, rank(scored),
                    compute, drafts=[r.candidate for r in drafted], run_id=run_id, cancelled=cancelled)
    _write_record(out, search)
    return search


def default_schedule(n: int, num_inference_steps: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """successive_halving's default pruning: after 10% of the steps keep a quarter of the n candidates per prompt,
    after 50% a sixteenth (at least one). Measured (bench/search.py, toy world, 20 DDIM steps): the best schedule
    within best-of-8's UNet evaluations on the tuning sets was n=32 keeping 8 after step 2 and 2 after step 10;
    this is it as fractions. Its figures on held-out sets are in bench/results/search.md."""
    if not is_int(num_inference_steps) or num_inference_steps < 2 or not is_int(n):
        return (1,), (1,)  # _check_schedule names what is wrong
    steps = sorted({min(max(1, round(num_inference_steps * f)), num_inference_steps - 1) for f in (0.1, 0.5)})
    keeps = (max(1, n // 4), max(1, n // 16))
    return tuple(steps), keeps[-len(steps):]


def _check_schedule(n, prune_at, keep, num_inference_steps, pipe_kwargs=None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The pruning steps and keep counts (defaults filled in), or a ValueError. Steps count the denoising steps that
    run: all of them, or int(num_inference_steps * strength) for img2img and inpainting with strength < 1."""
    if not is_int(n) or n < 2:
        raise ValueError(f"n={n!r} candidates per prompt: must be an integer >= 2 for pruning to choose")
    if not is_int(num_inference_steps) or num_inference_steps < 2:
        raise ValueError(f"num_inference_steps={num_inference_steps!r}: successive_halving needs >= 2 steps to prune "
                         "between")
    steps = count_steps(num_inference_steps, pipe_kwargs)
    last = (f"num_inference_steps - 1 = {steps - 1}" if steps == num_inference_steps else
            f"the steps run - 1 = {steps - 1} (int({num_inference_steps} * strength={pipe_kwargs['strength']}) steps run)")
    if steps < 2:
        raise ValueError(f"successive_halving needs >= 2 steps to prune between; int({num_inference_steps} * "
                         f"strength={pipe_kwargs['strength']}) = {steps} run: raise num_inference_steps or strength")
    default_at, default_keep = default_schedule(n, steps)
    prune_at = default_at if prune_at is None else tuple(prune_at)
    keep = (default_keep if prune_at == default_at else ()) if keep is None else tuple(keep)  # own steps, own counts
    if not prune_at or len(prune_at) != len(keep):
        raise ValueError(f"prune_at={list(prune_at)} and keep={list(keep)}: give one keep count per pruning step")
    if not all(is_int(s) for s in prune_at) or list(prune_at) != sorted(set(prune_at)) or not (
            1 <= prune_at[0] and prune_at[-1] < steps):
        raise ValueError(f"prune_at={list(prune_at)}: increasing steps from 1 to {last}")
    if not all(is_int(k) for k in keep) or not all(1 <= b <= a for a, b in zip((n - 1, *keep), keep)):
        raise ValueError(f"keep={list(keep)}: non-increasing counts from 1 to n - 1 = {n - 1}")
    return prune_at, keep


def _pruned_record(c: Candidate, step: int, preview_score: float) -> dict:
    """A pruned candidate's manifest line: everything that makes it (as in a PNG's metadata, at full steps), where
    it stopped and how its preview scored; `"pruned": true` and no `file`, so readers of images pass it by."""
    rec = {k: v for k, v in c.params().items() if k not in ("path", "score", "logit", "scorer", "nsfw")}
    rec.update(pruned=True, step=step, preview_score=preview_score)
    return rec


def successive_halving(pipe, prompt: str | Sequence[str], scorer: Any = "flax", *, n: int = 16,
                       prune_at: Sequence[int] | None = None, keep: Sequence[int] | None = None,
                       num_inference_steps: int = 20, seed: int | None = None, previewer=None,
                       clip_model: str | None = None, output_dir=None, progress: bool = True,
                       batch_size: int | None = None, callback: Callable | None = None, **generate_kwargs) -> Search:
    """N candidates per prompt denoised together; after step `prune_at[j]` each live candidate's x0 preview
    (decoded by `previewer`, default the pipeline's VAE; an `AutoencoderTiny` is cheaper) is scored against its
    own prompt and only the best `keep[j]` of each prompt go on. The survivors are finished and ranked by their
    final score. Pruned candidates cost no more UNet evaluations (`sdkit.load.invariance.skipping`), and a
    survivor's trajectory is the one it has alone, so it regenerates bit for bit from its PNG.

    `prune_at`/`keep` default to `default_schedule(n, num_inference_steps)` (32 candidates, 20 steps: keep 8 after
    step 2, 2 after step 10; 16 candidates: 4, then 1). All candidates are one batch, so `batch_size` is refused;
    `callback` gets generate's `Progress` reports (survivors only when a batch finishes, and `Progress.previews`
    after each pruning step).

    Only the survivors are saved; each pruned one is a record in `search.pruned` (prompt, seed, step,
    preview_score and its settings) and, with `output_dir`, a `"pruned": true` manifest line and an entry in
    `<run_id>.search.json`; `finish_pruned(pipe, record_or_folder, ...)` makes it at full steps.
    """
    from sdkit.generation import generate
    from sdkit.load.invariance import skipping
    from sdkit.search.previews import capture_previews, decode_previews

    prompts = as_prompt_list(prompt)
    prune_at, keep = _check_schedule(n, prune_at, keep, num_inference_steps, generate_kwargs.get("pipe_kwargs"))
    if batch_size is not None:
        raise ValueError(f"batch_size={batch_size!r}: successive_halving denoises all {len(prompts) * n} candidates "
                         "in one batch (pruned ones cost nothing); leave batch_size out")
    if not getattr(pipe.unet, "_sdkit_per_sample", False):  # on GPUs invariance is off by default
        raise ValueError("successive_halving prunes candidates mid-way without touching the survivors, which needs "
                         "a batch-invariant pipeline: load_pipeline(..., batch_invariant=True)")
    out = _prepare(output_dir)
    base = seed if seed is not None else secrets.randbits(31)
    seeds = [base + k for k in range(n)]
    settings = {"strategy": "successive_halving", "n": n, "prune_at": list(prune_at), "keep": list(keep),
                "previewer": "vae" if previewer is None else
                str(getattr(previewer.config, "_name_or_path", "") or type(previewer).__name__)}
    scorer = scorer_for(scorer, getattr(pipe, "_sdkit", {}).get("model_id", ""), clip_model)
    compute, pruned, previewed, looked = Compute(), {}, {}, {}
    finish = getattr(pipe, "finish_preview", None)
    with counting(pipe, compute), skipping(pipe) as skip, \
            capture_previews(pipe, steps=[s - 1 for s in prune_at]) as previews:

        def prune(p):
            if callback is not None:  # the pruned rows' unfinished pictures are not candidates: never reported
                callback(p if p.finished is None else
                         dataclasses.replace(p, finished=[c for c in p.finished if c.index not in pruned]))
            if p.finished is not None or p.step not in prune_at:
                return
            live = [i for i in range(len(prompts) * n) if i not in skip]
            images = decode_previews(previews.at(p.step - 1)[live], previewer or pipe.vae)
            if finish is not None:  # an edit: at the original size, kept pixels pasted back, as it would be saved
                images = [finish(im) for im in images]
            compute.preview_decodes += len(live)
            looks = score_candidates([Candidate(image=im, prompt=prompts[i // n], seed=seeds[i % n], index=i)
                                      for i, im in zip(live, images)], scorer)
            compute.scored_images += len(looks)
            for r in rank(looks):
                i = r.candidate.index
                previewed.setdefault(i, {})[p.step] = r.score
                if r.rank > keep[prune_at.index(p.step)]:
                    skip.add(i)
                    pruned[i] = (p.step, r.score)
                    r.candidate.extra["pruned_at"] = p.step
                looked[i] = r
            if callback is not None:  # a live view: every candidate's latest preview, ranked, the pruned marked
                callback(dataclasses.replace(p, previews=_preview_ranking(looked.values())))

        run = generate(pipe, prompts, n=n, seeds=seeds, num_inference_steps=num_inference_steps,
                       batch_size=len(prompts) * n, callback=prune, progress=progress, **generate_kwargs)
        for c in run.candidates:
            c.extra["search"] = {**settings,
                                 "preview_scores": {str(s): v for s, v in previewed.get(c.index, {}).items()}}
        survivors = [c for c in run.candidates if c.index not in pruned]
        scored = score_candidates(survivors, scorer)
        compute.scored_images += len(scored)
    by_index = {c.index: c for c in run.candidates}
    records = [_pruned_record(by_index[i], step, score) for i, (step, score) in pruned.items() if i in by_index]
    if out is not None:
        from sdkit.save import append_manifest, save_candidate

        scored = [save_candidate(c, out) for c in scored]
        for rec in records:
            append_manifest(out, rec)
    search = Search("successive_halving", {k: v for k, v in settings.items() if k != "strategy"}, rank(scored),
                    compute, pruned=records, run_id=run.run_id, cancelled=run.cancelled)
    _write_record(out, search)
    return search


def _preview_ranking(looked) -> list[Ranked]:
    """Live candidates first, by their latest preview score; then the pruned, latest-stopped first."""
    def order(r):
        stopped = r.candidate.extra.get("pruned_at")
        return (stopped is not None, -(stopped or 0), r.rank, r.candidate.seed)

    by_prompt: dict[str, list] = {}
    for r in looked:
        by_prompt.setdefault(r.candidate.prompt, []).append(r)
    return [dataclasses.replace(r, rank=k) for group in by_prompt.values()
            for k, r in enumerate(sorted(group, key=order), start=1)]


# Particle resampling (FK steering, Singhal et al. 2025): the particles of a stochastic sampler are resampled by
# how much their x0 previews' scores rose, so compute flows to the promising ones; each finished image records its
# lineage, which `replay` follows to make it again.
STOCHASTIC = ("EulerAncestralDiscreteScheduler", "DDPMScheduler")  # and DDIM with eta > 0


@contextlib.contextmanager
def _after_steps(pipe, hook: Callable):
    """Inside the block, `hook(i, latents) -> latents` replaces what loop position i of each denoising run of `pipe`
    hands on (the scheduler's prev_sample), so rows can be copied between steps."""
    from sdkit.search.previews import replacing_steps

    scheduler = pipe.scheduler
    inner_step, inner_set = scheduler.step, scheduler.set_timesteps
    state = {"i": 0}

    @functools.wraps(inner_set)
    def set_timesteps(*args, **kwargs):
        state["i"] = 0
        return inner_set(*args, **kwargs)

    @functools.wraps(inner_step)
    def step(*args, **kwargs):
        out, i = inner_step(*args, **kwargs), state["i"]
        state["i"] += 1
        if isinstance(out, tuple):
            return (hook(i, out[0]), *out[1:])
        out.prev_sample = hook(i, out.prev_sample)
        return out

    with replacing_steps(scheduler, step, set_timesteps):
        yield


def _check_particles(n, resample_at, lambda_, num_inference_steps, pipe=None, pipe_kwargs=None) -> tuple[int, ...]:
    if not is_int(n) or n < 2:
        raise ValueError(f"n={n!r} particles per prompt: must be an integer >= 2 for resampling to choose")
    if not is_int(num_inference_steps) or num_inference_steps < 2:
        raise ValueError(f"num_inference_steps={num_inference_steps!r}: must be >= 2 to resample between steps")
    if (pipe_kwargs or {}).get("strength") is not None or (pipe_kwargs or {}).get("image") is not None:
        raise ValueError("particle_resampling is for text-to-image: a particle's image is remade from its lineage "
                         "(sdkit.regenerate), which edits cannot replay; use successive_halving for edits")
    resample_at = default_resampling(num_inference_steps) if resample_at is None else tuple(resample_at)
    if not resample_at or not all(is_int(s) for s in resample_at) or list(resample_at) != sorted(set(resample_at)) \
            or not (1 <= resample_at[0] and resample_at[-1] < num_inference_steps):
        raise ValueError(f"resample_at={list(resample_at)}: increasing steps from 1 to num_inference_steps - 1 = "
                         f"{num_inference_steps - 1}")
    if isinstance(lambda_, bool) or not isinstance(lambda_, (int, float)) or not 0 <= lambda_ < float("inf"):
        raise ValueError(f"lambda_={lambda_!r}: the potential's sharpness, a number >= 0 (0 resamples uniformly)")
    if pipe is not None:
        name, eta = type(pipe.scheduler).__name__, float((pipe_kwargs or {}).get("eta", 0.0))
        if name not in STOCHASTIC and not (name == "DDIMScheduler" and eta > 0):
            raise ValueError(f"particle_resampling needs a stochastic sampler, so copied particles part ways; this "
                             f"pipeline's is {name}" + (" with eta=0" if name == "DDIMScheduler" else "") +
                             ": load_pipeline(..., scheduler='Euler a'), or DDIM with pipe_kwargs={'eta': 1.0}")
        if not getattr(pipe.unet, "_sdkit_per_sample", False):
            raise ValueError("particle_resampling replays a particle's lineage by itself, which needs a "
                             "batch-invariant pipeline: load_pipeline(..., batch_invariant=True)")
    return resample_at


def default_resampling(num_inference_steps: int) -> tuple[int, ...]:
    """particle_resampling's default: resample after every 10% of the steps (20 steps: after 2, 4, ..., 18). Chosen
    with lambda_=0.3 on bench/particles.py's tuning sets; held-out figures in bench/results/particles.md."""
    if not is_int(num_inference_steps) or num_inference_steps < 2:
        return (1,)
    every = max(1, round(num_inference_steps / 10))
    return tuple(range(every, num_inference_steps, every))


def _resample(weights: np.ndarray, rng) -> list[int]:
    """Each row's parent: multinomial draws by weight, with every drawn row keeping its own place (fewer copies,
    the same multiset of particles)."""
    n = len(weights)
    counts = np.bincount(rng.choice(n, size=n, p=weights / weights.sum()), minlength=n)
    parents = list(range(n))
    spare = [r for r in range(n) if counts[r] == 0]
    for r in range(n):
        for _ in range(counts[r] - 1):
            parents[spare.pop()] = r
    return parents


def particle_resampling(pipe, prompt: str | Sequence[str], scorer: Any = "flax", *, n: int = 8,
                        resample_at: Sequence[int] | None = None, lambda_: float = 0.3, num_inference_steps: int = 20,
                        seed: int | None = None, previewer=None, clip_model: str | None = None, output_dir=None,
                        progress: bool = True, batch_size: int | None = None, callback: Callable | None = None,
                        **generate_kwargs) -> Search:
    """N particles per prompt through a stochastic sampler ("Euler a"); after each step in `resample_at` every
    particle's x0 preview is scored against its prompt and the particles are resampled with weights
    exp(lambda_ * (score - its score at the last resampling)), FK steering's difference potential. All N finish
    and are ranked by their final score; at best-of-N's UNet cost, plus the previews.

    A resampled particle continues from its parent's latent with its own seed's noise, so its image is not its
    seed's plain image: `extra["search"]["lineage"]` lists [step, seed] from the root, and `sdkit.regenerate`
    replays it (one row denoising at a time, bit for bit).
    """
    from sdkit.generation import generate
    from sdkit.search.previews import capture_previews, decode_previews

    prompts = as_prompt_list(prompt)
    resample_at = _check_particles(n, resample_at, lambda_, num_inference_steps, pipe, generate_kwargs.get("pipe_kwargs"))
    if batch_size is not None:
        raise ValueError(f"batch_size={batch_size!r}: particle_resampling moves particles between rows of one batch "
                         f"of {len(prompts) * n}; leave batch_size out")
    out = _prepare(output_dir)
    base = seed if seed is not None else secrets.randbits(31)
    seeds = [base + k for k in range(n)]
    settings = {"strategy": "particle_resampling", "n": n, "resample_at": list(resample_at), "lambda_": lambda_,
                "previewer": "vae" if previewer is None else
                str(getattr(previewer.config, "_name_or_path", "") or type(previewer).__name__)}
    if "eta" in (generate_kwargs.get("pipe_kwargs") or {}):  # DDIM's noise: replay needs it
        settings["eta"] = float(generate_kwargs["pipe_kwargs"]["eta"])
    scorer = scorer_for(scorer, getattr(pipe, "_sdkit", {}).get("model_id", ""), clip_model)
    rows = len(prompts) * n
    lineage = [[[0, seeds[r % n]]] for r in range(rows)]
    last = np.zeros(rows)  # each particle's score at the last resampling (its parent's, after a copy)
    plan: dict[int, list[int]] = {}
    compute = Compute()

    def decide(record):  # capture_previews' hook: before loop position i steps, score and choose parents
        step = record.step + 1
        images = decode_previews(record.x0, previewer or pipe.vae)
        compute.preview_decodes += len(images)
        looks = score_candidates([Candidate(image=im, prompt=prompts[r // n], seed=seeds[r % n], index=r)
                                  for r, im in enumerate(images)], scorer)
        compute.scored_images += len(looks)
        score = np.array([c.score for c in looks], dtype=np.float64)
        parents = []
        for j in range(len(prompts)):
            rows_j = slice(j * n, (j + 1) * n)
            logw = lambda_ * (score[rows_j] - last[rows_j])
            rng = np.random.default_rng([base, j, step])
            parents += [j * n + p for p in _resample(np.exp(logw - logw.max()), rng)]
        before = list(lineage)
        for r, p in enumerate(parents):
            if p != r:
                lineage[r] = before[p] + [[step, seeds[r % n]]]
        last[:] = score[parents]
        plan[record.step] = parents

    def copy(i, latents):
        parents = plan.pop(i, None)
        return latents if parents is None else latents[parents]

    with counting(pipe, compute), capture_previews(pipe, steps=[s - 1 for s in resample_at], on_step=decide), \
            _after_steps(pipe, copy):
        run = generate(pipe, prompts, n=n, seeds=seeds, num_inference_steps=num_inference_steps,
                       batch_size=rows, callback=callback, progress=progress, **generate_kwargs)
        for c in run.candidates:
            c.extra["search"] = {**settings, "lineage": lineage[c.index]}
        scored = score_candidates(run.candidates, scorer)
        compute.scored_images += len(scored)
    if out is not None:
        from sdkit.save import save_candidate

        scored = [save_candidate(c, out) for c in scored]
    search = Search("particle_resampling", {k: v for k, v in settings.items() if k != "strategy"}, rank(scored),
                    compute, run_id=run.run_id, cancelled=run.cancelled)
    _write_record(out, search)
    return search


def replay(pipe, meta: dict) -> Candidate:
    """A particle's image again, from its metadata: the seeds of its lineage denoised as rows of one batch, each
    row running only while the lineage is on it and handing its latent on at the recorded step (the same
    arithmetic as in the search: per-row noise, batch invariance), so one trajectory's UNet cost."""
    from sdkit.generation import generate
    from sdkit.load.invariance import skipping

    found = meta["extra"]["search"]
    if not getattr(pipe.unet, "_sdkit_per_sample", False):
        raise ValueError("replaying a particle's lineage needs a batch-invariant pipeline: "
                         "load_pipeline(..., batch_invariant=True)")
    lineage = [(int(step), int(seed)) for step, seed in found["lineage"]]
    seeds = list(dict.fromkeys(seed for _, seed in lineage))  # each seed once: one row, its own noise throughout
    row = {s: k for k, s in enumerate(seeds)}
    hands = {step - 1: (row[a], row[b]) for (_, a), (step, b) in zip(lineage, lineage[1:])}  # loop position -> rows
    live = row[lineage[0][1]]
    pipe_kwargs = {"eta": found["eta"]} if "eta" in found else None

    def copy(i, latents):
        if i in hands:
            src, dst = hands[i]
            latents = latents.clone()
            latents[dst] = latents[src]
        return latents

    with skipping(pipe) as skip, _after_steps(pipe, copy):
        def follow(p):  # after loop position p.step - 1: only the row the lineage is on runs next
            nonlocal live
            if p.step - 1 in hands:
                live = hands[p.step - 1][1]
            skip.clear()
            skip.update(k for k in range(len(seeds)) if k != live)

        skip.update(k for k in range(len(seeds)) if k != live)
        run = generate(pipe, meta["prompt"], n=len(seeds), seeds=seeds, negative_prompt=meta.get("negative_prompt"),
                       num_inference_steps=meta["num_inference_steps"], guidance_scale=meta["guidance_scale"],
                       height=meta["height"], width=meta["width"], batch_size=len(seeds), callback=follow,
                       progress=False, pipe_kwargs=pipe_kwargs, extra=meta.get("extra"))
    c = run.candidates[row[lineage[-1][1]]]
    c.index = meta.get("index", c.index)
    return c


STRATEGIES: dict[str, Callable[..., Search]] = {
    "best_of_n": best_of_n, "draft_then_finish": draft_then_finish, "successive_halving": successive_halving,
    "particle_resampling": particle_resampling}
# generate's own arguments, which it hands to a strategy itself; `search_kwargs` holds only the strategy's settings.
GENERATE_ARGS = frozenset({
    "n", "seed", "seeds", "negative_prompt", "num_inference_steps", "guidance_scale", "height", "width", "batch_size",
    "output_dir", "run_id", "callback", "cancel", "progress", "pipe_kwargs", "extra", "search", "search_kwargs"})
_CHECKS = {
    draft_then_finish: lambda a: _check_draft(a["n"], a["keep"], a["draft_steps"], a["num_inference_steps"],
                                              a["pipe_kwargs"]),
    successive_halving: lambda a: _check_schedule(a["n"], a["prune_at"], a["keep"], a["num_inference_steps"],
                                                  a["pipe_kwargs"]),
    particle_resampling: lambda a: _check_particles(a["n"], a["resample_at"], a["lambda_"], a["num_inference_steps"],
                                                    pipe_kwargs=a["pipe_kwargs"]),
}


def resolve(search) -> Callable[..., Search]:
    """A strategy by its name in `STRATEGIES`, or `search` itself if it is a function (e.g. a functools.partial)."""
    names = ", ".join(STRATEGIES)
    if isinstance(search, str):
        if search not in STRATEGIES:
            raise ValueError(f"search={search!r}: no such strategy; use one of {names}, or a function of the "
                             "strategy signature")
        return STRATEGIES[search]
    if callable(search):
        return search
    raise ValueError(f"search={search!r}: give a strategy name ({names}) or a function of the strategy signature "
                     "strategy(pipe, prompt, scorer, *, n, seed, num_inference_steps, output_dir, **generate_kwargs)")


def settings_of(strategy) -> dict[str, Any]:
    """A strategy's own settings, with their defaults: the keyword parameters it declares that are not generate's."""
    try:
        params = inspect.signature(strategy).parameters
    except (TypeError, ValueError):  # a builtin or C callable: it declares nothing we can read
        return {}
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return {k: p.default for k, p in params.items()
            if p.kind in kinds and k not in ("pipe", "prompt", "scorer") and k not in GENERATE_ARGS}


def check_search(search, search_kwargs: dict | None = None, *, n: int, num_inference_steps: int,
                 pipe_kwargs: dict | None = None):
    """Resolve `search` and check `search_kwargs` (and, for the built-in strategies, their values against `n`,
    `num_inference_steps` and an edit's strength in `pipe_kwargs`) without any model work: (strategy, kwargs), or a
    ValueError naming what is wrong."""
    strategy = resolve(search)
    kwargs = dict(search_kwargs or {})
    own = settings_of(strategy)
    name = getattr(strategy, "__name__", None) or getattr(getattr(strategy, "func", None), "__name__", repr(strategy))
    clash = sorted(set(kwargs) & GENERATE_ARGS)
    if clash:
        raise ValueError(f"search_kwargs {clash}: generate's own arguments; pass them to generate itself")
    unknown = sorted(set(kwargs) - set(own))
    if unknown:
        raise ValueError(f"search_kwargs {unknown}: {name} takes " + (
            ", ".join(sorted(own)) if own else "no settings of its own") + " (other arguments go to generate)")
    base = strategy
    while isinstance(base, functools.partial):
        base = base.func
    if base in _CHECKS:
        _CHECKS[base]({**own, **kwargs, "n": n, "num_inference_steps": num_inference_steps, "pipe_kwargs": pipe_kwargs})
    return strategy, kwargs


def run_in_folder(out, run_id: str) -> bool:
    """Whether `out` already holds run `run_id` (a search is not resumed: which candidates it keeps needs them all)."""
    from sdkit.save import read_manifest, read_pruned

    out = Path(out)
    if any((out / f"{run_id}{suffix}").exists() for suffix in (".run.json", ".search.json")):
        return True
    return bool(read_manifest(out, run_id) or read_pruned(out, run_id))


def _pick_pruned(source, *, seed, prompt, run_id) -> dict:
    from sdkit.save import MANIFEST, read_pruned

    if isinstance(source, dict):
        if not source.get("pruned"):
            raise ValueError(f"{str(source)[:80]}...: not a pruned candidate's record (from search.pruned or "
                             "sdkit.save.read_pruned)")
        records = [source]
    else:
        folder = Path(source)
        if folder.name == MANIFEST:
            folder = folder.parent
        if not folder.is_dir():
            raise FileNotFoundError(f"{source}: no such folder (give a search's output folder, its manifest.jsonl, "
                                    "or a record from search.pruned)")
        records = read_pruned(folder, run_id)
        if not records:
            raise ValueError(f"{folder}: no pruned candidates listed in its manifest" +
                             (f" for run {run_id!r}" if run_id else ""))
    match = [r for r in records if (seed is None or r.get("seed") == seed) and (prompt is None or r.get("prompt") == prompt)
             and (run_id is None or r.get("run_id") == run_id)]
    if len(match) != 1:
        listed = ", ".join(f"({r.get('prompt')!r}, seed {r.get('seed')}, run {r.get('run_id')})" for r in records[:8])
        raise ValueError(f"seed={seed!r} prompt={prompt!r} run_id={run_id!r}: " +
                         ("no pruned candidate matches" if not match else f"{len(match)} pruned candidates match; "
                          "name the others too") + f". Pruned: {listed}" + (" ..." if len(records) > 8 else ""))
    return match[0]


def finish_pruned(pipe, source, *, seed: int | None = None, prompt: str | None = None, run_id: str | None = None,
                  image=None, mask_image=None, output_dir=None, progress: bool = False):
    """Finish a candidate a search pruned: its seed to all the search's steps, with the search's settings.

    `source` is a record from `search.pruned`, or a search's output folder (or its manifest.jsonl), where `seed`
    (and `prompt`, `run_id` where several match) pick the pruned candidate. The image is the one that seed makes
    in a plain `generate` (or `best_of_n`) run with the same settings; with `output_dir` it is saved like
    generate's. An edit's candidate needs its init `image` (and `mask_image`, unless the mask was a box), which
    the record holds only as hashes (`sdkit.edit.tasks.redo`). Returns the finished `Candidate`.
    """
    from sdkit.generation import generate
    from sdkit.load.schedulers import scheduler_name

    rec = _pick_pruned(source, seed=seed, prompt=prompt, run_id=run_id)
    task = rec.get("task", "text-to-image")
    if task != "text-to-image" and image is None:
        raise ValueError(f"the pruned candidate is {task!r}: pass image= (and mask_image= for a mask that was not a "
                         "box), the init image the search started from; the record holds only its hash")
    now = scheduler_name(pipe.scheduler)
    if rec.get("scheduler") and rec["scheduler"] != now:
        warnings.warn(f"the search used scheduler {rec['scheduler']!r}, this pipeline has {now!r}: the finished "
                      "image will not be the one the search would have made", stacklevel=2)
    extra = dict(rec.get("extra") or {})
    found = extra.pop("search", {}) or {}
    extra["search"] = {"finished_pruned": {"run_id": rec.get("run_id"), "strategy": found.get("strategy"),
                                           "step": rec.get("step"), "preview_score": rec.get("preview_score")}}
    if task != "text-to-image":
        from sdkit.edit.tasks import redo

        return redo(pipe, rec, image, mask_image, output_dir=output_dir, progress=progress, extra=extra).candidates[0]
    run = generate(pipe, rec["prompt"], n=1, seeds=[rec["seed"]], negative_prompt=rec.get("negative_prompt"),
                   num_inference_steps=rec["num_inference_steps"], guidance_scale=rec["guidance_scale"],
                   height=rec["height"], width=rec["width"], output_dir=output_dir, progress=progress, extra=extra)
    return run.candidates[0]
