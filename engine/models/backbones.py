"""Backbones (torchvision, timm, MONAI) rearranged as five convolutional blocks, a pooling step and a classifier head.

The registry is ``engine.models.names.REGISTRY``; each entry's family picks its staging here (the timm families in
``engine.models.timm_backbones``, imported only when such a backbone is built).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torchvision
from torch import nn

from ..errors import ConfigError
from .names import BACKBONES, MLP_HEAD_BACKBONES, N_BLOCKS, REGISTRY, check_image_size
from .resnet3d import monai_resnet3d

#: timm's squeeze-and-excitation modules: their 1x1 "convolutions" act on pooled vectors, not on feature maps.
_SQUEEZE_EXCITATION = ("SEModule", "SqueezeExcite")


class StagedNet(nn.Module):
    """A CNN as ``classifier(pool(block5(...block1(x))))``.

    Keeping the five blocks explicit makes fine-tuning depth, the frozen-prefix cache and "deep features"
    (the input of the classifier) the same operation for every architecture.
    """

    def __init__(self, arch: str, blocks: list[nn.Module], pool: nn.Module, classifier: nn.Module):
        super().__init__()
        self.arch = arch
        self.blocks = nn.ModuleList(blocks)
        self.pool = pool
        self.classifier = classifier

    def forward_blocks(self, x: torch.Tensor, start: int = 0, stop: int = N_BLOCKS) -> torch.Tensor:
        """Run blocks ``start`` .. ``stop - 1`` (0-based); ConfigError for an image below the backbone's minimum."""
        if start == 0 and x.dim() == 4 and self.arch in REGISTRY:
            check_image_size(self.arch, min(x.shape[-2:]))
        for block in self.blocks[start:stop]:
            x = block(x)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Deep features: the flattened output of the last convolutional stage, as fed to the classifier."""
        return self.pool(self.forward_blocks(x))

    def forward_from(self, h: torch.Tensor, start: int) -> torch.Tensor:
        """Logits from the output of block ``start - 1`` (``start == 0``: from the image)."""
        return self.classifier(self.pool(self.forward_blocks(h, start)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from(x, 0)


def _no_inplace(module: nn.Module) -> nn.Module:
    # In-place activations break the backward hooks that Captum's guided backpropagation and Grad-CAM install: every
    # module with an ``inplace`` flag (nn.ReLU, timm's SiLU/ReLU inside BatchNormAct2d and SE modules) computes anew.
    for m in module.modules():
        if getattr(m, "inplace", False) is True:
            m.inplace = False
    return module


def _head_mlp(classifier: nn.Sequential, n_classes: int, width: int | None) -> nn.Sequential:
    """AlexNet/VGG classifier with a new last layer; ``width`` narrows fc6/fc7 (a CPU-speed option)."""
    layers = list(classifier)
    if width is not None:
        linears = [i for i, m in enumerate(layers) if isinstance(m, nn.Linear)]
        first, second = linears[0], linears[1]
        layers[first] = nn.Linear(layers[first].in_features, width)
        layers[second] = nn.Linear(width, width)
    last = max(i for i, m in enumerate(layers) if isinstance(m, nn.Linear))
    layers[last] = nn.Linear(width or layers[last].in_features, n_classes)
    return nn.Sequential(*layers)


def _alexnet(tv: nn.Module, n_classes: int, width: int | None, arch: str) -> StagedNet:
    f = tv.features  # conv1..conv5 at indices 0, 3, 6, 8, 10 (Wan et al.'s five conv layers)
    blocks = [f[0:3], f[3:6], f[6:8], f[8:10], f[10:13]]
    return StagedNet(arch, blocks, nn.Sequential(tv.avgpool, nn.Flatten(1)), _head_mlp(tv.classifier, n_classes, width))


def _vgg(tv: nn.Module, n_classes: int, width: int | None, arch: str) -> StagedNet:
    blocks, start = [], 0
    for i, m in enumerate(tv.features):  # five blocks, each closed by a max-pool (Lee et al. fig. 3)
        if isinstance(m, nn.MaxPool2d):
            blocks.append(tv.features[start : i + 1])
            start = i + 1
    return StagedNet(arch, blocks, nn.Sequential(tv.avgpool, nn.Flatten(1)), _head_mlp(tv.classifier, n_classes, width))


def _resnet(tv: nn.Module, n_classes: int, width: int | None, arch: str) -> StagedNet:
    """A torchvision 2-D ResNet, timm's SE-ResNet or a MONAI 3-D ResNet (``engine.models.resnet3d``), staged alike.

    Blocks: 1 the stem (conv1, bn1, ReLU, max-pool; /4), 2-5 the residual stages layer1 (/1), layer2 (/2), layer3 (/2)
    and layer4 (/2 in 2-D; /1 in 3-D, Ouyang et al. §III-A, so block 5's maps are 1/16 of the volume). Pool: global
    average pooling (AdaptiveAvgPool2d/3d to 1) and Flatten, giving 512 deep features for ResNet-18/34 and 2048 for
    ResNet-50; classifier: one Linear layer (whose rows are the class activation weights). timm's SE-ResNet-50 has the
    same layout (its SE modules sit inside the bottleneck units).
    """
    act = next(getattr(tv, a) for a in ("relu", "act", "act1") if hasattr(tv, a))  # MONAI: ``act``, timm: ``act1``
    stem = nn.Sequential(tv.conv1, tv.bn1, act, tv.maxpool)
    blocks = [stem, tv.layer1, tv.layer2, tv.layer3, tv.layer4]
    pool = tv.avgpool if hasattr(tv, "avgpool") else nn.AdaptiveAvgPool2d(1)  # timm: a global pool of its own
    return StagedNet(arch, blocks, nn.Sequential(pool, nn.Flatten(1)), nn.Linear(tv.fc.in_features, n_classes))


def _densenet(tv: nn.Module, n_classes: int, width: int | None, arch: str) -> StagedNet:
    f = tv.features
    # torchvision's DenseNet applies F.relu after norm5 inside forward(); here it is the last module of block 5, so
    # that block's output is the rectified feature map A^k that Grad-CAM weights (it has no parameters, so the
    # state-dict keys are unchanged).
    blocks = [
        nn.Sequential(f.conv0, f.norm0, f.relu0, f.pool0),
        nn.Sequential(f.denseblock1, f.transition1),
        nn.Sequential(f.denseblock2, f.transition2),
        nn.Sequential(f.denseblock3, f.transition3),
        nn.Sequential(f.denseblock4, f.norm5, nn.ReLU()),
    ]
    pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    return StagedNet(arch, blocks, pool, nn.Linear(tv.classifier.in_features, n_classes))


def _timm_stager(family: str) -> Callable[..., StagedNet]:
    """The staging of a timm family (``engine.models.timm_backbones.STAGERS``), importing timm only when called."""
    def build(model: nn.Module, n_classes: int, _width: int | None, arch: str) -> StagedNet:
        from .timm_backbones import STAGERS

        return STAGERS[family](model, n_classes, arch)
    return build


#: How each family is staged: ``builder(model, n_classes, head_width, arch)``.
_FAMILY_BUILDERS: dict[str, Callable[..., StagedNet]] = {
    "alexnet": _alexnet, "vgg": _vgg, "resnet": _resnet, "densenet": _densenet,
    **{family: _timm_stager(family) for family in ("dpn", "efficientnet", "inception")},
}
_BUILDERS: dict[str, Callable[..., StagedNet]] = {name: _FAMILY_BUILDERS[b.family] for name, b in REGISTRY.items()}


def check_backbone(arch: str) -> None:
    """Raise ConfigError unless ``arch`` is a known backbone."""
    if arch not in _BUILDERS:
        raise ConfigError(f"Unknown backbone {arch!r}: choose one of {', '.join(BACKBONES)}.")


def torchvision_model(arch: str) -> nn.Module:
    """An untrained model of ``arch`` from its library with its ImageNet-shaped head: torchvision's, timm's
    (``engine.models.timm_backbones.timm_model``) or, for the 3-D backbones, MONAI's."""
    check_backbone(arch)
    library = REGISTRY[arch].library
    if library == "monai":
        return monai_resnet3d(arch)
    if library == "timm":
        from .timm_backbones import timm_model

        return timm_model(arch)
    return torchvision.models.get_model(arch, weights=None)


def stage(tv_model: nn.Module, arch: str, n_classes: int, head_width: int | None = None) -> StagedNet:
    """Rearrange a library's model (``torchvision_model``) into a StagedNet whose last layer has ``n_classes``
    outputs."""
    check_backbone(arch)
    if head_width is not None and arch not in MLP_HEAD_BACKBONES:
        raise ConfigError(f"head_width applies to AlexNet and VGG only, not {arch!r}; leave it unset.")
    return _no_inplace(_BUILDERS[arch](tv_model, n_classes, head_width, arch))


def set_depth(model: StagedNet, depth: int) -> None:
    """Freeze all but the last ``depth`` blocks; the classifier head always trains."""
    if not 0 <= depth <= N_BLOCKS:
        raise ConfigError(f"Fine-tuning depth must be between 0 and {N_BLOCKS}, got {depth}.")
    first_trainable = N_BLOCKS - depth
    for i, block in enumerate(model.blocks):
        block.requires_grad_(i >= first_trainable)
    model.pool.requires_grad_(True)
    model.classifier.requires_grad_(True)


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d | nn.Conv3d]]:
    """Every Conv2d (Conv3d in a 3-D backbone) of the model that works on feature maps, with its qualified name,
    input to output (the 1x1 layers inside squeeze-and-excitation modules act on pooled vectors: left out)."""
    gates = {id(sub) for m in model.modules() if type(m).__name__ in _SQUEEZE_EXCITATION for sub in m.modules()}
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Conv3d)) and id(m) not in gates]


