"""The training loop: frozen prefix, trainable tail, per-epoch criteria, early stopping and resumable checkpoints."""
from __future__ import annotations

import copy
import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight
from torch import nn

from .attention import attention_map, attention_loss, trimmed
from .config import RunConfig
from .data.transforms import cheng_augment, to_model_input
from .errors import ConfigError
from .metrics import classification_metrics
from .models.backbones import N_BLOCKS, StagedNet, set_depth
from .sampling import size_balanced_indices, size_groups
from .store import atomic_write_bytes

SPLITS = ("train", "val", "test")
#: Above this size (bytes) the frozen-prefix activations are recomputed per batch instead of kept in memory.
PREFIX_CACHE_LIMIT = 4 * 1024**3
#: Added to the run's seed for the augmentation's generator, so its draws are not the epoch orders' numbers.
AUGMENT_SEED_OFFSET = 2**32


@dataclass
class Progress:
    """One progress report: where training stands and what the last finished epoch scored."""

    epoch: int
    epochs: int
    batch: int
    batches: int
    phase: str
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        """Share of the run done, in [0, 1]."""
        return min(1.0, (self.epoch - 1 + self.batch / max(self.batches, 1)) / max(self.epochs, 1))


ProgressFn = Callable[[Progress], None]


@dataclass(frozen=True)
class Guidance:
    """Lesion masks at the model's input size, for Ouyang's attention loss and size-balanced sampling."""

    lesion: np.ndarray       # bool (N, *input shape); all False where an image has no lesion mask
    has_lesion: np.ndarray   # bool (N,)
    ratios: np.ndarray       # float (N,): infection / lung volume, NaN without both masks


@dataclass
class TrainResult:
    """What a finished training returns to the run store."""

    history: list[dict[str, float]]
    best_epoch: int
    stopped_early: bool
    model: StagedNet
    proba: np.ndarray
    prefix_cached: bool


@dataclass(frozen=True)
class LoadSized:
    """Cheng's training films at the load size (``transforms.load_size``), cropped to the input size per batch.

    Decoded from the source files at that size (``engine.data.arrays.image_array``), not enlarged from the input-size
    arrays; only the training rows are read from them: evaluation keeps the input-size images.
    """

    images: np.ndarray                # uint8 (N, L, L), rows as in ``train``'s ``images``
    lesion: np.ndarray | None = None  # bool (N, L, L) lesion masks for the attention loss (None: not needed)


