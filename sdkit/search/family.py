"""What every search strategy shares: the opening (arguments checked, scorer and seeds resolved, the output folder
readied), counting what it spends, scoring candidates and x0 previews, and the closing (the `Search` record, the
pruned candidates' manifest lines, a `Run` of the finished candidates). A strategy is the part in between."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from sdkit.checks import as_prompt_list, check_output_dir, check_seed, count_steps
from sdkit.edit.tasks import EditInputs, pipeline_for, run_edit
from sdkit.files import write_once
from sdkit.generation import generate, tensor_pixels
from sdkit.load.invariance import cfg_pairs
from sdkit.load.state import module_state, pipeline_info
from sdkit.ranking import rank, record_scores, score_candidates
from sdkit.scoring.scorers import scorer_for
from sdkit.results import Candidate, Compute, Pruned, Run, Search
from sdkit.save import append_manifest, new_run_id, read_manifest, read_pruned, recover, save_candidate


@dataclass
class Opening:
    """A search as its strategy starts it: everything checked and resolved, before any model work."""

    strategy: str
    pipe: Any  # what the candidates are made with (for an edit, the edit's pipeline)
    prompts: list[str]
    n: int
    seeds: list[int]  # candidate k of every prompt gets seeds[k]
    scorer: Any
    out: Path | None
    run_id: str
    settings: dict[str, Any]  # the strategy's name and settings: recorded in every image, less the name in `Search`
    edit: EditInputs | None
    kwargs: dict[str, Any]  # generate's arguments for every round (negative_prompt, guidance_scale, callback, ...);
    # never output_dir: generate would record a resumable run, and a search saves its results itself (`make`)
    compute: Compute
    previewer: Any = None

    @property
    def base(self) -> int:
        return self.seeds[0]

    def steps(self, num_inference_steps: int) -> int:
        """The denoising steps that run: all, or int(steps * strength) for an edit."""
        return count_steps(num_inference_steps, {"strength": self.edit.strength} if self.edit else None)

    def make(self, prompts: Sequence[str] | None = None, *, save: bool = True, before_save=None, **kwargs) -> Run:
        """One round of candidates with the search's run id and arguments (`generate`, or the edit's run). Each
        candidate `before_save` keeps is saved once, as soon as its batch is decoded, with what it set (its scores);
        `save=False` for rounds that are not results (drafts)."""
        def keep(batch):
            kept = before_save(batch) if before_save is not None else batch
            return [save_candidate(c, self.out) for c in kept] if save and self.out is not None else kept

        args = {**self.kwargs, "run_id": self.run_id, **kwargs, "before_save": keep}
        prompts = list(prompts or self.prompts)
        if self.edit is None:
            return generate(self.pipe, prompts, **args)
        return run_edit(self.pipe, prompts, self.edit, **args)

    def score(self, candidates: Sequence[Candidate]) -> list[Candidate]:
        """Copies of `candidates` carrying their scores against their own prompts."""
        scored = score_candidates(candidates, self.scorer)
        self.compute.scored_images += len(scored)
        return scored

    def look(self, x0, rows: Sequence[int]) -> list[Candidate]:
        """Candidate rows' x0 previews (latents, one per row), decoded, shown as the result would look (an edit's
        kept pixels pasted back), scored against their prompts: candidates numbered by row, carrying scores."""
        from diffusers.image_processor import VaeImageProcessor

        from sdkit.search.previews import decode_previews

        pixels = decode_previews(x0, self.previewer or self.pipe.vae, output_type="pt")
        images = VaeImageProcessor.numpy_to_pil(VaeImageProcessor.pt_to_numpy(pixels))
        if self.edit is not None:
            images = [self.edit.finish(im) for im in images]
        keep = self.edit is None and tensor_pixels(self.pipe)  # scored on the device (`images_for`)
        self.compute.preview_decodes += len(images)
        return self.score([Candidate(image=im, prompt=self.prompts[r // self.n], seed=self.seeds[r % self.n], index=r,
                                     pixels=pixels[k] if keep else None)
                           for k, (r, im) in enumerate(zip(rows, images))])

    def close(self, run: Run, scored: Sequence[Candidate], *, pruned: Sequence[Pruned] = (),
              drafts: Sequence[Candidate] = ()) -> Run:
        """The finished candidates as a `Run` whose `.search` ranks them; the pruned listed in the manifest and
        everything in `<run_id>.search.json`."""
        search = Search(self.strategy, {k: v for k, v in self.settings.items() if k != "strategy"}, rank(scored),
                        self.compute, drafts=list(drafts), pruned=list(pruned), run_id=self.run_id,
                        cancelled=run.cancelled)
        if self.out is not None:
            if any(getattr(r.candidate, "members", None) for r in search.ranked):
                # An ensemble's scores are relative: combined again over all finished candidates (`rank`), not
                # the batch each was saved with; their PNGs and manifest lines get the final ones.
                record_scores([r.candidate for r in search.ranked])
            for p in search.pruned:
                append_manifest(self.out, p.record())
            record = {"strategy": search.strategy, **search.settings, "run_id": search.run_id,
                      "compute": dataclasses.asdict(search.compute), "pruned": [p.record() for p in search.pruned]}
            write_once(self.out / f"{search.run_id}.search.json", json.dumps(record, indent=1, default=repr).encode())
        finished = sorted((r.candidate for r in search.ranked), key=lambda c: c.index)
        return Run(run_id=self.run_id, candidates=finished, output_dir=str(self.out) if self.out else None,
                   manifest=str(self.out / "manifest.jsonl") if self.out else None, cancelled=run.cancelled,
                   search=search)


def open_search(strategy: str, pipe, prompt, scorer, *, n: int, settings: dict[str, Any], seed: int | None = None,
                clip_model: str | None = None, edit: EditInputs | None = None, output_dir=None,
                run_id: str | None = None, previewer=None, **kwargs) -> Opening:
    """Check the arguments every strategy takes and resolve them (the scorer is loaded here, once)."""
    for name in ("seeds", "before_save"):
        if kwargs.get(name) is not None:
            raise ValueError(f"{name}= with a search: " + (
                "a search numbers its candidates from seed (candidate k gets seed + k); give seed, or finish chosen "
                "seeds with generate(..., seeds=[...])" if name == "seeds" else "the strategy sets it itself"))
    if scorer is None:
        raise ValueError(f"scorer=None: {strategy} ranks candidates by a scorer; give 'flax', 'torch', 'auto' or a "
                         "scorer object")
    if seed is not None:
        check_seed(seed)
    out = None
    if output_dir is not None:
        out = check_output_dir(output_dir)
        if run_id and run_in_folder(out, run_id):
            raise ValueError(f"run_id={run_id!r} is already a run in {out}: a search cannot be resumed (which "
                             "candidates it keeps depends on all of them); start a new run, or finish single "
                             "candidates with sdkit.regenerate / sdkit.search.finish_pruned")
        recover(out)
    if edit is not None:
        pipe = pipeline_for(pipe, edit.task)
    base = seed if seed is not None else secrets.randbits(31)
    resolved = scorer_for(scorer, pipeline_info(pipe).model_id, clip_model)
    return Opening(strategy, pipe, as_prompt_list(prompt), n, [base + k for k in range(n)], resolved, out,
                   run_id or new_run_id(), {"strategy": strategy, **settings}, edit, kwargs, Compute(), previewer)


def previewer_label(previewer) -> str:
    """How a search records its previewer: "vae" (the pipeline's own) or the tiny previewer's name or class."""
    if previewer is None:
        return "vae"
    return str(getattr(previewer.config, "_name_or_path", "") or type(previewer).__name__)


def run_in_folder(out, run_id: str) -> bool:
    """Whether `out` already holds run `run_id` (a search is not resumed: which candidates it keeps needs them all)."""
    out = Path(out)
    if any((out / f"{run_id}{suffix}").exists() for suffix in (".run.json", ".search.json")):
        return True
    return bool(read_manifest(out, run_id) or read_pruned(out, run_id))


@contextlib.contextmanager
def counting(pipe, compute: Compute):
    """Count UNet evaluations (candidates per call) and wall time inside the block; the UNet is restored after."""
    unet = pipe.unet
    had_own = "forward" in vars(unet)  # sdkit's batch-invariant wrapper lives on the instance
    inner = unet.forward
    state = module_state(unet)

    @functools.wraps(inner)
    def forward(sample, *args, **kwargs):
        b = sample.shape[0]
        candidates = b // 2 if cfg_pairs(sample) else b
        skipped = state.skip or ()  # pruned candidates cost nothing (load.invariance.skipping)
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
