"""Sweeps: every prompt × seed × grid point, in this process or on Ray, resumable and exactly once on disk.

    sweep = Sweep(["a red circle", "a blue square"], seeds=8, model="sdkit:toy", scorer="torch",
                  grid={"guidance_scale": [2, 4, 7.5], "num_inference_steps": 20})
    result = run_sweep(sweep, "outputs/study")                      # here, in one process
    result = run_sweep(sweep, "/shared/study", backend="ray")       # the same work on Ray

Item k of a sweep (a prompt, a seed, a grid point) always has index k, so its file
name `{run_id}-{index:03d}-s{seed}.png` is fixed (`run_id` is a fingerprint of the
description). A PNG is written whole to a temporary file and linked into place only if
that name is free, then its manifest line is appended. Hence a re-run skips what the
manifest holds, a retried item whose file exists is not written twice, and a file
whose manifest line was lost to a kill gets it back from the PNG's own metadata.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import re
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .candidate import Candidate
from .save import MANIFEST, append_manifest, file_name, png_bytes, read_manifest, read_metadata

# generate()'s per-image settings a grid may vary (`scheduler` goes to load_pipeline).
GRID_PARAMS = ("guidance_scale", "num_inference_steps", "scheduler", "negative_prompt", "height", "width")
BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class SweepItem:
    """One image of a sweep."""

    index: int  # position in the sweep; fixes the file name
    prompt: str
    seed: int
    params: dict[str, Any]  # the grid point: a value for each name in the grid


@dataclass(frozen=True)
class Sweep:
    """What to generate: every prompt × every seed × every point of `grid`. Validated on creation."""

    prompts: Sequence[str] | os.PathLike  # a list, or a Path to a file with one prompt per line ('#' lines skipped)
    seeds: int | Sequence[int] = 4  # per prompt: a count (seed, seed+1, ...) or the seeds themselves
    seed: int = 0  # base seed for a count; every prompt and grid point gets the same seeds, so comparisons are paired
    grid: Mapping[str, Any] = field(default_factory=dict)  # name -> list of values (swept) or one value (fixed)
    model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    scorer: str | Callable | None = None  # "flax", "torch", a zero-argument factory returning a scorer, or None
    scorer_model: str | None = None  # the scorer's CLIP checkpoint; None: load_scorer's default
    device: str = "auto"  # on each worker
    dtype: str = "auto"
    safety_checker: bool = True
    batch_size: int = 4  # images generated together, and retried together if a worker dies
    max_items: int = 10_000  # bigger sweeps need confirm=True: a stray grid value can mean days of GPU time
    confirm: bool = False
    name: str = "sweep"  # prefix of the run id, hence of every file name

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731  (frozen: normalise once, here)
        set_("prompts", _prompt_list(self.prompts))
        set_("seeds", _seed_list(self.seeds, self.seed))
        set_("grid", _check_grid(self.grid))
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(f"model={self.model!r}: give a Hub id, a local diffusers folder or 'sdkit:tiny'")
        if not (self.scorer is None or callable(self.scorer) or self.scorer in ("flax", "torch")):
            raise ValueError(f"scorer={self.scorer!r}: use 'flax', 'torch', a factory returning a scorer, or None")
        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size!r}: must be an integer >= 1")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name or ""):
            raise ValueError(f"name={self.name!r}: use letters, digits, '_', '.', '-' (it starts every file name)")
        total = len(self)
        if total > self.max_items and not self.confirm:
            sizes = " × ".join([f"{len(self.prompts)} prompts", f"{len(self.seeds)} seeds"] +
                               [f"{len(v)} {k}" for k, v in self.grid.items() if len(v) > 1])
            raise ValueError(f"this sweep has {total} images ({sizes}), over max_items={self.max_items}; "
                             "pass confirm=True if you mean it, or raise max_items")

    def __len__(self) -> int:
        n = len(self.prompts) * len(self.seeds)
        for values in self.grid.values():
            n *= len(values)
        return n

    @property
    def run_id(self) -> str:
        """`{name}-{fingerprint}` of everything that decides the pixels: the same description, the same files."""
        what = [self.model, list(self.prompts), list(self.seeds), [[k, list(v)] for k, v in self.grid.items()],
                self.device, self.dtype, self.safety_checker]
        return f"{self.name}-{hashlib.sha256(json.dumps(what).encode()).hexdigest()[:8]}"

    def items(self) -> list[SweepItem]:
        """Every image, prompt by prompt, grid point by grid point, seed by seed."""
        points = [dict(zip(self.grid, values)) for values in itertools.product(*self.grid.values())]
        combos = itertools.product(self.prompts, points, self.seeds)
        return [SweepItem(i, p, s, g) for i, (p, g, s) in enumerate(combos)]

    def units(self) -> list[list[int]]:
        """Item indices in units of work: one prompt and grid point, up to `batch_size` seeds.

        Fixed by the description, so a local run and a Ray run batch the same images together.
        """
        per_point = len(self.seeds)
        return [list(range(start + k, start + min(k + self.batch_size, per_point)))
                for start in range(0, len(self), per_point) for k in range(0, per_point, self.batch_size)]

    def file_name(self, item: SweepItem) -> str:
        return file_name(Candidate(image=None, prompt=item.prompt, seed=item.seed, index=item.index, run_id=self.run_id))


def _prompt_list(prompts) -> tuple[str, ...]:
    from .checks import as_prompt_list

    if isinstance(prompts, os.PathLike):
        path = Path(prompts)
        if not path.is_file():
            raise FileNotFoundError(f"prompts={str(path)!r}: no such file")
        lines = [ln.strip() for ln in path.read_text().splitlines()]
        prompts = [ln for ln in lines if ln and not ln.startswith("#")]
        if not prompts:
            raise ValueError(f"prompts file {str(path)!r} has no prompts (one per line; '#' lines are skipped)")
    elif isinstance(prompts, str):
        if os.path.isfile(prompts):
            raise ValueError(f"prompts={prompts!r} is a file name: pass Path({prompts!r}) to read prompts from it, "
                             "or a list of prompts")
        prompts = [prompts]
    prompts = as_prompt_list(list(prompts), "prompts")
    dup = next((p for i, p in enumerate(prompts) if p in prompts[:i]), None)
    if dup is not None:
        raise ValueError(f"prompt {dup!r} is listed twice; each prompt once (its seeds already repeat it)")
    return tuple(prompts)


def _seed_list(seeds, seed) -> tuple[int, ...]:
    is_int = lambda s: isinstance(s, int) and not isinstance(s, bool)  # noqa: E731
    if not is_int(seed) or not 0 <= seed < 2**63:
        raise ValueError(f"seed={seed!r}: must be an integer in [0, 2**63)")
    if is_int(seeds):
        if seeds < 1:
            raise ValueError(f"seeds={seeds!r}: give a count >= 1, or a list of seeds")
        seeds = range(seed, seed + seeds)
    seeds = tuple(seeds)
    if not seeds:
        raise ValueError("seeds is an empty list; give at least one seed, or a count")
    for s in seeds:
        if not is_int(s) or not 0 <= s < 2**63:
            raise ValueError(f"seed {s!r} in seeds: must be an integer in [0, 2**63)")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds {list(seeds)} repeat a seed; the same seed gives the same image")
    return seeds


def _check_grid(grid) -> dict[str, tuple]:
    from .checks import check_generate_args
    from .schedulers import check_scheduler

    if not isinstance(grid, Mapping):
        raise TypeError(f"grid must be a dict of parameter name -> values, got {type(grid).__name__}")
    out = {}
    for name, values in grid.items():
        if name not in GRID_PARAMS:
            raise ValueError(f"grid parameter {name!r} is not known; allowed: {list(GRID_PARAMS)}")
        values = tuple(values) if isinstance(values, (list, tuple, range)) else (values,)
        if not values:
            raise ValueError(f"grid[{name!r}] is an empty list; give at least one value")
        for v in values:
            if name == "scheduler":
                check_scheduler(v)
            elif name == "negative_prompt":
                if v is not None and not isinstance(v, str):
                    raise ValueError(f"grid['negative_prompt'] value {v!r}: must be a string or None")
            else:
                args = dict(num_inference_steps=1, guidance_scale=1.0, height=None, width=None)
                args[name] = v
                check_generate_args(n=1, seeds=None, batch_size=None, **args)
        if len(set(values)) != len(values):
            raise ValueError(f"grid[{name!r}] = {list(values)} repeats a value")
        out[name] = values
    return out


# --- running -------------------------------------------------------------------------------------------------


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
    ranked: list | None = None  # sdkit.rank.rank over all candidates (per prompt); None without a scorer
    cancelled: bool = False


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
        ray_remote_args: resources per actor; default {"num_gpus": 1} with GPUs, else a share of the CPUs.
        progress: show a progress bar fed by finished images.
        callback: called as callback(index, file_name) for each finished image.
        cancel: an Event (or callable); when set, no new work starts. Finished images stay on disk.

    Returns:
        A `SweepResult`.
    """
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
    from .checks import check_output_dir

    out = check_output_dir(output_dir)
    items = sweep.items()
    done = prepare_output(sweep, out, items)
    units = [[i for i in u if i not in done] for u in sweep.units()]
    units = [u for u in units if u]
    is_cancelled = cancel.is_set if isinstance(cancel, threading.Event) else (cancel or (lambda: False))
    bar = _progress_bar(len(items), len(done), sweep.run_id, progress)
    generated = 0

    def finished(index: int, name: str) -> None:
        nonlocal generated
        generated += 1
        bar.update(1)
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
    """Repair what a crash can leave, and return the indices of items already finished."""
    manifest = out / MANIFEST
    if manifest.exists() and manifest.stat().st_size:
        with open(manifest, "rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
        if torn:  # a line cut short by a kill: end it, so the next line is not glued onto it
            append_manifest_bytes(out, b"\n")
    for tmp in out.glob(f".{sweep.run_id}-*.tmp"):  # half-written by a killed worker; never a finished image
        tmp.unlink(missing_ok=True)
    recorded = {r.get("file") for r in read_manifest(out)}
    on_disk = set(os.listdir(out))
    done = set()
    for it in items:
        name = sweep.file_name(it)
        if name in recorded:
            done.add(it.index)
        elif name in on_disk:  # linked into place, then killed before its manifest line
            _append_record(out, out / name)
            done.add(it.index)
    return done


def append_manifest_bytes(out: Path, data: bytes) -> None:
    fd = os.open(out / MANIFEST, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


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
    missing = len(sweep) - len(candidates)
    if missing and not cancelled:
        raise RuntimeError(f"{missing} of {len(sweep)} images of sweep {sweep.run_id} are not in {out / MANIFEST}; "
                           "run the sweep again to finish them")
    ranked = None
    if sweep.scorer is not None and candidates:
        _score_unscored(sweep, out, candidates)
        ranked = _rank(candidates)
    return SweepResult(sweep.run_id, str(out), str(out / MANIFEST), candidates, generated, skipped, len(sweep),
                       ranked, cancelled)


def _score_unscored(sweep: Sweep, out: Path, candidates: list[Candidate]) -> None:
    """Images made by an earlier run without a scorer: score them now, recording the scores in their files."""
    from PIL import Image

    from .save import update_scores

    todo = [c for c in candidates if c.score is None]
    if not todo:
        return
    scorer = load_sweep_scorer(sweep)
    for c in todo:
        with Image.open(c.path) as im:
            c.image = im.convert("RGB")
    _apply_scores(scorer, todo)
    update_scores(out, todo)
    for c in todo:
        c.image = None


def _rank(candidates: list[Candidate]):
    import numpy as np

    from .rank import rank
    from .score import Scores

    scores = Scores(logits=np.array([c.logit for c in candidates], dtype=np.float32),
                    clip_score=np.array([c.score for c in candidates], dtype=np.float32),
                    scorer=candidates[0].scorer or "")
    return rank(candidates, scores)


def load_sweep_scorer(sweep: Sweep):
    if sweep.scorer is None:
        return None
    if callable(sweep.scorer):
        return sweep.scorer()
    from .score import load_scorer

    return load_scorer(sweep.scorer, **({"model_id": sweep.scorer_model} if sweep.scorer_model else {}))


def _apply_scores(scorer, candidates: list[Candidate]) -> None:
    scores = scorer([c.image for c in candidates], [c.prompt for c in candidates])
    for c, logit, score in zip(candidates, scores.logits, scores.clip_score):
        c.logit, c.score, c.scorer = float(logit), float(score), scores.scorer or getattr(scorer, "name", "")


class SweepWorker:
    """Makes units of a sweep. Loads the pipeline and the scorer once; one per Ray actor, or one in-process."""

    def __init__(self, sweep: Sweep, output_dir):
        self.sweep, self.out = sweep, Path(output_dir)
        self.items = sweep.items()
        self.scorer = load_sweep_scorer(sweep)
        self.interrupted = False  # the last unit stopped early (cancel or Ctrl-C); its finished images are saved
        self._pipe(None)  # load the weights now, not inside the first unit

    def _pipe(self, scheduler):
        from .load import load_pipeline

        s = self.sweep  # other schedulers reuse the loaded weights (load_pipeline's cache, from_pipe)
        return load_pipeline(s.model, device=s.device, dtype=s.dtype, scheduler=scheduler, safety_checker=s.safety_checker)

    def __call__(self, batch: dict) -> dict:
        """Ray Data entry point: a batch of units (JSON lists of item indices) -> one row per finished image."""
        import numpy as np

        done = [d for unit in batch["unit"] for d in self.run_unit(json.loads(unit))]
        return {"index": np.array([d[0] for d in done], dtype=np.int64), "file": np.array([d[1] for d in done], dtype=object)}

    def run_unit(self, indices: list[int], cancel=None) -> list[tuple[int, str]]:
        """Generate, score and save the items `indices` (one prompt and grid point); returns (index, file) done."""
        from .generate import generate

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
        if self.scorer is not None and run.candidates:
            _apply_scores(self.scorer, run.candidates)
        for c in run.candidates:
            self._save_once(c)
            done.append((c.index, Path(c.path).name))
        return done

    def _record_existing(self, path: Path) -> None:
        if path.name not in {r.get("file") for r in read_manifest(self.out)}:
            _append_record(self.out, path)

    def _save_once(self, c: Candidate) -> None:
        """Link a complete PNG into its fixed name, then append its manifest line; never a second copy."""
        path = self.out / file_name(c)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp")
        with open(tmp, "wb") as f:
            f.write(png_bytes(c))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic, and fails if the name is taken
        except FileExistsError:
            c.path = str(path)
            self._record_existing(path)
            return
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(self.out)
        c.path = str(path)
        record = c.params()
        record["file"] = path.name
        append_manifest(self.out, record)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _run_ray(sweep, out, units, finished, is_cancelled, ray_address, workers, ray_remote_args) -> None:
    import ray

    if not ray.is_initialized():
        ray.init(address=ray_address)
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    workers = workers or max(1, gpus)
    if ray_remote_args is None:
        # A whole CPU per actor plus Ray Data's own tasks can deadlock a small machine: take a share.
        ray_remote_args = {"num_gpus": 1} if gpus else {"num_cpus": min(1.0, resources.get("CPU", 1) / (workers + 1))}
    ds = ray.data.from_items([{"unit": json.dumps(u)} for u in units], override_num_blocks=len(units))
    ds = ds.map_batches(SweepWorker, fn_constructor_kwargs={"sweep": sweep, "output_dir": str(out)},
                        batch_size=1, compute=ray.data.ActorPoolStrategy(size=workers), **ray_remote_args)
    for row in ds.iter_rows():
        finished(int(row["index"]), str(row["file"]))
        if is_cancelled():
            break


class _NoBar:
    def update(self, k):
        pass

    def close(self):
        pass


def _progress_bar(total: int, initial: int, desc: str, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="image")
