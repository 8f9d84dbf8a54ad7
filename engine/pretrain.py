"""The built-in initialisation: a backbone pretrained once on the multi-label phantom source corpus and cached.

The source corpus comes from the same generator as the built-in data set but carries other labels: several findings
per image (nodules, masses, effusion, cardiomegaly, opacities) and anatomy and acquisition attributes (view, sex,
rotation, exposure). Learning all of them at once (multi-label, binary cross-entropy) makes the convolutional blocks
learn edges, blobs and textures of chest films: a stand-in for pretraining on a public chest X-ray corpus, made
offline and in minutes on a CPU.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torchvision.transforms import v2

from .data.phantom import SOURCE_TARGETS, source_corpus
from .data.phantom_ct import CT_SOURCE_TARGETS, ct_source_corpus
from .data.transforms import to_model_input
from .device import pick_device
from .integrity import file_problem
from .models.backbones import stage, torchvision_model
from .models.names import VOLUME_BACKBONES, backbone_spec
from .models.weights import state_bytes
from .store import atomic_write_bytes, atomic_write_json, home, lock, stable_hash
from .training import Progress, ProgressFn
from .version import ENGINE_VERSION, training_code_hash

#: Size, seed and schedule of the source corpus pretraining (chosen to stay within two minutes on a 2-core CPU).
SOURCE_IMAGES = 1200
SOURCE_SEED = 1000
SOURCE_HELD_OUT = 0.1
SOURCE_EPOCHS = 3
SOURCE_BATCH = 32
SOURCE_LR = 2e-3
#: The 3-D backbones' source corpus: CT phantoms with multi-label findings (ground glass and consolidation among them,
#: so the frozen blocks learn what tells covid from cap), sized for about five minutes on a 2-core CPU.
CT_SOURCE_VOLUMES = 480
CT_SOURCE_EPOCHS = 4
CT_SOURCE_BATCH = 8
log = logging.getLogger(__name__)


def pretrain_size(arch: str, image_size: int) -> int:
    """The side ``arch`` is pretrained at for runs of ``image_size``: at most its registry's ``pretrain_size`` (128 px
    for most 2-D backbones, 64 px for DPN-92, DPN-SE and SE-ResNet-50, 80 px for Inception-v4, 64 for 3-D volumes):
    convolution filters carry over to larger inputs, and time grows with the area."""
    return min(image_size, backbone_spec(arch).pretrain_size)


def _recipe(arch: str, image_size: int, head_width: int | None) -> dict:
    if arch in VOLUME_BACKBONES:
        return {"arch": arch, "size": pretrain_size(arch, image_size), "head": head_width,
                "images": CT_SOURCE_VOLUMES, "seed": SOURCE_SEED, "epochs": CT_SOURCE_EPOCHS, "batch": CT_SOURCE_BATCH,
                "lr": SOURCE_LR, "targets": list(CT_SOURCE_TARGETS)}
    return {"arch": arch, "size": pretrain_size(arch, image_size), "head": head_width, "images": SOURCE_IMAGES,
            "seed": SOURCE_SEED, "epochs": SOURCE_EPOCHS, "batch": SOURCE_BATCH, "lr": SOURCE_LR,
            "targets": list(SOURCE_TARGETS)}


def _augmenter(arch: str, size: int, gen: torch.Generator) -> Callable[[torch.Tensor], torch.Tensor]:
    """The source corpus' augmentation: a random zoom and small rotations in 2-D; a random left-right flip in 3-D."""
    if arch in VOLUME_BACKBONES:
        def flip(volume: torch.Tensor) -> torch.Tensor:
            return volume.flip(-1) if torch.rand((), generator=gen) < 0.5 else volume
        return flip
    # A real random crop (zoom) and small rotations: the network must find the findings wherever they sit.
    zoom = v2.Compose([v2.RandomResizedCrop(size, scale=(0.7, 1.0), ratio=(0.9, 1.1), antialias=True),
                       v2.RandomAffine(degrees=7)])
    return lambda image: zoom(image[None])[0]


def builtin_backbone_path(arch: str, image_size: int, head_width: int | None) -> Path:
    """Where the built-in backbone for this architecture and input size is cached (named by all it depends on)."""
    key = stable_hash({**_recipe(arch, image_size, head_width), "engine": ENGINE_VERSION, "code": training_code_hash()})
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
        model, record = pretrain(arch, image_size, head_width, progress)
        weights = state_bytes(model)
        record["file"] = {"size": len(weights), "sha256": hashlib.sha256(weights).hexdigest()}
        atomic_write_json(path.with_suffix(".json"), record)
        atomic_write_bytes(path, weights)
        return path


def pretrain(arch: str, image_size: int, head_width: int | None,
             progress: ProgressFn | None = None) -> tuple[nn.Module, dict]:
    """Train ``arch`` from scratch on the source corpus; return it and a record (recipe, history, held-out AUCs)."""
    t0 = time.perf_counter()
    recipe = _recipe(arch, image_size, head_width)
    size, batch, names = recipe["size"], recipe["batch"], recipe["targets"]
    corpus = ct_source_corpus if arch in VOLUME_BACKBONES else source_corpus
    images, targets = corpus(recipe["images"], size, SOURCE_SEED)
    n_val = max(1, int(round(SOURCE_HELD_OUT * len(images))))
    train_idx, val_idx = np.arange(n_val, len(images)), np.arange(n_val)
    torch.manual_seed(SOURCE_SEED)
    device = pick_device()
    model = stage(torchvision_model(arch), arch, len(names), head_width).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=SOURCE_LR, weight_decay=1e-4)
    epochs = recipe["epochs"]
    steps = epochs * math.ceil(len(train_idx) / batch)
    # Warm up over the first 20% of the steps (at least two, or OneCycleLR divides by zero on tiny corpora).
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=SOURCE_LR, total_steps=steps, pct_start=max(0.2, 2 / steps))
    loss_fn = nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(SOURCE_SEED)
    augment = _augmenter(arch, size, gen)
    y = torch.from_numpy(targets)
    history = []
    n_batches = math.ceil(len(train_idx) / batch)
    for epoch in range(1, epochs + 1):
        model.train()
        order = train_idx[torch.randperm(len(train_idx), generator=gen).numpy()]
        running = 0.0
        for b in range(n_batches):
            bi = order[b * batch : (b + 1) * batch]
            x = torch.stack([augment(torch.from_numpy(images[i])) for i in bi])
            loss = loss_fn(model(to_model_input(x).to(device)), y[bi].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += float(loss.detach()) * len(bi)
            if progress is not None:
                progress(Progress(epoch, epochs, b + 1, n_batches, "pretrain"))
        history.append({"epoch": epoch, "train_loss": running / len(train_idx)})
    model.eval()
    with torch.no_grad():
        scores = torch.cat([torch.sigmoid(model(to_model_input(images[val_idx[i : i + 64]]).to(device))).cpu()
                            for i in range(0, len(val_idx), 64)]).numpy()
    aucs = {name: float(roc_auc_score(targets[val_idx, k], scores[:, k]))
            for k, name in enumerate(names) if 0 < targets[val_idx, k].sum() < len(val_idx)}
    record = {**recipe, "history": history, "held_out_auc": aucs,
              "mean_held_out_auc": float(np.mean(list(aucs.values()))) if aucs else math.nan,
              "seconds": time.perf_counter() - t0, "device": str(device)}
    return model.cpu(), record


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
    """What the built-in backbone was trained on and how well (held-out AUC per source target)."""
    return json.loads(path.with_suffix(".json").read_text())
