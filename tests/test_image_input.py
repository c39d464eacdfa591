"""First-frame images: colour modes, the resize policies and clear errors for bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from videogen.errors import MediaError
from videogen.io.image import cover_box, fit_image, load_image, read_rgb

RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)


def _bands(width: int = 80, height: int = 40) -> np.ndarray:
    """Four vertical colour bands of equal width: red, green, blue, yellow."""
    rgb = np.zeros((height, width, 3), np.uint8)
    for i, colour in enumerate((RED, GREEN, BLUE, YELLOW)):
        rgb[:, i * width // 4 : (i + 1) * width // 4] = colour
    return rgb


def test_rgb_png_round_trips_to_minus_one_one(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png", width=32, height=24)
    assert image.shape == (3, 24, 32) and image.dtype == torch.float32
    expected = torch.from_numpy(rgb).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.equal(image, expected)
    assert image.min() >= -1 and image.max() <= 1


def test_grey_and_palette_become_rgb(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
    grey = read_rgb(tmp_path / "grey.png")
    assert grey.shape == (8, 8, 3) and np.array_equal(grey[..., 0], rgb[..., 0])
    assert np.array_equal(grey[..., 1], grey[..., 0]) and np.array_equal(grey[..., 2], grey[..., 0])
    palette = Image.fromarray(rgb).convert("P")
    palette.save(tmp_path / "palette.png")
    assert np.array_equal(read_rgb(tmp_path / "palette.png"), np.asarray(palette.convert("RGB")))


def test_alpha_is_composited_over_white(tmp_path):
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., :3] = (200, 40, 0)
    rgba[:, 0, 3], rgba[:, 1, 3], rgba[:, 2, 3] = 255, 0, 51  # opaque, transparent, 20 %
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    rgb = read_rgb(tmp_path / "rgba.png")
    assert rgb[0, 0].tolist() == [200, 40, 0]
    assert rgb[0, 1].tolist() == [255, 255, 255]
    assert rgb[0, 2].tolist() == [244, 212, 204]  # 0.2 * colour + 0.8 * white


def test_cmyk_jpeg_is_converted(tmp_path):
    Image.fromarray(np.full((16, 16, 3), (30, 120, 220), np.uint8)).convert("CMYK").save(tmp_path / "c.jpg")
    rgb = read_rgb(tmp_path / "c.jpg")
    assert rgb.shape == (16, 16, 3)
    assert np.abs(rgb.astype(int) - (30, 120, 220)).max() <= 12


def test_cover_keeps_the_centre_without_distortion():
    out = fit_image(_bands(80, 40), 16, 16, "cover")  # the middle half: green | blue
    assert out.shape == (16, 16, 3)
    assert np.abs(out[:, 1:6].astype(int) - GREEN).max() <= 2  # edge columns blend the cut-off band
    assert np.abs(out[:, 10:15].astype(int) - BLUE).max() <= 2
    assert cover_box(80, 40, 16, 16) == (20.0, 0.0, 60.0, 40.0)
    assert cover_box(40, 80, 32, 16) == (0.0, 30.0, 40.0, 50.0)


def test_stretch_keeps_the_whole_image():
    out = fit_image(_bands(80, 40), 16, 16, "stretch")
    for i, colour in enumerate((RED, GREEN, BLUE, YELLOW)):
        assert np.abs(out[:, 4 * i + 1 : 4 * i + 3].astype(int) - colour).max() <= 2


def test_same_size_is_untouched():
    rgb = _bands(16, 8)
    assert fit_image(rgb, 16, 8, "cover") is rgb


def _write_bad(tmp_path, kind: str):
    path = tmp_path / f"bad_{kind}.png"
    rgb = np.random.default_rng(2).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    if kind == "garbage":
        path.write_bytes(b"this is not an image")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        Image.fromarray(rgb).save(path)
        path.write_bytes(path.read_bytes()[:60])
    elif kind == "truncated_jpeg":
        path = tmp_path / "cut.jpg"
        Image.fromarray(rgb).save(path)
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "16bit":
        Image.fromarray(rgb[..., 0].astype(np.uint16) * 250).save(path)
    elif kind == "animated":
        path = tmp_path / "anim.gif"
        frames = [Image.fromarray(rgb), Image.fromarray(255 - rgb)]
        frames[0].save(path, save_all=True, append_images=frames[1:])
    elif kind == "folder":
        path = tmp_path / "folder.png"
        path.mkdir()
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "image not found"),
        ("folder", "not an image file"),
        ("garbage", "cannot read image .*not an image format"),
        ("empty", "cannot read image"),
        ("truncated", "cannot read image .*truncated"),
        ("truncated_jpeg", "cannot read image .*Truncated File Read"),
        ("16bit", "colour mode I;16 .*not supported"),
        ("animated", "has 2 frames"),
    ],
)
def test_bad_images_raise_one_clear_line(tmp_path, kind, message):
    path = tmp_path / "missing.png" if kind == "missing" else _write_bad(tmp_path, kind)
    with pytest.raises(MediaError, match=message) as caught:
        load_image(path, 16, 16)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)
