"""Results: one generated image and everything needed to make it again."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from . import __version__


@dataclass
class Candidate:
    """One generated image. `seed` alone regenerates it, given the same settings and device."""

    image: Image.Image | None
    prompt: str
    seed: int
    index: int = 0  # position in its run; also in the file name
    negative_prompt: str | None = None
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    height: int = 512
    width: int = 512
    scheduler: str = ""  # sdkit name ("DDIM", "Euler a", ...) or the scheduler class name
    model_id: str = ""
    revision: str | None = None
    task: str = "text-to-image"
    dtype: str = ""
    device: str = ""
    nsfw: bool = False  # the safety checker flagged it; diffusers returned a black image
    run_id: str = ""
    path: str | None = None  # the PNG on disk, once saved
    score: float | None = None  # CLIP score (100 x cosine, floored at 0), once scored
    logit: float | None = None  # the scorer's raw logit, once scored
    scorer: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # task settings: strength, mask hash, ...
    sdkit_version: str = __version__

    def params(self) -> dict[str, Any]:
        """Everything but the pixels, JSON-serialisable."""
        d = dataclasses.asdict(dataclasses.replace(self, image=None))
        d.pop("image")
        return d

    def __repr__(self) -> str:  # short, and free of memory addresses (notebook outputs are compared by nbval)
        score = "" if self.score is None else f" score={self.score:.2f}"
        flag = " NSFW-flagged" if self.nsfw else ""
        return (f"Candidate(#{self.index} seed={self.seed} {self.prompt!r} steps={self.num_inference_steps} "
                f"cfg={self.guidance_scale:g} {self.width}x{self.height} {self.scheduler}{score}{flag})")

    def _repr_png_(self):  # shows the image when a Candidate is a cell's last value
        return None if self.image is None else self.image._repr_png_()


@dataclass
class Run:
    """The candidates of one `generate` call, in index order."""

    run_id: str
    candidates: list[Candidate]
    output_dir: str | None = None
    manifest: str | None = None
    cancelled: bool = False  # stopped early; every finished candidate is still here and on disk
    resumed: int = 0  # candidates a resumed run kept from disk (loaded, not made again)

    @property
    def images(self) -> list[Image.Image]:
        return [c.image for c in self.candidates]

    def __len__(self) -> int:
        return len(self.candidates)

    def __iter__(self):
        return iter(self.candidates)

    def __getitem__(self, i):
        return self.candidates[i]

    def __repr__(self) -> str:
        state = " cancelled" if self.cancelled else ""
        return f"Run({len(self.candidates)} candidates{state})"
