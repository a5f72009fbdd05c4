"""Running a sweep: here or on Ray Data, resumable, exactly once on disk, ranked per prompt.

The units of work are made by `SweepWorker`s (`sdkit.sweep.worker`: one in this process, or one per Ray actor),
which save each image exactly once under its fixed name. Hence a re-run skips what the manifest holds, and a
file whose manifest line was lost to a kill gets it back from the PNG's own metadata. With a search, each
prompt × grid point is one search: its survivors are saved so, and every other seed gets a `"pruned": true`
manifest line, so an item is done once it has a file or such a line; a unit stopped half-way is searched again
whole (the same seeds give the same survivors, whose files are kept).
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from sdkit.ranking import rank, score_candidates
from sdkit.results import Candidate, Progress, Pruned
from sdkit.progress import progress_bar  # ipywidgets in notebooks (stable stored output), tqdm elsewhere
from sdkit.save import MANIFEST, read_manifest, read_metadata
from sdkit.sweep.worker import SweepWorker, load_sweep_scorer, pruned_records, run_on_ray

if TYPE_CHECKING:
    from sdkit.sweep.spec import Sweep, SweepItem

BACKENDS = ("local", "ray")

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
    pruned: list[Pruned] = field(default_factory=list)  # with a search: the seeds it did not finish, in item order


def run_sweep(sweep: Sweep, output_dir, *, backend: str = "local", ray_address: str | None = None,
              workers: int | None = None, ray_remote_args: dict | None = None, progress: bool = True,
              callback: Callable[[Progress], None] | None = None,
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
        callback: called with a `Progress` (generate's) after each finished image (not for a search's pruned
            seeds): `done` of `total` items are on disk (images or pruned lines, those of an earlier run included),
            `batch` is `[index]` and `finished` the image's `Candidate` (metadata, `path` set, `image` None);
            `step == num_inference_steps`, its steps.
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
    generated, count = 0, len(done)

    def finished(index: int, name: str | None) -> None:  # name None: a seed the search pruned
        nonlocal generated, count
        if index in done:  # a search's unit searched again: its survivors already on disk
            return
        bar.update(1)
        count += 1
        if name is not None:
            generated += 1
            if callback is not None:
                c = _candidate(out / name)
                steps = c.num_inference_steps
                callback(Progress(steps, steps, count, len(items), [index], [c]))

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
            run_on_ray(sweep, out, units, finished, is_cancelled, ray_address, workers, ray_remote_args)
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


def collect(sweep: Sweep, out: Path, *, generated: int = 0, skipped: int = 0, cancelled: bool = False) -> SweepResult:
    """Read the sweep's images back from the manifest, score any left unscored, and rank them per prompt."""
    by_file = {r.get("file"): r for r in read_manifest(out)}
    candidates = []
    for it in sweep.items():
        rec = by_file.get(sweep.file_name(it))
        if rec is not None:
            candidates.append(_candidate(out / rec["file"], rec))
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


def _candidate(path: Path, record: dict | None = None) -> Candidate:
    """A finished image as a `Candidate` without its pixels, from its manifest line or else its PNG's metadata."""
    record = read_metadata(path) if record is None else record
    fields = {f.name for f in dataclasses.fields(Candidate)} - {"image", "path"}
    return Candidate(image=None, path=str(path), **{k: v for k, v in record.items() if k in fields})


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
