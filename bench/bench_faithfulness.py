"""Speed of LungLens's deletion/insertion and ROAD against Quantus's and pytorch-grad-cam's, side by side in one run.

Goal (issue 8): at least 5x faster than Quantus's implementations on the same model, images and maps.

    .venv/bin/python bench/bench_faithfulness.py [--images 32] [--size 128] [--steps 32] [--threads N]

The model is an untrained AlexNet-shaped StagedNet with the demo's 512-unit head (speed does not depend on the
weights); the images are smooth random gray fields replicated to three channels and the maps smooth random maps.
Compared like for like:
- deletion: Quantus's PixelFlipping (baseline 0, n_steps steps of H*W/n_steps pixels, softmax; one curve) against
  ``deletion_insertion``, which computes four curves (deletion and insertion, by the map and by a random order) or,
  with ``reference=False``, two. The table gives seconds per image and per curve.
- ROAD: Quantus's ROAD (most-relevant-first only, one imputation per percentage, accuracy) and pytorch-grad-cam's
  ROADCombined (MoRF and LeRF at each percentile, as ``road``) against ``road``, per image and per imputation.
Both wall-clock and CPU seconds are printed: on a shared machine the CPU seconds are the steadier figure.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from engine.explain.consistency import random_heatmap  # noqa: E402
from engine.explain.faithfulness import deletion_insertion, road  # noqa: E402
from engine.models.backbones import stage, torchvision_model  # noqa: E402

GOAL_SPEEDUP = 5.0
PERCENTILES = (20, 40, 60, 80)


class _Gray(nn.Module):
    """The model on one-channel inputs replicated to three: Quantus then flips whole pixels, as LungLens does."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.expand(-1, 3, -1, -1))


def _timed(fn) -> tuple[np.ndarray, object]:
    """Wall-clock and process CPU seconds taken by ``fn()``, and its result.

    CPU seconds (all threads of this process) are the steadier figure on a machine shared with other work.
    """
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return np.array([time.perf_counter() - w0, time.process_time() - c0]), out


def main() -> None:
    """Time both implementations on the same inputs and print one row per metric."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    ap.add_argument("--pgc-images", type=int, default=8, help="images for pytorch-grad-cam's slow ROADCombined")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import quantus
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    torch.manual_seed(0)
    model = stage(torchvision_model("alexnet"), "alexnet", 3, head_width=512).eval()
    n, s = args.images, args.size
    gray = np.stack([random_heatmap((s, s), seed=i) for i in range(n)])
    x1 = torch.from_numpy((gray - 0.5) / 0.25).float()[:, None]
    x3 = x1.repeat(1, 3, 1, 1)
    maps = np.stack([random_heatmap((s, s), seed=1000 + i) for i in range(n)])
    with torch.inference_mode():
        targets = model(x3).argmax(1).numpy()

    rows = []  # (name, LungLens seconds, LungLens units, reference seconds, reference units, unit, note)
    t_full, ours = _timed(lambda: deletion_insertion(model, x3, maps, targets, n_steps=args.steps))
    t_two, _ = _timed(lambda: deletion_insertion(model, x3, maps, targets, n_steps=args.steps, reference=False))
    pf = quantus.PixelFlipping(features_in_step=s * s // args.steps, perturb_baseline=0.0, normalise=False,
                               abs=False, disable_warnings=True)
    t_q, q_curve = _timed(lambda: pf(model=_Gray(model).eval(), x_batch=x1.numpy(), y_batch=targets,
                                     a_batch=maps[:, None], channel_first=True, softmax=True, batch_size=n))
    diff = np.abs(np.asarray(q_curve) - ours["deletion_curve"][:, 1:]).max()
    rows.append(("deletion+insertion+random refs vs PixelFlipping", t_full, 4, t_q, 1, "curve",
                 f"max |deletion curve diff| {diff:.1e}"))
    rows.append(("deletion+insertion vs PixelFlipping", t_two, 2, t_q, 1, "curve", ""))

    t_road, ours_road = _timed(lambda: road(model, x3, maps, targets, percentiles=PERCENTILES))
    qroad = quantus.ROAD(percentages=[100 - p for p in PERCENTILES], normalise=False, abs=False,
                         disable_warnings=True)
    t_qroad, _ = _timed(lambda: qroad(model=_Gray(model).eval(), x_batch=x1.numpy(), y_batch=targets,
                                      a_batch=maps[:, None], channel_first=True, softmax=True, batch_size=n))
    n_imp = len(PERCENTILES)
    rows.append(("ROAD vs Quantus ROAD (MoRF only)", t_road, 2 * n_imp, t_qroad, n_imp, "imputation", ""))
    k = min(args.pgc_images, n)
    cam_targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in targets[:k]]
    t_pgc, pgc_road = _timed(lambda: ROADCombined(percentiles=list(PERCENTILES))(x3[:k], maps[:k], cam_targets,
                                                                                  model))
    diff = np.abs(np.asarray(pgc_road) - ours_road[:k]).max()
    rows.append((f"ROAD vs pytorch-grad-cam ROADCombined ({k} img)", t_road, 2 * n_imp, t_pgc * n / k, 2 * n_imp,
                 "imputation", f"max |diff| {diff:.1e} (noise 0.01 each)"))

    print(f"{n} images at {s} px, AlexNet StagedNet (random weights, 512-unit head), torch threads "
          f"{torch.get_num_threads()}, {args.steps} steps, ROAD percentiles {PERCENTILES}")
    for c, clock in enumerate(("wall-clock", "CPU")):
        print(f"\n{clock} seconds")
        print(f"{'LungLens vs reference':50s} {'ours s/img':>10s} {'ref s/img':>10s} {'ratio':>6s} "
              f"{'ours s/unit':>11s} {'ref s/unit':>10s} {'ratio/unit':>10s}  unit; note")
        for name, ours_t, ours_u, ref_t, ref_u, unit, note in rows:
            a, b = ours_t[c] / n, ref_t[c] / n
            print(f"{name:50s} {a:10.4f} {b:10.4f} {b / a:5.1f}x {a / ours_u:11.4f} {b / ref_u:10.4f} "
                  f"{(b / ref_u) / (a / ours_u):9.1f}x  per image and {unit}; {note}")
    print(f"goal: >= {GOAL_SPEEDUP:.0f}x against Quantus")


if __name__ == "__main__":
    main()
