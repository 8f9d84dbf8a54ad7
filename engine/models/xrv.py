"""TorchXRayVision's DenseNet-121 pretrained on public chest X-ray corpora, staged like the torchvision backbones."""
from __future__ import annotations

import contextlib
import copyreg
import io
import os
import pickle
import sys
import types
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from ..data.transforms import gray_of
from ..errors import WeightsError
from .backbones import StagedNet, _no_inplace
from .names import XRV_ARCH, XRV_INIT

#: The ``--init`` value that selects these weights; they exist for ``densenet121`` only.
#: TorchXRayVision's name of the weights (trained on NIH, PadChest, CheXpert, MIMIC-CXR, Google, OpenI, RSNA).
XRV_WEIGHTS = "densenet121-res224-all"
#: The intensity range the xrv models were trained on (``xrv.utils.normalize``).
XRV_RANGE = 1024.0


def _xrv() -> types.ModuleType:
    """The torchxrayvision package, imported without its process-wide ``warnings.filterwarnings("ignore")``."""
    with warnings.catch_warnings():
        try:
            import torchxrayvision
        except ImportError:
            raise WeightsError(f"--init {XRV_INIT} needs the torchxrayvision package: pip install torchxrayvision "
                               "(see requirements.txt).") from None
    return torchxrayvision


def xrv_url() -> str:
    """Where TorchXRayVision publishes the ``densenet121-res224-all`` weights."""
    return _xrv().models.model_urls[XRV_WEIGHTS]["weights_url"]


def xrv_cache_dir() -> Path:
    """TorchXRayVision's weights cache (``xrv.utils.get_cache_dir()``, ``~/.torchxrayvision/models_data``)."""
    return Path(_xrv().utils.get_cache_dir()).expanduser()


def xrv_file() -> Path:
    """The path at which the xrv DenseNet-121 weights are looked for and downloaded."""
    return xrv_cache_dir() / os.path.basename(xrv_url())


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send what a downloader prints (progress, notices) to stderr, keeping stdout for results (e.g. --json)."""
    with contextlib.redirect_stdout(sys.stderr if sys.stderr is not None else io.StringIO()):
        yield


def fetch_xrv_file() -> Path:
    """The cached xrv weights file, downloaded through torchxrayvision first if it is not cached."""
    path = xrv_file()
    if path.is_file():
        return path
    xrv = _xrv()
    try:
        with stdout_to_stderr():
            got = Path(xrv.models.get_weights(XRV_WEIGHTS, cache_dir=str(path.parent)))
    except OSError as exc:  # URLError, requests' ConnectionError/HTTPError, a full disk: all are OSErrors
        raise WeightsError(
            f"The TorchXRayVision weights {path.name} are not at {path} and downloading them from {xrv_url()} "
            f"failed ({type(exc).__name__}: {exc}). Download that file and put it at {path}, or choose another "
            "--init (builtin and scratch need no download; PATH loads a local weights file)."
        ) from None
    if not got.is_file():
        raise WeightsError(f"Downloading {xrv_url()} left no file at {got}: download it by hand and put it there.")
    return got


class _Stub:
    """Stands in for a class of a pickled model (nn.Module subclasses): keeps its attributes, runs none of its code."""

    dump_patches = False  # read by torch's legacy loader for pickled modules

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:
        if isinstance(state, tuple):  # (dict, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        self.__dict__.update(state)


_STUB_MODULES = ("torchxrayvision", "torch.nn.", "__main__")
_ALLOWED = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("copyreg", "_reconstructor"): copyreg._reconstructor,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles tensors and containers; model classes become ``_Stub``s; any other global is refused."""

    _stubs: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str):
        module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)  # Python 2 era pickles
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module.startswith(_STUB_MODULES):
            return self._stubs.setdefault((module, name), type(name, (_Stub,), {"__module__": "stub." + module}))
        raise pickle.UnpicklingError(f"it refers to {module}.{name}, which is not part of a model's weights")


_restricted_pickle = types.SimpleNamespace(
    Unpickler=_RestrictedUnpickler,
    load=lambda f, **kw: _RestrictedUnpickler(f, **kw).load(),
    __name__="lunglens_restricted_pickle",
)


def _tensors_of(obj: object, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state dict of a stubbed pickled module tree (parameters and persistent buffers under their names)."""
    out: dict[str, torch.Tensor] = {}
    attrs = vars(obj)
    skip = attrs.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for name, value in (attrs.get(group) or {}).items():
            if isinstance(value, torch.Tensor) and name not in skip:
                out[prefix + name] = value.detach()
    for name, child in (attrs.get("_modules") or {}).items():
        if child is not None:
            out.update(_tensors_of(child, f"{prefix}{name}."))
    return out


def read_xrv_state(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of an xrv weights file (a whole pickled model, or a state dict) without running code from it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy loader warns that the stubs' source differs from the file's
            obj = torch.load(path, map_location="cpu", pickle_module=_restricted_pickle, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any decoding failure means the same thing to the user
        raise WeightsError(f"Cannot read the TorchXRayVision weights {path} ({type(exc).__name__}: {exc}). The file "
                           f"is damaged or another file: delete it so it is downloaded again, or replace it with "
                           f"{xrv_url()}.") from None
    if isinstance(obj, _Stub):
        state = _tensors_of(obj)
    elif isinstance(obj, dict):
        state = obj.get("state_dict", obj) if isinstance(obj.get("state_dict"), dict) else obj
    else:
        state = {}
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} holds no DenseNet weights: replace it with {xrv_url()}.")
    return state


class XrvInput(nn.Module):
    """LungLens's input, (N, 3, H, W) ImageNet-normalised replicas of a gray image in [0, 1], as xrv's input.

    Undoes the normalisation, averages the (equal) channels and rescales [0, 1] to [-1024, 1024]
    (``xrv.utils.normalize``): (N, 1, H, W). Averaging spreads gradients evenly over the three channels.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (2 * gray_of(x) - 1) * XRV_RANGE


def xrv_densenet(n_classes: int, state: dict[str, torch.Tensor] | None = None) -> tuple[StagedNet, list[str]]:
    """The xrv DenseNet-121 as a StagedNet (``state``: xrv's weights) and the names of tensors not loaded.

    Staged like torchvision's DenseNet (``backbones._densenet``), with the input adapter in the conv0 slot so the
    stem's ReLU stays at ``blocks[0][2]`` and ``cam_layers`` finds the same layers.
    """
    xrv = _xrv()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = xrv.models.DenseNet(weights=None)
    not_loaded: list[str] = []
    if state is not None:
        own = net.state_dict()
        usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if not any(k.startswith("features.") for k in usable):
            raise WeightsError("The TorchXRayVision weights file holds no tensor of xrv's DenseNet-121: replace it "
                               f"with {xrv_url()}.")
        net.load_state_dict(usable, strict=False)
        not_loaded = sorted(k for k in set(own) - set(usable) if k.startswith("features."))
    f = net.features
    blocks = [
        nn.Sequential(nn.Sequential(XrvInput(), f.conv0), f.norm0, f.relu0, f.pool0),
        nn.Sequential(f.denseblock1, f.transition1),
        nn.Sequential(f.denseblock2, f.transition2),
        nn.Sequential(f.denseblock3, f.transition3),
        nn.Sequential(f.denseblock4, f.norm5, nn.ReLU()),  # xrv's forward applies F.relu after norm5
    ]
    pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    head = nn.Linear(net.classifier.in_features, n_classes)
    return _no_inplace(StagedNet(XRV_ARCH, blocks, pool, head)), not_loaded
