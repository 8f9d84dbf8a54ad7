"""Command line: ``python -m engine sweep | runs | data make-demo | explain``."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from .config import PRESETS, RunConfig, preset
from .errors import LungLensError
from .models.backbones import BACKBONES
from .runs import list_runs
from .sweep import run_sweep, sweep_configs
from .training import Progress

TABLE_COLUMNS = ["run", "backbone", "depth", "init", "fold", "best_epoch", "acc", "sensitivity", "specificity",
                 "ppv", "npv", "auc", "wall_seconds", "cached"]


def _depths(text: str) -> list[int]:
    try:
        return [int(d) for d in text.split(",") if d.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--depths takes comma-separated integers like 0,1,2, not {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine", description="LungLens engine: train, compare and explain CNNs.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("sweep", help="train (or load from the cache) one run per fine-tuning depth and print their scores")
    s.add_argument("--preset", choices=sorted(PRESETS), help="start from a named experiment (demo: the dashboard's default)")
    s.add_argument("--data", help="'builtin' or a folder ROOT/images/<class>/* (default builtin)")
    s.add_argument("--backbone", choices=BACKBONES)
    s.add_argument("--depths", type=_depths, help="fine-tuning depths, e.g. 0,1,2,3,4,5")
    s.add_argument("--init", help="builtin | imagenet | scratch | PATH to a weights file")
    s.add_argument("--epochs", type=int)
    s.add_argument("--image-size", type=int, dest="image_size")
    s.add_argument("--folds", type=int, help="k-fold cross-validation inside the non-test data (default: hold-out)")
    s.add_argument("--head-width", type=int, dest="head_width", help="AlexNet/VGG: units of fc6/fc7 (default: the architecture's)")
    s.add_argument("--patience", type=int, help="early-stopping patience in epochs (0 = off)")
    s.add_argument("--seed", type=int)
    s.add_argument("--optimizer", choices=["sgd", "rmsprop", "adam"])
    s.add_argument("--lr", type=float)
    s.add_argument("--batch-size", type=int, dest="batch_size")
    s.add_argument("--clahe", action="store_true", default=None, help="contrast-limited histogram equalisation (Lee et al.)")
    s.add_argument("--augment", action="store_true", default=None, help="Cheng et al.'s augmentation recipe")
    s.add_argument("--confounder", type=float, dest="confounder_prob", help="built-in data: P(marker | covid), 0 = off")
    s.add_argument("--per-class", type=int, dest="builtin_per_class", help="built-in data: images per class")
    s.add_argument("--skip-bad", action="store_true", default=None, dest="skip_bad", help="skip unreadable images (reported)")
    s.add_argument("--no-prefix-cache", action="store_false", default=None, dest="prefix_cache",
                   help="recompute the frozen layers every batch (for benchmarks)")
    s.add_argument("--json", action="store_true", help="print the rows as a JSON list")

    r = sub.add_parser("runs", help="list the finished runs in the cache")
    r.add_argument("--json", action="store_true")

    d = sub.add_parser("data", help="dataset tools")
    dsub = d.add_subparsers(dest="data_command", required=True)
    mk = dsub.add_parser("make-demo", help="write the built-in phantom dataset to a folder")
    mk.add_argument("path", type=Path)
    mk.add_argument("--per-class", type=int, default=300)
    mk.add_argument("--size", type=int, default=256)
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--confounder", type=float, default=0.0, help="P(marker | covid); 0 = no shortcut marker")

    e = sub.add_parser("explain", help="write an explanation overlay for one image")
    e.add_argument("--run", required=True, help="run id (see `python -m engine runs`)")
    e.add_argument("--method", required=True, choices=["gradcam", "guided-gradcam", "lime", "occlusion"])
    e.add_argument("--image", required=True, type=Path)
    e.add_argument("--out", required=True, type=Path)
    e.add_argument("--target", help="class name to explain (default: the predicted class)")
    return p


def _sweep(args: argparse.Namespace) -> int:
    base = preset(args.preset).config if args.preset else RunConfig()
    depths = args.depths or (list(preset(args.preset).depths) if args.preset else [base.depth])
    fields = ["data", "backbone", "init", "epochs", "image_size", "head_width", "patience", "seed", "optimizer", "lr", "batch_size", "clahe",
              "augment", "confounder_prob", "builtin_per_class", "skip_bad", "prefix_cache"]
    changes = {f: getattr(args, f) for f in fields if getattr(args, f) is not None}
    if args.folds is not None:
        changes["folds"] = args.folds
    if "init" in changes and changes["init"] != "builtin" and "head_width" not in changes and base.head_width:
        changes["head_width"] = None  # pretrained torchvision weights come with the architecture's own head
    base = base.replace(**changes)
    configs = sweep_configs(base, depths)
    bar: dict[str, tqdm | tuple | None] = {"key": None, "bar": None}

    def progress(i: int, cfg: RunConfig):
        def report(p: Progress) -> None:
            key = (i, p.phase.split(":")[0])
            if bar["key"] != key:  # one bar at a time: close the finished one, open the next
                if bar["bar"] is not None:
                    bar["bar"].close()
                label = "pretrain builtin backbone" if p.phase.startswith("pretrain") else f"{cfg.backbone} depth {cfg.depth}"
                bar["key"] = key
                bar["bar"] = tqdm(total=p.epochs * p.batches, desc=f"[{i + 1}/{len(configs)}] {label}", unit="batch",
                                  file=sys.stderr, dynamic_ncols=True)
            current = bar["bar"]
            current.n = (p.epoch - 1) * p.batches + p.batch
            if p.metrics:
                current.set_postfix(epoch=p.epoch, val_loss=f"{p.metrics.get('val_loss', float('nan')):.3f}",
                                    test_acc=f"{p.metrics.get('test_acc', float('nan')):.3f}")
            current.refresh()
        return report

    rows = run_sweep(configs, progress, status=lambda msg: tqdm.write(msg, file=sys.stderr))
    if bar["bar"] is not None:
        bar["bar"].close()
    table = [r.as_dict() for r in rows]
    if args.json:
        print(json.dumps(table, indent=2, default=float))
    else:
        df = pd.DataFrame(table)[TABLE_COLUMNS]
        print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


def _runs(args: argparse.Namespace) -> int:
    df = list_runs()
    if args.json:
        print(df.to_json(orient="records", indent=2))
    elif df.empty:
        print("No finished runs yet. Train some with: python -m engine sweep --preset demo")
    else:
        print(df.drop(columns=["finished"]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


def _make_demo(args: argparse.Namespace) -> int:
    from .data.phantom import PhantomSpec, write_phantom_dataset

    spec = PhantomSpec(n_per_class=args.per_class, image_size=args.size, seed=args.seed,
                       confounder_class="covid" if args.confounder > 0 else None, confounder_prob=args.confounder)
    with tqdm(total=args.per_class * 3, desc="phantoms", unit="img", file=sys.stderr) as bar:
        root = write_phantom_dataset(args.path, spec, lambda done, total: bar.update(done - bar.n))
    print(root)
    return 0


def _explain(args: argparse.Namespace) -> int:
    from .explain_cli import explain_to_file

    result = explain_to_file(args.run, args.method, args.image, args.out, target=args.target)
    probs = ", ".join(f"{c} {p:.3f}" for c, p in result["probabilities"].items())
    print(f"{args.out}: {result['method']} map for class {result['target']} (predicted {result['predicted']}; {probs})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "sweep":
            return _sweep(args)
        if args.command == "runs":
            return _runs(args)
        if args.command == "data":
            return _make_demo(args)
        return _explain(args)
    except LungLensError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
