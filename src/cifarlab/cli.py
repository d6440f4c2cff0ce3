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

from cifarlab import config as configs
from cifarlab.arguments import build_parser
from cifarlab.errors import RunError, UserError

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


def _check_output_folder(path: Path | None, flag: str = "--out") -> None:
    """Refuse a folder that cannot be written (a file, a read-only place) before any work."""
    if path is None:
        return
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"The {flag} folder {path} is a file; choose a folder.")
    existing = next(parent for parent in (path, *path.parents) if parent.exists())
    if not existing.is_dir():
        raise UserError(
            f"The {flag} folder {path} lies inside the file {existing}; choose a folder."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"The {flag} folder {path} cannot be written ({existing} is read-only); "
                        "choose another folder.")  # fmt: skip


def _os_error_sentence(error: OSError) -> str:
    """One sentence for a failed read or write, saying what to do."""
    reason = error.strerror or str(error).splitlines()[0]
    where = f" {error.filename}" if error.filename else ""
    if error.errno == errno.ENOSPC or "No space left" in str(error):
        reason = "no space left on the device"
    return (
        f"Could not read or write{where} ({reason}); make room or choose another folder, then "
        "rerun the same command: finished work is kept and training resumes."
    )


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
    """The config fields the command line sets: exactly the flags given (None: not given, so
    the experiment's own value stands)."""
    return {
        "model": args.model,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "precision": args.precision,
        "early_stopping_patience": args.early_stopping,
        **data_overrides(args),
    }


def data_overrides(args: argparse.Namespace) -> dict:
    """The dataset settings given on the command line (None where left out)."""
    return {
        "seed": args.seed,
        "val_fraction": args.val_fraction,
        "dataset": args.dataset,
        "image_size": args.image_size,
        "test_fraction": args.test_fraction,
        "stratify": args.stratify or None,
    }


def _resolved_experiment(args: argparse.Namespace) -> configs.Config:
    """The experiment named on the command line with its overrides: resolved once, here,
    before TensorFlow loads, and handed down as it is."""
    from cifarlab import experiments

    return experiments.resolve(args.experiment, args.experiments, **_training_overrides(args))


def _train(args: argparse.Namespace) -> int:
    config = _resolved_experiment(args)
    _check_data(args)
    _check_output_folder(args.out)
    _quiet_tensorflow(args.verbose)
    from cifarlab import api, evaluation

    run = api.train(
        config,
        path=args.data,
        out=args.out,
        overwrite=args.overwrite,
        quiet=_plain_epochs(args),
        tensorboard=args.tensorboard,
    )
    from cifarlab.report import build

    print(evaluation.format_metrics(run.metrics))
    print(evaluation.outcome_table([build.results_row(run)]))
    figures = ", ".join(path.name for path in sorted(run.path.glob("*.png")))
    print(f"Run folder: {run.path}" + (f" (figures: {figures})" if figures else ""))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    _check_exists(args.run_dir, "Run folder", "pass a folder written by cifarlab train")
    _check_data(args)
    _quiet_tensorflow(args.verbose)
    from cifarlab import api, evaluation

    print(evaluation.format_metrics(api.evaluate(args.run_dir, path=args.data)))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    base = _resolved_experiment(args)
    _check_data(args)
    _check_output_folder(args.out)
    from cifarlab import builders
    from cifarlab.scale import sweep

    result = sweep.sweep_grid(
        builders.record_builder(base), args.grid, args.repeats, args.data, args.out,
        ray_options(args), not args.quiet,
    )  # fmt: skip
    print(result.text)
    print(f"Sweep folder: {result.folder}")
    return 0


def _data_info(args: argparse.Namespace) -> int:
    from cifarlab.data import dataset

    _check_data(args)
    spec = configs.override(configs.Config(), **data_overrides(args)).data_spec
    print(dataset.counts_table(dataset.load_spec(args.data, spec)))
    return 0


def _study_experiments(text: str | None) -> tuple[list[str] | None, Path | None]:
    """--experiments as (names, None) or, for a TOML file, (None, file)."""
    if text and (text.endswith(".toml") or Path(text).is_file()):
        return None, Path(text)
    return [name.strip() for name in (text or "").split(",") if name.strip()] or None, None


def _study(args: argparse.Namespace) -> int:
    from cifarlab import plans

    names, experiments_file = _study_experiments(args.experiments)
    plan = plans.study_plan(
        names, experiments_file, args.out, args.data, args.repeats, ray_options(args),
        args.projection, _plain_epochs(args), epochs=args.epochs, precision=args.precision,
        model=args.model, early_stopping_patience=args.early_stopping, **data_overrides(args),
    )  # fmt: skip
    _check_data(args)
    _check_output_folder(plan.out)
    _quiet_tensorflow(args.verbose)
    from cifarlab import api

    study = api.study(plan=plan)
    from cifarlab import evaluation

    print(evaluation.outcome_table(study.results))
    print(f"Report: {study.report}")
    return 0


def _report(args: argparse.Namespace) -> int:
    for run_dir in args.run_dirs:
        _check_exists(run_dir, "Run folder", "name run folders or a study folder")
    _check_output_folder(args.out)
    from cifarlab import api

    written = api.build_report(args.run_dirs, args.out)
    print(f"Report: {next(path for path in written.values() if path.suffix == '.html')}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    _check_exists(args.model, "Model", "name a run folder or a .keras file")
    for image in args.images:
        _check_exists(image, "Image", "name image files or folders of them")
    _check_output_folder(args.explain, "--explain")
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


def _experiments(args: argparse.Namespace) -> int:
    from cifarlab import experiments

    print(experiments.describe_builtins())
    return 0


def _experiments_show(args: argparse.Namespace) -> int:
    from cifarlab import experiments

    print(experiments.to_toml(experiments.find(args.experiment, args.experiments)))
    return 0


def ray_options(args: argparse.Namespace):
    """The Ray flags given; RayOptions keeps its own default for each left out."""
    from cifarlab.plans import RayOptions

    given = {"address": args.ray_address, "workers": args.workers,
             "cpus_per_run": args.cpus_per_run, "gpus_per_run": args.gpus_per_run}  # fmt: skip
    return RayOptions(**{key: value for key, value in given.items() if value is not None})


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


COMMANDS = {
    "train": _train, "evaluate": _evaluate, "sweep": _sweep, "data info": _data_info,
    "study": _study, "report": _report, "predict": _predict, "serve": _serve,
    "experiments": _experiments, "experiments show": _experiments_show,
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command is None:  # `cifarlab` or `cifarlab data` alone: the commands there are.
        args.parser.print_help()
        return 0
    _configure_output(getattr(args, "quiet", False))
    try:
        return COMMANDS[args.command](args)
    except UserError as error:
        print(f"cifarlab: {error}", file=sys.stderr)
        return 2
    except RunError as error:
        print(f"cifarlab: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # A full disk, a read-only folder: the work done so far is kept.
        print(f"cifarlab: {_os_error_sentence(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cifarlab: interrupted; rerun the same command to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
