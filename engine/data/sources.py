"""Resolve a data source (``builtin``, ``builtin-4class``, ``builtin-ct`` or a folder path) to a Dataset, generating a
built-in one on first use."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from ..store import home, stable_hash
from .dataset import Dataset
from .folder import load_folder
from .phantom import PhantomSpec, write_phantom_dataset
from .phantom_ct import CTPhantomSpec, write_ct_dataset

BUILTIN = "builtin"
#: The built-in 2-D phantoms in Cheng et al.'s four classes (normal, bacterial, viral, covid), with lesion and lung
#: masks.
BUILTIN_4CLASS = "builtin-4class"
#: The built-in 2-D sources and the PhantomSpec task each generates.
PHANTOM_TASKS = {BUILTIN: "lesions", BUILTIN_4CLASS: "4class"}
#: The built-in 3-D CT phantoms (classes "cap", "covid"; NIfTI volumes with lesion and lung masks).
BUILTIN_CT = "builtin-ct"


@dataclass(frozen=True)
class BuiltinSource:
    """A generated data source: its name, a short name for captions, how a picker offers it and what it holds."""

    name: str
    short: str
    label: str
    caption: str
    ndim: int


#: Every built-in source (generated here, no download), in the order pickers offer them.
BUILTIN_SOURCES: dict[str, BuiltinSource] = {s.name: s for s in (
    BuiltinSource(BUILTIN, "built-in phantoms", "Built-in chest X-ray phantoms (2-D, generated, no download)",
                  "Synthetic chest radiographs: normal, pneumonia (lobar consolidation), covid (bilateral peripheral "
                  "ground-glass opacities), with lesion and lung masks.", 2),
    BuiltinSource(BUILTIN_4CLASS, "built-in four-class phantoms",
                  "Built-in chest X-ray phantoms, Cheng et al.'s four classes (2-D, generated, no download)",
                  "Synthetic chest radiographs in Cheng et al.'s four classes: normal, bacterial pneumonia (dense lobar "
                  "consolidation, mostly one side), viral pneumonia (bilateral perihilar interstitial haze), covid "
                  "(bilateral peripheral ground-glass opacities), with lesion and lung masks.", 2),
    BuiltinSource(BUILTIN_CT, "built-in CT phantoms", "Built-in CT phantoms (3-D NIfTI volumes, generated, no download)",
                  "Synthetic chest CT volumes (NIfTI, in Hounsfield units) as in Ouyang et al. 2020: covid (several "
                  "peripheral ground-glass opacities, mostly bilateral) against community-acquired pneumonia, cap "
                  "(lobar consolidation with air bronchograms); body, lungs with vessels and airways, mediastinum, "
                  "spine and ribs; lesion and lung masks; infection sizes that overlap between the classes.", 3),
)}


def data_label(data: str) -> str:
    """Short name of a data source for captions: a built-in source's short name, else the folder's name."""
    source = BUILTIN_SOURCES.get(str(data))
    return source.short if source else Path(data).name


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
    """Load a built-in dataset (``"builtin"``, ``"builtin-4class"``, ``"builtin-ct"``) or a folder dataset; the builtin
    options are ignored for folders, and the shortcut marker options for ``builtin-ct``."""
    if str(source) == BUILTIN_CT:
        return builtin_ct_dataset(CTPhantomSpec(n_per_class=per_class, seed=seed), progress)
    if str(source) in PHANTOM_TASKS:
        spec = PhantomSpec(
            task=PHANTOM_TASKS[str(source)],
            n_per_class=per_class,
            seed=seed,
            confounder_class=confounder_class if confounder_prob > 0 else None,
            confounder_prob=confounder_prob,
        )
        return builtin_dataset(spec, progress)
    root = Path(source).expanduser()
    if not root.exists():
        raise DataError(f"Data folder {root} does not exist: give '{BUILTIN}', '{BUILTIN_4CLASS}', '{BUILTIN_CT}' or a "
                        "folder laid out as ROOT/images/<class>/*.")
    return load_folder(root, skip_bad=skip_bad)
