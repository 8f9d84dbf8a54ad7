"""Gradient attributions from Captum on the gray input: Saliency, Integrated Gradients, SmoothGrad, GradientSHAP,
guided backpropagation and Guided Grad-CAM, each reduced to one non-negative relevance per pixel."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from captum.attr import GradientShap, GuidedBackprop, GuidedGradCam, IntegratedGradients, NoiseTunnel, Saliency

from ..data.transforms import gray_of
from ..models.backbones import StagedNet
from .inference import GrayInput, Target, model_device, resolve_targets
from .layers import cam_layer
from .scaling import normalise_maps

#: Gradient maps are spiky: they are scaled by this percentile of their positive values, not by the maximum
#: (as Captum's visualisation does with ``outlier_perc``), so that the support threshold keeps a meaning.
GRADIENT_PERCENTILE = 99.0

#: SmoothGrad's noise, as a share of the intensity range (Smilkov et al. 2017 recommend 10-20%).
SMOOTHGRAD_SIGMA = 0.15

#: How a signed per-pixel attribution becomes relevance: gradient magnitudes are unsigned by nature (Simonyan et
#: al.; Adebayo et al. show them as absolute values); additive attributions keep the part that supports the class.
Reduce = Callable[[torch.Tensor], torch.Tensor]
ABS: Reduce = torch.abs
POSITIVE: Reduce = lambda a: a.clamp_min(0)  # noqa: E731


def _run(model: StagedNet, x: torch.Tensor, target: Target, batch_size: int, reduce: Reduce,
         attribute: Callable[[GrayInput, torch.Tensor, torch.Tensor], torch.Tensor]) -> np.ndarray:
    """Apply ``attribute(gray_model, gray_batch, targets)`` in batches and scale the reduced maps to [0, 1]."""
    gray_model = GrayInput(model).eval()
    device = model_device(model)
    targets = resolve_targets(model, x, target)
    maps = []
    for i in range(0, len(x), batch_size):
        g = gray_of(x[i : i + batch_size]).to(device).requires_grad_()
        attr = attribute(gray_model, g, targets[i : i + len(g)].to(device))
        maps.append(reduce(attr.detach()[:, 0]).float().cpu())
    if not maps:
        return np.zeros((0, *x.shape[-2:]), np.float32)
    return normalise_maps(torch.cat(maps), GRADIENT_PERCENTILE)


def saliency(model: StagedNet, x: torch.Tensor, target: Target = None, *, batch_size: int = 32) -> np.ndarray:
    """Simonyan et al. 2014: |d y^c / d pixel|."""
    return _run(model, x, target, batch_size, ABS, lambda m, g, t: Saliency(m).attribute(g, target=t, abs=False))


def integrated_gradients(model: StagedNet, x: torch.Tensor, target: Target = None, *, n_steps: int = 32,
                         batch_size: int = 8) -> np.ndarray:
    """Sundararajan et al. 2017, from a black image (intensity 0); the positive part."""
    return _run(model, x, target, batch_size, POSITIVE, lambda m, g, t: IntegratedGradients(m).attribute(
        g, baselines=torch.zeros_like(g), target=t, n_steps=n_steps, internal_batch_size=n_steps * len(g)))


def smoothgrad(model: StagedNet, x: torch.Tensor, target: Target = None, *, n_samples: int = 16,
               sigma: float = SMOOTHGRAD_SIGMA, batch_size: int = 8) -> np.ndarray:
    """Smilkov et al. 2017: the mean |gradient| over ``n_samples`` noisy copies (Captum's NoiseTunnel)."""
    return _run(model, x, target, batch_size, ABS, lambda m, g, t: NoiseTunnel(Saliency(m)).attribute(
        g, nt_type="smoothgrad", nt_samples=n_samples, stdevs=sigma, target=t, abs=True))


def gradient_shap(model: StagedNet, x: torch.Tensor, target: Target = None, *, n_samples: int = 16,
                  batch_size: int = 8, seed: int = 0) -> np.ndarray:
    """Lundberg & Lee 2017 (Captum's GradientShap) against black and white baselines; the positive part."""

    def attribute(m: GrayInput, g: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(seed)  # GradientShap draws baselines and noise at random
        baselines = torch.cat([torch.zeros_like(g[:1]), torch.ones_like(g[:1])])
        return GradientShap(m).attribute(g, baselines=baselines, n_samples=n_samples, stdevs=0.05, target=t)

    return _run(model, x, target, batch_size, POSITIVE, attribute)


def guided_backprop(model: StagedNet, x: torch.Tensor, target: Target = None, *, batch_size: int = 32) -> np.ndarray:
    """Springenberg et al. 2015: gradients with negative signals cut at every ReLU; magnitude."""
    return _run(model, x, target, batch_size, ABS, lambda m, g, t: GuidedBackprop(m).attribute(g, target=t))


def guided_gradcam(model: StagedNet, x: torch.Tensor, target: Target = None, layer: str | None = None, *,
                   batch_size: int = 32) -> np.ndarray:
    """Selvaraju et al. 2017: Grad-CAM of ``layer`` times guided backpropagation, pixel-sharp; magnitude."""
    _, _, module = cam_layer(model, layer)
    return _run(model, x, target, batch_size, ABS,
                lambda m, g, t: GuidedGradCam(m, module).attribute(g, target=t, interpolate_mode="bilinear"))
