"""MONAI's 3-D ResNets as Ouyang et al. (2020, §III-A) use them: one input channel, last stage at stride 1.

The model built here keeps MONAI's module names (``conv1``, ``bn1``, ``act``, ``maxpool``, ``layer1`` .. ``layer4``,
``avgpool``, ``fc``), so a MONAI or MedicalNet state dict loads into it by name; ``engine.models.backbones`` stages it
into five blocks like the 2-D ResNets.
"""
from __future__ import annotations

from torch import nn

#: MONAI constructor of each 3-D backbone (``monai.networks.nets``).
MONAI_RESNETS = {"resnet3d18": "resnet18", "resnet3d34": "resnet34"}
#: Output width of the untrained model's head (MONAI's default, Kinetics-400); ``stage`` replaces it.
MONAI_DEFAULT_CLASSES = 400


def _last_stage_stride_1(layer4: nn.Sequential) -> None:
    """Set the first unit of ``layer4`` to stride 1 (its 3x3x3 conv and its 1x1x1 downsample shortcut).

    Ouyang et al. §III-A: the feature maps before global average pooling are then 1/16 of the input in each dimension
    instead of 1/32, which gives the attention maps (their eq. 1) twice the resolution. No weight changes shape.
    """
    first = layer4[0]
    first.conv1.stride = (1, 1, 1)
    first.downsample[0].stride = (1, 1, 1)
    first.stride = 1


def monai_resnet3d(arch: str) -> nn.Module:
    """An untrained MONAI 3-D ResNet of ``arch`` (1 input channel, stem stride 2, shortcut B, last stage stride 1).

    Strides: conv1 /2, maxpool /2, layer2 /2, layer3 /2, layer4 /1: an input (D, H, W) gives layer4 maps of
    (D/16, H/16, W/16) with 512 channels.
    """
    from monai.networks import nets  # imported here: MONAI takes seconds to import and 2-D runs never need it

    model = getattr(nets, MONAI_RESNETS[arch])(spatial_dims=3, n_input_channels=1, conv1_t_stride=2,
                                                shortcut_type="B", num_classes=MONAI_DEFAULT_CLASSES)
    _last_stage_stride_1(model.layer4)
    return model
