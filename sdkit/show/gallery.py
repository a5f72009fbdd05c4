"""A scrollable thumbnail gallery for many candidates, best first; click a caption to enlarge.

Core ipywidgets only (Image, Button, Box), so it works in JupyterLab, classic
Notebook, VS Code and Colab without a front-end extension. `Gallery.update`
re-orders the existing thumbnails instead of rebuilding them, so re-ranking a
live run is cheap.
"""

from __future__ import annotations

import html
import io
from typing import Any, Callable, Iterable

import ipywidgets as widgets
from PIL import Image

from sdkit.checks import is_int
from sdkit.show.grid import Entry, by_prompt, entries

# Small model outputs (32-64 px) are scaled up as crisp pixels, not blurred.
_CSS = """<style>
.sdkit-gallery img, .sdkit-enlarged img { image-rendering: pixelated; object-fit: contain; }
.sdkit-card { border: 3px solid transparent; border-radius: 4px; }
.sdkit-card.sdkit-best { border-color: #2ca02c; }
.sdkit-card.sdkit-flagged { border-color: #d62728; }
.sdkit-card.sdkit-selected { outline: 3px solid #1f77b4; }
.sdkit-card.sdkit-source { border: 3px dashed #888; }
.sdkit-card.sdkit-pruned img { opacity: 0.4; }
.sdkit-card button { white-space: pre-line; height: auto; line-height: 1.3; padding: 2px; font-size: 12px; }
</style>"""


def png(image: Image.Image, max_size: int | None = None) -> bytes:
    """PNG bytes, downscaled to `max_size` (thumbnails of big images need not cross the wire at full size)."""
    if max_size is not None and max(image.size) > max_size:
        image = image.copy()
        image.thumbnail((max_size, max_size))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def key(c) -> tuple:
    """Which candidate this is; ranking returns scored copies, so identity would not do."""
    return (c.run_id, c.index, c.seed, c.prompt, c.path)


def caption(e: Entry) -> str:
    """'#1 · 31.42 · seed 7' on one line; just 'seed 7' while unranked (no scorer, or scores still coming);
    a search's pruned candidate says where it stopped ('pruned @2')."""
    parts = ([f"#{e.rank}"] if e.rank is not None else []) + ([f"{e.score:.2f}"] if e.score is not None else [])
    stopped = (getattr(e.candidate, "extra", None) or {}).get("pruned_at")
    return " · ".join(parts + [f"seed {e.candidate.seed}"] + (["flagged"] if e.candidate.nsfw else [])
                      + ([f"pruned @{stopped}"] if stopped is not None else []))


class _Card(widgets.VBox):
    def __init__(self, entry: Entry, thumb_size: int, on_click: Callable, source: bool = False):
        c = entry.candidate
        self.entry, self.source = entry, source
        self.image = widgets.Image(value=png(c.image, thumb_size) if c.image is not None else b"", format="png",
                                   layout=widgets.Layout(width=f"{thumb_size}px", height=f"{thumb_size}px"))
        self.button = widgets.Button(layout=widgets.Layout(width=f"{thumb_size}px"))
        self.button.on_click(lambda _: on_click(self))
        super().__init__([self.image, self.button], layout=widgets.Layout(margin="2px"))
        self.add_class("sdkit-card")
        self.set(entry)

    def set(self, entry: Entry) -> None:
        self.entry = entry
        text = f"source · seed {entry.candidate.seed}" if self.source else caption(entry)
        self.button.tooltip = text
        self.button.description = text.replace(" · seed", "\nseed")  # two lines under the image
        pruned = (getattr(entry.candidate, "extra", None) or {}).get("pruned_at") is not None
        for cls, on in (("sdkit-best", entry.rank == 1 and not entry.candidate.nsfw and not self.source and not pruned),
                        ("sdkit-flagged", entry.candidate.nsfw), ("sdkit-source", self.source),
                        ("sdkit-pruned", pruned)):
            (self.add_class if on else self.remove_class)(cls)


