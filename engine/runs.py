"""The run store: a run is keyed by its config, data fingerprint and engine version, trained once and reloaded."""
from __future__ import annotations

import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

from .config import RunConfig
from .data.arrays import image_array
from .data.dataset import Dataset
from .data.sources import load_dataset
from .data.splits import assign_splits
from .device import pick_device
from .errors import ConfigError, LungLensError, WeightsError
from .metrics import classification_metrics
from .models.backbones import StagedNet
from .models.weights import build_model, file_digest, imagenet_file, state_bytes
from .pretrain import builtin_backbone, builtin_backbone_path
from .store import atomic_write_bytes, atomic_write_json, home, lock, read_json, stable_hash
from .training import Progress, ProgressFn, train
from .version import ENGINE_VERSION, code_version

RESULT = "result.json"
NEGATIVE_NAMES = {"normal", "non_covid", "noncovid", "healthy", "negative", "clear"}


def runs_root() -> Path:
    """Folder holding one sub-folder per run."""
    return home() / "runs"


def dataset_for(cfg: RunConfig) -> Dataset:
    """The dataset a config reads (the built-in one is generated on first use)."""
    return load_dataset(cfg.data, per_class=cfg.builtin_per_class, confounder_class=cfg.confounder_class,
                        confounder_prob=cfg.confounder_prob, skip_bad=cfg.skip_bad)


def positive_index(cfg: RunConfig, classes: tuple[str, ...]) -> int:
    """Index of the positive class: the configured one, else the first class that is not a negative finding."""
    if cfg.positive_class in classes:
        return classes.index(cfg.positive_class)
    if cfg.positive_class != RunConfig.positive_class:
        raise ConfigError(f"positive_class={cfg.positive_class!r} is not a class of this data: {', '.join(classes)}.")
    return next((i for i, c in enumerate(classes) if c.lower() not in NEGATIVE_NAMES), len(classes) - 1)


def init_fingerprint(cfg: RunConfig) -> str:
    """What the initial weights are, beyond the init's name: the built-in backbone's key or a weights file's hash."""
    if cfg.init == "builtin":
        return builtin_backbone_path(cfg.backbone, cfg.image_size, cfg.head_width).stem
    if cfg.init == "imagenet":
        return imagenet_file(cfg.backbone).name  # torchvision's file names carry a hash of the weights
    if cfg.init == "scratch":
        return "scratch"
    path = Path(cfg.init).expanduser()
    if not path.is_file():
        raise WeightsError(f"Weights file {path} does not exist: check the path given to --init.")
    return file_digest(path)


def run_id(cfg: RunConfig, ds: Dataset) -> str:
    """The cache key of a run: its config, the initial weights, the data fingerprint and the engine version."""
    key = cfg.key_dict()
    key.pop("data")  # the fingerprint identifies the data, wherever the folder lives
    parts = {"config": key, "init": init_fingerprint(cfg), "data": ds.fingerprint, "engine": ENGINE_VERSION}
    return f"{cfg.backbone}-d{cfg.depth}-{stable_hash(parts, 12)}"


