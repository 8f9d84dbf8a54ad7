"""Resolve a data source (``builtin``, ``builtin-ct`` or a folder path) to a Dataset, generating a built-in one on
first use."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import DataError
from ..store import home, stable_hash
from .dataset import Dataset
from .folder import load_folder
from .phantom import PhantomSpec, write_phantom_dataset
from .phantom_ct import CTPhantomSpec, write_ct_dataset

BUILTIN = "builtin"
#: The built-in 3-D CT phantoms (classes "cap", "covid"; NIfTI volumes with lesion and lung masks).
BUILTIN_CT = "builtin-ct"


def builtin_root(spec: PhantomSpec | CTPhantomSpec) -> Path:
    """Cache folder of the built-in dataset made from ``spec``."""
    kind = spec.task if isinstance(spec, PhantomSpec) else "ct"
    return home() / "datasets" / f"builtin-{kind}-{stable_hash(spec.to_dict(), 12)}"


def builtin_dataset(spec: PhantomSpec, progress: Callable[[int, int], None] | None = None) -> Dataset:
    """The built-in phantom dataset for ``spec``, generated into the cache once."""
    root = write_phantom_dataset(builtin_root(spec), spec, progress)
    return load_folder(root)


def builtin_ct_dataset(spec: CTPhantomSpec, progress: Callable[[int, int], None] | None = None) -> Dataset:
    """The built-in CT phantom dataset for ``spec``, generated into the cache once."""
    return load_folder(write_ct_dataset(builtin_root(spec), spec, progress))


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
    """Load a built-in dataset (``"builtin"``, ``"builtin-ct"``) or a folder dataset; the builtin options are ignored
    for folders, and the shortcut marker options for ``builtin-ct``."""
    if str(source) == BUILTIN_CT:
        return builtin_ct_dataset(CTPhantomSpec(n_per_class=per_class, seed=seed), progress)
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
        raise DataError(f"Data folder {root} does not exist: give '{BUILTIN}', '{BUILTIN_CT}' or a folder laid out as "
                        "ROOT/images/<class>/*.")
    return load_folder(root, skip_bad=skip_bad)
