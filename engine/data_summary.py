"""What a dataset holds, in numbers the Home page shows before training: images (or CT volumes) per class and split,
masks, image sizes or volume shapes and voxel sizes, one preview per class, and the spread of the infection ratios,
all read from the data itself."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd

from .data.arrays import mask_arrays
from .data.dataset import Dataset
from .data.imageio import image_header, read_bytes, read_image, read_mask
from .data.splits import SPLITS, assign_splits
from .data.transforms import preprocess, preprocess_mask
from .data.volume import load_volume, volume_header
from .errors import LungLensError
from .progress import CancelCheck, Progress, step

#: Image headers read to describe the sizes (evenly spaced over the files); every header of a small dataset.
SIZE_SAMPLE = 200
#: Side of a preview thumbnail in pixels.
THUMB = 128
#: Lesion outline colour on a thumbnail (RGB).
OUTLINE = (230, 60, 60)
#: The split columns of ``DataSummary.table``.
COUNT_COLUMNS = ("images", *SPLITS, "lesion_masks", "lung_masks")


@dataclass(frozen=True)
class Preview:
    """One thumbnail of a class: the file it shows and its RGB pixels (lesion outlined when it has a mask)."""

    label: str
    file: str
    pixels: np.ndarray
    outlined: bool
    #: For a volume: the axial slice shown (0 = the first, superior) and the number of slices; None for an image.
    slice: tuple[int, int] | None = None


@dataclass(frozen=True)
class DataSummary:
    """A dataset's classes with their image, split and mask counts, its image sizes and a preview per class."""

    classes: tuple[str, ...]
    #: 2 for images, 3 for CT volumes: then ``images`` counts volumes, ``sizes`` holds (slices, rows, columns)
    #: shapes and ``voxel_mm`` the range of voxel sizes.
    ndim: int
    #: One row per class (index: class name) and a final ``all`` row; columns ``COUNT_COLUMNS``.
    table: pd.DataFrame
    groups: int
    skipped: int
    #: How the train/val/test split is made (from the manifest or carved), or why it cannot be.
    split_note: str
    split_problem: str | None
    #: ((width, height), number of sampled images) pairs (volumes: ((slices, rows, columns), number)), most common
    #: first, and how many headers were read.
    sizes: tuple[tuple[tuple[int, ...], int], ...]
    sampled: int
    formats: tuple[str, ...]
    previews: tuple[Preview, ...]
    #: Volumes: the smallest and largest voxel size in mm along (slices, rows, columns) of the sampled headers.
    voxel_mm: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None

    @property
    def unit(self) -> str:
        """What one item is: ``images`` or ``volumes``."""
        return "volumes" if self.ndim == 3 else "images"

    @property
    def images(self) -> int:
        """Images in the dataset (those skipped as unreadable not counted)."""
        return int(self.table.loc["all", "images"])

    def classes_text(self) -> str:
        """``3 classes: covid (600), non_covid (400), normal (400)``."""
        counts = ", ".join(f"{c} ({int(self.table.loc[c, 'images']):,})" for c in self.classes)
        return f"{len(self.classes)} classes: {counts}"

    def masks_text(self) -> str:
        """Which classes have lesion and lung masks, and for how many of their images."""
        return f"Lesion masks: {self._mask_text('lesion_masks')}. Lung masks: {self._mask_text('lung_masks')}."

    def _mask_text(self, column: str) -> str:
        having = [c for c in self.classes if self.table.loc[c, column] > 0]
        if not having:
            return "none"
        return ", ".join(f"{c} {int(self.table.loc[c, column]):,} of {int(self.table.loc[c, 'images']):,}"
                         for c in having)

    def sizes_text(self) -> str:
        """The stored image sizes (volume shapes and voxel sizes): one, or the range, and how many headers that is
        based on."""
        if not self.sizes:
            return "unknown"
        of = "every " + self.unit[:-1] if self.sampled == self.images else \
            f"{self.sampled} of {self.images:,} {self.unit} sampled"
        if self.ndim == 3:
            return f"{self._shapes_text()}; voxels {self._voxels_text()} ({', '.join(self.formats)}; {of})"
        (w, h), _ = self.sizes[0]
        if len(self.sizes) == 1:
            size = f"all {w} × {h} px"
        else:
            widths = [s[0][0] for s in self.sizes]
            heights = [s[0][1] for s in self.sizes]
            size = (f"{len(self.sizes)} sizes from {min(widths)} × {min(heights)} to {max(widths)} × {max(heights)} "
                    f"px, most often {w} × {h}")
        return f"{size} ({', '.join(self.formats)}; {of})"

    def _shapes_text(self) -> str:
        """``all 64 × 128 × 128 voxels (slices × rows × columns)``, or the most common of several shapes."""
        shape = " × ".join(map(str, self.sizes[0][0]))
        if len(self.sizes) == 1:
            return f"all {shape} voxels (slices × rows × columns)"
        return f"{len(self.sizes)} shapes, most often {shape} voxels (slices × rows × columns)"

    def _voxels_text(self) -> str:
        """``2.5 × 0.70-0.78 × 0.70-0.78 mm``: each axis' voxel size, or its range."""
        low, high = self.voxel_mm or ((np.nan,) * 3, (np.nan,) * 3)
        return " × ".join(f"{a:.2f}" if np.isclose(a, b) else f"{a:.2f}-{b:.2f}" for a, b in zip(low, high)) + " mm"


