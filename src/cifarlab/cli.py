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

Errors reach the user as one sentence: exit code 2 for bad input, 1 for failures. Input that
can be checked cheaply (names, paths, the port) is checked before TensorFlow loads, so a typo
is answered in well under a second rather than after the seconds TensorFlow takes to import.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import socket
import sys
import warnings
from pathlib import Path

from cifarlab import __version__
from cifarlab import config as configs
from cifarlab.errors import RunError, UserError

DATASETS = ("cifar10", "cifar100", "fashion_mnist", "mnist")

DESCRIPTION = """\
Train, compare and diagnose small CNN image classifiers on CIFAR-10 (or other standard
datasets, or your own photos in class folders), write an HTML report of the results, and
classify new images on the command line or in a browser page."""

EXAMPLES = """\
examples:
  cifarlab train baseline --data cifar-10-python.tar.gz --epochs 20
  cifarlab study --data cifar-10-python.tar.gz --out runs
  cifarlab predict runs/baseline photo.jpg photos/
  cifarlab serve runs/baseline runs/batchnorm --port 8000

Run `cifarlab COMMAND --help` for a command's options."""

DATA_HELP = (
    "dataset archive (such as cifar-10-python.tar.gz), its folder, or a folder of class folders "
    "(default: $CIFARLAB_DATA, else the copy in the per-user cache at $XDG_CACHE_HOME/cifarlab "
    "or ~/.cache/cifarlab, else the official download, kept there)"
)
VERBOSE_HELP = "show TensorFlow's start-up messages and warnings, hidden by default"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: {message.rstrip('.')} (see {self.prog} --help).\n")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks and shows every option's default where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        unset = action.default in (None, argparse.SUPPRESS, []) or action.default is False
        if action.option_strings and not unset and "(default" not in help_text:
            help_text += " (default: %(default)s)"
        return help_text


def _number(kind: type, text: str, expected: str, valid) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not valid(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
    return value


def whole_number(text: str) -> int:
    return _number(int, text, "a whole number", lambda value: True)


def positive_int(text: str) -> int:
    return _number(int, text, "a positive whole number", lambda value: value >= 1)


def positive_float(text: str) -> float:
    return _number(float, text, "a positive number", lambda value: value > 0)


def non_negative_float(text: str) -> float:
    return _number(float, text, "a number of at least 0", lambda value: value >= 0)


def fraction(text: str) -> float:
    return _number(float, text, "a number between 0 and 1", lambda value: 0 < value < 1)


def port_number(text: str) -> int:
    return _number(int, text, "a port number from 1 to 65535", lambda value: 1 <= value <= 65535)


def add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, help=DATA_HELP)
    parser.add_argument("--dataset", choices=DATASETS,
                        help="standard dataset that --data holds (default: cifar10; a folder of "
                        "class folders is recognised without it)")  # fmt: skip
    parser.add_argument("--seed", type=whole_number, default=0,
                        help="seed for the validation split, weights and shuffling")  # fmt: skip
    parser.add_argument("--val-fraction", type=fraction, default=0.2,
                        help="share of the training images held out for validation")  # fmt: skip
    parser.add_argument("--test-fraction", type=fraction,
                        help="share held out for testing from class folders without a test/ "
                        "folder (default: 0.2)")  # fmt: skip
    parser.add_argument("--image-size", type=positive_int,
                        help="side of the square model input in pixels (default: 32)")  # fmt: skip


def add_precision_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=positive_int, help="training epochs (default: 50)")
    parser.add_argument("--precision", choices=configs.PRECISIONS, default="auto",
                        help="numbers to train in; auto picks mixed bfloat16 where the hardware "
                        "runs it fast, else float32")  # fmt: skip
    parser.add_argument("--quiet", action="store_true",
                        help="one plain line per epoch instead of a progress bar (always so when "
                        "the output is not a terminal), and no progress messages")  # fmt: skip


def add_training_options(parser: argparse.ArgumentParser) -> None:
    add_precision_options(parser)
    parser.add_argument("--batch-size", type=positive_int,
                        help="images per training step (default: 32; batchnorm 64)")  # fmt: skip
    parser.add_argument("--learning-rate", type=positive_float,
                        help="Adam step size (default: 1e-3; batchnorm 1e-2)")  # fmt: skip


def add_ray_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ray-address", metavar="HOST:PORT",
                        help="a running Ray cluster (default: start a local one)")  # fmt: skip
    parser.add_argument("--workers", type=positive_int,
                        help="runs at once (default: as many as CPUs and GPUs fit)")  # fmt: skip
    parser.add_argument("--cpus-per-run", type=non_negative_float, default=1.0,
                        help="CPU cores each run reserves; also caps its threads")  # fmt: skip
    parser.add_argument("--gpus-per-run", type=non_negative_float, default=0.0,
                        help="GPUs each run reserves; a fraction shares one GPU")  # fmt: skip


