"""The run store: a run is keyed by its config, data fingerprint and engine version, trained once and reloaded."""
from __future__ import annotations

import logging
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .config import RunConfig
from .data.arrays import image_array, mask_arrays
from .data.dataset import Dataset
from .data.sources import load_dataset
from .data.splits import assign_splits
from .data.transforms import load_size
from .device import pick_device
from .errors import ConfigError, DamagedRunError, LungLensError
from .integrity import UNREADABLE, Level, file_problem, record_files
from .metrics import classification_metrics
from .models.backbones import StagedNet
from .models.weights import (architecture, build_model, check_weights_path, file_digest, init_weights_cached,
                             init_weights_file, state_bytes)
from .pretrain import builtin_backbone, builtin_backbone_path
from .store import DAMAGED_READ_ERRORS, atomic_write_bytes, atomic_write_json, home, lock, read_json, stable_hash
from .dual import dual_predictions
from .guidance import guidance_for, infection_ratios
from .models.names import BACKBONES, VOLUME_BACKBONES
from .training import LoadSized, Progress, ProgressFn, train
from .version import ENGINE_VERSION, code_version, training_code_hash

RESULT = "result.json"
#: The files of a run recorded (size and SHA-256) in its completion record, ``result.json``.
ARTIFACTS = ("config.json", "meta.json", "history.json", "predictions.csv", "model.safetensors")
log = logging.getLogger(__name__)
NEGATIVE_NAMES = {"normal", "non_covid", "noncovid", "healthy", "negative", "clear"}
#: Spellings of the default positive class, compared without case or separators.
COVID_NAMES = {"covid", "covid19", "sarscov2"}


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
    named = [i for i, c in enumerate(classes) if _squashed(c) in COVID_NAMES]  # "COVID-19", "covid_19", ...
    if named:
        return named[0]
    return next((i for i, c in enumerate(classes) if c.lower() not in NEGATIVE_NAMES), len(classes) - 1)


def _squashed(name: str) -> str:
    """A class name lower-cased without separators, so "COVID-19" and "covid_19" compare equal."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


def check_dimensions(cfg: RunConfig, ds: Dataset) -> None:
    """Raise ConfigError when the backbone takes volumes and the data are 2-D images (or the other way round), or
    when a 2-D-only option is set for volumes."""
    volume = cfg.backbone in VOLUME_BACKBONES
    if volume and ds.ndim != 3:
        raise ConfigError(f"backbone={cfg.backbone} takes 3-D volumes, but {cfg.data} holds 2-D images: choose a 2-D "
                          f"backbone ({', '.join(b for b in BACKBONES if b not in VOLUME_BACKBONES)}), or 3-D data "
                          "(--data builtin-ct, or a folder of NIfTI volumes).")
    if not volume and ds.ndim == 3:
        raise ConfigError(f"{cfg.data} holds 3-D volumes, but backbone={cfg.backbone} takes 2-D images: choose a 3-D "
                          f"backbone ({', '.join(VOLUME_BACKBONES)}).")
    if ds.ndim == 3 and (cfg.augment or cfg.clahe):
        raise ConfigError("augment and clahe apply to 2-D images; 3-D volumes train without them (leave --augment "
                          "and --clahe off).")


def init_fingerprint(cfg: RunConfig) -> str:
    """What the initial weights are, beyond the init's name: the built-in backbone's key or a weights file's hash.

    ImageNet and xrv weights are downloaded into their caches first when missing (WeightsError when that fails).
    """
    if cfg.init == "builtin":
        return builtin_backbone_path(cfg.backbone, cfg.image_size, cfg.head_width).stem
    named = init_weights_file(cfg.backbone, cfg.init)
    if named is not None:
        return f"{named.name}:{file_digest(named)}"
    if cfg.init == "scratch":
        return "scratch"
    return file_digest(check_weights_path(Path(cfg.init)))


def run_id(cfg: RunConfig, ds: Dataset) -> str:
    """The cache key of a run: its config, the initial weights, the data fingerprint and the training code's hash."""
    key = cfg.key_dict()
    key.pop("data")  # the fingerprint identifies the data, wherever the folder lives
    parts = {"config": key, "init": init_fingerprint(cfg), "data": ds.fingerprint, "engine": ENGINE_VERSION,
             "code": training_code_hash()}  # a run trained by other training code is another run
    return f"{cfg.backbone}-d{cfg.depth}-{stable_hash(parts, 12)}"


