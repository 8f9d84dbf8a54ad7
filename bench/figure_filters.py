"""Figure: first-layer filters of a backbone from random weights and after the built-in pretraining, drawn gray.

Run by hand: ``python -m bench.figure_filters [--arch resnet18] [--size 128] [--out assets/builtin_filters.png]``.
Pretrains the built-in backbone first when ``$LUNGLENS_HOME`` does not hold it yet (or give ``--weights FILE``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from engine.layers import filter_grid  # noqa: E402
from engine.models.weights import build_model  # noqa: E402
from engine.pretrain import builtin_backbone  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def mosaic(filters: np.ndarray, columns: int = 8, gap: int = 1) -> np.ndarray:
    """(n, k, k) filters in [0, 1] as one gray mosaic with white gaps."""
    n, k, _ = filters.shape
    rows = -(-n // columns)
    out = np.ones((rows * (k + gap) - gap, columns * (k + gap) - gap), np.float32)
    for i, f in enumerate(filters):
        r, c = divmod(i, columns)
        out[r * (k + gap) : r * (k + gap) + k, c * (k + gap) : c * (k + gap) + k] = f
    return out


def main() -> None:
    """Write the before/after figure."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--out", type=Path, default=ROOT / "assets" / "builtin_filters.png")
    parser.add_argument("--weights", type=Path, help="a built-in backbone file to draw (default: the cached one)")
    args = parser.parse_args()
    torch.manual_seed(0)
    scratch, _ = build_model(args.arch, 3, "scratch")
    weights = args.weights or builtin_backbone(args.arch, args.size, None)
    builtin, _ = build_model(args.arch, 3, "builtin", builtin_file=weights)
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.6))
    for ax, model, title in ((axes[0], scratch, "random init (scratch)"),
                             (axes[1], builtin, "after the built-in pretraining")):
        ax.imshow(mosaic(filter_grid(model)), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"{args.arch} conv1, gray input: {title}", fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
