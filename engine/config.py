"""Run configuration: one frozen dataclass, validated, with the presets of the papers."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .models.names import (ATTENTION_BACKBONES, BACKBONES, N_BLOCKS, VOLUME_BACKBONES, XRV_ARCH, XRV_INIT,
                           check_image_size)

OPTIMIZERS = ("sgd", "rmsprop", "adam")
#: How training batches are drawn (Ouyang et al. §III-C): ``dual`` trains a uniform and a size-balanced model and
#: combines them with their eq. 5 (``engine.dual``).
SAMPLINGS = ("uniform", "size-balanced", "dual")
SCHEDULERS = ("none", "plateau", "cosine")
#: Fields that change how a run executes but not what it computes; they stay out of the run's cache key.
EXECUTION_FIELDS = frozenset({"prefix_cache", "skip_bad"})


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a training run (together with the data it reads)."""

    data: str = "builtin"
    builtin_per_class: int = 300
    confounder_prob: float = 0.0
    confounder_class: str = "covid"
    backbone: str = "alexnet"
    depth: int = 5
    init: str = "builtin"
    head_width: int | None = None
    image_size: int = 128
    clahe: bool = False
    augment: bool = False
    optimizer: str = "adam"
    lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 0.0
    scheduler: str = "plateau"
    batch_size: int = 32
    epochs: int = 10
    patience: int = 3
    class_weights: bool = True
    positive_class: str = "covid"
    seed: int = 0
    test_fraction: float = 0.2
    val_fraction: float = 0.15
    folds: int = 1
    fold: int = 0
    # Ouyang et al.'s online attention (eqs. 1-4): T(A) = sigmoid(alpha (A - beta)), L = L_c + lambda L_ex.
    attention: bool = False
    attention_alpha: float = 100.0
    attention_beta: float = 0.4
    attention_lambda: float = 0.5
    sampling: str = "uniform"
    prefix_cache: bool = True
    skip_bad: bool = False

    def __post_init__(self) -> None:
        validate(self)

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with some fields changed (validated again)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"Unknown config field(s) {sorted(unknown)}; known: {sorted(f.name for f in dataclasses.fields(self))}.")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-able dict."""
        return dataclasses.asdict(self)

    def key_dict(self) -> dict[str, Any]:
        """The fields that identify the result (execution-only fields removed)."""
        return {k: v for k, v in self.to_dict().items() if k not in EXECUTION_FIELDS}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """Build from a dict, rejecting unknown keys with a clear message."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"Unknown config field(s) {sorted(unknown)}; known: {sorted(known)}.")
        return cls(**values)


