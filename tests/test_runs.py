"""The run store: cached once, provenance stored, atomic results, resume after an interruption, one trainer at a time."""
import threading

import pytest

import engine
from engine import training
from engine.config import RunConfig
from engine.errors import ConfigError, DataError
from engine.runs import RESULT, run_id, runs_root


def _cfg(data, **kw) -> RunConfig:
    base = dict(data=str(data), init="scratch", image_size=64, head_width=16, epochs=2, depth=1, patience=0,
                batch_size=8, test_fraction=0.25, val_fraction=0.2)
    return RunConfig(**{**base, **kw})


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LUNGLENS_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _count_training(monkeypatch) -> list:
    calls = []
    real = training.train

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr("engine.runs.train", counting)
    return calls


def test_run_is_trained_once_and_stores_its_provenance(tiny_folder, home, monkeypatch):
    calls = _count_training(monkeypatch)
    cfg = _cfg(tiny_folder)
    assert engine.get_run(cfg) is None
    run = engine.train_run(cfg)
    again = engine.train_run(cfg)
    assert calls == [1] and again.id == run.id
    assert run.config == cfg
    assert run.meta["data_fingerprint"] == engine.load_dataset(tiny_folder).fingerprint
    assert run.meta["code"]["engine"] == engine.__version__ and run.meta["init"]["init"] == "scratch"
    assert list(run.history["epoch"]) == [1, 2]
    assert {"train_loss", "test_loss", "train_acc", "test_sensitivity", "test_npv", "train_ppv"} <= set(run.history)
    preds = run.predictions
    assert len(preds) == 36 and set(preds["split"]) == {"train", "val", "test"}
    assert preds.filter(like="prob_").sum(axis=1).round(5).eq(1).all()
    assert run.result["test"]["acc"] == pytest.approx((preds[preds.split == "test"].eval("y == pred")).mean())
    assert run.images("test").shape == ((preds.split == "test").sum(), 64, 64)
    assert not (run.dir / "checkpoint.pt").exists()
    listed = engine.list_runs()
    assert list(listed["run"]) == [run.id]


def test_execution_only_options_share_the_cache_key(tiny_folder, home):
    run = engine.train_run(_cfg(tiny_folder))
    assert engine.get_run(_cfg(tiny_folder, prefix_cache=False)).id == run.id
    assert engine.get_run(_cfg(tiny_folder, seed=1)) is None


def test_the_initial_weights_are_part_of_the_key(tiny_folder, home, tmp_path):
    import torch
    import torchvision

    ds = engine.load_dataset(tiny_folder)
    ids = []
    for seed in (0, 1, 0):
        torch.manual_seed(seed)
        path = tmp_path / f"w{seed}.pth"
        torch.save(torchvision.models.get_model("alexnet", weights=None).state_dict(), path)
        ids.append(run_id(_cfg(tiny_folder, init=str(path)), ds))
    assert ids[0] != ids[1] and ids[0] == ids[2]
    assert run_id(_cfg(tiny_folder, init="builtin"), ds) != run_id(_cfg(tiny_folder), ds)


def test_an_interrupted_run_leaves_no_result_and_resumes(tiny_folder, home, monkeypatch):
    cfg = _cfg(tiny_folder, epochs=3)

    def stop_after_first_epoch(p):
        if p.phase == "epoch" and p.epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        engine.train_run(cfg, progress=stop_after_first_epoch)
    run_dir = next(runs_root().iterdir())
    assert (run_dir / "checkpoint.pt").exists() and not (run_dir / RESULT).exists()
    assert engine.get_run(cfg) is None and engine.list_runs().empty
    epochs = []
    run = engine.train_run(cfg, progress=lambda p: epochs.append(p.epoch))
    assert min(epochs) == 2 and list(run.history["epoch"]) == [1, 2, 3]


def test_two_callers_train_the_same_run_once(tiny_folder, home, monkeypatch):
    calls = _count_training(monkeypatch)
    cfg = _cfg(tiny_folder, epochs=1)
    ds = engine.load_dataset(tiny_folder)
    results = []
    threads = [threading.Thread(target=lambda: results.append(engine.train_run(cfg, ds=ds).id)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [1] and len(set(results)) == 1


def test_bad_config_and_bad_data_give_clear_errors(tmp_path, home):
    with pytest.raises(ConfigError, match="depth=9"):
        RunConfig(depth=9)
    with pytest.raises(ConfigError, match="backbone='vgg11'"):
        RunConfig(backbone="vgg11")
    with pytest.raises(ConfigError, match="Unknown config field"):
        RunConfig.from_dict({"depht": 2})
    (tmp_path / "one" / "images" / "covid").mkdir(parents=True)
    with pytest.raises(DataError):
        engine.train_run(_cfg(tmp_path / "one"))
    with pytest.raises(DataError, match="does not exist"):
        engine.train_run(_cfg(tmp_path / "nowhere"))
