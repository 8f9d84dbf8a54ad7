"""Backbone and initialisation names, importable without torch: the config checks runs against them."""
from __future__ import annotations

#: Backbones LungLens knows, by torchvision name (``engine.models.backbones`` builds each).
BACKBONES: tuple[str, ...] = ("alexnet", "vgg16", "vgg19", "resnet18", "resnet50", "densenet121", "resnet3d18",
                               "resnet3d34")
#: Backbones for 3-D volumes (MONAI's 3-D ResNets, ``engine.models.resnet3d``); the others take 2-D images.
VOLUME_BACKBONES: tuple[str, ...] = ("resnet3d18", "resnet3d34")
#: Backbones whose classifier is a multi-layer head (fc6-fc8): ``head_width`` narrows it, and it has no class
#: activation weights, so Ouyang et al.'s online attention (``engine.attention``) does not apply to them.
MLP_HEAD_BACKBONES: tuple[str, ...] = ("alexnet", "vgg16", "vgg19")
#: Backbones whose classifier is one linear layer on pooled features: they support ``--attention``.
ATTENTION_BACKBONES: tuple[str, ...] = tuple(b for b in BACKBONES if b not in MLP_HEAD_BACKBONES)
#: Convolutional blocks every backbone is staged into: fine-tuning depth runs from 0 to N_BLOCKS.
N_BLOCKS = 5
#: TorchXRayVision's chest X-ray DenseNet-121 weights, and the one architecture they fit.
XRV_INIT = "xrv-densenet121"
XRV_ARCH = "densenet121"
