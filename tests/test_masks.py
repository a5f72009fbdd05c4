import numpy as np
import pytest
from PIL import Image, ImageFilter

from sdkit.edit import masks
from sdkit.edit.masks import (Fit, box_mask, check_mask, feather_mask, fit_size, from_working, grow_mask, load_image,
                         load_mask, outpaint_canvas, paste_back, show_mask, to_working)


def noise(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def blobs(w=40, h=30, seed=1):
    """A binary mask with a few rectangles, some touching the border."""
    a = np.zeros((h, w), np.uint8)
    a[3:12, 5:20] = a[0:6, 30:40] = a[20:30, 0:3] = a[15:17, 10:35] = 255
    return Image.fromarray(a, "L")


# -- loading ---------------------------------------------------------------------------------------

def test_load_image_from_pil_numpy_and_path(tmp_path):
    im = noise(20, 12)
    im.save(tmp_path / "a.png")
    a = np.asarray(im)
    for src in (im, a, a.astype(np.float32) / 255, str(tmp_path / "a.png"), tmp_path / "a.png"):
        assert np.array_equal(np.asarray(load_image(src)), a)
    grey = load_image(np.zeros((4, 5), bool))
    assert grey.mode == "RGB" and grey.size == (5, 4)


def test_load_image_composites_transparency_on_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert load_image(rgba).getpixel((0, 0)) == (255, 255, 255)


def test_missing_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="junk.png.*not a readable image"):
        load_image(tmp_path / "junk.png")
    noise(64, 64).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])  # truncated download
    with pytest.raises(ValueError, match="cut.png.*not a readable image"):
        load_image(tmp_path / "cut.png")
    with pytest.raises(ValueError, match="cut.png"):
        load_mask(tmp_path / "cut.png")


@pytest.mark.parametrize("bad,match", [
    (np.full((4, 4), 1.5, np.float32), r"values in \[1.5, 1.5\]"),
    (np.full((4, 4), 300, np.int32), r"\[300, 300\]"),
    (np.zeros((4, 4, 2), np.uint8), r"shape \(4, 4, 2\)"),
])
def test_bad_arrays(bad, match):
    with pytest.raises(ValueError, match=match):
        load_image(bad)
    with pytest.raises(ValueError, match=match):
        load_mask(bad)


def test_mask_threshold_matches_diffusers_mask_processor():
    from diffusers.image_processor import VaeImageProcessor

    ramp = Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (8, 1)), "L")
    ref = VaeImageProcessor(vae_scale_factor=8, do_normalize=False, do_binarize=True, do_convert_grayscale=True)
    expected = ref.preprocess(ramp, height=8, width=256, resize_mode="default")  # (1, 1, H, W) in {0, 1}
    ours = np.asarray(load_mask(ramp)) / 255
    assert np.array_equal(ours, expected[0, 0].numpy())
    assert ours[0, 127] == 0 and ours[0, 128] == 1


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "I", "I;16", "F"])
def test_mask_modes_become_single_channel_binary(mode):
    a = np.zeros((6, 8), np.uint8)
    a[1:4, 2:6] = 255
    im = Image.fromarray(a, "L")
    if mode == "I;16":
        im = Image.fromarray(a.astype(np.uint16) * 257)  # 16-bit PNG: white is 65535
    elif mode == "F":
        im = Image.fromarray(a.astype(np.float32))
    else:
        im = im.convert(mode)
    m = load_mask(im)
    assert m.mode == "L" and np.array_equal(np.asarray(m), a), mode


def test_transparent_mask_pixels_are_kept():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = 255  # white everywhere, but only the top row is opaque
    rgba[0, :, 3] = 255
    m = np.asarray(load_mask(Image.fromarray(rgba, "RGBA")))
    assert m[0].tolist() == [255] * 4 and not m[1:].any()


def test_mask_from_bool_and_float_arrays():
    a = np.zeros((5, 5), bool)
    a[2, 2] = True
    assert np.asarray(load_mask(a))[2, 2] == 255 and np.count_nonzero(np.asarray(load_mask(a))) == 1
    assert np.array_equal(np.asarray(load_mask(a.astype(np.float64))), np.asarray(load_mask(a)))


def test_box_mask_and_its_errors():
    m = np.asarray(box_mask((10, 6), (2, 1, 5, 4)))
    assert m.shape == (6, 10) and m[1:4, 2:5].all() and np.count_nonzero(m) == 9
    for box in [(0, 0, 11, 6), (5, 1, 5, 4), (-1, 0, 3, 3), (0, 4, 3, 2)]:
        with pytest.raises(ValueError, match=r"0 <= left < right <= 10"):
            box_mask((10, 6), box)
    with pytest.raises(ValueError, match="four integers"):
        box_mask((10, 6), (1, 2, 3))


def test_all_black_mask_is_refused():
    with pytest.raises(ValueError, match="all black.*nothing to repaint"):
        check_mask(Image.new("L", (8, 8), 0))
    assert check_mask(box_mask((8, 8), (0, 0, 2, 2))) == 4


# -- grow, feather, paste back ---------------------------------------------------------------------

@pytest.mark.parametrize("r", [1, 2, 3, 8, np.int64(5)])  # 8: outpaint's default mask_grow
def test_grow_and_shrink_match_pil_rank_filters(r):
    m = blobs()
    assert np.array_equal(np.asarray(grow_mask(m, r)), np.asarray(m.filter(ImageFilter.MaxFilter(2 * r + 1))))
    assert np.array_equal(np.asarray(grow_mask(m, -r)), np.asarray(m.filter(ImageFilter.MinFilter(2 * r + 1))))


def test_grow_rejects_non_integers():
    with pytest.raises(ValueError, match="mask_grow=1.5"):
        grow_mask(blobs(), 1.5)


