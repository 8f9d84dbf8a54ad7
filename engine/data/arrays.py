"""Decoded, preprocessed images (or CT volumes) and masks of a dataset as arrays, cached on disk per size."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..store import cached_arrays, home
from .dataset import Dataset
from .imageio import read_image, read_mask
from .transforms import preprocess, preprocess_mask
from .volume import load_volume, volume_shape

#: Bump when ``load_volume``'s preprocessing changes, so cached volume arrays are recomputed.
VOLUME_PIPELINE_VERSION = 2


def _array_path(ds: Dataset, size: int, suffix: str = "") -> Path:
    """Cache file of ``ds``'s arrays at ``size`` (volumes carry the pipeline version)."""
    kind = f"{size}px" if ds.ndim == 2 else f"{size}vox-v{VOLUME_PIPELINE_VERSION}"
    return home() / "arrays" / f"{ds.fingerprint}-{kind}{suffix}.npz"


def image_array(ds: Dataset, size: int, *, clahe: bool = False,
                progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """All images of ``ds`` in ``ds.items`` order as uint8 (N, size, size), or (N, D, H, W) volumes (see
    ``engine.data.volume.load_volume``), decoded once and cached."""
    if ds.ndim == 3:
        if clahe:
            raise ConfigError("CLAHE applies to 2-D images; this dataset holds CT volumes (their contrast is set by "
                              "the lung window): turn CLAHE off")
        return _volume_arrays(ds, size, progress)["images"]

    def compute() -> dict[str, np.ndarray]:
        out = np.empty((len(ds.items), size, size), dtype=np.uint8)
        for i, p in enumerate(ds.items["path"]):
            out[i] = preprocess(read_image(p), size, clahe=clahe)
            if progress is not None:
                progress(i + 1, len(out))
        return {"images": out}

    return cached_arrays(_array_path(ds, size, "-clahe" if clahe else ""), compute)["images"]


def _empty_masks(n: int, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """All-False lesion and lung masks and has-mask vectors for ``n`` items of ``shape``."""
    return {"lesion": np.zeros((n, *shape), bool), "lung": np.zeros((n, *shape), bool),
            "has_lesion": np.zeros(n, bool), "has_lung": np.zeros(n, bool)}


def _set_masks(out: dict[str, np.ndarray], i: int, lesion: np.ndarray | None, lung: np.ndarray | None) -> None:
    """Store item ``i``'s masks (None: absent) in ``out``."""
    for key, mask in (("lesion", lesion), ("lung", lung)):
        if mask is not None:
            out[key][i], out[f"has_{key}"][i] = mask, True


def _volume_arrays(ds: Dataset, size: int, progress: Callable[[int, int], None] | None) -> dict[str, np.ndarray]:
    """Volumes and masks of a 3-D dataset, loaded in one pass (each NIfTI read once) and cached together."""
    def compute() -> dict[str, np.ndarray]:
        n = len(ds.items)
        out = {"images": np.empty((n, *volume_shape(size)), np.uint8), **_empty_masks(n, volume_shape(size))}
        for i, row in enumerate(ds.items.itertuples()):
            out["images"][i], lesion, lung = load_volume(row.path, size, mask=row.mask or None,
                                                         lung_mask=row.lung_mask or None)
            _set_masks(out, i, lesion, lung)
            if progress is not None:
                progress(i + 1, n)
        return out

    return cached_arrays(_array_path(ds, size), compute)


def mask_arrays(ds: Dataset, size: int, progress: Callable[[int, int], None] | None = None,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Lesion and lung masks of ``ds`` as bool arrays shaped like ``image_array`` (False where an item has none)
    and two bool (N,) vectors saying which items have each mask; cached."""
    def compute() -> dict[str, np.ndarray]:
        out = _empty_masks(len(ds.items), (size, size))
        for i, row in enumerate(ds.items.itertuples()):
            _set_masks(out, i, *(preprocess_mask(read_mask(p), size) if p else None for p in (row.mask, row.lung_mask)))
            if progress is not None:
                progress(i + 1, len(out["has_lung"]))
        return out

    arrays = _volume_arrays(ds, size, progress) if ds.ndim == 3 else \
        cached_arrays(_array_path(ds, size, "-masks"), compute)
    return arrays["lesion"], arrays["lung"], arrays["has_lesion"], arrays["has_lung"]
