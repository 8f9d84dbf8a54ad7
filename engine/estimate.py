"""A rough training time before Train: seconds per image-epoch measured from this machine's cached runs of the same
backbone, scaled by images × epochs × depth and image area (volume voxels for 3-D runs), plus the one-time pretraining
of the built-in backbone.

The cost of one image in one epoch is taken as proportional to ``cost_units``: the trainable blocks (depth) plus a
fixed share for the classifier head, evaluation and data handling, plus a third of each frozen block when the frozen
prefix is recomputed every epoch (augmentation on, or its cache off), times ``ATTENTION_FACTOR`` with Ouyang's
attention loss. It grows with the image area, or with a volume's voxels. A dual-sampling run trains two models.
"""
from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .config import RunConfig
from .data.volume import volume_shape
from .device import pick_device
from .errors import LungLensError
from .models.names import N_BLOCKS, REGISTRY, VOLUME_BACKBONES
from .pretrain import CT_SOURCE_VOLUMES, SOURCE_EPOCHS, SOURCE_IMAGES, builtin_backbone_path, pretrain_size
from .runs import Run, list_runs, runs_root
from .store import home

#: Cost units of the head, per-epoch evaluation and data handling, as a number of trainable blocks.
FIXED_UNITS = 2.0
#: A frozen block run forward only (no cached prefix) costs about a third of a trained one (forward and backward).
FROZEN_UNITS = 1 / 3
#: Image side the rates of 2-D backbones are expressed at, and the run size of the volume 3-D rates are expressed at
#: (``volume_shape(64)`` = 32 × 64 × 64 voxels).
REFERENCE_SIZE = 128
REFERENCE_VOLUME_SIZE = 64
#: With no timed run of the backbone here: seconds per image-epoch and cost unit at 128 px for ResNet-18, about twice
#: what a 2-core laptop CPU takes, so the estimate errs long; other backbones scale by their relative compute (the
#: 3-D ResNets per volume-epoch at 32 × 64 × 64 voxels: about 0.2 s for a 3-D ResNet-18 on a busy 2-core CPU).
DEFAULT_RATE = 0.007
#: Relative cost per image-epoch of each backbone (the registry's ``cost``, ``engine.models.names.REGISTRY``).
BACKBONE_COST = {name: b.cost for name, b in REGISTRY.items()}
#: Ouyang's attention loss (the class activation map upsampled to the input, L_ex and its backward pass) costs about
#: half as much again per image (measured: 1.5-2x on the built-in CT phantoms).
ATTENTION_FACTOR = 1.5
#: Pretraining (augmentation, every block trained from scratch) per image-epoch, against fine-tuning at full depth.
PRETRAIN_FACTOR = 1.5
#: The most recent cached runs of a backbone that are timed.
HISTORY_RUNS = 24


def cost_units(cfg: RunConfig) -> float:
    """Relative cost of one image-epoch at the config's depth (see the module docstring)."""
    recomputed = cfg.augment or not cfg.prefix_cache
    units = FIXED_UNITS + cfg.depth + (FROZEN_UNITS * (N_BLOCKS - cfg.depth) if recomputed else 0.0)
    return units * (ATTENTION_FACTOR if cfg.attention else 1.0)


def input_scale(backbone: str, size: int) -> float:
    """How much larger one input of run size ``size`` is than the reference: image area against 128 × 128 px, or
    a 3-D backbone's volume voxels against ``volume_shape(64)``."""
    if backbone in VOLUME_BACKBONES:
        return float(np.prod(volume_shape(size)) / np.prod(volume_shape(REFERENCE_VOLUME_SIZE)))
    return (size / REFERENCE_SIZE) ** 2


def _reference(backbone: str) -> str:
    """The input size the rates of ``backbone`` are expressed at, in words."""
    if backbone in VOLUME_BACKBONES:
        return f"volume-epoch and cost unit at {' × '.join(map(str, volume_shape(REFERENCE_VOLUME_SIZE)))} voxels"
    return f"image-epoch and cost unit at {REFERENCE_SIZE} px"


def trained_models(cfg: RunConfig, configs: Sequence[RunConfig] = ()) -> int:
    """Models ``cfg`` trains: 1, or for dual sampling its two members less those ``configs`` train anyway."""
    if cfg.sampling != "dual":
        return 1
    return sum(cfg.replace(sampling=s) not in configs for s in ("uniform", "size-balanced"))


def _device_type(name: str) -> str:
    return str(name).split(":")[0]


def measured_rates(backbone: str) -> list[float]:
    """Seconds per image-epoch and cost unit at the reference size (``input_scale``) of the most recent cached runs of
    ``backbone`` trained on this machine's device type (a run's own time: its pretraining excluded, image decoding
    included; dual-sampling runs left out)."""
    df = list_runs()
    if df.empty:
        return []
    device = pick_device().type
    rates = []
    for run_id in df[df["backbone"] == backbone]["run"].head(HISTORY_RUNS):
        try:
            run = Run(runs_root() / run_id)
            # A dual-sampling run's time is its two members' (one of them perhaps only loaded from the cache).
            if _device_type(run.meta["device"]) != device or run.config.sampling == "dual":
                continue
            images, epochs = len(run.predictions), int(run.result["epochs_run"])
            rates.append(float(run.result["seconds"]) / (images * epochs * cost_units(run.config)
                                                         * input_scale(backbone, run.config.image_size)))
        except (LungLensError, KeyError, TypeError, ValueError, ZeroDivisionError):
            continue
    return rates


