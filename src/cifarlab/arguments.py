"""The `cifarlab` command's arguments: every command, flag, default and help text.

`build_parser()` returns the parser; each command's namespace carries `command` (its name,
such as "train" or "data info"), which `cli.py` maps to the function that runs it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cifarlab import __version__
from cifarlab import config as configs
from cifarlab.plans import RayOptions

DATASETS = ("cifar10", "cifar100", "fashion_mnist", "mnist")
_DEFAULT = configs.Config()  # Help texts quote the config's defaults; flags set none of their own.

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
EXPERIMENT_HELP = (
    "a built-in experiment (baseline, augmented, batchnorm or modern; A, B, C for the first "
    "three) or one declared in --experiments FILE"
)
EXPERIMENTS_FILE_HELP = "a TOML file of your own experiments ([experiments.NAME] tables)"
MODEL_HELP = (
    "your own network instead of the experiment's: package.module:function, a function "
    "(config, input_shape, num_classes) -> keras.Model"
)


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
    parser.add_argument("--seed", type=whole_number,
                        help="seed for the validation split, weights and shuffling "
                        f"(default: {_DEFAULT.seed})")  # fmt: skip
    parser.add_argument("--val-fraction", type=fraction,
                        help="share of the training images held out for validation (default: "
                        f"the experiment's, {_DEFAULT.val_fraction}; modern holds out at most "
                        f"{configs.MODERN.max_val_images:,} images)")  # fmt: skip
    parser.add_argument("--test-fraction", type=fraction,
                        help="share held out for testing from class folders without a test/ "
                        f"folder (default: {_DEFAULT.test_fraction})")  # fmt: skip
    parser.add_argument("--stratify", action="store_true",
                        help="hold out the same share of every class for validation also from a "
                        "full standard dataset (class folders and subsets under 20,000 images "
                        "always are; full CIFAR-10 otherwise keeps the notebook's random "
                        "split)")  # fmt: skip
    parser.add_argument("--image-size", type=positive_int,
                        help="side of the square model input in pixels (default: "
                        f"{_DEFAULT.image_size})")  # fmt: skip


def add_precision_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=positive_int, help="training epochs (default: the "
                        f"experiment's, {_DEFAULT.epochs} for the notebook's three)")  # fmt: skip
    parser.add_argument("--early-stopping", type=whole_number, metavar="N",
                        help="stop after N epochs without a lower validation loss (default: "
                        "the experiment's; 0 trains every epoch)")  # fmt: skip
    parser.add_argument("--precision", choices=configs.PRECISIONS,
                        help="numbers to train in; auto picks mixed bfloat16 where the hardware "
                        f"runs it fast, else float32 (default: {_DEFAULT.precision})")  # fmt: skip
    parser.add_argument("--quiet", action="store_true",
                        help="one plain line per epoch instead of a progress bar (always so when "
                        "the output is not a terminal), and no progress messages")  # fmt: skip


def add_training_options(parser: argparse.ArgumentParser) -> None:
    add_precision_options(parser)
    parser.add_argument("--batch-size", type=positive_int,
                        help="images per training step (default: 32; batchnorm 64; modern "
                        "1024, halved on small data until an epoch has "
                        f"{configs.MODERN.min_steps_per_epoch} steps)")  # fmt: skip
    parser.add_argument("--learning-rate", type=positive_float,
                        help="peak step size, for the batch size given (default: 1e-3; "
                        "batchnorm 1e-2; modern 0.9, scaled with its batch)")  # fmt: skip


def add_ray_options(parser: argparse.ArgumentParser, *aliases: str) -> None:
    parser.add_argument("--ray-address", *aliases, dest="ray_address", metavar="HOST:PORT",
                        help="a running Ray cluster (default: start a local one)")  # fmt: skip
    parser.add_argument("--workers", type=positive_int,
                        help="runs at once (default: as many as CPUs and GPUs fit)")  # fmt: skip
    parser.add_argument("--cpus-per-run", type=non_negative_float,
                        help="CPU cores each run reserves; also caps its threads (default: "
                        f"{RayOptions.cpus_per_run})")  # fmt: skip
    parser.add_argument("--gpus-per-run", type=non_negative_float,
                        help="GPUs each run reserves; a fraction shares one GPU (default: "
                        f"{RayOptions.gpus_per_run})")  # fmt: skip


def add_tracking_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--track", choices=("mlflow",),
                        help="also record the finished runs in MLflow ($MLFLOW_TRACKING_URI, "
                        "else mlflow.db here); a tracking failure is a warning, never an error")


def _command(commands, name: str, summary: str, command: str | None = None):
    """A subcommand that shows defaults in its help and also accepts --verbose after its name."""
    parser = commands.add_parser(
        name, help=summary, description=summary[0].upper() + summary[1:] + ".",
        formatter_class=_HelpFormatter,
    )  # fmt: skip
    # SUPPRESS keeps a --verbose given before the command name from being reset here.
    parser.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help=VERBOSE_HELP)  # fmt: skip
    parser.set_defaults(command=command, parser=parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cifarlab", description=DESCRIPTION, epilog=EXAMPLES,
                     formatter_class=_HelpFormatter)  # fmt: skip
    parser.add_argument("--version", action="version", version=f"cifarlab {__version__}")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    parser.set_defaults(command=None, parser=parser)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser)

    train = _command(commands, "train", "train one experiment into a run folder", "train")
    train.add_argument("experiment", metavar="EXPERIMENT", help=EXPERIMENT_HELP)
    train.add_argument("--experiments", type=Path, metavar="FILE", help=EXPERIMENTS_FILE_HELP)
    train.add_argument("--model", metavar="MODULE:FUNCTION", help=MODEL_HELP)
    train.add_argument("--out", type=Path,
                       help="run folder (default: runs/train/EXPERIMENT, or EXPERIMENT-2, ... "
                       "where that holds a run of another config or data)")  # fmt: skip
    train.add_argument("--overwrite", action="store_true", help="train a finished run again")
    train.add_argument("--tensorboard", action="store_true",
                       help="also write TensorBoard logs, with the run's HParams, into the run "
                       "folder")  # fmt: skip
    add_tracking_option(train)
    add_data_options(train)
    add_training_options(train)

    evaluate = _command(commands, "evaluate", "evaluate a run's best checkpoint again", "evaluate")
    evaluate.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                          help="run folder written by cifarlab train")  # fmt: skip
    evaluate.add_argument("--data", type=Path, help=DATA_HELP)

    exporting = _command(commands, "export", "write a run's model as ONNX, a SavedModel or "
                         "LiteRT, checked in that runtime", "export")  # fmt: skip
    exporting.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                           help="run folder written by cifarlab train")  # fmt: skip
    exporting.add_argument("--format", required=True, choices=("onnx", "saved_model", "litert"),
                           help="onnx (ONNX Runtime), saved_model (TensorFlow) or litert "
                           "(the LiteRT interpreter)")  # fmt: skip
    exporting.add_argument("--out", type=Path, required=True,
                           help="the file (a folder for saved_model) to write; must not exist")
    exporting.add_argument("--data", type=Path,
                           help=DATA_HELP + "; its test images check the export")  # fmt: skip

    sweep = _command(commands, "sweep", "train a grid of settings × seeds as Ray tasks", "sweep")
    sweep.add_argument("experiment", metavar="EXPERIMENT", help=EXPERIMENT_HELP)
    sweep.add_argument("--experiments", type=Path, metavar="FILE", help=EXPERIMENTS_FILE_HELP)
    sweep.add_argument("--model", metavar="MODULE:FUNCTION", help=MODEL_HELP)
    sweep.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                       help="a setting and its values, nested ones with a dot "
                       "(augmentation.rotation_degrees=0,10); repeat for more "
                       "settings")  # fmt: skip
    sweep.add_argument("--repeats", type=positive_int, default=1, help="seeds per grid point")
    sweep.add_argument("--out", type=Path, default=Path("runs"),
                       help="parent of the sweep folder")  # fmt: skip
    add_data_options(sweep)
    add_training_options(sweep)
    add_ray_options(sweep)
    add_tracking_option(sweep)

    searching = _command(commands, "search", "search settings on Ray Tune: Optuna proposes, "
                         "ASHA stops the trials that lag", "search")  # fmt: skip
    searching.add_argument("space", type=Path, metavar="SPACE.toml",
                           help="the search space: base = EXPERIMENT, fixed settings, and "
                           "settings = {loguniform|uniform|randint|choice = [...]}")  # fmt: skip
    searching.add_argument("--experiments", type=Path, metavar="FILE",
                           help=EXPERIMENTS_FILE_HELP)  # fmt: skip
    searching.add_argument("--model", metavar="MODULE:FUNCTION", help=MODEL_HELP)
    searching.add_argument("--trials", type=positive_int, default=10, help="trials to run")
    searching.add_argument("--out", type=Path, default=Path("runs/search"),
                           help="search folder: its trials, Tune's state and the report")
    searching.add_argument("--tensorboard", action="store_true",
                           help="also write TensorBoard logs, with each trial's HParams, into "
                           "each trial's folder")  # fmt: skip
    add_data_options(searching)
    add_training_options(searching)
    add_ray_options(searching, "--address")
    add_tracking_option(searching)

    data = _command(commands, "data", "inspect a dataset")
    data_commands = data.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser)
    info = _command(data_commands, "info", "show where the data is and its counts per split "
                    "and class", "data info")  # fmt: skip
    add_data_options(info)

    study = _command(commands, "study", "run the experiments, then write their report", "study")
    study.add_argument("--out", type=Path, default=Path("runs"), help="study folder")
    study.add_argument(
        "--experiments",
        metavar="NAMES|FILE",
        help="comma-separated experiment names, or a TOML file of your own "
        "experiments, all of which run (default: baseline,augmented,batchnorm)",
    )
    study.add_argument("--model", metavar="MODULE:FUNCTION", help=MODEL_HELP)  # fmt: skip
    study.add_argument("--projection", choices=("pca", "tsne"), default="pca",
                       help="how the feature plot maps features to 2-D")  # fmt: skip
    add_data_options(study)
    add_precision_options(study)
    study.add_argument("--repeats", type=positive_int, default=1,
                       help="seeds per experiment, as Ray tasks if more than 1")  # fmt: skip
    add_ray_options(study)
    study.add_argument("--tensorboard", action="store_true",
                       help="also write TensorBoard logs, with each run's HParams, into each "
                       "run folder")  # fmt: skip
    add_tracking_option(study)

    listing = _command(commands, "experiments", "list the built-in experiments", "experiments")
    listing_commands = listing.add_subparsers(title="commands", metavar="COMMAND",
                                              parser_class=_Parser)  # fmt: skip
    show = _command(listing_commands, "show", "print an experiment's full resolved config",
                    "experiments show")  # fmt: skip
    show.add_argument("experiment", metavar="EXPERIMENT", help=EXPERIMENT_HELP)
    show.add_argument("--experiments", type=Path, metavar="FILE", help=EXPERIMENTS_FILE_HELP)

    report = _command(commands, "report", "rebuild the report from run folders", "report")
    report.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR",
                        help="run folders, or a study folder holding them")  # fmt: skip
    report.add_argument("--out", type=Path, help="report folder (default: the runs' folder)")

    predict = _command(commands, "predict", "classify your own images with a trained run",
                       "predict")  # fmt: skip
    predict.add_argument("model", type=Path, metavar="MODEL",
                         help="run folder (its best checkpoint) or a .keras file")  # fmt: skip
    predict.add_argument("images", type=Path, nargs="+", metavar="IMAGE",
                         help="image files or folders of them")  # fmt: skip
    predict.add_argument("--top-k", type=positive_int, default=3, help="classes shown per image")
    predict.add_argument("--json", action="store_true", help="print one JSON object per image")
    predict.add_argument("--explain", type=Path, metavar="OUT_DIR",
                         help="save a Grad-CAM overlay of each image into OUT_DIR")  # fmt: skip

    serve = _command(commands, "serve", "serve runs over HTTP with a browser page", "serve")
    serve.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR",
                       help="run folders (or .keras files) to serve")  # fmt: skip
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=port_number, default=8000, help="port to listen on")
    return parser
