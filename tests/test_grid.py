"""sdkit.show.grid: the matplotlib ranked grid, image_grid and enlarge."""

import io

import numpy as np
import pytest
from diffusers.utils import make_image_grid
from PIL import Image

from sdkit.ranking import rank
from sdkit.results import Candidate, Scores
from sdkit.show.grid import (BEST_COLOR, FLAG_COLOR, image_grid, ranked_grid, read_grid_metadata, save_ranked_grid)


def ranked_items(candidates, logits):
    logits = np.asarray(logits, np.float32)
    return rank(candidates, Scores(logits=logits, clip_score=logits / 2))


def make_candidates(prompts=("a red circle",), n=4, size=64, run_id="r1"):
    rng = np.random.default_rng(0)
    return [Candidate(image=Image.fromarray(rng.integers(0, 255, (size, size, 3), np.uint8)), prompt=p, seed=100 + k,
                      index=i * n + k, run_id=run_id, path=f"/x/{run_id}-{i * n + k:03d}-s{100 + k}.png")
            for i, p in enumerate(prompts) for k in range(n)]


def image_axes(fig):
    return [ax for ax in fig.get_axes() if ax.images]


# -- image_grid: the tutorials' helper, checked against diffusers' make_image_grid ------------------------

def test_image_grid_matches_diffusers():
    images = [c.image for c in make_candidates(n=6)]
    ours = image_grid(images, rows=2, cols=3)
    ref = make_image_grid(images, rows=2, cols=3)
    assert ours.size == (192, 128)
    assert np.array_equal(np.asarray(ours), np.asarray(ref))


