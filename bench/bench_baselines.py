"""Speed of the Table 1 baselines: LBP histograms, AlexNet deep features and the SVM grid search.

Run from the repository root: ``.venv/bin/python -m bench.bench_baselines [--images 2000] [--svm-train 800]``.
Goal: everything for a 2,000-image run in well under two minutes on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torchvision
from joblib import Parallel, delayed, effective_n_jobs
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from engine.baselines import C_GRID, deep_features, svm_baseline
from engine.lbp import lbp_histograms
from engine.models.backbones import stage


def _timed(label: str, fn, per: int | None = None):
    start = time.perf_counter()
    out = fn()
    elapsed = time.perf_counter() - start
    rate = f" ({1000 * elapsed / per:.1f} ms per image)" if per else ""
    print(f"{label:<48} {elapsed:7.2f} s{rate}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="images for LBP")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--deep-images", type=int, default=256, help="images for deep features")
    parser.add_argument("--svm-train", type=int, default=800, help="training rows for the SVM on 9216-d features")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(args.images, args.size, args.size), dtype=np.uint8)

    _timed(f"LBP, {args.images} images", lambda: lbp_histograms(images), args.images)
    chunks = np.array_split(images, effective_n_jobs(-1))
    _timed(f"LBP, joblib over {len(chunks)} processes (not used)",
           lambda: Parallel(n_jobs=len(chunks))(delayed(lbp_histograms)(c) for c in chunks), args.images)

    model = stage(torchvision.models.get_model("alexnet", weights=None), "alexnet", 2).eval()
    some = images[: args.deep_images]
    deep = _timed(f"AlexNet features, {len(some)} images", lambda: deep_features(model, some), len(some))
    print(f"  feature size {deep.shape[1]}")

    n = args.svm_train
    y = np.arange(n + 200) % 2
    feats = np.maximum(rng.standard_normal((n + 200, 9216)).astype(np.float32) + 0.05 * y[:, None], 0)
    _, _, info = _timed(f"svm_baseline (precomputed kernel), {n} x 9216",
                        lambda: svm_baseline(feats[:n], y[:n], feats[n:]))
    print(f"  C={info['C']:g} cv={info['cv_score']:.3f}")
    one_c = GridSearchCV(make_pipeline(StandardScaler(), SVC()), {"svc__C": [info["C"]]},
                         cv=StratifiedKFold(5, shuffle=True, random_state=0))
    _timed(f"Pipeline(StandardScaler, SVC), ONE C of {len(C_GRID)}", lambda: one_c.fit(feats[:n], y[:n]))


if __name__ == "__main__":
    main()
