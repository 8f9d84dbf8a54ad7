"""Backbone and initialisation names, importable without torch: the config checks runs against them."""
from __future__ import annotations

#: Backbones LungLens knows, by torchvision name (``engine.models.backbones`` builds each).
BACKBONES: tuple[str, ...] = ("alexnet", "vgg16", "vgg19", "resnet18", "resnet50", "densenet121")
#: Convolutional blocks every backbone is staged into: fine-tuning depth runs from 0 to N_BLOCKS.
N_BLOCKS = 5
#: TorchXRayVision's chest X-ray DenseNet-121 weights, and the one architecture they fit.
XRV_INIT = "xrv-densenet121"
XRV_ARCH = "densenet121"
