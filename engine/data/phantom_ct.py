"""Built-in 3-D CT phantoms in Hounsfield units: COVID-19 against community-acquired pneumonia (CAP), as in Ouyang et al.

Each phantom is a chest CT in the (D, H, W) layout of ``engine.data.volume`` (slices superior -> inferior, rows
anterior -> posterior, columns patient right -> left), drawn in millimetres on a voxel grid of its own spacing:
body (fat and muscle), two lungs (parenchyma with a gravity-dependent density gradient, vessel and bronchial trees
from each hilum), trachea and main bronchi, mediastinum (fat, heart, aorta), spine, ribs and sternum.

* ``covid``: several peripheral ground-glass opacities (-600..-300 HU; vessels stay visible through them), bilateral
  in most cases.
* ``cap``: consolidation (-100..50 HU, vessels hidden, bronchi inside it stay air: air bronchograms) of part of one
  lobe, or of a whole lobe; a second, smaller focus in the other lung in a minority.

The infection / lung volume ratio of each case is drawn from a log-normal per class (``RATIO_LOG10``): COVID mostly
moderate or large (Ouyang's Table III groups 0.005-0.030 and > 0.030), CAP mostly small or moderate, overlapping, so
that size-balanced sampling has small-infection COVID and large-infection CAP to oversample. Body size, spacing
(slice thickness), noise and calibration vary per patient. Deterministic per seed (each case has its own generator,
so a larger ``n_per_class`` keeps the first cases).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from ..errors import ConfigError
from .phantom import write_folder_atomically
from .volume import HU_WINDOW, volume_shape, volume_spacing, write_nifti

CT_CLASSES: tuple[str, ...] = ("cap", "covid")
#: Multi-label targets of the 3-D source corpus: five findings, then two anatomy attributes.
CT_SOURCE_TARGETS: tuple[str, ...] = ("nodule", "effusion", "consolidation", "ground_glass", "emphysema",
                                      "large_body", "high_diaphragm")
CT_SOURCE_FINDINGS: tuple[str, ...] = CT_SOURCE_TARGETS[:5]
#: log10 of the infection / lung volume ratio per class: (mean, sd) of a normal, clipped to RATIO_RANGE.
RATIO_LOG10 = {"covid": (-1.3, 0.5), "cap": (-2.15, 0.5)}
RATIO_RANGE = (0.0008, 0.25)
GGO_HU = (-600.0, -300.0)
CONSOLIDATION_HU = (-100.0, 50.0)
COVID_PATCHES = (2, 6)          # ground-glass patches per case (1-2 when the drawn ratio is small)
CAP_BILATERAL = 0.2             # share of CAP cases with a second focus in the other lung
CORPUS_PREVALENCE = 0.25        # source corpus: each finding present independently
#: Bump when the volumes change, so datasets and backbones cached from an older generator are not reused.
CT_GENERATOR_VERSION = 1
_AIR, _FAT, _SOFT, _BLOOD, _BONE, _CORTEX = -1000.0, -90.0, 40.0, 42.0, 280.0, 700.0


@dataclass(frozen=True)
class CTPhantomSpec:
    """What to generate: cases per class, native voxel grid (D, H, W) and seed."""

    n_per_class: int = 80
    shape: tuple[int, int, int] = (48, 96, 96)  # about 7 x 3.8 x 3.8 mm: finer than size 64's 11 x 6 x 6
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_per_class < 1:
            raise ConfigError(f"n_per_class={self.n_per_class}: generate at least one volume per class.")
        if len(self.shape) != 3 or not all(16 <= n <= 512 for n in self.shape):
            raise ConfigError(f"shape={self.shape}: give (slices, rows, columns), each 16..512 voxels.")

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names ("cap", "covid")."""
        return CT_CLASSES

    def to_dict(self) -> dict:
        """JSON-able fields and the generator version (used in cache keys)."""
        return {**asdict(self), "shape": list(self.shape), "generator": CT_GENERATOR_VERSION}


