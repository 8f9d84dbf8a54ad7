"""What a dataset holds, in numbers the Home page shows before training: images per class and split, masks, image
sizes and one preview per class, all read from the data itself."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd

from .data.dataset import Dataset
from .data.imageio import image_header, read_bytes, read_image, read_mask
from .data.splits import SPLITS, assign_splits
from .data.transforms import preprocess, preprocess_mask
from .errors import LungLensError

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


@dataclass(frozen=True)
class DataSummary:
    """A dataset's classes with their image, split and mask counts, its image sizes and a preview per class."""

    classes: tuple[str, ...]
    #: One row per class (index: class name) and a final ``all`` row; columns ``COUNT_COLUMNS``.
    table: pd.DataFrame
    groups: int
    skipped: int
    #: How the train/val/test split is made (from the manifest or carved), or why it cannot be.
    split_note: str
    split_problem: str | None
    #: ((width, height), number of sampled images) pairs, most common first, and how many headers were read.
    sizes: tuple[tuple[tuple[int, int], int], ...]
    sampled: int
    formats: tuple[str, ...]
    previews: tuple[Preview, ...]

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
        """The stored image sizes: one size, or the range, and how many headers that is based on."""
        if not self.sizes:
            return "unknown"
        (w, h), _ = self.sizes[0]
        if len(self.sizes) == 1:
            size = f"all {w} × {h} px"
        else:
            widths = [s[0][0] for s in self.sizes]
            heights = [s[0][1] for s in self.sizes]
            size = (f"{len(self.sizes)} sizes from {min(widths)} × {min(heights)} to {max(widths)} × {max(heights)} "
                    f"px, most often {w} × {h}")
        of = "every image" if self.sampled == self.images else f"{self.sampled} of {self.images:,} images sampled"
        return f"{size} ({', '.join(self.formats)}; {of})"


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


def _sizes(ds: Dataset, sample: int) -> tuple[Counter, set[str], int]:
    """Stored (width, height) counts and formats of up to ``sample`` evenly spaced images (headers only)."""
    paths = ds.items["path"].tolist()
    picks = sorted(set(np.linspace(0, len(paths) - 1, min(sample, len(paths))).round().astype(int)))
    sizes, formats = Counter(), set()
    for i in picks:
        fmt, width, height, orientation = image_header(read_bytes(paths[i]), paths[i])
        sizes[(height, width) if orientation >= 5 else (width, height)] += 1  # EXIF 5-8: shown turned a quarter
        formats.add(fmt)
    return sizes, formats, len(picks)


def _preview(row: pd.Series, size: int, clahe: bool) -> Preview:
    """The image of ``row`` as the model sees it (resized, CLAHE when chosen), its lesion mask outlined."""
    gray = preprocess(read_image(row["path"]), size, clahe=clahe)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    if row["mask"]:
        mask = preprocess_mask(read_mask(row["mask"]), size).astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(rgb, contours, -1, OUTLINE, 1)
    return Preview(str(row["label"]), str(row["file"]), rgb, bool(row["mask"]))


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
    sizes, formats, sampled = _sizes(ds, sample)
    previews = []
    for c in ds.classes:
        mine = ds.items[ds.items["label"] == c]
        with_mask = mine[mine["mask"] != ""]
        previews.append(_preview((with_mask if len(with_mask) else mine).iloc[0], thumb, clahe))
    return DataSummary(
        classes=tuple(ds.classes), table=_count_table(ds, split), groups=int(ds.items["group"].nunique()),
        skipped=len(ds.skipped), split_note=_split_note(ds, folds, test_fraction, val_fraction),
        split_problem=problem, sizes=tuple(sizes.most_common()), sampled=sampled, formats=tuple(sorted(formats)),
        previews=tuple(previews))
