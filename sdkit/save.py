"""Saving candidates so that nothing is lost, and reading them back.

Each PNG is written to a temporary file and renamed into place only when
complete (so a crash never leaves half an image), never over an existing file,
and then one JSON line is appended to the run's `manifest.jsonl`.

Metadata: a `parameters` text chunk in AUTOMATIC1111's format, which the common
SD metadata readers understand, and an `sdkit` chunk with the full JSON.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import time
from pathlib import Path

from PIL import Image, PngImagePlugin

from .candidate import Candidate

MANIFEST = "manifest.jsonl"


def new_run_id() -> str:
    """Sortable and unique enough: time to the second plus 4 random hex digits."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def a1111_parameters(c: Candidate) -> str:
    """The `parameters` text AUTOMATIC1111 writes: prompt, negative prompt, then key: value pairs."""
    lines = [c.prompt]
    if c.negative_prompt:
        lines.append(f"Negative prompt: {c.negative_prompt}")
    fields = {
        "Steps": c.num_inference_steps,
        "Sampler": c.scheduler or "Default",
        "CFG scale": f"{c.guidance_scale:g}",
        "Seed": c.seed,
        "Size": f"{c.width}x{c.height}",
        "Model": c.model_id,
    }
    if "strength" in c.extra:
        fields["Denoising strength"] = f"{c.extra['strength']:g}"
    for k in ("mask_blur", "mask_grow", "outpaint"):
        if k in c.extra:
            fields[k.replace("_", " ").capitalize()] = c.extra[k]
    if c.score is not None:
        fields["CLIP score"] = f"{c.score:.2f}"
    fields["Version"] = f"sdkit {c.sdkit_version}"
    # A1111 quotes values containing commas, colons or quotes.
    def fmt(v):
        v = str(v).replace("\n", " ")
        return json.dumps(v) if any(ch in v for ch in ',:"') else v

    lines.append(", ".join(f"{k}: {fmt(v)}" for k, v in fields.items()))
    return "\n".join(lines)


def png_bytes(c: Candidate) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", a1111_parameters(c))
    info.add_itxt("sdkit", json.dumps(c.params(), sort_keys=True))
    buf = io.BytesIO()
    c.image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def file_name(c: Candidate) -> str:
    return f"{c.run_id}-{c.index:03d}-s{c.seed}.png"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new_file(path: Path, data: bytes) -> Path:
    """Write `data` atomically at `path`, or at `name-1.png`, `name-2.png`... if taken. Returns the path used."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    try:
        for i in range(10_000):
            target = path if i == 0 else path.with_name(f"{path.stem}-{i}{path.suffix}")
            try:
                os.link(tmp, target)  # fails if target exists: never overwrite
                _fsync_dir(path.parent)
                return target
            except FileExistsError:
                continue
        raise FileExistsError(f"could not find a free name for {path}")
    finally:
        tmp.unlink(missing_ok=True)


def append_manifest(output_dir: Path, record: dict) -> None:
    """One line per image, written with a single O_APPEND write so lines never interleave."""
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(Path(output_dir) / MANIFEST, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def save_candidate(c: Candidate, output_dir) -> Candidate:
    """Write `c` as a PNG with metadata, then its manifest line. Sets and returns `c.path`."""
    output_dir = Path(output_dir)
    path = write_new_file(output_dir / file_name(c), png_bytes(c))
    c.path = str(path)
    record = c.params()
    record["file"] = path.name
    append_manifest(output_dir, record)
    return c


def update_scores(output_dir, candidates) -> None:
    """Record scores after ranking: rewrite each PNG's metadata atomically and append manifest lines.

    Manifest lines are only ever appended; for each file, the last line wins.
    """
    for c in candidates:
        if c.path is None or c.image is None:
            continue
        data = png_bytes(c)
        tmp = Path(c.path).with_name(f".{Path(c.path).name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, c.path)  # same image, new metadata: replacing is the point here
        record = c.params()
        record["file"] = Path(c.path).name
        append_manifest(output_dir, record)


def read_manifest(output_dir, run_id: str | None = None) -> list[dict]:
    """Manifest records, last line per file winning; a torn last line (killed mid-write) is skipped.

    A folder's manifest collects every run written there; `run_id` keeps one run's records.
    """
    path = Path(output_dir) / MANIFEST
    if not path.exists():
        return []
    by_file: dict[str, dict] = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if run_id is None or rec.get("run_id") == run_id:
            by_file[rec.get("file", len(by_file))] = rec
    return list(by_file.values())


def read_metadata(path) -> dict:
    """The sdkit parameters stored in a PNG written by sdkit."""
    with Image.open(path) as im:
        text = im.text if hasattr(im, "text") else im.info
        if "sdkit" not in text:
            raise ValueError(f"{path}: no sdkit metadata (chunks: {sorted(text)}); was it written by sdkit?")
        return json.loads(text["sdkit"])


def read_parameters(path) -> str:
    """The A1111-style `parameters` text of a PNG."""
    with Image.open(path) as im:
        return im.text.get("parameters", "")


def image_hash(image: Image.Image) -> str:
    """sha256 of the RGB pixels (exact), for provenance of init images and masks."""
    return hashlib.sha256(image.convert("RGB").tobytes() + repr(image.size).encode()).hexdigest()[:16]
