"""The explorer's form: its controls, first filled with what suits the model, and their validation into a
`Request` (checked before any model is touched)."""

from __future__ import annotations

import html
import os
import secrets
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from sdkit.load.schedulers import SCHEDULERS
from sdkit.models.builtin import default_clip_label, defaults_for, native_size
from sdkit.checks import check_seed
from sdkit.show.explorer.session import Request

# Dropdowns cannot show None (it means "nothing selected"), so "use the model's own" is a string.
DEFAULT = "default"
SIZES = [("model default", DEFAULT)] + [(str(s), s) for s in (32, 64, 128, 256, 384, 512, 576, 640, 768, 1024)]
SCORERS = [("CLIP (Flax)", "flax"), ("CLIP (PyTorch)", "torch"), ("none", "none")]
# The verifiers field's suggestions (any spec `load_scorer` takes can be typed): they run on the scorer's backend.
VERIFIERS = ["clip", "pickscore", "hpsv2", "aesthetic", "toy-reward", "clip:1,pickscore:1,aesthetic:0.5"]
MODELS = ["sdkit:tiny", "sdkit:toy", "stable-diffusion-v1-5/stable-diffusion-v1-5"]
# Searches the panel runs: each shows the candidates' previews ranked while they denoise (sdkit.search).
SEARCHES = [("best of N", "none"), ("prune on previews", "successive_halving")]


def parse_seed(text: str) -> int:
    try:
        seed = int(str(text).strip())
    except ValueError:
        raise ValueError(f"seed={text!r}: must be an integer in [0, 2**63), or tick 'random seed'") from None
    return check_seed(seed)


def check_verifiers(text: str) -> str:
    """The verifiers field, checked (a ValueError naming the unknown name or bad weight): "clip" when empty."""
    from sdkit.scoring.scorers import checked_spec

    text = str(text or "").strip() or "clip"
    try:
        checked_spec(text)
    except ValueError as e:
        raise ValueError(f"verifiers={text!r}: {e}") from None
    return text


def lora_files(folder: Path | None) -> dict[str, str]:
    """The `.safetensors` files under `folder` by the name a `<lora:name:weight>` tag would use (its path below
    the folder, without the suffix); {} without a folder."""
    if folder is None or not folder.is_dir():
        return {}
    found = sorted(folder.rglob("*.safetensors"))
    return {f.relative_to(folder).with_suffix("").as_posix(): str(f) for f in found}


def sizes(native: int | None) -> list:
    """The size choices; "model default" says what it is when the model's config tells (e.g. "32 (native)")."""
    return [(f"{native} (native)" if native else "model default", DEFAULT)] + SIZES[1:]


def with_value(options: list, value) -> list:
    """`options` plus `value` if it is not among them (checked at Generate, like any other input)."""
    return options if value is None or value in [v for _, v in options] else options + [(str(value), value)]


def _v(value):
    return DEFAULT if value is None else value


def _none(value):
    return None if value in (DEFAULT, "none") else value


def row(*children) -> widgets.HBox:
    return widgets.HBox(list(children), layout=widgets.Layout(flex_flow="row wrap", align_items="center"))


def _field(width="240px"):  # one look for every control; descriptions aligned
    return dict(style={"description_width": "64px"}, layout=widgets.Layout(width=width))


