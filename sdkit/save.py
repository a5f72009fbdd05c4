"""Saving candidates so that nothing is lost, and reading them back.

Each PNG is written to a temporary file `.<name>.<pid>.<hex>.tmp`, fsynced, and
hard-linked into place only when complete (so a crash never leaves half an
image), never over an existing file; then one JSON line is appended to the
run's `manifest.jsonl`, and only then is the temporary name removed. A kill -9
at any instant leaves at worst a temp file of a dead process, a PNG without its
line, or a torn last line: `recover` repairs all three, and runs whenever a
folder is used again (`generate`, a resume, `read_manifest`).

Metadata: a `parameters` text chunk in AUTOMATIC1111's format, which the common
SD metadata readers understand, and an `sdkit` chunk with the full JSON. Over 300 lines: writing, reading and
`recover` share one on-disk protocol (temp names, the order of file and manifest line), kept in one place.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import time
import warnings
from pathlib import Path

from PIL import Image, PngImagePlugin

from sdkit.files import HOST_TAG, TEMP_NAME, fault, fault_due, kill_now, link_free, remove_temp, write_temp
from sdkit.results import Candidate, Pruned, score_label

MANIFEST = "manifest.jsonl"

def new_run_id() -> str:
    """Sortable and unique enough: time to the second plus 4 random hex digits."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def a1111_parameters(c: Candidate) -> str:
    """The `parameters` text AUTOMATIC1111 writes: prompt, negative prompt, then key: value pairs.

    "Model hash": a single file's AutoV2 (first 10 hex of its sha256), as A1111 writes it; a diffusers folder has
    no file A1111 could match, so none. LoRAs as A1111 writes them: `<lora:name:weight>` after the prompt (A1111
    reads its LoRAs from there) and "Lora hashes" (AutoV3, 12 hex); also Civitai's `Hashes` JSON, which Civitai
    and sd-parsers read (sd-parsers splits A1111's quoted "Lora hashes" at its commas and colons). Textual inversions
    likewise: "TI hashes" (the file's sha256, 12 hex) and `embed:token` in `Hashes`. The prompt is written as typed."""
    from sdkit.prompts import lora_tags

    tagged = {name for name, _ in lora_tags(c.prompt)[1]}  # the prompt as typed keeps its own tags
    lines = [" ".join([c.prompt] + [f"<lora:{x['name']}:{x['weight']:g}>" for x in c.loras if x["name"] not in tagged])]
    if c.negative_prompt:
        lines.append(f"Negative prompt: {c.negative_prompt}")
    fields = {
        "Steps": c.num_inference_steps,
        "Sampler": c.scheduler or "Default",
        "CFG scale": f"{c.guidance_scale:g}",
        "Seed": c.seed,
        "Size": f"{c.width}x{c.height}",
        **({"Model hash": c.model_hash} if c.model_hash else {}),
        "Model": c.model_id,
    }
    if "strength" in c.extra:
        fields["Denoising strength"] = f"{c.extra['strength']:g}"
    for k in ("mask_blur", "mask_grow", "outpaint"):
        if k in c.extra:
            fields[k.replace("_", " ").capitalize()] = c.extra[k]
    if "refiner" in c.extra:  # A1111's own names for the SDXL hand-off
        fields["Refiner"] = c.extra["refiner"].get("model_id") or "refiner"
        fields["Refiner switch at"] = f"{c.extra['refiner']['denoising_end']:g}"
    if c.loras:  # A1111 drops ":" and "," from the names here
        fields["Lora hashes"] = ", ".join(f"{x['name'].replace(':', '').replace(',', '')}: {x['autov3']}"
                                          for x in c.loras)
    if c.embeddings:  # A1111's: the token and the file's sha256, 12 hex
        fields["TI hashes"] = ", ".join(f"{x['token'].replace(':', '').replace(',', '')}: {x['sha256'][:12]}"
                                        for x in c.embeddings)
    if c.score is not None:
        fields[score_label(c.scorer)] = f"{c.score:.2f}"
    for name, m in (c.members or {}).items():  # an ensemble's members, each under its own name
        fields[f"{score_label(m.scorer)} ({name}, weight {m.weight:g})"] = f"{m.score:.2f}"
    fields["Version"] = f"sdkit {c.sdkit_version}"
    # A1111 quotes values containing commas, colons or quotes.
    def fmt(v):
        v = str(v).replace("\n", " ")
        return json.dumps(v) if any(ch in v for ch in ',:"') else v

    pairs = [f"{k}: {fmt(v)}" for k, v in fields.items()]
    hashes = {"model": c.model_hash} if c.model_hash else {}
    hashes.update({f"lora:{x['name']}": x["autov3"] for x in c.loras})
    hashes.update({f"embed:{x['token']}": x["sha256"][:12] for x in c.embeddings})  # Civitai's key for an embedding
    if hashes:  # Civitai's JSON, unquoted as Civitai writes it
        pairs.insert(-1, "Hashes: " + json.dumps(hashes))
    lines.append(", ".join(pairs))
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


