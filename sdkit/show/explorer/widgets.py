"""The explorer panel: one notebook panel to generate candidates, watch them arrive, rank them and pick one.

    from sdkit import explore
    explore(model="sdkit:toy", scorer="flax")

The panel wires the form (`form.Form`), a `session.Session` (the work, in a background thread, so the kernel
keeps handling widget events while the UNet works) and a `Gallery`: it draws the session's events. Core
ipywidgets only (no tqdm.notebook, no custom front end): it runs in JupyterLab, classic Notebook, VS Code and
Colab. A little over 300 lines: the panel and its one entry point `explore`, which documents every control.
"""

from __future__ import annotations

import dataclasses
import html
import time
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from sdkit.show.explorer import session as events
from sdkit.show.explorer.form import Form, row
from sdkit.show.explorer.session import Request, Session
from sdkit.show.explorer.text import details_html, error_html, finished_text, progress_text
from sdkit.show.gallery import Gallery
from sdkit.show.grid import Entry


class Explorer(widgets.VBox):
    """The panel (a VBox) and its state: `.run`, `.ranked`, `.grid_path`, `.error` after each generation;
    `.form` holds the controls, `.session` does the work."""

    def __init__(self, model: str = "sdkit:tiny", scorer: Any = "flax", *, clip_model: str | None = None,
                 prompt: str | None = None, negative_prompt: str = "", n: int = 4,
                 num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 seed: int | None = None, height: int | None = None, width: int | None = None,
                 scheduler: str | None = None, output_dir: str | Path = "outputs", device: str = "auto",
                 dtype: str = "auto", batch_size: int | None = None, thumb_size: int = 128,
                 search: str | None = None, verifiers: str = "clip", loras: dict | None = None,
                 lora_dir: str | Path | None = None):
        self.output_dir, self.batch_size = Path(output_dir), batch_size
        self.run = None  # the last Run
        self.ranked: list = []  # the last ranking (Ranked items, or candidates when there is no scorer)
        self.grid_path: Path | None = None
        self.error: str | None = None
        self.session = Session(self._on_event, device=device, dtype=dtype)
        self._last_draw = 0.0
        self._req: Request | None = None  # the run in progress (or the last one)
        self.form = Form(model, scorer, clip_model=clip_model, prompt=prompt, negative_prompt=negative_prompt, n=n,
                         num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, seed=seed,
                         height=height, width=width, scheduler=scheduler, search=search, verifiers=verifiers,
                         loras=loras, lora_dir=lora_dir)

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
        self.save_button = widgets.Button(description="save", icon="save",
                                          tooltip="save a copy into <output_dir>/saved")
        self.copy_seed_button = widgets.Button(description="copy seed", icon="copy",
                                               tooltip="put this seed in the seed field (random seed off)")
        self.more_button = widgets.Button(description="more like this", icon="clone",
                                          tooltip="N new candidates by image-to-image from this one")
        self.strength = widgets.FloatSlider(value=0.6, min=0.05, max=1.0, step=0.05, description="strength")
        self.save_button.on_click(self.save_selected)
        self.copy_seed_button.on_click(self.copy_seed)
        self.more_button.on_click(self.more_like_this)
        self.selected_box = widgets.HBox([self.gallery.viewer, widgets.VBox(
            [self.details, row(self.save_button, self.copy_seed_button, self.more_button, self.strength),
             self.selected_status],
            layout=widgets.Layout(flex="1 1 0", min_width="0", margin="0 0 0 12px"))],
            layout=widgets.Layout(display="none"))

        self.form.box.children = (*self.form.box.children,
                                  row(self.generate_button, self.stop_button, self.progress, self.progress_label))
        super().__init__([self.form.box, self.status, self.gallery, self.selected_box])
        self.add_class("sdkit-explorer")

    # -- buttons ---------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.session.running

    @property
    def steps_seen(self) -> int:
        """Denoising steps reported by generate in the current run (per batch, not per candidate)."""
        return self.session.steps_seen

    def generate(self, _=None) -> None:
        """The Generate button: validate the form (errors shown, nothing started), then run in the background."""
        if self.running:
            return
        self.error = None
        try:
            req = self.form.read(self.output_dir, self.batch_size)
        except Exception as e:  # bad input: say what is wrong, start nothing
            self._fail(e, during="checking the settings")
            return
        self._start(req)

    def stop(self, _=None) -> None:
        """The Stop button: generation stops within one denoising step; finished candidates are kept."""
        if self.running:
            self.session.stop()
            self._say("stopping after the current denoising step…")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the current generation is done (for scripts and tests); True if it finished."""
        return self.session.wait(timeout)

    def copy_seed(self, _=None) -> None:
        e = self.gallery.selected
        if e is None:
            return
        self.form.set_seed(e.candidate.seed)
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
            strength = check_strength(float(self.strength.value), self.form.num_inference_steps.value)
            req = self.form.read(self.output_dir, self.batch_size, prompts=[c.prompt])
            req.strength = strength
        except Exception as err:
            self._fail(err, during="checking the settings")
            return
        req.model = c.model_id or req.model
        req.loras = {x["path"]: x["weight"] for x in c.loras} or None  # the source's own LoRAs, as its model
        req.init_image, req.source = c.image, c
        req.kwargs["extra"] = {"init_seed": c.seed, "init_file": Path(c.path).name if c.path else None}
        self._start(req)

    # -- the session's events, drawn (in the worker thread) ---------------------------------------------

    def _start(self, req: Request) -> None:
        self.error = None
        self._req = req
        self.progress.value, self.progress.max, self.progress.bar_style = 0, 1, ""
        self.progress_label.value = ""
        self.generate_button.disabled, self.stop_button.disabled, self.more_button.disabled = True, False, True
        self.session.start(req)

    def _on_event(self, ev) -> None:
        if isinstance(ev, events.Said):
            self._say(html.escape(ev.message))
        elif isinstance(ev, events.Started):
            self._new_gallery(ev.request)
            what = f"{ev.request.what}: " if ev.request.what else ""
            self._say(f"{what}generating {ev.total} candidates into {html.escape(str(ev.output_dir))}…")
        elif isinstance(ev, events.Stepped):
            self._on_progress(ev.progress)
        elif isinstance(ev, events.Previewed):  # a search's live view: previews ranked, the pruned dimmed
            self.ranked = ev.ranked
            self.gallery.update(self.ranked)
            stopped = sum(1 for r in ev.ranked if r.candidate.extra.get("pruned_at") is not None)
            self._say(f"after step {ev.step}: previews ranked, {len(ev.ranked) - stopped} go on, {stopped} pruned…")
        elif isinstance(ev, (events.BatchFinished, events.BatchRanked)):
            self.ranked = ev.ranked
            self.gallery.update(self.ranked)
        elif isinstance(ev, events.Failed):
            self._fail(ev.error, during=ev.during)
        elif isinstance(ev, events.Finished):
            try:
                if ev.started:
                    self._finish(ev)
            finally:
                self.generate_button.disabled, self.stop_button.disabled, self.more_button.disabled = False, True, False

    def _new_gallery(self, req: Request) -> None:
        # Only now is the last run's gallery replaced: a model or CLIP that does not load keeps it, as form
        # errors do.
        self.run, self.ranked, self.grid_path = None, [], None
        self.gallery.clear()
        self.gallery.set_source(req.source)  # "more like this": what the new images come from stays in view
        self.selected_box.layout.display = "none"

    def _on_progress(self, p) -> None:
        """Every denoising step and every decoded batch: the bar and its label."""
        steps = p.num_inference_steps
        now = time.monotonic()
        # Throttled: tiny models take milliseconds per step, and every update is a message to the browser.
        if p.finished is not None or p.step == 1 or now - self._last_draw > 0.1:
            self._last_draw = now
            self.progress.max = p.total * steps
            self.progress.value = min(self.progress.max, p.done * steps + (0 if p.finished else p.step * len(p.batch)))
            req = self._req
            edit = {} if req.source is None else dict(steps=req.kwargs["num_inference_steps"], strength=req.strength)
            self.progress_label.value = progress_text(p.step, steps, p.done, p.total, **edit)

    def _finish(self, ev: events.Finished) -> None:
        run = self.run = ev.run
        if run is None or not run.candidates:
            if not self.error:
                self._say("stopped before any candidate finished" if ev.stopped else "no candidates")
            return
        self.ranked, self.grid_path = ev.ranked, ev.grid_path
        self.gallery.update(self.ranked)
        self.progress.max = max(self.progress.max, 1)
        self.progress.value = self.progress.max if not run.cancelled else self.progress.value
        self.progress.bar_style = "warning" if run.cancelled else ("danger" if self.error else "success")
        scored = any(c.score is not None for c in run.candidates)
        msg = html.escape(finished_text(run, ev.total, ev.request.what, self.grid_path, scored, ev.scorer_error))
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


def explore(model: str = "sdkit:tiny", scorer: Any = "flax", *, clip_model: str | None = None,
            prompt: str | None = None, negative_prompt: str = "", n: int = 4,
            num_inference_steps: int | None = None, guidance_scale: float | None = None,
            seed: int | None = None, height: int | None = None, width: int | None = None,
            scheduler: str | None = None, output_dir: str | Path = "outputs", device: str = "auto",
            dtype: str = "auto", batch_size: int | None = None, thumb_size: int = 128,
            search: str | None = None, verifiers: str = "clip", loras: dict | None = None,
            lora_dir: str | Path | None = None) -> Explorer:
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
        search: the form's search: None (every candidate to the end, then ranked) or "successive_halving" (the
            previews are ranked live while they denoise and the weakest pruned, `sdkit.search`).
        verifiers: what a named scorer ranks by (the panel's verifiers field): "clip" (default), "pickscore",
            "hpsv2", "aesthetic", or several with weights as "clip:1,pickscore:1,aesthetic:0.5" (an ensemble, each
            member's score kept and shown), run on `scorer`'s backend; checked when the panel opens.
        loras: {path: weight} of LoRA `.safetensors` files to start with (the panel's LoRA rows; checked now).
        lora_dir: the folder the LoRA picker lists (default `$SDKIT_LORA_DIR`); any path can be typed too.

    Returns:
        The `Explorer` widget. After a run: `.run`, `.ranked`, `.grid_path`, `.error`.
    """
    return Explorer(model, scorer, clip_model=clip_model, prompt=prompt, negative_prompt=negative_prompt, n=n,
                    num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, seed=seed,
                    height=height, width=width, scheduler=scheduler, output_dir=output_dir, device=device,
                    dtype=dtype, batch_size=batch_size, thumb_size=thumb_size, search=search, verifiers=verifiers,
                    loras=loras, lora_dir=lora_dir)
