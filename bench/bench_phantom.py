"""Time the phantom generator: 1,500 lesion-task images at 256 px (in memory, no PNG writing) and the source
corpus (2,000 images at 128 px, the size the built-in pretraining uses); goal: a few seconds on 2 CPU cores.

Wall time depends on what else runs on the cores, so the CPU time per image is printed too. ``--workers 2``
times the lesion images split over two processes (each renders its own seeds).

Run: ``.venv/bin/python -m bench.bench_phantom [--n 1500] [--size 256] [--source-n 2000] [--source-size 128]``
"""
from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor

import cv2
import numpy as np

from engine.data.phantom import LESION_CLASSES, render_phantom, source_corpus


def render_many(seeds: range, size: int) -> int:
    """Render one lesion-task image per seed (classes in turn); returns how many."""
    for seed in seeds:
        render_phantom(np.random.default_rng(seed), LESION_CLASSES[seed % 3], size)
    return len(seeds)


def main() -> None:
    """Print images/s of the lesion task and of the source corpus."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1500)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--source-n", type=int, default=2000)
    ap.add_argument("--source-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    render_many(range(3), args.size)  # warm-up: noise bank and text stamps
    t, cpu = time.perf_counter(), time.process_time()
    if args.workers > 1:
        step = -(-args.n // args.workers)
        chunks = [range(i, min(args.n, i + step)) for i in range(0, args.n, step)]
        with ProcessPoolExecutor(args.workers) as pool:
            list(pool.map(render_many, chunks, [args.size] * len(chunks)))
    else:
        render_many(range(args.n), args.size)
    dt, dcpu = time.perf_counter() - t, time.process_time() - cpu
    print(f"lesion task: {args.n} images at {args.size} px in {dt:.2f} s = {args.n / dt:.0f} images/s "
          f"({args.workers} process(es)" + (f"; {dcpu / args.n * 1000:.1f} ms CPU per image)" if args.workers == 1
                                           else ")"))
    t, cpu = time.perf_counter(), time.process_time()
    source_corpus(args.source_n, args.source_size, seed=0)
    dt, dcpu = time.perf_counter() - t, time.process_time() - cpu
    print(f"source corpus: {args.source_n} images at {args.source_size} px in {dt:.2f} s = "
          f"{args.source_n / dt:.0f} images/s ({dcpu / args.source_n * 1000:.1f} ms CPU per image)")


if __name__ == "__main__":
    main()
