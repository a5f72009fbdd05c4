"""Ranked grids: candidates side by side, best first, with rank, score and seed under each.

`ranked_grid` draws with matplotlib's object API (no pyplot state), so it is safe
in scripts, in background threads and in every notebook front end; the figure
shows itself when it is a cell's value. `image_grid` is the plain pixel grid of
the diffusers tutorials (diffusers' `make_image_grid`); `enlarge` shows one image
large (small ones as sharp pixels).
"""

from __future__ import annotations

import io
import json
import math
import os
import textwrap
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from sdkit.checks import is_int
from sdkit.files import replace_file, write_new_file
from sdkit.results import Candidate, format_members

FLAG_COLOR = "#d62728"  # safety-checker flagged: red frame
BEST_COLOR = "#2ca02c"  # rank 1 of its prompt: green frame


class Entry(NamedTuple):
    """What a grid cell shows; built from a `Ranked` or a bare `Candidate` (rank unknown)."""

    candidate: Candidate
    rank: int | None
    score: float | None


def entries(ranked: Iterable[Any]) -> list[Entry]:
    """Accept `rank()`'s `Ranked` items, or plain candidates (their `score`, no rank)."""
    out = []
    for i, r in enumerate(ranked):
        if isinstance(r, Candidate):
            out.append(Entry(r, None, r.score))
        elif isinstance(getattr(r, "candidate", None), Candidate):
            score = getattr(r, "score", None)
            out.append(Entry(r.candidate, getattr(r, "rank", None), r.candidate.score if score is None else score))
        else:
            raise TypeError(f"ranked[{i}] is a {type(r).__name__}; expected a Ranked (from sdkit.ranking) or a Candidate")
    return out


def by_prompt(items: Sequence[Entry]) -> dict[str, list[Entry]]:
    """Group by prompt (in first-seen order), best rank first; unranked keep their generation order."""
    groups: dict[str, list[Entry]] = {}
    for e in items:
        groups.setdefault(e.candidate.prompt, []).append(e)
    for g in groups.values():
        g.sort(key=lambda e: (e.rank is None, e.rank or 0, e.candidate.index))
    return groups


def label(e: Entry) -> str:
    """'#1  31.42' over 'seed 1234', as printed under each image; unranked, unscored: 'seed 1234' alone."""
    top = "  ".join(([f"#{e.rank}"] if e.rank is not None else [])
                    + ([f"{e.score:.2f}"] if e.score is not None else []))
    members = format_members(getattr(e.candidate, "members", None), "\n")  # an ensemble: each member's own score
    bottom = f"seed {e.candidate.seed}" + (f"\n{members}" if members else "")
    return f"{top}\n{bottom}" if top else bottom


class GridFigure(Figure):
    """A matplotlib Figure that renders as a PNG when it is a notebook cell's value."""

    def _repr_png_(self) -> bytes:
        return figure_png(self)


def figure_png(fig: Figure, metadata: dict | None = None, dpi: float | None = None) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata=metadata)
    return buf.getvalue()


def ranked_grid(
    ranked: Iterable[Any],
    *,
    columns: int | None = None,
    title: str | None = None,
    save_to: str | os.PathLike | None = None,
    cell_inches: float = 2.0,
    dpi: float = 100,
) -> Figure:
    """Draw ranked candidates as a grid: one block of rows per prompt, best first.

    Args:
        ranked: `Ranked` items from `sdkit.ranking.rank` (or plain candidates, shown unranked).
        columns: images per row, from 1 to the most candidates any prompt has (default: that many,
            at most 8); more would only add empty columns, so they are an error.
        title: a heading over everything (each prompt is always the title of its own block).
        save_to: also write the figure to this PNG path (replaced atomically if it exists).
        cell_inches, dpi: size of one image cell and resolution of the saved PNG.

    Returns:
        The matplotlib Figure. Under each image: rank, score and seed; rank 1 of each prompt has a
        green frame, safety-checker flagged images a red frame and "flagged".
    """
    groups = by_prompt(entries(ranked))
    if not groups:
        raise ValueError("ranked is empty: there is nothing to draw")
    widest = max(len(g) for g in groups.values())
    if columns is None:
        columns = min(widest, 8)
    if not is_int(columns) or not 1 <= columns <= widest:
        # More columns than the largest prompt has candidates would only add empty columns on the right.
        raise ValueError(f"columns={columns!r}: must be an integer from 1 to {widest} "
                         f"(the most candidates any prompt has)")
    if not cell_inches > 0:
        raise ValueError(f"cell_inches={cell_inches!r}: must be > 0")
    rows = [math.ceil(len(g) / columns) for g in groups.values()]
    heading = 0.45 * (1 if title else 0)
    caption = 0.55 + 0.14 * max(len(e.candidate.members or {}) for g in groups.values() for e in g)  # + members' lines
    fig = GridFigure(figsize=(columns * cell_inches, sum(r * (cell_inches + caption) + 0.45 for r in rows) + heading),
                     dpi=dpi, layout="constrained")
    if title:
        fig.suptitle(title, fontsize=12, fontweight="bold")
    subfigs = fig.subfigures(len(groups), 1, height_ratios=rows, squeeze=False)[:, 0]
    wrap = max(20, int(columns * cell_inches * 9))
    for sf, (prompt, group), nrows in zip(subfigs, groups.items(), rows):
        sf.suptitle("\n".join(textwrap.wrap(prompt, wrap)[:2]), fontsize=10)
        axes = sf.subplots(nrows, columns, squeeze=False).ravel()
        for ax, e in zip(axes, group):
            _draw_cell(ax, e)
        for ax in axes[len(group):]:
            ax.set_axis_off()
    if save_to is not None:
        replace_file(Path(save_to), figure_png(fig, _grid_metadata(groups), dpi))
    return fig


