"""Image preprocessing (CLAHE, resizing), model input normalisation and training augmentation."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

#: ImageNet channel statistics the pretrained backbones expect (RGB order).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """A uint8 copy of a uint8 image or of a float image in [0, 1] (rounded)."""
    if image.dtype == np.uint8:
        return image.copy()
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def preprocess(image: np.ndarray, size: int, *, clahe: bool = False) -> np.ndarray:
    """Gray image (float in [0, 1] or uint8) -> uint8 ``size`` x ``size``, optionally CLAHE-equalised first.

    Like Lee et al. the image is resized to a square without keeping the aspect ratio.
    """
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {image.shape}")
    img = _to_uint8(image)
    if clahe:
        img = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(img)
    height, width = img.shape
    if (height, width) == (size, size):
        return img
    interpolation = cv2.INTER_AREA if size * size < height * width else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interpolation)


def preprocess_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Binary mask -> bool ``size`` x ``size`` by nearest neighbour."""
    # INTER_NEAREST_EXACT samples pixel centres as INTER_AREA/LINEAR do; INTER_NEAREST is off by half a pixel.
    resized = cv2.resize(mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST_EXACT)
    return resized.astype(bool)


def to_model_input(batch_uint8: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(N, H, W) uint8 gray -> (N, 3, H, W) float32: scaled to [0, 1], replicated to RGB, ImageNet-normalised.

    (N, D, H, W) uint8 CT volumes -> (N, 1, D, H, W) float32 in [0, 1] (the lung window is already applied).
    """
    batch = torch.as_tensor(batch_uint8)
    if batch.ndim not in (3, 4) or batch.dtype != torch.uint8:
        raise ValueError(f"expected an (N, H, W) or (N, D, H, W) uint8 batch, got {tuple(batch.shape)} {batch.dtype}")
    if batch.ndim == 4:
        return v2.functional.to_dtype(batch, torch.float32, scale=True).unsqueeze(1)
    rgb = v2.functional.to_dtype(batch, torch.float32, scale=True).unsqueeze(1).expand(-1, 3, -1, -1)
    return v2.functional.normalize(rgb, list(IMAGENET_MEAN), list(IMAGENET_STD))


def gray_of(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) model input -> (N, 1, H, W) gray intensities in [0, 1] (the inverse of ``to_model_input``);
    (N, 1, D, H, W) volume input is already gray: returned as is."""
    if x.ndim == 5:
        return x[:, :1]
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * std + mean).mean(dim=1, keepdim=True)


def to_display(x: torch.Tensor) -> np.ndarray:
    """Inverse of ``to_model_input``: (N, 3, H, W) -> (N, H, W), or (N, 1, D, H, W) -> (N, D, H, W), float32 gray in
    [0, 1]."""
    return gray_of(x.detach())[:, 0].clamp(0.0, 1.0).to(torch.float32).cpu().numpy()


#: Cheng et al. preprocess a film to 256 and crop 224 of it at random; LungLens keeps that ratio at any input size.
LOAD_SIDE, CROP_SIDE = 256, 224
#: The affine step's magnitudes (Cheng et al. give none and warn that changing an X-ray much erases the details a
#: reader needs): a left-right flip with this probability, a rotation within +-this many degrees, a scale in this range,
#: about as much as a patient's position varies between films.
FLIP_PROBABILITY = 0.5
ROTATION_DEGREES = 10.0
SCALE_RANGE = (0.95, 1.05)


def load_size(size: int) -> int:
    """Side of the square training films that Cheng's random crop to ``size`` cuts from: round(size * 256 / 224)."""
    return round(size * LOAD_SIDE / CROP_SIDE)


@dataclass(frozen=True)
class AugmentDraw:
    """One random draw of the augmentation: the crop's top-left corner, the left-right flip, the rotation (degrees,
    clockwise as shown, torchvision's convention) and the scale, both about the crop's centre pixel."""

    top: int
    left: int
    flip: bool
    angle: float
    scale: float


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return float(low + (high - low) * torch.rand((), generator=generator))


def draw_augmentation(shape: tuple[int, int], size: int, generator: torch.Generator | None = None, *,
                      flip: float = FLIP_PROBABILITY, degrees: float = ROTATION_DEGREES,
                      scale: tuple[float, float] = SCALE_RANGE) -> AugmentDraw:
    """A random draw for a film of ``shape`` (H, W) cropped to ``size``; from ``generator`` (None: torch's global RNG).

    ``flip=0``, ``degrees=0`` and ``scale=(1, 1)`` leave only the crop.
    """
    height, width = shape
    if min(height, width) < size:
        raise ValueError(f"cannot crop {size} x {size} from a {height} x {width} film")
    top = int(torch.randint(height - size + 1, (), generator=generator))
    left = int(torch.randint(width - size + 1, (), generator=generator))
    flipped = bool(torch.rand((), generator=generator) < flip)
    return AugmentDraw(top, left, flipped, _uniform(-degrees, degrees, generator), _uniform(*scale, generator))


def apply_augmentation(draw: AugmentDraw, size: int, image: torch.Tensor | np.ndarray,
                       *masks: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, ...]:
    """``image`` (H, W) and ``masks`` (H, W) cropped to ``size``, flipped, rotated and scaled by ``draw`` alike.

    The image is resampled bilinearly, the masks (tv_tensors.Mask) by nearest neighbour; corners rotated in are 0.
    Returns (size, size) tensors in the input order and dtypes.
    """
    inputs = [tv_tensors.Image(torch.as_tensor(image)[None]), *(tv_tensors.Mask(torch.as_tensor(m)[None]) for m in masks)]
    out = []
    for x in inputs:
        x = v2.functional.crop(x, draw.top, draw.left, size, size)
        if draw.flip:
            x = v2.functional.horizontal_flip(x)
        if draw.angle != 0.0 or draw.scale != 1.0:
            x = v2.functional.affine(x, angle=draw.angle, translate=[0.0, 0.0], scale=draw.scale, shear=[0.0, 0.0],
                                     interpolation=v2.InterpolationMode.BILINEAR, fill=0)
        out.append(x.as_subclass(torch.Tensor)[0])
    return tuple(out)


def cheng_augment(image: torch.Tensor | np.ndarray, *masks: torch.Tensor | np.ndarray, size: int,
                  generator: torch.Generator | None = None, flip: float = FLIP_PROBABILITY,
                  degrees: float = ROTATION_DEGREES, scale: tuple[float, float] = SCALE_RANGE) -> tuple[torch.Tensor, ...]:
    """Cheng et al.'s augmentation (§3.1, fig. 1) of a uint8 film at the load size and any number of its masks.

    Step 1, preprocessing to ``load_size(size)``, happens before (``engine.data.arrays.image_array`` at that size).
    The paper scales a film's narrow side to the input size and crops along the long side only; read as the usual
    256 -> 224 recipe, the film is made 256/224 times the input first. LungLens squares films like Lee et al., so the
    film is square and the crop is random along both axes, keeping 224/256 of each. Step 2: a random ``size`` x
    ``size`` crop. Step 3: a random left-right flip, rotation and scale (the magnitudes above are ours: the paper
    gives none; a flip puts the heart on the other side, which the paper accepts). The lesion and lung masks (any
    number, (H, W)) get the image's very draw, resampled by nearest neighbour. Draws come from ``generator`` (None:
    torch's global RNG), so a seeded generator reproduces them.
    """
    draw = draw_augmentation(tuple(image.shape[-2:]), size, generator, flip=flip, degrees=degrees, scale=scale)
    return apply_augmentation(draw, size, image, *masks)
