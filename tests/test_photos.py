"""Decoding real photos in every supported form, and refusing bad files with a reason."""

import io

import numpy as np
import pytest
from PIL import Image

from door_access.faces.photos import PhotoError, load_rgb

from conftest import FR_IMAGES

LIMIT = 40_000_000


def test_32bit_png_with_alpha_decodes_to_rgb():
    rgb = load_rgb(FR_IMAGES / "32bit.png", LIMIT)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3


@pytest.mark.parametrize("fmt,suffix,mode", [
    ("PNG", ".png", "I;16"), ("PNG", ".png", "RGBA"), ("PNG", ".png", "P"),
    ("WEBP", ".webp", "RGB"), ("BMP", ".bmp", "RGB"), ("JPEG", ".jpeg", "L"),
])
def test_formats_and_bit_depths(tmp_path, fmt, suffix, mode):
    src = Image.open(FR_IMAGES / "obama.jpg")
    if mode == "I;16":
        img = Image.fromarray(np.asarray(src.convert("L"), np.uint16) * 257)
    else:
        img = src.convert(mode)
    path = tmp_path / f"photo{suffix}"
    img.save(path, fmt)
    rgb = load_rgb(path, LIMIT)
    assert rgb.shape == (src.height, src.width, 3) and rgb.dtype == np.uint8
    assert 40 < rgb.mean() < 215  # real content, not an all-black or all-white result


def test_exif_orientation_is_honoured(tmp_path):
    upright = Image.open(FR_IMAGES / "obama.jpg")
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # pixels as a sideways camera stores them
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "sideways.jpg"
    stored.save(path, "JPEG", exif=exif.tobytes(), quality=95)
    rgb = load_rgb(path, LIMIT)
    assert rgb.shape[:2] == (upright.height, upright.width)


@pytest.mark.parametrize("content,reason", [
    (b"", "empty file"),
    (b"hello, I am a text file\n", "not an image"),
])
def test_bad_bytes(tmp_path, content, reason):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(PhotoError, match=reason):
        load_rgb(path, LIMIT)


def test_truncated_jpeg(tmp_path):
    data = (FR_IMAGES / "obama.jpg").read_bytes()
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(PhotoError, match="truncated"):
        load_rgb(path, LIMIT)


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    buf = io.BytesIO()
    Image.new("L", (12_000, 12_000)).save(buf, "PNG")  # 144 Mpx, a few hundred kB on disk
    path = tmp_path / "bomb.png"
    path.write_bytes(buf.getvalue())
    assert path.stat().st_size < 1_000_000
    with pytest.raises(PhotoError, match="over the limit"):
        load_rgb(path, LIMIT)


def test_missing_and_directory(tmp_path):
    with pytest.raises(PhotoError, match="not found"):
        load_rgb(tmp_path / "absent.jpg", LIMIT)
    (tmp_path / "folder.jpg").mkdir()
    with pytest.raises(PhotoError, match="directory"):
        load_rgb(tmp_path / "folder.jpg", LIMIT)
