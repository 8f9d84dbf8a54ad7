"""Benchmark: Cheng et al.'s Table 1 (backbones x augmentation) and DPN-SE on the built-in four-class phantoms.

1. ``python -m engine sweep --preset cheng --backbones B1,B2,... --augment both --depths 5``: every backbone trained
   with and without Cheng's augmentation on the same split (built-in init, so each backbone is first pretrained on
   the phantom source corpus); accuracy and covid's precision / recall / F1 with 95% CIs, the change augmentation
   makes, and each run's training wall time.
2. ``python -m engine sweep --preset cheng --backbones dpn92se --depths 0``: DPN-SE with its blocks frozen, beside
   the depth-5 runs of step 1.

Run by hand: ``python -m bench.bench_cheng [--home DIR] [--backbones resnet18,densenet121,...] [--per-class N]
[--epochs N]``. Prints the figures
README quotes (wall times of a cold cache include data generation and the built-in pretraining of each backbone).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench.bench_ouyang import engine_cli

#: Cheng's DPN-SE beside three cheaper backbones of their comparison (add dpn92 for the effect of SE).
DEFAULT_BACKBONES = "resnet18,densenet121,efficientnet_b0,dpn92se"


def main() -> None:
    """Both measurements, printed as Markdown."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--home", type=Path, help="cache folder (default: a new temporary one, i.e. a cold cache)")
    parser.add_argument("--backbones", default=DEFAULT_BACKBONES, help=f"comma-separated (default {DEFAULT_BACKBONES})")
    parser.add_argument("--per-class", type=int, help="images per class (default: the cheng preset's 40)")
    parser.add_argument("--epochs", type=int, help="epochs (default: the cheng preset's 6)")
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="lunglens-bench-cheng-"))
    sizes = [*(["--per-class", str(args.per_class)] if args.per_class else []),
             *(["--epochs", str(args.epochs)] if args.epochs else [])]

    seconds, out = engine_cli(home, "sweep", "--preset", "cheng", "--backbones", args.backbones, "--augment", "both",
                              "--depths", "5", *sizes)
    print(f"## backbones x augmentation, depth 5, cold cache: {seconds:.0f} s in all")
    os.environ["LUNGLENS_HOME"] = str(home)
    import engine  # after LUNGLENS_HOME is set
    from engine.cheng import augmentation_effect, augmentation_table, improved, table1_view

    runs = [engine.load_run(r["run"]) for r in out["runs"]]
    table, effect = augmentation_table(runs), augmentation_effect(runs)
    for name in ("covid", "bacterial", "viral", "normal"):
        print(f"\n### {name} (one-vs-rest), test split")
        print(table1_view(table, effect, name).astype(object).fillna("").to_string(index=False))
    gained, pairs, mean = improved(effect)
    print(f"\nAugmentation raised test accuracy for {gained} of {pairs} backbones; mean change {mean:+.3f}.")

    t0 = time.perf_counter()
    _, shallow = engine_cli(home, "sweep", "--preset", "cheng", "--backbone", "dpn92se", "--depths", "0", *sizes)
    row = shallow[0]
    print(f"\n## dpn92se at depth 0 (augmented): test ACC {row['acc']:.3f}, training {row['wall_seconds']:.0f} s "
          f"({time.perf_counter() - t0:.0f} s with loading)")


if __name__ == "__main__":
    main()
