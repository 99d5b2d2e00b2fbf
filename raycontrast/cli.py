"""The ``raycontrast`` command line: train, tune, study, eval, export, convert, fake-data, predict,
report.

Each subcommand is thin: it parses arguments and calls one public function of the package.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from raycontrast.config import DEFAULT_EXPERIMENT, ConfigError, describe_config

__all__ = ["main"]


def _split_config(config: str | None, overrides: list[str]) -> tuple[str, list[str]]:
    """``raycontrast train key=value ...`` (no CONFIG): the first word is an override, not a file."""
    if config is not None and "=" in config and not config.endswith((".yaml", ".yml")):
        return DEFAULT_EXPERIMENT, [config, *overrides]
    return config or DEFAULT_EXPERIMENT, list(overrides)


def _cmd_train(args: argparse.Namespace) -> int:
    from raycontrast.config import load_config
    from raycontrast.train import run_training

    cfg = load_config(*_split_config(args.config, args.overrides))
    _quiet_console(args.verbose or cfg.log.verbose)
    if args.dry_run:
        from raycontrast.train.launcher import dry_run

        dry_run(cfg, address=args.address)
        return 0
    run_training(cfg, address=args.address)
    return 0


def _quiet_console(verbose: bool) -> None:
    """Hide Ray's known-harmless lines unless ``--verbose`` (see raycontrast.console)."""
    from raycontrast.console import install

    install(verbose)


def _cmd_tune(args: argparse.Namespace) -> int:
    from raycontrast.tune import run_sweep

    _quiet_console(args.verbose)

    if args.dry_run:
        from raycontrast.tune.sweep import check_sweep, load_sweep

        sweep = load_sweep(args.sweep, list(args.overrides))
        report = check_sweep(sweep, address=args.address)
        print(report.describe())
        print(
            f"[{sweep.config.name}] dry run: every check passed; search space over "
            f"{', '.join(sweep.space)}; metric {sweep.config.metric} ({sweep.config.mode}); "
            f"results would go to {sweep.root}"
        )
        return 0
    run_sweep(args.sweep, args.overrides, resume=args.resume, address=args.address)
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    from raycontrast.tune import run_study

    _quiet_console(args.verbose)

    if args.dry_run:
        from raycontrast.tune.study import check_study, describe_study, load_study

        study = load_study(args.study, list(args.overrides))
        reports = check_study(study, address=args.address)
        if reports:
            print(reports[0].describe())
        print(describe_study(study))
        print(f"[{study.config.name}] dry run: every check passed for every arm")
        return 0
    run_study(
        args.study,
        args.overrides,
        resume=args.resume,
        address=args.address,
        analyse_only=args.analyse,
    )
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from raycontrast.config import load_config
    from raycontrast.eval import run_eval

    cfg = load_config(args.config, args.overrides)
    run_eval(cfg, args.checkpoint, out=args.out)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    if args.backbone:
        from raycontrast.models.backbone_export import export_backbone

        export_backbone(args.checkpoint, args.out)
        return 0
    from raycontrast.models import export_checkpoint

    export_checkpoint(args.checkpoint, fmt=args.format, out=args.out)
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from raycontrast.data import convert_dataset

    convert_dataset(
        dataset=args.dataset,
        root=args.root,
        split=args.split,
        out=args.out,
        rows_per_shard=args.rows_per_shard,
        overrides=args.overrides,
    )
    return 0


