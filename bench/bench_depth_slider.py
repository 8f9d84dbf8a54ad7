"""Rerun time of the Training and Performance pages after the depth slider moves, with every result already cached.

Run from the repository root: ``.venv/bin/python -m bench.bench_depth_slider [--repeats 10]``. It trains tiny runs
into a throw-away LUNGLENS_HOME first, visits every depth once to warm the caches, then times AppTest reruns that
switch the slider. Goal: a median well under a second per switch.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

import engine
from dashboard.state import Selection

HOME_SCRIPT = Path(__file__).resolve().parents[1] / "dashboard" / "Home.py"
PAGES = {"training": "../pages/training.py", "performance": "../pages/performance.py"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed slider switches per page")
    parser.add_argument("--depths", type=int, nargs="+", default=[0, 2, 5], help="fine-tuning depths to train")
    parser.add_argument("--per-class", type=int, default=20, help="built-in images per class")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lunglens-bench-") as home:
        os.environ["LUNGLENS_HOME"] = home
        os.environ.setdefault("LUNGLENS_DEVICE", "cpu")
        _bench(args)


def _bench(args: argparse.Namespace) -> None:
    sel = Selection(engine.RunConfig(data="builtin", builtin_per_class=args.per_class, init="scratch",
                                     image_size=args.size, head_width=16, epochs=args.epochs, batch_size=16, lr=1e-3),
                    tuple(args.depths))
    t0 = time.perf_counter()
    engine.run_sweep(sel.configs())
    print(f"trained {len(args.depths)} tiny runs in {time.perf_counter() - t0:.1f} s")

    for page, path in PAGES.items():
        at = AppTest.from_file(str(HOME_SCRIPT), default_timeout=600)
        at.session_state["selection"] = sel
        at.switch_page(path).run()
        slider = f"{page}_depth"
        t0 = time.perf_counter()
        for depth in args.depths:  # warm: baselines, evaluations and Streamlit caches for every depth
            at.select_slider(key=slider).set_value(depth).run()
        warm = time.perf_counter() - t0
        times = []
        for i in range(args.repeats):
            at.select_slider(key=slider).set_value(args.depths[i % len(args.depths)])
            t0 = time.perf_counter()
            at.run()
            times.append(1000 * (time.perf_counter() - t0))
            if at.exception:
                raise SystemExit(f"{page}: {at.exception[0].message}")
        print(f"{page:<12} warm-up {warm:6.1f} s · slider switch median {statistics.median(times):6.0f} ms "
              f"(min {min(times):.0f}, max {max(times):.0f}, n={len(times)})")


if __name__ == "__main__":
    main()
