"""Command line: ``python -m engine sweep | prepare | ouyang | runs | data make-demo | data make-demo-ct | evaluate |
score | explain | explain-report | report``."""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from .config import PRESETS, SAMPLINGS, RunConfig, preset
from .data.sources import BUILTIN, BUILTIN_4CLASS, BUILTIN_CT, PHANTOM_TASKS
from .errors import ConfigError, LungLensError
from .explain.methods import METHODS
from .models.names import BACKBONES, N_BLOCKS
from .prepare import STEP_NAMES
from .runs import damaged_runs, delete_run, list_runs
from .sweep import RUN_DONE, run_sweep, sweep_configs
from .training import Progress

TABLE_COLUMNS = ["run", "backbone", "depth", "init", "fold", "best_epoch", "acc", "sensitivity", "specificity",
                 "ppv", "npv", "auc", "wall_seconds", "cached"]


#: ``--augment``'s values: on, off, or both (``sweep`` trains every run with and without it).
AUGMENT_MODES = ("on", "off", "both")


def _depths(text: str) -> list[int]:
    try:
        return [int(d) for d in text.split(",") if d.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--depths takes comma-separated integers like 0,1,2, not {text!r}") from None


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def _backbone_list(text: str) -> list[str]:
    from .cheng import check_backbones

    try:
        return check_backbones(_names(text))
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _experiment_args(s: argparse.ArgumentParser) -> None:
    """The options that define an experiment (shared by ``sweep`` and ``prepare``)."""
    s.add_argument("--preset", choices=sorted(PRESETS),
                   help="start from a named experiment (demo: the dashboard's default; folder: the default for --data PATH)")
    s.add_argument("--data", help="'builtin' (2-D phantoms), 'builtin-4class' (2-D phantoms in Cheng et al.'s four "
                                  "classes), 'builtin-ct' (3-D CT phantoms, NIfTI) or a folder ROOT/images/<class>/* "
                                  "of images or NIfTI volumes (default builtin)")
    s.add_argument("--backbone", choices=BACKBONES)
    s.add_argument("--depths", type=_depths,
                   help="fine-tuning depths, e.g. 0,2,5 (default: the preset's, else all of 0-5)")
    s.add_argument("--init", help="builtin | imagenet (torchvision, downloaded into $TORCH_HOME/hub when missing) | "
                                  "xrv-densenet121 (TorchXRayVision's chest X-ray DenseNet-121, with --backbone "
                                  "densenet121) | scratch | PATH to a weights file")
    s.add_argument("--epochs", type=int)
    s.add_argument("--image-size", type=int, dest="image_size")
    s.add_argument("--folds", type=int, help="k-fold cross-validation inside the non-test data (default: hold-out)")
    s.add_argument("--head-width", type=int, dest="head_width", help="AlexNet/VGG: units of fc6/fc7 (default: the architecture's)")
    s.add_argument("--patience", type=int, help="early-stopping patience in epochs (0 = off)")
    s.add_argument("--seed", type=int)
    s.add_argument("--optimizer", choices=["sgd", "rmsprop", "adam"])
    s.add_argument("--lr", type=float)
    s.add_argument("--scheduler", choices=["none", "plateau", "cosine"], help="learning-rate schedule")
    s.add_argument("--weight-decay", type=float, dest="weight_decay")
    s.add_argument("--batch-size", type=int, dest="batch_size")
    s.add_argument("--clahe", action="store_true", default=None, help="contrast-limited histogram equalisation (Lee et al.)")
    s.add_argument("--augment", nargs="?", const="on", choices=AUGMENT_MODES, default=None,
                   help="Cheng et al.'s augmentation with a random crop: on (also a bare --augment; the folder "
                        "preset's), off (also --no-augment), or both (sweep only: every run with and without it, "
                        "the comparison of Cheng's Table 1)")
    s.add_argument("--no-augment", action="store_const", const="off", dest="augment", help="the same as --augment off")
    s.add_argument("--confounder", type=float, dest="confounder_prob", help="built-in data: P(marker | covid), 0 = off")
    s.add_argument("--per-class", type=int, dest="builtin_per_class", help="built-in data: images per class")
    s.add_argument("--skip-bad", action="store_true", default=None, dest="skip_bad", help="skip unreadable images (reported)")
    s.add_argument("--attention", action=argparse.BooleanOptionalAction, default=None,
                   help="Ouyang et al.'s online attention: the class activation map is trained against the lesion "
                        "masks of the positive class (eqs. 1-4; needs masks and a ResNet/DenseNet/3-D ResNet)")
    s.add_argument("--attention-alpha", type=float, dest="attention_alpha", help="T(A)'s slope alpha (paper: 100)")
    s.add_argument("--attention-beta", type=float, dest="attention_beta", help="T(A)'s threshold beta (paper: 0.4)")
    s.add_argument("--attention-lambda", type=float, dest="attention_lambda",
                   help="weight of the attention loss (paper: 0.5)")
    s.add_argument("--sampling", choices=list(SAMPLINGS),
                   help="training batches: uniform, size-balanced (oversample small-infection positives and "
                        "large-infection negatives, Ouyang §III-C) or dual (both, combined by their eq. 5)")
    s.add_argument("--no-prefix-cache", action="store_false", default=None, dest="prefix_cache",
                   help="recompute the frozen layers every batch (for benchmarks)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine", description="LungLens engine: train, compare and explain CNNs.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("sweep", help="train (or load from the cache) one run per fine-tuning depth and print their scores")
    _experiment_args(s)
    s.add_argument("--retrain-damaged", action="store_true", dest="retrain_damaged",
                   help="train again any cached run whose files are damaged (default: stop and name the file)")
    s.add_argument("--executor", choices=["in-process", "ray"], default="in-process",
                   help="where runs train: one after the other in this process, or as Ray tasks (README: Sweeps on Ray)")
    s.add_argument("--address", help="--executor ray: the Ray cluster to use ('auto': the one this machine joined with "
                                     "`ray start`); default: start a local Ray instance on this machine")
    s.add_argument("--gpus-per-run", type=float, dest="gpus_per_run",
                   help="--executor ray: GPUs per run (default 1 where the cluster has GPUs, else 0; 0.5 packs two)")
    s.add_argument("--cpus-per-run", type=float, dest="cpus_per_run",
                   help="--executor ray: CPU cores per run (default: a node's cores shared among its GPUs, or all of "
                        "them without GPUs; lower it to train several runs in parallel on CPU cores)")
    s.add_argument("--backbones", type=_backbone_list, metavar="A,B,...",
                   help="several backbones, comma-separated (instead of --backbone), all on the same data and split: "
                        "one of " + ", ".join(BACKBONES) + ". With --backbones or --augment both the sweep ends "
                        "with Cheng et al.'s Table 1: accuracy and per-class precision / recall / F1 with 95%% CIs "
                        "per backbone and augmentation, and the change augmentation makes")
    s.add_argument("--json", action="store_true",
                   help="print the rows as a JSON list (with --backbones or --augment both: an object whose 'runs' "
                        "are those rows, 'table' the scores with their CIs per run and 'effect' the changes "
                        "augmentation makes)")

    pr = sub.add_parser("prepare", help="compute and cache every view the dashboard shows of every depth of an "
                                        "experiment (training missing runs first), so that a live demo answers at once")
    _experiment_args(pr)
    pr.add_argument("--run", action="append", metavar="ID",
                    help="prepare these trained runs instead of an experiment (repeatable; see `python -m engine runs`)")
    pr.add_argument("--steps", type=_names, help="comma-separated steps to run (default: all): " + ", ".join(STEP_NAMES))
    pr.add_argument("--json", action="store_true", help="print the result (runs, seconds per step) as one JSON object")

    o = sub.add_parser("ouyang", help="Ouyang et al.'s comparison at one depth: plain, attention + uniform, attention + "
                                      "size-balanced and dual sampling (their Table II) and the scores by infection "
                                      "size (Table III); trains what is missing (default: --preset ouyang)")
    _experiment_args(o)
    o.add_argument("--json", action="store_true", help="print both tables as one JSON object")

    r = sub.add_parser("runs", help="list the finished runs in the cache (and any damaged ones)")
    r.add_argument("--json", action="store_true")
    r.add_argument("--verify", action="store_true", help="re-hash every file of every run against its record")
    rsub = r.add_subparsers(dest="runs_command")
    rd = rsub.add_parser("delete", help="remove one run and everything cached for it")
    rd.add_argument("run_id", metavar="ID")

    d = sub.add_parser("data", help="dataset tools")
    dsub = d.add_subparsers(dest="data_command", required=True)
    mk = dsub.add_parser("make-demo", help="write the built-in phantom dataset to a folder")
    mk.add_argument("path", type=Path)
    mk.add_argument("--data", choices=list(PHANTOM_TASKS), default=BUILTIN,
                    help=f"{BUILTIN}: normal, pneumonia, covid; {BUILTIN_4CLASS}: Cheng et al.'s normal, bacterial, "
                         "viral, covid")
    mk.add_argument("--per-class", type=int, default=300)
    mk.add_argument("--size", type=int, default=256)
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--confounder", type=float, default=0.0, help="P(marker | covid); 0 = no shortcut marker")
    ct = dsub.add_parser("make-demo-ct", help="write the built-in 3-D CT phantoms (covid, cap) as NIfTI volumes with "
                                              "lesion and lung masks to a folder")
    ct.add_argument("path", type=Path)
    ct.add_argument("--per-class", type=int, default=80)
    ct.add_argument("--seed", type=int, default=0)

    sc = sub.add_parser("score", help="score a trained run on another folder of images (an external test set)")
    sc.add_argument("--run", required=True, help="run id (see `python -m engine runs`)")
    sc.add_argument("--data", required=True, help="folder ROOT/images/<class>/* (or with a manifest.csv); all of it is "
                                                  "test data")
    sc.add_argument("--skip-bad", action="store_true", dest="skip_bad", help="skip unreadable images (reported)")
    sc.add_argument("--out", type=Path, help="also write one row per image (file, class, prediction, probabilities)")
    sc.add_argument("--json", action="store_true", help="print the criteria as JSON")

    ev = sub.add_parser("evaluate", help="external validation: score a trained run on another site's folder (metrics "
                                         "with 95%% CIs, calibration, images unlike the training data, explanation "
                                         "scores where it has lesion masks); cached")
    ev.add_argument("--run", required=True, help="run id (see `python -m engine runs`)")
    ev.add_argument("--data", required=True, help="folder ROOT/images/<class>/* (or ROOT/<class>/*, or with a "
                                                  "manifest.csv); PNG, JPEG, BMP, TIFF or DICOM; all of it is test data")
    ev.add_argument("--map", action="append", default=[], metavar="SRC=DST",
                    help="score the folder's class SRC as the run's class DST (repeatable), e.g. --map "
                         "non_covid=pneumonia; classes the run does not know are counted and left out")
    ev.add_argument("--skip-bad", action="store_true", dest="skip_bad", help="skip unreadable images (reported)")
    ev.add_argument("--no-explanations", action="store_false", dest="explanations",
                    help="skip the explanation scores on images with lesion masks")
    ev.add_argument("--out", type=Path, help="also write one row per image (file, class, prediction, probabilities, "
                                             "unlike-training flag) as CSV")
    ev.add_argument("--json", action="store_true", help="print the result as one JSON object")

    e = sub.add_parser("explain", help="write an explanation overlay for one image")
    e.add_argument("--run", required=True, help="run id (see `python -m engine runs`)")
    e.add_argument("--method", required=True, choices=list(METHODS))
    e.add_argument("--image", required=True, type=Path)
    e.add_argument("--out", required=True, type=Path)
    e.add_argument("--target", help="class name to explain (default: the predicted class)")

    rp = sub.add_parser("report", help="write one self-contained HTML report of a run (provenance, curves, Table 1 "
                                       "with CIs, calibration, projections, filters, explanations); opens offline")
    rp.add_argument("--run", required=True, help="run id (see `python -m engine runs`)")
    rp.add_argument("--out", required=True, type=Path, help="the HTML file to write, e.g. report.html")

    er = sub.add_parser("explain-report", help="score every explanation method of a run: localisation against lesion "
                                               "masks and baselines, faithfulness, sanity checks (cached)")
    er.add_argument("--run", required=True, help="run id (see `python -m engine runs`)")
    er.add_argument("--split", default="test", choices=["train", "val", "test"])
    er.add_argument("--methods", default="all", help=f"all, or a comma-separated list of {', '.join(METHODS)}")
    er.add_argument("--json", action="store_true", help="print the rows as a JSON list")
    return p


def _experiment(args: argparse.Namespace, default_preset: str | None = None,
                both: bool = False) -> tuple[RunConfig, list[int]]:
    """The base config and depths the experiment options name (without --preset: folder for --data PATH, ct for
    --data builtin-ct unless ``default_preset`` is a 3-D one, else ``default_preset``, else RunConfig's defaults).
    ``--augment both`` is accepted when ``both`` (the base then keeps the preset's augmentation)."""
    if args.augment == "both" and not both:
        raise ConfigError("--augment both (every run with and without augmentation) applies to `sweep` only: give "
                          "--augment on or off here.")
    volume_default = default_preset if default_preset and preset(default_preset).config.data == BUILTIN_CT else "ct"
    by_data = {BUILTIN: default_preset, BUILTIN_4CLASS: default_preset, None: default_preset,
               BUILTIN_CT: volume_default}
    name = args.preset or by_data.get(args.data, "folder")
    base = preset(name).config if name else RunConfig()
    depths = args.depths or (list(preset(name).depths) if name else list(range(N_BLOCKS + 1)))
    fields = ["data", "backbone", "init", "epochs", "image_size", "head_width", "patience", "seed", "optimizer", "lr",
              "scheduler", "weight_decay", "batch_size", "clahe", "confounder_prob", "builtin_per_class", "skip_bad",
              "prefix_cache", "attention", "attention_alpha", "attention_beta", "attention_lambda", "sampling"]
    changes = {f: getattr(args, f) for f in fields if getattr(args, f) is not None}
    if args.augment in ("on", "off"):
        changes["augment"] = args.augment == "on"
    if args.folds is not None:
        changes["folds"] = args.folds
    if "init" in changes and changes["init"] != "builtin" and "head_width" not in changes and base.head_width:
        changes["head_width"] = None  # pretrained torchvision weights come with the architecture's own head
    return base.replace(**changes), depths


class _Bars:
    """One tqdm bar per run in progress (several at once on Ray), on stderr."""

    def __init__(self, configs: list[RunConfig]):
        self.configs = configs
        self.bars: dict[int, tuple[str, tqdm]] = {}

    def progress(self, i: int, cfg: RunConfig):
        """The progress callback of run ``i`` of the sweep."""
        def report(p: Progress) -> None:
            kind = "pretrain" if p.phase.startswith("pretrain") else "run"
            if i in self.bars and (p.phase == RUN_DONE or self.bars[i][0] != kind):  # close the finished bar
                self.bars.pop(i)[1].close()
            if p.phase == RUN_DONE:
                return
            if i not in self.bars:
                label = ("pretrain builtin backbone" if kind == "pretrain"
                         else f"{cfg.backbone} depth {cfg.depth}" + (" augmented" if cfg.augment else ""))
                self.bars[i] = (kind, tqdm(total=p.epochs * p.batches, desc=f"[{i + 1}/{len(self.configs)}] {label}",
                                           unit="batch", file=sys.stderr, dynamic_ncols=True))
            current = self.bars[i][1]
            current.n = (p.epoch - 1) * p.batches + p.batch
            if p.metrics:
                current.set_postfix(epoch=p.epoch, val_loss=f"{p.metrics.get('val_loss', float('nan')):.3f}",
                                    test_acc=f"{p.metrics.get('test_acc', float('nan')):.3f}")
            current.refresh()
        return report

    def close(self) -> None:
        """Close every bar still open."""
        for _, open_bar in self.bars.values():
            open_bar.close()


def _sweep_configs(args: argparse.Namespace) -> tuple[list[RunConfig], bool]:
    """The sweep's configs, and whether it compares backbones or augmentation (``--backbones``, ``--augment both``):
    then one run per backbone x augmentation x depth (x fold), on the same data and split."""
    base, depths = _experiment(args, both=True)
    if args.backbones is None and args.augment != "both":
        return sweep_configs(base, depths), False
    if args.backbones is not None and args.backbone is not None:
        raise ConfigError("--backbone names one backbone, --backbones several: give one of them.")
    from .cheng import AUGMENT, backbone_configs

    sides = AUGMENT if args.augment == "both" else (base.augment,)
    return backbone_configs(base, args.backbones or [base.backbone], depths, sides), True


def _null_nan(table: pd.DataFrame) -> list[dict]:
    """A table's rows as JSON-able dicts, undefined values as None."""
    return table.astype(object).where(table.notna(), None).to_dict("records")


def _comparison(rows: list, as_json: bool) -> int:
    """Print Cheng et al.'s Table 1 of a sweep's runs: per class, with and without augmentation and the change."""
    from .cheng import augmentation_effect, augmentation_table, class_order, improved, table1_view

    runs = [r.run for r in rows]
    table, effect = augmentation_table(runs), augmentation_effect(runs)
    sweep = [{**r.as_dict(), "augment": r.run.config.augment} for r in rows]
    if as_json:
        print(json.dumps({"runs": sweep, "table": _null_nan(table), "effect": _null_nan(effect)}, indent=2,
                         default=float))
        return 0
    columns = [*TABLE_COLUMNS[:3], "augment", *TABLE_COLUMNS[3:]]
    print(pd.DataFrame(sweep)[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    n_test = ", ".join(str(n) for n in table["n_test"].unique())
    for name in class_order(runs[0]):
        print(f"\nCheng et al.'s Table 1 on this data, {name} one-vs-rest: test split (n = {n_test}), 95% "
              "percentile-bootstrap CIs (1000 resamples of the test images; the change's are paired); seconds: "
              "training wall time")
        print(table1_view(table, effect, name).astype(object).fillna("").to_string(index=False))
    gained, pairs, mean = improved(effect)
    if pairs:
        print(f"\nWith augmentation the test accuracy rose in {gained} of {pairs} backbone run(s); mean change "
              f"{mean:+.3f} (Cheng et al.: 7 of 10 backbones, about +0.01).")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    configs, compare = _sweep_configs(args)
    bars = _Bars(configs)
    progress = bars.progress

    executor = None
    if args.executor == "ray":
        from .ray_executor import RayExecutor  # Ray is an optional dependency

        executor = RayExecutor(args.address, gpus_per_run=args.gpus_per_run, cpus_per_run=args.cpus_per_run)
    elif args.address is not None or args.gpus_per_run is not None or args.cpus_per_run is not None:
        raise ConfigError("--address, --gpus-per-run and --cpus-per-run apply to --executor ray only: add it.")
    try:  # stdout carries only the table (Ray prints a dead worker's report there): the rest goes to stderr
        with contextlib.redirect_stdout(sys.stderr):
            rows = run_sweep(configs, progress, status=lambda msg: tqdm.write(msg, file=sys.stderr),
                             retrain_damaged=args.retrain_damaged, executor=executor)
    finally:
        bars.close()
        if executor is not None:
            executor.close()
    if compare:
        return _comparison(rows, args.json)
    table = [r.as_dict() for r in rows]
    if args.json:
        print(json.dumps(table, indent=2, default=float))
    else:
        df = pd.DataFrame(table)[TABLE_COLUMNS]
        print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


def _ouyang(args: argparse.Namespace) -> int:
    from .guidance import infection_ratios
    from .ouyang import TABLE_METRICS, format_mean_sd, missing_configs, size_table, variant_table
    from .runs import dataset_for

    base, depths = _experiment(args, default_preset="ouyang")
    base = base.replace(depth=depths[0])
    ds = dataset_for(base)
    missing = missing_configs(base, ds)
    if missing:
        bars = _Bars(missing)
        try:
            with contextlib.redirect_stdout(sys.stderr):
                run_sweep(missing, bars.progress, status=lambda msg: tqdm.write(msg, file=sys.stderr))
        finally:
            bars.close()
    table2 = variant_table(base, ds)
    table3 = size_table(base, infection_ratios(ds, base.image_size), ds)
    if args.json:
        print(json.dumps({"variants": table2.to_dict("records"), "infection_size": table3.to_dict("records")},
                         indent=2, default=float))
        return 0
    print(f"Table II ({base.backbone}, depth {base.depth}, {base.folds} fold(s); test split, mean ± sd over folds)")
    print(format_mean_sd(table2, TABLE_METRICS).to_string(index=False))
    print("\nTable III (by infection / lung volume ratio)")
    print(format_mean_sd(table3, ("AUC", "ACC", "sensitivity", "specificity")).to_string(index=False))
    return 0


def _experiment_options_given(args: argparse.Namespace) -> list[str]:
    """The experiment options (``_experiment_args``) set on the command line, as typed (e.g. ``--per-class``)."""
    probe = argparse.ArgumentParser(add_help=False)
    _experiment_args(probe)
    return [a.option_strings[0] for a in probe._actions if getattr(args, a.dest, None) is not None]


def _prepare(args: argparse.Namespace) -> int:
    from .prepare import prepare_experiment, prepare_runs, select_steps
    from .runs import load_run

    steps = [s.name for s in select_steps(args.steps)]  # an unknown step fails before any work
    if args.run:
        given = _experiment_options_given(args)
        if given:
            raise ConfigError(f"--run names trained runs; {', '.join(given)} describe an experiment: use one or the "
                              "other.")
        runs = [load_run(r) for r in dict.fromkeys(args.run)]  # an unknown id fails before any work
    bar = tqdm(total=100, file=sys.stderr, dynamic_ncols=True,
               bar_format="{percentage:3.0f}%|{bar}| [{elapsed}<{remaining}] {desc}")

    def progress(fraction: float, text: str) -> None:
        bar.n = round(100 * fraction, 2)
        bar.set_description_str(text, refresh=False)
        bar.refresh()

    try:
        if args.run:
            result = prepare_runs(runs, steps, progress)
        else:
            base, depths = _experiment(args, "demo")
            result = prepare_experiment(base, depths, steps, progress,
                                        status=lambda msg: tqdm.write(msg, file=sys.stderr))
    except KeyboardInterrupt:
        print("\nstopped: the views finished so far stay cached; run the same command again to go on",
              file=sys.stderr)
        return 130
    finally:
        bar.close()
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
        return 0
    table = result.table()
    print(table[["step", "runs", "seconds", "label"]].to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    trained = f", after training {result.trained} run(s) in {result.train_seconds:.1f} s" if result.trained else ""
    print(f"total: {result.seconds:.1f} s for {len(result.runs)} run(s){trained}")
    for row in table.itertuples():
        if row.notes:
            print(f"skipped in {row.step}: {row.notes}")
    return 0


def _runs(args: argparse.Namespace) -> int:
    if args.runs_command == "delete":
        delete_run(args.run_id)
        print(f"deleted run {args.run_id}")
        return 0
    df = list_runs()
    damaged = damaged_runs("full" if args.verify else "size")
    if not df.empty:
        df = df[~df["run"].isin(damaged["run"])]
    if args.json:
        print(df.to_json(orient="records", indent=2) if len(df) else "[]")
    elif df.empty and damaged.empty:
        print("No finished runs yet. Train some with: python -m engine sweep --preset demo")
    elif not df.empty:
        print(df.drop(columns=["finished"]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.verify and not args.json:
        print(f"verified {len(df) + damaged['run'].nunique()} run(s) file by file: {damaged['run'].nunique()} damaged")
    if not damaged.empty:  # on stderr, also with --json: stdout keeps the list of usable runs
        print(f"\n{damaged['run'].nunique()} damaged run(s), not used:", file=sys.stderr)
        for row in damaged.itertuples():
            print(f"  {row.run}: {row.problem}", file=sys.stderr)
        print("Fix: train them again with `python -m engine sweep ... --retrain-damaged` or remove one with "
              "`python -m engine runs delete ID`.", file=sys.stderr)
    return 1 if args.verify and not damaged.empty else 0


def _make_demo_ct(args: argparse.Namespace) -> int:
    from .data.phantom_ct import CTPhantomSpec, write_ct_dataset

    spec = CTPhantomSpec(n_per_class=args.per_class, seed=args.seed)
    with tqdm(total=args.per_class * len(spec.classes), desc="CT phantoms", unit="volume", file=sys.stderr) as bar:
        root = write_ct_dataset(args.path, spec, lambda done, total: bar.update(done - bar.n))
    print(root)
    return 0


def _make_demo(args: argparse.Namespace) -> int:
    from .data.phantom import PhantomSpec, write_phantom_dataset

    if args.data_command == "make-demo-ct":
        return _make_demo_ct(args)
    spec = PhantomSpec(task=PHANTOM_TASKS[args.data], n_per_class=args.per_class, image_size=args.size,
                       seed=args.seed, confounder_class="covid" if args.confounder > 0 else None,
                       confounder_prob=args.confounder)
    with tqdm(total=args.per_class * len(spec.classes), desc="phantoms", unit="img", file=sys.stderr) as bar:
        root = write_phantom_dataset(args.path, spec, lambda done, total: bar.update(done - bar.n))
    print(root)
    return 0


def _score(args: argparse.Namespace) -> int:
    from .runs import load_run
    from .scoring import score_run
    from .store import atomic_write_bytes

    metrics, rows = score_run(load_run(args.run), args.data, skip_bad=args.skip_bad)
    if args.out:
        atomic_write_bytes(args.out, rows.to_csv(index=False).encode())
    if args.json:
        print(json.dumps(metrics, indent=2, default=float))
    else:
        print(f"run {args.run} on {args.data} ({metrics.pop('n')} images): "
              + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .external import evaluate_view, external_rows, external_view, parse_mapping
    from .runs import load_run
    from .store import atomic_write_bytes

    mapping = parse_mapping(args.map)
    view = external_view(load_run(args.run), args.data, mapping, skip_bad=args.skip_bad)
    result = evaluate_view(view, explanations=args.explanations, status=lambda msg: print(msg, file=sys.stderr))
    if args.out:
        atomic_write_bytes(args.out, external_rows(view, result).to_csv(index=False).encode())
    if args.json:
        print(json.dumps(result, indent=2, allow_nan=False))
    else:
        print(external_text(result))
    return 0


def _interval(value: float | None, ci: list | None = None) -> str:
    if value is None:
        return "undefined"
    return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and ci[0] is not None else "")


def external_text(result: dict) -> str:
    """The human-readable summary of ``evaluate``'s result."""
    left = ", ".join(f"{c} {k}" for c, k in result["left_out"].items())
    lines = [f"run {result['run']} on {result['data']}: {result['n']} images scored"
             + (f", {result['n_left_out']} left out (classes the run does not know: {left})" if left else ""),
             f"positive class: {result['positive']}; 95% percentile-bootstrap intervals ({result['n_boot']} resamples)"]
    lines += [f"  {k:<13}{_interval(v, result['ci'][k])}" for k, v in result["metrics"].items() if k != "per_class"]
    cal = result["calibration"]
    scaled = (f"; after temperature scaling (T = {cal['temperature']:.2f}, fitted on the run's validation split): "
              f"ECE {cal['ece_scaled']:.3f}, Brier {cal['brier_scaled']:.3f}") if cal.get("temperature") else ""
    lines.append(f"calibration (positive class): ECE {cal['ece']:.3f}, Brier {cal['brier']:.3f}{scaled}")
    unlike = result["unlike"]
    lines.append(f"unlike the training data: {result['unlike_share']:.1%} of the images (deep-feature distance above "
                 f"the {unlike['percentile']:g}th percentile of the validation split, {unlike['method']})")
    if result["unlike_share"] > 0.5:
        lines.append("  warning: most images are unlike the training data; these scores say little about how the "
                     "model would do on data like its own")
    if result.get("explanation"):
        ex = result["explanation"]
        lines.append(f"explanations ({ex['method']}) on {ex['n']} images with lesion masks: consistency "
                     f"{_interval(ex['consistency'])}, lung-area-matched baseline "
                     f"{_interval(ex['lung_area_matched_baseline'])}, random baseline {_interval(ex['random_baseline'])}"
                     f", pointing game {_interval(ex['pointing_game'])}; beats "
                     f"chance: {'yes' if ex['beats_chance'] else 'no'}")
    return "\n".join(lines)


def _explain(args: argparse.Namespace) -> int:
    from .explain_cli import explain_to_file

    result = explain_to_file(args.run, args.method, args.image, args.out, target=args.target)
    probs = ", ".join(f"{c} {p:.3f}" for c, p in result["probabilities"].items())
    print(f"{args.out}: {result['method']} map for class {result['target']} (predicted {result['predicted']}; {probs})")
    return 0


def _explain_report(args: argparse.Namespace) -> int:
    from .explain_cli import report_rows, report_text

    rows = report_rows(args.run, args.split, args.methods)
    print(json.dumps(rows, indent=2) if args.json else report_text(rows))
    return 0


def _report(args: argparse.Namespace) -> int:
    from .report_cli import report_message, report_to_file

    path = report_to_file(args.run, args.out)
    print(report_message(args.run, path))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "sweep":
            return _sweep(args)
        if args.command == "runs":
            return _runs(args)
        if args.command == "ouyang":
            return _ouyang(args)
        if args.command == "prepare":
            return _prepare(args)
        if args.command == "data":
            return _make_demo(args)
        if args.command == "score":
            return _score(args)
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "explain-report":
            return _explain_report(args)
        if args.command == "report":
            return _report(args)
        return _explain(args)
    except LungLensError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
