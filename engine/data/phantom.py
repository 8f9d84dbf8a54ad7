"""Built-in dataset: synthetic chest radiographs (phantoms) with lesion and lung masks, deterministic per seed.

This module holds the public API: the classes and targets of the tasks (three lesion classes, Cheng et al.'s four,
the pretraining source corpus), the difficulty knobs, what to generate (PhantomSpec), rendering one radiograph
(render_phantom), the in-memory source corpus and writing a dataset folder. The drawing itself (anatomy, findings,
acquisition and exposure, burnt-in text) is in engine.data.phantom_draw.
"""
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
from .phantom_draw import Anatomy, Film, FindingKnobs, draw_film, random_anatomy, random_film

LESION_CLASSES: tuple[str, ...] = ("normal", "pneumonia", "covid")
#: Cheng et al.'s four classes (task "4class"): pneumonia split into bacterial (lobar or segmental consolidation) and
#: viral (bilateral perihilar interstitial haze), beside normal and covid.
FOUR_CLASSES: tuple[str, ...] = ("normal", "bacterial", "viral", "covid")
#: The tasks of PhantomSpec and their classes.
TASK_CLASSES: dict[str, tuple[str, ...]] = {"lesions": LESION_CLASSES, "4class": FOUR_CLASSES,
                                            "source": ("clear", "nodules", "effusion", "cardiomegaly")}
SOURCE_CLASSES: tuple[str, ...] = TASK_CLASSES["source"]
#: Multi-label targets of the source corpus: six findings, then acquisition and anatomy attributes.
SOURCE_TARGETS: tuple[str, ...] = ("nodule", "mass", "effusion", "cardiomegaly", "consolidation", "ground_glass",
                                   "ap_view", "female", "rotated", "marker_left", "low_exposure", "devices")
SOURCE_FINDINGS: tuple[str, ...] = SOURCE_TARGETS[:6]

# Difficulty knobs, read at each render (the drawing gets them as arguments), so edits and monkeypatches
# apply. Opacities are the share of the lung's air a finding replaces (1: as dense as soft tissue).
GGO_STRENGTH = (0.35, 0.55)            # covid: faint ground glass (vessels stay visible through it)
GGO_PATCHES = (1, 3)                   # covid: patches per lung (both lungs), peripheral and basal
CONSOLIDATION_STRENGTH = (0.75, 1.00)  # pneumonia: dense lobar consolidation with air bronchograms
PNEUMONIA_BILATERAL = 0.15             # share of pneumonias with a second, smaller focus in the other lung
VIRAL_STRENGTH = (0.2, 0.45)           # viral (4class): hazy perihilar opacity, fainter than consolidation
VIRAL_FOCUS = 0.5                      # viral: share with a small patchy consolidation focus too (as bacterial)
BACTERIAL_HAZE = 0.35                  # bacterial (4class): share with peribronchial haze on one side (as viral)
FINDING_PREVALENCE = 0.2               # source corpus: each finding present independently (0.8**6 = 26% clear)
AP_SHARE = 0.35                        # share of portable AP films (all classes alike, so the view is no shortcut)
REPEAT_PATIENT_SHARE = 0.3             # share of patients imaged 2-3 times
#: Bump when the images change, so datasets and backbones cached from an older generator are not reused.
GENERATOR_VERSION = 3
#: The same for what only the four-class task draws (viral haze, bacterial haze), so a change there leaves "builtin"
#: alone.
FOUR_CLASS_VERSION = 1

_FINDINGS_OF_LABEL = {"normal": (), "clear": (), "pneumonia": ("consolidation",), "covid": ("ground_glass",),
                      "bacterial": ("consolidation", "peribronchial"), "viral": ("interstitial",),
                      "nodules": ("nodule",), "effusion": ("effusion",), "cardiomegaly": ("cardiomegaly",)}


@dataclass(frozen=True)
class PhantomSpec:
    """What to generate: a lesion task (three classes, or Cheng's four: "4class") or the pretraining source corpus;
    size, seed and shortcut marker."""

    task: Literal["lesions", "4class", "source"] = "lesions"
    n_per_class: int = 300
    image_size: int = 256
    seed: int = 0
    confounder_class: str | None = None
    confounder_prob: float = 0.0

    def __post_init__(self) -> None:
        if self.task not in TASK_CLASSES:
            raise ConfigError(f"task={self.task!r}: use one of {', '.join(map(repr, TASK_CLASSES))}.")
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
        return TASK_CLASSES[self.task]

    @property
    def has_lesions(self) -> bool:
        """Whether the task has lesion masks (the lesion tasks; the source corpus has multi-label targets instead)."""
        return self.task != "source"

    def to_dict(self) -> dict:
        """JSON-able fields and the generator version(s) (used in cache keys)."""
        versions = {"generator_4class": FOUR_CLASS_VERSION} if self.task == "4class" else {}
        return {**asdict(self), "generator": GENERATOR_VERSION, **versions}


