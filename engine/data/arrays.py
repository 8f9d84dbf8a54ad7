"""Decoded, preprocessed images of a dataset as one uint8 array, cached on disk per size and preprocessing."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..store import cached_arrays, home
from .dataset import Dataset
from .imageio import read_image
from .transforms import preprocess


def image_array(ds: Dataset, size: int, *, clahe: bool = False,
                progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """All images of ``ds`` in ``ds.items`` order as uint8 (N, size, size), decoded once and cached."""
    path = home() / "arrays" / f"{ds.fingerprint}-{size}px{'-clahe' if clahe else ''}.npz"

    def compute() -> dict[str, np.ndarray]:
        out = np.empty((len(ds.items), size, size), dtype=np.uint8)
        for i, p in enumerate(ds.items["path"]):
            out[i] = preprocess(read_image(p), size, clahe=clahe)
            if progress is not None:
                progress(i + 1, len(out))
        return {"images": out}

    return cached_arrays(path, compute)["images"]