def _pasted_grid(images, rows, cols):
    """image_grid as sdkit wrote it by hand before it called make_image_grid: the reference it must equal."""
    w, h = images[0].size
    grid = Image.new("RGB", size=(cols * w, rows * h))
    for i, img in enumerate(images):
        grid.paste(img, box=(i % cols * w, i // cols * h))
    return grid


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA"])
@pytest.mark.parametrize("n, rows, cols", [(6, 2, 3), (3, 2, 2), (1, 1, 4), (5, 3, 2)])
def test_image_grid_equals_the_hand_written_grid_it_replaced(mode, n, rows, cols):
    images = [c.image.convert(mode) for c in make_candidates(n=n, size=16)]
    ours = image_grid(images, rows=rows, cols=cols)
    assert ours.mode == "RGB" and ours.size == (cols * 16, rows * 16)
    assert np.array_equal(np.asarray(ours), np.asarray(_pasted_grid(images, rows, cols)))


def test_image_grid_leaves_missing_cells_black():
    images = [c.image for c in make_candidates(n=3)]
    grid = np.asarray(image_grid(images, rows=2, cols=2))
    assert np.array_equal(grid[:64, 64:], np.asarray(images[1]))
    assert np.array_equal(grid[64:, :64], np.asarray(images[2]))
    assert not grid[64:, 64:].any()


@pytest.mark.parametrize("args, match", [
    (dict(rows=1, cols=2), "3 images do not fit a 1x2 grid"),
    (dict(rows=0, cols=2), "rows=0"),
    (dict(rows=2, cols=2.5), "cols=2.5"),
])
def test_image_grid_rejects_bad_shapes(args, match):
    images = [c.image for c in make_candidates(n=3)]
    with pytest.raises(ValueError, match=match):
        image_grid(images, **args)


def test_image_grid_rejects_mixed_sizes_and_empty():
    with pytest.raises(ValueError, match=r"different sizes \[\(32, 32\), \(64, 64\)\]"):
        image_grid([Image.new("RGB", (64, 64)), Image.new("RGB", (32, 32))], 1, 2)
    with pytest.raises(ValueError, match="empty"):
        image_grid([], 1, 1)


# -- ranked_grid ---------------------------------------------------------------------------------------

def test_ranked_grid_orders_by_rank_and_labels_rank_score_seed():
    cands = make_candidates(n=4)
    ranked = ranked_items(cands, [1.0, 4.0, 3.0, 2.0])
    fig = ranked_grid(ranked, title="tiny model")
    axes = image_axes(fig)
    assert len(axes) == 4
    assert [r.candidate.seed for r in ranked] == [101, 102, 103, 100]
    for k, (ax, r) in enumerate(zip(axes, ranked)):
        # The pixels drawn are the candidate's, unchanged.
        assert np.array_equal(ax.images[0].get_array(), np.asarray(r.candidate.image))
        assert ax.get_xlabel().splitlines() == [f"#{k + 1}  {r.score:.2f}", f"seed {r.candidate.seed}"]
    assert fig._suptitle.get_text() == "tiny model"
    assert [sf._suptitle.get_text() for sf in fig.subfigs] == ["a red circle"]
    # Rank 1 is framed green, the others are not.
    assert all(s.get_edgecolor()[:3] == pytest.approx(_rgb(BEST_COLOR)) for s in axes[0].spines.values())
    assert axes[1].spines["top"].get_linewidth() < 3


def _rgb(hex_color):
    return tuple(int(hex_color[i:i + 2], 16) / 255 for i in (1, 3, 5))


def test_ranked_grid_one_block_per_prompt_with_columns():
    cands = make_candidates(prompts=("a red circle", "a blue square"), n=5)
    ranked = ranked_items(cands, list(range(10)))
    fig = ranked_grid(ranked, columns=3)
    assert [sf._suptitle.get_text() for sf in fig.subfigs] == ["a red circle", "a blue square"]
    for sf, prompt in zip(fig.subfigs, ("a red circle", "a blue square")):
        axes = [ax for ax in sf.get_axes()]
        assert len(axes) == 6  # 2 rows x 3 columns, the last cell blank
        shown = [ax for ax in axes if ax.images]
        assert len(shown) == 5
        assert [ax.get_xlabel().split()[0] for ax in shown] == ["#1", "#2", "#3", "#4", "#5"]
        assert {ax.get_subplotspec().get_geometry()[:2] for ax in axes} == {(2, 3)}


def test_ranked_grid_marks_flagged_and_accepts_plain_candidates():
    cands = make_candidates(n=3)
    cands[1].nsfw = True
    cands[2].score = 12.5
    fig = ranked_grid(cands)  # no ranking: generation order, no rank placeholders
    axes = image_axes(fig)
    assert axes[0].get_xlabel() == "seed 100"
    assert "flagged" in axes[1].get_xlabel()
    assert axes[1].spines["left"].get_edgecolor()[:3] == pytest.approx(_rgb(FLAG_COLOR))
    assert axes[2].get_xlabel().splitlines() == ["12.50", "seed 102"]


def test_ranked_grid_saves_png_and_shows_in_notebooks(tmp_path):
    cands = make_candidates(n=2)
    fig = ranked_grid(ranked_items(cands, [0.5, 0.7]), save_to=tmp_path / "g.png", dpi=50)
    with Image.open(tmp_path / "g.png") as im:
        assert im.format == "PNG" and im.size == (int(2 * 2.0 * 50), int((2.0 + 0.55 + 0.45) * 50))
    assert Image.open(io.BytesIO(fig._repr_png_())).format == "PNG"  # what Jupyter displays
    cells = read_grid_metadata(tmp_path / "g.png")
    assert [(c["rank"], c["seed"]) for c in cells] == [(1, 101), (2, 100)]


@pytest.mark.parametrize("ranked, kwargs, err, match", [
    ([], {}, ValueError, "ranked is empty"),
    ("cands", {"columns": 0}, ValueError, "columns=0"),
    ("cands", {"cell_inches": -1}, ValueError, "cell_inches=-1"),
    (["a red circle"], {}, TypeError, r"ranked\[0\] is a str"),
])
def test_ranked_grid_rejects_bad_input(ranked, kwargs, err, match):
    with pytest.raises(err, match=match):
        ranked_grid(make_candidates(n=2) if ranked == "cands" else ranked, **kwargs)


@pytest.mark.parametrize("columns, match", [
    (5, r"columns=5: must be an integer from 1 to 4 \(the most candidates any prompt has\)"),
    (9, "columns=9: must be an integer from 1 to 4"),
    (True, "columns=True"),
    (2.5, "columns=2.5"),
])
def test_ranked_grid_refuses_columns_it_cannot_fill_before_drawing(monkeypatch, tmp_path, columns, match):
    ranked = ranked_items(make_candidates(prompts=("a red circle", "a blue square"), n=4), list(range(8)))

    def no_figure(*args, **kwargs):
        raise AssertionError("a figure was made before the arguments were checked")

    monkeypatch.setattr("sdkit.show.grid.GridFigure", no_figure)
    with pytest.raises(ValueError, match=match):
        ranked_grid(ranked, columns=columns)
    with pytest.raises(ValueError, match=match):
        save_ranked_grid(ranked, tmp_path / "run", columns=columns)
    assert not (tmp_path / "run").exists()  # nothing written, not even the folder


def test_ranked_grid_takes_exactly_as_many_columns_as_the_largest_prompt():
    ranked = ranked_items(make_candidates(prompts=("a red circle", "a blue square"), n=4)[:7], list(range(7)))
    fig = ranked_grid(ranked, columns=4)
    assert {ax.get_subplotspec().get_geometry()[:2] for ax in fig.get_axes()} == {(1, 4)}


def test_save_ranked_grid_names_by_run_and_never_overwrites(tmp_path):
    cands = make_candidates(n=3, run_id="20260101-000000-abcd")
    ranked = ranked_items(cands, [3.0, 1.0, 2.0])
    first = save_ranked_grid(ranked, tmp_path)
    second = save_ranked_grid(ranked, tmp_path)
    assert first.name == "20260101-000000-abcd-grid.png"
    assert second.name == "20260101-000000-abcd-grid-1.png"
    cells = read_grid_metadata(first)
    assert [(c["rank"], c["file"]) for c in cells] == [
        (1, "20260101-000000-abcd-000-s100.png"), (2, "20260101-000000-abcd-002-s102.png"),
        (3, "20260101-000000-abcd-001-s101.png")]
    with pytest.raises(ValueError, match="no sdkit-grid metadata"):
        read_grid_metadata(_plain_png(tmp_path))


def _plain_png(tmp_path):
    path = tmp_path / "plain.png"
    Image.new("RGB", (4, 4)).save(path)
    return path


# -- enlarge -----------------------------------------------------------------------------------------

def test_enlarge_keeps_small_images_sharp():
    from sdkit.show.grid import enlarge

    small = make_candidates(n=1, size=32)[0].image
    big = enlarge(small, 512)
    assert big.size == (512, 512)
    # Every source pixel became a 16 x 16 block of itself: no blur between neighbours.
    assert np.array_equal(np.asarray(big)[::16, ::16], np.asarray(small))
    assert len(np.unique(np.asarray(big)[:16, :16].reshape(-1, 3), axis=0)) == 1
    wide = Image.new("RGB", (600, 300), "red")
    assert enlarge(wide, 800).size == (800, 400)  # under 2x: resampled (LANCZOS), aspect kept
    with pytest.raises(ValueError, match="size=0"):
        enlarge(small, 0)
