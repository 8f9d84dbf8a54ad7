"""Loading a user's image folder (class folders, optional masks, optional manifest) into a checked Dataset.

Layouts, in order of precedence:

* ``ROOT/manifest.csv`` with columns ``file,class`` (paths relative to ROOT) and optional ``patient_id``, ``group_id``,
  ``sim_group``, ``split`` (train/val/test or empty), ``mask_file``, ``lung_mask_file``. Masks come only from the
  manifest's columns.
* ``ROOT/images/<class>/...`` with optional lesion masks ``ROOT/masks/<class>/...`` and lung masks
  ``ROOT/lung_masks/<class>/...``, matched to their image by relative folder and file stem.
* ``ROOT/<class>/...`` (no masks).

Images are the files with a suffix in ``IMAGE_SUFFIXES`` and DICOM files of any name (the ``DICM`` marker; a
``DICOMDIR`` index is not an image), or CT volumes: NIfTI files (``VOLUME_SUFFIXES``; their masks NIfTI too, on the
image's voxel grid). A folder holds either 2-D images or volumes, never both. A DICOM image's PatientID is its ``patient_id`` (the group that keeps one
patient's images in one split) unless the manifest gives the row a ``patient_id`` or ``group_id`` of its own.
"""
from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from engine.data.dataset import ITEM_COLUMNS, Dataset
from engine.data.dicom import dicom_patient_id, has_dicom_marker, is_dicom
from engine.data.imageio import IMAGE_SUFFIXES, decode_image_bytes, read_bytes
from engine.data.volume import VOLUME_SUFFIXES, is_volume, require_mask_grid, volume_header, volume_stem
from engine.errors import DataError
from engine.store import stable_hash

log = logging.getLogger(__name__)

MANIFEST = "manifest.csv"
REQUIRED_COLUMNS = ("file", "class")
GROUP_COLUMNS = ("patient_id", "group_id", "sim_group")
MASK_COLUMNS = ("mask_file", "lung_mask_file")
SPLIT_VALUES = ("train", "val", "test", "")
_MASK_DIRS = {"mask_file": "masks", "lung_mask_file": "lung_masks"}
_ENTRY_COLUMNS = ("file", "label", *MASK_COLUMNS, *GROUP_COLUMNS, "split", "where")
_SKIP_HINT = "; to skip bad images and go on, pass --skip-bad (skip_bad=True)"


def _is_image_file(path: Path) -> bool:
    """Whether ``path`` is a visible file with an image suffix, or a DICOM file (DICM marker) of any other name."""
    if not path.is_file() or path.name.startswith("."):
        return False
    if path.suffix.lower() in IMAGE_SUFFIXES or is_volume(path):
        return True
    if path.name.upper() == "DICOMDIR":
        return False
    try:
        with path.open("rb") as file:
            return has_dicom_marker(file.read(132))
    except OSError:
        return False


def _stem_key(path: Path) -> str:
    """``path`` (POSIX) without its image or volume suffix: what matches an image to its masks."""
    if is_volume(path):
        return path.with_name(volume_stem(path)).as_posix()
    return (path.with_suffix("") if path.suffix.lower() in IMAGE_SUFFIXES else path).as_posix()


def _mask_index(folder: Path, root: Path) -> dict[str, str]:
    """Map ``<class>/<subfolders>/<stem>`` to each mask file's path relative to ``root``."""
    index: dict[str, str] = {}
    if not folder.is_dir():
        return index
    for path in sorted(p for p in folder.rglob("*") if _is_image_file(p)):
        key = _stem_key(path.relative_to(folder))
        if key in index:
            raise DataError(f"{root / index[key]} and {path} are two masks for the same image stem; keep one")
        index[key] = path.relative_to(root).as_posix()
    return index


