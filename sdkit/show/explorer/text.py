"""The explorer's words: details, progress and run descriptions, as pure functions of what they describe."""

from __future__ import annotations

import html
import traceback
from typing import Any

_TWO_DECIMALS = ("score", "logit")  # CLIP figures: two decimals are what ranks them apart; more is noise


def fmt(key: str, value: Any) -> str:
    """A parameter as a person reads it: score 47.79 (not 47.79225540161133), guidance 7.5 as given."""
    if isinstance(value, float):
        return f"{value:.2f}" if key in _TWO_DECIMALS else f"{value:g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={fmt(k, v)}" for k, v in value.items() if v not in (None, ""))
    if isinstance(value, list) and all(isinstance(x, dict) and {"name", "weight"} <= set(x) for x in value):
        return ", ".join(f"{x['name']}:{x['weight']:g}" for x in value)  # LoRAs as A1111 writes them
    return str(value)


def details_html(params: dict) -> str:
    """One line per set parameter; long values (a model folder's path) wrap instead of being cut."""
    items = "".join(f"<div><b>{html.escape(k)}</b> {html.escape(fmt(k, v))}</div>"
                    for k, v in params.items() if v not in (None, "", {}, []))
    return f"<div style='font-size:12px; line-height:1.45; white-space:normal; overflow-wrap:anywhere'>{items}</div>"


def img2img_label(seed: int, strength: float) -> str:
    return f"image-to-image from seed {seed}, strength {strength:g}"


def progress_text(step: int, steps_run: int, done: int, total: int, *, steps: int | None = None,
                  strength: float | None = None) -> str:
    """'step 5/12 (20 × strength 0.6) · 1/4 candidates': the steps that run, tied to the steps slider."""
    how = f" ({steps} × strength {strength:g})" if strength is not None and steps is not None else ""
    return f"step {step}/{steps_run}{how} · {done}/{total} candidates"


def finished_text(run, total: int, what: str, grid_path, scored: bool, scorer_error: str | None) -> str:
    """'3 candidates in outputs/r; ranked grid r-grid.png': a finished run as plain text (escape it for HTML)."""
    pruned = len(getattr(run.search, "pruned", None) or ())
    kept = (f"stopped: {len(run.candidates)} of {total} candidates kept" if run.cancelled
            else f"{len(run.candidates)} of {total} candidates kept, {pruned} pruned on previews (listed in the "
                 "manifest)" if pruned else f"{len(run.candidates)} candidates")
    text = (f"{what}: " if what else "") + f"{kept} in {run.output_dir}"
    if grid_path:
        why = " (scoring failed)" if scorer_error else " (no scorer)"
        text += f"; ranked grid {grid_path.name}" if scored else f"; grid {grid_path.name}, unranked{why}"
    flagged = sum(c.nsfw for c in run.candidates)
    if flagged:
        text += f"; {flagged} flagged by the safety checker (black)"
    return text


def error_html(e: BaseException, during: str) -> str:
    """An error as a readable line, its notes, and its traceback one click away (never lost)."""
    tb = "".join(traceback.format_exception(e))
    notes = "".join(f"<div>{html.escape(n)}</div>" for n in getattr(e, "__notes__", []))
    return (f"<div style='color:#b00020'><b>Error while {html.escape(during)}:</b> {html.escape(str(e))}</div>{notes}"
            f"<details><summary>traceback</summary><pre style='font-size:11px'>{html.escape(tb)}</pre></details>")