def _fix_hint(run_id_: str) -> str:
    """What to do about a damaged run."""
    return (f"train it again with `python -m engine sweep ... --retrain-damaged` (or Train on Home), or remove it with "
            f"`python -m engine runs delete {run_id_}`")


@dataclass
class Run:
    """A finished run on disk: config, history, predictions and weights.

    Every file is checked against the size and SHA-256 recorded when the run finished before it is read; a damaged
    file raises DamagedRunError naming it (see ``problems``).
    """

    dir: Path
    #: True for the Run object returned by the call that trained it (False when it came from the cache).
    trained_now: bool = field(default=False, compare=False)

    @property
    def id(self) -> str:
        """The run's cache key."""
        return self.dir.name

    @property
    def cache_key(self) -> str:
        """A string unique to the results this object gives, for in-memory caches (an external view adds its data)."""
        return self.id

    @property
    def trained_run(self) -> Run:
        """The run whose model this is: the run itself (an external view's run for ``ExternalRun``)."""
        return self

    def _damaged(self, name: str, problem: str) -> DamagedRunError:
        if problem == UNREADABLE:
            return DamagedRunError(f"Run {self.id} cannot be used: {self.dir / name} {problem}.")
        return DamagedRunError(f"Run {self.id} is damaged: {self.dir / name} {problem}. It is not used; "
                               f"{_fix_hint(self.id)}.")

    @cached_property
    def result(self) -> dict:
        """Summary written when the run finished: test criteria, best epoch, timings, file records."""
        path = self.dir / RESULT
        try:
            value = read_json(path)
        except FileNotFoundError:
            raise self._damaged(RESULT, "is missing") from None
        except PermissionError:
            raise self._damaged(RESULT, UNREADABLE) from None
        except DAMAGED_READ_ERRORS as exc:
            raise self._damaged(RESULT, f"cannot be read ({exc})") from None
        if not isinstance(value, dict) or not isinstance(value.get("artifacts"), dict):
            raise self._damaged(RESULT, "has no file records (written by an older LungLens, or altered)")
        if value.pop("checksum", None) != stable_hash(value, 64):
            raise self._damaged(RESULT, "has other content than was written (its checksum differs)")
        return value

    def problems(self, level: Level = "once") -> list[tuple[str, str]]:
        """(file, problem) for every file of the run that does not match its record; empty when the run is sound."""
        try:
            records = self.result["artifacts"]
        except DamagedRunError as exc:
            return [(RESULT, str(exc))]
        found = [(name, file_problem(self.dir / name, records.get(name, {"size": -1, "sha256": ""}), level))
                 for name in ARTIFACTS]
        return [(name, problem) for name, problem in found if problem]

    def check(self, level: Level = "once") -> Run:
        """Raise DamagedRunError naming the first damaged file; return the run when every file matches its record."""
        found = self.problems(level)
        if found and found[0][0] == RESULT:
            raise DamagedRunError(found[0][1])
        if found:
            raise self._damaged(*found[0])
        return self

    def _read(self, name: str, read: Callable[[Path], object]):
        """Read one recorded file after checking it, turning a parse failure into DamagedRunError."""
        path = self.dir / name
        problem = file_problem(path, self.result["artifacts"].get(name, {"size": -1, "sha256": ""}), "once")
        if problem:
            raise self._damaged(name, problem)
        try:
            return read(path)
        except (*DAMAGED_READ_ERRORS, pd.errors.ParserError, SafetensorError, RuntimeError) as exc:
            raise self._damaged(name, f"cannot be read ({type(exc).__name__}: {exc})") from None

    @cached_property
    def meta(self) -> dict:
        """Provenance: code version, data fingerprint, initialisation, device."""
        return self._read("meta.json", read_json)

    @cached_property
    def config(self) -> RunConfig:
        """The run's configuration."""
        return RunConfig.from_dict(self._read("config.json", read_json))

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
        df = pd.DataFrame(self._read("history.json", read_json))
        df["epoch"] = df["epoch"].astype(int)
        return df

    @cached_property
    def predictions(self) -> pd.DataFrame:
        """One row per image of every split: file, split, true and predicted class index, class probabilities."""
        return self._read("predictions.csv", lambda p: pd.read_csv(p, keep_default_na=False))

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
        """The trained model in eval mode on the CPU (no initial weights file is needed: all weights are the run's)."""
        cfg = self.config
        torch.manual_seed(cfg.seed)  # as initial_model, so torch's generator ends in the same state
        model = architecture(cfg.backbone, len(self.classes), cfg.init, head_width=cfg.head_width)
        model.load_state_dict(self._read("model.safetensors", lambda p: load_file(str(p))))
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
    """A finished run by id, checked against its file records (DamagedRunError when a file is damaged)."""
    path = runs_root() / run_id_
    if not (path / RESULT).exists():
        raise LungLensError(f"No finished run {run_id_!r} in {runs_root()}: list them with `python -m engine runs`.")
    return Run(path).check()


