"""The `cifarlab` command: parses arguments and calls one library function per subcommand.

    cifarlab train baseline --data cifar-10-python.tar.gz --epochs 50
    cifarlab evaluate runs/baseline --data cifar-10-python.tar.gz
    cifarlab data info --data cifar-10-python.tar.gz
    cifarlab study --data cifar-10-python.tar.gz --out runs --epochs 50
    cifarlab report runs/baseline runs/augmented runs/batchnorm --out runs
    cifarlab predict runs/baseline photo.jpg photos/ --top-k 3
    cifarlab serve runs/baseline runs/batchnorm --port 8000
    cifarlab sweep baseline --grid learning_rate=1e-3,3e-3 --repeats 3 --data cifar-10-python.tar.gz
    cifarlab train baseline --data my_photos/ --image-size 64

Errors reach the user as one sentence: exit code 2 for bad input, 1 for failures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
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


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of at least 0, got {text}")
    return value


def add_ray_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ray-address", help="existing Ray cluster, HOST:6379 (default: local)")
    parser.add_argument("--workers", type=positive_int, help="runs at once (default: all fit)")
    parser.add_argument("--cpus-per-run", type=non_negative_float, default=1.0)
    parser.add_argument("--gpus-per-run", type=non_negative_float, default=0.0)


def ray_options(args: argparse.Namespace):
    from cifarlab.scale.ray_jobs import RayOptions

    return RayOptions(args.ray_address, args.workers, args.cpus_per_run, args.gpus_per_run)


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

    sweep = commands.add_parser("sweep", help="train a grid of settings × seeds as Ray tasks")
    sweep.add_argument("experiment", help="baseline, augmented or batchnorm (or A, B, C)")
    sweep.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                       help="a setting and its values; repeat for more settings")  # fmt: skip
    sweep.add_argument("--repeats", type=positive_int, default=1, help="seeds per grid point")
    sweep.add_argument("--out", type=Path, default=Path("runs"), help="parent of the sweep folder")
    add_data_options(sweep)
    add_training_options(sweep)
    add_ray_options(sweep)
    sweep.set_defaults(handler=_sweep)

    data = commands.add_parser("data", help="inspect the dataset")
    data_commands = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    info = data_commands.add_parser("info", help="where the data is; counts per split and class")
    add_data_options(info)
    info.set_defaults(handler=_data_info)

    study = commands.add_parser("study", help="run the experiments, then write their report")
    study.add_argument("--out", type=Path, default=Path("runs"), help="study folder (default runs)")
    study.add_argument(
        "--experiments", default="baseline,augmented,batchnorm", help="comma-separated names"
    )
    study.add_argument(
        "--projection",
        choices=("pca", "tsne"),
        default="pca",
        help="how the feature plot maps features to 2-D",
    )
    add_data_options(study)
    study.add_argument("--epochs", type=positive_int, help="epochs per experiment (default 50)")
    study.add_argument(
        "--precision", choices=("auto", "float32", "bfloat16", "float16"), default="auto"
    )
    study.add_argument("--quiet", action="store_true", help="one log line per epoch")
    study.add_argument(
        "--repeats", type=positive_int, default=1, help="seeds per experiment, as Ray tasks if > 1"
    )
    add_ray_options(study)
    study.set_defaults(handler=_study)

    report = commands.add_parser("report", help="rebuild the report from run folders")
    report.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR",
                        help="run folders, or a study folder holding them")  # fmt: skip
    report.add_argument("--out", type=Path, help="report folder (default: the runs' folder)")
    report.set_defaults(handler=_report)
    predict = commands.add_parser("predict", help="classify your own images with a trained run")
    predict.add_argument(
        "model", type=Path, help="run folder (its best checkpoint) or a .keras file"
    )
    predict.add_argument("images", type=Path, nargs="+", help="image files or folders of them")
    predict.add_argument("--top-k", type=positive_int, default=3, help="classes shown per image")
    predict.add_argument("--json", action="store_true", help="one JSON object per image")
    predict.add_argument("--explain", type=Path, metavar="OUT_DIR", help="save Grad-CAM overlays")
    predict.set_defaults(handler=_predict)

    serve = commands.add_parser("serve", help="serve runs over HTTP with a browser page")
    serve.add_argument("run_dirs", type=Path, nargs="+", help="run folders to serve")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on")
    serve.set_defaults(handler=_serve)
    return parser


def _training_overrides(args: argparse.Namespace) -> dict:
    """The config fields the command line sets; None means the experiment's own value."""
    return {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "seed": args.seed,
        "val_fraction": args.val_fraction,
        "precision": args.precision,
        **data_overrides(args),
    }


