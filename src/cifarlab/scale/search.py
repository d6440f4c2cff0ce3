"""Search settings on Ray Tune: Optuna proposes each trial, ASHA stops the trials that lag.

    cifarlab search space.toml --data cifar-10-python.tar.gz --trials 20 --out runs/search

The search folder (its file names are `run_folder`'s, `SEARCH_*`) holds the search's record
(the space, the number of trials, the scheduler and the data: a rerun with any other is
refused, never mixed in); `trials/<trial id>/`, each trial an ordinary run folder (config, data
record, lock, history, checkpoint, backup), trained but not evaluated; `tune/`, Ray Tune's
experiment state; and the report as a table, a figure and text: every trial's settings, epochs
and validation accuracy, the accuracy against each setting, the compute ASHA saved, and the
best trial's test accuracy.

Each trial reports, after every epoch, the validation accuracy of its checkpoint so far (the
epoch of lowest validation loss, the notebook's rule); ASHA compares trials on it at epochs
1, 3, 9, ... and stops those below the top third there. The test set is scored once, for the
best trial, when the search ends. When the base experiment's own settings lie in the space they
are the first trial, so the report says what the search gained over them.

Interrupted (Ctrl-C, kill -9), the same command resumes from Tune's saved state: finished and
stopped trials are not trained again, and a trial that was running continues from its run
folder's last finished epoch. Tune saves the searcher's state but not the scheduler's, so the
scheduler is given back every recorded epoch of every trial as Tune restores it (`_Asha`). A
trial that fails (a diverged run, bad input) is reported, and retried by the next run of the
same command.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from contextlib import contextmanager
from pathlib import Path

from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from cifarlab import run_folder
from cifarlab.data import dataset
from cifarlab.data.dataset import Dataset
from cifarlab.errors import RunError, UserError
from cifarlab.plans import RayOptions
from cifarlab.scale import ray_jobs, search_report
from cifarlab.scale.search_report import Result, Trial
from cifarlab.scale.space import SearchSpace

log = logging.getLogger(__name__)
METRIC = "val_accuracy"  # Of the trial's checkpoint so far; higher is better.
GRACE_EPOCHS = 1  # The first epoch at which ASHA may stop a trial.
REDUCTION_FACTOR = 3  # ASHA keeps the top third at each of its rungs.
# A trial whose process a killed search left behind holds its folder for a few more seconds.
LOCK_WAIT_S = 60
# Tune's state saved every second; its older console output, which verbose=0 silences.
_TUNE_ENVIRONMENT = {"TUNE_GLOBAL_CHECKPOINT_S": "1", "RAY_AIR_NEW_OUTPUT": "0"}


def search(
    space: SearchSpace,
    data_path: str | Path | None,
    trials: int,
    out: str | Path,
    options: RayOptions | None = None,
    progress: bool = True,
    tensorboard: bool = False,
) -> Result:
    """Run `trials` trials of `space` on `data_path` into the search folder `out` (or resume
    the search there), score the best on the test set, and write the report."""
    if trials < 1:
        raise UserError(f"--trials must be a positive whole number, not {trials}.")
    options = options or RayOptions()
    out = Path(out).resolve()
    data = dataset.load_for(space.base, data_path, quiet=not progress)
    _claim(out, {"space": space.record(), "trials": trials, "scheduler": _scheduler_record(),
                 "data": data.record()})  # fmt: skip
    with ray_jobs.ray_session(options, ray_jobs.worker_environment(options)), _quiet_tune():
        grid = _tuner(space, data, trials, out, options, tensorboard).fit()
    if any(result.error is None and not result.metrics.get("done") for result in grid):
        raise KeyboardInterrupt  # Tune stopped on Ctrl-C and saved its state.
    in_order = sorted(grid, key=_proposal_number)
    found = [_trial(number, result, space, out) for number, result in enumerate(in_order, 1)]
    failed = [trial for trial in found if trial.failed]
    # A failed trial (a diverged run, say) may have no checkpoint to score.
    scored = [trial for trial in found if trial.val_accuracy is not None and not trial.failed]
    best = max(scored, key=lambda trial: trial.val_accuracy, default=None)
    test_accuracy = None
    if best is not None:
        test_accuracy = _test_accuracy(out / run_folder.SEARCH_TRIALS / best.trial_id, data)
    result = search_report.write_report(
        space, found, best, test_accuracy, _rungs(space.base.epochs), out
    )
    if failed:
        reason = failed[0].status.removeprefix("failed: ").rstrip(".")
        trials_run = search_report.count_of(len(found), "trial")
        raise RunError(
            f"{len(failed)} of {trials_run} failed, trial {failed[0].number} "
            f"with: {reason}; all are reported in {out / run_folder.SEARCH_TXT}, and rerunning "
            "the same command retries the failed ones."
        )
    return result


def _claim(out: Path, record: dict) -> None:
    """Make `out` this search's folder, or refuse it if it holds another search."""
    path = out / run_folder.SEARCH_RECORD
    record = json.loads(json.dumps(record))  # As it reads back: tuples become lists.
    if path.is_file():
        try:
            stored = run_folder.read_json(path)
        except UserError as error:
            raise UserError(f"{path} is damaged; choose another --out.") from error
        differing = [_RECORDED[key] for key in record if not _same(key, stored, record)]
        if differing:
            raise UserError(
                f"{out} holds a search of {' and '.join(differing)}; choose another "
                "--out, or rerun the search it holds."
            )
    elif out.is_dir() and any(out.iterdir()):
        raise UserError(f"{out} is not empty and holds no search; choose another --out.")
    else:
        run_folder.write_json(path, record)


