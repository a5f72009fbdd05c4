"""A run's recorded settings (`<run_id>.run.json`) and resuming it: what was asked, what is already on
disk, and refusing to finish a run with other settings than it started with."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from sdkit.files import write_once
from sdkit.results import Candidate
from sdkit.save import image_hash, load_candidate, read_manifest

RUN_SETTINGS = "{run_id}.run.json"
# What decides a run's pixels, in the order a refused resume names them. Not batch_size: on the CPU
# candidates are batch-invariant. `device` is recorded, and a resume elsewhere only warned about.
CHECKED = ("model_id", "revision", "task", "dtype", "scheduler", "prompts", "negative_prompts", "n", "seeds",
           "num_inference_steps", "guidance_scale", "height", "width", "extra", "loras", "embeddings", "pipe_kwargs")


def describe(v):
    """A `pipe_kwargs` value as JSON that compares as it ran: images by their pixel hash ("image <hash>"), tensors
    and arrays by a hash of their contents ("tensor <hash> <shape> <dtype>"), dicts and lists item by item; another
    object only by its type ("<type>"). `regenerate` replays plain values and refuses the descriptions."""
    import hashlib

    import numpy as np
    from PIL import Image

    if isinstance(v, Image.Image):
        return f"image {image_hash(v)}"
    if hasattr(v, "detach") or isinstance(v, np.ndarray):  # a torch tensor or a numpy array
        a = np.ascontiguousarray(v.detach().cpu().float().numpy() if hasattr(v, "detach") else v)
        return f"tensor {hashlib.sha256(a.tobytes()).hexdigest()[:16]} {list(a.shape)} {v.dtype}"
    if isinstance(v, dict):
        return {str(k): describe(x) for k, x in sorted(v.items(), key=lambda kv: str(kv[0]))}
    if isinstance(v, (list, tuple)):
        return [describe(x) for x in v]
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    return f"<{type(v).__name__}>"


def replayable(pipe_kwargs: dict) -> dict:
    """Recorded `pipe_kwargs` as call arguments again; a ValueError naming one recorded only as a description."""
    def plain(v):
        if isinstance(v, str) and (v.startswith(("image ", "tensor ")) or (v.startswith("<") and v.endswith(">"))):
            return False
        return all(map(plain, v.values() if isinstance(v, dict) else v)) if isinstance(v, (dict, list)) else True

    for k, v in pipe_kwargs.items():
        if not plain(v):
            raise ValueError(f"pipe_kwargs[{k!r}] was recorded only as {v!r}; pass it again: "
                             f"regenerate(png, pipe_kwargs={{{k!r}: ...}})")
    return pipe_kwargs


def run_settings(prompts, negs, seeds, n, template: Candidate) -> dict:
    """A run's full settings, as stored in `<run_id>.run.json` (JSON-normalised, so they compare as read back)."""
    d = {"prompts": prompts, "negative_prompts": negs, "n": n, "seeds": list(seeds)}
    for k in ("num_inference_steps", "guidance_scale", "height", "width", "scheduler", "model_id", "revision", "task",
              "dtype", "device", "extra", "loras", "embeddings", "pipe_kwargs", "sdkit_version", "run_id"):
        d[k] = getattr(template, k)
    return json.loads(json.dumps(d, sort_keys=True, default=repr))


def read_run_settings(output_dir, run_id: str) -> dict | None:
    """The settings a run in `output_dir` started with, or None if there is no such run."""
    path = Path(output_dir) / RUN_SETTINGS.format(run_id=run_id)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:  # written atomically, so only a hand edit can do this
        raise ValueError(f"{path}: not valid JSON ({e}); fix or remove it to resume run {run_id!r}") from None


def write_run_settings(out: Path, run_id: str, settings: dict) -> bool:
    """Store `settings` atomically, never over an existing file; False if the run already has them."""
    path = out / RUN_SETTINGS.format(run_id=run_id)
    return write_once(path, (json.dumps(settings, indent=1, sort_keys=True) + "\n").encode())


def check_resume(out: Path, run_id: str, recorded: dict, settings: dict) -> None:
    """Refuse to finish a run with other settings than it started with, naming each difference."""
    diffs = [f"{k} was {recorded[k]!r}, now {settings.get(k)!r}" for k in CHECKED
             if k in recorded and recorded[k] != settings.get(k)]
    if diffs:
        raise ValueError(f"cannot resume run {run_id!r} in {out} with other settings: " + "; ".join(diffs) +
                         f". Resume with the recorded ones ({RUN_SETTINGS.format(run_id=run_id)}), or start a new run "
                         "(another run_id or folder)")
    if recorded.get("device") and recorded["device"] != settings.get("device"):
        warnings.warn(f"run {run_id!r} started on {recorded['device']} and is resumed on {settings.get('device')}: "
                      "the candidates made now can differ in the last bits from an uninterrupted run", stacklevel=3)


def kept_candidates(out: Path, run_id: str, jobs: list[Candidate]) -> list[Candidate]:
    """The run's candidates already saved in `out`, loaded from their PNGs (pixels and metadata), in index order."""
    kept: dict[int, Candidate] = {}
    for rec in read_manifest(out, run_id):
        i = rec.get("index")
        if not isinstance(i, int) or not 0 <= i < len(jobs) or i in kept:
            continue
        c = load_candidate(out / rec["file"])
        job = jobs[i]
        if (c.prompt, c.negative_prompt, c.seed) != (job.prompt, job.negative_prompt, job.seed):
            raise ValueError(f"{out / rec['file']}: candidate {i} of run {run_id!r} is {c.prompt!r} seed {c.seed}, "
                             f"but the run's settings make {job.prompt!r} seed {job.seed} there; not resuming")
        kept[i] = c
    return [kept[i] for i in sorted(kept)]
