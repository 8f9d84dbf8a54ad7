"""Loading image folders: layouts, manifests, masks, groups, fingerprints and every bad input."""
from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.data.folder import load_folder
from engine.errors import DataError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RNG = np.random.default_rng(0)


def write_png(path: Path, shape: tuple[int, int] = (12, 10), value: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full(shape, value, np.uint8) if value is not None else RNG.integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def make_layout(root: Path, counts: dict[str, int], *, images_dir: bool = True, masks: bool = False) -> Path:
    """Write ``counts[class]`` random PNGs per class (and same-stem masks when asked)."""
    base = root / "images" if images_dir else root
    for label, count in counts.items():
        for i in range(count):
            write_png(base / label / f"{label}_{i}.png")
            if masks:
                write_png(root / "masks" / label / f"{label}_{i}.png", value=255)
    return root


def write_manifest(root: Path, rows: list[dict[str, str]]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(root / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


def test_images_layout_with_masks(tmp_path):
    root = make_layout(tmp_path / "ds", {"normal": 5, "covid": 6}, masks=True)
    (root / "images" / "covid" / "notes.txt").write_text("ignored: not an image suffix")
    dataset = load_folder(root)
    assert dataset.classes == ("covid", "normal")
    assert dataset.name == "ds" and len(dataset) == 11 and dataset.skipped == ()
    items = dataset.items
    row = items.set_index("file").loc["images/normal/normal_3.png"]
    assert row["label"] == "normal" and row["y"] == 1 and row["split"] == ""
    assert row["path"] == str(root.resolve() / "images/normal/normal_3.png")
    assert row["mask"] == str(root.resolve() / "masks/normal/normal_3.png") and row["lung_mask"] == ""
    assert row["group"] == "images/normal/normal_3.png"
    assert dataset.has_masks and not dataset.has_lung_masks
    assert list(items["y"]) == [dataset.classes.index(label) for label in items["label"]]


def test_plain_class_layout(tmp_path):
    dataset = load_folder(make_layout(tmp_path, {"a": 5, "b": 5}, images_dir=False))
    assert dataset.classes == ("a", "b") and len(dataset) == 10 and not dataset.has_masks
    assert set(dataset.items["file"]) == {f"{c}/{c}_{i}.png" for c in "ab" for i in range(5)}


def test_manifest_groups_are_connected_components(tmp_path):
    files = {name: write_png(tmp_path / "images" / name[0] / f"{name}.png") for name in
             ["a1", "a2", "a3", "a4", "a5", "b1", "b2", "b3", "b4", "b5"]}
    write_png(tmp_path / "lung" / "a1.png")
    rows = [{"file": f"images/{n[0]}/{n}.png", "class": n[0]} for n in files]
    links = {"a1": {"patient_id": "p1"}, "a2": {"patient_id": "p1", "split": "TEST"},
             "a3": {"sim_group": "s1"}, "b1": {"sim_group": "s1", "group_id": "G"}, "b2": {"group_id": "G"},
             "b3": {"group_id": "p1"}}  # same value as a patient_id but another column: not linked
    for row in rows:
        row.update(links.get(Path(row["file"]).stem, {}))
    rows[0]["lung_mask_file"] = "lung/a1.png"
    write_manifest(tmp_path, rows)
    dataset = load_folder(tmp_path)
    group = dict(zip(dataset.items["file"].map(lambda f: Path(f).stem), dataset.items["group"]))
    assert group["a1"] == group["a2"] != group["a3"]
    assert group["a3"] == group["b1"] == group["b2"]
    assert group["b3"] not in (group["a1"], group["a3"])
    assert all(group[n].startswith("g") for n in ["a1", "a3", "b3"])
    assert group["b4"] == "images/b/b4.png"
    assert dataset.items.set_index("file").loc["images/a/a2.png", "split"] == "test"
    assert dataset.has_lung_masks and not dataset.has_masks


def test_fingerprint_is_stable_and_follows_content(tmp_path):
    root = make_layout(tmp_path, {"a": 5, "b": 5}, masks=True)
    first = load_folder(root).fingerprint
    assert len(first) == 16 and load_folder(root).fingerprint == first
    image = root / "images" / "a" / "a_0.png"
    pixels = np.array(Image.open(image))
    pixels[0, 0] ^= 1
    Image.fromarray(pixels).save(image)
    second = load_folder(root).fingerprint
    assert second != first
    write_png(root / "masks" / "b" / "b_1.png", value=0)
    assert load_folder(root).fingerprint not in (first, second)


@pytest.mark.parametrize("content", [b"", b"plain text, not a PNG"], ids=["zero-bytes", "text"])
def test_bad_image_raises_naming_file_and_skip_bad(tmp_path, content):
    root = make_layout(tmp_path, {"a": 6, "b": 5})
    (root / "images" / "a" / "a_0.png").write_bytes(content)
    with pytest.raises(DataError, match=r"a_0\.png.*--skip-bad"):
        load_folder(root)
    dataset = load_folder(root, skip_bad=True)
    assert len(dataset) == 10 and "images/a/a_0.png" not in set(dataset.items["file"])
    assert [file for file, _ in dataset.skipped] == ["images/a/a_0.png"]
    assert "a_0.png" in dataset.skipped[0][1]


def test_first_bad_image_is_the_one_reported(tmp_path):
    root = make_layout(tmp_path, {"a": 6, "b": 6})
    for name in ("a/a_4.png", "b/b_2.png"):
        (root / "images" / name).write_bytes(b"")
    with pytest.raises(DataError, match=r"a_4\.png"):
        load_folder(root)
    assert len(load_folder(root, skip_bad=True).skipped) == 2


def test_too_few_images_after_skipping(tmp_path):
    root = make_layout(tmp_path, {"a": 5, "b": 5})
    (root / "images" / "b" / "b_0.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"skipping 1 bad.*'b' has 4.*at least 5"):
        load_folder(root, skip_bad=True)


def test_mask_size_mismatch_names_both_files(tmp_path):
    root = make_layout(tmp_path, {"a": 5, "b": 5}, masks=True)
    write_png(root / "masks" / "b" / "b_2.png", shape=(7, 9), value=255)
    with pytest.raises(DataError, match=r"masks/b/b_2\.png is 9x7.*images/b/b_2\.png is 10x12"):
        load_folder(root)


def test_mask_without_image(tmp_path):
    root = make_layout(tmp_path, {"a": 5, "b": 5}, masks=True)
    write_png(root / "masks" / "a" / "stray.png")
    with pytest.raises(DataError, match=r"no image.*stray\.png"):
        load_folder(root)


def test_one_class(tmp_path):
    with pytest.raises(DataError, match="at least two"):
        load_folder(make_layout(tmp_path, {"only": 8}))


def test_class_with_too_few_images(tmp_path):
    root = make_layout(tmp_path, {"a": 5, "b": 3})
    with pytest.raises(DataError, match=r"'b' has 3.*at least 5"):
        load_folder(root)
    assert len(load_folder(root, min_per_class=3)) == 8


def test_missing_or_empty_root(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_folder(tmp_path / "nowhere")
    (tmp_path / "images" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        load_folder(tmp_path)


def test_masks_without_images_folder(tmp_path):
    root = make_layout(tmp_path, {"a": 5, "b": 5}, images_dir=False)
    (root / "masks").mkdir()
    with pytest.raises(DataError, match="no images/ folder"):
        load_folder(root)


def test_manifest_row_pointing_nowhere(tmp_path):
    make_layout(tmp_path, {"a": 5, "b": 5})
    rows = [{"file": f"images/{c}/{c}_{i}.png", "class": c} for c in "ab" for i in range(5)]
    rows.append({"file": "images/a/gone.png", "class": "a"})
    write_manifest(tmp_path, rows)
    with pytest.raises(DataError, match=r"manifest\.csv line 12.*gone\.png does not exist"):
        load_folder(tmp_path)


def test_manifest_mask_pointing_nowhere(tmp_path):
    make_layout(tmp_path, {"a": 5, "b": 5})
    rows = [{"file": f"images/{c}/{c}_{i}.png", "class": c, "mask_file": ""} for c in "ab" for i in range(5)]
    rows[3]["mask_file"] = "masks/a/a_3.png"
    write_manifest(tmp_path, rows)
    with pytest.raises(DataError, match=r"line 5.*masks/a/a_3\.png does not exist"):
        load_folder(tmp_path)


@pytest.mark.parametrize("header, words", [("path,label", "lacks the required column.*file, class"),
                                           ("file,class,split", "split 'holdout'")])
def test_bad_manifest(tmp_path, header, words):
    make_layout(tmp_path, {"a": 5, "b": 5})
    (tmp_path / "manifest.csv").write_text(f"{header}\nimages/a/a_0.png,a,holdout\n")
    with pytest.raises(DataError, match=words):
        load_folder(tmp_path)


def test_real_covidqu_loads():
    root = SHARED / "covidqu_cxr_infection"
    if not root.is_dir():
        pytest.skip("shared covidqu dataset absent")
    start = time.perf_counter()
    dataset = load_folder(root)
    print(f"load_folder(covidqu, {len(dataset)} images) took {time.perf_counter() - start:.2f} s")
    with open(root / "manifest.csv", newline="") as fh:
        manifest = {row["file"]: row for row in csv.DictReader(fh)}
    items = dataset.items.set_index("file")
    assert set(items.index) == set(manifest)
    assert dataset.classes == tuple(sorted({row["class"] for row in manifest.values()}))
    assert (items["label"] == [manifest[f]["class"] for f in items.index]).all()
    assert (items["mask"] != "").sum() == sum(bool(row["mask_file"]) for row in manifest.values())
    for sim in {row["sim_group"] for row in manifest.values()} - {""}:
        members = [f for f, row in manifest.items() if row["sim_group"] == sim]
        assert items.loc[members, "group"].nunique() == 1
