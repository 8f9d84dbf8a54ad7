"""Which layer a CAM method reads: the rectified feature maps of a backbone, by qualified name or human label."""
from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from ..models.backbones import StagedNet, cam_layers


def cam_layer(model: StagedNet, layer: str | None = None) -> tuple[str, str, nn.Module]:
    """(name, label, module) of the CAM layer called ``layer`` (a qualified name or a label); the last one when None.

    The default is the output of the last convolutional layer after its ReLU: Wan et al.'s A^k (eqs. 7-9).
    """
    layers = cam_layers(model)
    if layer is None:
        return layers[-1]
    for entry in layers:
        if layer in (entry[0], entry[1]):
            return entry
    raise ConfigError(f"{layer!r} is not a CAM layer of this {model.arch}; choose one of "
                      f"{', '.join(label for _, label, _ in layers)} (or their module names "
                      f"{', '.join(name for name, _, _ in layers)}).")


def layer_choices(model: StagedNet) -> list[tuple[str, str]]:
    """(name, label) of every CAM layer of ``model``, input to output, for pickers."""
    return [(name, label) for name, label, _ in cam_layers(model)]
