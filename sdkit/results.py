"""What sdkit makes and hands back: candidates (one image and everything needed to make it again), runs,
scores, rankings, progress reports, and what a search found and spent (`Search`, `Compute`, `Pruned`,
`Lineage`). Plain dataclasses, importable without torch or JAX."""

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
    members: "dict[str, MemberScore] | None" = None  # an ensemble's: each member verifier's own score, by name
    extra: dict[str, Any] = field(default_factory=dict)  # task settings: strength, mask hash, ...
    model_hash: str | None = None  # a single-file model's AutoV2 (A1111's "Model hash"); None for a folder
    # LoRAs applied (`load_pipeline(loras=...)`): each {"path", "name", "weight", "sha256", "autov3"}.
    loras: list[dict[str, Any]] = field(default_factory=list)
    # Textual inversions loaded (`load_pipeline(embeddings=...)`): each {"path", "file", "token", "sha256"}.
    embeddings: list[dict[str, Any]] = field(default_factory=list)
    # generate's `pipe_kwargs` as JSON (`sdkit.runs.describe`: images by pixel hash, tensors by content hash).
    pipe_kwargs: dict[str, Any] = field(default_factory=dict)
    # What its pixels' last bits depended on (`sdkit.load.rows.Arithmetic`): every UNet call's batch size and its
    # row, the decode's, the device and the torch/CUDA/cuDNN versions. `regenerate` replays it.
    arithmetic: dict[str, Any] | None = None
    sdkit_version: str = __version__
    # Transient, never saved: the decoded image as the pipeline's (3, H, W) tensor in [0, 1] on its device, while a
    # search scores it there (`sdkit.ranking.score_candidates`); scored copies drop it, freeing the memory.
    pixels: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.members:  # read back from JSON (a PNG, the manifest): dicts again as MemberScore
            self.members = {k: v if isinstance(v, MemberScore) else MemberScore(**v) for k, v in self.members.items()}

    def params(self) -> dict[str, Any]:
        """Everything but the pixels, JSON-serialisable."""
        d = dataclasses.asdict(dataclasses.replace(self, image=None, pixels=None))
        d.pop("image")
        d.pop("pixels")
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
    search: "Search | None" = None  # a search strategy's run (sdkit.search): its ranking, compute and the pruned

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
    """What every `callback` gets: from `generate` and the search strategies after every denoising step and every
    finished batch; from `run_sweep` after every finished image (its item index in `batch`, its `Candidate` in
    `finished`, metadata only; `done` and `total` count the sweep's items, `step == num_inference_steps`)."""

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
    """Per-image scores, in input order. `clip_score` is what sdkit shows; ranking sorts by `logits`. For CLIP those
    are below; other verifiers say what theirs are (`sdkit.scoring.verifiers`), an ensemble's both are its combined
    score (`sdkit.scoring.ensemble`)."""

    logits: np.ndarray  # (N,) raw CLIP logit: exp(logit_scale) * cosine (logit_scale is 100 for OpenAI CLIPs)
    clip_score: np.ndarray  # (N,) CLIP score: max(100 * cosine, 0), as torchmetrics' CLIPScore
    scorer: str = ""  # "<name>:<model_id>", recorded with the candidates
    members: dict[str, "Scores"] = field(default_factory=dict)  # an ensemble's: each member's own Scores, by name
    weights: dict[str, float] = field(default_factory=dict)  # an ensemble's: each member's weight

    def __len__(self) -> int:
        return len(self.logits)


@dataclass
class MemberScore:
    """One ensemble member's score of one candidate (kept on the candidate, its PNG and manifest line)."""

    scorer: str  # "<name>:<model_id>" of the member
    weight: float
    score: float  # the member's shown score (its Scores.clip_score)
    logit: float  # what the ensemble combines (its Scores.logits)


# What a verifier's shown score is called in PNG metadata, the CLI and grids (by the name before "-" in its label).
SCORE_LABELS = {"clip": "CLIP score", "pickscore": "PickScore", "hpsv2": "HPS v2", "aesthetic": "Aesthetic score",
                "toy-reward": "Toy reward", "ensemble": "Ensemble score"}


def score_label(scorer: str | None) -> str:
    """"CLIP score", "PickScore", ... for a scorer label ("pickscore-flax:<model>"); "CLIP score" for one sdkit
    does not name (as before verifiers had names)."""
    name = str(scorer or "").split(":", 1)[0]
    return SCORE_LABELS.get(name, SCORE_LABELS.get(name.rsplit("-", 1)[0], "CLIP score"))  # "<verifier>-<backend>"


def format_members(members: "dict[str, MemberScore] | None", sep: str = "  ") -> str:
    """An ensemble's member scores in one line: "clip 31.42  pickscore 21.03  aesthetic 5.12"."""
    return sep.join(f"{name} {m.score:.2f}" for name, m in (members or {}).items())


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