def get_run(cfg: RunConfig, ds: Dataset | None = None) -> Run | None:
    """The cached run for ``cfg``, or None if it has not been trained; DamagedRunError if its files are damaged."""
    if not init_weights_cached(cfg.backbone, cfg.init):
        return None  # no run can start from weights this machine lacks, and looking must not download them
    ds = ds or dataset_for(cfg)
    path = runs_root() / run_id(cfg, ds)
    return Run(path).check() if (path / RESULT).exists() else None


def list_runs() -> pd.DataFrame:
    """Every finished, undamaged run with its key criteria, newest first (damaged ones: ``damaged_runs``)."""
    rows = []
    for path in sorted(runs_root().glob("*/" + RESULT)):
        run = Run(path.parent)
        try:
            if run.problems("size"):
                continue  # listed by damaged_runs, with the file and what to do
            rows.append({**run.summary(), "finished": run.result["finished"]})
        except (KeyError, TypeError, LungLensError):
            continue
    df = pd.DataFrame(rows)
    return df.sort_values("finished", ascending=False, ignore_index=True) if len(df) else df


def damaged_runs(level: Level = "size") -> pd.DataFrame:
    """Finished runs whose files do not match their records: columns run, file, problem, fix."""
    rows = []
    for path in sorted(runs_root().glob("*/" + RESULT)):
        run = Run(path.parent)
        problems = run.problems(level)
        if not problems:
            try:
                run.summary()
            except (KeyError, TypeError, LungLensError) as exc:
                problems = [("config.json", f"cannot be used ({exc})")]
        for name, problem in problems:
            text = problem if name == RESULT else f"{path.parent / name} {problem}"
            rows.append({"run": run.id, "file": name, "problem": text, "fix": _fix_hint(run.id)})
    return pd.DataFrame(rows, columns=["run", "file", "problem", "fix"])


def train_run(cfg: RunConfig, progress: ProgressFn | None = None, ds: Dataset | None = None,
              status: Callable[[str], None] | None = None, retrain_damaged: bool = False) -> Run:
    """Return the run for ``cfg``, training it first if it is not cached (resuming an interrupted one).

    A cached run whose files are damaged raises DamagedRunError, or is removed and trained again when
    ``retrain_damaged`` is set. The returned run's ``trained_now`` says whether this call trained it.
    """
    ds = ds or dataset_for(cfg)
    check_dimensions(cfg, ds)
    path = runs_root() / run_id(cfg, ds)
    say = status or (lambda _msg: None)
    if (path / RESULT).exists():
        try:
            return Run(path).check()
        except DamagedRunError:
            if not retrain_damaged:
                raise
    with lock(path / "train"):  # damaged files are removed only under the lock, by the process that retrains
        if (path / RESULT).exists() and _sound_or_cleared(path, retrain_damaged, say):
            return Run(path)  # another process finished it while we waited
        if cfg.sampling == "dual":
            return _dual_store(cfg, ds, path, progress, say, retrain_damaged)
        return _train_and_store(cfg, ds, path, progress, say)