@dataclass(frozen=True)
class Phantom:
    """One rendered radiograph with its masks."""

    image: np.ndarray
    lesion_mask: np.ndarray
    lung_mask: np.ndarray
    marker_box: tuple[int, int, int, int] | None


def _finding_knobs() -> FindingKnobs:
    """The finding knobs as they are now (read at each call, so edits and monkeypatches of this module apply)."""
    return FindingKnobs(GGO_STRENGTH, GGO_PATCHES, CONSOLIDATION_STRENGTH, PNEUMONIA_BILATERAL, VIRAL_STRENGTH,
                        VIRAL_FOCUS, BACTERIAL_HAZE)


def _random_film(rng: np.random.Generator, ap: bool | None = None, rotated: bool | None = None,
                 low_exposure: bool | None = None, devices: bool | None = None) -> Film:
    """A film of a random view (AP with AP_SHARE), positioning and exposure (the attributes given are fixed instead)."""
    return random_film(rng, AP_SHARE, ap, rotated, low_exposure, devices)


def _render(rng: np.random.Generator, size: int, a: Anatomy, film: Film, findings: tuple[str, ...],
            marker: bool) -> tuple[Phantom, dict[str, np.ndarray]]:
    """Render one film with ``findings``; returns the phantom and each finding's mask."""
    image, lung_mask, box, masks = draw_film(rng, size, a, film, findings, marker, _finding_knobs())
    lesion_mask = np.zeros((size, size), bool)
    for k in ("ground_glass", "consolidation", "interstitial", "peribronchial"):  # the lesions of the lesion tasks
        if k in masks:
            lesion_mask |= masks[k]
    return Phantom(image, lesion_mask, lung_mask, box), masks


def render_phantom(rng: np.random.Generator, label: str, size: int, *, marker: bool = False,
                   anatomy: Anatomy | None = None) -> Phantom:
    """Render one chest radiograph (PA or portable AP) of class ``label`` (lesion or source task) with its masks."""
    if label not in _FINDINGS_OF_LABEL:
        raise ConfigError(f"label={label!r}: use one of {', '.join(_FINDINGS_OF_LABEL)}.")
    a = anatomy or random_anatomy(rng)
    film = _random_film(rng)
    phantom, masks = _render(rng, size, a, film, _FINDINGS_OF_LABEL[label], marker)
    if label in SOURCE_CLASSES[1:]:  # source task: the mask of its primary finding
        key = _FINDINGS_OF_LABEL[label][0]
        phantom = Phantom(phantom.image, masks[key], phantom.lung_mask, phantom.marker_box)
    return phantom


def _source_render(rng: np.random.Generator, size: int, anatomy: Anatomy, findings: tuple[str, ...],
                   marker: bool = False) -> tuple[Phantom, np.ndarray]:
    """One source-corpus film with ``findings`` and its SOURCE_TARGETS vector (findings, then film attributes)."""
    film = _random_film(rng)
    phantom, _ = _render(rng, size, anatomy, film, findings, marker)
    attrs = {"ap_view": film.ap, "female": anatomy.female, "rotated": abs(film.rotation) > 0.5,
             "marker_left": film.letter_left, "low_exposure": film.gain < 0.9, "devices": film.devices}
    y = np.array([float(t in findings) if t in SOURCE_FINDINGS else float(attrs[t]) for t in SOURCE_TARGETS],
                 np.float32)
    return phantom, y


