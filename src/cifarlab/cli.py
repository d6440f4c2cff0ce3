"""The `cifarlab` command: parses arguments and calls one library function per subcommand.

    cifarlab train baseline --data cifar-10-python.tar.gz --epochs 50
    cifarlab evaluate runs/baseline --data cifar-10-python.tar.gz
    cifarlab data info --data cifar-10-python.tar.gz
    cifarlab study --data cifar-10-python.tar.gz --out runs --epochs 50
    cifarlab report runs/baseline runs/augmented runs/batchnorm --out runs
    cifarlab predict runs/baseline photo.jpg photos/ --top-k 3
    cifarlab serve runs/baseline runs/batchnorm --port 8000
    cifarlab sweep baseline --grid learning_rate=1e-3,3e-3 --repeats 3 --data cifar-10-python.tar.gz
    cifarlab search space.toml --data cifar-10-python.tar.gz --trials 20 --out runs/search
    cifarlab train baseline --data my_photos/ --image-size 64

Errors reach the user as one sentence: exit code 2 for bad input, 1 for failures. Input that
can be checked cheaply (names, paths, the port) is checked before TensorFlow loads, so a typo
is answered in well under a second rather than after the seconds TensorFlow takes to import.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

from cifarlab import config as configs
from cifarlab import preflight
from cifarlab.arguments import build_parser
from cifarlab.errors import RunError, UserError


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
    preflight.check_data(args)
    preflight.check_output_folder(args.out)
    preflight.quiet_tensorflow(args.verbose)
    from cifarlab import api, evaluation

    run = api.train(
        config,
        path=args.data,
        out=args.out,
        overwrite=args.overwrite,
        quiet=_plain_epochs(args),
        tensorboard=args.tensorboard,
    )
    _track(args, [run.path])
    from cifarlab.report import build

    print(evaluation.format_metrics(run.metrics))
    print(evaluation.outcome_table([build.results_row(run)]))
    figures = ", ".join(path.name for path in sorted(run.path.glob("*.png")))
    print(f"Run folder: {run.path}" + (f" (figures: {figures})" if figures else ""))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    preflight.check_exists(args.run_dir, "Run folder", "pass a folder written by cifarlab train")
    preflight.check_data(args)
    preflight.quiet_tensorflow(args.verbose)
    from cifarlab import api, evaluation

    print(evaluation.format_metrics(api.evaluate(args.run_dir, path=args.data)))
    return 0


def _export(args: argparse.Namespace) -> int:
    preflight.check_exists(args.run_dir, "Run folder", "pass a folder written by cifarlab train")
    preflight.check_data(args)
    if args.out.exists():
        raise UserError(f"{args.out} already exists; name a new path with --out.")
    preflight.check_output_folder(args.out.parent)
    preflight.quiet_tensorflow(args.verbose)
    from cifarlab import api

    print(api.export(args.run_dir, args.format, args.out, path=args.data).summary())
    return 0


def _sweep(args: argparse.Namespace) -> int:
    base = _resolved_experiment(args)
    preflight.check_data(args)
    preflight.check_output_folder(args.out)
    from cifarlab import builders
    from cifarlab.scale import sweep

    result = sweep.sweep_grid(
        builders.record_builder(base), args.grid, args.repeats, args.data, args.out,
        ray_options(args), not args.quiet,
    )  # fmt: skip
    print(result.text)
    print(f"Sweep folder: {result.folder}")
    done = [*result.outcome.skipped, *result.outcome.finished]
    _track(args, done, f"sweep {result.folder.resolve()}")
    return 0


def _search(args: argparse.Namespace) -> int:
    from cifarlab.scale import space as spaces

    # The space's mistakes are answered before the data, TensorFlow or Ray load.
    space = spaces.load_space(args.space, args.experiments, **_training_overrides(args))
    preflight.check_data(args)
    preflight.check_output_folder(args.out)
    preflight.quiet_tensorflow(args.verbose)
    from cifarlab import api

    result = api.search(space, args.data, args.trials, args.out, ray_options(args), args.quiet,
                        args.tensorboard)  # fmt: skip
    print(result.text)
    print(f"Search folder: {result.folder}")
    _track(args, result.trial_folders, f"search {result.folder}")
    return 0


def _track(args: argparse.Namespace, run_dirs: list[Path], experiment: str = "cifarlab") -> None:
    """Record finished runs in the tracking store `--track` names, if any."""
    if args.track == "mlflow":
        from cifarlab import tracking

        tracking.log_runs(run_dirs, experiment)


def _data_info(args: argparse.Namespace) -> int:
    from cifarlab.data import dataset

    preflight.check_data(args)
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
        args.projection, _plain_epochs(args), args.tensorboard, epochs=args.epochs,
        precision=args.precision,
        model=args.model, early_stopping_patience=args.early_stopping, **data_overrides(args),
    )  # fmt: skip
    preflight.check_data(args)
    preflight.check_output_folder(plan.out)
    preflight.quiet_tensorflow(args.verbose)
    from cifarlab import api

    study = api.study(plan=plan)
    from cifarlab import evaluation

    print(evaluation.outcome_table(study.results))
    print(f"Report: {study.report}")
    _track(args, [run.path for run in study.runs.values()], f"study {plan.out.resolve()}")
    return 0


def _report(args: argparse.Namespace) -> int:
    for run_dir in args.run_dirs:
        preflight.check_exists(run_dir, "Run folder", "name run folders or a study folder")
    preflight.check_output_folder(args.out)
    from cifarlab import api

    written = api.build_report(args.run_dirs, args.out)
    print(f"Report: {next(path for path in written.values() if path.suffix == '.html')}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    preflight.check_exists(args.model, "Model", "name a run folder or a .keras file")
    for image in args.images:
        preflight.check_exists(image, "Image", "name image files or folders of them")
    preflight.check_output_folder(args.explain, "--explain")
    if args.model.suffix != ".onnx":  # An ONNX export runs without Keras.
        preflight.quiet_tensorflow(args.verbose)
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
        preflight.check_exists(run_dir, "Run folder", "name run folders or .keras files")
    preflight.check_port(args.host, args.port)
    if any(Path(run_dir).suffix != ".onnx" for run_dir in args.run_dirs):
        preflight.quiet_tensorflow(args.verbose)
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
    "train": _train, "evaluate": _evaluate, "export": _export, "sweep": _sweep,
    "search": _search,
    "data info": _data_info, "study": _study, "report": _report, "predict": _predict,
    "serve": _serve,
    "experiments": _experiments, "experiments show": _experiments_show,
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command is None:  # `cifarlab` or `cifarlab data` alone: the commands there are.
        args.parser.print_help()
        return 0
    _configure_output(getattr(args, "quiet", False))
    with preflight.terminate_as_interrupt():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        return COMMANDS[args.command](args)
    except UserError as error:
        print(f"cifarlab: {error}", file=sys.stderr)
        return 2
    except RunError as error:
        print(f"cifarlab: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # A full disk, a read-only folder: the work done so far is kept.
        print(f"cifarlab: {preflight.os_error_sentence(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cifarlab: interrupted; rerun the same command to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