def last_conv_layer(model: nn.Module) -> tuple[str, nn.Conv2d | nn.Conv3d]:
    """The last Conv2d or Conv3d (Grad-CAM's default layer)."""
    return conv_layers(model)[-1]


def _after_relu(block: nn.Module) -> list[nn.ReLU]:
    """The ReLU modules of a plain conv stack, each right after its convolution (AlexNet, VGG)."""
    return [m for m in block.modules() if isinstance(m, nn.ReLU)]


def cam_layers(model: StagedNet) -> list[tuple[str, str, nn.Module]]:
    """Layers whose output is a rectified feature map A^k (what CAM methods weight), input to output.

    Each entry is (qualified module name, human label, module). Grad-CAM (Selvaraju et al.; Wan eqs. 7-9) and
    pytorch-grad-cam weight the activations *after* the ReLU: a convolution's raw output is signed, and weighting it
    cancels out to an all-zero map. AlexNet/VGG: the ReLU after each convolution; ResNet and SE-ResNet: the output of
    each residual unit (rectified after the addition); DenseNet: the stem's ReLU, each transition's ReLU and the final
    ReLU; DPN, EfficientNet, Inception-v4: see ``engine.models.timm_backbones`` (``cam_layers_<family>``).
    """
    names = {id(m): n for n, m in model.named_modules()}
    family = REGISTRY[model.arch].family if model.arch in REGISTRY else ""
    if family in ("alexnet", "vgg"):
        return _cam_layers_plain(model, names)
    if family == "resnet":
        return _cam_layers_resnet(model, names)
    if family == "densenet":
        return _cam_layers_densenet(model, names)
    if family in ("dpn", "efficientnet", "inception"):
        from .timm_backbones import CAM_LAYERS

        return CAM_LAYERS[family](model, names)
    raise ConfigError(f"No CAM layers are defined for the backbone {model.arch!r}.")


