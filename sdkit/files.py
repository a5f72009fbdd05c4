"""The one atomic writer: every file sdkit writes (PNGs, manifests' run settings, grids) appears whole or not
at all, and `write_new_file` never writes over an existing file.

A file is written to a temp name beside it (`.<name>.<pid>.<host><hex>.tmp`), fsynced, then hard-linked
(new files) or renamed (replacements) into place, and the folder fsynced. `sdkit.save.recover` knows the
temp names, so it removes only those of dead writers on this host.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import signal
import socket
from pathlib import Path

# Points of the save sequence where SDKIT_FAULT_AT="<point>:<k>" SIGKILLs this process the k-th time it
# gets there: how the tests prove that a kill at any instant loses nothing (tests/test_save.py).
FAULT_POINTS = ("tmp-written", "tmp-synced", "linked", "manifest-half", "manifest-written", "tmp-removed")
_fault_hits: dict[str, int] = {}

# Temp names carry the writer's pid and a tag of its host, so `recover` removes only what a dead
# process on this host left (pids mean nothing across hosts sharing a folder).
HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:4]
TEMP_NAME = re.compile(r"^\.(?P<name>.+?)\.(?P<pid>\d+)(?:\.(?P<hex>[0-9a-f]+))?\.tmp$")


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fault_due(point: str) -> bool:
    """True the k-th time `point` is reached when SDKIT_FAULT_AT="<point>:<k>" (a test hook; cheap when unset)."""
    spec = os.environ.get("SDKIT_FAULT_AT")
    if not spec:
        return False
    want, _, k = spec.partition(":")
    if want not in FAULT_POINTS or not k.isdigit():
        raise ValueError(f"SDKIT_FAULT_AT={spec!r}: use '<point>:<k>' with a point in {list(FAULT_POINTS)}")
    if want != point:
        return False
    _fault_hits[point] = _fault_hits.get(point, 0) + 1
    return _fault_hits[point] == int(k)


def kill_now() -> None:
    """SIGKILL this process (what SDKIT_FAULT_AT asks for): no cleanup, no flush, as a power cut."""
    os.kill(os.getpid(), signal.SIGKILL)


def fault(point: str) -> None:
    if fault_due(point):
        kill_now()


def write_temp(path: Path, data: bytes, faults: bool = True) -> Path:
    """Write and fsync `data` beside `path` under a temp name `recover` knows; returns the temp path.

    `faults=False`: not a point of SDKIT_FAULT_AT (its k counts images, not other files).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{HOST_TAG}{secrets.token_hex(2)}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        if faults:
            fault("tmp-written")
        os.fsync(f.fileno())
    if faults:
        fault("tmp-synced")
    return tmp


def link_free(tmp: Path, path: Path) -> Path:
    """Hard-link `tmp` at `path`, or at `name-1.png`, `name-2.png`... if taken; never over a file."""
    for i in range(10_000):
        target = path if i == 0 else path.with_name(f"{path.stem}-{i}{path.suffix}")
        try:
            os.link(tmp, target)  # fails if target exists: never overwrite
        except FileExistsError:
            continue
        fsync_dir(path.parent)
        fault("linked")
        return target
    raise FileExistsError(f"could not find a free name for {path}")


def remove_temp(tmp: Path) -> None:
    tmp.unlink(missing_ok=True)
    fault("tmp-removed")


def write_new_file(path: Path, data: bytes) -> Path:
    """Write `data` atomically at `path`, or at `name-1.png`, `name-2.png`... if taken. Returns the path used."""
    path = Path(path)
    tmp = write_temp(path, data)
    try:
        return link_free(tmp, path)
    finally:
        remove_temp(tmp)


def write_once(path: Path, data: bytes, faults: bool = False) -> bool:
    """Write `data` atomically at exactly `path`; False (and nothing written) if the name is taken."""
    path = Path(path)
    tmp = write_temp(path, data, faults=faults)
    try:
        return link_once(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def link_once(tmp: Path, path: Path) -> bool:
    """Hard-link a complete temp file at exactly `path`; False if the name is taken (never over a file)."""
    try:
        os.link(tmp, path)  # atomic, and fails if the name is taken
    except FileExistsError:
        return False
    fsync_dir(path.parent)
    return True


def replace_file(path: Path, data: bytes) -> Path:
    """Write `data` atomically at `path`, replacing what is there (a reader sees the old or the new file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = write_temp(path, data, faults=False)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return path
