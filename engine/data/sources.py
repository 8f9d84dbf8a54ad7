"""Resolve a data source (``builtin`` or a folder path) to a Dataset, generating the built-in one on first use."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import DataError
from ..store import home, stable_hash
from .dataset import Dataset
from .folder import load_folder
from .phantom import PhantomSpec, write_phantom_dataset

BUILTIN = "builtin"


def builtin_root(spec: PhantomSpec) -> Path:
    """Cache folder of the built-in dataset made from ``spec``."""
    return home() / "datasets" / f"builtin-{spec.task}-{stable_hash(spec.to_dict(), 12)}"


def builtin_dataset(spec: PhantomSpec, progress: Callable[[int, int], None] | None = None) -> Dataset:
    """The built-in phantom dataset for ``spec``, generated into the cache once."""
    root = write_phantom_dataset(builtin_root(spec), spec, progress)
    return load_folder(root)


def load_dataset(
    source: str | Path = BUILTIN,
    *,
    per_class: int = 300,
    confounder_class: str | None = None,
    confounder_prob: float = 0.0,
    seed: int = 0,
    skip_bad: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Dataset:
    """Load the built-in dataset (``"builtin"``) or a folder dataset; the builtin options are ignored for folders."""
    if str(source) == BUILTIN:
        spec = PhantomSpec(
            task="lesions",
            n_per_class=per_class,
            seed=seed,
            confounder_class=confounder_class if confounder_prob > 0 else None,
            confounder_prob=confounder_prob,
        )
        return builtin_dataset(spec, progress)
    root = Path(source).expanduser()
    if not root.exists():
        raise DataError(f"Data folder {root} does not exist: give 'builtin' or a folder laid out as ROOT/images/<class>/*.")
    return load_folder(root, skip_bad=skip_bad)
