"""Speed of the explanation methods against their peers, side by side in one run on the same model and images.

Goals (issue "Explanations you can trust", §7): Grad-CAM >= 2x faster than pytorch-grad-cam's GradCAM; LIME at 224 px
within 1.2x of the bare forward cost of its 1,000 samples and >= 2x faster than ``lime_image`` with its defaults
(bfloat16 autocast where the processor has it and the top-5 superpixels match float32); occlusion of a 180-image
test split at 128 px in <= 60 s (next to Captum's Occlusion). Deletion/insertion and ROAD: bench_faithfulness.

    .venv/bin/python -m bench.bench_explain [--run RUN_ID] [--sizes 224 128] [--lime-images 2] [--occlusion-images 180]

Without ``--run`` the model is an untrained AlexNet (speed does not depend on the weights) and the images are
COVID-QU-Ex X-rays from ../shared/data when present, else smooth random images.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from captum.attr import Occlusion  # noqa: E402
from lime.lime_image import LimeImageExplainer  # noqa: E402
from pytorch_grad_cam import GradCAM  # noqa: E402
from skimage.filters import gaussian  # noqa: E402

from engine.data.imageio import read_image  # noqa: E402
from engine.data.transforms import preprocess, to_model_input  # noqa: E402
from engine.explain import attribute, cam_layer, lime_map, predict_proba  # noqa: E402
from engine.explain.inference import bf16_is_fast  # noqa: E402
from engine.explain.occlusion import default_window, occlusion_baseline  # noqa: E402
from engine.models.backbones import StagedNet, stage  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "covidqu_cxr_infection" / "images" / "covid"


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


def seconds(fn: Callable[[], object], repeats: int = 1) -> float:
    """Fastest of ``repeats`` timed calls after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_gradcam(model: StagedNet, sizes: list[int], n: int, run_images: np.ndarray | None) -> None:
    print(f"Grad-CAM vs pytorch-grad-cam GradCAM: last CAM layer, predicted class, {n} images, batches of 64 "
          "(best of 3):")
    module = cam_layer(model)[2]
    for size in sizes:
        x = to_model_input(images_at(size, n, run_images))

        def library() -> None:
            with GradCAM(model=model, target_layers=[module]) as cam:
                for i in range(0, n, 64):
                    cam(input_tensor=x[i : i + 64], targets=None)

        ours = seconds(lambda: attribute(model, x, "gradcam"), 3) / n * 1e3
        theirs = seconds(library, 3) / n * 1e3
        print(f"  {size} px: ours {ours:6.1f} ms/image, pytorch-grad-cam {theirs:6.1f} ms/image: "
              f"{theirs / ours:.2f}x (goal >= 2x)")


def _top5(result: dict) -> set[int]:
    return set(np.argsort(result["weights"])[::-1][:5].tolist())


def bench_lime(model: StagedNet, size: int, n: int, samples: int, run_images: np.ndarray | None) -> None:
    print(f"LIME at {size} px, {samples} samples, {n} image(s); bf16 native on this CPU: {bf16_is_fast()}")
    forward = ours32 = ours16 = default = 0.0
    agree = []
    for image in images_at(size, n, run_images):
        copies = np.repeat(image[None], samples, axis=0)
        forward += seconds(lambda: predict_proba(model, copies, 250))
        t0 = time.perf_counter()
        r32 = lime_map(model, image, n_samples=samples, bf16=False)
        ours32 += time.perf_counter() - t0
        t0 = time.perf_counter()
        r16 = lime_map(model, image, n_samples=samples, bf16=True)
        ours16 += time.perf_counter() - t0
        agree.append(_top5(r32) == _top5(r16))
        t0 = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):
            LimeImageExplainer(random_state=0).explain_instance(
                image, lambda rgb: predict_proba(model, rgb[..., 0].astype(np.uint8)), num_samples=samples)
        default += time.perf_counter() - t0
    print(f"  bare forward of the {samples} samples {forward / n:.2f} s/image; ours float32 {ours32 / n:.2f} s "
          f"({ours32 / forward:.2f}x the forward cost, goal <= 1.2x), ours bfloat16 {ours16 / n:.2f} s "
          f"({ours16 / forward:.2f}x; top-5 superpixels equal to float32 on {sum(agree)}/{n}); lime_image defaults "
          f"{default / n:.2f} s: ours float32 {default / ours32:.2f}x faster (goal >= 2x)")


def bench_occlusion(model: StagedNet, size: int, n: int, captum_images: int, run_images: np.ndarray | None) -> None:
    x = to_model_input(images_at(size, n, run_images))
    window, stride = default_window(size)
    print(f"Occlusion at {size} px, window {window}, stride {stride}:")
    t0 = time.perf_counter()
    attribute(model, x, "occlusion")
    ours = time.perf_counter() - t0
    occ = Occlusion(lambda z: torch.softmax(model(z), dim=1))
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(captum_images):
            occ.attribute(x[i : i + 1], sliding_window_shapes=(3, window, window), strides=(3, stride, stride),
                          target=0, baselines=occlusion_baseline(), perturbations_per_eval=64)
    theirs = (time.perf_counter() - t0) / captum_images
    print(f"  ours: {n} images in {ours:.1f} s ({ours / n * 1e3:.0f} ms/image; goal <= 60 s for 180); Captum "
          f"Occlusion {theirs * 1e3:.0f} ms/image on {captum_images} images: {theirs / (ours / n):.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", help="use this run's model and test images")
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 128])
    p.add_argument("--gradcam-images", type=int, default=64)
    p.add_argument("--lime-images", type=int, default=2)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--occlusion-images", type=int, default=180)
    p.add_argument("--captum-images", type=int, default=10)
    parts = ["gradcam", "lime", "occlusion"]
    p.add_argument("--parts", nargs="+", choices=parts, default=parts)
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
    if "gradcam" in args.parts:
        bench_gradcam(model, args.sizes, args.gradcam_images, run_images)
    if "lime" in args.parts:
        bench_lime(model, 224, args.lime_images, args.samples, run_images)
    if "occlusion" in args.parts:
        bench_occlusion(model, 128, args.occlusion_images, args.captum_images, run_images)
    print(f"load average at end {os.getloadavg()[0]:.2f} (other processes on the 2 cores slow both sides)")


if __name__ == "__main__":
    main()
