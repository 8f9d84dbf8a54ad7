"""Benchmark: does the built-in backbone transfer to real X-rays? The folder recipe from built-in vs. scratch init.

Run by hand: ``python -m bench.bench_transfer --data ../shared/data/covidqu_cxr_infection [--depths 0,1,2]``.
Trains (or loads from the cache in ``$LUNGLENS_HOME``) the ``folder`` preset at each depth twice, once from the
built-in backbone and once from random weights, on the same split, and prints test accuracy side by side with the
pretraining's own time and held-out AUCs.
"""
from __future__ import annotations

import argparse
import time

import engine
from engine.config import preset
from engine.pretrain import builtin_backbone, builtin_backbone_info


def main() -> None:
    """Print a builtin-vs-scratch table for the given data folder and depths."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True,
                        help="a folder of real X-rays, e.g. ../shared/data/covidqu_cxr_infection")
    parser.add_argument("--depths", default="0,1,2", help="fine-tuning depths (comma-separated)")
    args = parser.parse_args()
    base = preset("folder").config.replace(data=args.data)
    info = builtin_backbone_info(builtin_backbone(base.backbone, base.image_size, base.head_width))
    print(f"built-in {base.backbone} backbone: pretrained in {info['seconds']:.0f} s, mean held-out AUC "
          f"{info['mean_held_out_auc']:.3f} over {len(info['held_out_auc'])} source targets")
    print("depth  builtin  scratch  gain (points)  seconds builtin / scratch")
    for depth in (int(d) for d in args.depths.split(",")):
        row = {}
        for init in ("builtin", "scratch"):
            t0 = time.perf_counter()
            run = engine.train_run(base.replace(depth=depth, init=init))
            row[init] = (run.result["test"]["acc"], time.perf_counter() - t0)
        gain = 100 * (row["builtin"][0] - row["scratch"][0])
        print(f"{depth:>5}  {row['builtin'][0]:>7.3f}  {row['scratch'][0]:>7.3f}  {gain:>+13.1f}  "
              f"{row['builtin'][1]:.0f} / {row['scratch'][1]:.0f}")


if __name__ == "__main__":
    main()
