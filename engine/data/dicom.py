"""DICOM images (pydicom) for the one image reader, ``engine.data.imageio``: header, pixels and patient id.

A file is read as DICOM when it has the ``DICM`` marker after its 128-byte preamble (whatever its name), or when its
name ends in ``.dcm`` (a bare data set without preamble). Pixels become float32 in [0, 1] by the DICOM grayscale
pipeline (PS3.4 N.2):

1. Stored values (``pixel_array``: unused high bits masked, signed values sign-extended).
2. Modality LUT: Rescale Slope / Intercept or a Modality LUT Sequence (``apply_modality_lut``).
3. VOI: a VOI LUT Sequence if present (``apply_voi``), else Window Center / Width (``apply_windowing``, first
   window, its VOI LUT Function), scaled to [0, 1] over the VOI's output range: 0 .. 2**n - 1 for a LUT of n-bit
   entries, pydicom's windowing output range for a window. Without a VOI (or with an unusable one), min-max over the
   image's own range: raw detector images often use a small part of their stored bit depth, which would leave few
   gray levels once the image is made 8-bit for the model. A constant image becomes 0.
4. MONOCHROME1 (high values shown dark) is inverted, ``1 - x``, so that air is dark as in MONOCHROME2. The
   Presentation LUT Shape is not applied on top: DX files set it to INVERSE exactly when they are MONOCHROME1.

Colour (RGB, YBR) data sets are converted to RGB by pydicom, scaled by ``2**BitsStored - 1`` and returned as
(H, W, 3) for imageio's luminance step. Refused with a DataError that says what to do: multi-frame volumes, palette
colour, files without pixel data, compressed transfer syntaxes whose decoder is not installed, damaged files.
"""
from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING

import numpy as np

from engine.errors import DataError

if TYPE_CHECKING:  # pydicom is imported on first use: it adds half a second to every start otherwise
    from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

#: The file suffix of DICOM files (also read without it when the file has the DICM marker).
DICOM_SUFFIX = ".dcm"
_MARKER_AT = 128
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_UNREADABLE = "is not a readable DICOM image (damaged, truncated or not DICOM); re-export it or remove it"
_NO_PIXELS = ("is a DICOM file without image pixels (e.g. a report, a presentation state or a DICOMDIR); remove it, "
              "or export the image itself")
#: Groups of the elements every DICOM image has (SOP common, patient, study/series, image pixel).
_IMAGE_GROUPS = {0x0008, 0x0010, 0x0020, 0x0028}


def has_dicom_marker(data: bytes) -> bool:
    """Whether bytes carry the DICOM file marker ``DICM`` after the 128-byte preamble."""
    return data[_MARKER_AT : _MARKER_AT + 4] == b"DICM"


def is_dicom(data: bytes, name: str) -> bool:
    """Whether bytes called ``name`` are to be read as DICOM: the DICM marker, or a ``.dcm`` name."""
    return has_dicom_marker(data) or name.lower().endswith(DICOM_SUFFIX)


def _read(data: bytes, name: str, *, pixels: bool) -> Dataset:
    """The parsed data set (without the pixel data unless ``pixels``), or a DataError saying it is unreadable."""
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=not pixels)
    except Exception:  # pydicom raises many unrelated types for damaged input
        raise DataError(f"{name} {_UNREADABLE}") from None
    if not has_dicom_marker(data) and not any(tag.group in _IMAGE_GROUPS for tag in ds.keys()):
        raise DataError(f"{name} {_UNREADABLE}")  # force=True "parses" any bytes; a bare data set has these groups
    return ds


def _int(ds: Dataset, keyword: str, default: int = 0) -> int:
    """An integer element's value, ``default`` when absent or empty, a DataError when it is not a number."""
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DataError(f"its {keyword} is {value!r}, not a number") from None


def _transfer_syntax(ds: Dataset) -> str:
    """The Transfer Syntax UID, inferred from the encoding read when a bare data set has no file meta."""
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid:
        return uid
    implicit, little = ds.original_encoding
    return ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