def _draw_cell(ax, e: Entry) -> None:
    c = e.candidate
    if c.image is not None:
        img = np.asarray(c.image.convert("RGB"))
        # Small images (tiny/toy models) are shown as crisp pixels, not blurred.
        ax.imshow(img, interpolation="nearest" if max(img.shape[:2]) <= 128 else "antialiased")
    else:
        ax.text(0.5, 0.5, "no image", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])
    text = label(e)
    color = None
    if c.nsfw:
        text, color = text + "  flagged", FLAG_COLOR
    elif e.rank == 1:
        color = BEST_COLOR
    ax.set_xlabel(text, fontsize=8, color=FLAG_COLOR if c.nsfw else "black", linespacing=1.2)
    if color:
        for s in ax.spines.values():
            s.set_color(color)
            s.set_linewidth(3)


def _grid_metadata(groups: dict[str, list[Entry]]) -> dict:
    """A `sdkit-grid` PNG text chunk: which file is in which cell, so the grid can be traced back."""
    cells = [{"prompt": p, "rank": e.rank, "score": e.score, "seed": e.candidate.seed,
              "file": Path(e.candidate.path).name if e.candidate.path else None, "nsfw": e.candidate.nsfw,
              **({"members": {n: m.score for n, m in e.candidate.members.items()}} if e.candidate.members else {})}
             for p, g in groups.items() for e in g]
    return {"Software": "sdkit", "sdkit-grid": json.dumps(cells)}


def save_ranked_grid(ranked: Iterable[Any], output_dir: str | os.PathLike, **kwargs) -> Path:
    """Write the ranked grid PNG into a run's folder, next to its images; returns its path.

    Named `<run_id>-grid.png` (it sorts after the run's images); never overwrites an existing
    file (a second grid becomes `-grid-1.png`). `kwargs` go to `ranked_grid`.
    """

    items = entries(ranked)
    fig = ranked_grid(items, **kwargs)
    run_ids = {e.candidate.run_id for e in items if e.candidate.run_id}
    name = f"{run_ids.pop()}-grid.png" if len(run_ids) == 1 else "ranked-grid.png"
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    return write_new_file(out / name, figure_png(fig, _grid_metadata(by_prompt(items)), kwargs.get("dpi", 100)))


def read_grid_metadata(path: str | os.PathLike) -> list[dict]:
    """The cells of a grid PNG written by sdkit: prompt, rank, score, seed, file, nsfw."""
    with Image.open(path) as im:
        if "sdkit-grid" not in im.text:
            raise ValueError(f"{path}: no sdkit-grid metadata; was it written by save_ranked_grid?")
        return json.loads(im.text["sdkit-grid"])


def image_grid(images: Sequence[Image.Image], rows: int, cols: int) -> Image.Image:
    """Paste images into a `rows` x `cols` grid, row by row (diffusers' `make_image_grid`).

    Fewer images than cells leave the last cells black; all images must have one size.
    """
    images = list(images)
    for name, v in (("rows", rows), ("cols", cols)):
        if not is_int(v) or v < 1:
            raise ValueError(f"{name}={v!r}: must be an integer >= 1")
    if not images:
        raise ValueError("images is empty: there is nothing to draw")
    if len(images) > rows * cols:
        raise ValueError(f"{len(images)} images do not fit a {rows}x{cols} grid ({rows * cols} cells)")
    sizes = {im.size for im in images}
    if len(sizes) > 1:
        raise ValueError(f"images have different sizes {sorted(sizes)}; resize them to one size first")
    from diffusers.utils import make_image_grid  # heavy: imported only when a grid is drawn

    # make_image_grid wants exactly rows * cols images; black fillers paste as the black background would.
    blank = Image.new("RGB", images[0].size)
    return make_image_grid(images + [blank] * (rows * cols - len(images)), rows=rows, cols=cols)


def enlarge(image: Image.Image, size: int = 512) -> Image.Image:
    """`image` with its longer side `size` pixels, for looking at one candidate large.

    Enlarging 2x or more (a 32-64 px toy or tiny image) copies pixels (NEAREST), so they stay sharp squares
    instead of a bilinear blur; anything else is resampled with LANCZOS.
    """
    if not is_int(size) or size < 1:
        raise ValueError(f"size={size!r}: must be an integer >= 1 (pixels of the longer side)")
    w, h = image.size
    scale = size / max(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    return image.resize(new, Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.LANCZOS)
