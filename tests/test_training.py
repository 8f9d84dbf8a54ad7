"""The training loop: the frozen-prefix cache changes nothing but speed, and an interrupted run resumes exactly."""
import numpy as np
import pytest
import torch
import torchvision

from engine.config import RunConfig
from engine.models.backbones import stage
from engine.training import train


def _toy_data(n: int = 48, size: int = 64):
    rng = np.random.default_rng(0)
    y = np.arange(n) % 3
    images = rng.integers(0, 120, (n, size, size)).astype(np.uint8)
    for i, label in enumerate(y):  # a bright square whose place depends on the class
        r = 8 + 16 * label
        images[i, r : r + 12, r : r + 12] = 230
    split = np.array(["train"] * (n - 18) + ["val"] * 9 + ["test"] * 9)
    return images, y, split


def _model(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    return stage(torchvision.models.get_model(arch, weights=None), arch, 3, head_width=32 if arch == "alexnet" else None)


@pytest.mark.parametrize("arch,depth", [("alexnet", 2), ("alexnet", 0), ("resnet18", 3)])
def test_prefix_cache_gives_the_same_losses_as_the_plain_path(arch, depth):
    images, y, split = _toy_data()
    cfg = RunConfig(backbone=arch, depth=depth, init="scratch", image_size=64, head_width=32 if arch == "alexnet" else None,
                    epochs=2, patience=0, batch_size=16, lr=1e-3)
    cached = train(cfg, _model(arch), images, y, split, 3, 2, torch.device("cpu"))
    plain = train(cfg.replace(prefix_cache=False), _model(arch), images, y, split, 3, 2, torch.device("cpu"))
    assert cached.prefix_cached and not plain.prefix_cached
    for a, b in zip(cached.history, plain.history):
        for key in ("train_loss", "val_loss", "test_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5)
    np.testing.assert_allclose(cached.proba, plain.proba, rtol=1e-4, atol=1e-5)


def test_interrupted_training_resumes_from_its_last_epoch(tmp_path):
    images, y, split = _toy_data()
    cfg = RunConfig(backbone="alexnet", depth=5, init="scratch", image_size=64, head_width=32, epochs=4, patience=0,
                    batch_size=16, lr=1e-3, scheduler="plateau")
    full = train(cfg, _model("alexnet"), images, y, split, 3, 2, torch.device("cpu"))

    class Interrupted(Exception):
        pass

    def stop_after_two(p):
        if p.phase == "epoch" and p.epoch == 2:
            raise Interrupted

    ckpt = tmp_path / "checkpoint.pt"
    with pytest.raises(Interrupted):
        train(cfg, _model("alexnet"), images, y, split, 3, 2, torch.device("cpu"), ckpt, stop_after_two)
    assert ckpt.exists()
    epochs_seen = []
    resumed = train(cfg, _model("alexnet", seed=99), images, y, split, 3, 2, torch.device("cpu"), ckpt,
                    lambda p: epochs_seen.append(p.epoch))
    assert min(epochs_seen) == 3  # nothing before the checkpoint was trained again
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    for a, b in zip(full.history, resumed.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["test_acc"] == pytest.approx(b["test_acc"])
    np.testing.assert_allclose(full.proba, resumed.proba, rtol=1e-4, atol=1e-6)


def test_early_stopping_restores_the_best_epoch():
    images, y, split = _toy_data()
    cfg = RunConfig(backbone="alexnet", depth=5, init="scratch", image_size=64, head_width=32, epochs=12, patience=1,
                    batch_size=16, lr=5e-3, scheduler="none")
    result = train(cfg, _model("alexnet"), images, y, split, 3, 2, torch.device("cpu"))
    val = [h["val_loss"] for h in result.history]
    assert result.best_epoch == int(np.argmin(val)) + 1
    if result.stopped_early:
        assert len(val) - result.best_epoch == cfg.patience


def test_cosine_schedule_follows_the_half_cosine_per_epoch():
    images, y, split = _toy_data()
    cfg = RunConfig(backbone="alexnet", depth=1, init="scratch", image_size=64, head_width=32, epochs=4, patience=0,
                    batch_size=16, lr=1e-3, scheduler="cosine")
    history = train(cfg, _model("alexnet"), images, y, split, 3, 2, torch.device("cpu")).history
    # Epoch e (1-based) trains at lr * (1 + cos(pi * (e - 1) / epochs)) / 2: 1e-3, 8.54e-4, 5e-4, 1.46e-4.
    expected = [1e-3, 1e-3 * (1 + np.cos(np.pi / 4)) / 2, 5e-4, 1e-3 * (1 + np.cos(3 * np.pi / 4)) / 2]
    assert [row["lr"] for row in history] == pytest.approx(expected, rel=1e-6)
