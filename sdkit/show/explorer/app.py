"""The explorer: one notebook panel to generate candidates, watch them arrive, rank them and pick one.

    from sdkit.show.explorer.app import explore
    explore(model="sdkit:toy", scorer="flax")

Generation runs in a background thread, so the kernel keeps handling widget
events while the UNet works: Stop sets an Event that `generate` checks after
every denoising step. Finished candidates are on disk as soon as their batch is
decoded; each batch is then scored and the gallery re-ranked. Core ipywidgets
only (no tqdm.notebook, no custom front end): it runs in JupyterLab, classic
Notebook, VS Code and Colab.
"""

from __future__ import annotations

import dataclasses
import html
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import numpy as np

from sdkit.show.explorer.text import details_html, error_html, img2img_label, progress_text
from sdkit.show.gallery import Gallery
from sdkit.show.grid import Entry, save_ranked_grid
from sdkit.models.builtin import default_clip_label, defaults_for, native_size
from sdkit.models.builtin import clip_for
from sdkit.scoring.scorers import get_scorer  # one scorer cache for panel, CLI and notebooks
from sdkit.load.schedulers import SCHEDULERS

# Dropdowns cannot show None (it means "nothing selected"), so "use the model's own" is a string.
DEFAULT = "default"
SIZES = [("model default", DEFAULT)] + [(str(s), s) for s in (32, 64, 128, 256, 384, 512, 576, 640, 768, 1024)]
SCORERS = [("CLIP (Flax)", "flax"), ("CLIP (PyTorch)", "torch"), ("none", "none")]
MODELS = ["sdkit:tiny", "sdkit:toy", "stable-diffusion-v1-5/stable-diffusion-v1-5"]
MAX_SEED = 2**63

def _v(value):
    return DEFAULT if value is None else value


def _with(options: list, value) -> list:
    """`options` plus `value` if it is not among them (checked at Generate, like any other input)."""
    return options if value is None or value in [v for _, v in options] else options + [(str(value), value)]


def _sizes(native: int | None) -> list:
    """The size choices; "model default" says what it is when the model's config tells (e.g. "32 (native)")."""
    return [(f"{native} (native)" if native else "model default", DEFAULT)] + SIZES[1:]


def _none(value):
    return None if value in (DEFAULT, "none") else value


def parse_seed(text: str) -> int:
    try:
        seed = int(str(text).strip())
    except ValueError:
        raise ValueError(f"seed={text!r}: must be an integer in [0, 2**63), or tick 'random seed'") from None
    if not 0 <= seed < MAX_SEED:
        raise ValueError(f"seed={seed}: must be in [0, 2**63)")
    return seed


@dataclasses.dataclass
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

    @property
    def what(self) -> str:
        """'image-to-image from seed 7, strength 0.6', or '' for text-to-image."""
        return "" if self.source is None else img2img_label(self.source.seed, self.strength)


