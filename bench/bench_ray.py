"""Benchmark: the overhead of the Ray executor against in-process training, for 6 tiny runs, side by side.

Run by hand: ``python -m bench.bench_ray [--epochs N] [--per-class N]``. Prints the figures README quotes. Each
executor trains the same six runs (AlexNet with a 32-unit head at 64 px, depths 0-5, built-in data, from scratch) in
its own throw-away run store, with the data generated beforehand so that only the sweep is timed:

- in-process: one run after the other in this process;
- Ray, one run at a time: each run a task with all the machine's cores (the same work; the difference is Ray's cost);
- Ray, one core per run: as many runs at once as there are cores.

Starting the local Ray instance is timed on its own (a sweep pays it once).
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LUNGLENS_DEVICE", "cpu")

import engine  # noqa: E402
from engine.ray_executor import RayExecutor, machine_resources  # noqa: E402

DEPTHS = (0, 1, 2, 3, 4, 5)


def timed_sweep(home: Path, configs: list[engine.RunConfig], executor=None) -> tuple[float, list[engine.SweepRow]]:
    """Wall seconds of one sweep into the run store ``home`` (data generated first, not timed) and its rows."""
    os.environ["LUNGLENS_HOME"] = str(home)
    engine.load_dataset("builtin", per_class=configs[0].builtin_per_class)  # generate the phantoms before timing
    t0 = time.perf_counter()
    rows = engine.run_sweep(configs, executor=executor)
    seconds = time.perf_counter() - t0
    assert not any(r.cached for r in rows)
    return seconds, rows


def main() -> None:
    """Time the three ways side by side and check they give the same runs."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--per-class", type=int, default=20, help="built-in images per class")
    args = parser.parse_args()
    base = engine.RunConfig(data="builtin", builtin_per_class=args.per_class, init="scratch", backbone="alexnet",
                            head_width=32, image_size=64, epochs=args.epochs, patience=0, batch_size=16, lr=1e-3)
    configs = engine.sweep_configs(base, DEPTHS)
    cpus, gpus = machine_resources()
    print(f"6 runs (alexnet, 64 px, {3 * args.per_class} images, {args.epochs} epochs), {cpus} CPU cores, "
          f"{gpus} GPUs, device cpu")
    tmp = Path(tempfile.mkdtemp(prefix="lunglens-bench-ray-"))
    try:
        local_s, local_rows = timed_sweep(tmp / "in-process", configs)
        t0 = time.perf_counter()
        serial = RayExecutor(cpus_per_run=cpus, gpus_per_run=0)
        serial.connect()
        init_s = time.perf_counter() - t0
        serial_s, serial_rows = timed_sweep(tmp / "ray-serial", configs, serial)
        parallel = RayExecutor(cpus_per_run=1, gpus_per_run=0)
        parallel_s, parallel_rows = timed_sweep(tmp / "ray-parallel", configs, parallel)
        serial.close()
        same = all(a.run.id == b.run.id == c.run.id
                   and a.run.result["test"] == b.run.result["test"] == c.run.result["test"]
                   for a, b, c in zip(local_rows, serial_rows, parallel_rows))
        print(f"{'executor':<34}{'wall s':>8}{'per run s':>11}{'vs in-process':>15}")
        for name, seconds in (("in-process", local_s), (f"ray, 1 run at a time ({cpus:g} cores)", serial_s),
                              (f"ray, {cpus} runs at once (1 core each)", parallel_s)):
            print(f"{name:<34}{seconds:>8.1f}{seconds / len(configs):>11.2f}{seconds / local_s:>14.2f}x")
        print(f"starting the local Ray instance (once per sweep): {init_s:.1f} s")
        print(f"Ray's cost per run, one at a time: {(serial_s - local_s) / len(configs):+.2f} s "
              f"(in-process run: {local_s / len(configs):.2f} s)")
        print(f"identical runs and test criteria across the three: {same}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
