"""Generate N seeded candidates per prompt, in batches, saving each as soon as it exists.

Every candidate has its own seed and its own `torch.Generator`, so candidate k
is the same image whether it was made in a batch of 8, of 3, or alone. The
generators live on the CPU: a seed then gives the same starting noise on any
device, which is what makes a seed worth recording.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import secrets
import threading
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch

from sdkit.errors import Cancelled, GenerationError
from sdkit.progress import progress_bar
from sdkit.results import Candidate, Progress, Run
from sdkit.runs import check_resume, kept_candidates, read_run_settings, run_settings, write_run_settings
from sdkit.checks import (as_prompt_list, check_generate_args, check_seed, check_output_dir, count_steps,
                          quiet_truncation_logs, warn_long_prompts)
from sdkit.save import new_run_id, recover, save_candidate
from sdkit.load.schedulers import scheduler_name

log = logging.getLogger(__name__)


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, torch.OutOfMemoryError):
        return True
    return isinstance(e, RuntimeError) and "out of memory" in str(e).lower()  # MPS and older CUDA builds


def _default_size(pipe) -> int:
    return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)


def default_batch_size(pipe) -> int:
    # Batching amortises per-call overhead on GPUs; on a CPU the UNet is compute
    # bound and small batches keep memory flat. bench/ measures both.
    return 4 if pipe.device.type != "cpu" else 2


def generate(
    pipe,
    prompt: str | Sequence[str],
    *,
    n: int = 4,
    seed: int | None = None,
    seeds: Sequence[int] | None = None,
    negative_prompt: str | Sequence[str] | None = None,
    num_inference_steps: int = 30,
    guidance_scale: float = 7.5,
    height: int | None = None,
    width: int | None = None,
    batch_size: int | None = None,
    output_dir: str | Path | None = None,
    run_id: str | None = None,
    callback: Callable[[Progress], None] | None = None,
    cancel: threading.Event | Callable[[], bool] | None = None,
    progress: bool = True,
    pipe_kwargs: dict | None = None,
    extra: dict | None = None,
    search: str | Callable | None = None,
    search_kwargs: dict | None = None,
    scorer=None,
) -> Run:
    """Generate `n` candidates for each prompt.

    Args:
        pipe: a pipeline from `load_pipeline`.
        prompt: one prompt or a list; each gets `n` candidates.
        n: candidates per prompt.
        seed: candidate k gets seed `seed + k` (same seeds for every prompt). None draws a random base seed,
            which is recorded like any other.
        seeds: explicit seeds, one per candidate (overrides `seed`).
        negative_prompt, num_inference_steps, guidance_scale, height, width: as in diffusers.
        batch_size: candidates denoised together. Halved automatically on out-of-memory errors.
        output_dir: if given, each candidate is written there (PNG + metadata + manifest line) as soon as
            its batch is decoded, and the run's settings to `<run_id>.run.json`. The folder is `recover`ed first.
        run_id: names the run's files. An existing run's id in `output_dir` resumes it: candidates already
            saved are loaded from their PNGs, the missing ones made with their own seeds; other settings than
            the recorded ones are refused (ValueError). Without seed/seeds, the recorded seeds are used.
        callback: called with a `Progress` after each denoising step and each finished batch.
        cancel: an Event (or a callable) checked every step; when set, generation stops within one step
            and the finished candidates are returned with `run.cancelled = True`.
        pipe_kwargs: extra arguments for the pipeline call (e.g. `image`, `mask_image`, `strength`).
        extra: task settings recorded in each candidate's metadata.
        search: None (plain generation), a strategy name ("best_of_n", "draft_then_finish", "successive_halving")
            or a function of the strategy signature (`sdkit.search.strategies`, e.g. a functools.partial of one).
            The strategy gets these arguments (`seeds` is refused: candidate k gets seed `seed + k`; a `run_id`
            already in `output_dir` is refused: a search is not resumed) and makes the candidates itself.
        search_kwargs: the strategy's own settings, e.g. {"prune_at": (2, 6), "keep": (4, 2), "previewer": taesd}
            or {"keep": 2, "draft_steps": 6}; unknown names are refused before any work.
        scorer: what the search ranks by: "flax" (default), "torch", "auto" or a scorer object; only with `search`.

    Returns:
        A `Run` whose candidates are in index order: prompt by prompt, seed by seed. With `search`, only the
        finished candidates (scored; the pruned and drafts are not in it), and `run.search` is the strategy's
        `Search`: `.ranked` best first per prompt, `.best`, `.compute` (UNet evaluations, preview decodes,
        images scored, wall time) and `.pruned`. Without it `run.search` is None.
    """
    prompts = as_prompt_list(prompt)
    negs = _negatives(negative_prompt, len(prompts))
    height = height if height is not None else _default_size(pipe)
    width = width if width is not None else _default_size(pipe)
    check_generate_args(n=n, seeds=seeds, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                        height=height, width=width, batch_size=batch_size)
    if seed is not None:
        check_seed(seed)
    if search is None and (scorer is not None or search_kwargs):
        raise ValueError(f"{'scorer' if scorer is not None else 'search_kwargs'}= without search=: they set a search "
                         "up; to rank a plain run, call sdkit.rerank(run, scorer)")
    out = check_output_dir(output_dir) if output_dir is not None else None
    if search is not None:
        return _search(pipe, prompt, search, search_kwargs, scorer, out, dict(
            n=n, seed=seed, seeds=seeds, negative_prompt=negative_prompt, num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale, height=height, width=width, batch_size=batch_size, run_id=run_id,
            callback=callback, cancel=cancel, progress=progress, pipe_kwargs=pipe_kwargs, extra=extra))
    warn_long_prompts(pipe.tokenizer, prompts)
    warn_long_prompts(pipe.tokenizer, negs, "negative_prompt")

    run_id = run_id or new_run_id()
    recorded = None
    if out is not None:
        recover(out)  # a killed run's leftovers, whoever left them
        recorded = read_run_settings(out, run_id)
    if seeds is None and seed is None and recorded is not None and len(recorded.get("seeds", ())) == n:
        seeds = list(recorded["seeds"])  # resuming without naming seeds: the run's own
    if seeds is None:
        base = seed if seed is not None else secrets.randbits(31)
        seeds = [base + k for k in range(n)]
    info = getattr(pipe, "_sdkit", {})
    template = Candidate(
        image=None, prompt="", seed=0, num_inference_steps=num_inference_steps, guidance_scale=float(guidance_scale),
        height=height, width=width, scheduler=scheduler_name(pipe.scheduler), model_id=info.get("model_id", ""),
        revision=info.get("revision"), task=info.get("task", "text-to-image"), dtype=info.get("dtype", str(pipe.dtype)),
        device=info.get("device", str(pipe.device)), run_id=run_id, extra=dict(extra or {}),
    )
    jobs = [dataclasses.replace(template, prompt=p, negative_prompt=neg, seed=s, index=i * n + k, extra=dict(template.extra))
            for i, (p, neg) in enumerate(zip(prompts, negs)) for k, s in enumerate(seeds)]
    run = Run(run_id=run_id, candidates=[], output_dir=str(out) if out else None,
              manifest=str(out / "manifest.jsonl") if out else None)
    if out is not None:
        settings = run_settings(prompts, negs, seeds, n, template, pipe_kwargs)
        if recorded is None and not write_run_settings(out, run_id, settings):
            recorded = read_run_settings(out, run_id)  # another process started this run id first
        if recorded is not None:
            check_resume(out, run_id, recorded, settings)
            run.candidates = kept_candidates(out, run_id, jobs)
            run.resumed = len(run.candidates)
            todo = len(jobs) - run.resumed
            log.info(f"resuming run {run_id} in {out}: " + (
                f"{run.resumed} of {len(jobs)} candidates kept, {todo} to make" if todo else
                f"already complete ({len(jobs)} candidates kept), nothing to make"))
    done_before = {c.index for c in run.candidates}
    jobs_todo = [j for j in jobs if j.index not in done_before]
    bs = batch_size or default_batch_size(pipe)
    is_cancelled = cancel.is_set if isinstance(cancel, threading.Event) else (cancel or (lambda: False))
    steps_run = count_steps(num_inference_steps, pipe_kwargs)  # img2img/inpaint with strength < 1 skip some
    # The notebook text names the whole call (not what a resume left to do), so stored outputs do not vary.
    bar = progress_bar(len(jobs_todo) * steps_run, progress,
                       text=f"denoising {len(jobs)} candidate{'s' * (len(jobs) != 1)} × {steps_run} steps")

    def on_step(_pipe, step, _t, kwargs, batch):
        bar.update(len(batch))  # one step of every candidate in the batch
        if callback is not None:
            callback(Progress(min(step + 1, steps_run), steps_run, len(run.candidates), len(jobs), [j.index for j in batch]))
        if is_cancelled():
            raise Cancelled
        return kwargs

    pending = list(jobs_todo)
    try:
        while pending:
            if is_cancelled():
                raise Cancelled
            batch = pending[:bs]
            try:
                with quiet_truncation_logs():  # warn_long_prompts said it once already
                    result = pipe(
                        prompt=[j.prompt for j in batch],
                        negative_prompt=None if all(j.negative_prompt is None for j in batch) else [j.negative_prompt or "" for j in batch],
                        num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, height=height, width=width,
                        generator=[torch.Generator("cpu").manual_seed(j.seed) for j in batch],
                        callback_on_step_end=lambda p, s, t, k: on_step(p, s, t, k, batch),
                        **(pipe_kwargs or {}),
                    )
            except Exception as e:
                if not _is_oom(e):
                    raise
                if bs == 1:
                    raise GenerationError(
                        f"out of memory with batch_size=1 at {height}x{width}: try load_pipeline(..., low_memory=True) "
                        f"or a smaller size. {len(run.candidates)} finished candidates are kept" +
                        (f" in {out}" if out else ""), run) from e
                bs = max(1, bs // 2)
                log.warning(f"out of memory; retrying with batch_size={bs}")
                _free_memory()
                continue
            flags = result.nsfw_content_detected or [False] * len(batch)
            finished = []
            for job, image, flag in zip(batch, result.images, flags):
                job.image, job.nsfw = image, bool(flag)
                if out is not None:
                    save_candidate(job, out)
                run.candidates.append(job)
                finished.append(job)
            pending = pending[len(batch):]
            if callback is not None:
                callback(Progress(steps_run, steps_run, len(run.candidates), len(jobs),
                                  [j.index for j in batch], finished))
    except (Cancelled, KeyboardInterrupt):
        run.cancelled = True
        log.warning(f"stopped; {len(run.candidates)} of {len(jobs)} candidates finished" +
              (f" and saved in {out}" if out else ""))
    except GenerationError:
        raise
    except Exception as e:
        if run.candidates:
            e.add_note(f"sdkit: {len(run.candidates)} candidates finished before the error" +
                       (f" and are saved in {out}" if out else ""))
        e.sdkit_run = run
        raise
    finally:
        bar.close()
        run.candidates.sort(key=lambda c: c.index)  # a resume's kept candidates first, then the new ones
    if any(c.nsfw for c in run.candidates):
        warnings.warn(f"{sum(c.nsfw for c in run.candidates)} candidate(s) were flagged by the safety checker "
                      "(their image is black; `candidate.nsfw` is True)", stacklevel=2)
    return run


def _search(pipe, prompt, search, search_kwargs, scorer, out, args: dict) -> Run:
    """generate(search=...): check everything, hand the arguments to the strategy, and wrap its Search in a Run."""
    # The search layer sits above generation (its strategies call generate, without a search): the one upward
    # edge of the house, declared in sdkit.UPWARD and checked by tests/test_layout.py.
    strategies = importlib.import_module("sdkit.search.strategies")
    strategy, kwargs = strategies.check_search(search, search_kwargs, n=args["n"],
                                               num_inference_steps=args["num_inference_steps"],
                                               pipe_kwargs=args["pipe_kwargs"])
    if args.pop("seeds") is not None:
        raise ValueError("seeds= with search=: a search numbers its candidates from seed (candidate k gets seed + k); "
                         "give seed, or finish chosen seeds with generate(..., seeds=[...]) and no search")
    if out is not None and args["run_id"] and strategies.run_in_folder(out, args["run_id"]):
        raise ValueError(f"run_id={args['run_id']!r} is already a run in {out}: a search cannot be resumed (which "
                         "candidates it keeps depends on all of them); start a new run, or finish single candidates "
                         "with sdkit.regenerate / sdkit.search.strategies.finish_pruned")
    fwd = {k: v for k, v in args.items() if v is not None}  # a strategy's own defaults where generate has none
    if out is not None:
        fwd["output_dir"] = out
    found = strategy(pipe, prompt, "flax" if scorer is None else scorer, **kwargs, **fwd)
    finished = sorted((r.candidate for r in found.ranked), key=lambda c: c.index)
    run_id = found.run_id or next((c.run_id for c in finished), "")
    return Run(run_id=run_id, candidates=finished, output_dir=str(out) if out else None,
               manifest=str(out / "manifest.jsonl") if out else None, cancelled=found.cancelled, search=found)


def _negatives(negative_prompt, n_prompts: int) -> list[str | None]:
    if negative_prompt is None:
        return [None] * n_prompts
    if isinstance(negative_prompt, str):
        return [negative_prompt] * n_prompts
    negs = list(negative_prompt)
    if len(negs) != n_prompts:
        raise ValueError(f"negative_prompt has {len(negs)} entries for {n_prompts} prompts; give one, or one per prompt")
    return negs


def _free_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if getattr(torch, "mps", None) is not None and torch.backends.mps.is_available():
        torch.mps.empty_cache()


def regenerate(source, pipe=None, **overrides) -> Candidate:
    """Make one image again from a saved PNG (or its metadata dict), bit for bit on the same device.

    `overrides` change settings (e.g. `num_inference_steps=50`) while keeping the seed.
    """
    from sdkit.load.pipeline import load_pipeline
    from sdkit.save import read_metadata

    meta = dict(source) if isinstance(source, dict) else read_metadata(source)
    meta.update(overrides)
    if meta.get("task", "text-to-image") != "text-to-image":
        raise ValueError(
            f"regenerate() redoes text-to-image only; this image is {meta['task']!r}, whose init image and mask are "
            f"recorded only as hashes. Call sdkit.{'img2img' if meta['task'] == 'image-to-image' else 'inpaint'}"
            f"(..., seeds=[{meta['seed']}]) with the same image (and mask) instead."
        )
    lineage = ((meta.get("extra") or {}).get("search") or {}).get("lineage")
    if lineage and overrides:
        raise ValueError(f"overrides {sorted(overrides)}: this image is a resampled particle, made by following its "
                         "lineage of seeds; it is remade only as it was (no overrides)")
    if pipe is None:
        pipe = load_pipeline(meta["model_id"], meta.get("task", "text-to-image"), scheduler=meta.get("scheduler") or None,
                             dtype=meta.get("dtype") or "auto", revision=meta.get("revision"),
                             **({"batch_invariant": True} if lineage else {}))
    if lineage:  # a particle of sdkit.search.strategies.particle_resampling: follow its lineage
        return importlib.import_module("sdkit.search.strategies").replay(pipe, meta)
    run = generate(pipe, meta["prompt"], n=1, seeds=[meta["seed"]], negative_prompt=meta.get("negative_prompt"),
                   num_inference_steps=meta["num_inference_steps"], guidance_scale=meta["guidance_scale"],
                   height=meta["height"], width=meta["width"], progress=False)
    return run.candidates[0]
