"""Diagnosing an uploaded file in memory: size limits, the one image reader, the model's answer, its explanations
and whether the image is like the training data. Nothing is written to disk but a run's cached references."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.imageio import decode_image_bytes, image_header
from ..data.transforms import preprocess
from ..errors import DataError, LungLensError
from ..models.backbones import StagedNet
from ..ood import check_unlike
from .diagnose import explain_image
from ..progress import CancelCheck, Progress, report, scaled

if TYPE_CHECKING:
    from ..runs import Run

#: Upload limits: larger files or images are refused before they are decoded.
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_UPLOAD_SIDE = 4096


def read_upload(data: bytes, name: str, size: int, clahe: bool = False) -> np.ndarray | str:
    """The uploaded file as a model-ready uint8 (size, size) image, or a message saying why it cannot be used.

    Everything happens in memory: nothing is written to disk.
    """
    limit = f"at most {MAX_UPLOAD_BYTES // 2**20} MB and {MAX_UPLOAD_SIDE} px on each side"
    if len(data) == 0:
        return f"{name} is empty (0 bytes): upload the image file itself."
    if len(data) > MAX_UPLOAD_BYTES:
        return f"{name} is {len(data) / 2**20:.1f} MB: uploads must be {limit}."
    try:
        # The header alone (engine's one image reader): an oversized or unknown file is refused before decoding.
        _, width, height, _ = image_header(data, name)
        if max(width, height) > MAX_UPLOAD_SIDE:
            return f"{name} is {width} x {height} px: uploads must be {limit}. Downscale it first."
        pixels = decode_image_bytes(data, name)
    except DataError as exc:
        return f"This file cannot be used: {exc}."
    if max(pixels.shape) > MAX_UPLOAD_SIDE:
        return f"{name} is {pixels.shape[1]} x {pixels.shape[0]} px: uploads must be {limit}. Downscale it first."
    return preprocess(pixels, size, clahe=clahe)


def diagnose_upload(data: bytes, name: str, model: StagedNet, classes: Sequence[str], size: int,
                    clahe: bool = False, lime_samples: int = 1000, run: Run | None = None, *,
                    progress: Progress | None = None, cancel: CancelCheck | None = None) -> dict[str, Any] | str:
    """Class probabilities, Grad-CAM and LIME of an uploaded image for the model's predicted class, or a message.

    Returns ``image`` (the preprocessed uint8 input), ``probabilities``, ``predicted``, ``gradcam`` (heatmap) and
    ``lime`` (``lime_map``'s result); a string says why the upload cannot be diagnosed. With the model's ``run``,
    also ``unlike``: ``engine.ood.check_unlike`` of the image (one value per key), or a message saying why it could
    not be checked. Nothing is written to disk but the run's cached reference of its training features.
    LIME reports ``progress`` and stops on ``cancel`` (raising Cancelled).
    """
    image = read_upload(data, name, size, clahe)
    if isinstance(image, str):
        return image
    cam = explain_image(model, image, tuple(classes), "gradcam")
    lime = explain_image(model, image, tuple(classes), "lime", cam["predicted"], n_samples=lime_samples,
                         progress=scaled(progress, 0.05, 0.9), cancel=cancel)
    report(progress, 0.9, "comparing the image with the training images")
    result = {"image": image, "probabilities": cam["probabilities"], "predicted": cam["predicted"],
              "gradcam": cam["heatmap"], "lime": lime["details"]}
    if run is not None:
        try:
            check = check_unlike(run, image, model=model)
            result["unlike"] = {k: v[0].item() if isinstance(v, np.ndarray) else v for k, v in check.items()}
        except LungLensError as exc:
            result["unlike"] = f"Whether this image is like the training data cannot be checked: {exc}"
    return result


def diagnose_run_upload(run: Run, data: bytes | np.ndarray, name: str, lime_samples: int = 1000, *,
                        progress: Progress | None = None, cancel: CancelCheck | None = None) -> dict[str, Any] | str:
    """``diagnose_upload`` with the model, classes and preprocessing of ``run`` (an external view: its run's).

    ``data`` may be the file's bytes as a uint8 array (so that an in-memory cache can key it by digest).
    """
    base = run.trained_run
    cfg = base.config
    return diagnose_upload(np.asarray(data, dtype=np.uint8).tobytes() if isinstance(data, np.ndarray) else data,
                           name, base.load_model(), base.classes, cfg.image_size, cfg.clahe, lime_samples, run=base,
                           progress=progress, cancel=cancel)
