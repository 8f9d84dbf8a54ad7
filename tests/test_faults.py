"""Fault injection: damaged, truncated and empty artifacts, corrupt checkpoints, hostile folders and images, degenerate
manifests, a read-only or full disk. Each case ends in a clear message or a correct result, never a wrong result."""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import shutil
import struct
import tomllib
import zlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from PIL import Image, ImageFile, ImageOps

from engine.jobs import running_jobs

import engine
from engine import cli
from engine.config import RunConfig
from engine.data.access import allowed_folder, is_exposed
from engine.data.folder import load_folder
from engine.data.imageio import decode_image_bytes, read_image
from engine.data.phantom import PhantomSpec, write_phantom_dataset
from engine.errors import DamagedRunError, DataError, StoreError, WeightsError
from engine.integrity import forget_verified
from engine.models.weights import read_state_dict
from engine.runs import ARTIFACTS, RESULT, run_id, runs_root
from engine.scoring import score_run
from engine.store import atomic_write_bytes, cached_arrays, cached_json
from engine.version import _normalised_source

ROOT = Path(__file__).resolve().parents[1]
FILES = (*ARTIFACTS, RESULT)


def _cfg(data: Path, **kw) -> RunConfig:
    base = dict(data=str(data), init="scratch", image_size=64, head_width=16, epochs=2, depth=1, patience=0,
                batch_size=8, test_fraction=0.25, val_fraction=0.2)
    return RunConfig(**{**base, **kw})


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LUNGLENS_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def trained(tiny_folder, tmp_path_factory):
    """One tiny run trained in a cache of its own: (config, run folder, its result) to copy into each test's cache."""
    cache = tmp_path_factory.mktemp("faults-cache")
    old = os.environ["LUNGLENS_HOME"]
    os.environ["LUNGLENS_HOME"] = str(cache)
    try:
        cfg = _cfg(tiny_folder)
        run = engine.train_run(cfg)
        yield cfg, run.dir, json.loads((run.dir / RESULT).read_text())
    finally:
        os.environ["LUNGLENS_HOME"] = old


