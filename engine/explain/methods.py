"""The explanation-method registry: every method is one ``Method`` with one batched ``attribute``.

CLI choices, page labels, cache keys and the explanation report all come from ``METHODS``; nothing else lists
methods. Every ``attribute(model, x, target, **params)`` takes model inputs ``x`` (N, 3, H, W) and returns
non-negative maps (N, H, W) in [0, 1] (higher = more support for the target class). Methods marked ``volumetric``
also take 3-D volumes (N, 1, D, H, W) and return (N, D, H, W) maps (``volume_methods()`` lists them).
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from pytorch_grad_cam import AblationCAM, EigenCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM, XGradCAM

from ..attention import ALPHA, BETA
from ..data.transforms import gray_of, to_model_input
from ..errors import ConfigError
from ..models.backbones import StagedNet
from ..progress import CancelCheck, Progress
from .attributions import gradient_shap, guided_backprop, guided_gradcam, integrated_gradients, saliency, smoothgrad
from .cam_library import library_cam
from .gradcam import gradcam
from .inference import Target, model_lock, target_tensor
from .lime_maps import lime_map
from .occlusion import occlusion_map
from .volume_cams import attention_maps, gradcam_volume

Kind = Literal["CAM", "gradient", "perturbation"]


def _lime(model: StagedNet, x: torch.Tensor, target: Target = None, **params: Any) -> np.ndarray:
    """LIME wrapped to the registry's shape: one explanation per image, the positive part of its weights."""
    images = np.round(gray_of(x)[:, 0].clamp(0, 1).cpu().numpy() * 255).astype(np.uint8)
    targets = target_tensor(target, len(images))
    return np.stack([lime_map(model, img, None if targets is None else int(targets[i]), **params)["heatmap"]
                     for i, img in enumerate(images)]) if len(images) else np.zeros((0, *x.shape[-2:]), np.float32)


def _gradcam(model: StagedNet, x: torch.Tensor, target: Target = None, layer: str | None = None,
             batch_size: int | None = None) -> np.ndarray:
    """Grad-CAM of images (N, 3, H, W) by the fast 2-D path, of volumes (N, 1, D, H, W) by Captum's in 3-D."""
    if x.ndim == 5:
        return gradcam_volume(model, x, target, layer, batch_size or 4)
    return gradcam(model, x, target, layer, batch_size or 64)