def _layout_entries(root: Path) -> tuple[pd.DataFrame, list[str]]:
    """Images found in class folders (with masks matched by stem) and the class names."""
    base = root / "images"
    if not base.is_dir():
        for extra in _MASK_DIRS.values():
            if (root / extra).is_dir():
                raise DataError(f"{root} has a {extra}/ folder but no images/ folder; move the class folders into "
                                f"{base} so that masks can be matched to images")
        base = root
    class_dirs = sorted(d for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    _refuse_looping_class_dirs(base, class_dirs)
    masks = {column: _mask_index(root / folder, root) for column, folder in _MASK_DIRS.items()}
    records = []
    for class_dir in class_dirs:
        for path in sorted(p for p in class_dir.rglob("*") if _is_image_file(p)):
            key = _stem_key(path.relative_to(base))
            records.append({"file": path.relative_to(root).as_posix(), "label": class_dir.name,
                            **{column: index.pop(key, "") for column, index in masks.items()}})
    for column, index in masks.items():
        if index:
            orphans = sorted(index.values())
            raise DataError(f"{len(orphans)} mask(s) in {root / _MASK_DIRS[column]} have no image of the same class "
                            f"folder and stem under {base}, e.g. {root / orphans[0]}; rename or remove them")
    entries = pd.DataFrame.from_records(records, columns=["file", "label", *MASK_COLUMNS])
    for column in (*GROUP_COLUMNS, "split", "where"):
        entries[column] = ""
    return entries, [d.name for d in class_dirs]


def _refuse_looping_class_dirs(base: Path, class_dirs: list[Path]) -> None:
    """Raise when a class folder is a link to the dataset folder, one of its ancestors, or another class folder."""
    resolved = {d: d.resolve() for d in class_dirs}
    top = base.resolve()
    for d in (d for d in class_dirs if d.is_symlink()):
        target = resolved[d]
        twin = next((o for o in class_dirs if o != d and resolved[o] == target), None)
        if target == top or target in top.parents or twin is not None:
            what = f"the class folder {twin.name}" if twin else f"{target}, which holds the class folders"
            raise DataError(f"class folder {d} is a link to {what}: its images would be a second, duplicate class. "
                            f"Remove the link {d} (or replace it with a real folder of that class's own images)")


def _refuse_cross_label_duplicates(entries: pd.DataFrame, hashes: list[list[str]], root: Path) -> None:
    """Raise when the same image content appears under two class labels (it would teach the model both)."""
    first: dict[str, tuple[str, str]] = {}
    for file, label, content in zip(entries["file"], entries["label"], hashes):
        seen = first.setdefault(content[0], (file, label))
        if seen[1] != label:
            raise DataError(f"{root / seen[0]} (class '{seen[1]}') and {root / file} (class '{label}') are the same "
                            "image (identical content) under two labels; keep it in one class only")


def _clean_relpath(text: str) -> str:
    """A manifest path in POSIX form without ``./`` (Windows backslashes accepted)."""
    return PurePosixPath(text.replace("\\", "/")).as_posix() if text else ""


def _manifest_entries(root: Path) -> tuple[pd.DataFrame, list[str]]:
    """Rows of ``ROOT/manifest.csv``, validated, and the class names they use."""
    path = root / MANIFEST
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not a readable CSV file ({exc}); fix it or delete it to use the folder "
                        "layout") from None
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"{path} lacks the required column(s) {', '.join(missing)} (it has: "
                        f"{', '.join(table.columns)}); a manifest needs 'file' (path relative to {root}) and 'class'")
    table = table.apply(lambda column: column.str.strip())
    for column in (*MASK_COLUMNS, *GROUP_COLUMNS, "split"):
        if column not in table.columns:
            table[column] = ""
    lines = np.arange(len(table)) + 2  # CSV line numbers: the header is line 1
    blank = lines[(table["file"] == "") | (table["class"] == "")]
    if len(blank):
        raise DataError(f"{path} line(s) {', '.join(map(str, blank[:5]))} have an empty 'file' or 'class'; fill "
                        "them in or delete those rows")
    for column in ("file", *MASK_COLUMNS):
        table[column] = table[column].map(_clean_relpath)
    duplicated = table["file"][table["file"].duplicated()]
    if len(duplicated):
        raise DataError(f"{path} lists {duplicated.iloc[0]} more than once; keep one row per image")
    table["split"] = table["split"].str.lower()
    bad_split = ~table["split"].isin(SPLIT_VALUES)
    if bad_split.any():
        line, value = lines[bad_split][0], table["split"][bad_split].iloc[0]
        raise DataError(f"{path} line {line} has split '{value}'; use train, val, test or leave it empty")
    entries = table.rename(columns={"class": "label"})
    entries["where"] = [f"{path} line {line}: " for line in lines]
    return entries[list(_ENTRY_COLUMNS)], sorted(entries["label"].unique())


