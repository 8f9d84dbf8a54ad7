"""timm backbones (Cheng et al.'s bench: DPN-68, DPN-92, DPN-SE, SE-ResNet-50, EfficientNet-B0, Inception-v4) staged
into five blocks like the torchvision ones, their CAM layers, and their ImageNet weights through timm.

Every staged block keeps timm's module names under ``blocks.<i>`` (e.g. ``blocks.3.conv4_7.c1x1_a.conv``), so a
LungLens checkpoint reads like a timm one. Pool: global average pooling and Flatten; classifier: one Linear layer
on the ``num_features`` deep features (so they all support Ouyang et al.'s attention loss). Block strides (output
side = input side / stride):

- DPN (68, 92, SE): 1 stem ``conv1_1`` + ``conv1_pool`` (/4); 2 ``conv2_*`` (/4); 3 ``conv3_*`` (/8); 4 ``conv4_*``
  (/16); 5 ``conv5_*`` and ``conv5_bn_ac`` (/32). timm 1.0's dual-path blocks carry the residual and dense paths as one
  concatenated tensor (the first block of a stage projects it), so every block takes and returns a tensor.
- SE-ResNet-50: like ResNet-50 (``engine.models.backbones._resnet``): stem /4, layer1 /4, layer2 /8, layer3 /16,
  layer4 /32.
- EfficientNet-B0, Inception-v4: ending where timm's ``feature_info`` taps its reductions 2, 4, 8, 16 and 32.
  EfficientNet-B0: 1 ``conv_stem``, ``bn1`` and MBConv stage 1 (/2); 2 stage 2 (/4); 3 stage 3 (/8); 4 stages 4-5
  (/16); 5 stages 6-7 with ``conv_head`` and ``bn2`` (/32). Inception-v4 (``features`` indices): 1 the three stem
  convolutions 0-2 (/2); 2 Mixed-3a (/4); 3 Mixed-4a, Mixed-5a and Inception-A x4, 4-9 (/8); 4 Reduction-A and
  Inception-B x7, 10-17 (/16); 5 Reduction-B and Inception-C x3, 18-21 (/32).
"""
from __future__ import annotations

from collections import OrderedDict
from functools import partial
from pathlib import Path

import timm
import torch
from torch import nn

from ..errors import WeightsError
from .backbones import StagedNet
from .dpn_se import add_squeeze_excitation
from .names import backbone_spec
from .xrv import stdout_to_stderr

#: Backbones made from a timm model by a change of architecture (their ImageNet weights are the base model's).
VARIANTS = {"dpn92se": add_squeeze_excitation}
#: The file of a timm model's ImageNet weights on the Hugging Face hub.
HF_FILE = "model.safetensors"

CamLayer = tuple[str, str, nn.Module]


def timm_model(arch: str, pretrained_file: Path | None = None, download: bool = False) -> nn.Module:
    """timm's model of ``arch`` with its ImageNet head: untrained, with the ImageNet weights of ``pretrained_file``
    (loaded by timm's pretrained path), or downloaded from the Hugging Face hub into its cache (``download``)."""
    return _pretrained_timm_model(arch, pretrained_file, download)[0]


def _pretrained_timm_model(arch: str, pretrained_file: Path | None, download: bool) -> tuple[nn.Module, list[str]]:
    """``timm_model``'s model and the names of the tensors its weights file cannot fill (a variant's additions)."""
    name = backbone_spec(arch).timm_name
    overlay = {"file": str(pretrained_file)} if pretrained_file is not None else None
    model = timm.create_model(name, pretrained=pretrained_file is not None or download,
                              pretrained_cfg_overlay=overlay)
    if arch not in VARIANTS:
        return model, []
    base = set(model.state_dict())
    model = VARIANTS[arch](model)
    return model, sorted(set(model.state_dict()) - base)


def _block(modules: list[tuple[str, nn.Module]]) -> nn.Sequential:
    return nn.Sequential(OrderedDict(modules))


def _head(model: nn.Module, arch: str, blocks: list[nn.Sequential], n_classes: int) -> StagedNet:
    pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    return StagedNet(arch, blocks, pool, nn.Linear(model.num_features, n_classes))


def stage_dpn(model: nn.Module, n_classes: int, arch: str) -> StagedNet:
    """DPN as five blocks (module docstring); timm's 1x1-conv classifier becomes a Linear layer."""
    children = list(model.features.named_children())
    blocks = [_block([(k, m) for k, m in children if k.startswith(f"conv{s}_")]) for s in range(1, 6)]
    return _head(model, arch, blocks, n_classes)


