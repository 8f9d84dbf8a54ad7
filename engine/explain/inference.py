"""Running a StagedNet for the explanation methods: device, class probabilities and target classes."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..data.transforms import to_model_input

#: A class to explain: None (the predicted class), one index for every image, or one index per image.
Target = int | Sequence[int] | np.ndarray | torch.Tensor | None


def model_device(model: nn.Module) -> torch.device:
    """The device the model's parameters live on."""
    return next(model.parameters()).device


def predict_proba(model: nn.Module, images_uint8: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Softmax probabilities (N, classes) of (N, H, W) uint8 gray images, in batches without autograd."""
    device = model_device(model)
    out = []
    with torch.inference_mode():
        for i in range(0, len(images_uint8), batch_size):
            x = to_model_input(np.ascontiguousarray(images_uint8[i : i + batch_size])).to(device)
            x = x.contiguous(memory_format=torch.channels_last)  # faster oneDNN convolutions on the CPU
            out.append(torch.softmax(model(x), dim=1).float().cpu())
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


def batch_targets(model: nn.Module, xb: torch.Tensor, targets: torch.Tensor | None, start: int) -> torch.Tensor:
    """Targets of the batch of images ``xb`` starting at image ``start``; the model's predictions when None."""
    if targets is not None:
        return targets[start : start + len(xb)].to(xb.device)
    with torch.no_grad():
        return model(xb).argmax(dim=1)