def _append(output_dir: Path, data: bytes) -> None:
    fd = os.open(Path(output_dir) / MANIFEST, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if fault_due("manifest-half"):
            os.write(fd, data[: len(data) // 2])
            os.fsync(fd)
            kill_now()
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def append_manifest(output_dir: Path, record: dict) -> None:
    """One line per image, written with a single O_APPEND write so lines never interleave."""
    _append(output_dir, (json.dumps(record, sort_keys=True) + "\n").encode())
    fault("manifest-written")


def save_candidate(c: Candidate, output_dir) -> Candidate:
    """Write `c` as a PNG with metadata, then its manifest line. Sets and returns `c.path`."""
    output_dir = Path(output_dir)
    path = output_dir / file_name(c)
    tmp = write_temp(path, png_bytes(c))
    try:
        path = link_free(tmp, path)
        c.path = str(path)
        record = c.params()
        record["file"] = path.name
        append_manifest(output_dir, record)
    finally:
        # Removed only after the manifest line: while a live writer's temp shares the PNG's inode,
        # a concurrent `recover` knows the line is still coming and does not write a second one.
        remove_temp(tmp)
    return c


def update_scores(output_dir, candidates) -> None:
    """Record scores after ranking: rewrite each PNG's metadata atomically and append manifest lines.

    Manifest lines are only ever appended; for each file, the last line wins.
    """
    for c in candidates:
        if c.path is None or c.image is None:
            continue
        tmp = write_temp(Path(c.path), png_bytes(c))
        try:
            os.replace(tmp, c.path)  # same image, new metadata: replacing is the point here
        finally:
            tmp.unlink(missing_ok=True)
        record = c.params()
        record["file"] = Path(c.path).name
        append_manifest(output_dir, record)


def _parse_manifest(path: Path) -> list[dict]:
    records = []
    with open(path, "rb") as f:
        for line in f.read().decode("utf-8", "replace").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line torn by a kill
                continue
            if isinstance(rec, dict):
                records.append(rec)
    return records


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # another thread of ours may be writing it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, someone else's
        return True
    return True


def recover(output_dir) -> None:
    """Repair what a kill -9 can leave in a folder of sdkit images; safe to run any time, idempotent.

    - a torn last manifest line is ended, so the next line starts on its own;
    - temp files of writers that are no longer alive on this host are removed (a live writer's are
      left alone, so processes sharing a folder, e.g. Ray actors on one machine, are safe; temp files
      from writers on other hosts sharing the folder are left to a `recover` on their host);
    - a finished PNG without a manifest line (killed between the two) gets one, rebuilt from the
      PNG's own sdkit metadata.
    A read-only folder is left as it is.
    """
    out = Path(output_dir)
    try:
        entries = list(os.scandir(out))
    except (FileNotFoundError, NotADirectoryError):
        return
    manifest = out / MANIFEST
    temps, pngs = [], []
    for e in entries:  # listed before the manifest is read: see `save_candidate` on the order
        if e.name.endswith(".tmp") and (m := TEMP_NAME.match(e.name)):
            temps.append((e, m))
        elif e.name.endswith(".png") and not e.name.startswith("."):
            pngs.append(e)
    if not temps and not pngs and not manifest.exists():
        return
    try:
        with _folder_lock(out):
            _recover_locked(out, manifest, temps, pngs)
    except OSError:  # read-only (someone else's outputs, a mounted archive): read it as it is
        return


def _recover_locked(out: Path, manifest: Path, temps, pngs) -> None:
    if manifest.exists() and manifest.stat().st_size:
        with open(manifest, "rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":  # a line cut short by a kill: end it
                _append(out, b"\n")
    live, dead = set(), []
    for e, m in temps:
        hex_ = m["hex"] or ""
        mine = len(hex_) != 8 or hex_.startswith(HOST_TAG)  # older temp names carry no host tag
        try:
            ino = e.stat(follow_symlinks=False).st_ino
        except FileNotFoundError:
            continue
        if mine and not _pid_alive(int(m["pid"])):
            dead.append(e.path)
        else:
            live.add(ino)
    recorded = {r.get("file") for r in _parse_manifest(manifest)} if manifest.exists() else set()
    for e in sorted(pngs, key=lambda e: e.name):
        if e.name in recorded:
            continue
        try:
            if e.stat().st_ino in live:  # a live writer's: its line is on the way
                continue
            record = read_metadata(e.path)
        except (OSError, ValueError, SyntaxError):  # not an sdkit candidate (a grid, someone's PNG)
            continue
        if "seed" not in record or "run_id" not in record:
            continue
        record["path"], record["file"] = str(out / e.name), e.name
        _append(out, (json.dumps(record, sort_keys=True) + "\n").encode())
    for path in dead:  # last: a recover killed midway leaves the evidence for the next one
        Path(path).unlink(missing_ok=True)


class _folder_lock:
    """An exclusive flock on the folder, so two `recover`s never both add a PNG's line."""

    def __init__(self, path: Path):
        self.path, self.fd = path, None

    def __enter__(self):
        try:
            import fcntl

            self.fd = os.open(self.path, os.O_RDONLY)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except (ImportError, OSError):  # no flock here (Windows, some network file systems): go on unlocked
            pass
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # releases the lock


def read_manifest(output_dir, run_id: str | None = None) -> list[dict]:
    """Manifest records of images, one per file (its last line wins), after `recover`ing the folder.

    A torn line (killed mid-write) is skipped; a line whose PNG is gone is dropped with a warning.
    A folder's manifest collects every run written there; `run_id` keeps one run's records.
    Lines of candidates a search pruned (`"pruned": true`, no image) are not images: `read_pruned` reads them.
    """
    recover(output_dir)
    path = Path(output_dir) / MANIFEST
    if not path.exists():
        return []
    by_file: dict[str, dict] = {}
    for rec in _parse_manifest(path):
        if rec.get("pruned"):
            continue
        if run_id is None or rec.get("run_id") == run_id:
            by_file[rec.get("file", len(by_file))] = rec
    gone = [f for f in by_file if isinstance(f, str) and not (Path(output_dir) / f).exists()]
    if gone:
        warnings.warn(f"{path}: {len(gone)} manifest record(s) name a file that is not there (deleted?), "
                      f"e.g. {gone[0]!r}; they are left out", stacklevel=2)
        for f in gone:
            del by_file[f]
    return list(by_file.values())


def read_pruned(output_dir, run_id: str | None = None) -> list[Pruned]:
    """The candidates a search pruned (`sdkit.search.successive_halving`), from their manifest lines, in the order
    written: each a `Pruned` (the settings that finish it, the step it stopped at, its preview score), for
    `sdkit.search.finish_pruned`. `run_id` keeps one run's."""
    recover(output_dir)
    path = Path(output_dir) / MANIFEST
    if not path.exists():
        return []
    return [Pruned.from_record(r) for r in _parse_manifest(path)
            if r.get("pruned") and (run_id is None or r.get("run_id") == run_id)]


def read_metadata(path) -> dict:
    """The sdkit parameters stored in a PNG written by sdkit."""
    with Image.open(path) as im:
        text = im.text if hasattr(im, "text") else im.info
        if "sdkit" not in text:
            raise ValueError(f"{path}: no sdkit metadata (chunks: {sorted(text)}); was it written by sdkit?")
        return json.loads(text["sdkit"])


def load_candidate(path) -> Candidate:
    """A saved candidate back from its PNG: the pixels and every recorded setting."""
    import dataclasses

    meta = read_metadata(path)
    with Image.open(path) as im:
        image = im.convert("RGB")  # loads it, and detaches it from the file
    fields = {f.name for f in dataclasses.fields(Candidate)} - {"image", "path"}
    return Candidate(image=image, path=str(path), **{k: v for k, v in meta.items() if k in fields})


def read_parameters(path) -> str:
    """The A1111-style `parameters` text of a PNG."""
    with Image.open(path) as im:
        return im.text.get("parameters", "")


def image_hash(image: Image.Image) -> str:
    """sha256 of the RGB pixels (exact), for provenance of init images and masks."""
    return hashlib.sha256(image.convert("RGB").tobytes() + repr(image.size).encode()).hexdigest()[:16]