def ray_options(args: argparse.Namespace):
    from cifarlab.scale.ray_jobs import RayOptions

    return RayOptions(args.ray_address, args.workers, args.cpus_per_run, args.gpus_per_run)


def _command(commands, name: str, summary: str, handler=None) -> argparse.ArgumentParser:
    """A subcommand that shows defaults in its help and also accepts --verbose after its name."""
    parser = commands.add_parser(
        name, help=summary, description=summary[0].upper() + summary[1:] + ".",
        formatter_class=_HelpFormatter,
    )  # fmt: skip
    # SUPPRESS keeps a --verbose given before the command name from being reset here.
    parser.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help=VERBOSE_HELP)  # fmt: skip
    parser.set_defaults(handler=handler, parser=parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cifarlab", description=DESCRIPTION, epilog=EXAMPLES,
                     formatter_class=_HelpFormatter)  # fmt: skip
    parser.add_argument("--version", action="version", version=f"cifarlab {__version__}")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    parser.set_defaults(handler=None, parser=parser)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser)

    train = _command(commands, "train", "train one experiment into a run folder", _train)
    train.add_argument("experiment", metavar="EXPERIMENT",
                       help="baseline, augmented or batchnorm (or A, B, C)")  # fmt: skip
    train.add_argument("--out", type=Path, help="run folder (default: runs/EXPERIMENT)")
    train.add_argument("--overwrite", action="store_true", help="train a finished run again")
    train.add_argument("--tensorboard", action="store_true",
                       help="also write TensorBoard logs into the run folder")  # fmt: skip
    add_data_options(train)
    add_training_options(train)

    evaluate = _command(commands, "evaluate", "evaluate a run's best checkpoint again", _evaluate)
    evaluate.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                          help="run folder written by cifarlab train")  # fmt: skip
    evaluate.add_argument("--data", type=Path, help=DATA_HELP)

    sweep = _command(commands, "sweep", "train a grid of settings × seeds as Ray tasks", _sweep)
    sweep.add_argument("experiment", metavar="EXPERIMENT",
                       help="baseline, augmented or batchnorm (or A, B, C)")  # fmt: skip
    sweep.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                       help="a setting and its values; repeat for more settings")  # fmt: skip
    sweep.add_argument("--repeats", type=positive_int, default=1, help="seeds per grid point")
    sweep.add_argument("--out", type=Path, default=Path("runs"), help="parent of the sweep folder")
    add_data_options(sweep)
    add_training_options(sweep)
    add_ray_options(sweep)

    data = _command(commands, "data", "inspect a dataset")
    data_commands = data.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser)
    info = _command(data_commands, "info", "show where the data is and its counts per split "
                    "and class", _data_info)  # fmt: skip
    add_data_options(info)

    study = _command(commands, "study", "run the experiments, then write their report", _study)
    study.add_argument("--out", type=Path, default=Path("runs"), help="study folder")
    study.add_argument("--experiments", default="baseline,augmented,batchnorm",
                       help="comma-separated experiment names")  # fmt: skip
    study.add_argument("--projection", choices=("pca", "tsne"), default="pca",
                       help="how the feature plot maps features to 2-D")  # fmt: skip
    add_data_options(study)
    add_precision_options(study)
    study.add_argument("--repeats", type=positive_int, default=1,
                       help="seeds per experiment, as Ray tasks if more than 1")  # fmt: skip
    add_ray_options(study)

    report = _command(commands, "report", "rebuild the report from run folders", _report)
    report.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR",
                        help="run folders, or a study folder holding them")  # fmt: skip
    report.add_argument("--out", type=Path, help="report folder (default: the runs' folder)")

    predict = _command(commands, "predict", "classify your own images with a trained run",
                       _predict)  # fmt: skip
    predict.add_argument("model", type=Path, metavar="MODEL",
                         help="run folder (its best checkpoint) or a .keras file")  # fmt: skip
    predict.add_argument("images", type=Path, nargs="+", metavar="IMAGE",
                         help="image files or folders of them")  # fmt: skip
    predict.add_argument("--top-k", type=positive_int, default=3, help="classes shown per image")
    predict.add_argument("--json", action="store_true", help="print one JSON object per image")
    predict.add_argument("--explain", type=Path, metavar="OUT_DIR",
                         help="save a Grad-CAM overlay of each image into OUT_DIR")  # fmt: skip

    serve = _command(commands, "serve", "serve runs over HTTP with a browser page", _serve)
    serve.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR",
                       help="run folders (or .keras files) to serve")  # fmt: skip
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=port_number, default=8000, help="port to listen on")
    return parser


# Checks of the input that need no TensorFlow, made before it loads.