class Explorer(widgets.VBox):
    """The panel (a VBox) and its state: `.run`, `.ranked`, `.grid_path`, `.error` after each generation."""

    def __init__(self, model: str = "sdkit:tiny", scorer: Any = "flax", *, clip_model: str | None = None,
                 prompt: str | None = None, negative_prompt: str = "", n: int = 4,
                 num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 seed: int | None = None, height: int | None = None, width: int | None = None,
                 scheduler: str | None = None, output_dir: str | Path = "outputs", device: str = "auto",
                 dtype: str = "auto", batch_size: int | None = None, thumb_size: int = 128,
                 scorer_model: str | None = None):
        if scorer_model is not None and clip_model not in (None, scorer_model):
            raise ValueError(f"clip_model={clip_model!r} and scorer_model={scorer_model!r}: scorer_model is the old "
                             "name of clip_model; give one")
        clip_model = clip_model if clip_model is not None else scorer_model
        self.output_dir, self.device, self.dtype, self.batch_size = Path(output_dir), device, dtype, batch_size
        # What suits this model when the caller did not say: its native size, the toy world's prompts and settings.
        suits = defaults_for(model)
        prompt = suits.prompt if prompt is None else prompt
        num_inference_steps = suits.num_inference_steps if num_inference_steps is None else num_inference_steps
        guidance_scale = suits.guidance_scale if guidance_scale is None else guidance_scale
        self.run = None  # the last Run
        self.ranked: list = []  # the last ranking (Ranked items, or candidates when there is no scorer)
        self.grid_path: Path | None = None
        self.error: str | None = None
        self.steps_seen = 0  # denoising steps reported by generate in the current run
        self.thread: threading.Thread | None = None
        self._cancel = threading.Event()
        self._last_draw = 0.0
        self._candidates: list = []  # this run's finished candidates, in the order they arrived
        self._scorer = None
        self._scorer_error: str | None = None
        self._total = 0
        self._req: Request | None = None  # the run in progress (or the last one)

        def field(width="240px"):  # one look for every control; descriptions aligned
            return dict(style={"description_width": "64px"}, layout=widgets.Layout(width=width))

        self.prompt = widgets.Textarea(value=prompt, description="prompt", placeholder="one prompt per line",
                                       **field("98%"))
        self.prompt.layout.height = "4.5em"
        self.hint = widgets.HTML()  # what the model can draw, when it cannot draw anything
        self.hint.add_class("sdkit-hint")
        self._show_hint(suits.hint)
        self.negative_prompt = widgets.Text(value=negative_prompt, description="negative", **field("98%"))
        self.n = widgets.IntText(value=n, description="N", **field())
        self.num_inference_steps = widgets.IntSlider(value=num_inference_steps, min=1, max=150, description="steps",
                                                     **field("300px"))
        self.guidance_scale = widgets.FloatSlider(value=guidance_scale, min=0.0, max=20.0, step=0.5,
                                                  description="guidance", **field("300px"))
        # A Text, not an IntText: the browser holds numbers as doubles and would round seeds above 2**53.
        self.seed = widgets.Text(value="" if seed is None else str(seed), description="seed", **field())
        self.random_seed = widgets.Checkbox(value=seed is None, description="random seed", indent=False,
                                            layout=widgets.Layout(width="120px"))
        sizes = _sizes(suits.size)
        self.height = widgets.Dropdown(options=_with(sizes, height), value=_v(height), description="height",
                                       **field("180px"))
        self.width = widgets.Dropdown(options=_with(sizes, width), value=_v(width), description="width",
                                      **field("180px"))
        self.scheduler = widgets.Dropdown(options=[("model default", DEFAULT)] + [(s, s) for s in SCHEDULERS],
                                          value=_v(scheduler), description="scheduler", **field("300px"))
        self.model = widgets.Combobox(value=model, options=MODELS, description="model", ensure_option=False,
                                      **field())
        self.clip_model = widgets.Combobox(value=clip_model or "", options=[default_clip_label("")],
                                           placeholder=f"default: {default_clip_label(model)}", description="CLIP",
                                           ensure_option=False, tooltip="the scorer's CLIP (clip_model=...)",
                                           **field("300px"))
        self.model.observe(self._model_changed, "value")
        scorer_options = list(SCORERS)
        if scorer is not None and scorer not in [v for _, v in SCORERS]:
            if not callable(scorer):
                raise ValueError(f"scorer={scorer!r}: use 'flax', 'torch', None, or a scorer object "
                                 "(images, prompts) -> Scores")
            scorer_options.append((f"custom: {getattr(scorer, 'name', type(scorer).__name__)}", scorer))
        self.scorer = widgets.Dropdown(options=scorer_options, value="none" if scorer is None else scorer,
                                       description="scorer", **field("300px"))

        self.generate_button = widgets.Button(description="Generate", button_style="primary", icon="play")
        self.stop_button = widgets.Button(description="Stop", button_style="danger", icon="stop", disabled=True)
        self.generate_button.on_click(self.generate)
        self.stop_button.on_click(self.stop)
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="", layout=widgets.Layout(width="300px"))
        self.progress_label = widgets.Label("")
        self.progress_label.add_class("sdkit-progress")
        self.status = widgets.HTML("")

        self.gallery = Gallery(thumb_size=thumb_size, enlarged_size=320, show_viewer=False)
        self.gallery.on_select(self._show_details)
        self.details = widgets.HTML("", layout=widgets.Layout(width="100%"))
        # What save and copy seed did, next to their buttons (the status line may be scrolled away).
        self.selected_status = widgets.HTML("")
        self.save_button = widgets.Button(description="save", icon="save", tooltip="save a copy into <output_dir>/saved")
        self.copy_seed_button = widgets.Button(description="copy seed", icon="copy",
                                               tooltip="put this seed in the seed field (random seed off)")
        self.more_button = widgets.Button(description="more like this", icon="clone",
                                          tooltip="N new candidates by image-to-image from this one")
        self.strength = widgets.FloatSlider(value=0.6, min=0.05, max=1.0, step=0.05, description="strength")
        self.save_button.on_click(self.save_selected)
        self.copy_seed_button.on_click(self.copy_seed)
        self.more_button.on_click(self.more_like_this)
        self.selected_box = widgets.HBox([self.gallery.viewer, widgets.VBox(
            [self.details, _row(self.save_button, self.copy_seed_button, self.more_button, self.strength),
             self.selected_status],
            layout=widgets.Layout(flex="1 1 0", min_width="0", margin="0 0 0 12px"))],
            layout=widgets.Layout(display="none"))

        form = widgets.VBox([
            self.prompt, self.hint, self.negative_prompt,
            _row(self.n, self.num_inference_steps, self.guidance_scale),
            _row(self.seed, self.random_seed, self.height, self.width),
            _row(self.model, self.scheduler, self.scorer, self.clip_model),
            _row(self.generate_button, self.stop_button, self.progress, self.progress_label),
        ])
        super().__init__([form, self.status, self.gallery, self.selected_box])
        self.add_class("sdkit-explorer")

    # -- buttons ---------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def generate(self, _=None) -> None:
        """The Generate button: validate the form (errors shown, nothing started), then run in the background."""
        if self.running:
            return
        self.error = None
        try:
            req = self._read_form()
        except Exception as e:  # bad input: say what is wrong, start nothing
            self._fail(e, during="checking the settings")
            return
        self._start(req)

    def stop(self, _=None) -> None:
        """The Stop button: generation stops within one denoising step; finished candidates are kept."""
        if self.running:
            self._cancel.set()
            self._say("stopping after the current denoising step…")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the current generation is done (for scripts and tests); True if it finished."""
        if self.thread is not None:
            self.thread.join(timeout)
        return not self.running

    def copy_seed(self, _=None) -> None:
        e = self.gallery.selected
        if e is None:
            return
        self.random_seed.value = False
        self.seed.value = str(e.candidate.seed)
        self.selected_status.value = (f"<span>seed {e.candidate.seed} is in the seed field (random seed off); "
                                      "Generate makes it again with the settings above</span>")

    def save_selected(self, _=None) -> Path | None:
        """Save a copy of the selected candidate (PNG + metadata) into `<output_dir>/saved`."""
        from sdkit.checks import check_output_dir
        from sdkit.save import save_candidate

        e = self.gallery.selected
        if e is None:
            return None
        try:
            folder = check_output_dir(self.output_dir / "saved")
            before = _saved_copy(e.candidate, folder)
            if before is not None:  # a second click must not leave a `-1.png` twin behind
                self.selected_status.value = f"<span>already saved: {html.escape(str(before))}</span>"
                return before
            copy = dataclasses.replace(e.candidate, extra=dict(e.candidate.extra))
            save_candidate(copy, folder)
        except Exception as err:
            self.error = f"{type(err).__name__}: {err}"
            self.selected_status.value = error_html(err, "saving")
            return None
        self.selected_status.value = f"<span>saved {html.escape(copy.path)}</span>"
        return Path(copy.path)

    def more_like_this(self, _=None) -> None:
        """N new candidates by image-to-image from the selected one (`sdkit.img2img`), at the chosen strength."""
        from sdkit.edit.tasks import check_strength

        e = self.gallery.selected
        if e is None or self.running:
            return
        c = e.candidate
        self.error = None
        try:
            strength = check_strength(float(self.strength.value), self.num_inference_steps.value)
            req = self._read_form(prompts=[c.prompt])
            req.strength = strength
        except Exception as err:
            self._fail(err, during="checking the settings")
            return
        req.model = c.model_id or req.model
        req.init_image, req.source = c.image, c
        req.kwargs["extra"] = {"init_seed": c.seed, "init_file": Path(c.path).name if c.path else None}
        self._start(req)

    # -- the form --------------------------------------------------------------------------------------

    def _read_form(self, prompts: list[str] | None = None) -> Request:
        """Everything the run needs, checked before any model is touched."""
        from sdkit.checks import as_prompt_list, check_generate_args, check_output_dir
        from sdkit.load.schedulers import check_scheduler

        if prompts is None:
            lines = [p.strip() for p in self.prompt.value.splitlines() if p.strip()]
            if not lines:
                raise ValueError("prompt is empty: describe the image you want (one prompt per line)")
            prompts = as_prompt_list(lines)
        seed = secrets.randbits(31) if self.random_seed.value else parse_seed(self.seed.value)
        kwargs = dict(n=self.n.value, seed=seed, negative_prompt=self.negative_prompt.value.strip() or None,
                      num_inference_steps=self.num_inference_steps.value,
                      guidance_scale=float(self.guidance_scale.value), height=_none(self.height.value),
                      width=_none(self.width.value), batch_size=self.batch_size)
        check_generate_args(seeds=None, **{k: kwargs[k] for k in ("n", "num_inference_steps", "guidance_scale",
                                                                     "height", "width", "batch_size")})
        check_scheduler(_none(self.scheduler.value))
        model = self.model.value.strip()
        if not model:
            raise ValueError(f"model={self.model.value!r}: give a Hub id, a local folder, or one of {MODELS[:2]}")
        req = Request(model=model, scheduler=_none(self.scheduler.value), scorer=_none(self.scorer.value),
                      clip_model=self.clip_model.value.strip() or None, prompts=prompts, kwargs=kwargs,
                      output_dir=check_output_dir(self.output_dir))
        if self.random_seed.value:  # shown only once the form is good: a refused form makes no images
            self.seed.value = str(seed)
        return req

    # -- the worker ------------------------------------------------------------------------------------

    def _start(self, req: Request) -> None:
        self._cancel.clear()
        self.error = None
        self.steps_seen = 0
        self._req = req
        self.progress.value, self.progress.max, self.progress.bar_style = 0, 1, ""
        self.progress_label.value = ""
        self.generate_button.disabled, self.stop_button.disabled, self.more_button.disabled = True, False, True
        self.thread = threading.Thread(target=self._work, args=(req,), name="sdkit-explorer", daemon=True)
        self.thread.start()

    def _work(self, req: Request) -> None:
        from sdkit.errors import GenerationError
        from sdkit.generation import generate
        from sdkit.load.pipeline import load_pipeline
        from sdkit.save import new_run_id

        self._scorer, self._scorer_error, self._total = None, None, 0
        run, started = None, False
        stage = "loading the model"
        try:
            self._say(f"loading {html.escape(req.model)}…")
            pipe = load_pipeline(req.model, device=self.device, dtype=self.dtype, scheduler=req.scheduler)
            stage = "loading the scorer"
            self._scorer = self._load_scorer(req)
            stage = "generating"
            run_id = new_run_id()
            out = req.output_dir / run_id
            # Only now is the last run's gallery replaced: a model or CLIP that does not load keeps it, as form
            # errors do.
            self._new_gallery(req)
            started = True
            what = f"{req.what}: " if req.what else ""
            self._say(f"{what}generating {len(req.prompts) * req.kwargs['n']} candidates into "
                      f"{html.escape(str(out))}…")
            common = dict(output_dir=out, run_id=run_id, callback=self._on_progress, cancel=self._cancel,
                          progress=False)
            if req.init_image is None:
                run = generate(pipe, req.prompts, **common, **req.kwargs)
            else:  # the working size is the image's own
                from sdkit.edit.tasks import img2img

                kwargs = {k: v for k, v in req.kwargs.items() if k not in ("height", "width")}
                run = img2img(pipe, req.prompts, req.init_image, strength=req.strength, **common, **kwargs)
        except GenerationError as e:  # out of memory even at batch size 1: the finished ones are kept
            run = e.run
            self._fail(e, during="generating")
        except Exception as e:
            run = getattr(e, "sdkit_run", None)
            self._fail(e, during=stage)
        try:
            if started:
                self._finish(run)
        except Exception as e:
            self._fail(e, during="saving the scores and the ranked grid")
        finally:
            self.generate_button.disabled, self.stop_button.disabled, self.more_button.disabled = False, True, False

    def _new_gallery(self, req: Request) -> None:
        self._candidates = []
        self.run, self.ranked, self.grid_path = None, [], None
        self.gallery.clear()
        self.gallery.set_source(req.source)  # "more like this": what the new images come from stays in view
        self.selected_box.layout.display = "none"

    def _load_scorer(self, req: Request):
        if req.scorer is None or callable(req.scorer):
            return req.scorer
        clip = req.clip_model or clip_for(req.model)
        self._say(f"loading the {req.scorer} CLIP scorer ({html.escape(clip)})…")
        try:
            return get_scorer(req.scorer, clip)
        except (ValueError, OSError) as e:  # say which setting to change, and where
            given = "" if req.clip_model else f" (the default for model={req.model!r})"
            raise ValueError(f"clip_model={clip!r}{given}: {e} Set the panel's CLIP field, or pass "
                             "explore(..., clip_model=...).") from e

    def _on_progress(self, p) -> None:
        """Called by `generate` in the worker thread: every denoising step, and every decoded batch."""
        steps = p.num_inference_steps
        self._total = p.total
        if p.finished is None:
            self.steps_seen += 1
        now = time.monotonic()
        # Throttled: tiny models take milliseconds per step, and every update is a message to the browser.
        if p.finished is not None or p.step == 1 or now - self._last_draw > 0.1:
            self._last_draw = now
            self.progress.max = p.total * steps
            self.progress.value = min(self.progress.max, p.done * steps + (0 if p.finished else p.step * len(p.batch)))
            req = self._req
            edit = {} if req.source is None else dict(steps=req.kwargs["num_inference_steps"], strength=req.strength)
            self.progress_label.value = progress_text(p.step, steps, p.done, p.total, **edit)
        if p.finished:
            self._candidates.extend(p.finished)
            self._show_ranking()  # the new images appear at once, unscored
            self._score(p.finished)
            self._show_ranking()  # and move into place when their scores arrive

    def _score(self, batch) -> None:
        if self._scorer is None or self._scorer_error:
            return
        try:
            s = self._scorer([c.image for c in batch], [c.prompt for c in batch])
        except Exception as e:  # keep generating; the images are fine, only their ranking is missing
            self._scorer_error = f"{type(e).__name__}: {e}"
            self._fail(e, during="scoring (generation goes on, unranked)")
            return
        name = getattr(s, "scorer", "") or getattr(self._scorer, "name", "")
        for c, logit, score in zip(batch, np.asarray(s.logits), np.asarray(s.clip_score)):
            c.logit, c.score, c.scorer = float(logit), float(score), name

    def _ranking(self) -> list:
        scored = [c for c in self._candidates if c.logit is not None]
        if not scored:
            return list(self._candidates)
        from sdkit.ranking import rank
        from sdkit.results import Scores

        scores = Scores(logits=np.array([c.logit for c in scored], np.float32),
                        clip_score=np.array([c.score for c in scored], np.float32), scorer=scored[0].scorer or "")
        unscored = [c for c in self._candidates if c.logit is None]
        return list(rank(scored, scores)) + unscored

    def _show_ranking(self) -> None:
        self.ranked = self._ranking()
        self.gallery.update(self.ranked)

    def _finish(self, run) -> None:
        from sdkit.save import update_scores

        self.run = run
        if run is None or not run.candidates:
            if not self.error:
                self._say("stopped before any candidate finished" if self._cancel.is_set() else "no candidates")
            return
        self.ranked = self._ranking()
        self.gallery.update(self.ranked)
        scored = [c for c in run.candidates if c.score is not None]
        if scored and run.output_dir:
            update_scores(run.output_dir, scored)  # the PNGs and manifest now carry the scores too
        self.grid_path = save_ranked_grid(self.ranked, run.output_dir, title=None) if run.output_dir else None
        self.progress.max = max(self.progress.max, 1)
        self.progress.value = self.progress.max if not run.cancelled else self.progress.value
        self.progress.bar_style = "warning" if run.cancelled else ("danger" if self.error else "success")
        flagged = sum(c.nsfw for c in run.candidates)
        total = self._total or len(run.candidates)
        what = f"{self._req.what}: " if self._req is not None and self._req.what else ""
        msg = what + (f"stopped: {len(run.candidates)} of {total} candidates kept" if run.cancelled
                      else f"{len(run.candidates)} candidates") + f" in {html.escape(str(run.output_dir))}"
        if self.grid_path:
            why = " (scoring failed)" if self._scorer_error else " (no scorer)"
            msg += (f"; ranked grid {html.escape(self.grid_path.name)}" if scored
                    else f"; grid {html.escape(self.grid_path.name)}, unranked{why}")
        if flagged:
            msg += f"; {flagged} flagged by the safety checker (black)"
        if not self.error:
            self._say(msg + ". Click a caption for details.")
        else:
            self.status.value += f"<div>{msg}.</div>"

    # -- showing things --------------------------------------------------------------------------------

    def _say(self, message: str) -> None:
        if not self.error:
            self.status.value = f"<span>{message}</span>"

    def _fail(self, e: BaseException, during: str) -> None:
        """Show an error as a readable line, with the traceback one click away (never lost).

        A second error in the same run (say, scoring failed and then generation did) is added below the first.
        """
        earlier = self.status.value if self.error else ""
        self.error = f"{type(e).__name__}: {e}"
        self.status.value = earlier + error_html(e, during)

    def _show_details(self, e: Entry) -> None:
        self.details.value = details_html(e.candidate.params())
        self.selected_status.value = ""
        self.selected_box.layout.display = "flex"

    def _show_hint(self, text: str) -> None:
        self.hint.value = html.escape(text)
        self.hint.layout.display = "" if text else "none"  # no blank line under the prompt for other models

    def _model_changed(self, change) -> None:
        """A new model in the field: say what it can draw, its native size and its CLIP (settings stay the user's)."""
        model = str(change["new"]).strip()
        self._show_hint(defaults_for(model).hint)
        self.clip_model.placeholder = f"default: {default_clip_label(model)}"
        sizes = _sizes(native_size(model))
        for box in (self.height, self.width):
            value = box.value  # new options would reset the choice
            box.options = _with(sizes, _none(value))
            box.value = value


def _saved_copy(c, folder: Path) -> Path | None:
    """The copy of `c` already in `folder` (same run, index, seed and prompt), if any."""
    from sdkit.save import file_name, read_metadata

    path = folder / file_name(c)
    if not path.is_file():
        return None
    try:
        meta = read_metadata(path)
    except Exception:  # not one of ours: save beside it
        return None
    same = all(meta.get(k) == getattr(c, k) for k in ("run_id", "index", "seed", "prompt"))
    return path if same else None


def _row(*children) -> widgets.HBox:
    return widgets.HBox(list(children), layout=widgets.Layout(flex_flow="row wrap", align_items="center"))


def explore(model: str = "sdkit:tiny", scorer: Any = "flax", *, clip_model: str | None = None,
            prompt: str | None = None, negative_prompt: str = "", n: int = 4,
            num_inference_steps: int | None = None, guidance_scale: float | None = None,
            seed: int | None = None, height: int | None = None, width: int | None = None,
            scheduler: str | None = None, output_dir: str | Path = "outputs", device: str = "auto",
            dtype: str = "auto", batch_size: int | None = None, thumb_size: int = 128,
            scorer_model: str | None = None) -> Explorer:
    """Open the explorer panel (display it as a cell's value).

    Args:
        model: a Hub id, a local diffusers folder, or a built-in ("sdkit:tiny", "sdkit:toy"); loaded once, cached.
        scorer: "flax" (sdkit's Flax CLIP), "torch" (transformers' CLIP), None (no ranking), or a scorer object.
        clip_model: the CLIP a named scorer loads (Hub id or folder; the panel's CLIP field). Default: the one
            that belongs with `model` (`sdkit.models.builtin.clip_for`): the tiny or toy world's own, a `clip/` folder
            beside the model's folder, else openai/clip-vit-base-patch32.
        prompt, negative_prompt, n, num_inference_steps, guidance_scale, seed, height, width, scheduler: the
            form's first values, with diffusers' names. Unset: what suits `model` (its native size; for the toy
            world one of its prompts, 20 steps, guidance 2; else 30 steps, guidance 7.5) and a random seed.
        output_dir: each run gets a subfolder here; saved copies go to `<output_dir>/saved`.
        device, dtype, batch_size: as in `load_pipeline` and `generate`.
        thumb_size: gallery thumbnails, in pixels.
        scorer_model: the old name of `clip_model`.

    Returns:
        The `Explorer` widget. After a run: `.run`, `.ranked`, `.grid_path`, `.error`.
    """
    return Explorer(model, scorer, clip_model=clip_model, prompt=prompt, negative_prompt=negative_prompt, n=n,
                    num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, seed=seed,
                    height=height, width=width, scheduler=scheduler, output_dir=output_dir, device=device,
                    dtype=dtype, batch_size=batch_size, thumb_size=thumb_size, scorer_model=scorer_model)