@dataclass(frozen=True)
class Method:
    """One explanation method: how the pages name and cite it, what it costs, and its batched ``attribute``."""

    name: str
    label: str
    citation: str
    kind: Kind
    cost: Literal["fast", "medium", "slow"]
    attribute: Callable[..., np.ndarray] = field(repr=False)
    uses_layer: bool = False
    #: The explanation report scores at most this many images of a split (None: all); slow methods sample.
    report_images: int | None = None
    description: str = ""
    #: Parameters a page offers: name -> (label, choices, default).
    knobs: dict[str, tuple[str, tuple[Any, ...], Any]] = field(default_factory=dict)
    #: For methods with more to show than a map (LIME's signed superpixels): ``details(model, image_uint8, target,
    #: **params)`` -> dict with at least ``heatmap``; a page draws ``segments`` and the signed ``map`` when present.
    details: Callable[..., dict[str, Any]] | None = field(default=None, repr=False)
    #: Whether ``attribute`` also takes 3-D volumes (N, 1, D, H, W) and returns (N, D, H, W) maps.
    volumetric: bool = False

    def params_for(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` without a ``layer`` where the method reads none (so a shared layer choice does not break it)."""
        return {k: v for k, v in params.items() if self.uses_layer or k != "layer"}


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("gradcam", "Grad-CAM", "Selvaraju et al. 2017; Wan et al. 2021 eqs. 7-9", "CAM", "fast", _gradcam, True,
           description="Gradient-weighted feature maps of the chosen layer (after its ReLU), ReLU, upsampled; in "
                       "3-D the gradients are averaged over depth, height and width.", volumetric=True),
    Method("attention", "Online attention", "Ouyang et al. 2020 eqs. 1-2", "CAM", "fast", attention_maps,
           description=f"The class activation map A = ReLU(sum_k w_k f_k) of the last block with w the classifier's "
                       f"row of the class, upsampled and normalised, trimmed: T(A) = sigmoid(alpha (A - beta)), "
                       f"alpha {ALPHA:g}, beta {BETA:g}; what the attention loss trains against the lesion masks. "
                       "For a head of several layers (AlexNet, VGG) w is the gradient of the class score with "
                       "respect to the pooled features (A is then the last block's Grad-CAM).", volumetric=True),
    Method("hirescam", "HiResCAM", "Draelos & Carin 2020", "CAM", "fast", library_cam(HiResCAM), True,
           description="Gradients times activations element-wise, summed over channels: provably faithful for "
                       "a head that pools linearly.", volumetric=True),
    Method("gradcam++", "Grad-CAM++", "Chattopadhay et al. 2018", "CAM", "fast", library_cam(GradCAMPlusPlus), True,
           description="Grad-CAM with higher-order weights, for several instances of a class.", volumetric=True),
    Method("xgradcam", "XGradCAM", "Fu et al. 2020", "CAM", "fast", library_cam(XGradCAM), True,
           description="Grad-CAM with activation-normalised weights (sensitivity and conservation axioms).",
           volumetric=True),
    Method("layercam", "LayerCAM", "Jiang et al. 2021", "CAM", "fast", library_cam(LayerCAM), True,
           description="Positive gradients as per-location weights; sharper on earlier layers.", volumetric=True),
    Method("eigencam", "EigenCAM", "Muhammad & Yeasin 2020", "CAM", "fast", library_cam(EigenCAM), True,
           description="First principal component of the feature maps: class-agnostic (the same map for every "
                       "class).", volumetric=True),
    Method("scorecam", "ScoreCAM", "Wang et al. 2020", "CAM", "slow", library_cam(ScoreCAM, channel_batch=128), True,
           report_images=32, description="Each feature map masks the image; its weight is the class score that "
                                         "masked image gets. One forward pass per channel."),
    Method("ablationcam", "AblationCAM", "Desai & Ramaswamy 2020", "CAM", "slow",
           library_cam(AblationCAM, channel_batch=128), True, report_images=32,
           description="Each channel's weight is the drop in the class score when it is zeroed."),
    Method("guided-gradcam", "Guided Grad-CAM", "Selvaraju et al. 2017", "gradient", "fast", guided_gradcam, True,
           description="Grad-CAM times guided backpropagation: pixel-sharp."),
    Method("guided-backprop", "Guided backpropagation", "Springenberg et al. 2015", "gradient", "fast",
           guided_backprop, description="Input gradients with negative signals cut at every ReLU."),
    Method("saliency", "Saliency", "Simonyan et al. 2014", "gradient", "fast", saliency,
           description="Magnitude of the class score's gradient with respect to each pixel."),
    Method("integrated-gradients", "Integrated Gradients", "Sundararajan et al. 2017", "gradient", "medium",
           integrated_gradients, report_images=64,
           description="Gradients averaged along the path from a black image, times the difference (positive "
                       "part)."),
    Method("smoothgrad", "SmoothGrad", "Smilkov et al. 2017", "gradient", "medium", smoothgrad, report_images=64,
           description="Gradient magnitude averaged over 16 noisy copies of the image."),
    Method("gradient-shap", "GradientSHAP", "Lundberg & Lee 2017", "gradient", "medium", gradient_shap,
           report_images=64, description="Expected gradients from black and white baselines (positive part)."),
    Method("occlusion", "Occlusion", "Zeiler & Fergus 2014", "perturbation", "medium", occlusion_map,
           description="Drop of the class probability when a gray window (1/8 of the side, half-overlapping) "
                       "hides each region."),
    Method("lime", "LIME", "Ribeiro et al. 2016; Cheng et al. §3.3", "perturbation", "slow", _lime, report_images=24,
           description="50 SLIC superpixels switched off at random in 1,000 samples; a weighted linear fit; red "
                       "superpixels raise the class probability, blue ones lower it.",
           knobs={"n_samples": ("LIME samples", (50, 100, 250, 500, 1000, 2000), 1000)}, details=lime_map),
)}


def _check_params(m: Method, fn: Callable[..., Any], params: dict[str, Any]) -> None:
    """ConfigError naming the parameters ``m`` takes when ``params`` holds one it does not."""
    accepted = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        accepted = inspect.signature(lime_map).parameters  # LIME's wrapper passes its parameters on to lime_map
    fixed = {"model", "x", "target", "image_uint8", "progress", "cancel"}
    unknown = sorted(set(params) - set(accepted) - fixed)
    if unknown:
        takes = sorted(set(accepted) - fixed)
        raise ConfigError(f"{m.label} does not take {', '.join(unknown)}; it takes {', '.join(takes) or 'no parameters'}.")


def volume_methods() -> tuple[str, ...]:
    """Names of the methods that explain 3-D volumes, in registry order."""
    return tuple(name for name, m in METHODS.items() if m.volumetric)


def volume_method(name: str) -> Method:
    """The registered method called ``name``, with a ConfigError unless it explains 3-D volumes."""
    m = get_method(name)
    if not m.volumetric:
        raise ConfigError(f"{m.label} explains 2-D images only; for volumes choose one of "
                          f"{', '.join(METHODS[n].label for n in volume_methods())}.")
    return m


def get_method(name: str) -> Method:
    """The registered method called ``name`` (or labelled so), with a ConfigError listing the choices."""
    if name in METHODS:
        return METHODS[name]
    for method in METHODS.values():
        if name.lower() == method.label.lower():
            return method
    raise ConfigError(f"Unknown explanation method {name!r}: choose one of {', '.join(METHODS)}.")


def check_method(name: str) -> None:
    """Raise ConfigError unless ``name`` is a registered explanation method."""
    get_method(name)


def attribute(model: StagedNet, x: torch.Tensor, method: str, target: Target = None, **params: Any) -> np.ndarray:
    """(N, H, W) maps in [0, 1] of model inputs ``x`` by ``method`` ((N, D, H, W) of volumes), under the model's lock.

    The lock keeps two threads (two dashboard sessions) from attaching hooks to the same model at once.
    """
    m = volume_method(method) if x.ndim == 5 else get_method(method)
    if len(x) == 0:
        return np.zeros((0, *x.shape[2:]), np.float32)
    params = m.params_for(params)
    _check_params(m, m.attribute, params)
    with model_lock(model):
        maps = m.attribute(model, x, target, **params)
    return np.nan_to_num(np.asarray(maps, dtype=np.float32), nan=0.0)


def explain_one(model: StagedNet, image_uint8: np.ndarray, method: str, target: int | None, *,
                progress: Progress | None = None, cancel: CancelCheck | None = None,
                **params: Any) -> dict[str, np.ndarray]:
    """One image's explanation: ``heatmap`` (H, W) in [0, 1], plus the method's details (LIME: ``segments``,
    ``weights``, the signed ``map``) where it has them. A method with details (LIME) reports ``progress`` and stops
    on ``cancel``; the others compute in one step."""
    m = get_method(method)
    if m.details is None:
        return {"heatmap": heatmaps(model, np.asarray(image_uint8)[None], method, target, **params)[0]}
    params = m.params_for(params)
    _check_params(m, m.details, params)
    with model_lock(model):
        out = m.details(model, image_uint8, target, progress=progress, cancel=cancel, **params)
    return {k: np.asarray(v) for k, v in out.items() if isinstance(v, np.ndarray)}


def heatmaps(model: StagedNet, images_uint8: np.ndarray, method: str = "gradcam", target: Target = None,
             **params: Any) -> np.ndarray:
    """(N, H, W) maps in [0, 1] of (N, H, W) uint8 images already preprocessed for the model ((N, D, H, W) volumes
    give (N, D, H, W) maps)."""
    images = np.asarray(images_uint8)
    if len(images) == 0:
        check_method(method)
        return np.zeros((0, *images.shape[1:]), np.float32)
    return attribute(model, to_model_input(images), method, target, **params)


def is_empty(maps: np.ndarray) -> np.ndarray:
    """(N,) bool: maps that carry no information (all zero or constant), which a page must report, not draw."""
    flat = np.asarray(maps).reshape(len(maps), -1)
    if flat.shape[1] == 0:
        return np.ones(len(flat), dtype=bool)
    return np.ptp(flat, axis=1) <= 1e-6
