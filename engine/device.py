"""Pick the compute device: CUDA, else Apple MPS, else CPU (``LUNGLENS_DEVICE`` overrides)."""
from __future__ import annotations

import os

import torch

from .errors import ConfigError


def pick_device() -> torch.device:
    """The best available device, or the one named by ``$LUNGLENS_DEVICE``."""
    wanted = os.environ.get("LUNGLENS_DEVICE", "").strip()
    if wanted:
        if wanted.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"LUNGLENS_DEVICE={wanted} but CUDA is not available here; unset it or use cpu.")
        return torch.device(wanted)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
