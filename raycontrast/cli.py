"""The ``raycontrast`` command line: train, tune, eval, export, convert.

Each subcommand is thin: it parses arguments and calls one public function of the package.
"""

from __future__ import annotations

import argparse
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
    run_training(cfg, address=args.address)
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from raycontrast.tune import run_sweep

    run_sweep(args.sweep, args.overrides, resume=args.resume, address=args.address)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from raycontrast.config import load_config
    from raycontrast.eval import run_eval

    cfg = load_config(args.config, args.overrides)
    run_eval(cfg, args.checkpoint, out=args.out)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
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


def _cmd_config(args: argparse.Namespace) -> int:
    rows = describe_config()
    width = max(len(r[0]) for r in rows)
    for key, tp, default, help_text in rows:
        print(f"{key:<{width}}  {tp:<18} {default:<22} {help_text}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raycontrast",
        description="Semantic segmentation with cross-image pixel contrast, trained on Ray.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    overrides_help = "dotted config overrides, e.g. train.iterations=100 contrast.memory=both"
    address_help = "Ray cluster address (default: $RAY_ADDRESS, else a local Ray instance)"

    p = sub.add_parser("train", help="train a segmentor (default: experiments/synthetic.yaml)")
    p.add_argument("config", nargs="?", help="experiment YAML")
    p.add_argument("overrides", nargs="*", help=overrides_help)
    p.add_argument("--address", default=None, help=address_help)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("tune", help="run a Ray Tune sweep")
    p.add_argument("sweep", help="sweep YAML (see experiments/sweeps/)")
    p.add_argument("overrides", nargs="*", help="overrides of the base experiment config")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep")
    p.add_argument("--address", default=None, help=address_help)
    p.set_defaults(func=_cmd_tune)

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

    p = sub.add_parser("config", help="list every config key with its type, default and meaning")
    p.set_defaults(func=_cmd_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from raycontrast.data import DatasetError

    try:
        return args.func(args)
    except ConfigError as err:  # includes checkpoint and model errors
        print(f"raycontrast: error: {err}", file=sys.stderr)
        return 2
    except DatasetError as err:
        print(f"raycontrast: dataset error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        from raycontrast.train import NonFiniteLoss, TrainingInterrupted

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


if __name__ == "__main__":
    sys.exit(main())
