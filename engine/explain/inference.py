"""Running a StagedNet for the explanation methods: device, class probabilities, target classes, gray inputs."""
from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, to_model_input

#: A class to explain: None (the predicted class), one index for every image, or one index per image.
Target = int | Sequence[int] | np.ndarray | torch.Tensor | None

_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """One lock per model object: explanation methods attach hooks to its modules, so two threads must not overlap."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(model, threading.RLock())


def model_device(model: nn.Module) -> torch.device:
    """The device the model's parameters live on."""
    return next(model.parameters()).device


def bf16_is_fast() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX); elsewhere bf16 autocast is emulated and slow."""
    return torch.backends.cpu.get_cpu_capability() in ("AVX512_BF16", "AMX", "AVX512_AMX")


def predict_proba(model: nn.Module, images_uint8: np.ndarray, batch_size: int = 256, *,
                  bf16: bool = False) -> np.ndarray:
    """Softmax probabilities (N, classes) of (N, H, W) uint8 gray images, in batches without autograd.

    ``bf16`` runs the model under bfloat16 autocast (on the CPU, or CUDA where the model lives there).
    """
    device = model_device(model)
    out = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, len(images_uint8), batch_size):
            x = to_model_input(np.ascontiguousarray(images_uint8[i : i + batch_size])).to(device)
            x = x.contiguous(memory_format=torch.channels_last)  # faster oneDNN convolutions on the CPU
            out.append(torch.softmax(model(x).float(), dim=1).cpu())
    return torch.cat(out).numpy()


def target_tensor(target: Target, n: int) -> torch.Tensor | None:
    """``target`` as one class index per image (length ``n``), or None for "the predicted class"."""
    if target is None:
        return None
    t = torch.as_tensor(np.array(target, dtype=np.int64)).reshape(-1)
    if t.numel() == 1:
        return t.expand(n)
    if t.numel() != n:
        raise ValueError(f"got {t.numel()} target classes for {n} images; give one class or one per image")
    return t


def resolve_targets(model: nn.Module, x: torch.Tensor, target: Target, batch_size: int = 256) -> torch.Tensor:
    """One class index per input of ``x``: the given ones, or the model's predictions where ``target`` is None."""
    given = target_tensor(target, len(x))
    if given is not None:
        return given.clone()
    device = model_device(model)
    with torch.no_grad():  # not inference_mode: the targets are used under autograd afterwards
        return torch.cat([model(x[i : i + batch_size].to(device)).argmax(dim=1).cpu()
                          for i in range(0, len(x), batch_size)])


def batch_targets(model: nn.Module, xb: torch.Tensor, targets: torch.Tensor | None, start: int) -> torch.Tensor:
    """Targets of the batch of images ``xb`` starting at image ``start``; the model's predictions when None."""
    if targets is not None:
        return targets[start : start + len(xb)].to(xb.device)
    with torch.no_grad():
        return model(xb).argmax(dim=1)


class GrayInput(nn.Module):
    """The model as a function of the gray image in [0, 1] (N, 1, H, W): replicate to RGB and ImageNet-normalise.

    Gradient methods then attribute to the gray pixel the user sees (the sum of its three channel gradients,
    by the chain rule), and their baselines are intensities (0 = black).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, gray: torch.Tensor) -> torch.Tensor:
        rgb = gray.expand(-1, 3, -1, -1)
        return self.model((rgb - self.mean.to(gray.device)) / self.std.to(gray.device))

