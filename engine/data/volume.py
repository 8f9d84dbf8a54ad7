"""Reading CT volumes (NIfTI) and their masks into one uint8 (D, H, W) form, with MONAI's loaders and transforms.

The single conversion every volume goes through (``load_volume``), image and masks alike:

0. Header first (nibabel, no voxel read): the file must be NIfTI (``.nii``/``.nii.gz``), 3-D (a 4-D file only with
   one frame), with positive finite voxel sizes and at most ``max_voxels`` voxels; a mask must have its image's
   shape and affine.
1. ``LoadImaged`` (``NibabelReader``), ``EnsureChannelFirstd``, ``Orientationd`` to ``AXCODES`` = "IPL": array axis
   0 runs superior -> inferior (D, slice 0 at the lung apex), axis 1 anterior -> posterior (H, rows as an axial
   slice is shown), axis 2 patient right -> left (W, the radiological view: the patient's right on the viewer's left).
2. Gaussian anti-aliasing of the image before it is downsampled (sigma = (factor - 1) / 2 voxels per axis, as
   scikit-image's resize does), so thin vessels and noise do not alias.
3. ``Spacingd`` to the common spacing ``volume_spacing(size)`` = ``FIELD_OF_VIEW_MM / volume_shape(size)``
   (trilinear for the image, nearest neighbour for masks).
4. ``ScaleIntensityRanged``: the lung window ``HU_WINDOW`` to [0, 1], clipped.
5. ``ResizeWithPadOrCropd`` to ``volume_shape(size)``: centred crop, or padding with 0 (air after the window).

Why no ``Resized`` to the final shape: after resampling to a common spacing, resizing every scan to one box would
undo that spacing (a small patient would fill the box like a large one). Ouyang et al. (§III-E) instead keep one
scale factor for all three axes and pad to 138 x 256 x 256; steps 3 and 5 do the same, with the spacing chosen so
that the box spans ``FIELD_OF_VIEW_MM`` (about theirs: 138 x 2.5 mm by 256 x 1.43 mm) at every run size.

A mask is the resampled label volume ``> 0.5`` (labels 1 or 255, or a probability map).
"""
from __future__ import annotations

import os
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np

from engine.errors import DataError

#: File suffixes (lower case) read as volumes.
VOLUME_SUFFIXES = (".nii.gz", ".nii")
#: Lung window in Hounsfield units mapped to [0, 1]: Ouyang et al.'s (§IV-A: level -600, width 1500, [-1350, 150]).
#: Bone and contrast-filled vessels saturate; ground glass keeps more grey levels than in a wider window.
HU_WINDOW = (-1350.0, 150.0)
#: Orientation of the loaded array in nibabel's axis codes (the direction each array axis runs towards).
AXCODES = "IPL"
#: Extent in mm of the preprocessed box along (D, H, W): about Ouyang's 138 x 2.5 mm by 256 x 1.43 mm.
FIELD_OF_VIEW_MM = (352.0, 384.0, 384.0)
#: Default voxel limit (megavoxels) and the environment variable that changes it.
DEFAULT_MAX_MEGAVOXELS = 300.0
MAX_MEGAVOXELS_ENV = "LUNGLENS_MAX_MEGAVOXELS"
_KEYS = ("image", "mask", "lung_mask")
_AFFINE_TOL_MM = 1e-3


def is_volume(path: str | Path) -> bool:
    """Whether ``path`` has a NIfTI suffix (``.nii`` or ``.nii.gz``, any case)."""
    return str(path).lower().endswith(VOLUME_SUFFIXES)


