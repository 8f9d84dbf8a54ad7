"""Initial weights of a backbone: ImageNet (torchvision's or timm's), TorchXRayVision, scratch, a local file, or the
built-in one."""
from __future__ import annotations

import hashlib
import pickle
import sys
from functools import lru_cache
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torchvision.models import get_model_weights

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..errors import WeightsError
from .backbones import StagedNet, stage, torchvision_model
from .names import TIMM_BACKBONES, VOLUME_BACKBONES, XRV_ARCH, XRV_INIT
from .xrv import fetch_xrv_file, read_xrv_state, stdout_to_stderr, xrv_densenet, xrv_file

INIT_KINDS = ("builtin", "imagenet", "scratch", XRV_INIT)


def imagenet_url(arch: str) -> str:
    """Where torchvision (or, for a timm backbone, the Hugging Face hub) publishes ``arch``'s ImageNet weights."""
    if arch in TIMM_BACKBONES:
        from .timm_backbones import hf_url

        return hf_url(arch)
    return get_model_weights(arch).DEFAULT.url


def imagenet_file(arch: str) -> Path:
    """Where ``arch``'s ImageNet weights are looked for: torchvision's ``$TORCH_HOME/hub/checkpoints``, or for a timm
    backbone the Hugging Face hub cache (``engine.models.timm_backbones.timm_imagenet_file``)."""
    if arch in TIMM_BACKBONES:
        from .timm_backbones import timm_imagenet_file

        return timm_imagenet_file(arch)
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(imagenet_url(arch)).name


def _imagenet_state(arch: str) -> dict[str, torch.Tensor]:
    """The ImageNet state dict through torchvision's weights API: from the hub cache, else downloaded (hash-checked)."""
    path, url = imagenet_file(arch), imagenet_url(arch)
    cached = path.is_file()
    try:
        with stdout_to_stderr():  # torch.hub prints "Downloading ..." on stdout; the bar goes to stderr
            return get_model_weights(arch).DEFAULT.get_state_dict(progress=sys.stderr is not None, check_hash=True,
                                                                  weights_only=True)
    except OSError as exc:  # URLError, HTTPError, timeouts, a full disk
        raise WeightsError(
            f"ImageNet weights for {arch} ({path.name}) are not at {path} and downloading them from {url} failed "
            f"({type(exc).__name__}: {exc}). Download that file and put it at {path} (torch.hub.get_dir()/checkpoints; "
            "set TORCH_HOME to use another folder), or choose another --init (builtin and scratch need no download; "
            "PATH loads a local weights file)."
        ) from None
    except Exception as exc:  # noqa: BLE001 - a hash mismatch or a file torch cannot read
        if not cached:
            raise WeightsError(f"Downloading {url} to {path} failed ({type(exc).__name__}: {exc}); try again, or "
                               f"download that file by hand and put it at {path}.") from None
        raise WeightsError(f"Cannot read the ImageNet weights {path} ({type(exc).__name__}): the file is damaged or "
                           f"another file. Delete it so it is downloaded again, or replace it with {url}.") from None


def _imagenet_model(arch: str) -> tuple[torch.nn.Module, list[str]]:
    """The library's model of ``arch`` with its ImageNet weights, and the tensors they leave at their initial values.

    A timm model trained on inputs normalised otherwise than LungLens's (ImageNet statistics) gets the difference
    folded into its first layer (``engine.models.timm_backbones.fold_input_normalisation``).
    """
    if arch in TIMM_BACKBONES:
        from .timm_backbones import fold_input_normalisation, timm_imagenet_model

        model, not_loaded = timm_imagenet_model(arch)
        fold_input_normalisation(model, arch, IMAGENET_MEAN, IMAGENET_STD)
        return model, not_loaded
    model = torchvision_model(arch)
    model.load_state_dict(_imagenet_state(arch))
    return model, []