@dataclass(frozen=True)
class CTPhantom:
    """One CT phantom: HU volume (float32 (D, H, W)), masks, spacing (mm) and infection / lung volume ratio."""

    hu: np.ndarray
    lesion_mask: np.ndarray
    lung_mask: np.ndarray
    spacing: tuple[float, float, float]
    ratio: float


class _Grid:
    """Voxel centres in mm (z: superior -> inferior, y: anterior -> posterior, x: right -> left), centred on 0."""

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float]):
        self.shape, self.spacing = tuple(shape), tuple(float(s) for s in spacing)
        self.axes = [(np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(self.shape, self.spacing)]
        self.z, self.y, self.x = np.ix_(*self.axes)

    def box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, ...] | None:
        """Index slices of the voxels whose centres lie in the mm box [lo, hi] (None when empty)."""
        out = []
        for ax, a, b in zip(self.axes, lo, hi):
            i, j = np.searchsorted(ax, a), np.searchsorted(ax, b, side="right")
            if i >= j:
                return None
            out.append(slice(int(i), int(j)))
        return tuple(out)

    def coords(self, sl: tuple[slice, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable z, y, x coordinates of a box."""
        return self.z[sl[0]], self.y[:, sl[1]], self.x[:, :, sl[2]]


@dataclass(frozen=True)
class _Anatomy:
    """Patient geometry in mm."""

    ax: float          # body half-width (x)
    ay: float          # body half-depth (y)
    wall: float        # chest wall (fat + muscle) thickness
    fat: float         # subcutaneous fat thickness
    apex: float        # z of the lung apices
    length: float      # apex to diaphragm dome periphery
    dome: float        # height of the diaphragm domes
    heart: float       # heart size factor

    @property
    def ix(self) -> float:
        return self.ax - self.wall

    @property
    def iy(self) -> float:
        return self.ay - self.wall

    @property
    def carina(self) -> float:
        return self.apex + 0.33 * self.length

    def hilum(self, side: int) -> np.ndarray:
        """(z, y, x) of the hilum of the right (side -1) or left (+1) lung."""
        return np.array([self.carina + 25.0, 0.1 * self.iy, side * 0.3 * self.ix])


def _random_anatomy(rng: np.random.Generator) -> _Anatomy:
    ax = rng.uniform(125.0, 168.0)
    length = rng.uniform(195.0, 245.0)
    return _Anatomy(ax=ax, ay=ax * rng.uniform(0.62, 0.76), wall=rng.uniform(14.0, 24.0), fat=rng.uniform(4.0, 14.0),
                    apex=-0.5 * length - rng.uniform(0.0, 15.0), length=length, dome=rng.uniform(25.0, 50.0),
                    heart=rng.uniform(0.9, 1.15))


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], cells: int = 6) -> np.ndarray:
    """Smooth random field of about unit variance (trilinear upsampling of a coarse normal grid)."""
    coarse = rng.standard_normal((max(2, cells // 2), cells, cells)).astype(np.float32)
    return ndimage.zoom(coarse, [n / c for n, c in zip(shape, coarse.shape)], order=1, grid_mode=True,
                        mode="nearest")


def _segment_distance(g: _Grid, p0: np.ndarray, p1: np.ndarray, reach: float):
    """Box slices around a segment and the distance (mm) of the box's voxels to the segment (None if outside)."""
    sl = g.box(np.minimum(p0, p1) - reach, np.maximum(p0, p1) + reach)
    if sl is None:
        return None, None
    z, y, x = g.coords(sl)
    d = p1 - p0
    t = np.clip(((z - p0[0]) * d[0] + (y - p0[1]) * d[1] + (x - p0[2]) * d[2]) / max(float(d @ d), 1e-9), 0.0, 1.0)
    dist = np.sqrt((z - p0[0] - t * d[0]) ** 2 + (y - p0[1] - t * d[1]) ** 2 + (x - p0[2] - t * d[2]) ** 2)
    return sl, dist


def _tube(g: _Grid, out: np.ndarray, p0, p1, radius: float, value: float | bool,
          within: np.ndarray | None = None) -> None:
    """Set ``out`` to ``value`` within ``radius`` of the segment p0-p1 (only where ``within`` when given)."""
    sl, dist = _segment_distance(g, np.asarray(p0, float), np.asarray(p1, float), radius)
    if sl is None:
        return
    hit = dist <= radius
    if within is not None:
        hit &= within[sl]
    out[sl][hit] = value


def _tree(rng: np.random.Generator, a: _Anatomy, side: int) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Segments (start, end, radius) of one lung's vascular tree, from the hilum outwards in three generations."""
    segments = []
    frontier = [(a.hilum(side), np.array([0.0, 0.0, float(side)]), 5.5)]
    for generation in range(3):
        nxt = []
        for start, heading, radius in frontier:
            for _ in range((5, 3, 2)[generation]):
                d = heading + rng.normal(0.0, 0.9 if generation == 0 else 0.5, 3)
                d[0] *= 1.6  # the lungs are longer than wide: more branches run up and down
                d /= np.linalg.norm(d) + 1e-9
                end = start + d * rng.uniform(35.0, 60.0) * (0.75 ** generation)
                segments.append((start, end, radius))
                nxt.append((end, d, radius * 0.68))
        frontier = nxt
    return segments


def _lungs(g: _Grid, a: _Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the right and left lung (stacked as (2, D, H, W) bool) and the heart."""
    z, y, x = g.z, g.y, g.x
    t = np.clip((z - a.apex) / a.length, 0.0, None)
    taper = np.sqrt(np.clip(t / 0.32, 0.0, 1.0))
    heart = ((x - 0.12 * a.ix) / (0.36 * a.ix * a.heart)) ** 2 + ((y + 0.3 * a.iy) / (0.45 * a.iy * a.heart)) ** 2 \
        + ((z - (a.apex + a.length - 45.0)) / 60.0) ** 2 <= 1.0
    spine = (x / 24.0) ** 2 + ((y - 0.8 * a.iy) / 28.0) ** 2 <= 1.0
    lungs = []
    for side in (-1, 1):
        r2 = ((x - side * 0.5 * a.ix) / (0.47 * a.ix * taper + 1e-6)) ** 2 \
            + ((y - 0.02 * a.iy) / (0.9 * a.iy * taper + 1e-6)) ** 2
        base = a.apex + a.length - a.dome * np.clip(1.0 - r2, 0.0, 1.0) - (8.0 if side < 0 else 0.0)
        lung = (r2 <= 1.0) & (z >= a.apex) & (z <= base) & (side * x > 0.09 * a.ix)
        lungs.append(lung & ~heart & ~spine)
    return np.stack(lungs), heart


def _body(g: _Grid, a: _Anatomy, hu: np.ndarray) -> None:
    """Body outline, subcutaneous fat, muscle, mediastinal fat, heart-level soft tissue (in place)."""
    rho = np.sqrt((g.x / a.ax) ** 2 + (g.y / a.ay) ** 2)
    hu[...] = np.where(rho <= 1.0, np.where(rho > 1.0 - a.fat / a.ay, _FAT, _SOFT), _AIR)
    mfat = (g.x / (0.16 * a.ix)) ** 2 + ((g.y + 0.1 * a.iy) / (0.45 * a.iy)) ** 2 \
        + ((g.z - a.carina) / 70.0) ** 2 <= 1.0
    hu[np.broadcast_to(mfat, hu.shape)] = _FAT


def _bones(g: _Grid, a: _Anatomy, hu: np.ndarray) -> None:
    """Spine (vertebral bodies with discs, spinal canal, spinous processes), ribs and sternum (in place)."""
    z, y, x = g.z, g.y, g.x
    yc, r = 0.8 * a.iy, 17.0
    rad = np.sqrt(x ** 2 + (y - yc) ** 2)
    disc = np.broadcast_to(((z - a.apex) % 27.0) < 5.0, hu.shape)
    body = np.broadcast_to(rad <= r, hu.shape)
    hu[body] = np.where(np.broadcast_to(rad > r - 2.5, hu.shape), _CORTEX, _BONE)[body]
    hu[body & disc] = 80.0
    canal = np.broadcast_to(np.sqrt(x ** 2 + (y - yc - r - 9.0) ** 2) <= 8.0, hu.shape)
    arch = np.broadcast_to((np.sqrt(x ** 2 + (y - yc - r - 9.0) ** 2) <= 13.0)
                           | ((np.abs(x) < 4.0) & (y > yc + r) & (y < yc + r + 38.0)), hu.shape)
    hu[arch & ~disc] = 450.0
    hu[canal] = 20.0
    # Ribs: bands in the chest wall, descending anteriorly, absent at the front (costal cartilage).
    ex, ey = a.ix + 7.0, a.iy + 7.0
    radial = (np.sqrt((x / ex) ** 2 + (y / ey) ** 2) - 1.0) * 0.5 * (ex + ey)
    theta = np.abs(np.arctan2(x, y))  # 0 posterior, pi anterior
    ring = (np.abs(radial) <= 4.5) & (theta > 0.2) & (theta < 2.3)
    drop = 60.0 * (1.0 - np.cos(theta)) / 2.0
    rib = np.zeros(hu.shape, bool)
    for k in range(14):
        rib |= ring & (np.abs(z - (a.apex - 45.0 + 24.0 * k) - drop) <= 6.0)
    hu[rib] = 600.0
    sternum = (np.abs(x) <= 14.0) & (y > -a.iy - 14.0) & (y < -a.iy - 3.0) \
        & (z > a.carina - 40.0) & (z < a.apex + a.length - 30.0)
    hu[np.broadcast_to(sternum, hu.shape)] = 450.0


def _airways(g: _Grid, a: _Anatomy, out: np.ndarray, value, bronchi: list, lung: np.ndarray) -> None:
    """Trachea and main bronchi (everywhere) and the intrapulmonary bronchi (inside the lungs)."""
    top = np.array([g.axes[0][0] - 10.0, 0.22 * a.iy, 0.0])
    carina = np.array([a.carina, 0.22 * a.iy, 0.0])
    _tube(g, out, top, carina, 9.0, value)
    for side in (-1, 1):
        _tube(g, out, carina, a.hilum(side), 6.5 if side < 0 else 5.5, value)
    for p0, p1, radius in bronchi:
        _tube(g, out, p0, p1, radius, value, within=lung)


def _grow(rng: np.random.Generator, g: _Grid, region: np.ndarray, seed_zyx: np.ndarray, n_voxels: int,
          field: np.ndarray) -> np.ndarray:
    """The ``n_voxels`` voxels of ``region`` nearest ``seed_zyx`` in a distance made irregular by ``field``."""
    idx = np.flatnonzero(region)
    if n_voxels <= 0 or idx.size == 0:
        return np.zeros(region.shape, bool)
    zi, yi, xi = np.unravel_index(idx, region.shape)
    d = np.sqrt((g.axes[0][zi] - seed_zyx[0]) ** 2 + (g.axes[1][yi] - seed_zyx[1]) ** 2
                + (g.axes[2][xi] - seed_zyx[2]) ** 2)
    d = d * np.exp(0.35 * field.ravel()[idx] + rng.normal(0.0, 0.04, idx.size))
    keep = idx[np.argpartition(d, min(n_voxels, idx.size) - 1)[:n_voxels]]
    out = np.zeros(region.size, bool)
    out[keep] = True
    return out.reshape(region.shape)


def _depth(g: _Grid, region: np.ndarray) -> np.ndarray:
    """Distance (mm) of each voxel of ``region`` to its surface (0 outside)."""
    return ndimage.distance_transform_edt(region, sampling=g.spacing)


def _peripheral_point(rng: np.random.Generator, g: _Grid, depth: np.ndarray, basal: bool,
                      depth_mm: tuple[float, float] = (4.0, 16.0)) -> np.ndarray:
    """A point (mm) ``depth_mm`` under the surface of the region whose ``_depth`` is given (posterior and basal ones
    more likely when ``basal``); a lesion grown from it is subpleural but mostly inside the lung."""
    band = np.flatnonzero((depth >= depth_mm[0]) & (depth <= depth_mm[1]))
    if band.size == 0:
        band = np.flatnonzero(depth > 0)
    zi, yi, xi = np.unravel_index(band, depth.shape)
    w = np.exp(1.5 * (zi / depth.shape[0]) + 1.0 * (yi / depth.shape[1])) if basal else np.ones(band.size)
    k = rng.choice(band.size, p=w / w.sum())
    return np.array([g.axes[0][zi[k]], g.axes[1][yi[k]], g.axes[2][xi[k]]])


def _draw_ratio(rng: np.random.Generator, label: str) -> float:
    mean, sd = RATIO_LOG10[label]
    return float(np.clip(10 ** rng.normal(mean, sd), *RATIO_RANGE))


def _ground_glass(rng, g, lungs, hu, ratio, field, n_patches=None) -> np.ndarray:
    """Peripheral ground-glass patches covering about ``ratio`` of the lungs; vessels stay visible (max)."""
    total = int(ratio * lungs.any(0).sum())
    n = n_patches or (int(rng.integers(1, 3)) if ratio < 0.005 else int(rng.integers(*COVID_PATCHES) + 1))
    shares = rng.dirichlet(np.full(n, 2.0))
    sides = rng.permutation(np.arange(n) % 2) if n > 1 else rng.integers(0, 2, 1)
    mask = np.zeros(hu.shape, bool)
    depths = [_depth(g, lung) for lung in lungs]
    for share, side in zip(shares, sides):
        seed = _peripheral_point(rng, g, depths[side], basal=True)
        patch = _grow(rng, g, lungs[side] & ~mask, seed, int(share * total), field)
        level = rng.uniform(*GGO_HU)
        hu[patch] = np.maximum(hu[patch], level + 40.0 * field[patch])
        mask |= patch
    return mask


def _lobes(g: _Grid, a: _Anatomy, lung: np.ndarray, side: int) -> list[np.ndarray]:
    """Lobes of one lung: lower (behind the oblique fissure), upper and, on the right, middle."""
    h = a.hilum(side)
    lower = lung & (0.55 * (g.z - h[0]) + 0.85 * (g.y - h[1]) > 0.0)
    upper = lung & ~lower
    if side > 0:
        return [lower, upper]
    middle = upper & (g.z > h[0] - 10.0) & (g.y < h[1])
    return [lower, upper & ~middle, middle]


def _consolidation(rng, g, a, lungs, hu, ratio, field, bilateral=None) -> np.ndarray:
    """Consolidation of part of a lobe (a whole lobe when large), about ``ratio`` of the lungs; vessels hidden."""
    total = int(ratio * lungs.any(0).sum())
    two = rng.random() < CAP_BILATERAL if bilateral is None else bilateral
    side = int(rng.integers(0, 2))
    parts = [(side, total)] if not two else [(side, int(0.75 * total)), (1 - side, total - int(0.75 * total))]
    mask = np.zeros(hu.shape, bool)
    for s, n in parts:
        lobes = _lobes(g, a, lungs[s], -1 if s == 0 else 1)
        sizes = np.array([lobe.sum() for lobe in lobes], float)
        lobe = lobes[int(rng.choice(len(lobes), p=(sizes + 1) / (sizes + 1).sum()))]
        seed = _peripheral_point(rng, g, _depth(g, lobe), basal=False)
        mask |= _grow(rng, g, lobe, seed, n, field)
    level = rng.uniform(*CONSOLIDATION_HU)
    hu[mask] = level + 15.0 * field[mask]
    return mask


def render_ct(rng: np.random.Generator, findings: tuple[str, ...], shape: tuple[int, int, int],
              spacing: tuple[float, float, float], *, ratio: float = 0.0) -> tuple[CTPhantom, _Anatomy]:
    """Draw one chest CT with ``findings`` (of CT_SOURCE_FINDINGS) on a grid of ``shape`` and ``spacing`` (mm).

    ``ratio`` is the target infection / lung volume ratio of ground glass and consolidation together.
    """
    g = _Grid(shape, spacing)
    a = _random_anatomy(rng)
    hu = np.empty(g.shape, np.float32)
    _body(g, a, hu)
    lungs, heart = _lungs(g, a)
    lung = lungs[0] | lungs[1]
    hu[np.broadcast_to(heart, hu.shape)] = _BLOOD
    _tube(g, hu, [a.carina - 35.0, 0.45 * a.iy, 22.0], [a.apex + a.length + 30.0, 0.5 * a.iy, 22.0], 11.0, _BLOOD)
    _tube(g, hu, [a.carina - 35.0, -0.15 * a.iy, -8.0], [a.carina - 35.0, 0.45 * a.iy, 22.0], 11.0, _BLOOD)
    _bones(g, a, hu)
    texture = _smooth_field(rng, g.shape, 10)
    hu[lung] = (-870.0 + 20.0 * texture + 45.0 * np.broadcast_to(g.y / a.iy, hu.shape))[lung]
    trees = [_tree(rng, a, side) for side in (-1, 1)]
    for tree in trees:
        for p0, p1, radius in tree:
            _tube(g, hu, p0, p1, radius, _BLOOD, within=lung)
    field = _smooth_field(rng, g.shape, 8)
    lesion = np.zeros(g.shape, bool)
    if "ground_glass" in findings:
        lesion |= _ground_glass(rng, g, lungs, hu, ratio, field)
    if "consolidation" in findings:
        lesion |= _consolidation(rng, g, a, lungs, hu, ratio, field)
    _extra_findings(rng, g, a, lungs, hu, findings)
    # Bronchi run beside the vessels; they stay air inside a consolidation (air bronchograms).
    bronchi = [(p0 + 2.5 * np.sign(p1 - p0), p1, 0.6 * r) for tree in trees for p0, p1, r in tree]
    _airways(g, a, hu, -990.0, bronchi, lung)
    voxel = float(np.prod(spacing))
    noise = rng.uniform(12.0, 30.0) * np.sqrt(min(1.0, 40.0 / voxel))
    hu += rng.normal(rng.uniform(-10.0, 10.0), noise, hu.shape).astype(np.float32)
    ratio_out = float(lesion.sum() / max(1, lung.sum()))
    return CTPhantom(hu, lesion & lung, lung, tuple(float(s) for s in spacing), ratio_out), a


def _extra_findings(rng, g, a, lungs, hu, findings) -> None:
    """Source-corpus findings: solid nodules, dependent pleural effusion, apical emphysema (in place)."""
    lung = lungs[0] | lungs[1]
    if "nodule" in findings:
        depth = _depth(g, lung)
        for _ in range(int(rng.integers(1, 4))):
            c = _peripheral_point(rng, g, depth, basal=False, depth_mm=(8.0, 40.0))
            _tube(g, hu, c, c + rng.normal(0, 1.0, 3), rng.uniform(5.0, 11.0), 35.0, within=lung)
    if "effusion" in findings:
        for side in (0, 1) if rng.random() < 0.5 else (int(rng.integers(0, 2)),):
            level = 0.85 * a.iy - rng.uniform(20.0, 60.0)
            fluid = lungs[side] & (g.y > level) & (g.z > a.apex + 0.45 * a.length)
            hu[fluid] = 12.0
    if "emphysema" in findings:
        upper = lung & (g.z < a.apex + 0.5 * a.length)
        holes = _smooth_field(rng, g.shape, 14) > 1.0
        hu[upper & holes] = -975.0


def _acquisition(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[float, float, float]:
    """Per-patient spacing (slice, row, column) in mm: field of view and slice thickness vary slightly."""
    fov_xy, fov_z = rng.uniform(340.0, 400.0), rng.uniform(300.0, 345.0)
    return (fov_z / shape[0], fov_xy / shape[1], fov_xy / shape[2])


def render_case(spec: CTPhantomSpec, label: str, index: int) -> CTPhantom:
    """Case ``index`` of class ``label`` of ``spec`` (its own generator: the same case whatever ``n_per_class``)."""
    if label not in CT_CLASSES:
        raise ConfigError(f"label={label!r}: use one of {', '.join(CT_CLASSES)}.")
    rng = np.random.default_rng([spec.seed, CT_CLASSES.index(label), index, CT_GENERATOR_VERSION])
    finding = "ground_glass" if label == "covid" else "consolidation"
    phantom, _ = render_ct(rng, (finding,), spec.shape, _acquisition(rng, spec.shape), ratio=_draw_ratio(rng, label))
    return phantom


def ct_source_corpus(n: int, size: int, seed: int,
                     progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """n source-corpus CT volumes (uint8 (n, *volume_shape(size)), lung window as ``load_volume``) and their
    multi-label targets (float32 (n, len(CT_SOURCE_TARGETS))). Each finding is present independently with
    CORPUS_PREVALENCE; the anatomy targets are a body half-width above 145 mm and a diaphragm dome above 38 mm.
    Drawn directly on the preprocessed grid, in memory; deterministic per seed.
    """
    if n < 1 or not 16 <= size <= 256:
        raise ConfigError(f"ct_source_corpus(n={n}, size={size}): use n >= 1 and size 16..256.")
    shape, spacing = volume_shape(size), volume_spacing(size)
    rng = np.random.default_rng([seed, CT_GENERATOR_VERSION])
    images = np.empty((n, *shape), np.uint8)
    targets = np.empty((n, len(CT_SOURCE_TARGETS)), np.float32)
    lo, hi = HU_WINDOW
    for i in range(n):
        findings = tuple(f for f in CT_SOURCE_FINDINGS if rng.random() < CORPUS_PREVALENCE)
        ratio = 10 ** rng.uniform(-2.3, -1.0)
        phantom, a = render_ct(rng, findings, shape, spacing, ratio=ratio)
        images[i] = np.round(np.clip((phantom.hu - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)
        attrs = {"large_body": a.ax > 145.0, "high_diaphragm": a.dome > 38.0}
        targets[i] = [float(t in findings) if t in CT_SOURCE_FINDINGS else float(attrs[t]) for t in CT_SOURCE_TARGETS]
        if progress is not None:
            progress(i + 1, n)
    return images, targets


def write_ct_dataset(root: Path, spec: CTPhantomSpec, progress: Callable[[int, int], None] | None = None) -> Path:
    """Write the CT dataset as NIfTI in the folder layout the loader reads (images/, masks/, lung_masks/,
    manifest.csv with patient ids and infection ratios); returns ``root``. Atomic and idempotent: see
    ``write_folder_atomically``."""
    return write_folder_atomically(Path(root), lambda tmp: _write_cases(tmp, spec, progress))


def _write_cases(tmp: Path, spec: CTPhantomSpec, progress: Callable[[int, int], None] | None) -> None:
    """Render and write every volume, its masks and the manifest of ``spec`` into ``tmp``."""
    rows, total = [], spec.n_per_class * len(CT_CLASSES)
    for label in CT_CLASSES:
        for sub in ("images", "masks", "lung_masks"):
            (tmp / sub / label).mkdir(parents=True, exist_ok=True)
        for i in range(spec.n_per_class):
            ph = render_case(spec, label, i)
            pid = f"{label}{i:04d}"
            name = f"{pid}.nii.gz"
            write_nifti(tmp / "images" / label / name, ph.hu, ph.spacing, dtype=np.int16)
            write_nifti(tmp / "masks" / label / name, ph.lesion_mask, ph.spacing, dtype=np.uint8)
            write_nifti(tmp / "lung_masks" / label / name, ph.lung_mask, ph.spacing, dtype=np.uint8)
            rows.append({"file": f"images/{label}/{name}", "class": label, "patient_id": pid, "split": "",
                         "mask_file": f"masks/{label}/{name}", "lung_mask_file": f"lung_masks/{label}/{name}",
                         "infection_ratio": round(ph.ratio, 6)})
            if progress is not None:
                progress(len(rows), total)
    pd.DataFrame(rows).to_csv(tmp / "manifest.csv", index=False)
