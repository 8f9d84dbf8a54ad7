"""Backbone and initialisation names, importable without torch: the config checks runs against them.

``REGISTRY`` is the one table of backbones: every list below is derived from it, and ``engine.models.backbones``
builds each entry (``engine.models.timm_backbones`` the timm ones).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class Backbone:
    """What LungLens knows about one backbone before building it."""

    #: Registry name (``--backbone``).
    name: str
    #: Name for humans.
    label: str
    #: Library that builds it: ``torchvision``, ``timm`` or ``monai``.
    library: str
    #: Architecture family, which decides the staging and the CAM layers: alexnet, vgg, resnet, densenet, dpn,
    #: efficientnet or inception.
    family: str
    #: Seconds per image-epoch relative to ResNet-18 on a CPU (``engine.estimate`` scales its default rate by it):
    #: compute (FLOPs at 224 px) relative to ResNet-18, raised for grouped and depthwise convolutions, which run slower
    #: per FLOP on CPUs.
    cost: float
    #: Smallest square input side it runs forward on (measured: padded networks shrink any input to at least one
    #: pixel; AlexNet's and Inception-v4's unpadded layers need 63 and 75 px). 3-D: the volume's in-plane side.
    min_size: int
    #: Largest side the built-in backbone is pretrained at on the phantom source corpus (``engine.pretrain``): 128 px
    #: (about two minutes on a 2-core CPU for ResNet-18), less for the big networks so that each stays within about
    #: five minutes (time grows with the area; convolution filters carry over to larger inputs).
    pretrain_size: int
    #: The paper that introduced the architecture.
    paper: str
    #: 2 for images, 3 for CT volumes.
    ndim: int = 2
    #: Classifier: ``linear`` (one Linear layer on pooled features) or ``mlp`` (AlexNet/VGG's fc6-fc8).
    head: str = "linear"
    #: timm model name with the pretrained tag whose ImageNet weights ``init=imagenet`` loads (timm backbones).
    timm_name: str | None = None


_CHENG = "Cheng et al. 2021 (DPN-SE: DPN-92 with squeeze-and-excitation; LungLens paper 002)"
_TIMM_BIG = 64  # DPN-92, DPN-SE, SE-ResNet-50 pretrain at 64 px: ~18 min at 128 px on 2 cores, a quarter at 64 px

#: Every backbone, in the order pickers list them.
REGISTRY: dict[str, Backbone] = {b.name: b for b in (
    Backbone("alexnet", "AlexNet", "torchvision", "alexnet", 0.4, 63, 128, "Krizhevsky et al. 2012", head="mlp"),
    Backbone("vgg16", "VGG-16", "torchvision", "vgg", 8.5, 32, 128, "Simonyan & Zisserman 2015", head="mlp"),
    Backbone("vgg19", "VGG-19", "torchvision", "vgg", 10.8, 32, 128, "Simonyan & Zisserman 2015", head="mlp"),
    Backbone("resnet18", "ResNet-18", "torchvision", "resnet", 1.0, 8, 128, "He et al. 2016"),
    Backbone("resnet50", "ResNet-50", "torchvision", "resnet", 2.3, 8, 128, "He et al. 2016"),
    Backbone("densenet121", "DenseNet-121", "torchvision", "densenet", 1.6, 29, 128, "Huang et al. 2017"),
    Backbone("resnet3d18", "3-D ResNet-18", "monai", "resnet", 40.0, 8, 64, "Hara et al. 2018; Ouyang et al. 2020",
             ndim=3),
    Backbone("resnet3d34", "3-D ResNet-34", "monai", "resnet", 75.0, 8, 64, "Hara et al. 2018; Ouyang et al. 2020",
             ndim=3),
    Backbone("dpn68", "DPN-68", "timm", "dpn", 1.6, 8, 128, "Chen et al. 2017 (Dual Path Networks)",
             timm_name="dpn68.mx_in1k"),
    Backbone("dpn92", "DPN-92", "timm", "dpn", 4.0, 8, _TIMM_BIG, "Chen et al. 2017 (Dual Path Networks)",
             timm_name="dpn92.mx_in1k"),
    # DPN-SE's ImageNet weights are DPN-92's: only its squeeze-and-excitation layers start untrained.
    Backbone("dpn92se", "DPN-SE (DPN-92 + SE)", "timm", "dpn", 4.1, 8, _TIMM_BIG, _CHENG,
             timm_name="dpn92.mx_in1k"),
    Backbone("seresnet50", "SE-ResNet-50", "timm", "resnet", 2.6, 8, _TIMM_BIG, "Hu et al. 2018 (SENet)",
             timm_name="seresnet50.a1_in1k"),
    Backbone("efficientnet_b0", "EfficientNet-B0", "timm", "efficientnet", 1.2, 8, 128, "Tan & Le 2019",
             timm_name="efficientnet_b0.ra_in1k"),
    # Inception-v4's stem has unpadded convolutions: it needs 75 px (measured), so it pretrains at 80 px (~5 min).
    Backbone("inception_v4", "Inception-v4", "timm", "inception", 3.0, 75, 80, "Szegedy et al. 2017",
             timm_name="inception_v4.tf_in1k"),
)}

#: Backbones LungLens knows, by registry name (``engine.models.backbones`` builds each).
BACKBONES: tuple[str, ...] = tuple(REGISTRY)
#: Backbones for 3-D volumes (MONAI's 3-D ResNets, ``engine.models.resnet3d``); the others take 2-D images.
VOLUME_BACKBONES: tuple[str, ...] = tuple(b.name for b in REGISTRY.values() if b.ndim == 3)
#: Backbones built with timm (``engine.models.timm_backbones``).
TIMM_BACKBONES: tuple[str, ...] = tuple(b.name for b in REGISTRY.values() if b.library == "timm")
#: Backbones whose classifier is a multi-layer head (fc6-fc8): ``head_width`` narrows it, and it has no class
#: activation weights, so Ouyang et al.'s online attention (``engine.attention``) does not apply to them.
MLP_HEAD_BACKBONES: tuple[str, ...] = tuple(b.name for b in REGISTRY.values() if b.head == "mlp")
#: Backbones whose classifier is one linear layer on pooled features: they support ``--attention``.
ATTENTION_BACKBONES: tuple[str, ...] = tuple(b.name for b in REGISTRY.values() if b.head == "linear")
#: Convolutional blocks every backbone is staged into: fine-tuning depth runs from 0 to N_BLOCKS.
N_BLOCKS = 5
#: TorchXRayVision's chest X-ray DenseNet-121 weights, and the one architecture they fit.
XRV_INIT = "xrv-densenet121"
XRV_ARCH = "densenet121"


def backbone_spec(name: str) -> Backbone:
    """The registry entry of ``name``; ConfigError naming the known ones when there is none."""
    if name not in REGISTRY:
        raise ConfigError(f"Unknown backbone {name!r}: choose one of {', '.join(BACKBONES)}.")
    return REGISTRY[name]


def check_image_size(name: str, size: int) -> None:
    """Raise ConfigError when ``size`` px is below the smallest input ``name`` runs on."""
    smallest = backbone_spec(name).min_size
    if size < smallest:
        raise ConfigError(f"image_size={size} is too small for {name}: it needs inputs of at least {smallest} px "
                          f"(its feature maps would shrink to nothing); choose image_size >= {smallest}.")
