"""The in-memory description of a dataset that every loader returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

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

    def __len__(self) -> int:
        return len(self.items)
