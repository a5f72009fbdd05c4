"""sdkit.show.gallery: the ipywidgets gallery."""

import io

import numpy as np
import pytest
from PIL import Image

from sdkit.results import Ranked
from sdkit.show.gallery import Gallery, caption, gallery
from sdkit.show.grid import Entry
from test_grid import make_candidates, ranked_items


def test_gallery_shows_ranked_thumbnails_and_enlarges_on_click():
    cands = make_candidates(n=3, size=256)
    g = gallery(ranked_items(cands, [1.0, 3.0, 2.0]), thumb_size=64)
    cards = g.grid.children
    assert [e.candidate.seed for e in g.entries] == [101, 102, 100]
    assert cards[0].button.description.startswith("#1 · ") and cards[0].button.description.endswith("\nseed 101")
    assert cards[0].button.tooltip == cards[0].button.description.replace("\n", " · ")
    assert "sdkit-best" in cards[0]._dom_classes and "sdkit-best" not in cards[1]._dom_classes
    with Image.open(io.BytesIO(cards[0].image.value)) as thumb:
        assert thumb.size == (64, 64)  # big images cross the wire as thumbnails
    assert g.viewer.layout.display == "none"

    picked = []
    g.on_select(picked.append)
    cards[2].button.click()  # what a click in the browser does
    assert picked == [g.selected] and g.selected.candidate.seed == cands[0].seed
    assert g.viewer.layout.display == "flex"
    with Image.open(io.BytesIO(g.enlarged.value)) as big:
        assert np.array_equal(np.asarray(big), np.asarray(cands[0].image))  # full size, unchanged
    assert "seed 100" in g.enlarged_caption.value


def test_gallery_update_reranks_in_place():
    cands = make_candidates(n=3)
    g = Gallery(cands[:2])  # unscored: generation order
    first_cards = list(g.grid.children)
    assert [card.button.description for card in first_cards] == ["seed 100", "seed 101"]  # no '#– · –' stand-ins
    g.update(ranked_items(cands, [1.0, 3.0, 2.0]))
    assert [e.candidate.seed for e in g.entries] == [101, 102, 100]
    assert g.grid.children[0] is first_cards[1] and g.grid.children[2] is first_cards[0]  # widgets reused
    assert g.grid.children[0].button.description.startswith("#1")
    g.clear()
    assert g.entries == [] and g.selected is None


def test_gallery_caption_and_bad_input():
    c = make_candidates(n=1)[0]
    c.nsfw = True
    assert caption(Entry(c, 2, 31.456)) == "#2 · 31.46 · seed 100 · flagged"
    assert caption(Entry(c, None, None)) == "seed 100 · flagged"  # unranked: nothing to stand in for
    assert caption(Entry(c, None, 12.5)) == "12.50 · seed 100 · flagged"
    c.nsfw = False
    c.extra["pruned_at"] = 2  # a search stopped it after step 2
    assert caption(Entry(c, 3, 10.0)) == "#3 · 10.00 · seed 100 · pruned @2"
    c.score, c.logit = 10.0, 1.0
    g = Gallery([Ranked(c, 1)])  # its card is dimmed, and never marked best
    assert "sdkit-pruned" in g._shown[0]._dom_classes and "sdkit-best" not in g._shown[0]._dom_classes
    del c.extra["pruned_at"]
    c.nsfw = True
    with pytest.raises(ValueError, match="thumb_size=8"):
        Gallery([c], thumb_size=8)
    g = Gallery([c])
    with pytest.raises(IndexError, match="index=3: the gallery shows 1"):
        g.select(3)


def test_gallery_shows_a_source_image_first_and_apart():
    cands = make_candidates(n=3)
    source = make_candidates(n=1, run_id="r0")[0]
    g = Gallery(cands[:2])
    g.set_source(source)
    first = g.grid.children[0]
    assert first.button.tooltip == "source · seed 100" and "sdkit-source" in first._dom_classes
    assert "sdkit-best" not in first._dom_classes
    g.update(ranked_items(cands, [1.0, 3.0, 2.0]))
    assert g.grid.children[0] is first and len(g.grid.children) == 4  # stays first through re-ranking
    assert [e.candidate.seed for e in g.entries] == [101, 102, 100]  # entries and select() skip it
    assert g.select(0).candidate.seed == 101
    first.button.click()  # it can be looked at like the others
    assert g.selected.candidate is source and "source · seed 100" in g.enlarged_caption.value
    g.clear()
    assert g.grid.children == ()
