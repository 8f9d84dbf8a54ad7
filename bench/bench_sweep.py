"""Benchmark: the demo sweep from a cold cache, again from a warm cache, and without the frozen-prefix cache.

Run by hand: ``python -m bench.bench_sweep [--keep DIR]``. Prints the figures README quotes. Uses throw-away cache
folders; ``--keep DIR`` keeps the demo's cache there (e.g. to open the dashboard on it with LUNGLENS_HOME=DIR).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sweep(home: Path, *extra: str) -> tuple[float, list[dict]]:
    """Run ``python -m engine sweep --preset demo`` with ``home`` as cache; wall seconds and the JSON rows."""
    env = {**os.environ, "LUNGLENS_HOME": str(home)}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "engine", "sweep", "--preset", "demo", "--json", *extra], cwd=ROOT,
                         env=env, check=True, capture_output=True, text=True)
    return time.perf_counter() - t0, json.loads(out.stdout)


def main() -> None:
    """Cold sweep, warm sweep, and the same training with the prefix cache off."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", type=Path, help="copy the demo's cache to this folder at the end")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lunglens-bench-"))
    try:
        from engine.data.phantom import PhantomSpec, write_phantom_dataset

        t0 = time.perf_counter()
        write_phantom_dataset(tmp / "phantoms", PhantomSpec(n_per_class=500, image_size=256))
        print(f"generating 1,500 built-in images at 256 px: {time.perf_counter() - t0:.1f} s")
        cold, rows = sweep(tmp / "a")
        warm, warm_rows = sweep(tmp / "a")
        print(f"cold demo sweep (data, pretraining, 6 runs): {cold:.0f} s")
        print(f"warm demo sweep (all cached: {all(r['cached'] for r in warm_rows)}): {warm:.1f} s")
        print(f"best test accuracy: {max(r['acc'] for r in rows):.3f} at depth "
              f"{max(rows, key=lambda r: r['acc'])['depth']}")
        # Same data and pretrained backbone, no runs: only the training differs.
        shutil.copytree(tmp / "a", tmp / "b", ignore=shutil.ignore_patterns("runs"))
        _, plain_rows = sweep(tmp / "b", "--no-prefix-cache")
        cached_s = sum(r["seconds"] for r in rows)
        plain_s = sum(r["seconds"] for r in plain_rows)
        print("depth  cached s  plain s  ratio")
        for a, b in zip(rows, plain_rows):
            print(f"{a['depth']:>5}  {a['seconds']:>8.1f}  {b['seconds']:>7.1f}  {b['seconds'] / a['seconds']:>5.1f}x")
        print(f"all six runs: {cached_s:.0f} s with the prefix cache, {plain_s:.0f} s without: "
              f"{plain_s / cached_s:.1f}x")
        if args.keep:
            shutil.copytree(tmp / "a", args.keep, dirs_exist_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