def _inspect_volume(root: Path, entry: dict[str, str]) -> tuple[list[str], str] | str:
    """Content hashes of a volume entry's image and masks ('' PatientID), or why it is unusable; reads headers only."""
    try:
        image_path = root / entry["file"]
        shape, affine = volume_header(image_path)
        hashes = [hashlib.sha256(read_bytes(image_path)).hexdigest()]
        for column in MASK_COLUMNS:
            if entry[column]:
                require_mask_grid(root / entry[column], shape, affine, image_path)
            hashes.append(hashlib.sha256(read_bytes(root / entry[column])).hexdigest() if entry[column] else "")
    except DataError as exc:
        return f"{entry['where']}{exc}"
    return hashes, ""


def _refuse_mixed_dimensions(root: Path, entries: pd.DataFrame) -> None:
    """Raise when a dataset mixes 2-D images and 3-D volumes (one model cannot take both)."""
    volumes = entries["file"].map(is_volume)
    if volumes.any() and not volumes.all():
        raise DataError(f"{root} mixes {int(volumes.sum())} volume(s) ({', '.join(VOLUME_SUFFIXES)}, e.g. "
                        f"{entries['file'][volumes].iloc[0]}) with {int((~volumes).sum())} 2-D image(s) (e.g. "
                        f"{entries['file'][~volumes].iloc[0]}); keep one kind per dataset folder")


def _inspect(root: Path, entry: dict[str, str]) -> tuple[list[str], str] | str:
    """Content hashes of an entry's image and masks and its DICOM PatientID ('' if none), or why it is unusable."""
    if is_volume(entry["file"]):
        return _inspect_volume(root, entry)
    try:
        image_path = root / entry["file"]
        data = read_bytes(image_path)
        shape = decode_image_bytes(data, str(image_path)).shape
        patient = dicom_patient_id(data, str(image_path)) if is_dicom(data, str(image_path)) else ""
        hashes = [hashlib.sha256(data).hexdigest()]
        for column in MASK_COLUMNS:
            if not entry[column]:
                hashes.append("")
                continue
            mask_path = root / entry[column]
            mask_data = read_bytes(mask_path)
            mask_shape = decode_image_bytes(mask_data, str(mask_path)).shape
            if mask_shape != shape:
                raise DataError(f"mask {mask_path} is {mask_shape[1]}x{mask_shape[0]} (width x height) but its image "
                                f"{image_path} is {shape[1]}x{shape[0]}; masks must have their image's size")
            hashes.append(hashlib.sha256(mask_data).hexdigest())
    except DataError as exc:
        return f"{entry['where']}{exc}"
    return hashes, patient


def _groups(entries: pd.DataFrame, columns: tuple[str, ...] = GROUP_COLUMNS) -> list[str]:
    """Group key per entry: connected components over shared values of ``columns``, else the file."""
    n = len(entries)
    links = entries[list(columns)].reset_index(drop=True).melt(ignore_index=False)
    links = links[links["value"] != ""]
    key_codes, keys = pd.factorize(links["variable"] + ":" + links["value"])
    image_nodes = links.index.to_numpy()
    # Bipartite graph image -- key: images sharing any key end up in one component.
    graph = coo_matrix((np.ones(len(links)), (image_nodes, n + key_codes)), shape=(n + len(keys), n + len(keys)))
    _, component = connected_components(graph, directed=False)
    linked = np.zeros(n, dtype=bool)
    linked[image_nodes] = True
    numbers: dict[int, int] = {}
    return [f"g{numbers.setdefault(component[i], len(numbers)):04d}" if linked[i] else file
            for i, file in enumerate(entries["file"])]