def source_corpus(n: int, image_size: int, seed: int,
                  progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """n source-corpus radiographs (uint8 (n, S, S)) and their multi-label targets (float32 (n, len(SOURCE_TARGETS))).

    Each finding of SOURCE_FINDINGS is present independently with FINDING_PREVALENCE; the other targets are the
    film's attributes (view, sex, rotation, side letter, exposure, devices). Deterministic per seed; in memory.
    """
    if n < 1 or not 32 <= image_size <= 2048:
        raise ConfigError(f"source_corpus(n={n}, image_size={image_size}): use n >= 1 and 32..2048 pixels.")
    rng = np.random.default_rng(seed)
    images = np.empty((n, image_size, image_size), np.uint8)
    targets = np.empty((n, len(SOURCE_TARGETS)), np.float32)
    for i in range(n):
        anatomy = random_anatomy(rng)
        findings = tuple(f for f in SOURCE_FINDINGS if rng.random() < FINDING_PREVALENCE)
        phantom, targets[i] = _source_render(rng, image_size, anatomy, findings)
        images[i] = phantom.image
        if progress is not None:
            progress(i + 1, n)
    return images, targets


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


def write_folder_atomically(root: Path, fill: Callable[[Path], None], marker: str = "manifest.csv") -> Path:
    """Have ``fill`` write a dataset into a temporary folder beside ``root``, then rename it to ``root``.

    A reader never sees half of it; a folder holding ``marker`` (written last by ``fill``) is finished and never
    rewritten; if another process finishes first, its folder is kept. A read-only or full disk raises a StoreError.
    """
    if (root / marker).exists():
        return root
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    with writing(root.parent):
        root.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(root)
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            fill(tmp)
            os.replace(tmp, root)
        except OSError:
            if not (root / marker).exists():  # anything but another process having finished first
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def write_phantom_dataset(root: Path, spec: PhantomSpec, progress: Callable[[int, int], None] | None = None) -> Path:
    """Write the dataset in the folder layout the loader reads (images/, masks/, lung_masks/, manifest.csv).

    It is written to a temporary folder beside ``root`` and renamed, so a reader never sees half of it; the temporary
    folder is removed on any failure (a read-only or full disk raises a StoreError naming the folder).
    """
    return write_folder_atomically(Path(root), lambda tmp: _write_phantoms(tmp, spec, progress))


def _write_phantoms(tmp: Path, spec: PhantomSpec, progress: Callable[[int, int], None] | None) -> None:
    """Render and write every image, mask and the manifest of ``spec`` into ``tmp``."""
    rng = np.random.default_rng(spec.seed)
    total = spec.n_per_class * len(spec.classes)
    rows, done = [], 0
    for label in spec.classes:
        for sub in ("images", "lung_masks") + (("masks",) if spec.has_lesions else ()):
            (tmp / sub / label).mkdir(parents=True, exist_ok=True)
        made, patient = 0, 0
        while made < spec.n_per_class:
            anatomy = random_anatomy(rng)
            shots = int(rng.integers(2, 4)) if rng.random() < REPEAT_PATIENT_SHARE else 1
            pid = f"{label[:3]}{patient:04d}"
            patient += 1
            for k in range(min(shots, spec.n_per_class - made)):
                marker = _marker_draws(rng, spec, label)
                name = f"{pid}_{k}.png"
                row = {"file": f"images/{label}/{name}", "class": label, "patient_id": pid, "split": "",
                       "mask_file": "", "lung_mask_file": f"lung_masks/{label}/{name}", "marker": int(marker),
                       "marker_box": ""}
                if spec.has_lesions:
                    ph = render_phantom(rng, label, spec.image_size, marker=marker, anatomy=anatomy)
                    _write_png(tmp / "masks" / label / name, ph.lesion_mask.astype(np.uint8) * 255)
                    row["mask_file"] = f"masks/{label}/{name}"
                else:  # one primary label per class; findings that are no class only beside a primary one
                    ph, y = _source_row(rng, label, spec.image_size, marker, anatomy)
                    row.update({f"target_{t}": int(v) for t, v in zip(SOURCE_TARGETS, y, strict=True)})
                _write_png(tmp / "images" / label / name, ph.image)
                _write_png(tmp / "lung_masks" / label / name, ph.lung_mask.astype(np.uint8) * 255)
                row["marker_box"] = " ".join(map(str, ph.marker_box)) if ph.marker_box else ""
                rows.append(row)
                made += 1
                done += 1
                if progress is not None:
                    progress(done, total)
    pd.DataFrame(rows).to_csv(tmp / "manifest.csv", index=False)


def _source_row(rng: np.random.Generator, label: str, size: int, marker: bool,
                anatomy: Anatomy) -> tuple[Phantom, np.ndarray]:
    """A source-task film of primary class ``label`` (its finding present, the other class findings absent, the
    findings that are no class random) with its multi-label targets."""
    forced = _FINDINGS_OF_LABEL[label]
    extra = ("mass", "consolidation", "ground_glass")
    findings = tuple(f for f in SOURCE_FINDINGS if f in forced or (forced and f in extra
                                                                   and rng.random() < FINDING_PREVALENCE))
    phantom, y = _source_render(rng, size, anatomy, findings, marker)
    return phantom, y