def volume_stem(path: str | Path) -> str:
    """The file name without its NIfTI suffix (``a.nii.gz`` -> ``a``)."""
    name = Path(path).name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def volume_shape(size: int) -> tuple[int, int, int]:
    """The preprocessed (D, H, W) shape of a run of ``size``: about half as many slices as rows, like Ouyang's."""
    return (size // 2, size, size)


def volume_spacing(size: int) -> tuple[float, float, float]:
    """The common voxel spacing in mm along (D, H, W) at run size ``size`` (the box spans FIELD_OF_VIEW_MM)."""
    return tuple(float(f / n) for f, n in zip(FIELD_OF_VIEW_MM, volume_shape(size)))


def max_voxels() -> int:
    """The voxel limit of every volume read: ``$LUNGLENS_MAX_MEGAVOXELS`` megavoxels, default 300."""
    text = os.environ.get(MAX_MEGAVOXELS_ENV, "").strip()
    try:
        megavoxels = float(text) if text else DEFAULT_MAX_MEGAVOXELS
    except ValueError:
        megavoxels = -1.0
    if megavoxels <= 0:
        raise DataError(f"{MAX_MEGAVOXELS_ENV}={text!r} must be a positive number of megavoxels (the largest "
                        f"volume to accept; default {DEFAULT_MAX_MEGAVOXELS:g})")
    return int(megavoxels * 1_000_000)


def volume_header(path: str | Path) -> tuple[tuple[int, int, int], np.ndarray]:
    """Spatial shape and affine of a NIfTI file, read from its header only; DataError when it cannot be used."""
    path = Path(path)
    if not is_volume(path):
        raise DataError(f"{path} is not a NIfTI volume (.nii or .nii.gz); convert it (for a DICOM series, e.g. "
                        "with dcm2niix) or remove it")
    if not path.is_file():
        raise DataError(f"{path} does not exist; check the path")
    import nibabel as nib

    try:
        img = nib.load(str(path))
        shape, affine, zooms = tuple(int(n) for n in img.shape), np.asarray(img.affine, float), img.header.get_zooms()
    except Exception as exc:  # nibabel raises many types (ImageFileError, EOFError, zlib/gzip errors) for bad files
        raise DataError(f"{path} is not a readable NIfTI volume ({type(exc).__name__}: {exc}); re-export or remove "
                        "it") from None
    if len(shape) < 3 or any(n != 1 for n in shape[3:]):
        what = f"{len(shape)}-D ({' x '.join(map(str, shape))} voxels)"
        hint = "a single image, not a volume: use 2-D image files for 2-D data" if len(shape) < 3 else \
            "a series of volumes: save one 3-D volume (one time point) per file"
        raise DataError(f"{path} is {what}, {hint}")
    spatial = shape[:3]
    _require_voxel_limit(path, spatial)
    if not np.isfinite(affine).all() or not all(np.isfinite(z) and z > 0 for z in zooms[:3]):
        raise DataError(f"{path} has voxel sizes {tuple(float(z) for z in zooms[:3])} mm or a non-finite affine; "
                        "fix its header (pixdim / sform) so that every voxel size is a positive number")
    return spatial, affine


def _require_voxel_limit(path: Path, shape: tuple[int, ...]) -> None:
    """Raise when the volume has more voxels than ``max_voxels``."""
    n, limit = int(np.prod(shape, dtype=np.int64)), max_voxels()
    if n > limit:
        raise DataError(f"{path} is too large: {' x '.join(map(str, shape))} voxels ({n / 1e6:,.1f} megavoxels), "
                        f"above the limit of {limit / 1e6:g} megavoxels; crop or downsample it, or raise the limit "
                        f"with {MAX_MEGAVOXELS_ENV}")


def require_mask_grid(mask: Path, shape: tuple[int, int, int], affine: np.ndarray, image: Path) -> None:
    """Raise when a mask's voxel grid (shape, affine) differs from its image's."""
    mask_shape, mask_affine = volume_header(mask)
    if mask_shape != shape:
        raise DataError(f"mask {mask} is {' x '.join(map(str, mask_shape))} voxels but its image {image} is "
                        f"{' x '.join(map(str, shape))}; masks must be on their image's voxel grid")
    if not np.allclose(mask_affine, affine, atol=_AFFINE_TOL_MM):
        raise DataError(f"mask {mask} has another affine (voxel-to-world position) than its image {image}; save the "
                        "mask on the image's grid (copy the image's header) so that they overlay")


def _torch_from(array: np.ndarray):
    """A torch tensor sharing ``array``'s memory."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(array))


@lru_cache(maxsize=8)
def _loader(keys: tuple[str, ...]):
    """MONAI transforms that load ``keys`` and orient them to AXCODES (channel first)."""
    with warnings.catch_warnings():  # MONAI's LoadImage warns about an optional DICOM codec it does not find
        warnings.simplefilter("ignore", UserWarning)
        from monai.data import NibabelReader
        from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd

        return Compose([
            LoadImaged(keys, reader=NibabelReader(squeeze_non_spatial_dims=True), image_only=True),
            EnsureChannelFirstd(keys, channel_dim="no_channel"),
            Orientationd(keys, axcodes=AXCODES, labels=(("L", "R"), ("P", "A"), ("I", "S"))),  # nibabel's RAS world
        ])


@lru_cache(maxsize=32)
def _resampler(keys: tuple[str, ...], size: int):
    """MONAI transforms that resample ``keys`` to the common spacing, window the image and pad/crop to the box."""
    from monai.transforms import Compose, ResizeWithPadOrCropd, ScaleIntensityRanged, Spacingd

    modes = tuple("bilinear" if k == "image" else "nearest" for k in keys)
    return Compose([
        Spacingd(keys, pixdim=volume_spacing(size), mode=modes, padding_mode="border"),
        ScaleIntensityRanged("image", a_min=HU_WINDOW[0], a_max=HU_WINDOW[1], b_min=0.0, b_max=1.0, clip=True),
        ResizeWithPadOrCropd(keys, spatial_size=volume_shape(size), mode="constant"),
    ])


def _antialias(image, size: int):
    """Gaussian-smooth the oriented image (in place) along each axis it will be downsampled on, sigma (factor - 1) / 2."""
    from scipy.ndimage import gaussian_filter

    spacing = np.linalg.norm(np.asarray(image.affine)[:3, :3], axis=0)
    sigma = [0.0] + [max(0.0, (t / s - 1.0) / 2.0) for t, s in zip(volume_spacing(size), spacing)]
    if max(sigma) > 0.05:  # scipy's kernel sums to 1 and repeats the edge; MONAI's GaussianSmooth does neither
        image.copy_(_torch_from(gaussian_filter(image.numpy(), sigma, mode="nearest", truncate=3.0)))
    return image


def load_volume(path: str | Path, size: int, *, mask: str | Path | None = None,
                lung_mask: str | Path | None = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """A NIfTI CT volume as uint8 ``volume_shape(size)`` (lung window), with its masks as bool arrays (None if absent).

    Masks go through the same orientation, spacing and pad/crop (nearest neighbour), so they stay aligned.
    """
    if not 8 <= size <= 1024:
        raise DataError(f"size={size}: use 8..1024 voxels across")
    path = Path(path)
    shape, affine = volume_header(path)
    files = {"image": path}
    for key, extra in (("mask", mask), ("lung_mask", lung_mask)):
        if extra:
            require_mask_grid(Path(extra), shape, affine, path)
            files[key] = Path(extra)
    keys = tuple(files)
    try:
        data = _loader(keys)({k: str(p) for k, p in files.items()})
    except Exception as exc:  # a header that parses but voxel data that does not (truncated, wrong type)
        raise DataError(f"{path} could not be read as a NIfTI volume ({type(exc).__name__}: {exc}); re-export or "
                        "remove it") from None
    for key in keys:
        if not bool(np.isfinite(data[key].numpy()).all()):
            raise DataError(f"{files[key]} has NaN or infinite voxels; replace them (e.g. with -1024 HU, air) before "
                            "use")
    _antialias(data["image"], size)
    out = _resampler(keys, size)(data)
    image = np.round(out["image"][0].numpy() * 255.0).astype(np.uint8)
    masks = [out[k][0].numpy() > 0.5 if k in out else None for k in _KEYS[1:]]
    return image, masks[0], masks[1]


def write_nifti(path: str | Path, hu: np.ndarray, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0), *,
                dtype: type | np.dtype) -> Path:
    """Write a (D, H, W) volume in the AXCODES layout as NIfTI, stored RAS+ with a centred affine; returns the path.

    ``spacing`` is (slice, row, column) in mm; ``dtype`` e.g. np.int16 for HU, np.uint8 for masks (values rounded).
    """
    vol = np.asarray(hu)
    if vol.ndim != 3:
        raise ValueError(f"expected a (D, H, W) volume, got shape {vol.shape}")
    # (D: I, H: P, W: L) -> RAS+ storage (x: towards R, y: towards A, z: towards S): reverse all, axes (W, H, D).
    ras = vol[::-1, ::-1, ::-1].transpose(2, 1, 0)
    zooms = np.array(spacing[::-1], float)
    affine = np.diag([*zooms, 1.0])
    affine[:3, 3] = -(np.array(ras.shape) - 1) / 2.0 * zooms
    import nibabel as nib

    data = np.round(ras).astype(dtype) if np.issubdtype(np.dtype(dtype), np.integer) else ras.astype(dtype)
    img = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    img.header.set_xyzt_units("mm")
    path = Path(path)
    nib.save(img, str(path))
    return path