def _require_two_classes(root: Path, classes: list[str]) -> None:
    """Raise when there are fewer than two classes."""
    if len(classes) < 2:
        raise DataError(f"{root} has {len(classes)} class ({', '.join(classes)}); a classifier needs at least two: "
                        "put each class's images in its own folder (or give them different 'class' values)")


def _require_min_per_class(root: Path, entries: pd.DataFrame, classes: list[str], min_per_class: int,
                           n_skipped: int) -> None:
    """Raise when a class has fewer than ``min_per_class`` images."""
    counts = entries["label"].value_counts().reindex(classes, fill_value=0)
    few = counts[counts < min_per_class]
    if len(few):
        after = f" after skipping {n_skipped} bad image(s)" if n_skipped else ""
        listing = ", ".join(f"'{c}' has {k}" for c, k in few.items())
        raise DataError(f"too few images in {root}{after}: {listing}; each class needs at least {min_per_class} "
                        "images to split into train/val/test: add images to it, or remove that class's folder (rows)")


def load_folder(root: str | Path, *, skip_bad: bool = False, min_per_class: int = 5, min_classes: int = 2) -> Dataset:
    """Load and check an image folder: every image is decoded once, masks are size-checked, groups are derived.

    A training folder needs two classes of ``min_per_class`` images; an external test set may have fewer.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"{root} does not exist or is not a folder; give the dataset's root folder")
    entries, classes = _manifest_entries(root) if (root / MANIFEST).is_file() else _layout_entries(root)
    if entries.empty:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES + VOLUME_SUFFIXES)}) found in {root}; expected "
                        f"{root}/images/<class>/<image>, {root}/<class>/<image> or a {MANIFEST}")
    if min_classes > 1:
        _require_two_classes(root, classes)
    entries = entries.sort_values("file", ignore_index=True)
    _refuse_mixed_dimensions(root, entries)
    records = entries.to_dict("records")
    # OpenCV's decoder releases the GIL, so threads use every core.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = list(pool.map(lambda entry: _inspect(root, entry), records))
    skipped = []
    for entry, result in zip(records, results):
        if isinstance(result, str):
            if not skip_bad:
                raise DataError(result + _SKIP_HINT)
            log.warning("skipping %s: %s", entry["file"], result)
            skipped.append((entry["file"], result))
    good = [not isinstance(result, str) for result in results]
    entries = entries[good].reset_index(drop=True)
    hashes = [result[0] for result in results if not isinstance(result, str)]
    patients = pd.Series([result[1] for result in results if not isinstance(result, str)], dtype=object)
    own_id = (entries["patient_id"] != "") | (entries["group_id"] != "")
    entries["patient_id"] = entries["patient_id"].where(own_id, patients)
    _require_min_per_class(root, entries, classes, min_per_class, len(skipped))
    _refuse_cross_label_duplicates(entries, hashes, root)
    # Identical images (same content, same class) are one group, so a copy never lands on the other side of a split.
    content = pd.Series([h[0] for h in hashes])
    entries["duplicate_of"] = content.where(content.duplicated(keep=False), "").to_numpy()
    groups = _groups(entries, (*GROUP_COLUMNS, "duplicate_of"))
    fingerprint = stable_hash(sorted(
        [file, label, *content, group, split]
        for file, label, content, group, split in zip(entries["file"], entries["label"], hashes, groups,
                                                      entries["split"])))
    items = pd.DataFrame({
        "file": entries["file"],
        "path": [str(root / f) for f in entries["file"]],
        "label": entries["label"],
        "y": entries["label"].map({c: i for i, c in enumerate(classes)}).astype(int),
        "group": groups,
        "split": entries["split"],
        "mask": [str(root / f) if f else "" for f in entries["mask_file"]],
        "lung_mask": [str(root / f) if f else "" for f in entries["lung_mask_file"]],
    })[list(ITEM_COLUMNS)]
    return Dataset(root=root, name=root.name, classes=tuple(classes), items=items, fingerprint=fingerprint,
                   skipped=tuple(skipped))