def validate(c: RunConfig) -> None:
    """Raise ConfigError naming the first invalid field and what values it accepts."""
    if c.backbone not in BACKBONES:
        raise ConfigError(f"backbone={c.backbone!r} is unknown: choose one of {', '.join(BACKBONES)}.")
    if not 0 <= c.depth <= N_BLOCKS:
        raise ConfigError(f"depth={c.depth} is out of range: fine-tuning depth is 0..{N_BLOCKS} blocks.")
    if c.optimizer not in OPTIMIZERS:
        raise ConfigError(f"optimizer={c.optimizer!r} is unknown: choose one of {', '.join(OPTIMIZERS)}.")
    if c.scheduler not in SCHEDULERS:
        raise ConfigError(f"scheduler={c.scheduler!r} is unknown: choose one of {', '.join(SCHEDULERS)}.")
    if c.attention and c.backbone not in ATTENTION_BACKBONES:
        raise ConfigError(f"attention needs a backbone whose classifier is one linear layer on pooled features (its "
                          f"weights make the class activation map); {c.backbone} has a multi-layer head: choose one of "
                          f"{', '.join(ATTENTION_BACKBONES)}.")
    if c.backbone in VOLUME_BACKBONES and c.init == "imagenet":
        raise ConfigError(f"init=imagenet has no 3-D weights for {c.backbone}: use builtin (pretrained on the 3-D "
                          "phantom corpus), scratch, or a path to a 3-D weights file (e.g. MedicalNet's).")
    if c.sampling not in SAMPLINGS:
        raise ConfigError(f"sampling={c.sampling!r} is unknown: choose one of {', '.join(SAMPLINGS)}.")
    if not c.init:
        raise ConfigError(f"init is empty: use builtin, imagenet, scratch, {XRV_INIT} or a path to a weights file.")
    if c.init == XRV_INIT and c.backbone != XRV_ARCH:
        raise ConfigError(f"init={XRV_INIT} is TorchXRayVision's DenseNet-121 pretrained on chest X-rays: use "
                          f"backbone={XRV_ARCH} with it, not {c.backbone!r}.")
    checks = [
        ("image_size", 64 <= c.image_size <= 1024, "between 64 and 1024 pixels"),
        ("epochs", 1 <= c.epochs <= 1000, "between 1 and 1000"),
        ("batch_size", 1 <= c.batch_size <= 4096, "between 1 and 4096"),
        ("lr", 0 < c.lr < 10, "a positive learning rate below 10"),
        ("patience", c.patience >= 0, "0 (no early stopping) or more epochs"),
        ("test_fraction", 0 < c.test_fraction < 0.9, "between 0 and 0.9"),
        ("val_fraction", 0 < c.val_fraction < 0.9, "between 0 and 0.9"),
        ("folds", 1 <= c.folds <= 20, "1 (hold-out) or 2..20 folds"),
        ("fold", 0 <= c.fold < c.folds, f"0..{c.folds - 1} for {c.folds} fold(s)"),
        ("builtin_per_class", 10 <= c.builtin_per_class <= 20000, "between 10 and 20000 images per class"),
        ("confounder_prob", 0 <= c.confounder_prob <= 1, "a probability in [0, 1]"),
        ("head_width", c.head_width is None or 8 <= c.head_width <= 8192, "unset, or 8..8192 units"),
        ("attention_alpha", c.attention_alpha > 0, "positive (Ouyang et al. use 100)"),
        ("attention_beta", 0 <= c.attention_beta <= 1, "in [0, 1] (Ouyang et al. use 0.4)"),
        ("attention_lambda", c.attention_lambda >= 0, "0 or more (Ouyang et al. use 0.5)"),
    ]
    for name, ok, expected in checks:
        if not ok:
            raise ConfigError(f"{name}={getattr(c, name)!r} is invalid: it must be {expected}.")
    check_image_size(c.backbone, c.image_size)


@dataclass(frozen=True)
class Preset:
    """A named experiment: a base config and the fine-tuning depths to sweep."""

    name: str
    description: str
    config: RunConfig
    depths: tuple[int, ...] = field(default=tuple(range(N_BLOCKS + 1)))