def _sound_or_cleared(path: Path, retrain_damaged: bool, status: Callable[[str], None]) -> bool:
    """True for a sound finished run; for a damaged one, raise, or remove its files when ``retrain_damaged``."""
    try:
        Run(path).check()
        return True
    except DamagedRunError as exc:
        if not retrain_damaged:
            raise
        status(f"{exc} Training it again (--retrain-damaged).")
        log.warning("retraining damaged run %s: %s", path.name, exc)
        (path / RESULT).unlink(missing_ok=True)  # first, so nobody reads the rest as a finished run
        for name in (*ARTIFACTS, "checkpoint.pt"):
            (path / name).unlink(missing_ok=True)
        shutil.rmtree(path / "artifacts", ignore_errors=True)
        return False


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
    _set_aside_bad_checkpoint(path / "checkpoint.pt", status)
    guidance = guidance_for(cfg, ds)
    load = _load_sized(cfg, ds, guidance is not None and cfg.attention)
    status(f"Training {cfg.backbone} at depth {cfg.depth} on {device.type}")
    result = train(cfg, model, images, y, split, len(classes), positive, device, path / "checkpoint.pt", progress,
                   guidance, load)

    preds = ds.items[["file", "path", "label", "group", "mask", "lung_mask"]].copy()
    preds.insert(1, "split", split)
    preds["y"] = y
    preds["pred"] = result.proba.argmax(1)
    for i, c in enumerate(classes):
        preds[f"prob_{c}"] = result.proba[:, i]
    meta = {"init": init_record, "device": str(device), "prefix_cached": result.prefix_cached}
    return _store(path, ds, positive, preds, result.history, state_bytes(result.model), meta,
                  {"best_epoch": result.best_epoch, "epochs_run": len(result.history),
                   "stopped_early": result.stopped_early, "seconds": time.perf_counter() - t0})


def _load_sized(cfg: RunConfig, ds: Dataset, lesion: bool) -> LoadSized | None:
    """With ``cfg.augment``: the films (and, for attention, lesion masks) decoded at Cheng's load size; else None."""
    if not cfg.augment:
        return None
    size = load_size(cfg.image_size)
    return LoadSized(image_array(ds, size, clahe=cfg.clahe), mask_arrays(ds, size)[0] if lesion else None)


def _store(path: Path, ds: Dataset, positive: int, preds: pd.DataFrame, history: list[dict[str, float]],
           weights: bytes, meta: dict, record: dict) -> Run:
    """Write a finished run's files atomically, ``result.json`` (the completion record) last."""
    classes = ds.classes
    y, split = preds["y"].to_numpy(), preds["split"].to_numpy()
    proba = preds[[f"prob_{c}" for c in classes]].to_numpy()
    summary = {s: classification_metrics(y[split == s], proba[split == s].argmax(1), len(classes), positive,
                                         proba[split == s]) for s in ("train", "val", "test") if (split == s).any()}
    atomic_write_bytes(path / "model.safetensors", weights)
    atomic_write_bytes(path / "predictions.csv", preds.to_csv(index=False).encode())
    atomic_write_json(path / "history.json", history)
    atomic_write_json(path / "meta.json", {
        "classes": list(classes), "positive": positive, "data_fingerprint": ds.fingerprint, "data_root": str(ds.root),
        "skipped_images": [list(s) for s in ds.skipped], "code": code_version(), "torch": torch.__version__,
        "python": platform.python_version(), "n_test": int((split == "test").sum()), **meta,
    })
    record = {**summary, **record, "finished": time.time(), "artifacts": record_files(path, ARTIFACTS)}
    # Written last: its presence marks the run complete; its checksum covers its own content.
    atomic_write_json(path / RESULT, {**record, "checksum": stable_hash(record, 64)})
    (path / "checkpoint.pt").unlink(missing_ok=True)
    return Run(path, trained_now=True)