@pytest.mark.parametrize("r", [0, 1, 4])
def test_feather_is_a_smoothstep_of_chessboard_distance_and_never_leaves_the_mask(r):
    from scipy.ndimage import distance_transform_cdt

    m = blobs()
    w = feather_mask(m, r)
    white = np.asarray(m) > 0
    d = np.minimum(distance_transform_cdt(white, metric="chessboard"), r + 1) / (r + 1)
    assert np.allclose(w, d * d * (3 - 2 * d), atol=1e-6)
    assert (w[~white] == 0).all()  # nothing outside the unfeathered mask
    assert (w[white] > 0).all()  # every masked pixel is repainted at least a little
    assert w.max() == 1


def test_feather_keeps_a_full_mask_full():
    assert (feather_mask(Image.new("L", (16, 16), 255), 4) == 1).all()  # the image border is not an edge
    with pytest.raises(ValueError, match="mask_blur=-1"):
        feather_mask(blobs(), -1)


def test_paste_back_is_exact_where_the_weight_is_zero():
    o, g = noise(40, 30, 1), noise(40, 30, 2)
    w = feather_mask(blobs(), 3)
    out = np.asarray(paste_back(o, g, w)).astype(np.float64)
    keep, full = w == 0, w == 1
    assert np.array_equal(out[keep], np.asarray(o)[keep])
    assert np.array_equal(out[full], np.asarray(g)[full])
    expected = np.round(np.asarray(o) * (1 - w[..., None]) + np.asarray(g) * w[..., None])
    assert np.abs(out - expected).max() <= 1


# -- sizes -----------------------------------------------------------------------------------------

def test_fit_size_choices():
    assert fit_size((64, 48)) == Fit((64, 48), (64, 48), "none")
    assert fit_size((60, 44)) == Fit((60, 44), (64, 48), "pad")
    assert fit_size((60, 43), resize_mode="resize") == Fit((60, 43), (64, 40), "resize")
    assert fit_size((3, 3), resize_mode="resize").working == (8, 8)
    assert fit_size((60, 44), height=32, width=40) == Fit((60, 44), (40, 32), "resize")


@pytest.mark.parametrize("kwargs,match", [
    (dict(resize_mode="crop"), "resize_mode='crop'"),
    (dict(height=64), "give both or neither"),
    (dict(height=60, width=64), "height=60"),
    (dict(height=64, width=0), "width=0"),
])
def test_fit_size_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_size((60, 44), **kwargs)


def test_working_size_limit(monkeypatch):
    monkeypatch.setattr(masks, "MAX_SIDE", 128)
    with pytest.raises(ValueError, match="136x48 exceeds sdkit.edit.masks.MAX_SIDE=128.*height= and width="):
        fit_size((130, 44))
    assert fit_size((130, 44), height=48, width=128).working == (128, 48)


@pytest.mark.parametrize("mode", ["pad", "resize"])
def test_round_trip_returns_the_original_size(mode):
    im = noise(61, 37)
    fit = fit_size(im.size, resize_mode=mode)
    work = to_working(im, fit)
    assert work.size == fit.working and work.width % 8 == 0 and work.height % 8 == 0
    back = from_working(work, fit)
    assert back.size == im.size
    if mode == "pad":  # padding is cut off again, nothing resampled
        assert np.array_equal(np.asarray(back), np.asarray(im))
        assert np.array_equal(np.asarray(work)[:37, 61:], np.repeat(np.asarray(im)[:, -1:], 3, axis=1))
    m = to_working(load_mask(blobs(61, 37)), fit, is_mask=True)
    assert set(np.unique(np.asarray(m))) <= {0, 255}


# -- outpainting canvas ----------------------------------------------------------------------------

def test_outpaint_canvas_places_the_image_and_masks_the_new_area():
    im = noise(20, 10)
    canvas, m = outpaint_canvas(im, left=3, right=5, top=2)
    assert canvas.size == m.size == (28, 12)
    c, a = np.asarray(canvas), np.asarray(m)
    assert np.array_equal(c[2:12, 3:23], np.asarray(im))
    assert not a[2:12, 3:23].any() and np.count_nonzero(a) == 28 * 12 - 200
    assert np.array_equal(c[0, 3:23], np.asarray(im)[0])  # the new area starts as the edge pixels


@pytest.mark.parametrize("kwargs,match", [
    (dict(left=-8), "left=-8.*>= 0"),
    (dict(top=2.5), "top=2.5"),
    (dict(), "all 0"),
    (dict(right=masks.MAX_SIDE), r"canvas would be \d+x10.*MAX_SIDE=2048"),
])
def test_outpaint_extent_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        outpaint_canvas(noise(20, 10), **kwargs)


# -- showing ---------------------------------------------------------------------------------------

def test_show_mask_puts_image_mask_and_overlay_side_by_side():
    im = noise(20, 10)
    out = show_mask(im, (2, 2, 8, 6), gap=4)
    assert out.size == (3 * 20 + 8, 10)
    a = np.asarray(out).astype(int)
    assert np.array_equal(a[:, :20], np.asarray(im))
    assert (a[2:6, 24 + 2:24 + 8] == 255).all() and (a[7:, 24:44] == 0).all()
    over, orig = a[:, 48:], np.asarray(im).astype(int)
    assert np.array_equal(over[7:], orig[7:])  # unmasked: untouched
    assert np.abs(over[3, 3] - np.round(orig[3, 3] * 0.5 + np.array([255, 0, 0]) * 0.5)).max() <= 1
    with pytest.raises(ValueError, match=r"mask size \(5, 5\) != image size \(20, 10\)"):
        show_mask(im, Image.new("L", (5, 5), 255))
