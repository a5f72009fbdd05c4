"""The one way sdkit builds and caches its own models (tiny pipelines, tiny CLIP, the toy world, bench models).

`build_key` names a build after everything that decides its weights: the source files of the
modules that build it, its settings and the library versions, so a change to any of them builds
anew. `build_atomically` builds into a temporary folder beside the final one, under a file lock,
and renames it into place: concurrent callers wait for one build, and an interrupted build leaves
no half-built model where a later call would take it for a whole one.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import tempfile
from pathlib import Path


def cache_root() -> Path:
    """Where sdkit keeps built models: `$SDKIT_CACHE`, else `~/.cache/sdkit`."""
    return Path(os.environ.get("SDKIT_CACHE") or Path.home() / ".cache" / "sdkit")


def build_key(modules, *settings) -> str:
    """12 hex digits of sha256 over `modules`' source files, `settings`' reprs and torch/diffusers/transformers
    versions."""
    import diffusers
    import torch
    import transformers

    h = hashlib.sha256()
    for module in modules:
        h.update(Path(module.__file__).read_bytes())
    for s in settings:
        h.update(repr(s).encode())
    h.update(f"torch {torch.__version__} diffusers {diffusers.__version__} transformers {transformers.__version__}".encode())
    return h.hexdigest()[:12]


def build_atomically(final: str | os.PathLike, build) -> Path:
    """`final`, built by `build(tmp_dir)` on first use."""
    from filelock import FileLock

    final = Path(final)
    if final.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(final.parent / (final.name + ".lock")):
        if final.exists():  # built by whoever held the lock before us
            return final
        # Holding the lock, no other builder of `final` is alive: a temp folder is what a killed one left.
        for stale in glob.glob(glob.escape(str(final)) + ".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=final.parent))
        try:
            build(tmp)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final