def _split_note(ds: Dataset, folds: int, test_fraction: float, val_fraction: float) -> str:
    """How ``assign_splits`` makes this dataset's split with these options, in words."""
    given = set(ds.items["split"].fillna("").astype(str).str.strip().str.lower())
    test = "test: as the manifest marks it" if "test" in given else f"test: about {test_fraction:.0%} carved"
    if folds > 1:
        val = f"validation: fold 0 of {folds} cross-validation folds of the rest (each fold's run holds out another)"
    elif "val" in given:
        val = "validation: as the manifest marks it"
    else:
        val = f"validation: about {val_fraction:.0%} carved"
    return f"{test}; {val}; stratified by class, and images of one patient or group stay in one split"


def _count_table(ds: Dataset, split: np.ndarray | None) -> pd.DataFrame:
    """Images, per-split images and masks per class, and their totals (split columns 0 when there is no split)."""
    items = ds.items.assign(split_=split if split is not None else "")
    rows = {}
    for c in ds.classes:
        mine = items[items["label"] == c]
        rows[c] = {"images": len(mine), **{s: int((mine["split_"] == s).sum()) for s in SPLITS},
                   "lesion_masks": int((mine["mask"] != "").sum()), "lung_masks": int((mine["lung_mask"] != "").sum())}
    table = pd.DataFrame.from_dict(rows, orient="index")[list(COUNT_COLUMNS)]
    table.loc["all"] = table.sum()
    return table.astype(int)


def _picks(ds: Dataset, sample: int) -> list[str]:
    """Up to ``sample`` evenly spaced paths of the dataset's items."""
    paths = ds.items["path"].tolist()
    return [paths[i] for i in sorted(set(np.linspace(0, len(paths) - 1, min(sample, len(paths))).round().astype(int)))]


def _sizes(ds: Dataset, sample: int) -> tuple[Counter, set[str], int]:
    """Stored (width, height) counts and formats of up to ``sample`` evenly spaced images (headers only)."""
    picks = _picks(ds, sample)
    sizes, formats = Counter(), set()
    for path in picks:
        fmt, width, height, orientation = image_header(read_bytes(path), path)
        sizes[(height, width) if orientation >= 5 else (width, height)] += 1  # EXIF 5-8: shown turned a quarter
        formats.add(fmt)
    return sizes, formats, len(picks)


def volume_geometry(path: str) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """A NIfTI file's shape and voxel size in mm as the runs orient it, (slices, rows, columns) = (superior-inferior,
    anterior-posterior, left-right), read from its header."""
    import nibabel as nib

    shape, affine = volume_header(path)
    world = nib.orientations.io_orientation(affine)[:, 0].astype(int)  # the world axis (x R-L, y A-P, z S-I) of each
    mm = np.linalg.norm(affine[:3, :3], axis=0)                          # array axis, and its voxel size
    order = [int(np.flatnonzero(world == w)[0]) for w in (2, 1, 0)]
    return tuple(int(shape[i]) for i in order), tuple(float(mm[i]) for i in order)


def _volume_sizes(ds: Dataset, sample: int) -> tuple[Counter, set[str], int, tuple]:
    """Shape counts, formats, headers read and the (smallest, largest) voxel sizes of up to ``sample`` volumes."""
    picks = _picks(ds, sample)
    shapes, spacings = Counter(), []
    for path in picks:
        shape, mm = volume_geometry(path)
        shapes[shape] += 1
        spacings.append(mm)
    formats = {"NIfTI (.nii.gz)" if p.lower().endswith(".gz") else "NIfTI (.nii)" for p in picks}
    grid = np.array(spacings)
    return shapes, formats, len(picks), (tuple(grid.min(0).tolist()), tuple(grid.max(0).tolist()))