def data_overrides(args: argparse.Namespace) -> dict:
    """The dataset settings given on the command line (None where left out)."""
    return {
        "dataset": args.dataset,
        "image_size": args.image_size,
        "test_fraction": args.test_fraction,
    }


def _train(args: argparse.Namespace) -> int:
    from cifarlab import api, evaluation

    run = api.train(
        args.experiment,
        path=args.data,
        out=args.out,
        overwrite=args.overwrite,
        quiet=args.quiet,
        tensorboard=args.tensorboard,
        **_training_overrides(args),
    )
    print(evaluation.format_metrics(run.metrics))
    print(f"Run folder: {run.path}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from cifarlab import api, evaluation

    print(evaluation.format_metrics(api.evaluate(args.run_dir, path=args.data)))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from cifarlab import api
    from cifarlab.scale import sweep

    base = api.experiment_config(args.experiment, **_training_overrides(args))
    result = sweep.sweep_grid(
        base, args.grid, args.repeats, args.data, args.out, ray_options(args), not args.quiet
    )
    print(result.text)
    print(f"Sweep folder: {result.folder}")
    return 0


def _data_info(args: argparse.Namespace) -> int:
    from cifarlab import config
    from cifarlab.data import dataset

    settings = config.override(
        config.Config(), seed=args.seed, val_fraction=args.val_fraction, **data_overrides(args)
    )
    print(dataset.counts_table(dataset.load_for(settings, args.data)))
    return 0


def _study(args: argparse.Namespace) -> int:
    from cifarlab import api

    study = api.study(
        args.experiments.split(","),
        out=args.out,
        path=args.data,
        epochs=args.epochs,
        seed=args.seed,
        precision=args.precision,
        projection=args.projection,
        quiet=args.quiet,
        repeats=args.repeats,
        ray_address=args.ray_address,
        workers=args.workers,
        cpus_per_run=args.cpus_per_run,
        gpus_per_run=args.gpus_per_run,
        val_fraction=args.val_fraction,
        **data_overrides(args),
    )
    print(f"Report: {study.report}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from cifarlab import api

    written = api.build_report(args.run_dirs, args.out)
    print(f"Report: {next(path for path in written.values() if path.suffix == '.html')}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from cifarlab import prediction

    classifier = prediction.load_classifier(args.model)
    prediction.check_top_k(args.top_k, classifier)
    failures = shown = 0
    for result in prediction.predict_with_overlays(
        classifier, args.images, args.top_k, args.explain
    ):
        if result.error is not None:
            failures += 1
            print(f"cifarlab: {result.error}", file=sys.stderr)
        elif args.json:
            print(json.dumps(result.to_dict()))
        else:
            print(prediction.table_row(result, header=shown == 0))
        shown += result.error is None
    return 2 if failures else 0


def _serve(args: argparse.Namespace) -> int:
    from cifarlab.serve import app

    app.serve(args.run_dirs, args.host, args.port)
    return 0


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever `sys.stdout` is at the time, so captured output works too."""

    def __init__(self):
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass


def _configure_output(quiet: bool) -> None:
    """The library's progress lines on stdout and its warnings as one line on stderr."""
    logger = logging.getLogger("cifarlab")
    if not any(isinstance(handler, _StdoutHandler) for handler in logger.handlers):
        logger.addHandler(_StdoutHandler())
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"cifarlab: warning: {message}", file=sys.stderr)

    warnings.showwarning = show


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_output(getattr(args, "quiet", False))
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