def _dual_store(cfg: RunConfig, ds: Dataset, path: Path, progress: ProgressFn | None,
                status: Callable[[str], None], retrain_damaged: bool) -> Run:
    """Ouyang's dual sampling: train (or load) the uniform and size-balanced members, store their eq. 5 ensemble.

    The ensemble's weights file and history are its uniform member's (what explanations of the run show); its
    predictions are P = w P_US + (1 - w) P_SS per image, w from the image's infection ratio (eq. 5).
    """
    t0 = time.perf_counter()
    members = []
    for k, sampling in enumerate(("uniform", "size-balanced"), 1):
        status(f"Dual sampling: member {k} of 2 ({sampling} sampling)")
        members.append(train_run(cfg.replace(sampling=sampling), _relabel(progress, f"member {k}/2"), ds, status,
                                 retrain_damaged))
    us, ss = members
    combined, weights = dual_predictions(us.predictions, ss.predictions, ds.classes,
                                         infection_ratios(ds, cfg.image_size))
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path / "config.json", cfg.to_dict())
    meta = {"init": us.meta["init"], "device": us.meta.get("device", ""), "prefix_cached": us.meta.get("prefix_cached"),
            "members": {"uniform": us.id, "size-balanced": ss.id}, "dual_weights": weights,
            "model_note": "weights and history are the uniform-sampling member's; predictions are the ensemble's"}
    record = {"best_epoch": us.result["best_epoch"], "epochs_run": us.result["epochs_run"],
              "stopped_early": us.result["stopped_early"],
              "seconds": us.result["seconds"] + ss.result["seconds"] + time.perf_counter() - t0}
    return _store(path, ds, positive_index(cfg, ds.classes), combined, us.history.to_dict("records"),
                  (us.dir / "model.safetensors").read_bytes(), meta, record)


#: What a resumable checkpoint holds (see ``training.train``).
CHECKPOINT_KEYS = frozenset({"model", "optimizer", "generator", "aug_generator", "torch_rng", "history_keys", "history",
                             "best_loss", "best_epoch", "best_state", "bad"})


def _set_aside_bad_checkpoint(path: Path, status: Callable[[str], None]) -> None:
    """Move a checkpoint that cannot be loaded out of the way, with a message, so training starts from scratch."""
    if not path.exists():
        return
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(ck, dict) or not CHECKPOINT_KEYS <= set(ck):
            raise ValueError("not a LungLens checkpoint")
    except Exception as exc:  # noqa: BLE001 - whatever torch raises, the file cannot be resumed from
        aside = path.with_name(f"checkpoint.corrupt-{time.strftime('%Y%m%d-%H%M%S')}.pt")
        os.replace(path, aside)
        message = (f"The checkpoint {path} cannot be loaded ({type(exc).__name__}): it was moved to {aside.name} and "
                   "this run trains again from epoch 1.")
        log.warning(message)
        status(message)


def _relabel(progress: ProgressFn | None, phase: str) -> ProgressFn | None:
    if progress is None:
        return None

    def inner(p: Progress) -> None:
        progress(Progress(p.epoch, p.epochs, p.batch, p.batches, f"{phase}:{p.phase}", p.metrics))

    return inner


def delete_run(run_id_: str) -> None:
    """Remove a run and everything cached for it (LungLensError when there is no such run)."""
    path = runs_root() / run_id_
    if not run_id_ or "/" in run_id_ or run_id_ in (".", "..") or not path.is_dir():
        raise LungLensError(f"No run {run_id_!r} in {runs_root()}: list them with `python -m engine runs`.")
    shutil.rmtree(path)



#: Config fields that must agree for runs of two backbones to be compared: same initialisation, budget, input size
#: and split.
SAME_EXPERIMENT = ("init", "epochs", "image_size", "clahe", "seed", "test_fraction", "val_fraction", "folds", "fold")


def related_runs(base: Run, candidates: Iterable[Run] | None = None) -> dict[tuple[str, int], Run]:
    """Runs comparable with ``base`` by (backbone, depth): same data fingerprint and ``SAME_EXPERIMENT`` fields.

    Runs of ``base``'s own backbone must match its whole config but the depth (the same sweep); of another
    backbone, only the experiment fields (its head width or optimiser may differ). The first candidate wins a
    (backbone, depth), so pass the selection's own runs first and the rest newest first; ``candidates`` None:
    ``base``, then every cached run newest first.
    """
    if candidates is None:
        candidates = [base, *(Run(runs_root() / r) for r in list_runs().get("run", []))]
    out: dict[tuple[str, int], Run] = {}
    cfg = base.config
    for run in candidates:
        other = run.config
        if run.meta["data_fingerprint"] != base.meta["data_fingerprint"]:
            continue
        if other.backbone == cfg.backbone:
            same = other.key_dict() | {"depth": 0} == cfg.key_dict() | {"depth": 0}
        else:
            same = all(getattr(other, f) == getattr(cfg, f) for f in SAME_EXPERIMENT)
        if same:
            out.setdefault((other.backbone, other.depth), run)
    return out
