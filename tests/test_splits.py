"""Stratified, group-aware splits: group disjointness, class balance, manifest splits and k-fold folds."""
from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.data.folder import load_folder
from engine.data.splits import assign_splits, kfold_indices
from engine.errors import ConfigError, DataError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def synthetic_items(counts: dict[str, int] | None = None, seed: int = 0) -> pd.DataFrame:
    """Items whose groups hold 1-4 images of one class; a few groups span two classes."""
    rng = np.random.default_rng(seed)
    counts = counts or {"covid": 300, "normal": 200, "pneumonia": 120}
    rows, group = [], 0
    for label, count in counts.items():
        left = count
        while left:
            size = min(left, int(rng.integers(1, 5)))
            rows += [{"label": label, "group": f"g{group}"}] * size
            left -= size
            group += 1
    items = pd.DataFrame(rows)
    items.loc[items.index[::97], "group"] = "shared"  # one group with images of every class
    items.index = [f"row{i}" for i in range(len(items))]  # splits must keep the caller's index
    return items


def assert_groups_disjoint(items: pd.DataFrame, split: pd.Series) -> None:
    groups = {name: set(items["group"][split == name]) for name in ("train", "val", "test")}
    for a, b in combinations(groups, 2):
        assert not groups[a] & groups[b], f"groups on both {a} and {b}"


def assert_stratified(items: pd.DataFrame, split: pd.Series, tolerance: float = 0.05) -> None:
    share = pd.crosstab(items["label"], split, normalize="index")
    overall = split.value_counts(normalize=True)
    assert (share.sub(overall, axis=1).abs() < tolerance).all().all(), share


def test_default_split_is_group_disjoint_stratified_and_sized():
    items = synthetic_items()
    split = assign_splits(items, seed=3)
    assert split.index.equals(items.index) and set(split) == {"train", "val", "test"}
    assert_groups_disjoint(items, split)
    assert_stratified(items, split)
    fractions = split.value_counts(normalize=True)
    assert abs(fractions["test"] - 0.2) < 0.03 and abs(fractions["val"] - 0.15) < 0.04


def test_seed_controls_the_split():
    items = synthetic_items()
    assert assign_splits(items, seed=1).equals(assign_splits(items, seed=1))
    assert not assign_splits(items, seed=1).equals(assign_splits(items, seed=2))


def test_manifest_test_and_val_are_kept():
    items = synthetic_items()
    given = np.where(items["group"].isin(["g1", "g2", "g40", "g150"]), "test",
                     np.where(items["group"].isin(["g3", "g90", "g160"]), "val", "train"))
    items["split"] = given
    split = assign_splits(items)
    assert (split.to_numpy() == given).all()


def test_carved_test_avoids_groups_marked_val():
    items = synthetic_items()
    sizes = items["group"].value_counts()
    straddling = sizes.index[sizes == 4][:20]  # each has one row marked val and three marked train
    items["split"] = "train"
    items.loc[items.index[items["group"].isin(straddling)][::4], "split"] = "val"
    split = assign_splits(items)
    assert ((split == "val") == (items["split"] == "val")).all()
    assert not set(items["group"][split == "test"]) & set(straddling)
    assert not set(items["group"][split == "test"]) & set(items["group"][split == "train"])


def test_val_is_carved_when_only_test_is_given():
    items = synthetic_items()
    marked = items["group"].isin(items["group"].drop_duplicates().sample(frac=0.2, random_state=0))
    items["split"] = np.where(marked, "test", "")
    split = assign_splits(items)
    assert ((split == "test") == marked).all()
    assert (split[~marked] == "val").mean() == pytest.approx(0.15 / 0.8, abs=0.06)
    assert_groups_disjoint(items, split)


def test_unset_rows_follow_their_groups_test_row():
    items = synthetic_items()
    sizes = items["group"].value_counts()
    members = items.index[items["group"] == sizes.index[sizes == 3][0]]
    items["split"] = ""
    items.loc[members[0], "split"] = "test"
    split = assign_splits(items)
    assert (split[members] == "test").all() and (split == "test").sum() == len(members)


def test_kfold_folds_are_disjoint_and_cover_non_test_rows():
    items = synthetic_items()
    splits = [assign_splits(items, folds=5, fold=k, seed=4) for k in range(5)]
    test = splits[0] == "test"
    assert all(((s == "test") == test).all() for s in splits)
    vals = [set(s.index[s == "val"]) for s in splits]
    assert all(not a & b for a, b in combinations(vals, 2))
    assert set().union(*vals) == set(items.index[~test])
    for split in splits:
        assert_groups_disjoint(items, split)
        assert_stratified(items, split, tolerance=0.07)


def test_kfold_indices_partition_positions():
    items = synthetic_items()
    folds = kfold_indices(items["label"].to_numpy(), items["group"].to_numpy(), 4, seed=0)
    held = np.concatenate([fold for _, fold in folds])
    assert np.array_equal(np.sort(held), np.arange(len(items)))
    for rest, fold in folds:
        assert not set(items["group"].iloc[rest]) & set(items["group"].iloc[fold])


def test_class_with_too_few_groups():
    items = synthetic_items({"a": 40, "b": 40})
    items = pd.concat([items, pd.DataFrame({"label": ["c"] * 4, "group": ["c1", "c1", "c2", "c3"]})],
                      ignore_index=True)
    with pytest.raises(DataError, match=r"'c' has 4 image\(s\) in 3 group\(s\).*at least 5"):
        assign_splits(items)


@pytest.mark.parametrize("kwargs", [{"test_fraction": 0.0}, {"test_fraction": 0.6, "val_fraction": 0.5},
                                    {"folds": 5, "fold": 5}, {"folds": 0}])
def test_bad_parameters(kwargs):
    with pytest.raises(ConfigError):
        assign_splits(synthetic_items(), **kwargs)


def test_real_covidqu_splits():
    root = SHARED / "covidqu_cxr_infection"
    if not root.is_dir():
        pytest.skip("shared covidqu dataset absent")
    items = load_folder(root).items
    for kwargs in ({}, {"folds": 5, "fold": 1}):
        split = assign_splits(items, **kwargs)
        assert_groups_disjoint(items, split)
        assert_stratified(items, split, tolerance=0.03)
