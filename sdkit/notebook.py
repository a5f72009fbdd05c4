"""Helpers that keep notebooks thin: model ids that switch to built-in models, running and checking notebooks.

Every walkthrough notebook has one cell that asks for its models:

    models = sdkit.notebook.models(pipeline="CompVis/stable-diffusion-v1-4", clip="openai/clip-vit-base-patch32")

With no environment variable those are the tutorial's real Hub ids. `SDKIT_MODELS=tiny` swaps every one
for sdkit's random-weight tiny models (what CI and nbval use); `SDKIT_MODELS=toy` for the trained toy
shapes world (pictures that match prompts like "a red circle", at 32x32).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

ENV = "SDKIT_MODELS"
CHOICES = ("", "real", "tiny", "toy")


def mode() -> str:
    m = os.environ.get(ENV, "").strip().lower()
    if m not in CHOICES:
        raise ValueError(f"{ENV}={m!r}: use 'tiny', 'toy', or leave it unset for the real Hub models")
    return "real" if m in ("", "real") else m


def _substitute(role: str, model_id: str, m: str) -> str:
    if m == "real":
        return model_id
    if role == "clip":
        if m == "toy":
            from .toy.world import toy_world_path

            return str(Path(toy_world_path()) / "clip")
        from .tiny_clip import tiny_clip_path

        return str(tiny_clip_path())
    if m == "toy":
        return "sdkit:toy"
    return "sdkit:tiny-inpainting" if "inpaint" in role or "inpaint" in model_id else "sdkit:tiny"


def models(**ids: str) -> SimpleNamespace:
    """The model ids a notebook uses, by role (`pipeline=`, `inpainting=`, `clip=`...), switched by `SDKIT_MODELS`.

    Prints which set is in use, so a notebook's output always says whether its pictures are real.
    """
    m = mode()
    chosen = {role: _substitute(role, mid, m) for role, mid in ids.items()}
    # The models' native image size, so one notebook makes 512px images for real and 64px ones on tiny models.
    size = {"real": 512, "tiny": 64, "toy": 32}[m]
    label = {"real": "real Hub models", "tiny": "sdkit's TINY RANDOM-WEIGHT models (pictures are noise)",
             "toy": "the TOY SHAPES world (trained 32x32 shapes, not Stable Diffusion)"}[m]
    print(f"Models: {label}")
    for role, mid in ids.items():
        print(f"  {role}: {mid}" + (f"  ->  {_short(chosen[role])}" if chosen[role] != mid else ""))
    return SimpleNamespace(**chosen, mode=m, size=size)


def _short(model_id: str) -> str:
    # Cache paths differ between machines; print a stable name so nbval output does not.
    return f"<{Path(model_id).parent.name}/{Path(model_id).name.split('-')[0]}>" if os.path.isabs(model_id) else model_id


def in_colab() -> bool:
    return "google.colab" in sys.modules


THICK = re.compile(r"^\s*(def|class|for|while|async\s+def)\b", re.M)


def thick_cells(path) -> list[int]:
    """Indices of code cells that hold logic (def/class/loops): that belongs in the sdkit package."""
    nb = json.loads(Path(path).read_text())
    return [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and THICK.search("".join(c["source"]))]


def _notebooks(paths) -> list[Path]:
    files = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{str(p)!r}: no such notebook or folder")
        files += sorted(p.glob("*.ipynb")) if p.is_dir() else [p]
    if not files:
        raise FileNotFoundError(f"no notebooks in {[str(p) for p in paths]}")
    return files


def _fresh_tree(files: list[Path], tmp: Path) -> dict[Path, Path]:
    """Copy each notebook's folder into `tmp`, beside an empty outputs/, as a fresh clone has them.

    Notebooks write to ../outputs and resume from what is there (a sweep skips finished images), so
    running them in the checkout would store, or check, results left by older code.
    """
    copies = {}
    for folder in sorted({f.resolve().parent for f in files}):
        dest = tmp / f"{len(copies)}" / folder.name
        shutil.copytree(folder, dest, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
        copies[folder] = dest
    return {f: copies[f.resolve().parent] / f.name for f in files}


def _models_env(models_mode: str):
    """`SDKIT_MODELS` for the kernels started inside, restored after."""
    return mock.patch.dict(os.environ, {ENV: models_mode})


def execute(paths, timeout: int = 1200, models_mode: str = "tiny") -> None:
    """Run notebooks with `SDKIT_MODELS=models_mode` and store their outputs (what nbval checks).

    They run in a temporary copy with an empty outputs/, in order, so the stored outputs are those a
    fresh clone (CI) produces; only the notebooks themselves are written back.
    """
    import nbformat
    from nbclient import NotebookClient

    files = _notebooks(paths)
    with _models_env(models_mode), tempfile.TemporaryDirectory(prefix="sdkit-notebooks-") as tmp:
        for f, copy in _fresh_tree(files, Path(tmp)).items():
            print(f"executing {f} ...", flush=True)
            nb = nbformat.read(copy, as_version=4)
            NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(copy.parent)}}).execute()
            for cell in nb.cells:  # execution timings would make every re-run a diff
                cell.get("metadata", {}).pop("execution", None)
            nbformat.write(nb, f)


def check(paths, sanitize: str | None = None, models_mode: str = "tiny", pytest_args=()) -> int:
    """Strict nbval on notebooks, in a temporary copy with an empty outputs/ (see `execute`); pytest's exit code.

    `sanitize`: an nbval sanitize file (default: sanitize.cfg beside the first notebook, if there is one).
    """
    import pytest

    if sanitize is not None and not Path(sanitize).exists():
        raise FileNotFoundError(f"sanitize={str(sanitize)!r}: no such file")
    files = _notebooks(paths)
    sanitize = Path(sanitize) if sanitize else files[0].parent / "sanitize.cfg"
    with _models_env(models_mode), tempfile.TemporaryDirectory(prefix="sdkit-nbval-") as tmp:
        copies = _fresh_tree(files, Path(tmp))
        args = ["--nbval", *map(str, copies.values()), "--rootdir", tmp, "-p", "no:cacheprovider", *pytest_args]
        if sanitize.exists():
            args += ["--nbval-sanitize-with", str(sanitize.resolve())]
        return int(pytest.main(args))


USAGE = "usage: python -m sdkit.notebook {execute|check} [NOTEBOOK_OR_DIR...]"

if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0] not in ("execute", "check"):
        sys.exit(USAGE)
    if args[0] == "execute":
        execute(args[1:] or ["notebooks"])
    else:
        sys.exit(check(args[1:] or ["notebooks"]))