PRESETS: dict[str, Preset] = {
    "demo": Preset(
        "demo",
        "CPU demo: ResNet-18 on the built-in phantoms, built-in init, depths 0-5, 128 px, Adam (lr 1e-3, cosine "
        "schedule, 6 epochs), no augmentation so the frozen blocks are computed once: the sweep fits in minutes on "
        "2 cores.",
        RunConfig(backbone="resnet18", init="builtin", image_size=128, optimizer="adam", lr=1e-3, weight_decay=1e-4,
                  scheduler="cosine", epochs=6, patience=3, batch_size=32),
    ),
    "folder": Preset(
        "folder",
        "The default recipe for a folder of real X-rays (chosen by experiment on COVID-QU-Ex): ResNet-18, built-in "
        "init, 128 px, Adam (lr 1e-3, weight decay 1e-4, cosine schedule), Cheng's augmentation with a random crop, "
        "6 epochs with early stopping (patience 3), depths 0-5.",
        RunConfig(backbone="resnet18", init="builtin", image_size=128, optimizer="adam", lr=1e-3, weight_decay=1e-4,
                  scheduler="cosine", augment=True, epochs=6, patience=3, batch_size=32),
    ),
    "ct": Preset(
        "ct",
        "CPU demo in 3-D: MONAI's 3-D ResNet-18 (last stage stride 1, as Ouyang et al.) on the built-in CT phantoms "
        "(covid vs cap, 80 volumes a class) at 64 x 64 x 32 voxels, built-in 3-D init, Adam (lr 1e-3, cosine "
        "schedule, 8 epochs, batch 8), depths 0, 2 and 5. Add --attention and --sampling for Ouyang's training.",
        RunConfig(data="builtin-ct", builtin_per_class=80, backbone="resnet3d18", init="builtin", image_size=64,
                  optimizer="adam", lr=1e-3, weight_decay=1e-4, scheduler="cosine", epochs=8, patience=3, batch_size=8),
        depths=(0, 2, 5),
    ),
    "ouyang": Preset(
        "ouyang",
        "Ouyang et al. 2020 on the built-in CT phantoms, sized for a CPU: the ct preset with online attention "
        "(alpha 100, beta 0.4, lambda 0.5), dual sampling (uniform + size-balanced, combined by their eq. 5) and "
        "5-fold cross-validation, depth 5 (the paper trains the whole 3-D ResNet-34; resnet3d34 is available).",
        RunConfig(data="builtin-ct", builtin_per_class=80, backbone="resnet3d18", init="builtin", image_size=64,
                  optimizer="adam", lr=1e-3, weight_decay=1e-4, scheduler="cosine", epochs=8, patience=3, batch_size=8,
                  attention=True, sampling="dual", folds=5),
        depths=(5,),
    ),
    "cheng": Preset(
        "cheng",
        "Cheng et al. 2021 sized for a CPU: DPN-SE (DPN-92 with squeeze-and-excitation) on the four-class built-in "
        "phantoms (normal, bacterial, viral, covid; 40 images a class, so DPN-92's ~0.3 s per 128-px image forward "
        "and backward trains depth 5 in a few minutes on 2 cores), built-in init, 128 px, Adam (lr 1e-3, weight "
        "decay 1e-4, cosine schedule), Cheng's augmentation, 6 epochs with early stopping (patience 3), depths 0 "
        "and 5. Compare backbones with `sweep --backbones ... --augment both`.",
        RunConfig(data="builtin-4class", builtin_per_class=40, backbone="dpn92se", init="builtin", image_size=128,
                  optimizer="adam", lr=1e-3, weight_decay=1e-4, scheduler="cosine", augment=True, epochs=6,
                  patience=3, batch_size=32),
        depths=(0, 5),
    ),
    "wan": Preset(
        "wan",
        "Wan et al. 2021: modified AlexNet from ImageNet, SGD with momentum, lr 1e-4, batch 32, 50 epochs, 224 px.",
        RunConfig(backbone="alexnet", init="imagenet", image_size=224, optimizer="sgd", lr=1e-4, momentum=0.9,
                  batch_size=32, epochs=50, scheduler="none", patience=0),
        depths=(5,),
    ),
    "lee": Preset(
        "lee",
        "Lee et al. 2020: VGG16 from ImageNet, 0-5 unfrozen blocks, CLAHE, RMSprop lr 1e-5, ReduceLROnPlateau, "
        "early stopping on validation loss, 5-fold cross-validation, 224 px.",
        RunConfig(backbone="vgg16", init="imagenet", image_size=224, clahe=True, optimizer="rmsprop", lr=1e-5,
                  scheduler="plateau", epochs=50, patience=5, folds=5),
    ),
}


def preset(name: str) -> Preset:
    """The preset called ``name``, or ConfigError listing the known ones."""
    if name not in PRESETS:
        raise ConfigError(f"Unknown preset {name!r}: choose one of {', '.join(PRESETS)}.")
    return PRESETS[name]
