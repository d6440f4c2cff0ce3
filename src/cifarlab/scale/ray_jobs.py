"""Run many training runs as Ray tasks: on this machine, or unchanged on a Ray cluster.

    cifarlab sweep baseline --grid learning_rate=1e-3,3e-3 --repeats 3 --workers 2

Why Ray core rather than Ray Tune: a run is already a complete, resumable unit
(`training.train_and_evaluate` writes an ordinary run folder and continues an interrupted one)
and the search space is a fixed grid that `scale.sweep` expands itself. Remote tasks give
exactly what is missing — resource-aware scheduling across nodes, retries when a worker process
dies, and cancellation — while Tune would add its own trial folders, checkpoint syncing and
reporting API on top of the run folders we already have.

Without an address a local Ray is started (and stopped again) on this machine; with one, the
same jobs go to that cluster. If Ray is already initialised in this process it is reused.
Each task loads the data itself and writes its run folder where it runs, so on a cluster every
node must see the data and the output folder at the same path (shared storage such as NFS),
and every node needs cifarlab installed. Finished runs of the same config are never submitted
again (`run_folder.finished_with`); an interrupted one resumes from its last finished epoch.

Only what is transient is retried: a task whose worker process died (a lost node, an
out-of-memory kill) is rerun by Ray up to `max_retries` times. A run that fails by itself (bad
input, a NaN loss, a bug) would fail the same way again, so it is reported, not retried.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from cifarlab import run_folder
from cifarlab.config import Config
from cifarlab.data import dataset
from cifarlab.errors import RunError, UserError
from cifarlab.plans import RayOptions

log = logging.getLogger(__name__)
# Environment forwarded from the submitting process to every task, when set there.
_FORWARDED = ("KERAS_BACKEND",)


@dataclass(frozen=True)
class Job:
    """One training run: what to train and the run folder to train it into."""

    config: Config
    out_dir: Path
    tensorboard: bool = False  # TensorBoard logs with the run's HParams in its folder.


@dataclass
class Outcome:
    """Run folders by what happened to them in one call of `run_all`."""

    finished: list[Path] = field(default_factory=list)  # Trained (or resumed) by this call.
    skipped: list[Path] = field(default_factory=list)  # Already finished before this call.
    failed: dict[Path, str] = field(default_factory=dict)  # Run folder → why it failed.

    @property
    def submitted(self) -> int:
        return len(self.finished) + len(self.failed)


def train_on_ray(
    jobs: Sequence[Job],
    data_path: str | Path | None,
    options: RayOptions | None = None,
    progress: bool = True,
) -> Outcome:
    """Train every unfinished job as a Ray task; report each finished run and return the tally.

    Every folder is checked first (a folder holding another config is refused before anything
    trains). Ctrl-C cancels the outstanding tasks and re-raises `KeyboardInterrupt`; finished
    run folders are kept, and rerunning resumes the rest.
    """
    options = options or RayOptions()
    finished = {job.out_dir for job in jobs if run_folder.finished_with(job.out_dir, job.config)}
    _check_data([job for job in jobs if job.out_dir in finished], data_path)
    outcome = Outcome(skipped=[job.out_dir for job in jobs if job.out_dir in finished])
    pending = [job for job in jobs if job.out_dir not in finished]
    if outcome.skipped:
        log.info("%d of %d runs already finished; not redoing them.", len(finished), len(jobs))
    if not pending:
        return outcome
    try:
        import ray
    except ModuleNotFoundError as error:
        raise UserError(
            "Running jobs needs Ray; install it with: pip install 'cifarlab[ray]'."
        ) from error
    # Resolved once here, so every task reads the same files (and nothing downloads twice).
    source = str(dataset.locate(data_path, pending[0].config.dataset).resolve())
    pending = [replace(job, out_dir=Path(job.out_dir).resolve()) for job in pending]
    with ray_session(options):
        task = ray.remote(
            num_cpus=options.cpus_per_run,
            num_gpus=options.gpus_per_run,
            max_retries=options.max_retries,
            retry_exceptions=False,
            runtime_env={"env_vars": worker_environment(options)},
        )(train_one)
        _drive(task, pending, source, options.workers, outcome, progress)
    return outcome


def _check_data(finished: list[Job], data_path: str | Path | None) -> None:
    """Reuse a finished run only on the data it trained on (each distinct split loaded once;
    the runs that train check theirs in their own task)."""
    by_spec: dict = {}
    for job in finished:
        by_spec.setdefault(job.config.data_spec, []).append(job)
    for spec, group in by_spec.items():
        record = dataset.load_spec(data_path, spec, quiet=True).record()
        for job in group:
            run_folder.check_same_data(job.out_dir, record)


@contextmanager
def ray_session(options: RayOptions, environment: dict[str, str] | None = None) -> Iterator[None]:
    """Reuse an initialised Ray, else connect to `options.address` or start a local one, whose
    workers get `environment` (a reused Ray keeps its own)."""
    import ray

    if ray.is_initialized():
        yield
        return
    settings = {"include_dashboard": False, "log_to_driver": False}
    if environment:
        settings["runtime_env"] = {"env_vars": environment}
    try:
        if options.address:
            ray.init(address=options.address, **settings)
        else:
            num_cpus = (
                math.ceil(options.workers * options.cpus_per_run) if options.workers else None
            )
            # "local" starts a new instance even where `ray start` left one running.
            ray.init(address="local", num_cpus=num_cpus, **settings)
    except ConnectionError as error:
        raise UserError(
            f"Cannot connect to a Ray cluster at {options.address}: start one there with "
            "`ray start --head --port=6379` (and set RAY_AUTH_MODE=token here if it uses token "
            "authentication), or drop --ray-address to run locally."
        ) from error
    try:
        yield
    finally:
        ray.shutdown()


def worker_environment(options: RayOptions) -> dict[str, str]:
    """Environment for each task: quiet TensorFlow, with threads capped to the run's CPUs."""
    threads = str(max(1, math.ceil(options.cpus_per_run)))
    environment = {
        "TF_CPP_MIN_LOG_LEVEL": "3",
        # Without a cap each run would start one thread per core and runs sharing a machine
        # would fight over them.
        "TF_NUM_INTRAOP_THREADS": threads,
        "TF_NUM_INTEROP_THREADS": threads,
        "OMP_NUM_THREADS": threads,
    }
    environment.update({name: os.environ[name] for name in _FORWARDED if name in os.environ})
    return environment