def _cmd_fake_data(args: argparse.Namespace) -> int:
    from raycontrast.data.fake import write_fake_dataset

    tree = write_fake_dataset(
        args.like, args.out, args.n, n_val=args.n_val, seed=args.seed, scale=args.scale
    )
    print(
        f"wrote {len(tree.files)} files ({args.like} layout) to {tree.root} in {tree.seconds:.1f} s"
    )
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from raycontrast.eval.predict import PredictError, predict

    try:
        predict(
            args.model,
            args.input,
            args.out,
            overrides=args.overrides,
            batch_size=args.batch_size,
            probs=args.probs,
            alpha=args.alpha,
            skip_bad=args.skip_bad,
            device=args.device,
        )
    except PredictError as err:
        print(f"raycontrast: error: {err}", file=sys.stderr)
        return 2
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from raycontrast.eval.compare import ReportError, report

    try:
        report(args.runs, out=args.out)
    except ReportError as err:
        print(f"raycontrast: error: {err}", file=sys.stderr)
        return 2
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    if args.keys:
        rows = describe_config()
        width = max(len(r[0]) for r in rows)
        for key, tp, default, help_text in rows:
            print(f"{key:<{width}}  {tp:<18} {default:<22} {help_text}")
        return 0
    import yaml

    from raycontrast.config import config_to_dict, config_warnings, load_config

    config, overrides = _split_config(args.config, args.overrides)
    cfg = load_config(config, overrides)
    print(f"# resolved from {config}" + (f" + {' '.join(overrides)}" if overrides else ""))
    print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
    for warning in config_warnings(cfg):
        print(f"# warning: {warning}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raycontrast",
        description="Semantic segmentation with cross-image pixel contrast, trained on Ray.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    overrides_help = "dotted config overrides, e.g. train.iterations=100 contrast.memory=both"
    address_help = "Ray cluster address (default: $RAY_ADDRESS, else a local Ray instance)"

    dry_help = "run every check, print the resolved config and the resources it would take, exit"
    verbose_help = (
        "show Ray's own console lines too (hidden by default: see docs/how-to/tracking.md)"
    )
    p = sub.add_parser(
        "train", help="train a segmentor (default: the embedded synthetic experiment)"
    )
    p.add_argument(
        "config", nargs="?", help="experiment YAML (default: the embedded synthetic.yaml)"
    )
    p.add_argument("overrides", nargs="*", help=overrides_help)
    p.add_argument("--address", default=None, help=address_help)
    p.add_argument("--dry-run", action="store_true", help=dry_help)
    p.add_argument("--verbose", action="store_true", help=verbose_help)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("tune", help="run a Ray Tune sweep")
    p.add_argument("sweep", help="sweep YAML (see experiments/sweeps/)")
    p.add_argument("overrides", nargs="*", help="overrides of the base experiment config")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep")
    p.add_argument("--address", default=None, help=address_help)
    p.add_argument("--dry-run", action="store_true", help=dry_help)
    p.add_argument("--verbose", action="store_true", help=verbose_help)
    p.set_defaults(func=_cmd_tune)

    p = sub.add_parser(
        "study", help="multi-seed study: arms x seeds as Tune trials, intervals, paired tests"
    )
    p.add_argument("study", help="study YAML (see experiments/studies/)")
    p.add_argument("overrides", nargs="*", help="overrides of the base experiment of every run")
    p.add_argument("--resume", action="store_true", help="continue an interrupted study")
    p.add_argument(
        "--analyse", action="store_true", help="run nothing: redo the tables and plots from disk"
    )
    p.add_argument("--dry-run", action="store_true", help=dry_help)
    p.add_argument("--address", default=None, help=address_help)
    p.add_argument("--verbose", action="store_true", help=verbose_help)
    p.set_defaults(func=_cmd_study)

    p = sub.add_parser("eval", help="evaluate a checkpoint (per-class IoU table + JSON)")
    p.add_argument("config", help="experiment YAML (dataset and inference settings)")
    p.add_argument("checkpoint", help="checkpoint directory or state.pt file")
    p.add_argument("overrides", nargs="*", help=overrides_help)
    p.add_argument("--out", default=None, help="JSON output (default: next to the checkpoint)")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("export", help="export a checkpoint without the projection head")
    p.add_argument("checkpoint", help="checkpoint directory or state.pt file")
    p.add_argument("--format", choices=("torchscript", "exported-program"), default="torchscript")
    p.add_argument("--out", required=True, help="output file")
    p.add_argument(
        "--backbone",
        action="store_true",
        help="write only the backbone, as a timm state dict (for model.pretrained=FILE); "
        "CHECKPOINT may be a run directory",
    )
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("convert", help="convert a dataset split to Parquet shards")
    p.add_argument(
        "--dataset", required=True, help="synthetic | cityscapes | ade20k | voc | folder"
    )
    p.add_argument("--root", default="", help="dataset root (its standard layout)")
    p.add_argument("--split", required=True, help="split name, e.g. train or val")
    p.add_argument("--out", required=True, help="output folder (shards go to OUT/SPLIT/)")
    p.add_argument("--rows-per-shard", type=int, default=256, help="rows per Parquet file")
    p.add_argument("overrides", nargs="*", help="data.* overrides, e.g. data.class_names=[a,b]")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser(
        "fake-data", help="write a fake Cityscapes / ADE20K tree at real sizes (benchmarks, tests)"
    )
    p.add_argument("--like", required=True, choices=("cityscapes", "ade20k"))
    p.add_argument("--out", required=True, help="new or empty folder (or a previous fake tree)")
    p.add_argument("--n", type=int, required=True, help="training images")
    p.add_argument("--n-val", type=int, default=None, help="validation images (default n // 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=float, default=1.0, help="shrink every size (tests)")
    p.set_defaults(func=_cmd_fake_data)

    p = sub.add_parser("predict", help="segment images with a trained model: label PNGs + overlays")
    p.add_argument("model", help="run directory, checkpoint, or exported .pt / .pt2 model")
    p.add_argument(
        "--input", required=True, help="image, folder of images, .parquet file or folder of shards"
    )
    p.add_argument("--out", required=True, help="output folder (labels/, overlays/, probs/)")
    p.add_argument("overrides", nargs="*", help="eval.* overrides, e.g. eval.mode=slide")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass")
    p.add_argument("--probs", action="store_true", help="also write probs/<name>.npy (float16)")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the labels")
    p.add_argument("--skip-bad", action="store_true", help="leave unreadable images out")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: auto)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("report", help="redraw a run's plots; compare several runs side by side")
    p.add_argument("runs", nargs="+", help="run directories (<storage_path>/<name>)")
    p.add_argument(
        "--out",
        default=None,
        help="output folder (one run: default RUN/plots; several: default ./comparison)",
    )
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser(
        "config", help="print the resolved config of an experiment (--keys: every key documented)"
    )
    p.add_argument(
        "config", nargs="?", help="experiment YAML (default: the embedded synthetic.yaml)"
    )
    p.add_argument("overrides", nargs="*", help=overrides_help)
    p.add_argument(
        "--keys", action="store_true", help="list every config key with its type, default, meaning"
    )
    p.set_defaults(func=_cmd_config)
    return parser


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse, accepting ``key=value`` overrides (and CONFIG) after options such as ``--address X``,
    which argparse alone rejects."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides"):
        for item in extra:
            if "=" in item and not item.startswith("-"):
                args.overrides.append(item)
            elif getattr(args, "config", "") is None and not item.startswith("-"):
                args.config = item
            else:
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit status (2: the user's mistake, 1: a failure, 130: Ctrl-C,
    141: the reader of the output went away, as with ``| head``)."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, not at exit, where a closed pipe cannot be caught
        return code
    except BrokenPipeError:
        _quiet_stdout()
        return 141


