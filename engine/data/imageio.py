"""Reading images and masks from disk or uploaded bytes into one float32 grayscale form.

The single conversion every image goes through (``decode_image_bytes``), for training, evaluation and uploads:

0. Read the header first (Pillow; tifffile for TIFFs Pillow cannot parse; pydicom for DICOM), before any pixel is
   decoded: the format must be PNG, JPEG, BMP, TIFF or DICOM, and width x height must not exceed the pixel limit
   (``max_pixels``: 50 megapixels, or ``$LUNGLENS_MAX_MEGAPIXELS``), so no file can make the decoder allocate more.
1. Decode with OpenCV (``cv2.imdecode``, ``IMREAD_UNCHANGED``); TIFFs OpenCV cannot decode (e.g. LZMA-compressed)
   are read with tifffile (first page). The EXIF orientation tag is applied (the image as every viewer shows it,
   equal to Pillow's ``ImageOps.exif_transpose``). OpenCV ignores the alpha channel of gray+alpha TIFFs (gray+alpha
   PNGs are composited like RGBA).
2. Scale to [0, 1]: 8-bit by 255, 16-bit by 65535. Other pixel types are rejected.
3. Composite alpha onto black: ``colour * alpha``.
4. Colour to gray with OpenCV's luminance weights (``COLOR_BGR2GRAY``: 0.299 R + 0.587 G + 0.114 B).

DICOM files (the ``DICM`` marker whatever their name, or a ``.dcm`` name) take steps 1-2 in ``engine.data.dicom``
instead (modality LUT, VOI LUT or window, MONOCHROME1 inverted, scaled to [0, 1]; see there), then step 4.

The result is a float32 (H, W) array in [0, 1]. A mask is that array ``> 0.5``, i.e. ``> 127`` for 8-bit and
``> 32767`` for 16-bit files.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from engine.data import dicom
from engine.errors import DataError

#: File suffixes (lower case) read as images.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", dicom.DICOM_SUFFIX)

_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}
_UNREADABLE = "is not a readable PNG, JPEG, BMP or TIFF image (corrupt or another format); re-export or remove it"
#: Pillow's names of the formats read (MPO: a JPEG with extra frames; DIB: a BMP without file header).
_FORMATS = {"PNG", "JPEG", "MPO", "BMP", "DIB", "TIFF"}
#: Default pixel limit (width x height) and the environment variable that changes it, in megapixels.
DEFAULT_MAX_MEGAPIXELS = 50.0
MAX_MEGAPIXELS_ENV = "LUNGLENS_MAX_MEGAPIXELS"
_TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")
#: EXIF orientation tag value -> how to turn the stored pixels into the displayed image (numpy axis operations).
_ORIENT = {
    2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1), 6: lambda a: a[::-1].swapaxes(0, 1),
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1), 8: lambda a: a[:, ::-1].swapaxes(0, 1),
}


def max_pixels() -> int:
    """The pixel limit (width x height) of every image read: ``$LUNGLENS_MAX_MEGAPIXELS`` megapixels, default 50."""
    text = os.environ.get(MAX_MEGAPIXELS_ENV, "").strip()
    try:
        megapixels = float(text) if text else DEFAULT_MAX_MEGAPIXELS
    except ValueError:
        raise DataError(f"{MAX_MEGAPIXELS_ENV}={text!r} is not a number; set it to the largest image size to accept, "
                        f"in megapixels (default {DEFAULT_MAX_MEGAPIXELS:g})") from None
    if megapixels <= 0:
        raise DataError(f"{MAX_MEGAPIXELS_ENV}={text!r} must be a positive number of megapixels")
    return int(megapixels * 1_000_000)


def _open_header(data: bytes) -> Image.Image:
    """Pillow's lazily opened image (header only); past Pillow's own bomb limit, opened by the format's plugin."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        pass  # larger than Pillow's limit: read the header without that check, to report the real size
    Image.init()
    for fmt in Image.ID:
        factory, accept = Image.OPEN[fmt]
        if accept is None or accept(data[:16]):
            try:
                return factory(io.BytesIO(data), "")
            except (SyntaxError, IndexError, TypeError, ValueError, OSError):
                continue
    raise UnidentifiedImageError("no Pillow plugin reads this header")


