"""Reading images and masks: formats, bit depths, channel layouts and bad files."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from engine.data.imageio import decode_image_bytes, read_image, read_mask
from engine.errors import DataError

RNG = np.random.default_rng(0)
GRAY8 = RNG.integers(0, 256, (12, 10), dtype=np.uint8)
GRAY16 = RNG.integers(0, 65536, (12, 10), dtype=np.uint16)
RGB8 = RNG.integers(0, 256, (12, 10, 3), dtype=np.uint8)
RGBA8 = RNG.integers(0, 256, (12, 10, 4), dtype=np.uint8)
RGB16 = RNG.integers(0, 65536, (12, 10, 3), dtype=np.uint16)
RGBA16 = RNG.integers(0, 65536, (12, 10, 4), dtype=np.uint16)


def luminance(rgb: np.ndarray, scale: float) -> np.ndarray:
    """Expected gray by the documented weights, computed by hand in float64."""
    x = rgb.astype(np.float64) / scale
    if x.shape[2] == 4:
        x = x[..., :3] * x[..., 3:]
    return 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]


def save_pil(path: Path, array: np.ndarray, **kwargs) -> Path:
    Image.fromarray(array).save(path, **kwargs)
    return path


@pytest.mark.parametrize("suffix", ["png", "bmp", "tiff"])
def test_gray8_is_scaled_by_255(tmp_path, suffix):
    image = read_image(save_pil(tmp_path / f"g.{suffix}", GRAY8))
    assert image.dtype == np.float32 and image.shape == (12, 10)
    np.testing.assert_allclose(image, GRAY8 / 255.0, atol=1e-7)


def test_gray16_png_is_scaled_by_65535(tmp_path):
    image = read_image(save_pil(tmp_path / "g16.png", GRAY16))
    np.testing.assert_allclose(image, GRAY16 / 65535.0, atol=1e-7)


@pytest.mark.parametrize("suffix", ["png", "bmp", "tif"])
def test_rgb8_uses_luminance_weights(tmp_path, suffix):
    image = read_image(save_pil(tmp_path / f"c.{suffix}", RGB8))
    np.testing.assert_allclose(image, luminance(RGB8, 255.0), atol=1e-6)


def test_rgba_png_is_composited_onto_black(tmp_path):
    image = read_image(save_pil(tmp_path / "a.png", RGBA8))
    np.testing.assert_allclose(image, luminance(RGBA8, 255.0), atol=1e-6)


def test_gray_alpha_png(tmp_path):
    gray_alpha = np.stack([GRAY8, RGBA8[..., 3]], axis=-1)
    image = read_image(save_pil(tmp_path / "la.png", gray_alpha))
    expected = GRAY8 / 255.0 * RGBA8[..., 3] / 255.0
    np.testing.assert_allclose(image, expected, atol=1e-6)


@pytest.mark.parametrize("rgb", [RGB16, RGBA16], ids=["rgb16", "rgba16"])
def test_16bit_colour_tiff(tmp_path, rgb):
    path = tmp_path / "c16.tif"
    tifffile.imwrite(path, rgb, photometric="rgb", extrasamples=["unassalpha"] if rgb.shape[2] == 4 else None)
    np.testing.assert_allclose(read_image(path), luminance(rgb, 65535.0), atol=1e-6)


def test_tiff_opencv_cannot_decode_falls_back_to_tifffile(tmp_path):
    path = tmp_path / "lzma.tif"
    tifffile.imwrite(path, RGB16, photometric="rgb", compression="lzma")
    np.testing.assert_allclose(read_image(path), luminance(RGB16, 65535.0), atol=1e-6)


def test_planar_tiff_channels_are_found(tmp_path):
    path = tmp_path / "planar.tif"
    tifffile.imwrite(path, np.moveaxis(RGB8, -1, 0), photometric="rgb", planarconfig="separate", compression="lzma")
    np.testing.assert_allclose(read_image(path), luminance(RGB8, 255.0), atol=1e-6)


def test_gray_alpha_tiff_read_by_tifffile(tmp_path):
    path = tmp_path / "la.tif"
    gray_alpha = np.stack([GRAY8, RGBA8[..., 3]], axis=-1)
    tifffile.imwrite(path, gray_alpha, photometric="minisblack", extrasamples=["unassalpha"], compression="lzma")
    np.testing.assert_allclose(read_image(path), GRAY8 / 255.0 * RGBA8[..., 3] / 255.0, atol=1e-6)


def test_jpeg_is_read_within_compression_error(tmp_path):
    smooth = np.add.outer(np.arange(32) * 4, np.arange(32) * 3).astype(np.uint8)
    image = read_image(save_pil(tmp_path / "s.jpg", smooth, quality=100))
    np.testing.assert_allclose(image, smooth / 255.0, atol=3 / 255)


def test_decode_image_bytes_matches_read_image(tmp_path):
    path = save_pil(tmp_path / "c.png", RGB8)
    np.testing.assert_array_equal(decode_image_bytes(path.read_bytes(), "upload.png"), read_image(path))


@pytest.mark.parametrize("data, words", [(b"", "empty"), (b"this is not an image", "not a readable")])
def test_decode_image_bytes_rejects_non_images(data, words):
    with pytest.raises(DataError, match=words) as info:
        decode_image_bytes(data, "upload.png")
    assert "upload.png" in str(info.value)


def test_bad_files_name_the_file(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "text.png"
    text.write_text("hello")
    for path in (empty, text, tmp_path / "missing.png"):
        with pytest.raises(DataError, match=path.name):
            read_image(path)


def test_float_pixels_are_rejected(tmp_path):
    path = tmp_path / "f.tif"
    tifffile.imwrite(path, np.zeros((4, 4), np.float32))
    with pytest.raises(DataError, match="8- and 16-bit"):
        read_image(path)


def test_mask_thresholds_8_and_16_bit(tmp_path):
    values8 = np.array([[0, 127], [128, 255]], np.uint8)
    values16 = np.array([[0, 32767], [32768, 65535]], np.uint16)
    expected = np.array([[False, False], [True, True]])
    for name, values in (("m8.png", values8), ("m16.png", values16)):
        mask = read_mask(save_pil(tmp_path / name, values))
        assert mask.dtype == bool
        np.testing.assert_array_equal(mask, expected)


def test_mask_size_mismatch(tmp_path):
    path = save_pil(tmp_path / "m.png", np.zeros((6, 8), np.uint8))
    assert read_mask(path, (6, 8)).shape == (6, 8)
    with pytest.raises(DataError, match=r"m\.png is 8x6.*image is 10x12"):
        read_mask(path, (12, 10))


def test_tiff_bytes_from_memory():
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, GRAY16, compression="lzma")
    np.testing.assert_allclose(decode_image_bytes(buffer.getvalue(), "x.tif"), GRAY16 / 65535.0, atol=1e-7)


def _pillow_gray(image: Image.Image) -> np.ndarray:
    """A Pillow image as float gray in [0, 1] by the documented luminance weights (RGB) or as is (L)."""
    pixels = np.asarray(image)
    return pixels / 255.0 if pixels.ndim == 2 else luminance(pixels, 255.0)


@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_equals_pillow_exif_transpose(mode, orientation):
    from PIL import ImageOps

    # Non-square and without symmetry, so each of the eight orientations gives a different image.
    stored = np.zeros((24, 40, 3), np.uint8)
    stored[..., 0] = np.linspace(0, 250, 40, dtype=np.uint8)[None, :]
    stored[..., 1] = np.linspace(0, 250, 24, dtype=np.uint8)[:, None]
    stored[2:8, 3:12] = (255, 255, 255)
    image = Image.fromarray(stored if mode == "RGB" else stored[..., 0] // 2 + stored[..., 1] // 2)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    with Image.open(io.BytesIO(buffer.getvalue())) as opened:
        assert opened.getexif()[0x0112] == orientation
        expected = _pillow_gray(ImageOps.exif_transpose(opened))
    ours = decode_image_bytes(buffer.getvalue(), f"o{orientation}.jpg")
    assert ours.shape == expected.shape == ((24, 40) if orientation <= 4 else (40, 24))
    # Same JPEG, two decoders (OpenCV, Pillow): equal up to rounding; a wrong orientation differs by far more.
    np.testing.assert_allclose(ours, expected, atol=2 / 255)
