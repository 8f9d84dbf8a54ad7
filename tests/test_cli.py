"""The command line: sweep, cache hits, listing, and a run killed mid-training that resumes."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import torch
from test_cheng import cheng_runs  # noqa: F401 (a session fixture)

ROOT = Path(__file__).resolve().parents[1]


def _cli(home: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "LUNGLENS_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600, **kw)


def _sweep_args(data: Path, *extra: str) -> list[str]:
    return ["sweep", "--data", str(data), "--backbone", "alexnet", "--init", "scratch", "--image-size", "64",
            "--head-width", "16", "--batch-size", "8", *extra]


def test_sweep_trains_then_reports_cached(tiny_folder, tmp_path):
    first = _cli(tmp_path, *_sweep_args(tiny_folder, "--depths", "0,5", "--epochs", "1", "--json"))
    assert first.returncode == 0, first.stderr
    rows = json.loads(first.stdout)
    assert [r["depth"] for r in rows] == [0, 5] and not any(r["cached"] for r in rows)
    assert {"run", "backbone", "init", "best_epoch", "acc", "sensitivity", "specificity", "ppv", "npv", "auc",
            "wall_seconds"} <= set(rows[0])
    again = _cli(tmp_path, *_sweep_args(tiny_folder, "--depths", "0,5", "--epochs", "1"))
    assert again.returncode == 0 and again.stdout.count("True") == 2  # the table's cached column
    listed = json.loads(_cli(tmp_path, "runs", "--json").stdout)
    assert sorted(r["run"] for r in listed) == sorted(r["run"] for r in rows)

    image = next((tiny_folder / "images" / "pneumonia").iterdir())
    for method in ("gradcam", "occlusion"):
        out = tmp_path / f"{method}.png"
        done = _cli(tmp_path, "explain", "--run", rows[1]["run"], "--method", method, "--image", str(image),
                    "--out", str(out))
        assert done.returncode == 0, done.stderr
        assert "predicted" in done.stdout and cv2.imread(str(out)).shape == (64, 64, 3)
    missing = _cli(tmp_path, "explain", "--run", "nope", "--method", "gradcam", "--image", str(image), "--out", "x.png")
    assert missing.returncode == 2 and "python -m engine runs" in missing.stderr


def test_make_demo_writes_the_folder_layout(tmp_path):
    out = _cli(tmp_path, "data", "make-demo", str(tmp_path / "demo"), "--per-class", "10", "--size", "64")
    assert out.returncode == 0, out.stderr
    root = tmp_path / "demo"
    assert (root / "manifest.csv").exists()
    assert sorted(p.name for p in (root / "images").iterdir()) == ["covid", "normal", "pneumonia"]
    assert len(list((root / "masks" / "covid").glob("*.png"))) == 10


def test_make_demo_writes_cheng_four_classes(tmp_path):
    out = _cli(tmp_path, "data", "make-demo", str(tmp_path / "four"), "--data", "builtin-4class", "--per-class", "10",
               "--size", "64")
    assert out.returncode == 0, out.stderr
    root = tmp_path / "four"
    assert sorted(p.name for p in (root / "images").iterdir()) == ["bacterial", "covid", "normal", "viral"]
    assert all(len(list((root / kind / "viral").glob("*.png"))) == 10 for kind in ("images", "masks", "lung_masks"))


def test_bad_input_is_a_one_line_error_not_a_traceback(tmp_path):
    out = _cli(tmp_path, *_sweep_args(tmp_path / "missing", "--depths", "1"))
    assert out.returncode == 2 and out.stderr.startswith("error: ") and "Traceback" not in out.stderr


def test_imagenet_offline_without_cache_says_how_to_provide_the_file(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")  # a closed port: the download fails at once, anywhere
    out = _cli(tmp_path, "sweep", "--data", str(tiny_folder), "--backbone", "alexnet", "--init", "imagenet",
               "--depths", "1", "--epochs", "1", "--image-size", "64")
    assert out.returncode == 2 and "alexnet-owt-7be5be79.pth" in out.stderr and "--init" in out.stderr


def test_a_killed_run_resumes_from_its_last_finished_epoch(tiny_folder, tmp_path):
    args = _sweep_args(tiny_folder, "--depths", "5", "--epochs", "8", "--patience", "0", "--json")
    env = {**os.environ, "LUNGLENS_HOME": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "engine", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    checkpoint = None
    while time.time() < deadline and checkpoint is None:
        found = list((tmp_path / "runs").glob("*/checkpoint.pt"))
        checkpoint = found[0] if found else None
        time.sleep(0.05)
    assert checkpoint is not None, "no checkpoint was written"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = torch.load(checkpoint, weights_only=True)
    done = len(saved["history"])
    assert 1 <= done < 8 and not (checkpoint.parent / "result.json").exists()
    finished = _cli(tmp_path, *args)
    assert finished.returncode == 0, finished.stderr
    history = json.loads((checkpoint.parent / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(1, 9))
    seconds = saved["history"][:, saved["history_keys"].index("seconds")].tolist()
    assert [h["seconds"] for h in history[:done]] == seconds  # epochs before the kill were not trained again


def test_a_folder_without_preset_trains_the_folder_recipe(tiny_folder, tmp_path):
    out = _cli(tmp_path, "sweep", "--data", str(tiny_folder), "--init", "scratch", "--image-size", "64", "--depths", "0",
               "--epochs", "1", "--no-augment", "--json")
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout)
    config = json.loads((tmp_path / "runs" / row["run"] / "config.json").read_text())
    assert (row["backbone"], config["scheduler"], config["weight_decay"]) == ("resnet18", "cosine", 1e-4)
    assert config["augment"] is False and config["epochs"] == 1  # flags override the preset


# --- Cheng et al.'s comparison: several backbones with and without augmentation -------------------------------------

def _sweep_parse(*args: str):
    from engine.cli import _parser, _sweep_configs

    return _sweep_configs(_parser().parse_args(["sweep", *args]))


def test_backbones_and_augment_both_make_one_config_per_backbone_and_side():
    import engine

    configs, compare = _sweep_parse("--backbones", "alexnet,resnet18", "--augment", "both", "--depths", "5",
                                    "--init", "scratch", "--image-size", "64", "--head-width", "16", "--seed", "3")
    assert compare and [(c.backbone, c.augment, c.depth) for c in configs] == [
        ("alexnet", False, 5), ("alexnet", True, 5), ("resnet18", False, 5), ("resnet18", True, 5)]
    base = engine.RunConfig(init="scratch", image_size=64, seed=3, depth=5)
    assert [c.replace(backbone="alexnet", augment=False, head_width=None) for c in configs] == [base] * 4
    assert [c.head_width for c in configs] == [16, 16, None, None]


def test_the_old_augment_flags_still_work():
    for flags, expected in ((["--augment"], True), (["--augment", "on"], True), (["--no-augment"], False),
                            (["--augment", "off"], False), ([], False)):
        (cfg,), compare = _sweep_parse("--depths", "2", *flags)
        assert (cfg.augment, cfg.depth, compare) == (expected, 2, False)


def test_an_unknown_backbone_is_refused_naming_the_valid_ones(capsys):
    import pytest

    from engine.models.names import BACKBONES

    with pytest.raises(SystemExit) as stop:
        _sweep_parse("--backbones", "alexnet,resnet9000", "--depths", "5")
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "'resnet9000'" in err and all(b in err for b in BACKBONES)


def test_augment_both_is_for_sweep_only():
    import pytest

    import engine
    from engine.cli import _experiment, _parser

    for command in ("prepare", "ouyang"):
        with pytest.raises(engine.ConfigError, match="--augment both .* applies to `sweep` only"):
            _experiment(_parser().parse_args([command, "--augment", "both", "--depths", "0"]))


def test_the_comparison_prints_chengs_table_from_cached_runs(cheng_runs, capsys):  # noqa: F811
    import numpy as np
    import pandas as pd

    import engine
    from engine.cli import main

    # in this process, on the session's cache where the fixture trained these runs
    args = ["sweep", "--data", "builtin", "--per-class", "20", "--init", "scratch", "--image-size", "64",
            "--head-width", "16", "--epochs", "2", "--patience", "0", "--batch-size", "16", "--lr", "1e-3",
            "--backbones", "alexnet", "--augment", "both", "--depths", "0"]
    capsys.readouterr()
    assert main([*args, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    alexnet = [r for r in cheng_runs if r.config.backbone == "alexnet"]
    assert [(r["run"], r["augment"], r["cached"]) for r in result["runs"]] == [(r.id, r.config.augment, True)
                                                                            for r in alexnet]
    table = pd.DataFrame(result["table"]).astype({"value": float, "low": float, "high": float})
    pd.testing.assert_frame_equal(table, engine.augmentation_table(alexnet), check_dtype=False)
    change = pd.DataFrame(result["effect"])["change"].to_numpy(dtype=float)
    np.testing.assert_allclose(change, engine.augmentation_effect(alexnet)["change"].to_numpy(dtype=float))
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "Cheng et al.'s Table 1 on this data, covid one-vs-rest" in text
    assert "change" in text and "With augmentation the test accuracy rose in" in text