def _check_exists(path: Path | str | None, what: str, remedy: str) -> None:
    if path is not None and not Path(path).expanduser().exists():
        raise UserError(f"{what} {path} does not exist; {remedy}.")


def _check_data(args: argparse.Namespace) -> None:
    path = args.data or os.environ.get("CIFARLAB_DATA") or None
    _check_exists(path, "Data path", "pass an existing archive or folder")


def _check_port(host: str, port: int) -> None:
    """Refuse a port that cannot be listened on now, rather than after the models load."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # As the server itself binds.
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise UserError(
                    f"Port {port} on {host} is already in use; choose another with --port."
                ) from error
            raise UserError(
                f"Cannot listen on {host} port {port} ({error.strerror or error}); "
                "choose another --host or --port."
            ) from error


def _quiet_tensorflow(verbose: bool) -> None:
    """Load Keras now, keeping TensorFlow's start-up chatter and warnings off the screen.

    TF_CPP_MIN_LOG_LEVEL quiets TensorFlow's own C++ log, but the CUDA probes and the oneDNN
    notice are written by absl before its logging is set up, straight to file descriptor 2,
    so that descriptor points at /dev/null while TensorFlow is imported. Retracing warnings
    come later, through TensorFlow's Python logger. `verbose` leaves all of it on.
    """
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "keras" not in sys.modules:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            with open(os.devnull, "w") as devnull:
                os.dup2(devnull.fileno(), 2)
                import keras  # noqa: F401  Imports the backend, TensorFlow by default.
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
    import keras

    if keras.backend.backend() == "tensorflow":
        import absl.logging
        import tensorflow as tf

        tf.get_logger().setLevel(logging.ERROR)
        absl.logging.set_verbosity(absl.logging.ERROR)


def _plain_epochs(args: argparse.Namespace) -> bool:
    """One line per epoch (the library's `quiet`): asked for, or output is not a terminal."""
    return args.quiet or not sys.stdout.isatty()


# The subcommands.


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
    configs.override(configs.experiment(args.experiment), **_training_overrides(args))
    _check_data(args)
    _quiet_tensorflow(args.verbose)
    from cifarlab import api, evaluation

    run = api.train(
        args.experiment,
        path=args.data,
        out=args.out,
        overwrite=args.overwrite,
        quiet=_plain_epochs(args),
        tensorboard=args.tensorboard,
        **_training_overrides(args),
    )
    print(evaluation.format_metrics(run.metrics))
    print(f"Run folder: {run.path}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    _check_exists(args.run_dir, "Run folder", "pass a folder written by cifarlab train")
    from cifarlab import run_folder

    run_folder.read_config(args.run_dir)
    _check_data(args)
    _quiet_tensorflow(args.verbose)
    from cifarlab import api, evaluation

    print(evaluation.format_metrics(api.evaluate(args.run_dir, path=args.data)))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from cifarlab import api
    from cifarlab.scale import sweep

    base = api.experiment_config(args.experiment, **_training_overrides(args))
    _check_data(args)
    result = sweep.sweep_grid(
        base, args.grid, args.repeats, args.data, args.out, ray_options(args), not args.quiet
    )
    print(result.text)
    print(f"Sweep folder: {result.folder}")
    return 0


def _data_info(args: argparse.Namespace) -> int:
    from cifarlab.data import dataset

    _check_data(args)
    settings = configs.override(
        configs.Config(), seed=args.seed, val_fraction=args.val_fraction, **data_overrides(args)
    )
    print(dataset.counts_table(dataset.load_for(settings, args.data)))
    return 0


def _study(args: argparse.Namespace) -> int:
    for name in args.experiments.split(","):
        if name.strip():
            configs.experiment(name.strip())
    _check_data(args)
    _quiet_tensorflow(args.verbose)
    from cifarlab import api

    study = api.study(
        args.experiments.split(","),
        out=args.out,
        path=args.data,
        epochs=args.epochs,
        seed=args.seed,
        precision=args.precision,
        projection=args.projection,
        quiet=_plain_epochs(args),
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
    for run_dir in args.run_dirs:
        _check_exists(run_dir, "Run folder", "name run folders or a study folder")
    from cifarlab import api

    written = api.build_report(args.run_dirs, args.out)
    print(f"Report: {next(path for path in written.values() if path.suffix == '.html')}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    _check_exists(args.model, "Model", "name a run folder or a .keras file")
    for image in args.images:
        _check_exists(image, "Image", "name image files or folders of them")
    _quiet_tensorflow(args.verbose)
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
    for run_dir in args.run_dirs:
        _check_exists(run_dir, "Run folder", "name run folders or .keras files")
    _check_port(args.host, args.port)
    _quiet_tensorflow(args.verbose)
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
    if args.handler is None:  # `cifarlab` or `cifarlab data` alone: the commands there are.
        args.parser.print_help()
        return 0
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
