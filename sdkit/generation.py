"""Generate N seeded candidates per prompt, in batches, saving each as soon as it exists.

Every candidate has its own seed and its own `torch.Generator`, so candidate k
is the same image whether it was made in a batch of 8, of 3, or alone. The
generators live on the CPU: a seed then gives the same starting noise on any
device, which is what makes a seed worth recording.

A search (`sdkit.search`) sits above `generate` and calls it, with `before_save` to score and keep candidates.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
from sdkit.runs import check_resume, describe, kept_candidates, read_run_settings, run_settings, write_run_settings
from sdkit.checks import (as_prompt_list, check_generate_args, check_seed, check_output_dir, count_steps,
                          quiet_truncation_logs, warn_long_prompts)
from sdkit.save import new_run_id, recover, save_candidate
from sdkit.load.devices import default_batch_size, free_memory, is_oom
from sdkit.load.rows import module_state, planned_rows, recording, replaying, text_lengths
from sdkit.load.schedulers import scheduler_name
from sdkit.load.state import pipeline_info
from sdkit.load.invariance import adopt
from sdkit.load.loras import activate
from sdkit.load.sdxl import check_refiner, sdxl_conditioning
from sdkit.load.pipeline import with_prompt_loras
from sdkit import prompts as prompt_syntax

log = logging.getLogger(__name__)


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
    before_save: Callable[[list[Candidate]], list[Candidate]] | None = None,
    refiner=None,
    denoising_end: float | None = None,
    **removed,
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
        before_save: called with each decoded batch's candidates before they are saved; returns the ones to
            save and keep (e.g. copies carrying scores, or fewer). A search's hook; callbacks see what it kept.
            On an accelerator its candidates also carry `pixels` (the decoded tensor on the device, for scoring
            without a PIL round trip; see `tensor_pixels`).
        refiner, denoising_end: SDXL's base -> refiner hand-off: the base denoises the first `denoising_end`
            (e.g. 0.8) of the schedule and hands its latents to `refiner` (an SDXL refiner loaded with
            task="image-to-image"), which finishes from there with the same prompts, steps, guidance and each
            candidate's own generator. Recorded in `extra["refiner"]` (and A1111's "Refiner" fields); `regenerate`
            loads it again.

    Returns:
        A `Run` whose candidates are in index order: prompt by prompt, seed by seed.

    A search is not a `generate` argument: call a strategy of `sdkit.search`, which calls `generate` itself.
    """
    _refuse(removed)
    prompts = as_prompt_list(prompt)
    negs = _negatives(negative_prompt, len(prompts))
    size = int(pipe.unet.config.sample_size * pipe.vae_scale_factor)  # the model's native size
    height, width = height if height is not None else size, width if width is not None else size
    check_generate_args(n=n, seeds=seeds, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                        height=height, width=width, batch_size=batch_size)
    if seed is not None:
        check_seed(seed)
    out = check_output_dir(output_dir) if output_dir is not None else None
    prompt_syntax.check(prompts, negs)
    pipe = _with_tagged_loras(pipe, prompts)
    adopt(pipe)
    if (extra or {}).get("refiner") and refiner is None:  # a record passed back (a resume) without its refiner
        raise ValueError(f"extra['refiner'] records a refiner ({extra['refiner'].get('model_id')!r}) but refiner=None: "
                         "pass the refiner (sdkit.search.replay.recorded_refiner(settings) loads the recorded one)")
    refined = check_refiner(pipe, refiner, denoising_end)
    for p in (pipe, refiner) if refiner is not None else (pipe,):
        activate(p)  # this pipeline's LoRA weights on its modules, which other pipelines may share
    if not prompt_syntax.takes_embeddings(getattr(pipe, "pipeline", pipe)):  # else long prompts are chunked
        tokenizer = getattr(pipe, "tokenizer", None) or getattr(pipe, "tokenizer_2", None)  # a refiner has only the second
        warn_long_prompts(tokenizer, prompts)
        warn_long_prompts(tokenizer, negs, "negative_prompt")

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
    extra = {**(extra or {}), **sdxl_conditioning(pipe, height, width, pipe_kwargs), **refined}
    template = _template(pipe, run_id, num_inference_steps, guidance_scale, height, width, extra, pipe_kwargs)
    jobs = [dataclasses.replace(template, prompt=p, negative_prompt=neg, seed=s, index=i * n + k, extra=dict(template.extra))
            for i, (p, neg) in enumerate(zip(prompts, negs)) for k, s in enumerate(seeds)]
    run = Run(run_id=run_id, candidates=[], output_dir=str(out) if out else None,
              manifest=str(out / "manifest.jsonl") if out else None)
    bs = batch_size or default_batch_size(pipe.device, height, width)
    if out is not None:
        settings = {**run_settings(prompts, negs, seeds, n, template), "batch_size": bs}
        run.candidates = _resume(out, run_id, recorded, settings, jobs)
        run.resumed = len(run.candidates)
    done = {c.index for c in run.candidates}
    batches = _Batches(pipe, run, len(jobs), out, num_inference_steps, guidance_scale, height, width, pipe_kwargs,
                       callback, _cancel_check(cancel), before_save, refiner, denoising_end)
    if run.resumed:  # on a GPU, the missing candidates are made in the rows an uninterrupted run had
        lengths = None if module_state(pipe.unet).batch_invariant else prompt_syntax.row_lengths(
            pipe, [j.prompt for j in jobs], [j.negative_prompt for j in jobs])
        batches.plan = planned_rows(pipe, len(jobs), (recorded or {}).get("batch_size"), lengths)  # by job index
    todo = [j for j in jobs if j.index not in done]
    # The notebook text names the whole call (not what a resume left to do), so stored outputs do not vary.
    batches.bar = progress_bar(len(todo) * batches.steps, progress,
                               text=f"denoising {len(jobs)} candidate{'s' * (len(jobs) != 1)} × {batches.steps} steps")
    try:
        batches.run_all(todo, bs)
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
        batches.bar.close()
        run.candidates.sort(key=lambda c: c.index)  # a resume's kept candidates first, then the new ones
    if any(c.nsfw for c in run.candidates):
        warnings.warn(f"{sum(c.nsfw for c in run.candidates)} candidate(s) were flagged by the safety checker "
                      "(their image is black; `candidate.nsfw` is True)", stacklevel=2)
    return run