class _Inputs:
    """Gives the trainable tail its inputs: cached prefix activations, or images run through the frozen prefix.

    With ``load`` (augmentation) the training batches are cropped and augmented from the load-size films each time, so
    their prefix is recomputed; evaluation images are unchanged, so the cache still serves them.
    """

    def __init__(self, model: StagedNet, images: np.ndarray, start: int, device: torch.device, use_cache: bool,
                 batch_size: int, load: LoadSized | None = None, generator: torch.Generator | None = None):
        self.model, self.images, self.start, self.device = model, images, start, device
        self.load, self.generator = load, generator
        self.size = images.shape[-1]
        self.cache: torch.Tensor | None = None
        if use_cache and start > 0:
            with torch.no_grad():
                probe = self._prefix(torch.from_numpy(images[:1]))
            if probe.numel() * probe.element_size() * len(images) <= PREFIX_CACHE_LIMIT:
                chunks = [self._prefix(torch.from_numpy(images[i : i + batch_size]))
                          for i in range(0, len(images), batch_size)]
                self.cache = torch.cat(chunks)

    def _prefix(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W) images -> the tail's inputs (the frozen blocks' output)."""
        x = to_model_input(batch).to(self.device, non_blocking=True)
        if self.start > 0:
            with torch.no_grad():
                x = self.model.forward_blocks(x, 0, self.start)
        return x

    def _augmented(self, idx: np.ndarray, with_lesion: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images ``idx`` (and their lesion masks) cut from the load-size films by one draw each (Cheng's recipe)."""
        lesion = self.load.lesion if with_lesion else None
        if with_lesion and lesion is None:
            raise ValueError("augmented attention training needs the lesion masks at the load size (LoadSized.lesion)")
        outs = [cheng_augment(self.load.images[i], *(() if lesion is None else (lesion[i],)), size=self.size,
                              generator=self.generator) for i in idx]
        return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs]) if with_lesion else None

    def get(self, idx: np.ndarray, train: bool = False) -> torch.Tensor:
        """Inputs of the tail for images ``idx`` (augmented when ``train`` and training augments)."""
        if train and self.load is not None:
            return self._prefix(self._augmented(idx, False)[0])
        if self.cache is not None:
            return self.cache[torch.from_numpy(idx)]
        return self._prefix(torch.from_numpy(self.images[idx]))

    def get_with_masks(self, idx: np.ndarray, masks: np.ndarray, train: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs of the tail and the lesion masks of images ``idx``: ``masks`` (input size) as they are, or, when
        training augments, the load-size lesion masks cropped and augmented with their image's draw."""
        if train and self.load is not None:
            x, m = self._augmented(idx, True)
            return self._prefix(x), m
        return self.get(idx, train), torch.from_numpy(masks[idx])


def _optimizer(cfg: RunConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _scheduler(cfg: RunConfig, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler | None:
    if cfg.scheduler == "plateau":
        # Lee et al. use Keras' ReduceLROnPlateau (factor 0.1, patience 10 there); epochs here are fewer.
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.1, patience=max(1, cfg.patience // 2))
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    return None


def _set_modes(model: StagedNet, start: int, training: bool) -> None:
    # Frozen blocks stay in eval mode (batch-norm statistics fixed), so cached and recomputed prefixes agree.
    model.train(training)
    for block in model.blocks[:start]:
        block.eval()


def _evaluate(model: StagedNet, inputs: _Inputs, idx: np.ndarray, y: np.ndarray, loss_fn: nn.Module,
              batch_size: int, amp: bool, n_classes: int) -> tuple[float, np.ndarray]:
    """Mean loss and class probabilities of images ``idx``."""
    probs, total = [], 0.0
    with torch.no_grad(), torch.autocast(inputs.device.type, enabled=amp):
        for i in range(0, len(idx), batch_size):
            b = idx[i : i + batch_size]
            logits = model.forward_from(inputs.get(b), inputs.start).float()
            total += float(loss_fn(logits, torch.from_numpy(y[b]).to(logits.device))) * len(b)
            probs.append(torch.softmax(logits, 1).cpu().numpy())
    proba = np.concatenate(probs) if probs else np.zeros((0, n_classes))
    return total / max(len(idx), 1), proba


def _attention_term(cfg: RunConfig, model: StagedNet, features: torch.Tensor, masks: torch.Tensor, labels: np.ndarray,
                    has_lesion: np.ndarray, positive: int) -> torch.Tensor:
    """Ouyang's L_ex (eq. 3) on the positive cases with a lesion mask, summed and divided by the batch size.

    Dividing by the batch, not by the cases it applies to, keeps each case's weight that of eq. 4 per case:
    L_total = mean over the batch of (L_c + lambda L_ex), with L_ex = 0 for cases without a mask or of another class.
    """
    chosen = np.flatnonzero((labels == positive) & has_lesion)
    if not len(chosen):
        return features.new_zeros(())
    sel = torch.from_numpy(chosen).to(features.device)
    cls = torch.full((len(chosen),), positive, dtype=torch.long, device=features.device)
    amap = attention_map(features[sel].float(), model.classifier.weight, cls)
    soft = trimmed(amap, tuple(masks.shape[1:]), cfg.attention_alpha, cfg.attention_beta)
    return attention_loss(soft, masks[sel.cpu()].to(soft.device, torch.float32)).sum() / len(labels)


def _epoch_order(cfg: RunConfig, train_idx: np.ndarray, gen: torch.Generator, groups: np.ndarray | None) -> np.ndarray:
    """The training images of one epoch: each once in random order, or drawn size-balanced (Ouyang §III-C)."""
    if groups is None:
        return train_idx[torch.randperm(len(train_idx), generator=gen).numpy()]
    return train_idx[size_balanced_indices(groups, len(train_idx), gen)]


def _check_guidance(cfg: RunConfig, guidance: Guidance | None, y: np.ndarray, train_idx: np.ndarray,
                    positive: int) -> None:
    """Raise ConfigError when attention or size-balanced sampling lacks what it needs."""
    if not (cfg.attention or cfg.sampling == "size-balanced"):
        return
    wanted = "--attention" if cfg.attention else "--sampling size-balanced"
    if guidance is None or not guidance.has_lesion[train_idx][y[train_idx] == positive].any():
        raise ConfigError(f"{wanted} needs lesion masks of the positive class's training images (masks/<class>/ "
                          "beside images/, or a manifest's mask_file column); this data has none.")


def _state_bytes(obj: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def train(
    cfg: RunConfig,
    model: StagedNet,
    images: np.ndarray,
    y: np.ndarray,
    split: np.ndarray,
    n_classes: int,
    positive: int,
    device: torch.device,
    checkpoint: Path | None = None,
    progress: ProgressFn | None = None,
    guidance: Guidance | None = None,
    load: LoadSized | None = None,
) -> TrainResult:
    """Train ``model`` at ``cfg.depth`` on the ``train`` rows, stop early on ``val`` loss, score ``test`` every epoch.

    With ``checkpoint`` set, the state after every epoch is saved there atomically and a later call resumes from it.
    ``guidance`` (lesion masks and infection ratios) serves ``cfg.attention`` and size-balanced sampling. With
    ``cfg.augment`` the training batches are cut from ``load`` (the films at the load size) by Cheng's augmentation,
    each image and its lesion mask by one draw of a generator seeded from ``cfg.seed``; ``val``, ``test`` and the
    final predictions use ``images`` as they are.
    """
    torch.manual_seed(cfg.seed)
    start = N_BLOCKS - cfg.depth
    set_depth(model, cfg.depth)
    model.to(device)
    amp = device.type == "cuda"
    if cfg.augment and load is None:
        raise ValueError("augment needs the training films at the load size (load=LoadSized(...))")
    # The augmentation's own generator: epoch orders and dropout draw the same numbers with and without augmentation.
    aug_gen = torch.Generator().manual_seed(cfg.seed + AUGMENT_SEED_OFFSET)
    _set_modes(model, start, False)
    inputs = _Inputs(model, images, start, device, cfg.prefix_cache, cfg.batch_size,
                     load if cfg.augment else None, aug_gen)
    idx = {s: np.flatnonzero(split == s) for s in SPLITS}
    train_idx = idx["train"]
    _check_guidance(cfg, guidance, y, train_idx, positive)
    groups = (size_groups(y[train_idx], guidance.ratios[train_idx], positive)
              if cfg.sampling == "size-balanced" and guidance is not None else None)
    weights = None
    if cfg.class_weights:
        present = np.unique(y[train_idx])
        w = np.ones(n_classes, dtype=np.float32)
        w[present] = compute_class_weight("balanced", classes=present, y=y[train_idx])
        weights = torch.tensor(w, device=device)
    loss_fn = nn.CrossEntropyLoss(weight=weights)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = _optimizer(cfg, params)
    sched = _scheduler(cfg, opt)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, float]] = []
    best = {"loss": math.inf, "epoch": 0, "state": None, "bad": 0}
    first_epoch = 1
    if checkpoint is not None and checkpoint.exists():
        ck = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        if sched is not None and ck.get("scheduler"):
            sched.load_state_dict(ck["scheduler"])
        gen.set_state(ck["generator"])
        aug_gen.set_state(ck["aug_generator"])
        torch.set_rng_state(ck["torch_rng"])
        history = [dict(zip(ck["history_keys"], row.tolist())) for row in ck["history"]]
        best = {"loss": float(ck["best_loss"]), "epoch": int(ck["best_epoch"]), "state": ck["best_state"], "bad": int(ck["bad"])}
        first_epoch = len(history) + 1

    n_batches = math.ceil(len(train_idx) / cfg.batch_size)
    stopped = False
    for epoch in range(first_epoch, cfg.epochs + 1):
        if cfg.patience and best["bad"] >= cfg.patience:
            stopped = True
            break
        t0 = time.perf_counter()
        _set_modes(model, start, True)
        order = _epoch_order(cfg, train_idx, gen, groups)
        running, attended, preds = 0.0, 0.0, np.empty(len(order), dtype=int)
        for b in range(n_batches):
            bi = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            target = torch.from_numpy(y[bi]).to(device)
            with torch.autocast(device.type, enabled=amp):
                if cfg.attention:
                    h, masks = inputs.get_with_masks(bi, guidance.lesion, train=True)
                    features = model.forward_blocks(h, start)
                    logits = model.classifier(model.pool(features))
                    extra = _attention_term(cfg, model, features, masks, y[bi], guidance.has_lesion[bi], positive)
                    attended += float(extra.detach()) * len(bi)
                else:
                    logits = model.forward_from(inputs.get(bi, train=True), start)
                    extra = None
                loss_c = loss_fn(logits.float(), target)
                loss = loss_c if extra is None else loss_c + cfg.attention_lambda * extra
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            running += float(loss_c.detach()) * len(bi)  # the classification loss, comparable with val_loss
            preds[b * cfg.batch_size : b * cfg.batch_size + len(bi)] = logits.argmax(1).cpu().numpy()
            if progress is not None:
                progress(Progress(epoch, cfg.epochs, b + 1, n_batches, "train"))
        # Train criteria come from the batches as trained (dropout on), as Keras reports them and Wan plots them.
        row: dict[str, float] = {"epoch": epoch, "lr": opt.param_groups[0]["lr"], "train_loss": running / len(order)}
        if cfg.attention:  # L_ex per case, averaged over all training cases (0 for cases it does not apply to)
            row["train_attention_loss"] = attended / len(order)
        row.update({f"train_{k}": v for k, v in classification_metrics(y[order], preds, n_classes, positive).items()})
        _set_modes(model, start, False)
        for s in ("val", "test"):
            if len(idx[s]):
                loss_s, proba = _evaluate(model, inputs, idx[s], y, loss_fn, cfg.batch_size * 2, amp, n_classes)
                row[f"{s}_loss"] = loss_s
                m = classification_metrics(y[idx[s]], proba.argmax(1), n_classes, positive, proba)
                row.update({f"{s}_{k}": v for k, v in m.items()})
        monitor = row.get("val_loss", row["train_loss"])
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            sched.step(monitor)
        elif sched is not None:
            sched.step()
        if monitor < best["loss"] - 1e-6:
            best = {"loss": monitor, "epoch": epoch, "state": copy.deepcopy(model.state_dict()), "bad": 0}
        else:
            best["bad"] += 1
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        if checkpoint is not None:
            keys = sorted({k for r in history for k in r})
            atomic_write_bytes(checkpoint, _state_bytes({
                "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict() if sched is not None else {},
                "generator": gen.get_state(), "aug_generator": aug_gen.get_state(), "torch_rng": torch.get_rng_state(),
                "history_keys": keys,
                "history": torch.tensor([[r.get(k, math.nan) for k in keys] for r in history], dtype=torch.float64),
                "best_loss": best["loss"], "best_epoch": best["epoch"], "best_state": best["state"], "bad": best["bad"],
            }))
        if progress is not None:
            progress(Progress(epoch, cfg.epochs, n_batches, n_batches, "epoch", row))
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    _set_modes(model, start, False)
    _, proba = _evaluate(model, inputs, np.arange(len(y)), y, loss_fn, cfg.batch_size * 2, amp, n_classes)
    return TrainResult(history, best["epoch"], stopped, model.cpu(), proba, inputs.cache is not None)