def fetch_imagenet_file(arch: str) -> Path:
    """The cached ImageNet weights file of ``arch``, downloaded through torchvision (timm) first if it is not cached."""
    if not imagenet_file(arch).is_file():
        _imagenet_model(arch)
    return imagenet_file(arch)  # a timm file lands in a snapshot folder of the hub cache, named once downloaded


def init_weights_file(arch: str, init: str) -> Path | None:
    """The downloadable weights file of a named init (fetched when missing); None for inits without one."""
    check_init(arch, init)
    if init == "imagenet":
        return fetch_imagenet_file(arch)
    if init == XRV_INIT:
        return fetch_xrv_file()
    return None


def init_weights_cached(arch: str, init: str) -> bool:
    """Whether a named init's weights file is already on this machine (True for inits without one); never fetches."""
    if init == "imagenet":  # never for a 3-D backbone: there are no 3-D ImageNet weights (check_init says so)
        return arch not in VOLUME_BACKBONES and imagenet_file(arch).is_file()
    if init == XRV_INIT:
        return xrv_file().is_file()
    return True


def file_digest(path: Path) -> str:
    """First 16 hex digits of the file's SHA-256 (remembered while the file's size and mtime stay the same)."""
    path = Path(path)
    st = path.stat()
    return _digest(str(path.resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=64)
def _digest(path: str, _size: int, _mtime_ns: int) -> str:
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
                           f"it (or builtin, imagenet, scratch, {XRV_INIT}).")
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
    if isinstance(state, dict) and state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}  # saved from nn.DataParallel (MedicalNet's files)
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


def check_init(arch: str, init: str) -> None:
    """Raise WeightsError when a named init does not exist for ``arch`` (xrv: a DenseNet-121; imagenet: 2-D only)."""
    if init == "imagenet" and arch in VOLUME_BACKBONES:
        raise WeightsError(f"init=imagenet does not exist for the 3-D backbone {arch}: torchvision publishes no 3-D "
                           "ImageNet weights. Use init=builtin (pretrained here on 3-D CT phantoms), scratch, or the "
                           "path of a 3-D ResNet weights file (for example MedicalNet's resnet_18/34 .pth, loaded by "
                           "tensor name).")
    if init == XRV_INIT and arch != XRV_ARCH:
        raise WeightsError(f"init={XRV_INIT} is TorchXRayVision's DenseNet-121: use backbone={XRV_ARCH} with it, "
                           f"not {arch!r}.")


def architecture(arch: str, n_classes: int, init: str, *, head_width: int | None = None) -> StagedNet:
    """The untrained StagedNet that ``build_model(arch, n_classes, init)`` fills, without reading any weights file.

    It consumes torch's random numbers as ``build_model`` does, so both leave the generator in the same state.
    """
    check_init(arch, init)
    if init == XRV_INIT:
        return xrv_densenet(n_classes)[0]
    return stage(torchvision_model(arch), arch, n_classes, head_width)


def build_model(arch: str, n_classes: int, init: str, *, head_width: int | None = None,
                builtin_file: Path | None = None) -> tuple[StagedNet, dict]:
    """A StagedNet with ``n_classes`` outputs initialised as ``init`` says, and a record of what was loaded.

    ``init``: ``imagenet``, ``xrv-densenet121``, ``scratch``, ``builtin`` (then ``builtin_file`` is the pretrained
    backbone) or a path. ImageNet and xrv weights are downloaded into their usual caches when missing.
    The caller seeds torch first, so ``scratch`` and the new last layer are reproducible.
    """
    check_init(arch, init)
    if init == "imagenet":
        tv, not_loaded = _imagenet_model(arch)
        path = imagenet_file(arch)
        record = {"init": "imagenet", "file": str(path), "sha256": file_digest(path)}
        return stage(tv, arch, n_classes, head_width), {**record, **({"not_loaded": not_loaded} if not_loaded else {})}
    if init == XRV_INIT:
        path = fetch_xrv_file()
        model, not_loaded = xrv_densenet(n_classes, read_xrv_state(path))
        return model, {"init": XRV_INIT, "file": str(path), "sha256": file_digest(path), "not_loaded": not_loaded}
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
