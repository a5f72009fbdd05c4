"""A sweep's worker and its Ray plumbing: a `SweepWorker` holds one pipeline (and scorer) and makes units of work,
here or as a Ray Data actor (`run_on_ray`, `actor_pool`).

Each image is written whole to a temporary file and linked into its fixed name only if the name is free; its
manifest line follows. So a retried unit whose files exist does not write them twice, and a file whose line was
lost to a kill gets it back from the PNG's own metadata. With a search, each unit is one search (`sdkit.search`,
the strategy called directly): its survivors are saved so, then every other seed gets a `"pruned": true` manifest
line (`pruned_records` reads them back by item index).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from sdkit.files import link_once, write_temp
from sdkit.ranking import score_candidates
from sdkit.results import Candidate, Pruned, Run
from sdkit.save import append_manifest, file_name, png_bytes, read_manifest, read_metadata, read_pruned

if TYPE_CHECKING:
    from sdkit.sweep.spec import Sweep, SweepItem

ONE_BATCH = ("successive_halving", "particle_resampling")  # searches that denoise all their seeds as one batch


def load_sweep_scorer(sweep: Sweep):
    """The sweep's scorer: its own object, the named backend with the CLIP that belongs with the model, or the
    verifiers its spec names (on its scorer_backend)."""
    from sdkit.scoring.scorers import scorer_for
    from sdkit.sweep.spec import scorer_options

    return scorer_for(sweep.scorer, sweep.model, sweep.clip_model, **scorer_options(sweep))


def pruned_records(sweep: Sweep, out: Path, items: list[SweepItem] | None = None) -> dict[int, Pruned]:
    """A search sweep's pruned seeds in `out` (from their manifest lines), by item index (the first line of each)."""
    if sweep.search is None:
        return {}
    items = items or sweep.items()
    found: dict[int, Pruned] = {}
    for p in read_pruned(out, sweep.run_id):
        i = p.candidate.index
        if isinstance(i, int) and 0 <= i < len(items) and (items[i].prompt, items[i].seed) == (p.prompt, p.seed):
            found.setdefault(i, p)
    return found


def append_record(out: Path, path: Path) -> None:
    """The manifest line of a PNG already on disk, from its own metadata."""
    record = read_metadata(path)
    record["path"], record["file"] = str(path), path.name
    append_manifest(out, record)


class SweepWorker:
    """Makes units of a sweep. Loads the pipeline and the scorer once; one per Ray actor, or one in-process."""

    def __init__(self, sweep: Sweep, output_dir):
        self.sweep, self.out = sweep, Path(output_dir)
        self.items = sweep.items()
        self.scorer = load_sweep_scorer(sweep)
        self.interrupted = False  # the last unit stopped early (cancel or Ctrl-C); its finished images are saved
        pipe = self._pipe(None)  # load the weights now, not inside the first unit
        self.search_kwargs = dict(sweep.search_kwargs or {})
        if isinstance(self.search_kwargs.get("previewer"), str):  # a folder or Hub id: loaded once per worker
            from sdkit.load.previewer import load_previewer

            self.search_kwargs["previewer"] = load_previewer(self.search_kwargs["previewer"], device=pipe.device,
                                                             dtype=pipe.vae.dtype)

    def _pipe(self, scheduler):
        from sdkit.load.pipeline import load_pipeline

        s = self.sweep  # other schedulers reuse the loaded weights (load_pipeline's cache, from_pipe)
        # Pruning or resampling rows mid-way leaves the others untouched only with the batch-invariant UNet (off by
        # default on GPUs).
        extra = {"batch_invariant": True} if s.search in ONE_BATCH else {}
        return load_pipeline(s.model, device=s.device, dtype=s.dtype, scheduler=scheduler, safety_checker=s.safety_checker,
                             loras=dict(s.loras) if s.loras else None, **extra)

    def __call__(self, batch: dict) -> dict:
        """Ray Data entry point: a batch of units (JSON lists of item indices) -> one row per finished image."""
        import numpy as np

        done = [d for unit in batch["unit"] for d in self.run_unit(json.loads(unit))]
        return {"index": np.array([d[0] for d in done], dtype=np.int64),
                "file": np.array([d[1] or "" for d in done], dtype=object)}  # "": pruned

    def run_unit(self, indices: list[int], cancel=None) -> list[tuple[int, str | None]]:
        """Generate, score and save the items `indices` (one prompt and grid point); returns (index, file) done,
        file None for a seed a search pruned."""
        from sdkit.generation import generate

        if self.sweep.search is not None:
            return self._search_unit(indices, cancel)
        done, todo = [], []
        for it in (self.items[i] for i in indices):
            path = self.out / self.sweep.file_name(it)
            if path.exists():  # a retry of work a killed worker finished: keep its file, make sure it is recorded
                self._record_existing(path)
                done.append((it.index, path.name))
            else:
                todo.append(it)
        if not todo:
            return done
        params = dict(todo[0].params)
        pipe = self._pipe(params.pop("scheduler", None))
        run = generate(pipe, todo[0].prompt, n=len(todo), seeds=[it.seed for it in todo], batch_size=len(todo),
                       run_id=self.sweep.run_id, progress=False, cancel=cancel, **params)
        self.interrupted = run.cancelled
        for it, c in zip(todo, run.candidates):  # fewer candidates than items only if cancelled
            c.index = it.index
        if self.scorer is not None:
            run.candidates = score_candidates(run.candidates, self.scorer)
        for c in run.candidates:
            self._save_once(c)
            done.append((c.index, Path(c.path).name))
        return done

    def _search_unit(self, indices: list[int], cancel) -> list[tuple[int, str | None]]:
        """One search over the unit's seeds, its strategy called directly; its survivors saved exactly once, then a
        pruned line for each other seed."""
        from sdkit.search import strategy_named
        from sdkit.sweep.spec import default_steps

        s = self.sweep
        by_seed = {it.seed: it for it in (self.items[i] for i in indices)}
        first = self.items[indices[0]]
        params = dict(first.params)
        pipe = self._pipe(params.pop("scheduler", None))
        params = {k: v for k, v in params.items() if v is not None}  # generate's defaults, as a plain sweep gets them
        params.setdefault("num_inference_steps", default_steps())  # not the strategy's own default
        run = strategy_named(s.search)(pipe, first.prompt, self.scorer, n=len(indices), seed=first.seed,
                                       **self.search_kwargs, run_id=s.run_id, progress=False, cancel=cancel, **params)
        self.interrupted = run.cancelled
        done, again = [], False
        for c in run.candidates:
            c.index = by_seed[c.seed].index
            again |= not self._save_once(c)
            done.append((c.index, Path(c.path).name))
        if run.cancelled:  # which seeds it would have pruned is not known yet: the unit is searched again
            return done
        # Lines are appended after all survivors are saved, so an earlier attempt's lines exist only if its files do.
        have = pruned_records(s, self.out) if again else {}
        for p in _unfinished(run, by_seed):
            index = by_seed[p.seed].index
            if index not in have:
                append_manifest(self.out, {**p.record(), "index": index})
            done.append((index, None))
        return done

    def _record_existing(self, path: Path) -> None:
        if path.name not in {r.get("file") for r in read_manifest(self.out)}:
            append_record(self.out, path)

    def _save_once(self, c: Candidate) -> bool:
        """Link a complete PNG into its fixed name, then append its manifest line; never a second copy.
        False if the file was there already."""
        path = self.out / file_name(c)
        tmp = write_temp(path, png_bytes(c))
        try:
            if not link_once(tmp, path):
                c.path = str(path)
                self._record_existing(path)
                return False
            c.path = str(path)
            record = c.params()
            record["file"] = path.name
            append_manifest(self.out, record)
            return True
        finally:
            tmp.unlink(missing_ok=True)  # after the line, as in sdkit.save.save_candidate: recover relies on it