def _outlined(gray: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """A uint8 grey image as RGB, the outline of ``mask`` (when given) drawn in ``OUTLINE``."""
    rgb = np.repeat(gray[..., None], 3, axis=2)
    if mask is not None:
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(rgb, contours, -1, OUTLINE, 1)
    return rgb


def _preview(row: pd.Series, size: int, clahe: bool) -> Preview:
    """The image of ``row`` as the model sees it (resized, CLAHE when chosen), its lesion mask outlined."""
    gray = preprocess(read_image(row["path"]), size, clahe=clahe)
    mask = preprocess_mask(read_mask(row["mask"]), size) if row["mask"] else None
    return Preview(str(row["label"]), str(row["file"]), _outlined(gray, mask), bool(row["mask"]))


def most_lesion_slice(lesion: np.ndarray) -> int:
    """The axial slice (axis 0) of a (D, H, W) mask with the most lesion voxels; the middle one without a lesion."""
    return int(lesion.sum(axis=(1, 2)).argmax()) if lesion.any() else lesion.shape[0] // 2


def _volume_preview(row: pd.Series, size: int) -> Preview:
    """The axial slice with the most lesion of the volume of ``row`` as the model sees it (resampled, lung window,
    padded to ``volume_shape(size)``), its lesion outlined; the middle slice when it has no lesion mask."""
    volume, lesion, _ = load_volume(row["path"], size, mask=row["mask"] or None)
    k = volume.shape[0] // 2 if lesion is None else most_lesion_slice(lesion)
    return Preview(str(row["label"]), str(row["file"]), _outlined(volume[k], None if lesion is None else lesion[k]),
                   lesion is not None, (k, volume.shape[0]))


def data_summary(ds: Dataset, *, test_fraction: float = 0.2, val_fraction: float = 0.15, folds: int = 1,
                 seed: int = 0, clahe: bool = False, sample: int = SIZE_SAMPLE, thumb: int = THUMB) -> DataSummary:
    """Counts per class and split (the split a run with these options makes; fold 0 with k folds), masks per class,
    stored image sizes (``sample`` headers) and one preview per class (its first image with a lesion mask, if any)."""
    try:
        split = assign_splits(ds.items, test_fraction=test_fraction, val_fraction=val_fraction, folds=folds, fold=0,
                              seed=seed).to_numpy()
        problem = None
    except LungLensError as exc:
        split, problem = None, str(exc)
    volumes = ds.ndim == 3
    voxel_mm = None
    if volumes:
        sizes, formats, sampled, voxel_mm = _volume_sizes(ds, sample)
    else:
        sizes, formats, sampled = _sizes(ds, sample)
    previews = []
    for c in ds.classes:
        mine = ds.items[ds.items["label"] == c]
        with_mask = mine[mine["mask"] != ""]
        row = (with_mask if len(with_mask) else mine).iloc[0]
        previews.append(_volume_preview(row, thumb) if volumes else _preview(row, thumb, clahe))
    return DataSummary(
        classes=tuple(ds.classes), ndim=ds.ndim, table=_count_table(ds, split), groups=int(ds.items["group"].nunique()),
        skipped=len(ds.skipped), split_note=_split_note(ds, folds, test_fraction, val_fraction),
        split_problem=problem, sizes=tuple(sizes.most_common()), sampled=sampled, formats=tuple(sorted(formats)),
        previews=tuple(previews), voxel_mm=voxel_mm)


#: The spread columns of ``infection_spread``'s table (then one column per Table III size group: its share).
SPREAD_COLUMNS = ("n", "min", "q1", "median", "q3", "max")


def infection_spread(ds: Dataset, size: int, *, progress: Progress | None = None,
                     cancel: CancelCheck | None = None) -> pd.DataFrame:
    """Infection / lung ratio per class at the run size ``size`` (what size-balanced sampling and Table III use):
    the number of items with both masks, min, quartiles and max, and the share in each of Ouyang et al.'s Table III
    size groups (``engine.ouyang.SIZE_GROUPS``). One row per class holding such items (empty without masks)."""
    from .guidance import infection_ratios
    from .ouyang import SIZE_GROUPS, size_group

    def masks_read(done: int, total: int) -> None:
        step(progress, cancel, done / total, f"reading the masks: {done} of {total}")

    mask_arrays(ds, size, progress=masks_read)  # read once and cached on disk; infection_ratios then reads the cache
    ratios = infection_ratios(ds, size)
    labels = ds.items["label"].to_numpy()
    rows = {}
    for c in ds.classes:
        mine = ratios[(labels == c) & np.isfinite(ratios)]
        if not len(mine):
            continue
        q = np.quantile(mine, [0.0, 0.25, 0.5, 0.75, 1.0])
        groups = size_group(mine)
        rows[c] = {"n": len(mine), **dict(zip(SPREAD_COLUMNS[1:], q.tolist())),
                   **{name: float((groups == name).mean()) for name, _, _ in SIZE_GROUPS}}
    return pd.DataFrame.from_dict(rows, orient="index")