def _quiet_stdout() -> None:
    """After ``| head`` closed the pipe: send what is left to /dev/null, so that the interpreter's
    final flush raises nothing (Python's documented recipe for SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (pytest's capture)
        pass


def _main(argv: Sequence[str] | None) -> int:
    args = _parse(argv)
    if getattr(args, "no_progress", False):
        os.environ["RAYCONTRAST_PROGRESS"] = "0"
    from raycontrast.data import DatasetError

    try:
        return args.func(args)
    except ConfigError as err:  # includes checkpoint and model errors
        _stop_local_ray()
        print(f"raycontrast: error: {err}", file=sys.stderr)
        return 2
    except DatasetError as err:
        _stop_local_ray()
        print(f"raycontrast: dataset error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        from raycontrast.train import (
            NonFiniteLoss,
            TrainingInterrupted,
            TrialsFailed,
            WorkerFailure,
        )

        if isinstance(err, (WorkerFailure, TrialsFailed)):
            from raycontrast.train._cluster import shutdown_local

            shutdown_local()  # Ray's own log lines arrive first: the cause is the last line
            print(f"raycontrast: error: {err}", file=sys.stderr)
            return 1
        if isinstance(err, TrainingInterrupted):
            print(f"raycontrast: {err}", file=sys.stderr)
            return 130
        if not isinstance(err, NonFiniteLoss):
            raise
        print(f"raycontrast: training stopped: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("raycontrast: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def _stop_local_ray() -> None:
    """A worker's user error reached the driver: flush Ray's own log lines first, so that the
    message is the last line."""
    cluster = sys.modules.get("raycontrast.train._cluster")
    if cluster is not None:
        cluster.shutdown_local()


if __name__ == "__main__":
    sys.exit(main())
