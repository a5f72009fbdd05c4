"""The explorer's work without a UI: one `Request` at a time, in a background thread, told as events.

    session = Session(listener=print_or_draw)       # called in the worker thread with each event
    session.start(Request(model="sdkit:tiny", scheduler=None, scorer=my_scorer, clip_model=None,
                          prompts=["a red circle"], kwargs=dict(n=4, seed=0), output_dir=Path("outputs")))
    session.wait()

It loads the pipeline and the scorer, generates (Stop sets an Event that `generate` checks after every
denoising step; with a search, the strategy of `sdkit.search` makes the candidates), scores each decoded batch
with `sdkit.ranking.score_candidates` and ranks what has arrived with `rank`, then records the scores on disk and
saves the ranked grid. The panel (`widgets.Explorer`) draws the events; anything else (a script, a test) can
listen without ipywidgets.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sdkit.models.builtin import clip_for
from sdkit.ranking import rank, score_candidates
from sdkit.results import Progress, Run
from sdkit.scoring.ensemble import recombine
from sdkit.scoring.scorers import scorer_for  # the one resolver (and scorer cache) of panel, CLI and notebooks
from sdkit.show.explorer.text import img2img_label

log = logging.getLogger(__name__)


@dataclass
class Request:
    """One Generate (or 'more like this') click, validated; what the worker thread runs."""

    model: str
    scheduler: str | None
    scorer: Any  # "flax" / "torch" / a scorer object / None
    clip_model: str | None  # for a named scorer; None: the one that belongs with the model (`clip_for`)
    prompts: list[str]
    kwargs: dict  # for `generate`
    output_dir: Path
    init_image: Any = None  # set for "more like this": image-to-image from this image
    strength: float = 0.6
    source: Any = None  # the candidate "more like this" started from, shown first in the gallery
    search: str | None = None  # "successive_halving": prune on x0 previews (sdkit.search); None: all to the end
    verifiers: str = "clip"  # what a named scorer ranks by: "clip", "pickscore", "clip:1,aesthetic:0.5", ...
    loras: dict | None = None  # {path: weight}: load_pipeline's loras
    lora_dir: str | None = None  # where the prompt's <lora:name:weight> tags are found (load_pipeline's lora_dir)

    @property
    def what(self) -> str:
        """'image-to-image from seed 7, strength 0.6', or '' for text-to-image."""
        return "" if self.source is None else img2img_label(self.source.seed, self.strength)


# -- events, in the order they come ---------------------------------------------------------------------

@dataclass
class Said:
    """What the session is doing (loading the model, the scorer), as plain text."""

    message: str


@dataclass
class Started:
    """Model and scorer loaded; `total` candidates are being made into `output_dir`."""

    request: Request
    output_dir: Path
    total: int


@dataclass
class Stepped:
    """`generate`'s report after every denoising step and every decoded batch."""

    progress: Progress


@dataclass
class Previewed:
    """A search scored the candidates' x0 previews after `step`: all of them ranked by preview, pruned ones marked
    (`candidate.extra["pruned_at"]`); their pictures are the previews."""

    step: int
    ranked: list


@dataclass
class BatchFinished:
    """A batch was decoded and saved: the ranking so far, the new candidates unscored at its end."""

    candidates: list
    ranked: list


@dataclass
class BatchRanked:
    """The batch's scores arrived: the ranking so far (`Ranked` items, then any unscored candidates)."""

    ranked: list


@dataclass
class Failed:
    """An error, and what the session was doing; after a scoring error generation goes on, unranked."""

    error: BaseException
    during: str


@dataclass
class Finished:
    """The last event of every request. `started` is False when the model or scorer did not load."""

    request: Request
    started: bool
    run: Run | None = None
    ranked: list = field(default_factory=list)
    grid_path: Path | None = None
    total: int = 0  # candidates asked for
    stopped: bool = False  # Stop was asked for
    scorer_error: str | None = None  # why the candidates are unranked, if scoring failed