def _require_decoder(uid: str, name: str) -> None:
    """Raise when pydicom has no decoder, or no installed one, for the transfer syntax ``uid``."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    uid = UID(uid)
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise DataError(f"{name} is stored with the transfer syntax {uid.name}, which pydicom cannot decode; export "
                        "it uncompressed (Explicit VR Little Endian)") from None
    if decoder.is_available:
        return
    options = [text.split(" - requires ", 1) for text in decoder.missing_dependencies]
    needs = [deps for _, deps in options if deps]
    if not needs:
        raise DataError(f"{name} is compressed as {uid.name}, and no decoder for it is available; export it "
                        "uncompressed (Explicit VR Little Endian)")
    example = next((deps for label, deps in options if label == "pylibjpeg"), needs[0])
    packages = " ".join(f'"{p.strip()}"' for p in example.replace(" and ", ", ").split(",") if p.strip() != "numpy")
    raise DataError(f"{name} is compressed as {uid.name}, and no decoder for it is installed: install "
                    f"{' or '.join(needs)} (e.g. pip install {packages}), or export it uncompressed")


def _check_image(ds: Dataset, name: str) -> tuple[int, int]:
    """Width and height of a single-frame gray or RGB/YBR DICOM image whose pixels can be decoded, else raise."""
    try:
        frames = _int(ds, "NumberOfFrames", 1)
        width, height = _int(ds, "Columns"), _int(ds, "Rows")
    except DataError as exc:
        raise DataError(f"{name} {_UNREADABLE}: {exc}") from None
    if frames > 1:
        raise DataError(f"{name} is a DICOM volume ({frames} frames, {width} x {height} px each), not a single "
                        "image; export the one frame (slice or projection) to use as its own file")
    if width <= 0 or height <= 0:
        raise DataError(f"{name} {_NO_PIXELS}")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric == "PALETTE COLOR":
        raise DataError(f"{name} is a palette-colour DICOM image; export it as grayscale (MONOCHROME2) or RGB")
    _require_decoder(_transfer_syntax(ds), name)
    return width, height


def dicom_header(data: bytes, name: str) -> tuple[int, int]:
    """Width and height of a DICOM image from its header, without reading the pixel data; DataError if unusable."""
    return _check_image(_read(data, name, pixels=False), name)


def dicom_patient_id(data: bytes, name: str) -> str:
    """The DICOM PatientID (0010,0020) of a file, '' when it has none; read from the header only."""
    value = _read(data, name, pixels=False).get("PatientID", "")
    return str(value or "").strip()


def _unit_range(x: np.ndarray) -> np.ndarray:
    """Min-max scaling of ``x`` over its own range (a constant image becomes 0)."""
    low, high = float(np.min(x)), float(np.max(x))
    if high <= low:
        return np.zeros(x.shape, np.float64)
    return (x - low) / (high - low)


def _voi_lut(x: np.ndarray, ds: Dataset) -> np.ndarray:
    """The first VOI LUT of the VOI LUT Sequence applied to modality values ``x``, scaled to [0, 1]."""
    from pydicom.pixels import apply_voi

    count, first, bits = (int(v) for v in ds.VOILUTSequence[0].LUTDescriptor)
    count = count or 2**16
    # apply_voi indexes the table with integers, in uint16: clip first, so values past the table's end cannot wrap.
    index = np.clip(np.rint(x), first - 1, first + count - 1).astype(np.int64)
    return apply_voi(index, ds).astype(np.float64) / (2.0**bits - 1)


def _window(x: np.ndarray, ds: Dataset) -> np.ndarray:
    """Window Center / Width (the first window) applied to modality values ``x``, scaled to [0, 1]."""
    from pydicom.pixels import apply_windowing

    # The output range is pydicom's (the modality output range of the stored bits): read it off at -inf and +inf.
    low, high = apply_windowing(np.array([-np.inf, np.inf]), ds)
    if high == low:
        raise ValueError("the window's output range is empty")
    return (apply_windowing(x, ds) - low) / (high - low)  # apply_windowing works on a float64 copy


def _voi(x: np.ndarray, ds: Dataset, name: str) -> np.ndarray:
    """Step 3 of the module's pipeline: VOI LUT, else window, else the image's own range; in [0, 1]."""
    sequence = ds.get("VOILUTSequence")
    has_lut = bool(sequence) and "LUTDescriptor" in sequence[0] and "LUTData" in sequence[0]
    has_window = ds.get("WindowCenter") not in (None, "") and ds.get("WindowWidth") not in (None, "")
    try:
        if has_lut:
            return _voi_lut(x, ds)
        if has_window:
            return _window(x, ds)
    except Exception as exc:  # a damaged VOI must not lose an image whose stored values are fine
        log.warning("%s: its VOI (%s) cannot be applied (%s); scaling it over its own range instead", name,
                    "VOI LUT" if has_lut else "window", exc)
    return _unit_range(x)


def decode_dicom(data: bytes, name: str) -> np.ndarray:
    """DICOM bytes as float32 in [0, 1]: gray (H, W) by the module's pipeline, or RGB (H, W, 3) for colour images.

    The caller (``imageio.decode_image_bytes``) checks the size against the pixel limit from the header first.
    """
    from pydicom.pixels import apply_modality_lut

    ds = _read(data, name, pixels=True)
    width, height = _check_image(ds, name)
    if "PixelData" not in ds:
        raise DataError(f"{name} {_NO_PIXELS}")
    if not getattr(ds, "file_meta", None) or "TransferSyntaxUID" not in ds.file_meta:
        from pydicom.dataset import FileMetaDataset

        meta = getattr(ds, "file_meta", None) or FileMetaDataset()
        meta.TransferSyntaxUID = _transfer_syntax(ds)
        ds.file_meta = meta
    try:
        arr = ds.pixel_array
    except MemoryError:
        raise DataError(f"{name} ({width} x {height} px) is too large to decode in the memory available; downscale "
                        "it or lower LUNGLENS_MAX_MEGAPIXELS") from None
    except Exception as exc:  # pydicom raises many types for damaged pixel data
        raise DataError(f"{name} has pixel data that cannot be decoded ({exc}); the file is damaged or truncated: "
                        "re-export it or remove it") from None
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if arr.shape[:2] != (height, width):
        raise DataError(f"{name} decodes to shape {arr.shape} but its header says {width} x {height} px; the file "
                        "is damaged: re-export it or remove it")
    if arr.ndim == 3 and arr.shape[2] == 3 and photometric not in _MONOCHROME:
        return (arr.astype(np.float32) / np.float32(2.0 ** _int(ds, "BitsStored", 8) - 1)).clip(0, 1)
    if arr.ndim != 2 or photometric not in _MONOCHROME:
        raise DataError(f"{name} has {photometric or 'no'} photometric interpretation with pixel array shape "
                        f"{arr.shape}; expected MONOCHROME1/2 (gray) or RGB/YBR colour: export it as grayscale")
    gray = _voi(apply_modality_lut(arr, ds), ds, name)
    if photometric == "MONOCHROME1":
        gray = 1.0 - gray
    return np.clip(gray, 0.0, 1.0).astype(np.float32)
