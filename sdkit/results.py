"""What sdkit makes and hands back: candidates (one image and everything needed to make it again), runs,
scores, rankings and progress reports. Plain dataclasses, importable without torch or JAX."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from sdkit import __version__


@dataclass
class Candidate:
    """One generated image. `seed` alone regenerates it, given the same settings and device."""

    image: Image.Image | None
    prompt: str
    seed: int
    index: int = 0  # position in its run; also in the file name
    negative_prompt: str | None = None
    num_inference_steps: int = 30  # generate's defaults (height/width: its native size for SD 1.x)
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
    # generate(search=...): the strategy's `sdkit.search.strategies.Search` (ranking, compute, the pruned); else None
    search: Any = None

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
        search = f" {getattr(self.search, 'strategy', 'search')}" if self.search is not None else ""
        return f"Run({len(self.candidates)} candidates{state}{search})"


@dataclass
class Progress:
    """Passed to `callback` after every denoising step and after every finished batch."""

    step: int  # denoising steps done in the current batch
    num_inference_steps: int
    done: int  # candidates finished (saved) so far
    total: int
    batch: list[int]  # indices of the candidates being denoised
    finished: list[Candidate] | None = None  # set when a batch has just been decoded and saved
    # Set by a search that has just scored x0 previews (sdkit.search): every candidate so far, as `Ranked` items
    # by preview score, the pruned ones with `candidate.extra["pruned_at"]` (the step they stopped after).
    previews: list | None = None


@dataclass
class Scores:
    """Per-image scores, in input order. `clip_score` is what sdkit shows; ranking sorts by `logits`."""

    logits: np.ndarray  # (N,) raw CLIP logit: exp(logit_scale) * cosine (logit_scale is 100 for OpenAI CLIPs)
    clip_score: np.ndarray  # (N,) CLIP score: max(100 * cosine, 0), as torchmetrics' CLIPScore
    scorer: str = ""  # "<name>:<model_id>", recorded with the candidates

    def __len__(self) -> int:
        return len(self.logits)


@dataclass
class Ranked:
    """One candidate's place among those of its prompt. Its score is the candidate's own (`.score`,
    `.logit`); only a candidate that cannot carry one (not an sdkit-like dataclass) has it kept here."""

    candidate: Any  # the candidate (with its seed and prompt), carrying its score
    rank: int  # 1 = best within its prompt
    own: tuple[float, float] | None = field(default=None, repr=False)  # (score, logit) of a plain object

    @property
    def score(self) -> float:
        """CLIP score: max(100 * cosine, 0), the number shown."""
        return float(self.candidate.score if self.own is None else self.own[0])

    @property
    def logit(self) -> float:
        """Raw CLIP logit, exp(logit_scale) * cosine, what the order is by."""
        return float(self.candidate.logit if self.own is None else self.own[1])