class Form:
    """The controls, in rows (`box`: a plain VBox, so the panel's stored text form is unchanged; the panel adds
    its buttons as the last row); `read()` turns them into a Request."""

    def __init__(self, model: str, scorer: Any, *, clip_model: str | None, prompt: str | None,
                 negative_prompt: str, n: int, num_inference_steps: int | None, guidance_scale: float | None,
                 seed: int | None, height: int | None, width: int | None, scheduler: str | None,
                 search: str | None = None, verifiers: str = "clip", loras: dict | None = None,
                 lora_dir: str | Path | None = None):
        # What suits this model when the caller did not say: its native size, the toy world's prompts and settings.
        suits = defaults_for(model)
        prompt = suits.prompt if prompt is None else prompt
        num_inference_steps = suits.num_inference_steps if num_inference_steps is None else num_inference_steps
        guidance_scale = suits.guidance_scale if guidance_scale is None else guidance_scale
        self.prompt = widgets.Textarea(value=prompt, description="prompt", placeholder="one prompt per line",
                                       **_field("98%"))
        self.prompt.layout.height = "4.5em"
        self.hint = widgets.HTML()  # what the model can draw, when it cannot draw anything
        self.hint.add_class("sdkit-hint")
        self._show_hint(suits.hint)
        self.negative_prompt = widgets.Text(value=negative_prompt, description="negative", **_field("98%"))
        self.n = widgets.IntText(value=n, description="N", **_field())
        self.num_inference_steps = widgets.IntSlider(value=num_inference_steps, min=1, max=150, description="steps",
                                                     **_field("300px"))
        self.guidance_scale = widgets.FloatSlider(value=guidance_scale, min=0.0, max=20.0, step=0.5,
                                                  description="guidance", **_field("300px"))
        # A Text, not an IntText: the browser holds numbers as doubles and would round seeds above 2**53.
        self.seed = widgets.Text(value="" if seed is None else str(seed), description="seed", **_field())
        self.random_seed = widgets.Checkbox(value=seed is None, description="random seed", indent=False,
                                            layout=widgets.Layout(width="120px"))
        choices = sizes(suits.size)
        self.height = widgets.Dropdown(options=with_value(choices, height), value=_v(height), description="height",
                                       **_field("180px"))
        self.width = widgets.Dropdown(options=with_value(choices, width), value=_v(width), description="width",
                                      **_field("180px"))
        self.scheduler = widgets.Dropdown(options=[("model default", DEFAULT)] + [(s, s) for s in SCHEDULERS],
                                          value=_v(scheduler), description="scheduler", **_field("300px"))
        self.model = widgets.Combobox(value=model, options=MODELS, description="model", ensure_option=False,
                                      **_field())
        self.clip_model = widgets.Combobox(value=clip_model or "", options=[default_clip_label("")],
                                           placeholder=f"default: {default_clip_label(model)}", description="CLIP",
                                           ensure_option=False, tooltip="the scorer's CLIP (clip_model=...)",
                                           **_field("300px"))
        self.model.observe(self._model_changed, "value")
        scorer_options = list(SCORERS)
        if scorer is not None and scorer not in [v for _, v in SCORERS]:
            if not callable(scorer):
                raise ValueError(f"scorer={scorer!r}: use 'flax', 'torch', None, or a scorer object "
                                 "(images, prompts) -> Scores; name verifiers with verifiers=, e.g. "
                                 "explore(..., scorer='flax', verifiers='clip:1,pickscore:1')")
            scorer_options.append((f"custom: {getattr(scorer, 'name', type(scorer).__name__)}", scorer))
        self.scorer = widgets.Dropdown(options=scorer_options, value="none" if scorer is None else scorer,
                                       description="scorer", **_field("300px"))
        check_verifiers(verifiers)
        self.verifiers = widgets.Combobox(value=verifiers, options=VERIFIERS, description="verifiers",
                                          ensure_option=False, placeholder="clip",
                                          tooltip="what ranks: clip, pickscore, hpsv2, aesthetic, toy-reward (sdkit:toy), or several with "
                                                  "weights as clip:1,aesthetic:0.5 (on the scorer's backend)",
                                          **_field("300px"))
        self.scorer.observe(self._scorer_changed, "value")
        self._scorer_changed({"new": self.scorer.value})
        if search not in [v for _, v in SEARCHES] + [None]:
            raise ValueError(f"search={search!r}: use one of {[v for _, v in SEARCHES if v != 'none']} or None")
        self.search = widgets.Dropdown(options=SEARCHES, value="none" if search is None else search,
                                       description="search", tooltip="successive halving: start N, keep the best "
                                       "previews after 10% and 50% of the steps (sdkit.search.default_schedule)",
                                       **_field("300px"))
        self._lora_picker(loras, lora_dir)
        self.box = widgets.VBox([
            self.prompt, self.hint, self.negative_prompt,
            row(self.n, self.num_inference_steps, self.guidance_scale),
            row(self.seed, self.random_seed, self.height, self.width),
            row(self.model, self.scheduler, self.scorer, self.clip_model),
            row(self.search, self.verifiers),
            row(self.lora_file, self.lora_weight, self.lora_add, self.lora_said), self.lora_rows,
        ])

    # -- LoRAs: picked from the LoRA folder (or any path), each with its weight ---------------------------

    def _lora_picker(self, loras: dict | None, lora_dir) -> None:
        folder = lora_dir if lora_dir is not None else os.environ.get("SDKIT_LORA_DIR")
        self.lora_dir = Path(folder).expanduser() if folder else None
        self._lora_paths = lora_files(self.lora_dir)  # name -> path
        self.lora_file = widgets.Combobox(options=list(self._lora_paths), ensure_option=False, description="LoRA",
                                          placeholder=("a name in " + str(self.lora_dir)) if self.lora_dir else
                                          "a LoRA .safetensors path", **_field("300px"))
        self.lora_weight = widgets.FloatSlider(value=1.0, min=-1.0, max=2.0, step=0.05, description="weight",
                                               **_field("300px"))
        self.lora_add = widgets.Button(description="add LoRA", icon="plus",
                                       tooltip="apply this LoRA at this weight (diffusers or kohya/A1111 layout)")
        self.lora_add.on_click(lambda _: self.add_lora(self.lora_file.value, self.lora_weight.value))
        self.lora_said = widgets.HTML()  # why the last add was refused
        self.lora_rows = widgets.VBox()
        self._loras: dict[str, widgets.FloatSlider] = {}
        if loras is not None and not isinstance(loras, dict):
            raise ValueError(f"loras={loras!r}: give a dict {{path: weight}}, e.g. {{'style.safetensors': 0.8}}")
        for path, weight in (loras or {}).items():
            self.add_lora(os.fspath(path), weight, strict=True)

    def add_lora(self, name: str, weight: float, strict: bool = False) -> None:
        """Add (or re-weight) a LoRA: a name from the LoRA folder or a path, checked now; a refusal is said beside
        the button (raised when `strict`: explore(loras=...))."""
        from sdkit.load.loras import check_loras

        name = str(name).strip()
        path = self._lora_paths.get(name, name)
        try:
            if not name:
                raise ValueError("LoRA: type a name from the LoRA folder or a .safetensors path first")
            check_loras({path: weight})
        except (ValueError, TypeError, OSError, ImportError) as e:
            if strict:
                raise
            self.lora_said.value = f"<span class='sdkit-error'>{html.escape(str(e))}</span>"
            return
        self.lora_said.value = ""
        if path in self._loras:
            self._loras[path].value = weight
            return
        slider = widgets.FloatSlider(value=weight, min=-1.0, max=2.0, step=0.05, description="weight",
                                     **_field("300px"))
        remove = widgets.Button(description="remove", icon="times", tooltip=f"remove {path}")
        line = row(widgets.Label(Path(path).name, tooltip=path), slider, remove)
        self._loras[path] = slider
        self.lora_rows.children = (*self.lora_rows.children, line)

        def drop(_):
            self._loras.pop(path, None)
            self.lora_rows.children = tuple(c for c in self.lora_rows.children if c is not line)

        remove.on_click(drop)

    @property
    def loras(self) -> dict[str, float]:
        """The LoRAs picked, {path: weight}, in the order added."""
        return {path: float(slider.value) for path, slider in self._loras.items()}

    def read(self, output_dir: Path, batch_size: int | None = None, prompts: list[str] | None = None) -> Request:
        """Everything the run needs, checked before any model is touched; a random seed is drawn and shown."""
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
                      width=_none(self.width.value), batch_size=batch_size)
        check_generate_args(seeds=None, **{k: kwargs[k] for k in ("n", "num_inference_steps", "guidance_scale",
                                                                     "height", "width", "batch_size")})
        check_scheduler(_none(self.scheduler.value))
        search = _none(self.search.value)
        if search is not None:
            from sdkit.search import check_search

            check_search(search, None, n=kwargs["n"], num_inference_steps=kwargs["num_inference_steps"])
            if _none(self.scorer.value) is None:
                raise ValueError(f"search={search!r} ranks the candidates' previews: pick a scorer (not 'none')")
        model = self.model.value.strip()
        if not model:
            raise ValueError(f"model={self.model.value!r}: give a Hub id, a local folder, or one of {MODELS[:2]}")
        req = Request(model=model, scheduler=_none(self.scheduler.value), scorer=_none(self.scorer.value),
                      clip_model=self.clip_model.value.strip() or None, prompts=prompts, kwargs=kwargs,
                      output_dir=check_output_dir(output_dir), search=search,
                      verifiers=check_verifiers(self.verifiers.value), loras=self.loras or None,
                      lora_dir=str(self.lora_dir) if self.lora_dir else None)
        if self.random_seed.value:  # shown only once the form is good: a refused form makes no images
            self.seed.value = str(seed)
        return req

    def set_seed(self, seed: int) -> None:
        """Put `seed` in the seed field, random seed off: Generate makes it again."""
        self.random_seed.value = False
        self.seed.value = str(seed)

    def _scorer_changed(self, change) -> None:
        """Verifiers run on a backend: the field is off for 'none' and for a scorer object of the caller's."""
        self.verifiers.disabled = not isinstance(change["new"], str) or change["new"] == "none"

    def _show_hint(self, text: str) -> None:
        self.hint.value = html.escape(text)
        self.hint.layout.display = "" if text else "none"  # no blank line under the prompt for other models

    def _model_changed(self, change) -> None:
        """A new model in the field: say what it can draw, its native size and its CLIP (settings stay the user's)."""
        model = str(change["new"]).strip()
        self._show_hint(defaults_for(model).hint)
        self.clip_model.placeholder = f"default: {default_clip_label(model)}"
        choices = sizes(native_size(model))
        for box in (self.height, self.width):
            value = box.value  # new options would reset the choice
            box.options = with_value(choices, _none(value))
            box.value = value
