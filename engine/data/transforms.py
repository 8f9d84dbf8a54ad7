"""Image preprocessing (CLAHE, resizing), model input normalisation and training augmentation."""
from __future__ import annotations

import cv2
import numpy as np
import torch
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


def augmentation(size: int) -> v2.Compose:
    """Cheng et al.'s augmentation: a random crop of the film resized back to ``size``, then flip / rotate / scale.

    Call it as ``image, mask = augmentation(size)(image, tv_tensors.Mask(mask))`` on uint8 (N or 1, H, W) tensors;
    both get the same random draw (masks are resampled by nearest neighbour). The crop keeps 70-100% of the area, so
    it acts on images already preprocessed to ``size`` (a crop to ``size`` of a ``size`` image would do nothing).
    """
    # The paper gives no magnitudes and warns against changing X-rays much, hence small rotations and scalings.
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.7, 1.0), ratio=(0.9, 1.1), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomAffine(degrees=10, scale=(0.95, 1.05)),
    ])