@dataclass
class Compute:
    """What a search spent. A UNet evaluation is one candidate through the UNet once (a classifier-free-guidance
    pair counts once, as in best-of-N's own count), so best-of-N with N candidates and S DDIM steps costs N * S."""

    unet_evaluations: int = 0
    scored_images: int = 0
    preview_decodes: int = 0
    wall_s: float = 0.0

    def describe(self, baseline: int | None = None, *, wall: bool = True) -> str:
        """One line of counts; `baseline`: the UNet evaluations to compare with (e.g. best-of-N's n * steps per
        prompt, times the prompts). `wall=False` leaves the time out (stored notebook outputs)."""
        vs = f" ({self.unet_evaluations / baseline:.2f} of {baseline})" if baseline else ""
        return (f"{self.unet_evaluations} UNet evaluations{vs}, {self.preview_decodes} preview decodes, "
                f"{self.scored_images} images scored" + (f", {self.wall_s:.1f} s" if wall else ""))

    def ratio(self, other: "Compute") -> float:
        """This search's UNet evaluations as a fraction of `other`'s (e.g. of best-of-8's)."""
        return self.unet_evaluations / other.unet_evaluations


# A pruned candidate's manifest line leaves out what only a finished image has.
_UNFINISHED = ("path", "score", "logit", "scorer", "members", "nsfw", "arithmetic")


@dataclass
class Pruned:
    """A candidate a search stopped early: everything that makes it at full steps (`candidate`, no image), the
    step it stopped after and its x0 preview's score there. Saved as a `"pruned": true` manifest line."""

    candidate: Candidate
    step: int
    preview_score: float

    def __getattr__(self, name: str):  # .prompt, .seed, .run_id, ...: the candidate's own
        if name == "candidate":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.candidate, name)

    def record(self) -> dict[str, Any]:
        """The manifest line (no `file`, so readers of images pass it by)."""
        rec = {k: v for k, v in self.candidate.params().items() if k not in _UNFINISHED}
        rec.update(pruned=True, step=self.step, preview_score=self.preview_score)
        return rec

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> "Pruned":
        names = {f.name for f in dataclasses.fields(Candidate)} - {"image"}
        fields = {k: v for k, v in rec.items() if k in names}
        return cls(Candidate(image=None, **fields), int(rec["step"]), float(rec["preview_score"]))


@dataclass(frozen=True)
class Lineage:
    """A resampled particle's ancestry, from its root: (step, seed) hops. The root is (0, its first seed); each
    later hop says that after `step` the particle went on from a copy, with that seed's own noise."""

    hops: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, source) -> "Lineage | None":
        """The lineage a candidate (or its metadata dict) records in `extra["search"]["lineage"]`, or None."""
        extra = source.get("extra") if isinstance(source, dict) else getattr(source, "extra", None)
        hops = ((extra or {}).get("search") or {}).get("lineage")
        return cls(tuple((int(step), int(seed)) for step, seed in hops)) if hops else None

    def to_json(self) -> list[list[int]]:
        return [[step, seed] for step, seed in self.hops]

    @property
    def seeds(self) -> list[int]:
        """Each seed once, in the order the lineage first reaches it."""
        return list(dict.fromkeys(seed for _, seed in self.hops))


@dataclass
class Search:
    """A search's outcome: `ranked` holds the finished candidates, best first within each prompt."""

    strategy: str
    settings: dict[str, Any]
    ranked: list[Ranked]
    compute: Compute
    drafts: list[Candidate] = field(default_factory=list)  # draft_then_finish: every draft, scored
    pruned: list[Pruned] = field(default_factory=list)  # the candidates it stopped early (successive_halving)
    run_id: str | None = None  # the run id the finished candidates carry (and their files are named by)
    cancelled: bool = False  # stopped by `cancel` (or Ctrl-C): only what finished is ranked

    def format_pruned(self, limit: int | None = None) -> str:
        """The pruned candidates as lines, the latest-stopped and best-previewed first (the ones worth finishing);
        `limit` lines at most, the rest counted."""
        order = sorted(self.pruned, key=lambda p: (-p.step, -p.preview_score, p.seed))
        shown = order if limit is None else order[:limit]
        lines = [f"{p.prompt!r} seed {p.seed:>3}  stopped after step {p.step:>3}  preview score "
                 f"{p.preview_score:6.2f}" for p in shown]
        if len(order) > len(shown):
            lines.append(f"... and {len(order) - len(shown)} more, stopped after step "
                         + ", ".join(str(s) for s in sorted({p.step for p in order[len(shown):]})))
        return "\n".join(lines) if lines else "nothing was pruned"

    @property
    def best(self) -> list[Candidate]:
        """The winner of each prompt, in prompt order."""
        return [r.candidate for r in self.ranked if r.rank == 1]
