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
import sys
from pathlib import Path
from types import SimpleNamespace

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


def execute(paths, timeout: int = 1200, models_mode: str = "tiny") -> None:
    """Run notebooks in place with `SDKIT_MODELS=models_mode` and keep their outputs (what nbval checks)."""
    import nbformat
    from nbclient import NotebookClient

    os.environ[ENV] = models_mode
    files = []
    for p in paths:
        p = Path(p)
        files += sorted(p.glob("*.ipynb")) if p.is_dir() else [p]
    for f in files:
        print(f"executing {f} ...", flush=True)
        nb = nbformat.read(f, as_version=4)
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(f.parent)}}).execute()
        for cell in nb.cells:  # execution timings would make every re-run a diff
            cell.get("metadata", {}).pop("execution", None)
        nbformat.write(nb, f)


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0] != "execute":
        sys.exit("usage: python -m sdkit.notebook execute NOTEBOOK_OR_DIR...")
    execute(args[1:] or ["notebooks"])