def _pretrain_rates(backbone: str) -> list[float]:
    """Seconds per source image-epoch at the reference size of the built-in backbones of ``backbone`` pretrained on
    this device."""
    device = pick_device().type
    rates = []
    for path in sorted((home() / "backbones").glob(f"builtin-{backbone}-*.json")):
        try:
            record = json.loads(path.read_text())
            if record["arch"] == backbone and _device_type(record["device"]) == device:
                rates.append(float(record["seconds"]) / (record["images"] * record["epochs"]
                                                          * input_scale(backbone, record["size"])))
        except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
            continue
    return rates


@dataclass(frozen=True)
class TrainingEstimate:
    """Rough seconds to train each config (in order) and to pretrain the built-in backbone first, and how."""

    run_seconds: tuple[float, ...]
    pretrain_seconds: float
    #: How the numbers were derived, in words.
    basis: str

    @property
    def seconds(self) -> float:
        """The whole estimate: every run plus the pretraining."""
        return sum(self.run_seconds) + self.pretrain_seconds


def duration(seconds: float) -> str:
    """``about 40 s``, ``about 3 min``, ``about 1 h 20 min`` (rounded for an estimate)."""
    if seconds < 90:
        return f"about {max(5, round(seconds / 5) * 5):.0f} s"
    minutes = round(seconds / 60)
    return f"about {minutes} min" if minutes < 90 else f"about {minutes // 60} h {minutes % 60:02d} min"


def _pretraining(cfg: RunConfig, rate: float) -> tuple[float, str]:
    """Seconds and words for pretraining the built-in backbone ``cfg`` needs (0 when it is cached or not needed)."""
    if cfg.init != "builtin" or builtin_backbone_path(cfg.backbone, cfg.image_size, cfg.head_width).exists():
        return 0.0, ""
    volumes = cfg.backbone in VOLUME_BACKBONES
    images = CT_SOURCE_VOLUMES if volumes else SOURCE_IMAGES
    work = images * SOURCE_EPOCHS * input_scale(cfg.backbone, pretrain_size(cfg.backbone, cfg.image_size))
    timed = _pretrain_rates(cfg.backbone)
    if timed:
        how = (f"timed from {len(timed)} earlier pretraining(s) of {cfg.backbone} here, scaled by "
               f"{'voxels' if volumes else 'image area'}")
        seconds = work * statistics.median(timed)
    else:
        how = (f"{images} source {'volumes' if volumes else 'images'} × {SOURCE_EPOCHS} epochs with every block "
               f"trained, at the rate above × {PRETRAIN_FACTOR} for augmentation")
        seconds = work * rate * (FIXED_UNITS + N_BLOCKS) * PRETRAIN_FACTOR
    return seconds, f"; plus {duration(seconds)} to pretrain the built-in {cfg.backbone} backbone once ({how})"


def estimate_training(configs: Sequence[RunConfig], images: int) -> TrainingEstimate:
    """A rough time to train ``configs`` on ``images`` images: each for its full epochs (early stopping may end it
    sooner), at the median rate of this machine's cached runs of the backbone, else a conservative default."""
    if not configs:
        return TrainingEstimate((), 0.0, "nothing to train")
    backbone = configs[0].backbone
    measured = measured_rates(backbone)
    if measured:
        rate = statistics.median(measured)
        source = (f"measured from {len(measured)} cached {backbone} run(s) on this machine: {rate * 1000:.2f} ms per "
                  f"{_reference(backbone)}")
    else:
        rate = DEFAULT_RATE * BACKBONE_COST.get(backbone, max(BACKBONE_COST.values()))
        source = (f"no {backbone} run timed on this machine yet, so a conservative default of {rate * 1000:.1f} ms per "
                  f"{_reference(backbone)} (about twice a 2-core laptop CPU)")
    configs = list(configs)
    runs = tuple(images * cfg.epochs * cost_units(cfg) * input_scale(cfg.backbone, cfg.image_size) * rate
                 * trained_models(cfg, configs) for cfg in configs)
    pretrain, pretrain_how = _pretraining(configs[0], rate)
    volumes = backbone in VOLUME_BACKBONES
    extras = "".join(note for note, applies in (
        (f", × {ATTENTION_FACTOR:g} with the attention loss", any(c.attention for c in configs)),
        (", two models for a dual-sampling run (less a member trained anyway)", any(c.sampling == "dual"
                                                                                     for c in configs))) if applies)
    basis = (f"Rough: {images:,} {'volumes' if volumes else 'images'} × up to {configs[0].epochs} epochs × "
             f"{len(configs)} run(s), a run's cost growing with its depth ({FIXED_UNITS:g} + depth units) and the "
             f"{'voxels of a volume' if volumes else 'image area'}{extras}; {source}{pretrain_how}.")
    return TrainingEstimate(runs, pretrain, basis)