def stage_efficientnet(model: nn.Module, n_classes: int, arch: str) -> StagedNet:
    """EfficientNet as five blocks (module docstring); MBConv stage k is ``mbconv<k>`` (timm's ``blocks.<k-1>``)."""
    stages = [(f"mbconv{k}", s) for k, s in enumerate(model.blocks, 1)]
    blocks = [_block([("conv_stem", model.conv_stem), ("bn1", model.bn1), stages[0]]), _block(stages[1:2]),
              _block(stages[2:3]), _block(stages[3:5]),
              _block([*stages[5:7], ("conv_head", model.conv_head), ("bn2", model.bn2)])]
    return _head(model, arch, blocks, n_classes)


#: Inception-v4's blocks as ranges of ``features`` indices (module docstring).
INCEPTION_BLOCKS = ((0, 3), (3, 4), (4, 10), (10, 18), (18, 22))


def stage_inception(model: nn.Module, n_classes: int, arch: str) -> StagedNet:
    """Inception-v4 as five blocks of its ``features`` modules, each keeping its index as its name."""
    f = model.features
    blocks = [_block([(str(i), f[i]) for i in range(a, b)]) for a, b in INCEPTION_BLOCKS]
    return _head(model, arch, blocks, n_classes)


STAGERS = {"dpn": stage_dpn, "efficientnet": stage_efficientnet, "inception": stage_inception}


# ---- CAM layers: the activated feature maps A^k per unit (see engine.models.backbones.cam_layers) -------------------

def cam_layers_dpn(model: StagedNet, names: dict[int, str]) -> list[CamLayer]:
    """DPN: the stem's BN-ReLU, then in every dual-path unit the BN-ReLU maps its last 1x1 convolution reads (the
    rectified output of the grouped 3x3 convolution: DPN is pre-activation, so a unit's output is rectified only by
    the next unit), and the final BN-activation ``conv5_bn_ac`` (the maps pooled for the classifier)."""
    stem = model.blocks[0].conv1_1.bn
    out = [(names[id(stem)], "stem conv1 (block 1)", stem)]
    for b, block in enumerate(model.blocks[1:], 2):
        for key, unit in block.named_children():
            if hasattr(unit, "c1x1_c"):
                out.append((names[id(unit.c1x1_c.bn)], f"{key} (block {b})", unit.c1x1_c.bn))
    last = model.blocks[4].conv5_bn_ac
    return [*out, (names[id(last)], "conv5 output (block 5)", last)]


def cam_layers_efficientnet(model: StagedNet, names: dict[int, str]) -> list[CamLayer]:
    """EfficientNet: the stem's BN-SiLU, in every MBConv unit the gated (squeeze-and-excitation) activations its
    1x1 projection reads (the unit's output itself is linear, not activated), and the head's BN-SiLU ``bn2``."""
    stem = model.blocks[0].bn1
    out = [(names[id(stem)], "stem conv (block 1)", stem)]
    for b, block in enumerate(model.blocks, 1):
        for key, stage in block.named_children():
            if key.startswith("mbconv"):
                for k, unit in enumerate(stage, 1):
                    out.append((names[id(unit.se)], f"MBConv stage {key[6:]} unit {k} (block {b})", unit.se))
    head = model.blocks[4].bn2
    return [*out, (names[id(head)], "conv_head (block 5)", head)]


_INCEPTION_LABELS = {"Mixed3a": "Mixed-3a", "Mixed4a": "Mixed-4a", "Mixed5a": "Mixed-5a", "InceptionA": "Inception-A",
                     "InceptionB": "Inception-B", "InceptionC": "Inception-C", "ReductionA": "Reduction-A",
                     "ReductionB": "Reduction-B", "ConvNormAct": "stem conv"}


def cam_layers_inception(model: StagedNet, names: dict[int, str]) -> list[CamLayer]:
    """Inception-v4: the output of every module (each a BN-ReLU convolution or a concatenation of rectified
    branches, so every output is rectified): stem conv 1-3, Mixed-3a/4a/5a, Inception-A/B/C k, Reduction-A/B."""
    out, seen = [], {}
    for b, block in enumerate(model.blocks, 1):
        for module in block:
            kind = _INCEPTION_LABELS[type(module).__name__]
            seen[kind] = seen.get(kind, 0) + 1
            numbered = kind.startswith(("Inception", "stem"))
            label = f"{kind} {seen[kind]} (block {b})" if numbered else f"{kind} (block {b})"
            out.append((names[id(module)], label, module))
    return out


CAM_LAYERS = {"dpn": cam_layers_dpn, "efficientnet": cam_layers_efficientnet, "inception": cam_layers_inception}