def _cam_layers_plain(model: StagedNet, names: dict[int, str]) -> list[tuple[str, str, nn.Module]]:
    """AlexNet/VGG: the ReLU after each convolution."""
    out = []
    for b, block in enumerate(model.blocks, 1):
        for k, m in enumerate(_after_relu(block), 1):
            conv = f"conv{b}" if model.arch == "alexnet" else f"conv{b}_{k}"
            out.append((names[id(m)], f"{conv} (block {b})", m))
    return out


def _cam_layers_resnet(model: StagedNet, names: dict[int, str]) -> list[tuple[str, str, nn.Module]]:
    """ResNet (2-D, 3-D, SE): the stem's ReLU, then the output of every residual unit."""
    out = [(names[id(model.blocks[0][2])], "stem conv1 (block 1)", model.blocks[0][2])]
    for b, layer in enumerate(model.blocks[1:], 2):
        for k, unit in enumerate(layer, 1):
            out.append((names[id(unit)], f"layer{b - 1} unit {k} (block {b})", unit))
    return out


def _cam_layers_densenet(model: StagedNet, names: dict[int, str]) -> list[tuple[str, str, nn.Module]]:
    """DenseNet: the stem's ReLU, each transition's ReLU and the final ReLU."""
    out = [(names[id(model.blocks[0][2])], "stem conv0 (block 1)", model.blocks[0][2])]
    for b in range(2, N_BLOCKS):
        relu = model.blocks[b - 1][1].relu
        out.append((names[id(relu)], f"dense block {b - 1} (block {b})", relu))
    out.append((names[id(model.blocks[4][2])], f"dense block 4 (block {N_BLOCKS})", model.blocks[4][2]))
    return out


def block_of(name: str) -> int:
    """0-based index of the block holding the module called ``name`` (0 when it is outside ``model.blocks``)."""
    parts = name.split(".")
    return int(parts[1]) if parts[0] == "blocks" and len(parts) > 1 and parts[1].isdigit() else 0
