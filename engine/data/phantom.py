"""Built-in dataset: synthetic chest radiographs (phantoms) with lesion and lung masks, deterministic per seed."""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..store import writing

LESION_CLASSES: tuple[str, ...] = ("normal", "pneumonia", "covid")
SOURCE_CLASSES: tuple[str, ...] = ("clear", "nodules", "effusion", "cardiomegaly")

# Difficulty knobs (opacity as a fraction of the lung-to-bone contrast), calibrated so a small CNN lands near 90%.
GGO_STRENGTH = (0.10, 0.30)      # covid: faint ground-glass opacities
CONSOLIDATION_STRENGTH = (0.30, 0.60)  # pneumonia: denser lobar consolidation
REPEAT_PATIENT_SHARE = 0.3       # share of patients imaged 2-3 times
#: Bump when the images change, so datasets and backbones cached from an older generator are not reused.
GENERATOR_VERSION = 2


@dataclass(frozen=True)
class PhantomSpec:
    """What to generate: the lesion task (or the pretraining source corpus), size, seed and shortcut marker."""

    task: Literal["lesions", "source"] = "lesions"
    n_per_class: int = 300
    image_size: int = 256
    seed: int = 0
    confounder_class: str | None = None
    confounder_prob: float = 0.0

    def __post_init__(self) -> None:
        if self.task not in ("lesions", "source"):
            raise ConfigError(f"task={self.task!r}: use 'lesions' or 'source'.")
        if self.n_per_class < 1:
            raise ConfigError(f"n_per_class={self.n_per_class}: generate at least one image per class.")
        if not 32 <= self.image_size <= 2048:
            raise ConfigError(f"image_size={self.image_size}: use 32..2048 pixels.")
        if not 0.0 <= self.confounder_prob <= 1.0:
            raise ConfigError(f"confounder_prob={self.confounder_prob}: a probability in [0, 1].")
        if self.confounder_class is not None and self.confounder_class not in self.classes:
            raise ConfigError(f"confounder_class={self.confounder_class!r} is not one of {', '.join(self.classes)}.")

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names of this task."""
        return LESION_CLASSES if self.task == "lesions" else SOURCE_CLASSES

    def to_dict(self) -> dict:
        """JSON-able fields and the generator version (used in cache keys)."""
        return {**asdict(self), "generator": GENERATOR_VERSION}


@dataclass(frozen=True)
class Anatomy:
    """One patient's body: everything that stays the same across that patient's images."""

    cx: float
    cy: float
    scale: float
    lung_w: float
    lung_h: float
    heart: float
    rib_gap: float
    tilt: float


@dataclass(frozen=True)
class Phantom:
    """One rendered radiograph with its masks."""

    image: np.ndarray
    lesion_mask: np.ndarray
    lung_mask: np.ndarray
    marker_box: tuple[int, int, int, int] | None


def random_anatomy(rng: np.random.Generator) -> Anatomy:
    """A patient: body position, size, lung shape, heart size, rib spacing, rotation."""
    return Anatomy(cx=rng.uniform(0.47, 0.53), cy=rng.uniform(0.50, 0.56), scale=rng.uniform(0.85, 1.05),
                   lung_w=rng.uniform(0.17, 0.21), lung_h=rng.uniform(0.30, 0.36), heart=rng.uniform(0.11, 0.14),
                   rib_gap=rng.uniform(0.060, 0.075), tilt=rng.uniform(-6, 6))


def _ellipse(mask: np.ndarray, c: tuple[float, float], axes: tuple[float, float], angle: float, value=1) -> None:
    cv2.ellipse(mask, (int(c[0]), int(c[1])), (max(1, int(axes[0])), max(1, int(axes[1]))), angle, 0, 360, value, -1,
                cv2.LINE_AA)


def _blob(rng: np.random.Generator, s: int, c: tuple[float, float], r: float) -> np.ndarray:
    """A soft irregular blob (max of a few Gaussians) as float in [0, 1], computed only in its bounding window."""
    out = np.zeros((s, s), np.float32)
    half = int(2.5 * r) + 1
    x0, x1 = max(0, int(c[0]) - half), min(s, int(c[0]) + half)
    y0, y1 = max(0, int(c[1]) - half), min(s, int(c[1]) + half)
    if x0 >= x1 or y0 >= y1:
        return out
    yy, xx = np.ogrid[y0:y1, x0:x1]
    window = out[y0:y1, x0:x1]
    for _ in range(rng.integers(3, 6)):
        ox, oy = rng.normal(0, r * 0.45, 2)
        rr = r * rng.uniform(0.45, 0.8)
        g = np.exp(-(((xx - c[0] - ox) ** 2 + (yy - c[1] - oy) ** 2) / (2 * rr**2))).astype(np.float32)
        np.maximum(window, g, out=window)
    return out


def render_phantom(rng: np.random.Generator, label: str, size: int, *, marker: bool = False,
                   anatomy: Anatomy | None = None) -> Phantom:
    """Render one PA chest radiograph of class ``label`` (lesion or source task) with its masks."""
    a = anatomy or random_anatomy(rng)
    s = size
    u = s * a.scale
    cx, cy = a.cx * s, a.cy * s
    # Attenuation map: body soft tissue, lungs (air, dark), mediastinum and heart, bones, diaphragm.
    body = np.zeros((s, s), np.float32)
    _ellipse(body, (cx, cy + 0.05 * u), (0.46 * u, 0.56 * u), 0)
    lung_l = np.zeros((s, s), np.float32)
    lung_r = np.zeros((s, s), np.float32)
    dx = 0.2 * u
    _ellipse(lung_r, (cx - dx, cy - 0.02 * u), (a.lung_w * u, a.lung_h * u), 4)
    _ellipse(lung_l, (cx + dx, cy - 0.02 * u), (a.lung_w * u, a.lung_h * u), -4)
    heart_size = a.heart * (1.45 if label == "cardiomegaly" else 1.0)
    heart = np.zeros((s, s), np.float32)
    _ellipse(heart, (cx + 0.06 * u, cy + 0.16 * u), (heart_size * u * 1.35, heart_size * u), -15)
    medi = np.zeros((s, s), np.float32)
    cv2.rectangle(medi, (int(cx - 0.055 * u), int(cy - 0.45 * u)), (int(cx + 0.055 * u), int(cy + 0.2 * u)), 1, -1)
    diaphragm = np.zeros((s, s), np.float32)
    for side in (-1, 1):
        _ellipse(diaphragm, (cx + side * dx, cy + (a.lung_h + 0.08) * u), (a.lung_w * u * 1.3, 0.12 * u), 0)
    lungs = np.clip(lung_l + lung_r - heart - medi - diaphragm, 0, 1)
    lung_mask = lungs > 0.5
    bones = np.zeros((s, s), np.float32)
    for i in range(10):  # posterior ribs: arcs across each lung
        y = cy - 0.36 * u + i * a.rib_gap * u
        for side in (-1, 1):
            cv2.ellipse(bones, (int(cx + side * 0.05 * u), int(y)), (int(0.33 * u), int(0.09 * u)), side * 12,
                        200 if side < 0 else -20, 340 if side < 0 else 160, 0.5, max(1, int(0.014 * u)), cv2.LINE_AA)
    for side in (-1, 1):  # clavicles
        cv2.line(bones, (int(cx + side * 0.04 * u), int(cy - 0.36 * u)), (int(cx + side * 0.3 * u), int(cy - 0.42 * u)),
                 1.0, max(1, int(0.022 * u)), cv2.LINE_AA)
    cv2.line(bones, (int(cx), int(cy - 0.5 * u)), (int(cx), int(cy + 0.3 * u)), 0.9, max(1, int(0.035 * u)))  # spine
    body = cv2.GaussianBlur(body, (0, 0), 0.03 * u)  # soft tissue thins out towards the skin
    # Vascular markings: low-frequency texture inside the lungs, denser towards the hila.
    vessels = cv2.GaussianBlur(rng.standard_normal((s, s), dtype=np.float32), (0, 0), 0.012 * u)
    density = (0.5 * body + 0.26 * np.clip(heart + medi, 0, 1) + 0.3 * diaphragm * body - 0.38 * lungs
               + 0.18 * bones * body + 0.5 * np.abs(vessels) * lungs)
    # Lesions (lesion task) or findings (source task), clipped to the lungs.
    lesion = np.zeros((s, s), np.float32)
    if label == "covid":  # several faint, bilateral, peripheral, lower-zone ground-glass opacities
        n = int(rng.integers(2, 6))
        sides = [-1, 1] + list(rng.choice([-1, 1], n - 2))
        for side in sides:
            x = cx + side * (dx + rng.uniform(0.2, 0.85) * a.lung_w * u)
            y = cy + rng.uniform(0.0, 0.75) * a.lung_h * u
            lesion = np.maximum(lesion, _blob(rng, s, (x, y), rng.uniform(0.04, 0.07) * u) * rng.uniform(*GGO_STRENGTH))
    elif label == "pneumonia":  # one denser lobar consolidation, usually unilateral
        side = rng.choice([-1, 1])
        x = cx + side * (dx + rng.uniform(-0.3, 0.4) * a.lung_w * u)
        y = cy + rng.uniform(-0.5, 0.6) * a.lung_h * u
        lesion = _blob(rng, s, (x, y), rng.uniform(0.07, 0.11) * u) * rng.uniform(*CONSOLIDATION_STRENGTH)
        if rng.random() < 0.15:  # occasionally bilateral
            lesion = np.maximum(lesion, _blob(rng, s, (2 * cx - x, y), 0.05 * u) * rng.uniform(*CONSOLIDATION_STRENGTH) * 0.7)
    elif label == "nodules":  # nodules and masses: round opacities of any size and density, anywhere in the lungs
        for _ in range(int(rng.integers(1, 5))):
            side = rng.choice([-1, 1])
            p = (cx + side * (dx + rng.uniform(-0.7, 0.7) * a.lung_w * u), cy + rng.uniform(-0.8, 0.8) * a.lung_h * u)
            lesion = np.maximum(lesion, _blob(rng, s, p, rng.uniform(0.02, 0.06) * u) * rng.uniform(0.2, 0.5))
    elif label == "effusion":
        side = rng.choice([-1, 1])
        level = cy + rng.uniform(0.35, 0.7) * a.lung_h * u
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
        meniscus = level - 0.08 * u * np.abs(xx - (cx + side * dx)) / (a.lung_w * u)
        lesion = ((yy > meniscus) & ((xx - cx) * side > 0)).astype(np.float32) * 0.45
    lesion = lesion * lung_mask
    lesion_mask = lesion > 0.04 if label in ("covid", "pneumonia") else np.zeros((s, s), bool)
    density = density + lesion
    # Acquisition: exposure and contrast, blur, noise (scanner to scanner).
    density = cv2.GaussianBlur(density, (0, 0), rng.uniform(0.6, 1.6) * s / 256)
    img = rng.uniform(0.08, 0.16) + density * rng.uniform(0.9, 1.15)
    img = img + cv2.GaussianBlur(rng.standard_normal((s, s), dtype=np.float32), (0, 0), 2 * s / 256) * 0.02
    img = img + rng.standard_normal((s, s), dtype=np.float32) * rng.uniform(0.01, 0.03)
    # Rotation of the whole film (patient positioning).
    rot = cv2.getRotationMatrix2D((s / 2, s / 2), a.tilt, 1.0)
    img = cv2.warpAffine(img, rot, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    lung_mask = cv2.warpAffine(lung_mask.astype(np.uint8), rot, (s, s), flags=cv2.INTER_NEAREST) > 0
    lesion_mask = cv2.warpAffine(lesion_mask.astype(np.uint8), rot, (s, s), flags=cv2.INTER_NEAREST) > 0
    lesion_mask &= lung_mask
    box = None
    if marker:  # a bright device-like marker outside the lungs, on the detector (drawn after rotation)
        w, h = int(0.07 * s), int(0.045 * s)
        corner = rng.integers(0, 2)
        x0 = int(0.05 * s) if corner == 0 else int(0.95 * s) - w
        y0 = int(rng.uniform(0.05, 0.15) * s)
        img[y0 : y0 + h, x0 : x0 + w] = 1.0
        t = max(1, h // 8)  # an "L" side marker engraved in the tag
        cv2.line(img, (x0 + w // 3, y0 + h // 5), (x0 + w // 3, y0 + 4 * h // 5), 0.35, t)
        cv2.line(img, (x0 + w // 3, y0 + 4 * h // 5), (x0 + 2 * w // 3, y0 + 4 * h // 5), 0.35, t)
        box = (x0, y0, w, h)
    image = np.clip(img * 255, 0, 255).astype(np.uint8)
    return Phantom(image, lesion_mask, lung_mask, box)


def _marker_draws(rng: np.random.Generator, spec: PhantomSpec, label: str) -> bool:
    if spec.confounder_class is None or spec.confounder_prob == 0:
        return False
    p = spec.confounder_prob if label == spec.confounder_class else 1 - spec.confounder_prob
    return bool(rng.random() < p)


def _write_png(path: Path, pixels: np.ndarray) -> None:
    """Write ``pixels`` as PNG (what ``cv2.imwrite`` writes), raising on failure instead of returning False."""
    ok, buf = cv2.imencode(".png", pixels)
    if not ok:
        raise ValueError(f"OpenCV could not encode {path.name} as PNG")
    path.write_bytes(buf.tobytes())


def _remove_stale_temporaries(root: Path) -> None:
    """Remove half-written copies of ``root`` left by processes that no longer run (killed while writing)."""
    for tmp in root.parent.glob(f".{root.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            continue  # a process of another user: it may still be writing


def write_phantom_dataset(root: Path, spec: PhantomSpec, progress: Callable[[int, int], None] | None = None) -> Path:
    """Write the dataset in the folder layout the loader reads (images/, masks/, lung_masks/, manifest.csv).

    It is written to a temporary folder beside ``root`` and renamed, so a reader never sees half of it; the temporary
    folder is removed on any failure (a read-only or full disk raises a StoreError naming the folder).
    """
    root = Path(root)
    if (root / "manifest.csv").exists():
        return root
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    with writing(root.parent):
        root.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(root)
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _write_phantoms(tmp, spec, progress)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    try:
        os.replace(tmp, root)
    except OSError:  # another process wrote it first
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _write_phantoms(tmp: Path, spec: PhantomSpec, progress: Callable[[int, int], None] | None) -> None:
    """Render and write every image, mask and the manifest of ``spec`` into ``tmp``."""
    rng = np.random.default_rng(spec.seed)
    total = spec.n_per_class * len(spec.classes)
    rows, done = [], 0
    for label in spec.classes:
        for sub in ("images", "lung_masks") + (("masks",) if spec.task == "lesions" else ()):
            (tmp / sub / label).mkdir(parents=True, exist_ok=True)
        made, patient = 0, 0
        while made < spec.n_per_class:
            anatomy = random_anatomy(rng)
            shots = int(rng.integers(2, 4)) if rng.random() < REPEAT_PATIENT_SHARE else 1
            pid = f"{label[:3]}{patient:04d}"
            patient += 1
            for k in range(min(shots, spec.n_per_class - made)):
                marker = _marker_draws(rng, spec, label)
                ph = render_phantom(rng, label, spec.image_size, marker=marker, anatomy=anatomy)
                name = f"{pid}_{k}.png"
                _write_png(tmp / "images" / label / name, ph.image)
                _write_png(tmp / "lung_masks" / label / name, ph.lung_mask.astype(np.uint8) * 255)
                row = {"file": f"images/{label}/{name}", "class": label, "patient_id": pid, "split": "",
                       "mask_file": "", "lung_mask_file": f"lung_masks/{label}/{name}", "marker": int(marker),
                       "marker_box": " ".join(map(str, ph.marker_box)) if ph.marker_box else ""}
                if spec.task == "lesions":
                    _write_png(tmp / "masks" / label / name, ph.lesion_mask.astype(np.uint8) * 255)
                    row["mask_file"] = f"masks/{label}/{name}"
                rows.append(row)
                made += 1
                done += 1
                if progress is not None:
                    progress(done, total)
    pd.DataFrame(rows).to_csv(tmp / "manifest.csv", index=False)
