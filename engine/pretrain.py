"""The built-in initialisation: a backbone pretrained once on the phantom source corpus and cached."""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from .config import RunConfig
from .data.arrays import image_array
from .data.phantom import SOURCE_CLASSES, PhantomSpec
from .data.sources import builtin_dataset
from .data.splits import assign_splits
from .integrity import file_problem
from .device import pick_device
from .models.backbones import stage, torchvision_model
from .models.weights import state_bytes
from .store import atomic_write_bytes, atomic_write_json, home, lock, stable_hash
from .training import ProgressFn, train
from .version import ENGINE_VERSION, training_code_hash

#: The source corpus: same generator, other labels (findings that are not the lesion classes), as a stand-in
#: for pretraining on a large public chest X-ray corpus when ImageNet weights cannot be downloaded.
SOURCE_SPEC = PhantomSpec(task="source", n_per_class=300, seed=1000)
SOURCE_EPOCHS = 6
SOURCE_LR = 3e-4
log = logging.getLogger(__name__)


def builtin_backbone_path(arch: str, image_size: int, head_width: int | None) -> Path:
    """Where the built-in backbone for this architecture and input size is cached (named by all it depends on)."""
    key = stable_hash({"arch": arch, "size": image_size, "head": head_width, "spec": SOURCE_SPEC.to_dict(),
                       "epochs": SOURCE_EPOCHS, "lr": SOURCE_LR, "engine": ENGINE_VERSION,
                       "code": training_code_hash()})
    return home() / "backbones" / f"builtin-{arch}-{image_size}px-{key}.safetensors"


def builtin_backbone(arch: str, image_size: int, head_width: int | None,
                     progress: ProgressFn | None = None) -> Path:
    """Path of the cached built-in backbone for this architecture and input size, pretraining it if needed."""
    path = builtin_backbone_path(arch, image_size, head_width)
    if _sound(path):
        return path
    with lock(path):
        if _sound(path):
            return path
        ds = builtin_dataset(SOURCE_SPEC)
        cfg = RunConfig(backbone=arch, depth=5, init="scratch", image_size=image_size, head_width=head_width,
                        optimizer="adam", lr=SOURCE_LR, scheduler="none", epochs=SOURCE_EPOCHS, patience=0,
                        positive_class=SOURCE_CLASSES[1], seed=SOURCE_SPEC.seed)
        split = assign_splits(ds.items, test_fraction=0.1, val_fraction=0.1, seed=cfg.seed).to_numpy()
        torch.manual_seed(cfg.seed)
        model = stage(torchvision_model(arch), arch, len(ds.classes), head_width)
        result = train(cfg, model, image_array(ds, image_size), ds.items["y"].to_numpy(), split, len(ds.classes),
                       ds.classes.index(cfg.positive_class), pick_device(), progress=progress)
        test = split == "test"
        acc = float((result.proba[test].argmax(1) == ds.items["y"].to_numpy()[test]).mean())
        weights = state_bytes(result.model)
        atomic_write_json(path.with_suffix(".json"), {"source_classes": list(ds.classes), "test_acc": acc,
                                                      "epochs": SOURCE_EPOCHS, "history": result.history,
                                                      "dataset_fingerprint": ds.fingerprint,
                                                      "file": {"size": len(weights),
                                                               "sha256": hashlib.sha256(weights).hexdigest()}})
        atomic_write_bytes(path, weights)
        return path


def _sound(path: Path) -> bool:
    """Whether the cached backbone exists and matches the size and SHA-256 recorded beside it.

    A damaged one (truncated, overwritten, its record unreadable) is removed, so it is pretrained again.
    """
    if not path.exists():
        return False
    try:
        record = json.loads(path.with_suffix(".json").read_text())["file"]
        problem = file_problem(path, record, "once")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        problem = f"has no readable record ({type(exc).__name__})"
    if problem is None:
        return True
    log.warning("pretraining the built-in backbone again: %s %s", path, problem)
    path.unlink(missing_ok=True)
    return False


def builtin_backbone_info(path: Path) -> dict:
    """What the built-in backbone was trained on and how well (its source-task test accuracy)."""
    return json.loads(path.with_suffix(".json").read_text())

