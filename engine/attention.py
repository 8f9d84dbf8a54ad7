"""Ouyang et al.'s online attention module (2020, §III-B and §III-D, eqs. 1-4), for 2-D images and 3-D volumes.

A = ReLU(conv1x1(f, w_c)) is the class activation map of class c from the last feature maps f, with the 1x1(x1)
convolution's kernel copied from the classifier's row w_c; T(A) = sigmoid(alpha (A - beta)) after upsampling A to
the input size and min-max normalising it; L_ex = sum (T - M)^2 / (sum T + sum M) against the lesion mask M, on the
positive cases with a mask; L_total = L_c + lambda L_ex.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .models.names import ATTENTION_BACKBONES

#: T(A)'s slope and threshold (eq. 2) and the attention loss weight (eq. 4), as Ouyang et al. set them.
ALPHA = 100.0
BETA = 0.4
LAMBDA = 0.5
#: Keeps the normalisations finite: a constant map normalises to 0, and an empty T with an empty M gives L_ex = 0.
EPS = 1e-6


def attention_map(features: torch.Tensor, weight: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """Eq. 1: A = ReLU(sum_c w[cls, c] f[:, c]), (N, C, *S) features and (K, C) weights -> (N, *S).

    The weights are detached: the paper copies them from the fully connected layer and updates them by the
    classification loss only, so L_ex trains the features (the backbone), never the classifier.
    """
    w = weight.detach()[cls].to(features.dtype)  # (N, C)
    return F.relu(torch.einsum("nc...,nc->n...", features, w))


def trimmed(amap: torch.Tensor, size: tuple[int, ...], alpha: float = ALPHA, beta: float = BETA) -> torch.Tensor:
    """Eq. 2: upsample (N, *S) maps to ``size`` (bi/trilinear), min-max normalise each to [0, 1], sigmoid(alpha (A - beta))."""
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
    up = F.interpolate(amap[:, None], size=tuple(size), mode=mode, align_corners=False)[:, 0]
    flat = up.flatten(1)
    low = flat.min(1).values.view(-1, *([1] * len(size)))
    high = flat.max(1).values.view(-1, *([1] * len(size)))
    norm = (up - low) / (high - low).clamp_min(EPS)
    return torch.sigmoid(alpha * (norm - beta))


def attention_loss(soft: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 3 per sample: sum (T - M)^2 / (sum T + sum M) over all but the first dimension -> (N,).

    The caller averages it over the cases it applies to (the positive class's cases with a lesion mask).
    """
    mask = mask.to(soft.dtype)
    num = (soft - mask).pow(2).flatten(1).sum(1)
    return num / (soft.flatten(1).sum(1) + mask.flatten(1).sum(1) + EPS)


def total_loss(loss_c: torch.Tensor, loss_ex: torch.Tensor, lam: float = LAMBDA) -> torch.Tensor:
    """Eq. 4: L_total = L_c + lambda L_ex."""
    return loss_c + lam * loss_ex


def attention_maps_of(model: nn.Module, x: torch.Tensor, cls: torch.Tensor, alpha: float = ALPHA,
                      beta: float = BETA) -> torch.Tensor:
    """T(A) of class ``cls`` for a StagedNet's input ``x`` (N, C, *S) at the input size -> (N, *S)."""
    if not isinstance(model.classifier, nn.Linear):
        raise ConfigError(f"Online attention needs a classifier that is one linear layer on pooled features (its "
                          f"rows are the class activation weights); {model.arch} has a multi-layer head. Backbones "
                          f"that support --attention: {', '.join(ATTENTION_BACKBONES)}.")
    amap = attention_map(model.forward_blocks(x), model.classifier.weight, cls)
    return trimmed(amap, tuple(x.shape[2:]), alpha, beta)