def train_one(config: Config, out_dir: str, source: str, tensorboard: bool = False) -> dict:
    """The body of one task: load the data, train and evaluate into `out_dir`.

    Bad input and training failures (`UserError`, `RunError`) are returned as the reason; a
    worker that dies is retried by Ray.
    """
    import keras  # Imported here so that only the workers pay for TensorFlow.

    from cifarlab import training

    started = time.perf_counter()
    try:
        data = dataset.load_for(config, source, quiet=True)
        metrics = training.train_and_evaluate(
            config, out_dir, data, quiet=True, tensorboard=tensorboard
        )
    except (UserError, RunError) as error:
        return {"error": str(error)}
    finally:
        # Workers are reused from run to run; drop this run's graphs and models.
        keras.backend.clear_session()
    scores = {split: metrics[split] for split in ("val", "test")}
    return {"scores": scores, "seconds": time.perf_counter() - started}


def _drive(task, jobs: list[Job], source: str, workers, outcome: Outcome, progress: bool) -> None:
    """Keep at most `workers` tasks in flight, recording each as it finishes."""
    import ray

    waiting = list(jobs)
    running: dict = {}
    limit = workers or len(jobs)
    with tqdm(total=len(jobs), unit="run", disable=not progress) as bar:
        try:
            while waiting or running:
                while waiting and len(running) < limit:
                    job = waiting.pop(0)
                    reference = task.remote(job.config, str(job.out_dir), source, job.tensorboard)
                    running[reference] = job
                done, _ = ray.wait(list(running), num_returns=1)
                for reference in done:
                    _record(reference, running.pop(reference), outcome, bar)
        except KeyboardInterrupt:
            # Force-cancelled tasks are not retried; their folders resume on the next call.
            for reference in running:
                ray.cancel(reference, force=True)
            raise


def _record(reference, job: Job, outcome: Outcome, bar: tqdm) -> None:
    import ray

    try:
        result = ray.get(reference)
    except ray.exceptions.RayError as error:
        result = {"error": failure_reason(error)}
    if "error" in result:
        outcome.failed[job.out_dir] = result["error"]
        bar.write(f"failed  {job.out_dir}: {result['error']}")
    else:
        outcome.finished.append(job.out_dir)
        scores = result["scores"]
        bar.write(
            f"done    {job.out_dir}: val accuracy {scores['val']['accuracy']:.2%}, "
            f"test accuracy {scores['test']['accuracy']:.2%} ({result['seconds']:.0f} s)"
        )
    bar.update()


def failure_reason(error: Exception) -> str:
    """One line saying why a task failed after its retries."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, UserError | RunError):  # Our own errors are sentences already.
        return str(cause)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}".splitlines()[0]
    first_line = next((line for line in str(error).splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {first_line}"
