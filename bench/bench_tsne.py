"""Time ``engine.projections.project`` on 2,000 AlexNet-sized (9216-d) features; goal: t-SNE <= 20 s on 2 CPU cores.

The features are synthetic but shaped like AlexNet's: ReLU outputs (non-negative, about half zeros) of a 20-d latent
space with two class clusters. With ``--check-iters`` it also compares the KL divergence that scikit-learn's t-SNE
reaches at ``TSNE_MAX_ITER`` with the one at its default 1000 iterations, on the same PCA-50 input.

Run: ``.venv/bin/python bench/bench_tsne.py [--n 2000] [--check-iters]``
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.preprocessing import StandardScaler

from engine.projections import METHODS, TSNE_MAX_ITER, TSNE_PCA_DIMS, project, separability


def alexnet_like_features(n: int, d: int = 9216, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) float32 non-negative features of two classes, and their labels."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    latent = rng.normal(size=(n, 20)) + 1.5 * y[:, None]
    mixing = rng.normal(size=(20, d)).astype(np.float32) / 20**0.5  # a Python float keeps float32
    return np.maximum(latent.astype(np.float32) @ mixing + rng.normal(scale=0.5, size=(n, d)).astype(np.float32), 0), y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=1, help="timings per projection; the best is printed")
    parser.add_argument("--check-iters", action="store_true")
    args = parser.parse_args()
    features, y = alexnet_like_features(args.n)
    # Other processes on the same two cores slow every timing down; the load average says how busy the machine was.
    print(f"features {features.shape}, t-SNE max_iter={TSNE_MAX_ITER} on PCA-{TSNE_PCA_DIMS}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    for method in METHODS:
        for dims in (2, 3):
            wall, cpu = [], []
            for _ in range(args.repeat):
                t0, c0 = time.perf_counter(), time.process_time()
                points = project(features, method, dims, seed=0)
                wall.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
            sep = separability(points, y)
            goal = " (goal <= 20 s)" if method == "tsne" else ""
            print(f"{method:12s} {dims}-D  {min(wall):5.1f} s wall, {min(cpu):5.1f} s CPU{goal:15s}  "
                  f"silhouette {sep['silhouette']:.3f}  k-NN acc {sep['knn_accuracy']:.3f}", flush=True)
    if args.check_iters:
        scaled = StandardScaler().fit_transform(features)
        x = PCA(TSNE_PCA_DIMS, svd_solver="randomized", random_state=0).fit_transform(scaled)
        for dims in (2, 3):
            kl = {}
            for iters in (TSNE_MAX_ITER, 1000):
                tsne = TSNE(dims, init="pca", max_iter=iters, random_state=0, n_jobs=-1)
                tsne.fit(x)
                kl[iters] = tsne.kl_divergence_
            print(f"t-SNE {dims}-D KL divergence: {kl[TSNE_MAX_ITER]:.4f} at {TSNE_MAX_ITER} iterations, "
                  f"{kl[1000]:.4f} at 1000 ({100 * (kl[TSNE_MAX_ITER] / kl[1000] - 1):+.1f}%)")


if __name__ == "__main__":
    main()
