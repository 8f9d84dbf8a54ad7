"""Drawing of the phantom radiographs: anatomy, findings, acquisition and exposure, burnt-in text.

Each image is an attenuation map drawn with OpenCV fills and polylines in a canonical frame (x, y in [0, 1]) and
mapped to pixels by the film's positioning (zoom, shift, tilt), then exposed: heel effect, scatter, quantum noise,
collimation and burnt-in text. Masks are drawn with the same geometry, so they are exact. The difficulty knobs live
in engine.data.phantom and come in as arguments (``ap_share``, FindingKnobs), so edits there apply here.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

_TEXTS = ("PORTABLE", "AP SUPINE", "ERECT", "PA", "SEMIERECT", "CHEST", "1", "A/4")


@dataclass(frozen=True)
class Anatomy:
    """One patient's body: everything that stays the same across that patient's images (canonical units)."""

    female: bool
    body_w: float      # half-width of the chest wall
    lung_w: float      # half-width of the lung fields
    apex_y: float
    base_y: float      # costophrenic angles
    dome_r: float      # right hemidiaphragm dome height (fraction of lung height); the left one sits lower
    dome_drop: float
    heart_w: float     # transverse cardiac diameter
    heart_left: float  # share of the heart left of the midline
    knob: float        # aortic knob prominence
    rib_count: float   # posterior ribs over the lung height
    breast: float
    jitter: tuple[float, ...]
    vessel_seed: int


@dataclass(frozen=True)
class Film:
    """One acquisition: view, positioning and exposure (changes from image to image)."""

    ap: bool
    zoom: float
    shift: tuple[float, float]
    tilt: float
    rotation: float    # patient rotation about the long axis, -1..1
    gain: float
    gamma: float
    heel: float
    scatter: float
    noise: float
    bone: float        # rib and bone contrast (children and thin patients: high)
    letter_left: bool  # burnt-in "L" on the image right (else "R" on the image left)
    devices: bool
    collimation: tuple[float, float, float, float]


@dataclass(frozen=True)
class FindingKnobs:
    """Difficulty knobs of the findings (see engine.data.phantom for their meaning)."""

    ggo_strength: tuple[float, float]
    ggo_patches: tuple[int, int]
    consolidation_strength: tuple[float, float]
    pneumonia_bilateral: float
    viral_strength: tuple[float, float]
    viral_focus: float
    bacterial_haze: float


def random_anatomy(rng: np.random.Generator) -> Anatomy:
    """A patient: sex, chest and lung size, diaphragm, heart, ribs and the branching of the vessels."""
    apex, body_w = rng.uniform(0.07, 0.12), rng.uniform(0.45, 0.5)
    return Anatomy(female=bool(rng.random() < 0.5), body_w=body_w, lung_w=body_w - rng.uniform(0.035, 0.06),
                   apex_y=apex, base_y=rng.uniform(0.76, 0.84), dome_r=rng.uniform(0.70, 0.80),
                   dome_drop=rng.uniform(0.0, 0.06), heart_w=rng.uniform(0.27, 0.32),
                   heart_left=rng.uniform(0.62, 0.72), knob=rng.uniform(0.01, 0.03), rib_count=rng.uniform(8.5, 9.8),
                   breast=rng.uniform(0.8, 1.2), jitter=tuple(rng.normal(0, 0.01, 36).round(5)),
                   vessel_seed=int(rng.integers(2**31)))


def random_film(rng: np.random.Generator, ap_share: float, ap: bool | None = None, rotated: bool | None = None,
                low_exposure: bool | None = None, devices: bool | None = None) -> Film:
    """A film of a random view (AP with probability ``ap_share``), positioning and exposure (the attributes given
    are fixed instead)."""
    ap = bool(rng.random() < ap_share) if ap is None else ap
    rotated = bool(rng.random() < 0.2) if rotated is None else rotated
    low = bool(rng.random() < 0.25) if low_exposure is None else low_exposure
    rot = rng.uniform(0.55, 1.0) if rotated else rng.uniform(0.0, 0.2)
    coll = tuple(float(rng.uniform(0.01, 0.04)) if rng.random() < 0.07 else 0.0 for _ in range(4))
    return Film(ap=ap, zoom=rng.uniform(0.96, 1.1), shift=(rng.uniform(-0.025, 0.025), rng.uniform(-0.02, 0.035)),
                tilt=rng.uniform(-7, 7) if ap else rng.uniform(-3, 3), rotation=rot * rng.choice([-1.0, 1.0]),
                 gain=rng.uniform(0.72, 0.86) if low else rng.uniform(0.92, 1.12),
                 gamma=rng.uniform(0.85, 1.25), heel=rng.uniform(-0.12, 0.04), bone=rng.uniform(0.5, 1.2),
                 scatter=rng.uniform(0.1, 0.3),
                 noise=rng.uniform(0.012, 0.03), letter_left=bool(rng.random() < 0.5),
                 devices=(ap and rng.random() < 0.6) if devices is None else devices, collimation=coll)


_SPLINES: dict[tuple[int, int], np.ndarray] = {}


def _closed_spline(points: np.ndarray, n: int = 6) -> np.ndarray:
    """Closed Catmull-Rom curve through ``points``, ``n`` samples per span (a repeated point makes a corner)."""
    m = len(points)
    if (m, n) not in _SPLINES:  # the curve is linear in the points: one (m * n, m) matrix per shape
        t = np.linspace(0, 1, n, endpoint=False)[:, None]
        w = 0.5 * np.hstack([-t + 2 * t**2 - t**3, 2 - 5 * t**2 + 3 * t**3, t + 4 * t**2 - 3 * t**3, -t**2 + t**3])
        basis = np.zeros((m, n, m), np.float32)
        for i in range(m):
            for k, off in enumerate((-1, 0, 1, 2)):
                basis[i, :, (i + off) % m] += w[:, k]
        _SPLINES[(m, n)] = basis.reshape(m * n, m)
    return _SPLINES[(m, n)] @ np.asarray(points, np.float32)


class _Canvas:
    """Maps canonical points to pixels (film zoom, shift and tilt) and draws into float32 or uint8 layers."""

    def __init__(self, size: int, film: Film):
        self.s = size
        c, sn = np.cos(np.radians(film.tilt)), np.sin(np.radians(film.tilt))
        self.rot = np.array([[c, -sn], [sn, c]], np.float32) * film.zoom
        self.off = np.array([0.5 + film.shift[0], 0.5 + film.shift[1]], np.float32)
        self.unit = size * film.zoom  # pixels per canonical unit
        m = self.rot * (size * 16)
        self.matrix = np.hstack([m, (self.off * (size * 16) - m @ np.array([0.5, 0.5], np.float32))[:, None]])

    def px(self, pts) -> np.ndarray:
        """Canonical points (..., 2) as fixed-point pixel coordinates (4 fractional bits), same shape."""
        return (np.asarray(pts, np.float32) @ self.matrix[:, :2].T + self.matrix[:, 2]).astype(np.int32)

    def layer(self, dtype=np.float32) -> np.ndarray:
        """An empty layer."""
        return np.zeros((self.s, self.s), dtype)

    def fill(self, img: np.ndarray, pts, value: float = 1.0) -> None:
        """Fill a polygon (K, 2), or several (N, K, 2)."""
        p = self.px(pts)
        aa = cv2.LINE_AA if img.dtype == np.uint8 else cv2.LINE_8
        cv2.fillPoly(img, list(p) if p.ndim == 3 else [p], value, aa, 4)

    def lines(self, img: np.ndarray, curves: list, width: float, value: float = 1.0) -> None:
        """Draw open polylines ``width`` canonical units thick (an array (N, K, 2) or a list of (K, 2) arrays)."""
        pts = self.px(curves) if isinstance(curves, np.ndarray) else [self.px(c) for c in curves]
        thick = max(1, int(round(width * self.unit)))
        aa = cv2.LINE_AA if img.dtype == np.uint8 and thick <= 2 else cv2.LINE_8  # thick AA lines are slow
        cv2.polylines(img, list(pts), False, value, thick, aa, 4)

    def ellipse(self, img: np.ndarray, c, axes, angle: float = 0.0, value: float = 1.0) -> None:
        """Fill an ellipse (axes in canonical units)."""
        ax = (max(1, int(axes[0] * self.unit * 16)), max(1, int(axes[1] * self.unit * 16)))
        tilt = np.degrees(np.arctan2(self.rot[1, 0], self.rot[0, 0]))
        cv2.ellipse(img, tuple(int(v) for v in self.px(c)), ax, angle + tilt, 0, 360, value, -1,
                    cv2.LINE_AA if img.dtype == np.uint8 else cv2.LINE_8, 4)


def _blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur; wide ones on a downsampled copy (cheap, and smooth enough for soft tissue)."""
    if sigma_px < 0.3:
        return img
    s = img.shape[0]
    if sigma_px < 2.5:
        return cv2.GaussianBlur(img, (0, 0), sigma_px)
    f = int(max(2, min(sigma_px // 2, s // 16)))
    small = cv2.resize(img, (s // f, s // f), interpolation=cv2.INTER_AREA)
    return cv2.resize(cv2.GaussianBlur(small, (0, 0), sigma_px / f), (s, s), interpolation=cv2.INTER_LINEAR)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise in about [-1, 1]: a ``cells`` x ``cells`` grid of normals upsampled (bilinear)."""
    return cv2.resize(rng.standard_normal((cells, cells)).astype(np.float32) * 0.6, (size, size),
                      interpolation=cv2.INTER_LINEAR)


_NOISE_BANK: dict[int, np.ndarray] = {}


def _grain(rng: np.random.Generator, size: int) -> np.ndarray:
    """Quantum-noise texture: a random crop, flip and sign of a fixed bank (fast, and deterministic per seed)."""
    if size not in _NOISE_BANK:
        raw = np.random.default_rng(12345).standard_normal((2 * size, 2 * size)).astype(np.float32)
        _NOISE_BANK[size] = cv2.GaussianBlur(raw, (0, 0), 0.6) * 1.8  # detector blur makes the grain a bit coarser
    bank = _NOISE_BANK[size]
    y, x = rng.integers(0, size, 2)
    crop = bank[y : y + size, x : x + size]
    return (crop[::-1] if rng.random() < 0.5 else crop) * rng.choice([-1.0, 1.0])


# --- anatomy geometry (canonical frame; side -1 = image left = patient right) ---------------------------------------

_LUNG_OUTLINE = np.array([  # (u: distance from the midline / lung half-width, v: 0 apex .. 1 costophrenic angle)
    (0.16, 0.16), (0.24, 0.04), (0.40, 0.0), (0.56, 0.03), (0.72, 0.13), (0.85, 0.30), (0.94, 0.52), (0.98, 0.76),
    (0.985, 0.98), (0.985, 0.98), (0.86, 0.92), (0.70, 0.86), (0.50, 0.82), (0.32, 0.83), (0.16, 0.88), (0.10, 0.70),
    (0.12, 0.45), (0.14, 0.28)], np.float32)


def _lung_outline(a: Anatomy, film: Film, side: int, mid: float) -> np.ndarray:
    """The hemithorax outline (apex, lateral wall, costophrenic angle, diaphragm dome, medial border)."""
    uv = _LUNG_OUTLINE.copy()
    j = np.asarray(a.jitter[:36], np.float32)
    uv[:, 0] += j[: len(uv)] * 1.5
    uv[:, 1] += j[len(uv) : 2 * len(uv)]
    dome = a.dome_r + (a.dome_drop if side > 0 else 0.0) - (0.06 if film.ap else 0.0)
    uv[10:15, 1] = np.array([0.93, 0.87, 0.83, 0.84, 0.88]) * (dome / 0.76) + (1 - dome / 0.76) * 0.98
    uv[10:15, 1] = np.minimum(uv[10:15, 1], 0.97)
    w = a.lung_w * (1 + 0.07 * film.rotation * side)
    h = a.base_y - a.apex_y - (0.04 if film.ap else 0.0)
    x = mid + side * uv[:, 0] * w
    y = a.apex_y + uv[:, 1] * h + (0.0 if side < 0 else 0.006)
    return _closed_spline(np.stack([x, y], 1))


def _mediastinum(a: Anatomy, film: Film, mid: float, cardio: float) -> tuple[np.ndarray, np.ndarray]:
    """Mediastinum and heart outline (superior mediastinum, aortic knob, pulmonary trunk, ventricles) and the heart."""
    h = a.base_y - a.apex_y
    wide = (1.12 if film.ap else 1.0) * cardio
    hr = a.heart_w * (1 - a.heart_left) * wide
    hl = a.heart_w * a.heart_left * wide
    y0, yb = a.apex_y, a.apex_y + h * 0.97
    knob = 0.055 + a.knob
    pts = [(mid - 0.05, -0.1), (mid - 0.05, y0 + 0.30 * h), (mid - hr * 0.85, y0 + 0.50 * h),
           (mid - hr, y0 + 0.70 * h), (mid - hr * 0.95, yb - 0.03), (mid - hr * 0.7, yb + 0.02), (mid + hl, yb + 0.03),
           (mid + hl * 1.02, y0 + 0.76 * h), (mid + hl * 0.82, y0 + 0.56 * h), (mid + 0.075, y0 + 0.41 * h),
           (mid + 0.06, y0 + 0.33 * h), (mid + knob, y0 + 0.25 * h), (mid + 0.048, y0 + 0.17 * h), (mid + 0.045, -0.1)]
    heart = [(mid - hr * 0.85, y0 + 0.50 * h), (mid - hr, y0 + 0.70 * h), (mid - hr * 0.95, yb - 0.03),
             (mid - hr * 0.7, yb + 0.02), (mid + hl, yb + 0.03), (mid + hl * 1.02, y0 + 0.76 * h),
             (mid + hl * 0.82, y0 + 0.56 * h), (mid + 0.075, y0 + 0.41 * h), (mid, y0 + 0.40 * h)]
    return _closed_spline(np.array(pts, np.float32)), _closed_spline(np.array(heart, np.float32))


def _ribs(a: Anatomy, film: Film, mid: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Posterior ribs (from the spine, convex up, curving down at the chest wall) and anterior ribs (sloping down
    medially from the chest wall), as polylines; and the rib spacing."""
    h = a.base_y - a.apex_y
    gap = h / a.rib_count
    i = np.repeat(np.arange(11, dtype=np.float32), 2)[:, None]
    side = np.tile(np.array([-1.0, 1.0], np.float32), 11)[:, None]
    y = a.apex_y + (i - 0.55) * gap
    w = a.body_w * (0.78 + 0.22 * np.minimum(1.0, (i + 1) / 5)) * (1 + 0.06 * film.rotation * side)
    u = np.linspace(0, 1, 14, dtype=np.float32)[None]
    x = mid + side * (0.035 - 0.015 * film.rotation * side) + side * u * (w - 0.04)
    curve = (-1.5 * u + 3.0 * u**3) * gap * np.where(i < 2, 1.3, 1.0)
    post = np.stack([x + 0 * u, y + curve], -1)
    ua = np.linspace(1, 0, 8, dtype=np.float32)[None]
    xa = mid + side * (0.12 + ua * (w - 0.14))
    ant = np.stack([xa, y + 1.4 * gap + 2.1 * gap * (1 - ua) ** 1.15], -1)
    return post.astype(np.float32), ant.astype(np.float32), gap


def _vessels(canvas: _Canvas, a: Anatomy, mid: float, layer: np.ndarray) -> None:
    """Pulmonary vessels: trees from each hilum whose branches fork, taper and thin towards the periphery."""
    rng = np.random.default_rng(a.vessel_seed)
    h = a.base_y - a.apex_y
    side = np.repeat(np.array([-1.0, 1.0], np.float32), 6)  # six trunks from each hilum
    x = mid + side * (0.1 + 0.02 * rng.random(2).repeat(6))
    y = a.apex_y + h * np.where(side < 0, 0.40, 0.37)
    base = np.radians(np.tile([-110.0, -60, -15, 25, 60, 85], 2) + rng.normal(0, 8, 12))
    ang = np.where(side < 0, np.pi - base, base)
    for k in (0, 6):  # the hila: pulmonary arteries and veins bunched where the trees start
        canvas.ellipse(layer, (float(x[k]) + float(side[k]) * 0.012, float(y[k])), (0.02, 0.035), 0, 0.55)
    length, width = 0.075 * h / 0.68, 0.016
    for level in range(6 if canvas.s >= 192 else 5):
        ln = length * rng.uniform(0.7, 1.2, len(ang))
        x2, y2 = x + np.cos(ang) * ln, y + np.sin(ang) * ln
        segs = np.stack([x, y, x2, y2], 1).reshape(-1, 2, 2)
        w_px = width * canvas.unit
        value = min(1.0, 0.3 + 0.25 * w_px) * min(1.0, w_px) * (1.0 if level else 0.8)  # thin: partial pixels
        canvas.lines(layer, segs, width, float(value))
        spread = np.radians(rng.uniform(15, 32, len(ang)))
        ang = np.concatenate([ang - spread, ang + spread]) + rng.normal(0, 0.1, 2 * len(ang))
        x, y = np.concatenate([x2, x2]), np.concatenate([y2, y2])
        length, width = length * 0.72, width * 0.68


# --- findings ------------------------------------------------------------------------------------------------------

def _window_blob(rng: np.random.Generator, s: int, c: tuple[float, float], r: float, lobes: int = 4) -> np.ndarray:
    """A soft irregular blob (max of a few Gaussians, radius ``r`` px) in [0, 1], computed only in its window."""
    out = np.zeros((s, s), np.float32)
    half = int(3.3 * r) + 1
    x0, x1 = max(0, int(c[0]) - half), min(s, int(c[0]) + half)
    y0, y1 = max(0, int(c[1]) - half), min(s, int(c[1]) + half)
    if x0 >= x1 or y0 >= y1:
        return out
    xx, yy = np.arange(x0, x1, dtype=np.float32), np.arange(y0, y1, dtype=np.float32)
    window = out[y0:y1, x0:x1]
    for _ in range(lobes):
        ox, oy = np.clip(rng.normal(0, r * 0.4, 2), -r, r)
        k = np.float32(-0.5 / (r * rng.uniform(0.45, 0.8)) ** 2)
        g = np.exp(k * (yy - np.float32(c[1] + oy)) ** 2)[:, None] * np.exp(k * (xx - np.float32(c[0] + ox)) ** 2)
        np.maximum(window, g, out=window)  # a Gaussian is separable: two 1-D exps and an outer product
    return out


def _pick_point(rng: np.random.Generator, weight: np.ndarray) -> tuple[float, float] | None:
    """A pixel (x, y) drawn with probability proportional to ``weight``."""
    flat = weight.ravel()
    total = float(flat.sum())
    if total <= 0:
        return None
    i = int(np.searchsorted(np.cumsum(flat), rng.random() * total))
    i = min(i, flat.size - 1)
    return float(i % weight.shape[1]), float(i // weight.shape[1])


def _ground_glass(rng: np.random.Generator, s: int, lung_side: dict, lateral: np.ndarray, strength: float,
                  patches: tuple[int, int]) -> np.ndarray:
    """Hazy patchy opacities in both lungs, peripheral (lateral, subpleural) and basal (lower zones)."""
    out = np.zeros((s, s), np.float32)
    ys = np.arange(s, dtype=np.float32)[:, None]
    for side in (-1, 1):
        m = lung_side[side]
        rows = np.flatnonzero(m.any(1))
        if rows.size == 0:
            continue
        basal = np.clip((ys - rows[0]) / max(1, rows[-1] - rows[0]) - 0.3, 0, 1) ** 2
        w = lateral * basal * m
        for _ in range(int(rng.integers(patches[0], patches[1] + 1))):
            p = _pick_point(rng, w)
            if p is not None:
                np.maximum(out, _window_blob(rng, s, p, rng.uniform(0.06, 0.10) * s, 5), out=out)
    texture = 0.65 + 0.35 * _smooth_noise(rng, s, 24)
    return np.clip(out * texture, 0, 1) * strength


def _consolidation(rng: np.random.Generator, canvas: _Canvas, s: int, side: int, lung_side: dict, a: Anatomy,
                   film: Film, mid: float, strength: float, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A dense lobar opacity (upper, middle or lower zone of one lung; sharp along its fissure) and the air
    bronchograms inside it."""
    h = a.base_y - a.apex_y
    lobe = rng.choice(["upper", "middle", "lower"] if side < 0 else ["upper", "lower"])  # a middle lobe: right only
    zone = canvas.layer(np.uint8)
    # Lobes as bands between fissure lines (sloping down laterally a little); the blob sets the lateral extent.
    xs, tilt = (mid + side * 0.02, mid + side * 0.7), rng.uniform(-0.03, 0.06)
    if lobe == "upper":
        ys = (a.apex_y - 0.1, a.apex_y + h * rng.uniform(0.38, 0.5))
    elif lobe == "middle":
        ys = (a.apex_y + h * 0.45, a.apex_y + h * 0.8)
    else:
        ys = (a.apex_y + h * rng.uniform(0.5, 0.62), a.base_y + 0.1)
    canvas.fill(zone, [(xs[0], ys[0]), (xs[1], ys[0] + tilt), (xs[1], ys[1] + tilt), (xs[0], ys[1])], 255)
    region = lung_side[side] & (zone > 127)
    p = _pick_point(rng, region.astype(np.float32))
    if p is None:
        return np.zeros((s, s), np.float32), np.zeros((s, s), np.float32)
    blob = _window_blob(rng, s, p, rng.uniform(0.10, 0.15) * s * scale, 5)
    blob = np.clip(blob * 2.2 - 0.45, 0, 1) * (0.85 + 0.15 * _smooth_noise(rng, s, 16))
    opac = blob * _blur(zone.astype(np.float32) / 255, 0.012 * s) * strength
    bronchi = canvas.layer()
    hx, hy = mid + side * 0.08, a.apex_y + h * 0.4
    tx = (p[0] / s - 0.5 - film.shift[0]) / film.zoom + 0.5  # rough canonical target (tilt ignored: it is texture)
    ty = (p[1] / s - 0.5 - film.shift[1]) / film.zoom + 0.5
    ang0 = np.arctan2(ty - hy, tx - hx)
    segs = []
    for _ in range(int(rng.integers(2, 4))):
        ang, x, y, ln = ang0 + rng.normal(0, 0.3), hx, hy, 0.05
        for _ in range(6):
            x2, y2 = x + np.cos(ang) * ln, y + np.sin(ang) * ln
            segs.append(np.array([(x, y), (x2, y2)], np.float32))
            x, y, ang, ln = x2, y2, ang + rng.normal(0, 0.25), ln * 0.85
    canvas.lines(bronchi, segs, 0.007, 1.0)
    return opac, bronchi


def _interstitial(rng: np.random.Generator, canvas: _Canvas, s: int, lung_side: dict, a: Anatomy, mid: float,
                  strength: float, sides: tuple[int, ...] = (-1, 1)) -> np.ndarray:
    """Viral pneumonia: a hazy opacity in both lungs (or ``sides``), densest around the hila and fading towards the
    periphery, with peribronchial cuffing (streaks fanning out from the hila) and a fine reticular texture."""
    out = np.zeros((s, s), np.float32)
    h = a.base_y - a.apex_y
    xs = np.arange(s, dtype=np.float32)[None, :]
    ys = np.arange(s, dtype=np.float32)[:, None]
    streaks = canvas.layer()
    for side in sides:
        hx, hy = mid + side * 0.11, a.apex_y + h * rng.uniform(0.38, 0.5)
        cx, cy = (float(v) / 16 for v in canvas.px((hx, hy)))
        rx, ry = rng.uniform(0.2, 0.3) * a.lung_w * canvas.unit, rng.uniform(0.22, 0.32) * h * canvas.unit
        haze = np.exp(-0.5 * (((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2)) * lung_side[side]
        np.maximum(out, haze * rng.uniform(0.65, 1.0), out=out)  # both lungs, not equally
        ang = np.radians(np.where(side < 0, 180.0, 0.0) + rng.uniform(-75, 75, 9))
        ln = rng.uniform(0.08, 0.16, 9) * h / 0.68
        segs = np.stack([np.full(9, hx), np.full(9, hy), hx + np.cos(ang) * ln, hy + np.sin(ang) * ln], 1)
        canvas.lines(streaks, segs.reshape(-1, 2, 2).astype(np.float32), 0.012, 1.0)
    texture = 0.6 + 0.4 * _smooth_noise(rng, s, max(8, s // 6))
    streaks = _blur(streaks, 1.2 * s / 256) * (lung_side[-1] | lung_side[1])  # out is 0 on the other side
    return np.clip(out * texture + 0.5 * streaks * out, 0, 1) * strength


def _effusion(canvas: _Canvas, s: int, side: int, a: Anatomy, mid: float, level: float) -> np.ndarray:
    """Layering pleural fluid: from the base up to a meniscus that climbs along the lateral chest wall, densest
    at the bottom; it hides the costophrenic angle and the hemidiaphragm."""
    layer = canvas.layer(np.uint8)
    h = a.base_y - a.apex_y
    y = a.apex_y + h * level
    u = np.linspace(0, 1.1, 16, dtype=np.float32)
    top = np.stack([mid + side * u * a.lung_w, y - 0.3 * h * u**4], 1)
    pts = np.concatenate([top, [(mid + side * 1.2 * a.lung_w, a.base_y + 0.2), (mid, a.base_y + 0.2)]])
    canvas.fill(layer, pts, 255)
    y_px = float(canvas.px((mid, y))[1]) / (16 * s)
    depth = np.clip(0.65 + (_ramp(s) - y_px) * (0.35 / 0.12), 0.65, 1.0)[:, None]
    return _blur(layer.astype(np.float32) * (1 / 255), 2.5 * s / 256) * depth


def _nodules(rng: np.random.Generator, s: int, lung: np.ndarray, count: int, r_range: tuple[float, float],
             lobes: int) -> np.ndarray:
    """Round opacities (nodules small and sharp, masses large and lobulated) at random places in the lungs."""
    out = np.zeros((s, s), np.float32)
    inner = cv2.erode(lung.astype(np.uint8), _KERNEL, iterations=max(1, s // 40))
    for _ in range(count):
        p = _pick_point(rng, inner.astype(np.float32))
        if p is None:
            break
        r = rng.uniform(*r_range) * s
        blob = _window_blob(rng, s, p, r, lobes)
        np.maximum(out, np.clip((blob - 0.35) * 4, 0, 1) * rng.uniform(0.6, 1.0), out=out)
    return _blur(out, 0.7 * s / 256)


# --- rendering -----------------------------------------------------------------------------------------------------

@dataclass
class _Layers:
    """The anatomy of one film as float32 layers in [0, 1] (and the lung masks), before findings and exposure."""

    tissue: np.ndarray    # soft-tissue thickness (chest wall, neck, abdomen)
    below: np.ndarray     # below the diaphragm (liver, abdomen)
    heart: np.ndarray
    medi: np.ndarray
    soft: np.ndarray      # breast shadows
    airway: np.ndarray    # trachea, main bronchi, gastric bubble
    air: np.ndarray       # air in the beam path through the lungs (darkest centrally, paler at apices and bases)
    lungfrac: np.ndarray  # the lung fields, edges antialiased
    lung_side: dict
    lung_mask: np.ndarray


def _soft_tissue(cv_: _Canvas, a: Anatomy, film: Film, mid: float, cardio: float) -> _Layers:
    """Body outline, diaphragm, lungs, mediastinum and heart, airways and breasts."""
    s, bw, y0 = cv_.s, a.body_w, a.apex_y
    h = a.base_y - a.apex_y
    body, below = cv_.layer(np.uint8), cv_.layer(np.uint8)
    cv_.fill(body, [(0.5 - 0.09, -0.2), (0.5 - 0.11, y0 - 0.03), (0.5 - bw * 0.7, y0), (0.5 - bw - 0.05, y0 + 0.06),
                    (0.5 - bw - 0.02, y0 + 0.3), (0.5 - bw, 1.3), (0.5 + bw, 1.3), (0.5 + bw + 0.02, y0 + 0.3),
                    (0.5 + bw + 0.05, y0 + 0.06), (0.5 + bw * 0.7, y0), (0.5 + 0.11, y0 - 0.03), (0.5 + 0.09, -0.2)],
             255)
    for side in (-1, 1):  # the arms beside the chest
        cv_.ellipse(body, (0.5 + side * (bw + 0.1), y0 + 0.25), (0.07, 0.35), 0, 255)
    cv_.fill(below, [(-0.5, a.base_y - 0.12), (1.5, a.base_y - 0.12), (1.5, 1.5), (-0.5, 1.5)], 255)
    medi_pts, heart_pts = _mediastinum(a, film, mid, cardio)
    medi, air = cv_.layer(np.uint8), cv_.layer(np.uint8)
    cv_.fill(medi, medi_pts, 255)
    lung_side = {}
    for side in (-1, 1):
        m = cv_.layer(np.uint8)
        cv_.fill(m, _lung_outline(a, film, side, mid), 255)
        m[medi > 127] = 0
        lung_side[side] = m > 127
        np.maximum(air, m, out=air)
    wide = _blur(cv2.merge([body, below, air]).astype(np.float32) * (1 / 255), 0.045 * s)
    tissue, below_f, depth = wide[..., 0], wide[..., 1], wide[..., 2]
    airf = air.astype(np.float32) * (1 / 255)
    lungfrac = _blur(airf, 0.8 * s / 256)
    rows = _ramp(s)[:, None]
    apical = np.clip(1 - (rows - a.apex_y - film.shift[1]) * (1 / 0.12), 0, 1)  # neck muscles over the apices
    airf = lungfrac * (0.3 + 0.7 * np.clip(depth * 1.5, 0, 1)) * (1 - 0.3 * below_f - 0.3 * apical)

    heart, soft, airway = cv_.layer(), cv_.layer(), cv_.layer()
    cv_.fill(heart, heart_pts, 1.0)
    if a.female:
        for side in (-1, 1):
            cv_.ellipse(soft, (0.5 + side * bw * 0.55, a.base_y - 0.06), (0.2 * a.breast, 0.15 * a.breast), 0, 1.0)
    carina = (mid - 0.004, y0 + 0.3 * h)
    cv_.lines(airway, [np.array([(mid - 0.004, -0.1), carina], np.float32)], 0.034, 1.0)
    cv_.lines(airway, np.array([[carina, (mid - 0.055, y0 + 0.37 * h)], [carina, (mid + 0.06, y0 + 0.4 * h)]],
                               np.float32), 0.018, 0.8)
    cv_.ellipse(airway, (mid + 0.13, a.apex_y + h * (a.dome_r + a.dome_drop) + 0.07), (0.035, 0.02), 0, 0.8)
    narrow = _blur(cv2.merge([heart, medi.astype(np.float32) * (1 / 255), soft, airway]), 0.012 * s)
    lung_mask = lung_side[-1] | lung_side[1]
    return _Layers(tissue * (0.9 + 0.2 * below_f), below_f, narrow[..., 0], narrow[..., 1], narrow[..., 2],
                   narrow[..., 3], airf, lungfrac, lung_side, lung_mask)


_KERNEL = np.ones((3, 3), np.uint8)
_RING = np.stack([np.cos(np.linspace(0, 2 * np.pi, 8, endpoint=False)) * 0.009,
                  np.sin(np.linspace(0, 2 * np.pi, 8, endpoint=False)) * 0.014], -1).astype(np.float32)
_T12 = np.linspace(0, 1, 12, dtype=np.float32)


def _bones(cv_: _Canvas, a: Anatomy, film: Film, mid: float) -> np.ndarray:
    """Bone attenuation: ribs and clavicles with cortical rims, vertebrae and pedicles, scapulae, humeral heads."""
    s, bw, y0 = cv_.s, a.body_w, a.apex_y
    post, ant, gap = _ribs(a, film, mid)
    ribs_p, ribs_a = cv_.layer(np.uint8), cv_.layer(np.uint8)
    cv_.lines(ribs_p, post, 0.36 * gap, 255)
    cv_.lines(ribs_a, ant, 0.4 * gap, 255)
    spine, clav = cv_.layer(np.uint8), cv_.layer(np.uint8)
    scap = cv_.layer()
    cy = y0 - (0.045 if film.ap else 0.0)  # on AP films the clavicles project higher
    curves = []
    for side in (-1, 1):
        xs = mid + side * (0.03 - 0.02 * film.rotation * side) + side * _T12 * (bw - 0.01)
        wave = 0.02 * np.sin(_T12 * 2 * np.pi) * (0.5 if film.ap else 1.0)
        curves.append(np.stack([xs, cy + 0.11 - (0.15 if film.ap else 0.12) * _T12 + wave], 1))
        cv_.ellipse(spine, (0.5 + side * (bw + 0.02), y0 + 0.07), (0.06, 0.065), 0, 255)  # humeral head
        inner = 0.62 if film.ap else 0.9  # AP: the scapulae overlap the lungs
        cv_.fill(scap, [(0.5 + side * bw * 0.8, y0 - 0.03), (0.5 + side * bw * inner, y0 + 0.08),
                        (0.5 + side * bw * (inner + 0.04), y0 + 0.3), (0.5 + side * bw * 1.05, y0 + 0.42),
                        (0.5 + side * (bw + 0.06), y0 + 0.1), (0.5 + side * (bw + 0.03), y0 - 0.04)], 0.05)
    cv_.lines(clav, np.stack(curves), 0.028, 255)
    yv = (-0.05 + np.arange(14, dtype=np.float32) * gap * 1.05)[:, None]  # vertebral bodies and their pedicles
    corners = np.array([(-0.032, 0.0), (0.032, 0.0), (0.034, 0.8 * gap), (-0.034, 0.8 * gap)], np.float32)
    cv_.fill(spine, np.stack([mid + corners[:, 0] + 0 * yv, yv + corners[:, 1]], -1), 160)
    centres = np.concatenate([np.stack([mid + sd * 0.024 + 0 * yv[:, 0], yv[:, 0] + 0.3 * gap], -1) for sd in (-1, 1)])
    cv_.fill(spine, centres[:, None, :] + _RING[None], 255)
    # Cortical rims: a bone's outer pixels (the layer minus its erosion) are brighter than its marrow.
    stack = cv2.merge([ribs_p, ribs_a, spine, clav])
    eroded = cv2.erode(stack, _KERNEL, iterations=max(1, s // 200)).astype(np.float32)
    rw, rib = min(1.0, s / 256), 0.2 * film.bone  # a one-pixel rim is relatively wider on small films
    rims = np.array([[0.6 * rib, 0.2 * rib, 0.18, 0.1]], np.float32) * (rw / 255)
    body = np.array([[0.75 * rib, 0.3 * rib, 0.13, 0.2]], np.float32) * (1 / 255) + rims
    return cv2.transform(stack.astype(np.float32), body) - cv2.transform(eroded, rims) + scap


def _findings(rng: np.random.Generator, cv_: _Canvas, a: Anatomy, film: Film, mid: float, lay: _Layers,
              findings: tuple[str, ...], knobs: FindingKnobs) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Each finding as the share of the lung's air it replaces (1: as dense as soft tissue), how much of the
    vessel pattern it hides, and its mask (where it was rendered, in the lungs)."""
    s = cv_.s
    masks: dict[str, np.ndarray] = {}
    lesion, wipe = cv_.layer(), cv_.layer()
    lung_mask, lungfrac = lay.lung_mask, lay.lungfrac
    if "ground_glass" in findings:
        mid_px = float(cv_.px((mid, 0.5))[0]) / 16
        lateral = np.clip((np.abs(np.arange(s, dtype=np.float32) - mid_px) / (a.lung_w * cv_.unit) - 0.4) / 0.5, 0, 1)
        strength = rng.uniform(*knobs.ggo_strength)
        ggo = _ground_glass(rng, s, lay.lung_side, lateral[None, :] ** 2, strength, knobs.ggo_patches) * lungfrac
        masks["ground_glass"] = (ggo > 0.2 * strength) & lung_mask
        lesion += ggo
    if "consolidation" in findings:
        side = int(rng.choice([-1, 1]))
        strength = rng.uniform(*knobs.consolidation_strength)
        opac, bronchi = _consolidation(rng, cv_, s, side, lay.lung_side, a, film, mid, strength)
        if rng.random() < knobs.pneumonia_bilateral:
            o2, b2 = _consolidation(rng, cv_, s, -side, lay.lung_side, a, film, mid, strength * 0.8, 0.7)
            opac, bronchi = np.maximum(opac, o2), np.maximum(bronchi, b2)
        opac = opac * lungfrac
        masks["consolidation"] = (opac > 0.2 * strength) & lung_mask
        frac = np.clip(opac / strength, 0, 1)
        lesion += opac - _blur(bronchi, 0.6 * s / 256) * frac * strength * 0.45  # air bronchograms
        wipe = np.maximum(wipe, frac * 0.85)
    if "interstitial" in findings:
        strength = rng.uniform(*knobs.viral_strength)
        opac = _interstitial(rng, cv_, s, lay.lung_side, a, mid, strength)
        if rng.random() < knobs.viral_focus:  # a small patchy focus of consolidation besides the haze
            focus, _ = _consolidation(rng, cv_, s, int(rng.choice([-1, 1])), lay.lung_side, a, film, mid,
                                      min(1.0, strength * 1.8), rng.uniform(0.55, 0.8))
            opac = np.maximum(opac, focus)
        opac = opac * lungfrac
        masks["interstitial"] = (opac > 0.3 * strength) & lung_mask
        lesion += opac
        wipe = np.maximum(wipe, np.clip(opac / strength, 0, 1) * 0.5)  # the hila and vessels blur in the haze
    if "peribronchial" in findings and rng.random() < knobs.bacterial_haze:  # bronchopneumonia: haze on one side
        strength = rng.uniform(*knobs.viral_strength)
        haze_side = side if "consolidation" in findings else int(rng.choice([-1, 1]))  # the consolidation's side
        haze = _interstitial(rng, cv_, s, lay.lung_side, a, mid, strength, (haze_side,)) * lungfrac
        masks["peribronchial"] = (haze > 0.3 * strength) & lung_mask
        lesion += haze
    if "effusion" in findings:
        side = int(rng.choice([-1, 1]))
        fluid = _effusion(cv_, s, side, a, mid, rng.uniform(0.62, 0.85)) * rng.uniform(0.85, 1.05)
        masks["effusion"] = (fluid > 0.25) & lung_mask
        lesion += fluid * lungfrac
        wipe = np.maximum(wipe, np.clip(fluid * 1.5, 0, 1))
    if "nodule" in findings:
        nod = _nodules(rng, s, lung_mask, int(rng.integers(1, 4)), (0.012, 0.025), 2) * rng.uniform(0.6, 1.0)
        nod *= lungfrac
        masks["nodule"] = (nod > 0.15) & lung_mask
        lesion += nod
    if "mass" in findings:
        mass = _nodules(rng, s, lung_mask, 1, (0.04, 0.07), 5) * rng.uniform(0.9, 1.2) * lungfrac
        masks["mass"] = (mass > 0.2) & lung_mask
        lesion += mass
        wipe = np.maximum(wipe, np.clip(mass * 1.5, 0, 1))
    if "cardiomegaly" in findings:
        masks["cardiomegaly"] = np.zeros((s, s), bool)
    return lesion, wipe, masks


def _devices(rng: np.random.Generator, cv_: _Canvas) -> np.ndarray:
    """ECG electrodes and their leads (portable films)."""
    dev = cv_.layer()
    t = np.linspace(0, 1, 8, dtype=np.float32)[:, None]
    for _ in range(int(rng.integers(2, 5))):
        c = np.array([rng.uniform(0.15, 0.85), rng.uniform(0.1, 0.8)], np.float32)
        cv_.ellipse(dev, c, (0.016, 0.016), 0, 0.6)
        end = np.array([rng.uniform(0, 1), rng.choice([-0.05, 1.05])], np.float32)
        bend = rng.uniform(0.1, 0.9, 2).astype(np.float32)
        cv_.lines(dev, [(1 - t) ** 2 * c + 2 * (1 - t) * t * bend + t**2 * end], 0.004, 0.5)
    return dev


def _expose(rng: np.random.Generator, film: Film, density: np.ndarray) -> np.ndarray:
    """Attenuation to film brightness: gain, heel effect, scatter, the film curve, quantum noise, detector blur."""
    s = density.shape[0]
    x = density * (film.gain * (1 + film.heel * (_ramp(s)[:, None] - 0.5) * 2))
    x = x * (1 - film.scatter) + _blur(x, 0.06 * s) * film.scatter
    # The film's characteristic (H&D) curve: a sigmoid, so the mediastinum and abdomen stay grey, not burnt out.
    k, x0 = film.gamma * (3.6 if film.ap else 4.3), 0.5
    lo, hi = 1 / (1 + np.exp(k * x0)), 1 / (1 + np.exp(-k * (1.05 - x0)))
    img = (1 / (1 + np.exp(-k * (x - x0))) - lo) * (1 / (hi - lo))
    img += _grain(rng, s) * (film.noise * (1.2 - 0.6 * np.clip(img, 0, 1)))
    return _blur(img.astype(np.float32), rng.uniform(0.4, 0.9) * s / 256)


def _annotate(rng: np.random.Generator, img: np.ndarray, film: Film, marker: bool,
              lung_mask: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int] | None]:
    """Collimation bands, the burnt-in side letter and text, and the shortcut marker (in place); the visible lungs."""
    s = img.shape[0]
    for k, frac in enumerate(film.collimation):  # unexposed (bright) bands at the film's edges
        n = int(frac * s)
        if n:
            band = [(slice(0, n), slice(None)), (slice(s - n, s), slice(None)), (slice(None), slice(0, n)),
                    (slice(None), slice(s - n, s))][k]
            img[band] = 0.92
            lung_mask[band] = False
    scale = s / 256
    lx = int((0.86 + rng.uniform(0, 0.08)) * s) if film.letter_left else int(rng.uniform(0.02, 0.07) * s)
    _stamp(img, _text_stamp("L" if film.letter_left else "R", 0.55 * scale, max(1, int(1.5 * scale))), lx,
           int(rng.uniform(0.12, 0.5) * s))
    if rng.random() < 0.5:
        _stamp(img, _text_stamp(_TEXTS[int(rng.integers(len(_TEXTS)))], max(0.22, 0.33 * scale), 1), int(0.02 * s),
               int(0.05 * s) + 2)
    if not marker:
        return lung_mask, None
    # The shortcut confounder: a bright device-like tag outside the lungs, with an "L" engraved.
    w, hh = int(0.07 * s), int(0.045 * s)
    for corner in rng.permutation(4):
        x0 = int(0.05 * s) if corner % 2 == 0 else int(0.95 * s) - w
        y0 = int(rng.uniform(0.02, 0.06) * s) if corner < 2 else int(0.93 * s) - hh
        if not lung_mask[y0 : y0 + hh, x0 : x0 + w].any():
            break
    lung_mask[y0 : y0 + hh, x0 : x0 + w] = False  # the tag hides what lies under it
    img[y0 : y0 + hh, x0 : x0 + w] = 1.0
    t = max(1, hh // 8)
    cv2.line(img, (x0 + w // 3, y0 + hh // 5), (x0 + w // 3, y0 + 4 * hh // 5), 0.35, t)
    cv2.line(img, (x0 + w // 3, y0 + 4 * hh // 5), (x0 + 2 * w // 3, y0 + 4 * hh // 5), 0.35, t)
    return lung_mask, (x0, y0, w, hh)


_RAMPS: dict[int, np.ndarray] = {}


def _ramp(s: int) -> np.ndarray:
    """0..1 over ``s`` pixels (cached)."""
    if s not in _RAMPS:
        _RAMPS[s] = np.linspace(0, 1, s, dtype=np.float32)
    return _RAMPS[s]


def draw_film(rng: np.random.Generator, size: int, a: Anatomy, film: Film, findings: tuple[str, ...], marker: bool,
              knobs: FindingKnobs) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int] | None,
                                            dict[str, np.ndarray]]:
    """Draw one film with ``findings``: the uint8 image, the visible lungs, the marker box (or None) and each
    finding's mask (within the visible lungs)."""
    s = size
    cv_ = _Canvas(s, film)
    mid = 0.5 + 0.018 * film.rotation  # the spine moves off the centre of the chest when the patient is rotated
    cardio = rng.uniform(1.3, 1.45) if "cardiomegaly" in findings else 1.0
    lay = _soft_tissue(cv_, a, film, mid, cardio)
    bones = _bones(cv_, a, film, mid)
    vessels = cv_.layer()
    _vessels(cv_, a, mid, vessels)
    lesion, wipe, masks = _findings(rng, cv_, a, film, mid, lay, findings, knobs)
    air, tissue = lay.air, lay.tissue
    density = (0.68 * tissue + 0.12 * tissue * lay.heart * (1 - lay.below) + 0.06 * lay.medi - 0.36 * air
               + 0.1 * lay.soft * tissue + bones * tissue * (0.35 + 0.65 * air) + 0.16 * vessels * air * (1 - wipe)
               - 0.12 * lay.airway + 0.36 * np.minimum(lesion, 1.2) * (0.6 * air + 0.4 * lay.lungfrac)
               + _smooth_noise(rng, s, max(8, s // 5)) * (0.04 * air))  # the last: interstitial background
    if film.devices:
        density += _devices(rng, cv_)
    img = _expose(rng, film, density)
    lung_mask, box = _annotate(rng, img, film, marker, lay.lung_mask)
    for k in masks:
        masks[k] &= lung_mask
    return np.clip(img * 255, 0, 255).astype(np.uint8), lung_mask, box, masks


_STAMPS: dict[tuple[str, float, int], np.ndarray] = {}


def _text_stamp(text: str, scale: float, thick: int) -> np.ndarray:
    """Burnt-in text as a small float image (cached: putText is slow)."""
    key = (text, round(scale, 3), thick)
    if key not in _STAMPS:
        (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        pad = thick + 1
        out = np.zeros((h + base + 2 * pad, w + 2 * pad), np.uint8)
        cv2.putText(out, text, (pad, h + pad), cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thick, cv2.LINE_AA)
        _STAMPS[key] = out.astype(np.float32) / 255
    return _STAMPS[key]


def _stamp(img: np.ndarray, stamp: np.ndarray, x: int, y_base: int) -> None:
    """Paste ``stamp`` (brightest wins) with its text baseline near row ``y_base``, clipped to the image."""
    y = y_base - stamp.shape[0] + 2
    s = img.shape[0]
    x0, y0, x1, y1 = max(0, x), max(0, y), min(s, x + stamp.shape[1]), min(s, y + stamp.shape[0])
    if x0 < x1 and y0 < y1:
        np.maximum(img[y0:y1, x0:x1], stamp[y0 - y : y1 - y, x0 - x : x1 - x], out=img[y0:y1, x0:x1])