def _tiff_header(data: bytes) -> tuple[int, int] | None:
    """Width and height of a TIFF's first page from its header (tifffile), or None when it is not a TIFF."""
    if not data.startswith(_TIFF_MAGIC):
        return None
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            page = tif.pages.first
            return int(page.imagewidth), int(page.imagelength)
    except Exception:  # tifffile raises many unrelated types for damaged input
        return None


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation tag (1 = as stored) from the header, never decoding pixels for it."""
    if im.format == "PNG" and "exif" not in im.info:
        return 1  # Pillow would decode the whole PNG to look for an eXIf chunk after the pixel data
    try:
        return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # a damaged EXIF block: the pixels are still usable, as stored
        return 1


def image_header(data: bytes, name: str) -> tuple[str, int, int, int]:
    """Format, width, height and EXIF orientation (1 = as stored) of image bytes, read without decoding the pixels.

    Raises DataError when the bytes are not a PNG, JPEG, BMP, TIFF or readable DICOM image, or when the image exceeds
    ``max_pixels``.
    """
    if len(data) == 0:
        raise DataError(f"{name} is empty (0 bytes); replace it with the real image or remove it")
    if dicom.is_dicom(data, name):
        width, height = dicom.dicom_header(data, name)
        _require_within_limit(width, height, name)
        return "DICOM", width, height, 1
    fmt, size, orientation = "", None, 1
    try:
        with _open_header(data) as im:
            fmt, size, orientation = im.format or "", im.size, _orientation(im)
        if fmt == "PNG":
            with _open_header(data) as check:
                check.verify()  # chunk checksums: a damaged PNG is refused here, before libpng prints raw errors
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, TypeError, IndexError):
        size = _tiff_header(data)
        fmt = "TIFF" if size else ""
    if size is None or fmt not in _FORMATS:
        what = f"is a {fmt} image, not a PNG, JPEG, BMP or TIFF; convert it" if fmt else _UNREADABLE
        raise DataError(f"{name} {what}")
    width, height = size
    _require_within_limit(width, height, name)
    return fmt, width, height, orientation if orientation in _ORIENT else 1


def _require_within_limit(width: int, height: int, name: str) -> None:
    """Raise when width x height exceeds the pixel limit."""
    limit = max_pixels()
    if width * height > limit:
        raise DataError(f"{name} is too large: {width} x {height} px ({width * height / 1e6:,.1f} megapixels), above "
                        f"the limit of {limit / 1e6:g} megapixels; downscale it, or raise the limit with "
                        f"{MAX_MEGAPIXELS_ENV}")


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
    _, width, height, orientation = image_header(data, name)
    try:
        try:
            arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        except cv2.error:  # some damaged files raise instead of returning None
            arr = None
        if arr is None:
            arr = _decode_tiff(data)
    except MemoryError:
        raise DataError(f"{name} ({width} x {height} px) is too large to decode in the memory available; downscale "
                        "it or lower LUNGLENS_MAX_MEGAPIXELS") from None
    if arr is None or arr.size == 0:
        raise DataError(f"{name} {_UNREADABLE}")
    if arr.shape[:2] != (height, width):
        raise DataError(f"{name} decodes to {arr.shape[1]} x {arr.shape[0]} px but its header says {width} x "
                        f"{height}; the file is damaged: re-export or remove it")
    return np.ascontiguousarray(_ORIENT[orientation](arr)) if orientation != 1 else arr


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
    if len(data) and dicom.is_dicom(data, name):
        image_header(data, name)  # the pixel limit, before any pixel is read
        pixels = dicom.decode_dicom(data, name)
        return pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
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