# What a search folder records of its search, as the refusal of another names it.
_RECORDED = {"space": "another space", "trials": "another number of trials",
             "scheduler": "another scheduler", "data": "other data"}  # fmt: skip


def _same(key: str, stored: dict, record: dict) -> bool:
    """Whether the stored record agrees on `key`: the data by its fingerprint alone, so the
    same archive moved elsewhere is the same data."""
    if key == "data":
        return (stored.get(key) or {}).get("fingerprint") == record[key]["fingerprint"]
    return stored.get(key) == record[key]


def _scheduler_record() -> dict:
    return {"scheduler": "asha", "metric": METRIC, "grace_epochs": GRACE_EPOCHS,
            "reduction_factor": REDUCTION_FACTOR, "searcher": "optuna"}  # fmt: skip


def _tuner(space, data, trials: int, out: Path, options: RayOptions, tensorboard: bool):
    """A new Tuner, or the interrupted one restored from `out`'s Tune state."""
    trainable = tune.with_resources(
        tune.with_parameters(_train_trial, space=space, data=data,
                             trials=str(out / run_folder.SEARCH_TRIALS), tensorboard=tensorboard),
        {"cpu": options.cpus_per_run, "gpu": options.gpus_per_run},
    )  # fmt: skip
    state = out / run_folder.SEARCH_TUNE
    if tune.Tuner.can_restore(state):
        return tune.Tuner.restore(str(state), trainable, resume_errored=True,
                                  param_space=space.param_space())  # fmt: skip
    base_point = space.base_point()
    searcher = OptunaSearch(
        points_to_evaluate=[base_point] if base_point else None, seed=space.base.seed
    )
    scheduler = _Asha(
        trials=out / run_folder.SEARCH_TRIALS, time_attr="epoch", max_t=space.base.epochs,
        grace_period=min(GRACE_EPOCHS, space.base.epochs), reduction_factor=REDUCTION_FACTOR,
    )  # fmt: skip
    return tune.Tuner(
        trainable,
        param_space=space.param_space(),
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode="max",
            num_samples=trials,
            search_alg=searcher,
            scheduler=scheduler,
            max_concurrent_trials=options.workers,
            # A new process per trial: a trial ASHA stops ends with its process.
            reuse_actors=False,
        ),  # fmt: skip
        run_config=tune.RunConfig(
            name=run_folder.SEARCH_TUNE,
            storage_path=str(out),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=0),
            callbacks=[_Progress()],
        ),
    )


class _Progress(tune.Callback):
    """One line per trial as it ends, on the cifarlab logger (which `--quiet` silences)."""

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        result = trial.last_result
        if METRIC in result:
            log.info("trial %s ended after %s: val accuracy %.2f%%", trial.trial_id,
                     search_report.epochs_text(result["epoch"]), 100 * result[METRIC])  # fmt: skip

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        log.info("trial %s failed; the report says why.", trial.trial_id)


class _Asha(ASHAScheduler):
    """ASHA whose rungs survive a restart: each trial Tune adds back is replayed into its
    bracket from the epochs its run folder recorded (Tune restores the searcher's state, not
    the scheduler's). A new trial has no folder yet and is added as ASHA adds it."""

    def __init__(self, trials: Path, **settings):
        super().__init__(**settings)
        self._trials = Path(trials)

    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, trial)
        rows = _recorded_rows(self._trials / trial.trial_id)
        bracket = self._trial_info[trial.trial_id]  # ASHA's own map of trials to brackets.
        for count in range(1, len(rows) + 1):
            bracket.on_result(trial, count, self._metric_op * progress(rows[:count])[METRIC])


