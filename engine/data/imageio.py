"""Reading images and masks from disk or uploaded bytes into one float32 grayscale form.

The single conversion every image goes through (``decode_image_bytes``):

1. Decode with OpenCV (``cv2.imdecode``, ``IMREAD_UNCHANGED``); TIFFs OpenCV cannot decode (e.g. LZMA-compressed)
   are read with tifffile (first page). EXIF orientation is not applied, and OpenCV ignores the alpha channel of
   gray+alpha TIFFs (gray+alpha PNGs are composited like RGBA).
2. Scale to [0, 1]: 8-bit by 255, 16-bit by 65535. Other pixel types are rejected.
3. Composite alpha onto black: ``colour * alpha``.
4. Colour to gray with OpenCV's luminance weights (``COLOR_BGR2GRAY``: 0.299 R + 0.587 G + 0.114 B).

The result is a float32 (H, W) array in [0, 1]. A mask is that array ``> 0.5``, i.e. ``> 127`` for 8-bit and
``> 32767`` for 16-bit files.
"""
from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import tifffile

from engine.errors import DataError

#: File suffixes (lower case) read as images.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}
_UNREADABLE = "is not a readable PNG, JPEG, BMP or TIFF image (corrupt or another format); re-export or remove it"


def _decode_tiff(data: bytes) -> np.ndarray | None:
    """First page of a TIFF via tifffile, channels in OpenCV's BGR(A) order; None when tifffile cannot read it."""
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            page = tif.pages.first
            arr = page.asarray()
            if page.axes.startswith("S"):  # planar (channel-first) storage
                arr = np.moveaxis(arr, 0, -1)
    except Exception:  # tifffile raises many unrelated types for non-TIFF or damaged input
        return None
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        arr = arr[..., [2, 1, 0, 3][: arr.shape[2]]]
    return arr


def _decode_raw(data: bytes, name: str) -> np.ndarray:
    """Decoded pixels in their stored type, channels in OpenCV order (gray, BGR or BGRA)."""
    if len(data) == 0:
        raise DataError(f"{name} is empty (0 bytes); replace it with the real image or remove it")
    try:
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:  # some damaged files raise instead of returning None
        arr = None
    if arr is None:
        arr = _decode_tiff(data)
    if arr is None or arr.size == 0:
        raise DataError(f"{name} {_UNREADABLE}")
    return arr


def _to_gray_float(arr: np.ndarray, name: str) -> np.ndarray:
    """Apply steps 2-4 of the module's conversion to decoded pixels."""
    scale = _SCALE.get(arr.dtype)
    if scale is None:
        raise DataError(f"{name} has {arr.dtype} pixels; only 8- and 16-bit images are supported: save it as 8- or "
                        "16-bit PNG or TIFF")
    x = arr.astype(np.float32) / np.float32(scale)
    if x.ndim == 3 and x.shape[2] == 1:
        x = x[..., 0]
    if x.ndim == 2:
        return x
    if x.ndim != 3 or x.shape[2] not in (2, 3, 4):
        raise DataError(f"{name} has pixel array shape {arr.shape}; expected gray, gray+alpha, RGB or RGBA")
    if x.shape[2] == 2:  # gray + alpha (tifffile only; OpenCV expands it to BGRA)
        return np.ascontiguousarray(x[..., 0] * x[..., 1])
    if x.shape[2] == 4:
        x = x[..., :3] * x[..., 3:]
    return cv2.cvtColor(np.ascontiguousarray(x), cv2.COLOR_BGR2GRAY)


def decode_image_bytes(data: bytes, name: str) -> np.ndarray:
    """Decode image file bytes (e.g. an upload called ``name``) to float32 grayscale in [0, 1]."""
    return _to_gray_float(_decode_raw(data, name), name)


def read_bytes(path: str | Path) -> bytes:
    """The bytes of a file, with a DataError that names it when it is missing or unreadable."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; check the path") from None
    except OSError as exc:
        raise DataError(f"{path} cannot be read ({exc.strerror}); check that it is a file you may read") from None


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as float32 grayscale (H, W) in [0, 1]."""
    return decode_image_bytes(read_bytes(path), str(path))


def read_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a binary mask file as a bool (H, W) array, checking its size against ``shape`` when given."""
    mask = read_image(path) > 0.5  # > 127 for 8-bit, > 32767 for 16-bit files
    if shape is not None and mask.shape != tuple(shape):
        raise DataError(f"mask {path} is {mask.shape[1]}x{mask.shape[0]} (width x height) but its image is "
                        f"{shape[1]}x{shape[0]}; masks must have their image's size")
    return mask
