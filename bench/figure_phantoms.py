"""Figure: 12 phantoms (4 normal, 4 pneumonia, 4 covid; fixed seeds) beside 12 real chest X-rays (4 covid,
4 non-covid pneumonia, 4 normal) from a COVID-QU-Ex folder, to judge how radiograph-like the phantoms look.

Run: ``.venv/bin/python -m bench.figure_phantoms [--real DIR] [--size 256] [--out assets/phantoms_vs_real.png]``
(``--real`` defaults to ``../shared/data/covidqu_cxr_infection`` beside the repository; without it only the
phantom half is drawn).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from engine.data.phantom import LESION_CLASSES, render_phantom

ROOT = Path(__file__).resolve().parents[1]
REAL_CLASSES = (("normal", "normal"), ("non_covid", "pneumonia (non-covid)"), ("covid", "covid"))
SEEDS = (11, 22, 33, 44)


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    """``tile`` with a caption bar above it."""
    bar = np.full((22, tile.shape[1]), 255, np.uint8)
    cv2.putText(bar, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, 0, 1, cv2.LINE_AA)
    return np.vstack([bar, tile])


def phantom_tiles(size: int) -> list[np.ndarray]:
    """Rows of 4 labelled phantoms, one row per lesion class."""
    rows = []
    for label in LESION_CLASSES:
        tiles = [render_phantom(np.random.default_rng(seed), label, size).image for seed in SEEDS]
        tiles = [cv2.resize(t, (256, 256), interpolation=cv2.INTER_NEAREST) if size != 256 else t for t in tiles]
        rows.append(np.hstack([_label(np.pad(t, 2, constant_values=255), f"phantom {label} #{seed}")
                               for t, seed in zip(tiles, SEEDS, strict=True)]))
    return rows


def real_tiles(root: Path) -> list[np.ndarray]:
    """Rows of 4 labelled real X-rays (first four files by name), one row per class."""
    rows = []
    for folder, caption in REAL_CLASSES:
        files = sorted((root / "images" / folder).glob("*.png"))[:4]
        if len(files) < 4:
            raise FileNotFoundError(f"{root / 'images' / folder} has fewer than 4 PNGs; pass --real with a "
                                    "COVID-QU-Ex folder (images/<class>/*.png)")
        tiles = [cv2.resize(cv2.imread(str(f), cv2.IMREAD_GRAYSCALE), (256, 256), interpolation=cv2.INTER_AREA)
                 for f in files]
        rows.append(np.hstack([_label(np.pad(t, 2, constant_values=255), f"real {caption}") for t in tiles]))
    return rows


def main() -> None:
    """Write the figure."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", type=Path, default=ROOT.parent / "shared" / "data" / "covidqu_cxr_infection")
    ap.add_argument("--size", type=int, default=256, help="phantom size (shown at 256 px)")
    ap.add_argument("--out", type=Path, default=ROOT / "assets" / "phantoms_vs_real.png")
    args = ap.parse_args()
    left = np.vstack(phantom_tiles(args.size))
    if args.real.exists():
        right = np.vstack(real_tiles(args.real))
        gap = np.full((left.shape[0], 16), 255, np.uint8)
        left = np.hstack([left, gap, right])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(args.out), left):
        raise OSError(f"could not write {args.out}")
    print(f"wrote {args.out} ({left.shape[1]}x{left.shape[0]})")


if __name__ == "__main__":
    main()