@dataclass
class Run:
    """A finished run on disk: config, history, predictions and weights."""

    dir: Path

    @property
    def id(self) -> str:
        """The run's cache key."""
        return self.dir.name

    @cached_property
    def result(self) -> dict:
        """Summary written when the run finished: test criteria, best epoch, timings."""
        return read_json(self.dir / RESULT)

    @cached_property
    def meta(self) -> dict:
        """Provenance: code version, data fingerprint, initialisation, device."""
        return read_json(self.dir / "meta.json")

    @cached_property
    def config(self) -> RunConfig:
        """The run's configuration."""
        return RunConfig.from_dict(read_json(self.dir / "config.json"))

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names, in the order of the model's outputs."""
        return tuple(self.meta["classes"])

    @property
    def positive(self) -> int:
        """Index of the positive class of the criteria."""
        return int(self.meta["positive"])

    @cached_property
    def history(self) -> pd.DataFrame:
        """One row per epoch: loss and the five criteria on train, val and test, and the learning rate."""
        df = pd.DataFrame(read_json(self.dir / "history.json"))
        df["epoch"] = df["epoch"].astype(int)
        return df

    @cached_property
    def predictions(self) -> pd.DataFrame:
        """One row per image of every split: file, split, true and predicted class index, class probabilities."""
        return pd.read_csv(self.dir / "predictions.csv", keep_default_na=False)

    def dataset(self) -> Dataset:
        """The dataset the run was trained on."""
        return dataset_for(self.config)

    def images(self, split: str | None = None) -> np.ndarray:
        """Preprocessed uint8 images (N, S, S) in predictions order, for one split or all."""
        ds = self.dataset()
        if ds.fingerprint != self.meta["data_fingerprint"]:
            raise LungLensError(f"The data of run {self.id} changed on disk since it was trained; train it again.")
        arr = image_array(ds, self.config.image_size, clahe=self.config.clahe)
        if split is None:
            return arr
        return arr[(self.predictions["split"] == split).to_numpy()]

    def load_model(self) -> StagedNet:
        """The trained model in eval mode on the CPU."""
        model = self.initial_model()
        model.load_state_dict(load_file(str(self.dir / "model.safetensors")))
        return model.eval()

    def initial_model(self) -> StagedNet:
        """The model as initialised before fine-tuning (rebuilt deterministically from the init and seed)."""
        cfg = self.config
        torch.manual_seed(cfg.seed)
        # Looked up in the current cache, not at the path recorded at training time, so a moved cache still works.
        builtin = builtin_backbone(cfg.backbone, cfg.image_size, cfg.head_width) if cfg.init == "builtin" else None
        model, _ = build_model(cfg.backbone, len(self.classes), cfg.init, head_width=cfg.head_width, builtin_file=builtin)
        return model.eval()

    def artifact(self, name: str) -> Path:
        """Path for a cached result derived from this run."""
        return self.dir / "artifacts" / name

    def summary(self) -> dict:
        """One flat row for tables: identity, best epoch, test criteria, timing."""
        cfg = self.config
        row = {"run": self.id, "backbone": cfg.backbone, "depth": cfg.depth, "init": cfg.init, "data": cfg.data,
               "fold": cfg.fold, "best_epoch": self.result["best_epoch"], "epochs_run": self.result["epochs_run"]}
        row.update({k: self.result["test"].get(k) for k in ("acc", "sensitivity", "specificity", "ppv", "npv", "auc")})
        row["seconds"] = self.result["seconds"]
        return row


def load_run(run_id_: str) -> Run:
    """A finished run by id."""
    path = runs_root() / run_id_
    if not (path / RESULT).exists():
        raise LungLensError(f"No finished run {run_id_!r} in {runs_root()}: list them with `python -m engine runs`.")
    return Run(path)


def get_run(cfg: RunConfig, ds: Dataset | None = None) -> Run | None:
    """The cached run for ``cfg``, or None if it has not been trained."""
    ds = ds or dataset_for(cfg)
    path = runs_root() / run_id(cfg, ds)
    return Run(path) if (path / RESULT).exists() else None


def list_runs() -> pd.DataFrame:
    """Every finished run with its key criteria, newest first."""
    rows = []
    for path in sorted(runs_root().glob("*/" + RESULT)):
        try:
            rows.append({**Run(path.parent).summary(), "finished": read_json(path)["finished"]})
        except (OSError, KeyError, ValueError, LungLensError):
            continue  # a run from an incompatible engine version; it is simply not listed
    df = pd.DataFrame(rows)
    return df.sort_values("finished", ascending=False, ignore_index=True) if len(df) else df