def _with_tagged_loras(pipe, prompts):
    """`pipe` with the LoRAs the prompts' `<lora:name:weight>` tags name (an edit's wrapper: around its pipeline)."""
    inner = getattr(pipe, "pipeline", pipe)
    tagged = with_prompt_loras(inner, prompts)
    if tagged is inner:
        return pipe
    if pipe is inner:
        return tagged
    pipe.pipeline = tagged
    return pipe


def _refuse(removed: dict) -> None:
    """generate's search keywords moved up to the search layer: say where, as a TypeError (an unknown argument)."""
    if not removed:
        return
    moved = sorted(set(removed) & {"search", "search_kwargs", "scorer"})
    if moved:
        name = removed.get("search") if isinstance(removed.get("search"), str) else "successive_halving"
        raise TypeError(f"generate() no longer takes {', '.join(f'{k}=' for k in moved)}: a search is started from the "
                        f"search layer, e.g. sdkit.search.{name}(pipe, prompt, scorer, n=..., seed=..., **settings), "
                        "or sdkit.search.strategy_named(name)(...); to rank a plain run, call sdkit.rerank(run, scorer)")
    raise TypeError(f"generate() got unexpected keyword arguments: {', '.join(sorted(removed))}")


def _template(pipe, run_id, num_inference_steps, guidance_scale, height, width, extra, pipe_kwargs) -> Candidate:
    """What every candidate of the run shares: settings, and the pipeline as `load_pipeline` recorded it."""
    info = pipeline_info(pipe)
    return Candidate(
        image=None, prompt="", seed=0, num_inference_steps=num_inference_steps, guidance_scale=float(guidance_scale),
        height=height, width=width, scheduler=scheduler_name(pipe.scheduler), model_id=info.model_id,
        revision=info.revision, model_hash=info.model_hash, task=info.task, dtype=info.dtype or str(pipe.dtype),
        device=info.device or str(pipe.device), run_id=run_id,
        extra={**(extra or {}), **({"config": info.config} if info.config else {})},
        loras=[lora.record() for lora in info.loras], embeddings=[e.record() for e in info.embeddings],
        pipe_kwargs=describe(pipe_kwargs or {}))


