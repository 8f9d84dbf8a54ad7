"""The explanation report on an experiment's runs: Grad-CAM at every depth, every method at chosen depths.

Prints, per depth, Grad-CAM's empty share, consistency degree against its two baselines and the sanity verdict, and
the full methods x scores table at ``--full-depths``, with the wall time of each (cached rows cost nothing).

    .venv/bin/python -m bench.bench_explain_report [--preset demo] [--full-depths 5] [--methods all] [--runs ID ...]

``--runs`` names the runs instead (e.g. runs trained before a change to the training code changed their keys).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

import engine  # noqa: E402
from engine.explain.report import ReportSettings, explanation_report  # noqa: E402
from engine.explain_cli import TEXT_COLUMNS, method_list  # noqa: E402

GRADCAM_COLUMNS = ["depth", "acc", "n_images", "empty_share", "consistency", "consistency_ci",
                   "lung_area_matched_baseline", "lung_area_matched_baseline_ci", "random_baseline",
                   "random_baseline_ci", "beats_chance", "pointing_game", "sanity_ssim", "sanity_pass", "seconds"]


def _fmt(v: object) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(f"{x:.3f}" for x in v) + "]"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="demo")
    p.add_argument("--full-depths", type=int, nargs="*", default=[5])
    p.add_argument("--methods", default="all")
    p.add_argument("--runs", nargs="*", help="run ids to report on (default: the preset's runs)")
    args = p.parse_args()
    experiment = engine.preset(args.preset)
    if args.runs:
        runs = {run.config.depth: run for run in map(engine.load_run, args.runs)}
    else:
        runs = {cfg.depth: engine.get_run(cfg) for cfg in engine.sweep_configs(experiment.config, experiment.depths)}
    missing = [d for d, r in runs.items() if r is None]
    if missing:
        sys.exit(f"Depths {missing} of the {args.preset} experiment are not trained: "
                 f"run `python -m engine sweep --preset {args.preset}` first.")
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 40)
    rows = []
    for depth, run in sorted(runs.items()):
        t0 = time.perf_counter()
        row = explanation_report(run, ["gradcam"], ReportSettings()).iloc[0].to_dict()
        rows.append({"depth": depth, "acc": run.result["test"]["acc"], **row, "seconds": time.perf_counter() - t0})
        print(f"depth {depth}: Grad-CAM report in {rows[-1]['seconds']:.0f} s", file=sys.stderr, flush=True)
    table = pd.DataFrame(rows)[GRADCAM_COLUMNS]
    print("Grad-CAM (last conv layer, predicted class, threshold 0.7) at every depth:")
    print(table.to_string(index=False, formatters={c: _fmt for c in table.columns}))
    for depth in args.full_depths:
        t0 = time.perf_counter()
        full = explanation_report(runs[depth], method_list(args.methods), ReportSettings())
        print(f"\nEvery method at depth {depth} ({time.perf_counter() - t0:.0f} s):")
        print(full[TEXT_COLUMNS].to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