def train_run(cfg: RunConfig, progress: ProgressFn | None = None, ds: Dataset | None = None,
              status: Callable[[str], None] | None = None) -> Run:
    """Return the run for ``cfg``, training it first if it is not cached (resuming an interrupted one)."""
    ds = ds or dataset_for(cfg)
    path = runs_root() / run_id(cfg, ds)
    if (path / RESULT).exists():
        return Run(path)
    with lock(path / "train"):
        if (path / RESULT).exists():  # another process finished it while we waited
            return Run(path)
        return _train_and_store(cfg, ds, path, progress, status or (lambda _msg: None))


def _train_and_store(cfg: RunConfig, ds: Dataset, path: Path, progress: ProgressFn | None,
                     status: Callable[[str], None]) -> Run:
    classes = ds.classes
    positive = positive_index(cfg, classes)
    split = assign_splits(ds.items, test_fraction=cfg.test_fraction, val_fraction=cfg.val_fraction,
                          folds=cfg.folds, fold=cfg.fold, seed=cfg.seed).to_numpy()
    builtin = None
    if cfg.init == "builtin":
        status(f"Pretraining the built-in {cfg.backbone} backbone on the phantom source corpus (once)")
        builtin = builtin_backbone(cfg.backbone, cfg.image_size, cfg.head_width, progress=_relabel(progress, "pretrain"))
    t0 = time.perf_counter()  # the run's own time: pretraining the shared backbone is not part of it
    torch.manual_seed(cfg.seed)
    model, init_record = build_model(cfg.backbone, len(classes), cfg.init, head_width=cfg.head_width, builtin_file=builtin)
    status("Preparing images")
    images = image_array(ds, cfg.image_size, clahe=cfg.clahe)
    y = ds.items["y"].to_numpy()
    device = pick_device()
    atomic_write_json(path / "config.json", cfg.to_dict())
    status(f"Training {cfg.backbone} at depth {cfg.depth} on {device.type}")
    result = train(cfg, model, images, y, split, len(classes), positive, device, path / "checkpoint.pt", progress)

    preds = ds.items[["file", "path", "label", "group", "mask", "lung_mask"]].copy()
    preds.insert(1, "split", split)
    preds["y"] = y
    preds["pred"] = result.proba.argmax(1)
    for i, c in enumerate(classes):
        preds[f"prob_{c}"] = result.proba[:, i]
    test = split == "test"
    summary = {s: classification_metrics(y[split == s], result.proba[split == s].argmax(1), len(classes), positive,
                                         result.proba[split == s]) for s in ("train", "val", "test") if (split == s).any()}
    atomic_write_bytes(path / "model.safetensors", state_bytes(result.model))
    atomic_write_bytes(path / "predictions.csv", preds.to_csv(index=False).encode())
    atomic_write_json(path / "history.json", result.history)
    atomic_write_json(path / "meta.json", {
        "classes": list(classes), "positive": positive, "data_fingerprint": ds.fingerprint, "data_root": str(ds.root),
        "skipped_images": [list(s) for s in ds.skipped], "init": init_record, "code": code_version(),
        "device": str(device), "torch": torch.__version__, "python": platform.python_version(),
        "prefix_cached": result.prefix_cached, "n_test": int(test.sum()),
    })
    atomic_write_json(path / RESULT, {  # written last: its presence marks the run complete
        **summary, "best_epoch": result.best_epoch, "epochs_run": len(result.history),
        "stopped_early": result.stopped_early, "seconds": time.perf_counter() - t0, "finished": time.time(),
    })
    (path / "checkpoint.pt").unlink(missing_ok=True)
    return Run(path)


def _relabel(progress: ProgressFn | None, phase: str) -> ProgressFn | None:
    if progress is None:
        return None

    def inner(p: Progress) -> None:
        progress(Progress(p.epoch, p.epochs, p.batch, p.batches, f"{phase}:{p.phase}", p.metrics))

    return inner


def delete_run(run_id_: str) -> None:
    """Remove a run and everything cached for it."""
    shutil.rmtree(runs_root() / run_id_, ignore_errors=True)

