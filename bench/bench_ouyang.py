"""Benchmark: Ouyang et al. on the built-in CT phantoms, from a cold cache.

1. ``python -m engine sweep --data builtin-ct --backbone resnet3d18 --depths 0,2,5`` (the ``ct`` preset): wall time
   (data generation and 3-D pretraining included) and test accuracy per depth.
2. ``python -m engine ouyang --data builtin-ct --depths D --folds K``: their Table II (plain, attention + uniform,
   attention + size-balanced, dual sampling; mean ± sd over K folds) and Table III (by infection size).
3. The support regions with and without attention: Grad-CAM's consistency degree with the lesion (95% CIs).
4. The same on the built-in 2-D phantoms with the shortcut marker (``--confounder 0.95``, the demo preset at depth 5):
   consistency and the share of support on the marker, with and without attention.

Run by hand: ``python -m bench.bench_ouyang [--home DIR] [--depth 2] [--folds 5]``. Prints the figures README quotes.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def engine_cli(home: Path, *args: str) -> tuple[float, dict | list]:
    """Run ``python -m engine ARGS --json`` with ``home`` as cache; wall seconds and the parsed output."""
    env = {**os.environ, "LUNGLENS_HOME": str(home)}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "engine", *args, "--json"], cwd=ROOT, env=env, check=True,
                         stdout=subprocess.PIPE, text=True)
    return time.perf_counter() - t0, json.loads(out.stdout)


def _cell(row: dict, metric: str) -> str:
    value, sd = row.get(metric), row.get(f"{metric} sd")
    if value is None or value != value:
        return "–"
    return f"{value:.3f}" + (f" ± {sd:.3f}" if sd is not None and sd == sd else "")


def _markdown(rows: list[dict], first: list[str], metrics: list[str]) -> str:
    head = "| " + " | ".join(first + metrics) + " |\n|" + "---|" * (len(first) + len(metrics)) + "\n"
    return head + "\n".join("| " + " | ".join([str(r[c]) for c in first] + [_cell(r, m) for m in metrics]) + " |"
                            for r in rows)


def main() -> None:
    """The three measurements, printed as Markdown."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--home", type=Path, help="cache folder (default: a new temporary one, i.e. a cold cache)")
    parser.add_argument("--depth", type=int, default=2, help="depth of the Ouyang comparison (default 2)")
    parser.add_argument("--folds", type=int, default=5, help="folds of the Ouyang comparison (default 5, as the paper)")
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="lunglens-bench-ouyang-"))

    seconds, rows = engine_cli(home, "sweep", "--data", "builtin-ct", "--backbone", "resnet3d18", "--depths", "0,2,5")
    print(f"## ct sweep, cold cache: {seconds:.0f} s")
    for r in rows:
        print(f"depth {r['depth']}: test ACC {r['acc']:.3f}, AUC {r['auc']:.3f}, {r['wall_seconds']:.0f} s")

    seconds, tables = engine_cli(home, "ouyang", "--data", "builtin-ct", "--depths", str(args.depth),
                                 "--folds", str(args.folds))
    print(f"\n## Ouyang comparison, depth {args.depth}, {args.folds} folds: {seconds:.0f} s")
    print(_markdown(tables["variants"], ["variant"], ["AUC", "ACC", "sensitivity", "specificity", "F1"]))
    print()
    print(_markdown(tables["infection_size"], ["variant", "group", "n"], ["AUC", "ACC", "sensitivity", "specificity"]))

    os.environ["LUNGLENS_HOME"] = str(home)
    import engine

    base = engine.preset("ouyang").config.replace(depth=args.depth, folds=args.folds)
    t0 = time.perf_counter()
    effect = engine.attention_effect(base)
    print(f"\n## Grad-CAM support with and without attention (fold 0, test split): {time.perf_counter() - t0:.0f} s")
    for _, r in effect.iterrows():
        print(f"{r['model']}: consistency {r['consistency']:.3f} [{r['consistency_lo']:.3f}, {r['consistency_hi']:.3f}]"
              f" over {r['n_lesion']} volumes; test ACC {r['test_acc']:.3f}")

    marked = engine.preset("demo").config.replace(confounder_prob=0.95, depth=5)
    t0 = time.perf_counter()
    for attention in (False, True):
        engine.train_run(marked.replace(attention=attention))
    effect = engine.attention_effect(marked)
    print(f"\n## 2-D phantoms with the shortcut marker (P = 0.95), depth 5: {time.perf_counter() - t0:.0f} s")
    for _, r in effect.iterrows():
        print(f"{r['model']}: consistency {r['consistency']:.3f} [{r['consistency_lo']:.3f}, {r['consistency_hi']:.3f}]"
              f"; support on the marker {r['on_marker']:.3f} [{r['on_marker_lo']:.3f}, {r['on_marker_hi']:.3f}]; "
              f"test ACC {r['test_acc']:.3f} (with marker {r['acc_with_marker']:.3f}, without "
              f"{r['acc_without_marker']:.3f})")


if __name__ == "__main__":
    main()