def _same(a: dict, b: dict) -> bool:
    """Equal dicts of scores, NaN equal to NaN (an undefined criterion)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _copy_run(trained, home: Path) -> Path:
    _, src, _ = trained
    dst = home / "runs" / src.name
    shutil.copytree(src, dst)
    forget_verified()  # a fresh process would hash every file again
    return dst


def _damage(path: Path, kind: str) -> None:
    data = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "missing":
        path.unlink()
    else:  # overwritten in place: same size, other bytes in the middle (what the report's 400 KB overwrite did)
        mid, n = len(data) // 2, max(1, min(len(data) // 4, 400_000))
        path.write_bytes(data[:mid] + bytes((b + 1) % 256 for b in data[mid : mid + n]) + data[mid + n :])


# -- damaged run artifacts ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["truncated", "empty", "overwritten", "missing"])
@pytest.mark.parametrize("name", FILES)
def test_a_damaged_artifact_is_never_served(trained, home, name, kind, capsys):
    cfg, _, _ = trained
    run_dir = _copy_run(trained, home)
    _damage(run_dir / name, kind)
    if name == RESULT and kind == "missing":  # no completion record: an unfinished run, trained on demand
        assert engine.get_run(cfg) is None
        return
    with pytest.raises(DamagedRunError) as info:
        engine.get_run(cfg)
    message = str(info.value)
    assert name in message and run_dir.name in message and "--retrain-damaged" in message
    with pytest.raises(DamagedRunError, match=re.escape(name)):
        engine.load_run(run_dir.name)
    with pytest.raises(DamagedRunError):
        engine.run_sweep([cfg])
    if kind != "overwritten" or name == RESULT:  # listing checks sizes (and result.json's checksum), not hashes
        assert run_dir.name not in set(engine.list_runs().get("run", []))
    # `runs --verify` hashes every file, names the damaged one and fails; the damaged run is not in the table.
    assert cli.main(["runs", "--verify"]) == 1
    out, err = capsys.readouterr()
    assert name in err and run_dir.name in err and run_dir.name not in out
    assert list(engine.damaged_runs("full")["run"]) == [run_dir.name]


@pytest.mark.parametrize("name, kind", [("model.safetensors", "overwritten"), ("predictions.csv", "truncated"),
                                        ("result.json", "truncated")])
def test_retrain_damaged_gives_the_original_result(trained, home, name, kind):
    cfg, _, original = trained
    run_dir = _copy_run(trained, home)
    _damage(run_dir / name, kind)
    messages = []
    row, = engine.run_sweep([cfg], status=messages.append, retrain_damaged=True)
    assert not row.cached and any(name in m for m in messages)
    assert row.run.check("full") is row.run
    assert _same(row.run.result["test"], original["test"])  # seeded training: the same run again
    assert len(row.run.predictions) == 36
    again, = engine.run_sweep([cfg])
    assert again.cached


def test_a_damaged_file_is_caught_by_its_hash_once_per_process(trained, home):
    cfg, _, _ = trained
    run_dir = _copy_run(trained, home)
    assert engine.get_run(cfg).meta["classes"]  # hashed and remembered
    _damage(run_dir / "history.json", "overwritten")  # same size, new mtime: hashed again
    with pytest.raises(DamagedRunError, match="history.json"):
        engine.get_run(cfg)


def test_runs_delete_removes_one_run(trained, home, capsys):
    run_dir = _copy_run(trained, home)
    assert cli.main(["runs", "delete", run_dir.name]) == 0
    assert not run_dir.exists()
    assert cli.main(["runs", "delete", "no-such-run"]) == 2
    assert "No run 'no-such-run'" in capsys.readouterr().err


def test_derived_caches_that_cannot_be_read_are_recomputed(home):
    calls = []

    def compute():
        calls.append(1)
        return {"x": np.arange(6.0).reshape(2, 3)}

    path = home / "derived.npz"
    for kind in ("truncated", "empty", "overwritten"):
        cached_arrays(path, compute)
        _damage(path, kind)
        np.testing.assert_array_equal(cached_arrays(path, compute)["x"], np.arange(6.0).reshape(2, 3))
    assert len(calls) == 4
    jpath = home / "derived.json"
    assert cached_json(jpath, lambda: {"a": [1, 2]}) == {"a": [1, 2]}
    jpath.write_text('{"a": [1,')
    assert cached_json(jpath, lambda: {"a": [1, 2, 3]}) == {"a": [1, 2, 3]}


def test_a_damaged_image_cache_of_a_run_is_recomputed(trained, home):
    cfg, _, _ = trained
    _copy_run(trained, home)
    run = engine.get_run(cfg)
    images = run.images()
    for path in (home / "arrays").glob("*.npz"):
        _damage(path, "truncated")
    np.testing.assert_array_equal(engine.get_run(cfg).images(), images)


# -- checkpoints -------------------------------------------------------------------------------------------------------


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("kind", ["truncated", "garbage", "pickle"])
def test_a_corrupt_checkpoint_is_set_aside_and_training_restarts(trained, tiny_folder, home, kind):
    cfg, _, original = trained

    def stop_after_first_epoch(p):
        if p.phase == "epoch" and p.epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        engine.train_run(cfg, progress=stop_after_first_epoch)
    checkpoint = runs_root() / run_id(cfg, engine.load_dataset(tiny_folder)) / "checkpoint.pt"
    if kind == "truncated":
        _damage(checkpoint, "truncated")
    elif kind == "garbage":
        checkpoint.write_bytes(os.urandom(1000))
    else:
        buf = io.BytesIO()
        torch.save({"model": _Evil()}, buf)
        checkpoint.write_bytes(buf.getvalue())
    messages, epochs = [], []
    run = engine.train_run(cfg, progress=lambda p: epochs.append(p.epoch), status=messages.append)
    note = next(m for m in messages if "checkpoint" in m)
    assert str(checkpoint) in note and "epoch 1" in note and "weights_only" not in note
    assert min(epochs) == 1 and list(run.history["epoch"]) == [1, 2]
    assert _same(run.result["test"], original["test"])  # trained from scratch: the uninterrupted run's result
    assert len(list(checkpoint.parent.glob("checkpoint.corrupt-*.pt"))) == 1


# -- folders, images and manifests ----------------------------------------------------------------------------------


def _folder(root: Path, per_class: int = 6, size: int = 32) -> Path:
    rng = np.random.default_rng(1)
    for name in ("covid", "normal"):
        (root / "images" / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            cv2.imwrite(str(root / "images" / name / f"{name}{i}.png"), rng.integers(0, 255, (size, size), np.uint8))
    return root


@pytest.mark.parametrize("target", [".", "..", "covid"])
def test_a_class_folder_linking_to_an_ancestor_or_a_class_is_refused(tmp_path, target):
    root = _folder(tmp_path / "d")
    (root / "images" / "alias").symlink_to(target)
    with pytest.raises(DataError, match="alias is a link to") as info:
        load_folder(root)
    assert "Remove the link" in str(info.value)


def test_the_same_image_under_two_labels_is_an_error(tmp_path):
    root = _folder(tmp_path / "d")
    shutil.copy(root / "images" / "covid" / "covid0.png", root / "images" / "normal" / "copy.png")
    with pytest.raises(DataError, match="same image") as info:
        load_folder(root)
    assert "covid0.png" in str(info.value) and "copy.png" in str(info.value)


def test_copies_within_a_class_share_a_group(tmp_path):
    root = _folder(tmp_path / "d")
    shutil.copy(root / "images" / "covid" / "covid0.png", root / "images" / "covid" / "zz-copy.png")
    items = load_folder(root).items.set_index("file")
    assert items.loc["images/covid/covid0.png", "group"] == items.loc["images/covid/zz-copy.png", "group"]
    assert items["group"].nunique() == len(items) - 1


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path, orientation):
    pixels = np.random.default_rng(orientation).integers(0, 255, (24, 40, 3), np.uint8)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = orientation
    path = tmp_path / "photo.jpg"
    image.save(path, quality=100, exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"), np.float32)
    gray = (expected @ np.array([0.299, 0.587, 0.114], np.float32)) / 255  # independent of OpenCV
    got = read_image(path)
    assert got.shape == gray.shape
    np.testing.assert_allclose(got, gray, atol=2 / 255)


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but whose data is tiny (a decompression bomb by header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")


def _patched(fmt: str, width: int, height: int, tmp_path: Path) -> bytes:
    """A small real image of format ``fmt`` whose header is rewritten to claim width x height."""
    small = np.zeros((8, 8), np.uint8)
    if fmt == "png":
        return _png_header(width, height)
    if fmt == "bmp":
        data = bytearray(cv2.imencode(".bmp", small)[1].tobytes())
        data[18:26] = struct.pack("<ii", width, height)
        return bytes(data)
    if fmt == "jpeg":
        data = bytearray(cv2.imencode(".jpg", small)[1].tobytes())
        sof = data.index(b"\xff\xc0")
        data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
        return bytes(data)
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, small)
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages.first.tags["ImageWidth"].overwrite(width)
        tif.pages.first.tags["ImageLength"].overwrite(height)
    return path.read_bytes()


@pytest.mark.parametrize("fmt", ["png", "bmp", "jpeg", "tiff"])
@pytest.mark.parametrize("side", [9000, 32000, 60000])
def test_pixel_bombs_are_refused_from_the_header_with_their_real_size(tmp_path, monkeypatch, fmt, side):
    if fmt == "jpeg" and side > 65535:
        pytest.skip("JPEG sides are 16-bit")
    data = _patched(fmt, side, side, tmp_path)
    monkeypatch.setattr(cv2, "imdecode", lambda *a: pytest.fail("decoded a bomb"))
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("Pillow decoded a bomb"))
    with pytest.raises(DataError, match=f"too large: {side} x {side} px"):
        decode_image_bytes(data, f"bomb.{fmt}")


def test_the_pixel_limit_is_configurable_and_skip_bad_catches_bombs(tmp_path, monkeypatch):
    root = _folder(tmp_path / "d")
    (root / "images" / "covid" / "bomb.png").write_bytes(_png_header(32000, 32000))
    with pytest.raises(DataError, match="bomb.png is too large: 32000 x 32000 px"):
        load_folder(root)
    ds = load_folder(root, skip_bad=True)
    assert [f for f, _ in ds.skipped] == ["images/covid/bomb.png"] and len(ds) == 12
    monkeypatch.setenv("LUNGLENS_MAX_MEGAPIXELS", "0.0005")  # 500 px: a 32 x 32 image (1,024 px) is too large
    with pytest.raises(DataError, match="32 x 32 px"):
        read_image(root / "images" / "covid" / "covid0.png")
    monkeypatch.setenv("LUNGLENS_MAX_MEGAPIXELS", "lots")
    with pytest.raises(DataError, match="LUNGLENS_MAX_MEGAPIXELS"):
        read_image(root / "images" / "covid" / "covid0.png")


def test_a_format_pillow_cannot_read_never_reaches_opencv(monkeypatch):
    from engine.explain.upload import read_upload

    monkeypatch.setattr(cv2, "imdecode", lambda *a: pytest.fail("an unknown format went to OpenCV"))
    hdr = b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 17000 +X 17000\n" + b"\0" * 4096
    message = read_upload(hdr, "scan.png", 64)
    assert isinstance(message, str) and "scan.png" in message and "not a readable PNG" in message
    gif = io.BytesIO()
    Image.new("L", (8, 8)).save(gif, "GIF")
    with pytest.raises(DataError, match="GIF image"):
        decode_image_bytes(gif.getvalue(), "x.png")


def test_an_upload_bomb_reports_its_real_size():
    from engine.explain.upload import read_upload

    message = read_upload(_png_header(60000, 60000), "big.png", 64)
    assert "60000 x 60000 px" in message and "4097" not in message


def test_a_damaged_png_is_refused_without_raw_libpng_output(capfd):
    data = bytearray(cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8))[1].tobytes())
    data[100:140] = bytes(40)
    with pytest.raises(DataError, match="not a readable"):
        decode_image_bytes(bytes(data), "broken.png")
    assert "libpng" not in capfd.readouterr().err


def test_upload_names_are_shown_as_written():
    from dashboard.support_charts import markdown_literal

    name = "**bold**_[link](http://x)`code`<b>#1.png"
    escaped = markdown_literal(name)
    assert re.sub(r"\\(.)", r"\1", escaped) == name
    assert not re.search(r"(?<!\\)[*_\[\]()`<>#]", escaped)


def _manifest(root: Path, splits: dict[str, str | list[str]]) -> Path:
    def split(c: str, i: int) -> str:
        given = splits.get(c, "")
        return given if isinstance(given, str) else given[i]
    rows = [{"file": f"images/{c}/{c}{i}.png", "class": c, "split": split(c, i)}
            for c in ("covid", "normal") for i in range(6)]
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root


@pytest.mark.parametrize("splits, words", [
    ({"covid": "test", "normal": "test"}, "nothing to train on"),
    ({"covid": "val", "normal": "val"}, "nothing to train on"),
    ({"covid": "test"}, "covid have no row for training"),
    ({"covid": "val", "normal": "test"}, "normal have no row for training"),
    ({"covid": ["test"] * 3 + ["val"] * 3, "normal": ["val"] * 3 + ["test"] * 3}, "nothing to train on"),
])
def test_degenerate_manifests_say_what_to_do(tmp_path, home, capsys, splits, words):
    root = _manifest(_folder(tmp_path / "d"), splits)
    code = cli.main(["sweep", "--data", str(root), "--init", "scratch", "--image-size", "64", "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and words in err and "Traceback" not in err
    if splits == {"covid": "test", "normal": "test"}:
        assert "python -m engine evaluate" in err


def test_an_external_test_set_is_scored_by_a_trained_run(trained, tiny_folder, home, tmp_path):
    cfg, _, _ = trained
    _copy_run(trained, home)
    run = engine.get_run(cfg)
    external = tmp_path / "external"
    shutil.copytree(tiny_folder, external)
    pd.DataFrame({"file": run.predictions["file"], "class": [run.classes[y] for y in run.predictions["y"]],
                  "split": "test"}).to_csv(external / "manifest.csv", index=False)
    metrics, rows = score_run(run, str(external))
    stored = run.predictions.set_index("file").loc[rows["file"]]
    np.testing.assert_allclose(rows.filter(like="prob_").to_numpy(), stored.filter(like="prob_").to_numpy(), atol=1e-4)
    assert metrics["n"] == 36 and metrics["acc"] == pytest.approx((stored["y"] == stored["pred"]).mean())


# -- disk, permissions, server -------------------------------------------------------------------------------------


def test_files_are_created_with_the_users_umask(home):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(home / "a.bin", b"x")
        os.umask(0o077)
        atomic_write_bytes(home / "b.bin", b"x")
    finally:
        os.umask(old)
    assert (home / "a.bin").stat().st_mode & 0o777 == 0o644
    assert (home / "b.bin").stat().st_mode & 0o777 == 0o600
    assert not list(home.glob(".*.tmp"))


@pytest.mark.parametrize("code, words", [(errno.EROFS, "Cannot write to"), (errno.EACCES, "Cannot write to"),
                                         (errno.ENOSPC, "is full")])
def test_a_read_only_or_full_cache_gives_one_line(tiny_folder, home, monkeypatch, capsys, code, words):
    real_open = os.open

    def failing(path, flags, *args, **kw):
        if flags & os.O_CREAT:
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", failing)
    with pytest.raises(StoreError, match=words) as info:
        atomic_write_bytes(home / "runs" / "x" / "f.json", b"{}")
    assert str(home / "runs" / "x") in str(info.value) and "LUNGLENS_HOME" in str(info.value)
    assert cli.main(["sweep", "--data", str(tiny_folder), "--init", "scratch", "--image-size", "64", "--epochs",
                     "1", "--depths", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and words in err[-1] and "Traceback" not in "\n".join(err)


def test_the_generator_reports_a_full_disk_and_leaves_no_temporary_folder(tmp_path, monkeypatch):
    calls = []
    real = Path.write_bytes

    def fill_up(self, data):
        calls.append(1)
        if len(calls) > 5:
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", fill_up)
    with pytest.raises(StoreError, match="is full"):
        write_phantom_dataset(tmp_path / "demo", PhantomSpec(n_per_class=4, image_size=64))
    assert list(tmp_path.iterdir()) == []


def test_a_stale_temporary_folder_of_a_dead_process_is_removed(tmp_path):
    stale = tmp_path / ".demo.tmp-999999999"
    (stale / "images").mkdir(parents=True)
    write_phantom_dataset(tmp_path / "demo", PhantomSpec(n_per_class=2, image_size=64))
    assert not stale.exists() and (tmp_path / "demo" / "manifest.csv").exists()


def test_the_dashboard_listens_on_localhost_by_default():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1"
    assert "--server.address 127.0.0.1" in (ROOT / "Makefile").read_text()
    assert not is_exposed("127.0.0.1") and not is_exposed("localhost") and is_exposed(None) and is_exposed("0.0.0.0")


def test_an_exposed_dashboard_reads_folders_only_under_the_data_root(tmp_path, monkeypatch):
    inside = tmp_path / "data" / "site1"
    inside.mkdir(parents=True)
    (tmp_path / "data" / "escape").symlink_to(tmp_path)
    monkeypatch.delenv("LUNGLENS_DATA_ROOT", raising=False)
    assert allowed_folder("/etc", exposed=False) == "/etc"
    with pytest.raises(DataError, match="LUNGLENS_DATA_ROOT"):
        allowed_folder(str(inside), exposed=True)
    monkeypatch.setenv("LUNGLENS_DATA_ROOT", str(tmp_path / "data"))
    assert allowed_folder(str(inside), exposed=True) == str(inside.resolve())
    for outside in ("/etc", str(inside / ".." / ".." ), str(tmp_path / "data" / "escape")):
        with pytest.raises(DataError, match="outside"):
            allowed_folder(outside, exposed=True)


# -- small messages, the cached column, the code in the key ----------------------------------------------------------


def test_weights_messages(tmp_path):
    with pytest.raises(WeightsError, match="is a folder"):
        read_state_dict(tmp_path)
    with pytest.raises(WeightsError, match="is a folder"):
        engine.runs.init_fingerprint(RunConfig(init=str(tmp_path)))
    evil = tmp_path / "evil.pth"
    torch.save({"w": _Evil()}, evil)
    with pytest.raises(WeightsError) as info:
        read_state_dict(evil)
    assert "not loaded" in str(info.value) and "weights_only" not in str(info.value)


def test_a_class_with_one_image_does_not_suggest_a_missing_option(tmp_path):
    root = _folder(tmp_path / "d")
    for extra in list((root / "images" / "normal").iterdir())[1:]:
        extra.unlink()
    with pytest.raises(DataError, match="'normal' has 1") as info:
        load_folder(root)
    assert "min_per_class" not in str(info.value)


def test_cached_is_true_when_another_process_trained_the_run(trained, home, monkeypatch):
    cfg, _, _ = trained
    _copy_run(trained, home)
    monkeypatch.setattr("engine.sweep.get_run", lambda *a, **k: None)  # not cached when the sweep looked ...
    row, = engine.run_sweep([cfg])  # ... but finished by the time it took the lock
    assert row.cached


def test_the_training_code_is_part_of_the_key(trained, tiny_folder, monkeypatch, tmp_path):
    cfg, run_dir, _ = trained
    ds = engine.load_dataset(tiny_folder)
    assert run_id(cfg, ds) == run_dir.name
    monkeypatch.setattr("engine.runs.training_code_hash", lambda: "0" * 16)
    assert run_id(cfg, ds) != run_dir.name
    a, b, c = (tmp_path / f"{n}.py" for n in "abc")
    a.write_text('"""Doc."""\nimport os\n\n\ndef f(x):\n    """Doc."""\n    return x + 1  # one\n')
    b.write_text('"""Other doc."""\nimport os\n\ndef f(x):\n    # comment\n    return x + 1\n')
    c.write_text('"""Doc."""\nimport os\n\n\ndef f(x):\n    """Doc."""\n    return x + 2\n')
    assert _normalised_source(a) == _normalised_source(b) != _normalised_source(c)


def test_the_dashboard_shows_a_damaged_run_as_an_error_and_retrains_it(trained, home):
    from streamlit.testing.v1 import AppTest

    from dashboard.state import Selection

    cfg, _, original = trained
    run_dir = _copy_run(trained, home)
    _damage(run_dir / "predictions.csv", "truncated")
    sel = Selection(cfg, (cfg.depth,))
    at = AppTest.from_file(str(ROOT / "dashboard" / "Home.py"), default_timeout=120)
    at.session_state["selection"] = sel
    at.run()
    assert not at.exception and any("predictions.csv" in e.value and "damaged" in e.value for e in at.error)
    at.session_state["selection"] = sel
    at.switch_page("../pages/performance.py").run()
    assert not at.exception and any("predictions.csv" in e.value for e in at.error)
    at.switch_page("home_page.py").run()
    at.session_state["selection"] = sel
    at.run()
    next(b for b in at.button if "damaged" in b.label).click().run()
    assert not at.exception
    for job in running_jobs():  # training again runs in the background
        assert job.wait(120) and job.status == "done", job.error
    assert _same(engine.get_run(cfg).check("full").result["test"], original["test"])


def test_a_damaged_builtin_backbone_is_pretrained_again(home):
    from engine.pretrain import _sound

    path = home / "backbones" / "builtin-test.safetensors"
    weights = b"0123456789" * 100
    atomic_write_bytes(path, weights)
    record = {"size": len(weights), "sha256": hashlib.sha256(weights).hexdigest()}
    atomic_write_bytes(path.with_suffix(".json"), json.dumps({"file": record}).encode())
    assert _sound(path)
    _damage(path, "overwritten")
    forget_verified()
    assert not _sound(path) and not path.exists()


def test_a_cache_this_user_cannot_read_says_so(trained, home, monkeypatch, capsys):
    # Tests may run as root, who reads everything: the permission error is injected where files are opened.
    _copy_run(trained, home)
    real = engine.runs.read_json

    def denied(path):
        if Path(path).name == RESULT:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr("engine.runs.read_json", denied)
    assert cli.main(["runs"]) == 0
    out, err = capsys.readouterr()
    assert "No finished runs" not in out and "permission denied" in err and "chmod" in err
    monkeypatch.setattr("engine.runs.read_json", real)
    monkeypatch.setattr("engine.integrity.sha256_file", lambda p: (_ for _ in ()).throw(PermissionError(13, "no")))
    with pytest.raises(DamagedRunError, match="cannot be used: .*permission denied"):
        engine.get_run(trained[0])
