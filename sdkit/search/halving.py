"""successive_halving: many candidates together, the weakest pruned on their x0 previews at a few steps."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

from sdkit.checks import count_steps, is_int
from sdkit.load.invariance import has_rows, skipping
from sdkit.ranking import rank
from sdkit.results import Pruned, Ranked, Run
from sdkit.search.family import counting, open_search, previewer_label


def default_schedule(n: int, num_inference_steps: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """successive_halving's default pruning: after 10% of the steps keep a quarter of the n candidates per prompt,
    after 50% a sixteenth (at least one). Measured (bench/search.py, toy world, 20 DDIM steps): the best schedule
    within best-of-8's UNet evaluations on the tuning sets was n=32 keeping 8 after step 2 and 2 after step 10;
    this is it as fractions. Its figures on held-out sets are in bench/results/search.md."""
    if not is_int(num_inference_steps) or num_inference_steps < 2 or not is_int(n):
        return (1,), (1,)  # check() names what is wrong
    steps = sorted({min(max(1, round(num_inference_steps * f)), num_inference_steps - 1) for f in (0.1, 0.5)})
    keeps = (max(1, n // 4), max(1, n // 16))
    return tuple(steps), keeps[-len(steps):]


def check(n, num_inference_steps, strength=None, *, prune_at=None, keep=None, **_) -> tuple[tuple[int, ...], ...]:
    """The pruning steps and keep counts (defaults filled in), or a ValueError. Steps count the denoising steps that
    run: all of them, or int(num_inference_steps * strength) for an edit with strength < 1."""
    if not is_int(n) or n < 2:
        raise ValueError(f"n={n!r} candidates per prompt: must be an integer >= 2 for pruning to choose")
    if not is_int(num_inference_steps) or num_inference_steps < 2:
        raise ValueError(f"num_inference_steps={num_inference_steps!r}: successive_halving needs >= 2 steps to prune "
                         "between")
    steps = count_steps(num_inference_steps, {"strength": strength} if strength is not None else None)
    last = (f"num_inference_steps - 1 = {steps - 1}" if steps == num_inference_steps else
            f"the steps run - 1 = {steps - 1} (int({num_inference_steps} * strength={strength}) steps run)")
    if steps < 2:
        raise ValueError(f"successive_halving needs >= 2 steps to prune between; int({num_inference_steps} * "
                         f"strength={strength}) = {steps} run: raise num_inference_steps or strength")
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


def successive_halving(pipe, prompt: str | Sequence[str], scorer: Any = "flax", *, n: int = 16,
                       prune_at: Sequence[int] | None = None, keep: Sequence[int] | None = None,
                       num_inference_steps: int = 20, previewer=None, batch_size: int | None = None,
                       callback: Callable | None = None, **kwargs) -> Run:
    """N candidates per prompt denoised together; after step `prune_at[j]` each live candidate's x0 preview
    (decoded by `previewer`, default the pipeline's VAE; an `AutoencoderTiny` is cheaper) is scored against its
    own prompt and only the best `keep[j]` of each prompt go on. The survivors are finished and ranked by their
    final score. Pruned candidates cost no more UNet evaluations and leave the batch
    (`sdkit.load.invariance.skipping`); a survivor records where it ran (alone on a CPU; its batch size and row
    in every call on a GPU), so it regenerates bit for bit from its PNG.

    `prune_at`/`keep` default to `default_schedule(n, num_inference_steps)` (32 candidates, 20 steps: keep 8 after
    step 2, 2 after step 10; 16 candidates: 4, then 1). All candidates are one batch, so `batch_size` is refused;
    `callback` gets generate's `Progress` reports (survivors only when a batch finishes, and `Progress.previews`
    after each pruning step).

    Only the survivors are saved; each pruned one is a `Pruned` in `run.search.pruned` and, with `output_dir`, a
    `"pruned": true` manifest line; `finish_pruned(pipe, pruned_or_folder, ...)` makes it at full steps.
    """
    from sdkit.search.previews import capture_previews

    edit = kwargs.get("edit")
    prune_at, keep = check(n, num_inference_steps, edit.strength if edit is not None else None,
                           prune_at=prune_at, keep=keep)
    if batch_size is not None:
        raise ValueError(f"batch_size={batch_size!r}: successive_halving denoises all candidates of all prompts in "
                         "one batch (pruned ones cost nothing); leave batch_size out")
    if not has_rows(pipe):
        raise ValueError("successive_halving prunes candidates mid-way and records where each survivor ran, which "
                         "needs sdkit's row wrappers: a pipeline from load_pipeline, or "
                         "sdkit.load.invariance.install(pipe, batch_invariant=...)")
    s = open_search("successive_halving", pipe, prompt, scorer, n=n, previewer=previewer, settings={
        "n": n, "prune_at": list(prune_at), "keep": list(keep), "previewer": previewer_label(previewer)}, **kwargs)
    rows = len(s.prompts) * n
    pruned: dict[int, tuple[int, float]] = {}  # row -> (step, preview score)
    previewed: dict[int, dict[int, float]] = {}
    looked: dict[int, Ranked] = {}
    stopped: dict = {}  # row -> the pruned candidate, as generate finished it (its settings, not its picture)

    with counting(s.pipe, s.compute), skipping(s.pipe) as skip, \
            capture_previews(s.pipe, steps=[t - 1 for t in prune_at]) as previews:

        def prune(p):
            if callback is not None:
                callback(p)
            if p.finished is not None or p.step not in prune_at:
                return
            live = [i for i in range(rows) if i not in skip]
            for r in rank(s.look(previews.at(p.step - 1)[live], live)):
                i = r.candidate.index
                previewed.setdefault(i, {})[p.step] = r.score
                if r.rank > keep[prune_at.index(p.step)]:
                    skip.add(i)
                    pruned[i] = (p.step, r.score)
                    r.candidate.extra["pruned_at"] = p.step
                looked[i] = r
            if callback is not None:  # a live view: every candidate's latest preview, ranked, the pruned marked
                callback(dataclasses.replace(p, previews=_preview_ranking(looked.values())))

        def before_save(batch):
            for c in batch:
                c.extra["search"] = {**s.settings,
                                     "preview_scores": {str(t): v for t, v in previewed.get(c.index, {}).items()}}
            stopped.update((c.index, c) for c in batch if c.index in pruned)
            return s.score([c for c in batch if c.index not in pruned])

        run = s.make(n=n, seed=s.base, num_inference_steps=num_inference_steps, batch_size=rows, callback=prune,
                     before_save=before_save)
    # In the order they were pruned; without the half-denoised picture generate decoded for them (a Pruned holds
    # what makes the candidate, as its manifest line does, so a record read back equals it).
    records = [Pruned(dataclasses.replace(stopped[i], image=None, arithmetic=None), *v)
               for i, v in pruned.items() if i in stopped]
    return s.close(run, run.candidates, pruned=records)


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