def log_event(event) -> None:
    """The listener when none is given: status lines and errors go to logging."""
    if isinstance(event, Said):
        log.info(event.message)
    elif isinstance(event, Failed):
        log.error(f"error while {event.during}: {type(event.error).__name__}: {event.error}")


class Session:
    """Runs requests one at a time in a background thread and tells `listener` what happens (see the events)."""

    def __init__(self, listener: Callable[[Any], None] | None = None, *, device: str = "auto", dtype: str = "auto"):
        self.listener = listener or log_event
        self.device, self.dtype = device, dtype
        self.thread: threading.Thread | None = None
        self.candidates: list = []  # this run's finished candidates, in the order they arrived (scored copies)
        self.steps_seen = 0  # denoising steps reported by generate in the current run
        self.scorer = None
        self.scorer_error: str | None = None
        self._cancel = threading.Event()
        self._total = 0

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start(self, req: Request) -> None:
        """Run `req` in a background thread (one at a time)."""
        if self.running:
            raise RuntimeError("a request is still running; stop() or wait() first")
        self._cancel.clear()
        self.thread = threading.Thread(target=self.work, args=(req,), name="sdkit-explorer", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Generation stops within one denoising step; finished candidates are kept."""
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the current request is done; True if it finished."""
        if self.thread is not None:
            self.thread.join(timeout)
        return not self.running

    def work(self, req: Request) -> None:
        """Run `req` here and now (what the thread runs); every outcome is an event, ending with `Finished`."""
        from sdkit.errors import GenerationError
        from sdkit.generation import generate  # looked up at call time: tests replace it
        from sdkit.load.pipeline import load_pipeline
        from sdkit.save import new_run_id

        self.candidates, self.steps_seen, self.scorer, self.scorer_error, self._total = [], 0, None, None, 0
        run, started = None, False
        stage = "loading the model"
        try:
            self._emit(Said(f"loading {req.model}…"))
            # A search drops candidates mid-way without touching the others: one UNet call per candidate.
            pipe = load_pipeline(req.model, device=self.device, dtype=self.dtype, scheduler=req.scheduler,
                                 loras=req.loras, lora_dir=req.lora_dir,
                                 **({"batch_invariant": True} if req.search else {}))
            stage = "loading the scorer"
            self.scorer = self._load_scorer(req)
            if req.search and self.scorer is None:
                raise ValueError(f"search={req.search!r} ranks previews with a scorer: pick flax or torch")
            stage = "generating"
            run_id = new_run_id()
            out = req.output_dir / run_id
            started = True
            self._emit(Started(req, out, len(req.prompts) * req.kwargs["n"]))
            common = dict(output_dir=out, run_id=run_id, callback=self._on_progress, cancel=self._cancel,
                          progress=False)
            if req.search is not None:  # the strategy called directly; all candidates in one batch, so no batch_size
                from sdkit.search import strategy_named

                kwargs = {k: v for k, v in req.kwargs.items() if k != "batch_size" and v is not None}
                run = strategy_named(req.search)(pipe, req.prompts, self.scorer, **common, **kwargs)
            elif req.init_image is None:
                run = generate(pipe, req.prompts, **common, **req.kwargs)
            else:  # the working size is the image's own
                from sdkit.edit.tasks import img2img

                kwargs = {k: v for k, v in req.kwargs.items() if k not in ("height", "width")}
                run = img2img(pipe, req.prompts, req.init_image, strength=req.strength, **common, **kwargs)
        except GenerationError as e:  # out of memory even at batch size 1: the finished ones are kept
            run = e.run
            self._emit(Failed(e, "generating"))
        except Exception as e:
            run = getattr(e, "sdkit_run", None)
            self._emit(Failed(e, stage))
        done = Finished(req, started, stopped=self._cancel.is_set(), scorer_error=self.scorer_error)
        if started:
            try:
                self._finish(run, done)
            except Exception as e:
                self._emit(Failed(e, "saving the scores and the ranked grid"))
        self._emit(done)

    def ranking(self) -> list:
        """The candidates so far: the scored ones ranked per prompt (`Ranked`), then the unscored ones."""
        scored = [c for c in self.candidates if c.logit is not None]
        return list(rank(scored)) + [c for c in self.candidates if c.logit is None] if scored else list(self.candidates)

    # -- inside the worker -----------------------------------------------------------------------------

    def _emit(self, event) -> None:
        self.listener(event)

    def _load_scorer(self, req: Request):
        if not isinstance(req.scorer, str):
            return scorer_for(req.scorer, req.model)
        from sdkit.errors import ModelNotAvailable

        clip = req.clip_model or clip_for(req.model)
        if req.verifiers != "clip":  # verifiers on the scorer's backend; a "clip" among them with the panel's CLIP
            self._emit(Said(f"loading the verifiers {req.verifiers} ({req.scorer})…"))
            try:
                return scorer_for(req.verifiers, req.model, clip, backend=req.scorer)
            except (ValueError, OSError, ModelNotAvailable) as e:
                raise ValueError(f"verifiers={req.verifiers!r}: {e} Set the panel's verifiers field, or pass "
                                 "explore(..., verifiers=...).") from e
        self._emit(Said(f"loading the {req.scorer} CLIP scorer ({clip})…"))
        try:
            return scorer_for(req.scorer, req.model, clip)
        except (ValueError, OSError, ModelNotAvailable) as e:  # say which setting to change, and where
            given = "" if req.clip_model else f" (the default for model={req.model!r})"
            raise ValueError(f"clip_model={clip!r}{given}: {e} Set the panel's CLIP field, or pass "
                             "explore(..., clip_model=...).") from e

    def _on_progress(self, p: Progress) -> None:
        """Called by `generate` in the worker thread: every denoising step, and every decoded batch."""
        self._total = p.total
        if p.previews is not None:
            self._emit(Previewed(p.step, list(p.previews)))
            return
        if p.finished is None:
            self.steps_seen += 1
        self._emit(Stepped(p))
        if p.finished:
            self.candidates.extend(p.finished)
            self._emit(BatchFinished(list(p.finished), self.ranking()))  # the new images appear at once, unscored
            if self._score(p.finished):
                self._emit(BatchRanked(self.ranking()))  # and move into place when their scores arrive

    def _score(self, batch: list) -> bool:
        if self.scorer is None or self.scorer_error:
            return False
        try:
            scored = {c.index: c for c in score_candidates(batch, self.scorer)}
        except Exception as e:  # keep generating; the images are fine, only their ranking is missing
            self.scorer_error = f"{type(e).__name__}: {e}"
            self._emit(Failed(e, "scoring (generation goes on, unranked)"))
            return False
        self.candidates = [scored.get(c.index, c) for c in self.candidates]  # indices are unique in a run
        return True

    def _finish(self, run: Run | None, done: Finished) -> None:
        """Fill in `done`: the run (its candidates carrying their scores), ranking, scores on disk, grid."""
        from sdkit.save import update_scores
        from sdkit.show.grid import save_ranked_grid

        done.scorer_error = self.scorer_error
        if run is None or not run.candidates:
            done.run = run
            return
        # An ensemble's scores arrived batch by batch, each combined within its batch: combined again over the
        # whole run (as the ranking is), so the run and its files hold the scores the ranking used.
        arrived = {c.index: c for c in recombine(self.candidates)}
        done.run = run = dataclasses.replace(run, candidates=[arrived.get(c.index, c) for c in run.candidates])
        done.total = self._total or len(run.candidates)
        done.ranked = self.ranking()
        scored = [c for c in run.candidates if c.score is not None]
        if scored and run.output_dir:
            update_scores(run.output_dir, scored)  # the PNGs and manifest now carry the scores too
        done.grid_path = save_ranked_grid(done.ranked, run.output_dir, title=None) if run.output_dir else None