def _unfinished(run: Run, by_seed: dict) -> list[Pruned]:
    """A `Pruned` for every seed of a finished search that is not a survivor, by seed: successive_halving's own;
    draft_then_finish's unfinished drafts as the same (at full steps, stopped at the draft's steps, scored there)."""
    search, kept = run.search, {c.seed for c in run.candidates}
    found = {p.seed: p for p in search.pruned}
    if run.candidates:
        full = run.candidates[0].num_inference_steps
        for d in search.drafts:
            if d.seed not in kept and d.seed not in found:
                extra = {**d.extra, "search": {"strategy": search.strategy, **search.settings}}
                found[d.seed] = Pruned(dataclasses.replace(d, image=None, arithmetic=None, num_inference_steps=full, extra=extra),
                                       d.num_inference_steps, d.score)
    left = sorted(set(by_seed) - kept - set(found))
    if left:
        raise RuntimeError(f"search {search.strategy!r} neither finished nor pruned seeds {left}")
    return [found[seed] for seed in sorted(found)]


def actor_pool(resources: dict, workers: int | None = None, ray_remote_args: dict | None = None) -> tuple[int, dict]:
    """Pool size and resources per actor on a cluster with `resources` (as `ray.cluster_resources()` gives).

    With GPUs: one actor (one pipeline) per GPU, `num_gpus=1` each; Ray then sets each actor's
    CUDA_VISIBLE_DEVICES, so its "cuda" is its own GPU. More workers than GPUs share them evenly (two per
    GPU get 1/2 each), never more than fit. Without: the CPU share below. `ray_remote_args` wins if given.
    """
    import math

    gpus = int(resources.get("GPU", 0))
    workers = workers or max(1, gpus)
    if ray_remote_args is not None:
        return workers, dict(ray_remote_args)
    # A whole CPU per actor plus Ray Data's own tasks can deadlock a small machine: take a share.
    cpus = min(1.0, resources.get("CPU", 1) / (workers + 1))
    if gpus:
        return workers, {"num_gpus": 1 / math.ceil(workers / gpus), "num_cpus": cpus}
    return workers, {"num_cpus": cpus}


def run_on_ray(sweep: Sweep, out: Path, units: list[list[int]], finished: Callable[[int, str | None], None],
               is_cancelled: Callable[[], bool], ray_address, workers, ray_remote_args) -> None:
    """The units on Ray Data, one `SweepWorker` per actor; `finished(index, file or None)` for each row back."""
    import ray

    if not ray.is_initialized():
        ray.init(address=ray_address)
    workers, ray_remote_args = actor_pool(ray.cluster_resources(), workers, ray_remote_args)
    ds = ray.data.from_items([{"unit": json.dumps(u)} for u in units], override_num_blocks=len(units))
    ds = ds.map_batches(SweepWorker, fn_constructor_kwargs={"sweep": sweep, "output_dir": str(out)},
                        batch_size=1, compute=ray.data.ActorPoolStrategy(size=workers), **ray_remote_args)
    for row in ds.iter_rows():
        finished(int(row["index"]), str(row["file"]) or None)
        if is_cancelled():
            break
