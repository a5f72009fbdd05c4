"""Running a sweep: here or on Ray Data, resumable, exactly once on disk, ranked per prompt.

A PNG is written whole to a temporary file and linked into its fixed name only if the
name is free; its manifest line follows. Hence a re-run skips what the manifest holds, a
retried item whose file exists is not written twice, and a file whose manifest line was
lost to a kill gets it back from the PNG's own metadata. With a search, each prompt × grid point is one
search: its survivors are saved so, and every other seed gets a `"pruned": true` manifest line, so an item is
done once it has a file or such a line; a unit stopped half-way is searched again whole (the same seeds give
the same survivors, whose files are kept). On Ray, each actor holds one
pipeline (and scorer) and takes units of work; Ray restarts killed actors and retries
their units.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from sdkit.ranking import rank, score_candidates
from sdkit.results import Candidate
from sdkit.progress import progress_bar  # ipywidgets in notebooks (stable stored output), tqdm elsewhere
from sdkit.files import link_once, write_temp
from sdkit.save import MANIFEST, append_manifest, file_name, png_bytes, read_manifest, read_metadata, read_pruned

if TYPE_CHECKING:
    from sdkit.sweep.spec import Sweep, SweepItem

BACKENDS = ("local", "ray")
ONE_BATCH = ("successive_halving", "particle_resampling")  # searches that denoise all their seeds as one batch

@dataclass
class SweepResult:
    """Every finished image of a sweep (metadata only: `image` is None, `path` is set), and the ranking."""

    run_id: str
    output_dir: str
    manifest: str
    candidates: list[Candidate]  # in item order, from the manifest
    generated: int  # made by this call
    skipped: int  # already on disk when it started
    total: int  # items in the sweep
    ranked: list | None = None  # sdkit.ranking.rank over all candidates (per prompt); None without a scorer
    cancelled: bool = False
    pruned: list[dict] = field(default_factory=list)  # with a search: the manifest lines of seeds it did not finish


def run_sweep(sweep: Sweep, output_dir, *, backend: str = "local", ray_address: str | None = None,
              workers: int | None = None, ray_remote_args: dict | None = None, progress: bool = True,
              callback: Callable[[int, str], None] | None = None,
              cancel: threading.Event | Callable[[], bool] | None = None) -> SweepResult:
    """Generate (and score) every image of `sweep` not already in `output_dir`, then rank per prompt.

    Args:
        sweep: the description.
        output_dir: where PNGs and `manifest.jsonl` go; on Ray a path every worker and the driver share.
            Re-running into the same folder resumes.
        backend: "local" (this process) or "ray" (Ray Data, one pipeline-holding actor per worker).
        ray_address: None starts or reuses a local Ray; "auto" or "ray://head:10001" joins a cluster.
            Ignored if Ray is already initialised.
        workers: Ray actors; default one per GPU in the cluster, else 1.
        ray_remote_args: resources per actor; default {"num_gpus": 1} and a share of the CPUs with GPUs
            (fewer GPUs than workers: an even share of one), else a share of the CPUs (see `actor_pool`).
        progress: show a progress bar fed by finished images.
        callback: called as callback(index, file_name) for each finished image (not for a search's pruned seeds).
        cancel: an Event (or callable); when set, no new work starts. Finished images stay on disk.

    Returns:
        A `SweepResult`.
    """
    from sdkit.sweep.spec import Sweep

    if not isinstance(sweep, Sweep):
        raise TypeError(f"sweep must be a Sweep (sdkit.sweep.spec.Sweep), got {type(sweep).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: choose one of {list(BACKENDS)}")
    if backend == "local" and (ray_address is not None or workers is not None or ray_remote_args is not None):
        raise ValueError("ray_address, workers and ray_remote_args are for backend='ray'")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers={workers!r}: must be an integer >= 1")
    if backend == "ray":
        try:
            import ray  # noqa: F401
            import ray.data  # noqa: F401
        except ImportError:
            raise ImportError("backend='ray' needs Ray Data: pip install 'sdkit[ray]'") from None
    from sdkit.checks import check_output_dir

    out = check_output_dir(output_dir)
    items = sweep.items()
    done = prepare_output(sweep, out, items)
    # A search chooses among all its seeds, so a unit it has not finished is searched again whole.
    units = [u if sweep.search else [i for i in u if i not in done] for u in sweep.units()
             if any(i not in done for i in u)]
    is_cancelled = cancel.is_set if isinstance(cancel, threading.Event) else (cancel or (lambda: False))
    bar = progress_bar(len(items), progress, desc="images", unit="image", initial=len(done))
    generated = 0

    def finished(index: int, name: str | None) -> None:  # name None: a seed the search pruned
        nonlocal generated
        if index in done:  # a search's unit searched again: its survivors already on disk
            return
        bar.update(1)
        if name is not None:
            generated += 1
            if callback is not None:
                callback(index, name)

    try:
        if backend == "local":
            worker = SweepWorker(sweep, out) if units else None
            for unit in units:
                if is_cancelled():
                    break
                for index, name in worker.run_unit(unit, cancel=cancel):
                    finished(index, name)
                if worker.interrupted and not is_cancelled():
                    raise KeyboardInterrupt  # generate() kept the finished images of a Ctrl-C; now stop
        elif units:
            _run_ray(sweep, out, units, finished, is_cancelled, ray_address, workers, ray_remote_args)
    finally:
        bar.close()
    return collect(sweep, out, generated=generated, skipped=len(done), cancelled=bool(is_cancelled()))


def prepare_output(sweep: Sweep, out: Path, items: list[SweepItem]) -> set[int]:
    """Repair what a crash can leave (`sdkit.save.recover`), and return the indices of items already finished."""
    # No worker of this sweep runs yet, so none of its temp files is live: remove them all, also those
    # a worker on another host left (recover leaves another host's temp files alone).
    for tmp in out.glob(f".{sweep.run_id}-*.tmp"):
        tmp.unlink(missing_ok=True)
    recorded = {r.get("file") for r in read_manifest(out)}  # recovers first: torn line, unrecorded PNGs
    return {it.index for it in items if sweep.file_name(it) in recorded} | set(pruned_records(sweep, out, items))


def pruned_records(sweep: Sweep, out: Path, items: list[SweepItem] | None = None) -> dict[int, dict]:
    """A search sweep's pruned lines in `out`, by item index (the first line of each item)."""
    if sweep.search is None:
        return {}
    items = items or sweep.items()
    found: dict[int, dict] = {}
    for rec in read_pruned(out, sweep.run_id):
        i = rec.get("index")
        if isinstance(i, int) and 0 <= i < len(items) and (items[i].prompt, items[i].seed) == (rec.get("prompt"), rec.get("seed")):
            found.setdefault(i, rec)
    return found


def _append_record(out: Path, path: Path) -> None:
    record = read_metadata(path)
    record["path"], record["file"] = str(path), path.name
    append_manifest(out, record)


def collect(sweep: Sweep, out: Path, *, generated: int = 0, skipped: int = 0, cancelled: bool = False) -> SweepResult:
    """Read the sweep's images back from the manifest, score any left unscored, and rank them per prompt."""
    by_file = {r.get("file"): r for r in read_manifest(out)}
    fields = {f.name for f in dataclasses.fields(Candidate)} - {"image", "path"}
    candidates = []
    for it in sweep.items():
        rec = by_file.get(sweep.file_name(it))
        if rec is not None:
            candidates.append(Candidate(image=None, path=str(out / rec["file"]), **{k: v for k, v in rec.items() if k in fields}))
    _warn_if_mixed(sweep, candidates)
    pruned = pruned_records(sweep, out)
    missing = len(sweep) - len(candidates) - len(set(pruned) - {c.index for c in candidates})
    if missing and not cancelled:
        raise RuntimeError(f"{missing} of {len(sweep)} images of sweep {sweep.run_id} are not in {out / MANIFEST}; "
                           "run the sweep again to finish them")
    ranked = None
    if sweep.scorer is not None and candidates:
        candidates = _score_unscored(sweep, out, candidates)
        ranked = rank(candidates)
    return SweepResult(sweep.run_id, str(out), str(out / MANIFEST), candidates, generated, skipped, len(sweep),
                       ranked, cancelled, [pruned[i] for i in sorted(pruned)])


def _warn_if_mixed(sweep: Sweep, candidates: list[Candidate]) -> None:
    """A resumed sweep whose images were made on different hardware or dtypes ("auto" resolves per machine
    and per sdkit version): their pixels are not strictly comparable, so say so rather than rank silently."""
    kinds = collections.Counter(f"{(c.device or '?').split(':')[0]}/{c.dtype}" for c in candidates)
    if len(kinds) > 1:
        counts = ", ".join(f"{n} on {k}" for k, n in sorted(kinds.items()))
        warnings.warn(f"sweep {sweep.run_id}: its images were made with different devices or dtypes ({counts}), "
                      "e.g. resumed on another machine or sdkit version; seeds no longer pair them exactly. "
                      "Run it into a new output_dir, or pin device= and dtype= in the Sweep, for a clean comparison.",
                      stacklevel=3)


def _score_unscored(sweep: Sweep, out: Path, candidates: list[Candidate]) -> list[Candidate]:
    """Images made by an earlier run without a scorer: score them now, recording the scores in their files."""
    from PIL import Image

    from sdkit.save import update_scores

    todo = [i for i, c in enumerate(candidates) if c.score is None]
    if not todo:
        return candidates
    images = []
    for i in todo:
        with Image.open(candidates[i].path) as im:
            images.append(im.convert("RGB"))
    scored = score_candidates([dataclasses.replace(candidates[i], image=im) for i, im in zip(todo, images)],
                              load_sweep_scorer(sweep))
    update_scores(out, scored)
    candidates = list(candidates)
    for i, c in zip(todo, scored):
        candidates[i] = dataclasses.replace(c, image=None)
    return candidates


def load_sweep_scorer(sweep: Sweep):
    """The sweep's scorer: its own object, or the named backend with the CLIP that belongs with the model."""
    if sweep.scorer is None or not isinstance(sweep.scorer, str):
        return sweep.scorer
    from sdkit.models.builtin import clip_for
    from sdkit.scoring.scorers import get_scorer

    return get_scorer(sweep.scorer, sweep.clip_model or clip_for(sweep.model))


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
            from sdkit.search.previews import load_previewer

            self.search_kwargs["previewer"] = load_previewer(self.search_kwargs["previewer"], device=pipe.device,
                                                             torch_dtype=pipe.vae.dtype)

    def _pipe(self, scheduler):
        from sdkit.load.pipeline import load_pipeline

        s = self.sweep  # other schedulers reuse the loaded weights (load_pipeline's cache, from_pipe)
        # Pruning or resampling rows mid-way leaves the others untouched only with the batch-invariant UNet (off by
        # default on GPUs).
        extra = {"batch_invariant": True} if s.search in ONE_BATCH else {}
        return load_pipeline(s.model, device=s.device, dtype=s.dtype, scheduler=scheduler, safety_checker=s.safety_checker,
                             **extra)

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
        """One search over the unit's seeds; its survivors saved exactly once, then a pruned line for each other seed."""
        from sdkit.generation import generate

        s = self.sweep
        by_seed = {it.seed: it for it in (self.items[i] for i in indices)}
        first = self.items[indices[0]]
        params = dict(first.params)
        pipe = self._pipe(params.pop("scheduler", None))
        run = generate(pipe, first.prompt, n=len(indices), seed=first.seed, search=s.search,
                       search_kwargs=self.search_kwargs, scorer=self.scorer, run_id=s.run_id, progress=False,
                       cancel=cancel, **params)
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
        for rec in _unfinished(run, by_seed):
            index = by_seed[rec["seed"]].index
            if index not in have:
                append_manifest(self.out, {**rec, "index": index})
            done.append((index, None))
        return done

    def _record_existing(self, path: Path) -> None:
        if path.name not in {r.get("file") for r in read_manifest(self.out)}:
            _append_record(self.out, path)

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


def _unfinished(run, by_seed: dict) -> list[dict]:
    """A pruned line for every seed of a finished search that is not a survivor: successive_halving's own records;
    draft_then_finish's unfinished drafts as records of the same shape (stopped at the draft's steps, scored there)."""
    from sdkit.search.strategies import _pruned_record

    search, kept = run.search, {c.seed for c in run.candidates}
    records = {r["seed"]: r for r in search.pruned}
    if run.candidates:
        full = run.candidates[0].num_inference_steps
        for d in search.drafts:
            if d.seed not in kept and d.seed not in records:
                extra = {**d.extra, "search": {"strategy": search.strategy, **search.settings}}
                records[d.seed] = _pruned_record(dataclasses.replace(d, num_inference_steps=full, extra=extra),
                                                 d.num_inference_steps, d.score)
    left = sorted(set(by_seed) - kept - set(records))
    if left:
        raise RuntimeError(f"search {search.strategy!r} neither finished nor pruned seeds {left}")
    return [records[seed] for seed in sorted(records)]


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


def _run_ray(sweep, out, units, finished, is_cancelled, ray_address, workers, ray_remote_args) -> None:
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