class Gallery(widgets.VBox):
    """Thumbnails of ranked candidates (best first, grouped by prompt) and an enlarged view of the selected one.

    `on_select(fn)` registers `fn(entry)` for clicks; `update(ranked)` shows a new ranking;
    `set_source(candidate)` shows the image a run started from (image-to-image) first, marked "source".
    """

    def __init__(self, ranked: Iterable[Any] = (), *, thumb_size: int = 128, enlarged_size: int = 384,
                 max_height: str = "520px", show_viewer: bool = True):
        if not is_int(thumb_size) or thumb_size < 16:
            raise ValueError(f"thumb_size={thumb_size!r}: must be an integer >= 16 (pixels)")
        self.thumb_size, self.enlarged_size = thumb_size, enlarged_size
        self.selected: Entry | None = None
        self._cards: dict[tuple, _Card] = {}  # key(candidate) -> its card, reused across updates
        self._shown: list[_Card] = []  # the ranked cards, in display order (the source card is not one)
        self._source: _Card | None = None
        self._callbacks: list[Callable[[Entry], None]] = []
        self.grid = widgets.Box(layout=widgets.Layout(display="flex", flex_flow="row wrap", overflow="hidden auto",
                                                      max_height=max_height, align_content="flex-start"))
        self.grid.add_class("sdkit-gallery")
        self.enlarged = widgets.Image(format="png", layout=widgets.Layout(width=f"{enlarged_size}px",
                                                                          height=f"{enlarged_size}px"))
        self.enlarged_caption = widgets.HTML()
        self.viewer = widgets.VBox([self.enlarged_caption, self.enlarged], layout=widgets.Layout(display="none"))
        self.viewer.add_class("sdkit-enlarged")
        # show_viewer=False: the caller places `self.viewer` itself (the explorer puts it beside the details).
        super().__init__([widgets.HTML(_CSS), self.grid] + ([self.viewer] if show_viewer else []))
        self.update(ranked)

    @property
    def entries(self) -> list[Entry]:
        """What is shown, in display order (without the source image)."""
        return [card.entry for card in self._shown]

    def update(self, ranked: Iterable[Any]) -> None:
        """Show `ranked` (Ranked items or candidates): new candidates get a card, known ones move."""
        cards = []
        for group in by_prompt(entries(ranked)).values():
            for e in group:
                card = self._cards.get(key(e.candidate))
                if card is None:
                    card = self._cards[key(e.candidate)] = _Card(e, self.thumb_size, self._clicked)
                else:
                    card.set(e)
                cards.append(card)
        self._shown = cards
        self._layout()
        if self.selected is not None:
            now = next((c for c in cards if key(c.entry.candidate) == key(self.selected.candidate)), None)
            if now is not None:
                self.selected = now.entry
                self.enlarged_caption.value = self._caption_html(now)

    def set_source(self, candidate) -> None:
        """Show `candidate` first, marked as the source of what follows; None removes it."""
        self._source = None if candidate is None else _Card(Entry(candidate, None, candidate.score), self.thumb_size,
                                                             self._clicked, source=True)
        self._layout()

    def _layout(self) -> None:
        self.grid.children = tuple(([self._source] if self._source is not None else []) + self._shown)

    def clear(self) -> None:
        self.selected = None
        self._cards.clear()
        self._shown, self._source = [], None
        self.grid.children = ()
        self.viewer.layout.display = "none"

    def on_select(self, fn: Callable[[Entry], None]) -> None:
        self._callbacks.append(fn)

    def select(self, index: int) -> Entry:
        """Select the `index`-th shown candidate (the source image not counted), as a click on its caption would."""
        cards = self._shown
        if not 0 <= index < len(cards):
            raise IndexError(f"index={index}: the gallery shows {len(cards)} candidates")
        self._clicked(cards[index])
        return self.selected

    def _clicked(self, card: _Card) -> None:
        for other in self.grid.children:
            other.remove_class("sdkit-selected")
        card.add_class("sdkit-selected")
        self.selected = card.entry
        image = card.entry.candidate.image
        self.enlarged.value = png(image) if image is not None else b""
        self.enlarged_caption.value = self._caption_html(card)
        self.viewer.layout.display = "flex"
        for fn in self._callbacks:
            fn(card.entry)

    @staticmethod
    def _caption_html(card: _Card) -> str:
        return f"<b>{html.escape(card.button.tooltip)}</b> &nbsp; {html.escape(card.entry.candidate.prompt)}"


def gallery(ranked: Iterable[Any], *, thumb_size: int = 128, enlarged_size: int = 384,
            max_height: str = "520px") -> Gallery:
    """A scrollable gallery widget of ranked candidates; click a caption to see the image large."""
    return Gallery(ranked, thumb_size=thumb_size, enlarged_size=enlarged_size, max_height=max_height)
