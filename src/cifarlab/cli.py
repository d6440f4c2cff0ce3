"""The `cifarlab` command: parses arguments and calls one library function per subcommand.

    cifarlab train baseline --data cifar-10-python.tar.gz --epochs 50
    cifarlab evaluate runs/baseline --data cifar-10-python.tar.gz
    cifarlab data info --data cifar-10-python.tar.gz
    cifarlab train baseline --data my_photos/ --image-size 64

Errors reach the user as one sentence: exit code 2 for bad input, 1 for failures.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cifarlab.errors import RunError, UserError

# TensorFlow's start-up chatter (CUDA probes on a CPU machine) says nothing a user can act on.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


DATASETS = ("cifar10", "cifar100", "fashion_mnist", "mnist")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help).\n")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text}")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text}")
    return value


def add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        type=Path,
        help="dataset archive, or folder (also of class folders); default: cache",
    )
    parser.add_argument(
        "--dataset", choices=DATASETS, help="standard dataset to read (default cifar10)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for split and training")
    parser.add_argument("--val-fraction", type=fraction, default=0.2, help="validation share")
    parser.add_argument(
        "--test-fraction", type=fraction, help="test share of class folders without test/"
    )
    parser.add_argument("--image-size", type=positive_int, help="model input side in pixels")


def add_training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=positive_int, help="epochs (default 50)")
    parser.add_argument("--batch-size", type=positive_int, help="training batch size")
    parser.add_argument("--learning-rate", type=float, help="Adam learning rate")
    parser.add_argument(
        "--precision", choices=("auto", "float32", "bfloat16", "float16"), default="auto"
    )
    parser.add_argument("--quiet", action="store_true", help="one log line per epoch")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cifarlab", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser("train", help="train one experiment into a run folder")
    train.add_argument("experiment", help="baseline, augmented or batchnorm (or A, B, C)")
    train.add_argument("--out", type=Path, help="run folder (default runs/<experiment>)")
    train.add_argument("--overwrite", action="store_true", help="replace a finished run")
    train.add_argument("--tensorboard", action="store_true", help="also write TensorBoard logs")
    add_data_options(train)
    add_training_options(train)
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", help="evaluate a run's best checkpoint")
    evaluate.add_argument("run_dir", type=Path)
    evaluate.add_argument("--data", type=Path, help="dataset archive or folder (default: cache)")
    evaluate.set_defaults(handler=_evaluate)

    data = commands.add_parser("data", help="inspect the dataset")
    data_commands = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    info = data_commands.add_parser("info", help="where the data is; counts per split and class")
    add_data_options(info)
    info.set_defaults(handler=_data_info)
    return parser


def experiment_config(args: argparse.Namespace):
    """The named experiment with the command line's overrides applied."""
    from cifarlab import config

    return config.override(
        config.experiment(args.experiment),
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        val_fraction=args.val_fraction,
        precision=args.precision,
        **data_overrides(args),
    )


def data_overrides(args: argparse.Namespace) -> dict:
    """The dataset settings given on the command line (None where left out)."""
    return {
        "dataset": args.dataset,
        "image_size": args.image_size,
        "test_fraction": args.test_fraction,
    }


def _train(args: argparse.Namespace) -> int:
    from cifarlab import data, train

    config = experiment_config(args)
    dataset = data.load_for(config, args.data, quiet=args.quiet)
    out_dir = args.out or Path("runs") / config.name
    train.run(config, out_dir, dataset, args.overwrite, args.quiet, args.tensorboard)
    print(f"Run folder: {out_dir}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from cifarlab import data, evaluate
    from cifarlab.config import Config

    config_path = args.run_dir / "config.json"
    if not config_path.is_file():
        raise UserError(f"{args.run_dir} is not a run folder (it has no config.json).")
    config = Config.load(config_path)
    dataset = data.load_for(config, args.data)
    evaluate.run(args.run_dir, dataset)
    return 0


def _data_info(args: argparse.Namespace) -> int:
    from cifarlab import config, data

    settings = config.override(
        config.Config(), seed=args.seed, val_fraction=args.val_fraction, **data_overrides(args)
    )
    print(data.describe(data.load_for(settings, args.data)))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except UserError as error:
        print(f"cifarlab: {error}", file=sys.stderr)
        return 2
    except RunError as error:
        print(f"cifarlab: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cifarlab: interrupted; rerun the same command to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
