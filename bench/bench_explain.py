"""Speed of the explanations on this machine: batched Grad-CAM per image, and LIME against lime_image's defaults.

Goals: Grad-CAM <= 30 ms per image (AlexNet, batched, at 224 and 128 px); LIME with 1,000 samples >= 3x faster than
``lime_image`` with its defaults (quickshift superpixels, batches of 10, 1,000 samples) on the same model and images.

    .venv/bin/python bench/bench_explain.py [--run RUN_ID] [--lime-images 2] [--sizes 224 128]

Without ``--run`` the model is an untrained AlexNet (speed does not depend on the weights) and the images are
COVID-QU-Ex X-rays from ../shared/data when present, else smooth random images.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # lime_image draws a progress bar per explanation
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from lime.lime_image import LimeImageExplainer  # noqa: E402
from skimage.filters import gaussian  # noqa: E402

from engine.data.imageio import read_image  # noqa: E402
from engine.data.transforms import preprocess, to_model_input  # noqa: E402
from engine.explain import gradcam, lime_map, predict_proba  # noqa: E402
from engine.models.backbones import StagedNet, stage  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "covidqu_cxr_infection" / "images" / "covid"
GRADCAM_GOAL_MS = 30.0
LIME_GOAL_SPEEDUP = 3.0


def images_at(size: int, n: int, run_images: np.ndarray | None) -> np.ndarray:
    """``n`` uint8 (size, size) test images: the run's, the shared X-rays, or smooth random fields."""
    if run_images is not None:
        reps = -(-n // len(run_images))
        return np.stack([preprocess(im, size) for im in np.concatenate([run_images] * reps)[:n]])
    if SHARED.is_dir():
        paths = sorted(SHARED.glob("*.png"))
        return np.stack([preprocess(read_image(paths[i % len(paths)]), size) for i in range(n)])
    rng = np.random.default_rng(0)
    return np.stack([np.round(gaussian(rng.random((size, size)), 3) * 255).astype(np.uint8) for _ in range(n)])


def best_seconds(fn: Callable[[], object], repeats: int = 3) -> float:
    """Fastest of ``repeats`` timed calls after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_gradcam(model: StagedNet, sizes: list[int], n: int, run_images: np.ndarray | None) -> None:
    print(f"Grad-CAM, last conv layer, predicted class, {n} images in batches of 64 (best of 3):")
    for size in sizes:
        x = to_model_input(images_at(size, n, run_images))
        with torch.inference_mode():
            forward = best_seconds(lambda: model(x.contiguous(memory_format=torch.channels_last))) / n * 1e3
        cam = best_seconds(lambda: gradcam(model, x)) / n * 1e3
        verdict = "meets" if cam <= GRADCAM_GOAL_MS else "MISSES"
        print(f"  {size} px: {cam:6.1f} ms/image ({verdict} <= {GRADCAM_GOAL_MS:.0f} ms); "
              f"a plain forward pass alone takes {forward:.1f} ms/image")


def bench_lime(model: StagedNet, sizes: list[int], n: int, samples: int, run_images: np.ndarray | None) -> None:
    print(f"LIME, {samples} samples, {n} image(s) per size, ours and lime_image defaults interleaved:")
    for size in sizes:
        ours_s, default_s, ours_seg, default_seg = 0.0, 0.0, [], []
        for image in images_at(size, n, run_images):
            t0 = time.perf_counter()
            ours = lime_map(model, image, n_samples=samples, seed=0)
            ours_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            explanation = LimeImageExplainer(random_state=0).explain_instance(
                image, lambda rgb: predict_proba(model, rgb[..., 0].astype(np.uint8)), num_samples=samples)
            default_s += time.perf_counter() - t0
            ours_seg.append(len(ours["weights"]))
            default_seg.append(len(np.unique(explanation.segments)))
        speedup = default_s / ours_s
        verdict = "meets" if speedup >= LIME_GOAL_SPEEDUP else "MISSES"
        print(f"  {size} px: ours {ours_s / n:6.2f} s/image (SLIC, {np.mean(ours_seg):.0f} superpixels, batches of "
              f"250); lime_image defaults {default_s / n:6.2f} s/image (quickshift, {np.mean(default_seg):.0f} "
              f"superpixels, batches of 10); speed-up {speedup:.2f}x ({verdict} >= {LIME_GOAL_SPEEDUP:.0f}x)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", help="use this run's model and test images")
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 128])
    p.add_argument("--gradcam-images", type=int, default=64)
    p.add_argument("--lime-images", type=int, default=2)
    p.add_argument("--samples", type=int, default=1000)
    args = p.parse_args()
    if args.run:
        from engine.runs import load_run

        run = load_run(args.run)
        model, run_images = run.load_model(), run.images("test")
    else:
        torch.manual_seed(0)
        model = stage(torchvision.models.get_model("alexnet", weights=None), "alexnet", 3).eval()
        run_images = None
    print(f"{model.arch}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average at start {os.getloadavg()[0]:.2f}")
    bench_gradcam(model, args.sizes, args.gradcam_images, run_images)
    bench_lime(model, args.sizes, args.lime_images, args.samples, run_images)
    print(f"load average at end {os.getloadavg()[0]:.2f} (other processes on the 2 cores slow both sides)")


if __name__ == "__main__":
    main()
