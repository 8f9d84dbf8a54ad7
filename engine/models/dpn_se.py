"""Cheng et al.'s DPN-SE (2021, §3.2 and fig. 3): timm's DPN-92 with squeeze-and-excitation in every dual-path block.

Where SE goes. A dual-path block (Chen et al. 2017) ends with a 1x1 convolution, ``c1x1_c``, whose output is split:
its first ``num_1x1_c`` channels are added to the residual path, the remaining ``inc`` channels are concatenated to
the densely connected path. Cheng et al. "introduce the senet network into the DPN-92 network" (fig. 3) without
saying more; we put the SE module (Hu et al. 2018) on the output of ``c1x1_c`` before the split, as SE-ResNet puts it
on the residual branch before the addition: squeeze (global average pool), excitation (two 1x1 layers, ReLU,
sigmoid), and reweighting of every channel that the block adds, so both the residual update and the new dense
features are recalibrated, and the identity / dense shortcuts stay untouched.

Reduction ratio 16: Cheng et al. give none, so SENet's default (Hu et al. §6.1) is used, with C/16 hidden units
exactly (no rounding to a multiple of 8).

State-dict names: ``c1x1_c`` keeps its ``bn`` and ``conv`` and gains ``se`` (``...c1x1_c.se.fc1.weight`` etc.), so
DPN-92's ImageNet weights load into DPN-SE by name with only the SE tensors left at their initial values.
"""
from __future__ import annotations

import torch
from timm.layers import SEModule
from torch import nn

#: SENet's reduction ratio r (hidden units C / r of the excitation).
SE_REDUCTION = 16


class BnActConvSE(nn.Module):
    """timm's ``BnActConv2d`` (BN + ReLU, then a convolution) followed by squeeze-and-excitation of its output."""

    def __init__(self, bn_act_conv: nn.Module, reduction: int = SE_REDUCTION):
        super().__init__()
        self.bn = bn_act_conv.bn
        self.conv = bn_act_conv.conv
        channels = self.conv.out_channels
        self.se = SEModule(channels, rd_channels=channels // reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.se(self.conv(self.bn(x)))


def dual_path_blocks(model: nn.Module) -> list[nn.Module]:
    """Every dual-path block of a timm DPN, input to output."""
    return [m for m in model.modules() if type(m).__name__ == "DualPathBlock"]


def add_squeeze_excitation(dpn: nn.Module, reduction: int = SE_REDUCTION) -> nn.Module:
    """Turn a timm DPN into DPN-SE in place: SE on the output of every dual-path block's ``c1x1_c``; return it."""
    for block in dual_path_blocks(dpn):
        block.c1x1_c = BnActConvSE(block.c1x1_c, reduction)
    return dpn
