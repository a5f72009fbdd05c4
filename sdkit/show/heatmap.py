"""Pick settings by evidence: mean score (CLIP, another verifier, or one member of an ensemble) over a grid of two
parameters, drawn as a heatmap."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from sdkit.results import score_label
from sdkit.show.grid import GridFigure


def score_table(ranked: Iterable[Any], x: str, y: str, member: str | None = None):
    """Mean score per (x, y) cell: returns (x values, y values, means[y, x], counts[y, x]). `member`: an ensemble
    member's own score (e.g. "aesthetic") instead of the score the candidates are ranked by."""
    cells: dict[tuple, list[float]] = {}
    for r in ranked:
        c = getattr(r, "candidate", r)
        score = getattr(r, "score", None) if hasattr(r, "candidate") else c.score
        if score is None:
            raise ValueError(f"candidate seed={c.seed} has no score; rerank() or score the sweep first")
        if member is not None:
            if member not in (c.members or {}):
                raise ValueError(f"member={member!r}: candidate seed={c.seed} was scored by "
                                 f"{c.scorer!r}, whose members are {sorted(c.members or {})}")
            score = c.members[member].score
        try:
            key = (getattr(c, x), getattr(c, y))
        except AttributeError as e:
            raise ValueError(f"cannot group by {e.name!r}: candidates have no such field "
                             "(use guidance_scale, num_inference_steps, scheduler, prompt, ...)") from None
        cells.setdefault(key, []).append(float(score))
    if not cells:
        raise ValueError("no scored candidates to tabulate")
    xs = sorted({k[0] for k in cells}, key=_order)
    ys = sorted({k[1] for k in cells}, key=_order)
    means = np.full((len(ys), len(xs)), np.nan)
    counts = np.zeros((len(ys), len(xs)), dtype=int)
    for (vx, vy), s in cells.items():
        means[ys.index(vy), xs.index(vx)] = np.mean(s)
        counts[ys.index(vy), xs.index(vx)] = len(s)
    return xs, ys, means, counts


def _order(v):
    return (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v))


def score_heatmap(ranked: Iterable[Any], x: str = "guidance_scale", y: str = "num_inference_steps",
                  *, member: str | None = None, title: str | None = None) -> Figure:
    """Heatmap of the mean score for each (x, y) setting, each cell labelled with its mean and count.

    `ranked` is what `rerank` or `run_sweep(...).ranked` returns (or scored candidates). The score is the one they
    are ranked by (CLIP, a verifier, an ensemble), or with `member` one ensemble member's own: one heatmap per
    verifier shows where they disagree.
    """
    ranked = list(ranked)
    xs, ys, means, counts = score_table(ranked, x, y, member)
    first = getattr(ranked[0], "candidate", ranked[0])
    label = "mean " + score_label(first.members[member].scorer if member is not None else getattr(first, "scorer", None))
    fig = GridFigure(figsize=(1.2 + 1.1 * len(xs), 1.0 + 0.8 * len(ys)))
    ax = fig.add_subplot()
    im = ax.imshow(means, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(xs)), [f"{v:g}" if isinstance(v, float) else str(v) for v in xs])
    ax.set_yticks(range(len(ys)), [str(v) for v in ys])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    best = np.unravel_index(np.nanargmax(means), means.shape)
    for (i, j), m in np.ndenumerate(means):
        if not np.isnan(m):
            ax.text(j, i, f"{m:.1f}\nn={counts[i, j]}", ha="center", va="center", fontsize=8,
                    color="black" if (i, j) == best else "white", fontweight="bold" if (i, j) == best else None)
    ax.add_patch(Rectangle((best[1] - 0.5, best[0] - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    fig.colorbar(im, ax=ax, label=label)
    ax.set_title(title or f"{label} by {x} x {y} (best framed)")
    fig.tight_layout()
    return fig
