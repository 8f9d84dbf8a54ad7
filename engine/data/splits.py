"""Stratified, group-aware train/val/test splits and k-fold cross-validation folds.

Every carved split uses scikit-learn's ``StratifiedGroupKFold`` (shuffled, seeded), so no group is ever on both sides
of it and class proportions stay close. A fraction ``f`` is realised, approximately, as one fold of ``round(1 / f)``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from engine.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")


def _require_splittable(labels: np.ndarray, groups: np.ndarray, n_splits: int, purpose: str) -> None:
    """Raise when some class has fewer groups than ``n_splits`` (so it cannot appear in every fold)."""
    table = pd.DataFrame({"label": labels, "group": groups})
    per_class = table.groupby("label")["group"].agg(["size", "nunique"])
    short = per_class[per_class["nunique"] < n_splits]
    if len(short):
        listing = ", ".join(f"'{c}' has {row['size']} image(s) in {row['nunique']} group(s)"
                            for c, row in short.iterrows())
        raise DataError(f"too few images to {purpose}: {listing}; it needs at least {n_splits} groups per class "
                        "(images sharing a patient/group id count once): add images or use a smaller fraction / "
                        "fewer folds")


def kfold_indices(labels: np.ndarray, groups: np.ndarray, n_splits: int, seed: int = 0,
                  purpose: str = "split") -> list[tuple[np.ndarray, np.ndarray]]:
    """Positional (rest, fold) index pairs of a seeded StratifiedGroupKFold; no group is in both parts."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    _require_splittable(labels, groups, n_splits, purpose)
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels, groups))


def _carve(pool: np.ndarray, labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int,
           purpose: str) -> np.ndarray:
    """Boolean mask of one group-disjoint, stratified fold of about ``fraction`` of the ``pool`` rows."""
    n_splits = max(2, round(1 / fraction))
    positions = np.flatnonzero(pool)
    _, held = kfold_indices(labels[positions], groups[positions], n_splits, seed, purpose)[0]
    carved = np.zeros(len(labels), dtype=bool)
    carved[positions[held]] = True
    missing = sorted(set(labels[pool]) - set(labels[carved]))
    if missing:
        raise DataError(f"could not {purpose} with every class in it ({', '.join(map(str, missing))} missing), "
                        "because a few large groups dominate those classes; try another seed or add images")
    return carved


#: What to do with a folder that is all test data: score a trained run on it.
SCORE_HINT = ("to score an already trained run on it instead, use `python -m engine evaluate --run ID --data "
              "FOLDER` (list runs with `python -m engine runs`)")


def _require_training_rows(labels: np.ndarray, rest: np.ndarray, what: str) -> None:
    """Raise when no row, or no row of some class, is left for training (``rest``) after the held-out rows."""
    if not rest.any():
        raise DataError(f"nothing to train on: {what} leaves no row for training and validation; mark some rows "
                        f"train (or leave their split empty), or, if this is an external test set, {SCORE_HINT}")
    missing = sorted(set(labels) - set(labels[rest]))
    if missing:
        raise DataError(f"class(es) {', '.join(map(str, missing))} have no row for training: {what} holds every one "
                        "of their images; mark some of them train (or leave their split empty)")


def _outside(groups: np.ndarray, taken: np.ndarray) -> np.ndarray:
    """Rows whose group has no row in ``taken`` (so carving them cannot put a group on both sides)."""
    return ~np.isin(groups, groups[taken])


def _given_splits(items: pd.DataFrame) -> np.ndarray:
    """The manifest's split per row ('' when unset); unset rows follow a test/val row of their own group."""
    given = (items["split"].fillna("").astype(str).str.strip().str.lower().to_numpy(dtype=object)
             if "split" in items.columns else np.full(len(items), "", dtype=object))
    bad = sorted(set(given) - {*SPLITS, ""})
    if bad:
        raise DataError(f"unknown split value(s) {', '.join(bad)}; use train, val, test or leave it empty")
    groups = items["group"].to_numpy()
    for name in ("test", "val"):  # test wins when a group has both
        follow = (given == "") & np.isin(groups, groups[given == name])
        given[follow] = name
    return given


def assign_splits(items: pd.DataFrame, *, test_fraction: float = 0.2, val_fraction: float = 0.15, folds: int = 1,
                  fold: int = 0, seed: int = 0) -> pd.Series:
    """'train'/'val'/'test' per row of ``items`` (columns label, group, optional split), stratified and group-aware.

    Rows the manifest marks test stay test; when none is, test is carved from the rows not marked val. With
    ``folds == 1`` rows marked val stay val, or else val (about ``val_fraction`` of all rows) is carved from the
    non-test rows. With ``folds > 1`` the non-test rows are split into ``folds`` group-aware stratified folds and
    fold ``fold`` is val (manifest val marks are then ignored). Unmarked rows follow a marked row of their group, and
    a carved split never takes rows of a group the manifest put elsewhere; groups the manifest itself puts on two
    sides stay as given.
    """
    if not 0 < test_fraction < 1 or not 0 < val_fraction < 1 or test_fraction + val_fraction >= 1:
        raise ConfigError(f"test_fraction={test_fraction} and val_fraction={val_fraction} must each lie in (0, 1) "
                          "and sum to less than 1")
    if folds < 1 or not 0 <= fold < folds:
        raise ConfigError(f"fold={fold} with folds={folds}: need folds >= 1 and 0 <= fold < folds")
    labels = items["label"].to_numpy()
    groups = items["group"].to_numpy()
    given = _given_splits(items)

    test = given == "test"
    if not test.any():
        pool = (given != "val") & _outside(groups, given == "val")
        _require_training_rows(labels, pool, "the manifest's split=val rows")
        test = _carve(pool, labels, groups, test_fraction, seed, "carve a test split")
    rest = ~test
    _require_training_rows(labels, rest, "the test split (the manifest's split=test rows)")
    if folds > 1:
        positions = np.flatnonzero(rest)
        _, held = kfold_indices(labels[rest], groups[rest], folds, seed, f"make {folds} cross-validation folds")[fold]
        val = np.zeros(len(items), dtype=bool)
        val[positions[held]] = True
    elif (rest & (given == "val")).any():
        val = rest & (given == "val")
    else:
        pool = rest & _outside(groups, test)
        if not pool.any():
            raise DataError("no rows left to carve a validation split from: every non-test row shares a group with a "
                            "test row; mark some rows split=val, or give those rows their own patient/group ids")
        val = _carve(pool, labels, groups, val_fraction * len(items) / pool.sum(), seed, "carve a validation split")

    split = np.full(len(items), "train", dtype=object)
    split[val] = "val"
    split[test] = "test"
    _require_training_rows(labels, split == "train", "the test and validation splits (given and carved)")
    return pd.Series(split, index=items.index, name="split")