def _resume(out: Path, run_id: str, recorded: dict | None, settings: dict, jobs: list[Candidate]) -> list[Candidate]:
    """Record a new run's settings, or check a resumed run's against them: the candidates already on disk."""
    if recorded is None and not write_run_settings(out, run_id, settings):
        recorded = read_run_settings(out, run_id)  # another process started this run id first
    if recorded is None:
        return []
    check_resume(out, run_id, recorded, settings)
    kept = kept_candidates(out, run_id, jobs)
    todo = len(jobs) - len(kept)
    log.info(f"resuming run {run_id} in {out}: " + (
        f"{len(kept)} of {len(jobs)} candidates kept, {todo} to make" if todo else
        f"already complete ({len(jobs)} candidates kept), nothing to make"))
    return kept


def _cancel_check(cancel) -> Callable[[], bool]:
    return cancel.is_set if isinstance(cancel, threading.Event) else (cancel or (lambda: False))


@dataclasses.dataclass
class _Batches:
    """Denoising a run's candidates batch by batch: one pipeline call each, saved as each batch is decoded."""

    pipe: object
    run: Run
    total: int
    out: Path | None
    num_inference_steps: int
    guidance_scale: float
    height: int
    width: int
    pipe_kwargs: dict | None
    callback: Callable | None
    is_cancelled: Callable[[], bool]
    before_save: Callable | None
    refiner: object = None  # SDXL's refiner, finishing from `denoising_end`
    denoising_end: float | None = None
    bar: object = None
    rows: object = None  # the last pipeline call's `sdkit.load.rows.Rows`
    plan: dict | None = None  # a resumed batched run: each job's batch and arithmetic in the uninterrupted run

    @property
    def pixels(self) -> bool:
        """Whether the pipeline returns a tensor this run keeps beside each image (`tensor_pixels`)."""
        return self.before_save is not None and tensor_pixels(self.pipe, self.pipe_kwargs)

    @property
    def steps(self) -> int:
        return count_steps(self.num_inference_steps, self.pipe_kwargs)  # img2img/inpaint with strength < 1 skip some

    def run_all(self, pending: list[Candidate], bs: int) -> None:
        """Every pending candidate, `bs` at a time, halving `bs` on out-of-memory errors."""
        while pending:
            if self.is_cancelled():
                raise Cancelled
            batch = pending[:bs] if self.plan is None else [  # what is left of the batch the first job was in
                j for j in pending if self.plan[j.index][0] == self.plan[pending[0].index][0]]
            try:
                result = self.call(batch)
            except Exception as e:
                if not is_oom(e):
                    raise
                if self.plan is not None:
                    log.warning("out of memory replaying the rows of the interrupted run; the rest is made in smaller "
                                "batches, and may differ in the last bits from an uninterrupted run")
                    self.plan = None
                if bs == 1:
                    raise GenerationError(
                        f"out of memory with batch_size=1 at {self.height}x{self.width}: try load_pipeline(..., "
                        f"low_memory=True) or a smaller size. {len(self.run.candidates)} finished candidates are kept" +
                        (f" in {self.out}" if self.out else ""), self.run) from e
                bs = max(1, bs // 2)
                log.warning(f"out of memory; retrying with batch_size={bs}")
                free_memory()
                continue
            self.keep(batch, result)
            pending = pending[len(batch):]

    def call(self, batch: list[Candidate]):
        """One pipeline call: each candidate its own CPU generator, progress and cancelling at every step."""
        steps = self.steps

        def on_step(_pipe, step, _t, kwargs):
            self.bar.update(len(batch))  # one step of every candidate in the batch
            if self.callback is not None:
                self.callback(Progress(min(step + 1, steps), steps, len(self.run.candidates), self.total,
                                       [j.index for j in batch]))
            if self.is_cancelled():
                raise Cancelled
            return kwargs

        replay = ({} if self.plan is None else  # a resumed batched run: the rows of the uninterrupted one
                  {k: self.plan[j.index][1] for k, j in enumerate(batch)})
        prompts = [j.prompt for j in batch]
        negs = None if all(j.negative_prompt is None for j in batch) else [j.negative_prompt or "" for j in batch]
        common = dict(num_inference_steps=self.num_inference_steps, guidance_scale=self.guidance_scale,
                      generator=[torch.Generator("cpu").manual_seed(j.seed) for j in batch], callback_on_step_end=on_step)
        out = {"output_type": "pt"} if self.pixels else {}  # the PIL images are made from it in `keep`, as diffusers does
        pipes = (self.pipe,) if self.refiner is None else (self.pipe, self.refiner)
        with quiet_truncation_logs(), replaying(self.pipe, replay) if replay else contextlib.nullcontext(), \
                recording(*pipes) as self.rows:  # what ran in which row, for each image (base and refiner calls)
            text, lengths = prompt_syntax.text_kwargs(self.pipe, prompts, negs)  # A1111 syntax, long prompts
            with text_lengths(self.pipe, lengths):
                if self.refiner is None:
                    return self.pipe(**common, **text, **out, height=self.height, width=self.width,
                                     **(self.pipe_kwargs or {}))
                latents = self.pipe(**common, **text, height=self.height, width=self.width, output_type="latent",
                                    denoising_end=self.denoising_end, **(self.pipe_kwargs or {})).images
            text, lengths = prompt_syntax.text_kwargs(self.refiner, prompts, negs)
            with text_lengths(self.refiner, lengths):
                return self.refiner(**common, **text, **out, image=latents, denoising_start=self.denoising_end)

    def keep(self, batch: list[Candidate], result) -> None:
        """The decoded batch: images onto their candidates, `before_save`, then each saved and reported."""
        flags = getattr(result, "nsfw_content_detected", None) or [False] * len(batch)  # SDXL has no checker
        images, pixels = result.images, [None] * len(batch)
        if torch.is_tensor(images):  # output_type="pt": the PIL images diffusers' "pil" would give, and the tensor
            from diffusers.image_processor import VaeImageProcessor

            images, pixels = VaeImageProcessor.numpy_to_pil(VaeImageProcessor.pt_to_numpy(images)), images
        for k, (job, image, flag) in enumerate(zip(batch, images, flags)):
            job.image, job.nsfw, job.pixels = image, bool(flag), pixels[k]
            job.arithmetic = self.rows.of_row(k, self.pipe.device).to_json()
        finished = self.before_save(batch) if self.before_save is not None else batch
        for c in finished:
            c.pixels = None  # kept only for before_save's scoring: a run does not hold device memory
            if self.out is not None:
                save_candidate(c, self.out)
            self.run.candidates.append(c)
        if self.callback is not None:
            self.callback(Progress(self.steps, self.steps, len(self.run.candidates), self.total,
                                   [j.index for j in batch], list(finished)))


TENSOR_DEVICES = ("cuda", "xpu", "mps")  # tests add "cpu" to run the accelerator path here


def tensor_pixels(pipe, pipe_kwargs=None) -> bool:
    """Whether images decoded by `pipe` are kept as its tensor too, for a search to score on the device (`before_save`,
    previews): on an accelerator (CLIP's preprocessing there ran at 5,500 images/s on the H200, PIL's at 250), with
    the same pixels and scores as the PIL path. The CPU keeps PIL's path (no faster there); so does an edit, whose
    images are finished (pasted back) as PIL images."""
    return (torch.device(pipe.device).type in TENSOR_DEVICES and getattr(pipe, "pipeline", None) is None
            and "output_type" not in (pipe_kwargs or {}))


def _negatives(negative_prompt, n_prompts: int) -> list[str | None]:
    if negative_prompt is None:
        return [None] * n_prompts
    if isinstance(negative_prompt, str):
        return [negative_prompt] * n_prompts
    negs = list(negative_prompt)
    if len(negs) != n_prompts:
        raise ValueError(f"negative_prompt has {len(negs)} entries for {n_prompts} prompts; give one, or one per prompt")
    return negs
