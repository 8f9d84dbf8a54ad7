"""Time ``engine.projections.project`` on 2,000 AlexNet-sized (9216-d) features; goal: t-SNE <= 20 s on 2 CPU cores.

The features are synthetic but shaped like AlexNet's: ReLU outputs (non-negative, many zeros) of a 20-d latent space
with two class clusters. ``--check-quality`` also compares the projection module's t-SNE settings with
scikit-learn's defaults (1000 iterations, angle 0.5) on the same PCA-50 input: time, KL divergence and
trustworthiness (share of each point's 10 nearest neighbours in the embedding that are near in the input), and
the module's settings with one OpenMP thread (as it runs them) against all threads.

Run: ``.venv/bin/python bench/bench_tsne.py [--n 2000] [--repeat 3] [--threads 1] [--check-quality]``
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE, trustworthiness
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from engine.projections import METHODS, TSNE_ANGLE, TSNE_MAX_ITER, TSNE_PCA_DIMS, project, separability


def alexnet_like_features(n: int, d: int = 9216, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) float32 non-negative features of two classes, and their labels."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    latent = (rng.normal(size=(n, 20)) + 1.5 * y[:, None]).astype(np.float32)
    mixing = rng.normal(size=(20, d)).astype(np.float32) / 20**0.5  # a Python float keeps float32
    noise = rng.normal(scale=0.5, size=(n, d)).astype(np.float32)
    return np.maximum(latent @ mixing + noise, 0), y


def time_projections(features: np.ndarray, y: np.ndarray, repeat: int) -> None:
    """Best-of-``repeat`` wall and CPU time of every method in 2-D and 3-D, with the class separability."""
    for method in METHODS:
        for dims in (2, 3):
            wall, cpu = [], []
            for _ in range(repeat):
                t0, c0 = time.perf_counter(), time.process_time()
                points = project(features, method, dims, seed=0)
                wall.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
            sep = separability(points, y)
            goal = " (goal <= 20 s)" if method == "tsne" else ""
            print(f"{method:12s} {dims}-D  {min(wall):5.1f} s wall, {min(cpu):5.1f} s CPU{goal:15s}  "
                  f"silhouette {sep['silhouette']:.3f}  k-NN accuracy {sep['knn_accuracy']:.3f}", flush=True)


def check_quality(features: np.ndarray) -> None:
    """The module's t-SNE settings against scikit-learn's defaults on the same standardised PCA-50 input."""
    scaled = StandardScaler().fit_transform(features)
    x = PCA(TSNE_PCA_DIMS, svd_solver="randomized", random_state=0).fit_transform(scaled)
    settings = [("defaults", 1000, 0.5, 1), ("LungLens", TSNE_MAX_ITER, TSNE_ANGLE, 1),
                ("LungLens", TSNE_MAX_ITER, TSNE_ANGLE, None)]  # engine.projections uses one OpenMP thread
    for dims in (2, 3):
        for label, max_iter, angle, omp_threads in settings:
            tsne = TSNE(dims, init="pca", max_iter=max_iter, angle=angle, random_state=0, n_jobs=-1)
            t0 = time.perf_counter()
            with threadpool_limits(limits=omp_threads, user_api="openmp"):
                embedding = tsne.fit_transform(x)
            seconds = time.perf_counter() - t0
            trust = trustworthiness(x, embedding, n_neighbors=10)
            print(f"t-SNE {dims}-D {label:8s} (max_iter {max_iter:4d}, angle {angle}, OpenMP threads "
                  f"{omp_threads or 'all'}): {seconds:5.1f} s, KL {tsne.kl_divergence_:.3f}, "
                  f"trustworthiness {trust:.4f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=1, help="timings per projection; the best is printed")
    parser.add_argument("--threads", type=int, default=None,
                        help="cap BLAS threads (default: all cores; t-SNE itself always uses one OpenMP thread)")
    parser.add_argument("--check-quality", action="store_true")
    args = parser.parse_args()
    features, y = alexnet_like_features(args.n)
    # Other processes on the same cores slow every timing down; the load average says how busy the machine was.
    print(f"features {features.shape}; t-SNE on PCA-{TSNE_PCA_DIMS}, max_iter {TSNE_MAX_ITER}, angle {TSNE_ANGLE}; "
          f"{os.cpu_count()} CPUs, threads {args.threads or 'all'}, load average {os.getloadavg()[0]:.1f}")
    with threadpool_limits(limits=args.threads, user_api="blas"):
        time_projections(features, y, args.repeat)
        if args.check_quality:
            check_quality(features)


if __name__ == "__main__":
    main()