# ---- ImageNet weights through timm and the Hugging Face hub cache -------------------------------------------------

def hf_repo(arch: str) -> str:
    """The Hugging Face hub repository of ``arch``'s ImageNet weights (``timm/<model>.<tag>``)."""
    return f"timm/{backbone_spec(arch).timm_name}"


def hf_url(arch: str) -> str:
    """Where the hub serves ``arch``'s ImageNet weights file."""
    return f"https://huggingface.co/{hf_repo(arch)}/resolve/main/{HF_FILE}"


def _hf_cache() -> Path:
    """The Hugging Face hub cache folder (``HF_HUB_CACHE``, by default ``~/.cache/huggingface/hub``)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def timm_imagenet_file(arch: str) -> Path:
    """Where ``arch``'s ImageNet weights are in the hub cache; when missing, where to put them by hand
    (``<cache>/models--timm--<model>/snapshots/main/model.safetensors``, which the hub cache resolves too)."""
    from huggingface_hub import try_to_load_from_cache

    repo = hf_repo(arch)
    cached = try_to_load_from_cache(repo, HF_FILE, cache_dir=_hf_cache())
    if isinstance(cached, str):
        return Path(cached)
    return _hf_cache() / f"models--{repo.replace('/', '--')}" / "snapshots" / "main" / HF_FILE


def timm_imagenet_model(arch: str) -> tuple[nn.Module, list[str]]:
    """timm's model of ``arch`` with its ImageNet weights (from the hub cache, else downloaded into it by timm) and
    the names of the tensors left at their initial values (DPN-SE: its SE layers, which DPN-92's weights lack)."""
    path = timm_imagenet_file(arch)
    if path.is_file():
        try:
            return _pretrained_timm_model(arch, path, False)
        except Exception as exc:  # noqa: BLE001 - a truncated or foreign file, whatever the reader says
            raise WeightsError(f"Cannot read the ImageNet weights {path} ({type(exc).__name__}): the file is damaged "
                               f"or another file. Delete it so it is downloaded again, or replace it with "
                               f"{hf_url(arch)}.") from None
    try:
        with stdout_to_stderr():  # the hub's progress bar goes to stderr, and so must anything printed
            return _pretrained_timm_model(arch, None, True)
    except Exception as exc:  # noqa: BLE001 - offline, hub errors, timeouts, a full disk
        raise WeightsError(
            f"ImageNet weights for {arch} (timm's {backbone_spec(arch).timm_name}) are not in the Hugging Face hub "
            f"cache and downloading them failed ({type(exc).__name__}: {str(exc)[:200]}). Download {hf_url(arch)} "
            f"and put it at {path} (set HF_HUB_CACHE to use another cache folder), or choose another --init "
            "(builtin and scratch need no download; PATH loads a local weights file).") from None


# ---- input normalisation ------------------------------------------------------------------------------------------

def fold_input_normalisation(model: nn.Module, arch: str, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    """Make a timm model trained on inputs normalised with its own mean and std take ``mean``/``std``-normalised ones.

    LungLens feeds every 2-D model ``(g - mean_c) / std_c`` (ImageNet statistics). A model trained on
    ``(g - m_c) / s_c`` (Inception-v4: 0.5 and 0.5; DPN: its MXNet statistics) gets that input if its first
    convolution's weights are multiplied by ``std_c / s_c`` and the constant ``(mean_c - m_c) / s_c`` it then misses,
    passed through the convolution, is subtracted in the BatchNorm that follows (its running mean). Exact for an
    unpadded first convolution (Inception-v4); with zero padding (DPN) the border pixels differ slightly.
    """
    own_mean, own_std = _timm_stats(arch)
    if own_mean == tuple(mean) and own_std == tuple(std):
        return
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    as_tensor = partial(torch.tensor, dtype=conv.weight.dtype)
    scale = (as_tensor(std) / as_tensor(own_std)).view(1, -1, 1, 1)
    shift = ((as_tensor(mean) - as_tensor(own_mean)) / as_tensor(own_std)).view(1, -1, 1, 1)
    with torch.no_grad():
        # conv_own(x * scale + shift) = conv_folded(x) + sum over the taps of w_own * shift, one constant per channel.
        bn.running_mean.sub_((conv.weight * shift).sum(dim=(1, 2, 3)))
        conv.weight.mul_(scale)


def _timm_stats(arch: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The input mean and std ``arch``'s ImageNet weights were trained with (timm's pretrained config)."""
    cfg = timm.models.get_pretrained_cfg(backbone_spec(arch).timm_name)
    return tuple(cfg.mean), tuple(cfg.std)
