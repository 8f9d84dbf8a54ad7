"""Initial weights of a backbone: ImageNet (torchvision), scratch, a local file, or the built-in pretrained one."""
from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torchvision.models import get_model_weights

from ..errors import WeightsError
from .backbones import StagedNet, stage, torchvision_model

INIT_KINDS = ("builtin", "imagenet", "scratch")


def imagenet_file(arch: str) -> Path:
    """Where torchvision's weights API looks for ``arch``'s ImageNet weights (``$TORCH_HOME/hub/checkpoints``)."""
    url = get_model_weights(arch).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def file_digest(path: Path) -> str:
    """First 16 hex digits of the file's SHA-256."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def check_weights_path(path: Path) -> Path:
    """``path`` when it is a file; a WeightsError saying what it is instead (missing, a folder)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise WeightsError(f"{path} is a folder, not a weights file: give --init the .pth or .safetensors file inside "
                           "it (or builtin, imagenet, scratch).")
    if not path.is_file():
        raise WeightsError(f"Weights file {path} does not exist: check the path given to --init.")
    return path


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or ``.pt/.pth`` file, never unpickling arbitrary objects."""
    path = check_weights_path(path)
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's message suggests weights_only=False, i.e. running the file's code: never pass that on.
        raise WeightsError(f"Cannot read weights from {path}: it is not a plain state dict of tensors (a damaged or "
                           "other file, or one holding Python objects other than tensors, which are not loaded "
                           "because unpickling them could run arbitrary code). Give a plain state dict of tensors "
                           "(.pth) or a .safetensors file.") from None
    except Exception as exc:  # noqa: BLE001 - any decoding failure means the same thing to the user
        raise WeightsError(f"Cannot read weights from {path} ({type(exc).__name__}: the file is damaged or not a "
                           "weights file). Give a torchvision state dict (.pth) or a .safetensors file.") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors.")
    return state


def _load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Load every tensor whose name and shape match; return the names left at their initial value."""
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise WeightsError(f"No tensor of {source} fits this backbone: is it a checkpoint of the same architecture?")
    model.load_state_dict(usable, strict=False)
    return sorted(set(own) - set(usable))


def _imagenet_tv(arch: str) -> torch.nn.Module:
    path = imagenet_file(arch)
    if not path.is_file():
        raise WeightsError(
            f"ImageNet weights for {arch} are not cached and cannot be downloaded here. Put {path.name} "
            f"(from torchvision, {get_model_weights(arch).DEFAULT.url}) into {path.parent} (or set TORCH_HOME), "
            f"or pass --init PATH to a local weights file; --init builtin works offline."
        )
    tv = torchvision_model(arch)
    # Through torchvision's own weights API: it finds the cached file and loads it with weights_only=True.
    tv.load_state_dict(get_model_weights(arch).DEFAULT.get_state_dict(progress=False, check_hash=False))
    return tv


def build_model(arch: str, n_classes: int, init: str, *, head_width: int | None = None,
                builtin_file: Path | None = None) -> tuple[StagedNet, dict]:
    """A StagedNet with ``n_classes`` outputs initialised as ``init`` says, and a record of what was loaded.

    ``init``: ``imagenet``, ``scratch``, ``builtin`` (then ``builtin_file`` is the pretrained backbone) or a path.
    The caller seeds torch first, so ``scratch`` and the new last layer are reproducible.
    """
    if init == "imagenet":
        model = stage(_imagenet_tv(arch), arch, n_classes, head_width)
        return model, {"init": "imagenet", "file": str(imagenet_file(arch)), "sha256": file_digest(imagenet_file(arch))}
    if init == "scratch":
        return stage(torchvision_model(arch), arch, n_classes, head_width), {"init": "scratch"}
    path = builtin_file if init == "builtin" else Path(init).expanduser()
    if path is None:
        raise WeightsError("init=builtin needs the built-in pretrained backbone file.")
    state = read_state_dict(path)
    record = {"init": "builtin" if init == "builtin" else "file", "file": str(path), "sha256": file_digest(path)}
    if any(k.startswith("blocks.") for k in state):  # a LungLens checkpoint (StagedNet names)
        model = stage(torchvision_model(arch), arch, n_classes, head_width)
        record["not_loaded"] = _load_into(model, state, str(path))
        return model, record
    # A torchvision checkpoint: load it under torchvision's names, then restage (which replaces the last layer).
    tv = torchvision_model(arch)
    record["not_loaded"] = _load_into(tv, state, str(path))
    return stage(tv, arch, n_classes, head_width), record


def state_bytes(model: torch.nn.Module) -> bytes:
    """The model's weights serialised as safetensors (loadable without unpickling)."""
    return save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
