"""The in-memory description of a dataset that every loader returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .volume import is_volume

#: Columns of ``Dataset.items``; ``path``, ``mask`` and ``lung_mask`` are absolute paths ("" when absent).
ITEM_COLUMNS = ("file", "path", "label", "y", "group", "split", "mask", "lung_mask")


@dataclass(frozen=True)
class Dataset:
    """A labelled image collection on disk, with its classes, groups and optional masks."""

    root: Path
    name: str
    classes: tuple[str, ...]
    items: pd.DataFrame
    fingerprint: str
    skipped: tuple[tuple[str, str], ...] = field(default=())

    @property
    def has_masks(self) -> bool:
        """Whether any image has a lesion mask."""
        return bool((self.items["mask"] != "").any())

    @property
    def has_lung_masks(self) -> bool:
        """Whether any image has a lung mask."""
        return bool((self.items["lung_mask"] != "").any())

    @property
    def ndim(self) -> int:
        """3 when the images are CT volumes (NIfTI), else 2 (a folder never mixes the two)."""
        return 3 if len(self.items) and is_volume(self.items["path"].iloc[0]) else 2

    def __len__(self) -> int:
        return len(self.items)