def _recorded_rows(run_dir: Path) -> list[dict]:
    """The epochs a trial's folder records; none where a kill tore its history (its resume
    repairs that)."""
    if not (run_dir / run_folder.HISTORY).is_file():
        return []
    try:
        return run_folder.read_history(run_dir)
    except UserError:
        return []


def progress(rows: list[dict]) -> dict:
    """What a trial reports after `rows`: epochs so far, and its checkpoint's validation
    accuracy and loss (the epoch of lowest validation loss)."""
    best = min(rows, key=lambda row: row["val_loss"])
    return {"epoch": len(rows), METRIC: best["val_accuracy"], "val_loss": best["val_loss"]}


def _rungs(epochs: int) -> list[int]:
    """The epochs before the last at which ASHA compares trials: 1, 3, 9, ..."""
    milestones, epoch = [], GRACE_EPOCHS
    while epoch < epochs:
        milestones.append(epoch)
        epoch *= REDUCTION_FACTOR
    return milestones


def _train_trial(sampled: dict, space: SearchSpace, data: Dataset, trials: str,
                 tensorboard: bool) -> None:  # fmt: skip
    """One trial, in its own Ray process: train its run folder, reporting every epoch."""
    import keras

    from cifarlab import training

    run_dir = Path(trials) / tune.get_context().get_trial_id()
    config = space.config(sampled)
    run_folder.wait_for_writer(run_dir, LOCK_WAIT_S)
    reported = []

    def report(rows: list[dict]) -> None:
        reported.append(len(rows))
        tune.report(progress(rows))

    def replay(logs=None) -> None:  # The epochs a resumed trial had already trained.
        rows = run_folder.read_history(run_dir)
        for count in range(1, len(rows) + 1):
            report(rows[:count])

    each_epoch = keras.callbacks.LambdaCallback(
        on_train_begin=replay,
        on_epoch_end=lambda epoch, logs=None: report(run_folder.read_history(run_dir)),
    )
    if run_folder.is_finished(run_dir):  # The best trial of a search whose end was cut short.
        run_folder.check_same_run(run_dir, config, data.record())
    else:
        training.train_only(config, run_dir, data, quiet=True, tensorboard=tensorboard,
                            callbacks=[each_epoch])  # fmt: skip
    if not reported:  # Training was over already: tell Tune what it recorded.
        replay()


def _proposal_number(result) -> float:
    """Where the trial came in the searcher's proposals, so that trial 1 stays the base's
    settings: Tune names a trial's folder `<trainable>_<trial id>_<number>_<settings>_<date>`,
    and a restored search lists its results in another order."""
    tag = Path(result.path).name.partition(f"_{result.metrics['trial_id']}_")[2]
    number = tag.partition("_")[0]
    return int(number) if number.isdigit() else math.inf


def _trial(number: int, result, space: SearchSpace, out: Path) -> Trial:
    trial_id = result.metrics["trial_id"]
    settings = space.settings(result.config)
    rows = _recorded_rows(out / run_folder.SEARCH_TRIALS / trial_id)
    accuracy = progress(rows)[METRIC] if rows else None
    if result.error is not None:
        status = f"failed: {ray_jobs.failure_reason(result.error)}"
    else:
        from cifarlab import training

        over = rows and training.training_over(rows, space.config(result.config))
        status = "complete" if over else "stopped early"
    return Trial(number, trial_id, settings, len(rows), accuracy, status)


def _test_accuracy(run_dir: Path, data: Dataset) -> float:
    """The best trial's test accuracy: evaluated now, once, which finishes its run folder."""
    from cifarlab import evaluation

    with run_folder.exclusive(run_dir):
        if not run_folder.is_finished(run_dir):
            evaluation.evaluate_run(run_dir, data)
        return run_folder.read_metrics(run_dir)["test"]["accuracy"]


@contextmanager
def _quiet_tune():
    """Tune's and Optuna's own progress lines and warnings off (the report says what happened;
    Tune's newer console output prints its tables even when told to be silent), and Tune's
    state saved every second rather than every ten, so that a kill loses at most a second of
    it. Ctrl-C is Tune's to catch: it saves its state, and the search ends as interrupted."""
    import optuna

    logger = logging.getLogger("ray.tune")
    level, optuna_level = logger.level, optuna.logging.get_verbosity()
    logger.setLevel(logging.CRITICAL)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    saved = {name: os.environ.get(name) for name in _TUNE_ENVIRONMENT}
    os.environ.update(_TUNE_ENVIRONMENT)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="ray")
            warnings.filterwarnings("ignore", module="optuna")
            yield
    finally:
        logger.setLevel(level)
        optuna.logging.set_verbosity(optuna_level)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name)
            else:
                os.environ[name] = value
