"""Run many training runs as Ray tasks: on this machine, or unchanged on a Ray cluster.

    cifarlab sweep baseline --grid learning_rate=1e-3,3e-3 --repeats 3 --workers 2

Why Ray core rather than Ray Tune: a run is already a complete, resumable unit (`training.run`
writes an ordinary run folder and continues an interrupted one from it) and the search space is
a fixed grid that `cifarlab.sweep` expands itself. Remote tasks give exactly what is missing —
resource-aware scheduling across nodes, bounded retries when a task raises or its worker process
dies, and cancellation — while Tune would add its own trial folders, checkpoint syncing and
reporting API on top of the run folders we already have, and force `training.run` into a Trainable.

Without an address a local Ray is started (and stopped again) on this machine; with one, the
same jobs go to that cluster. If Ray is already initialised in this process it is reused.
Each task loads the data itself and writes its run folder where it runs, so on a cluster every
node must see the data and the output folder at the same path (shared storage such as NFS),
and every node needs cifarlab installed. A folder holding `metrics.json` is a finished run and
is never submitted again; an interrupted one resumes from its last finished epoch.

Testing aid: if the submitting process has `CIFARLAB_FAULT_ONCE=<marker path>` set, the first
task to start creates that marker file and kills its own worker process with `os._exit(1)`,
as a crashed machine would; later tasks see the marker and run normally. Tests use it to check
that a dead worker's run is retried.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from cifarlab import data
from cifarlab.config import Config
from cifarlab.errors import RunError, UserError

try:
    import ray
except ModuleNotFoundError:  # Ray is an optional extra; only running jobs needs it.
    ray = None

FAULT_ONCE = "CIFARLAB_FAULT_ONCE"
# Environment forwarded from the submitting process to every task, when set there.
_FORWARDED = ("KERAS_BACKEND", FAULT_ONCE)


@dataclass(frozen=True)
class Job:
    """One training run: what to train and the run folder to train it into."""

    config: Config
    out_dir: Path


@dataclass(frozen=True)
class RayOptions:
    """Where the runs go and how much of a machine each one takes."""

    address: str | None = None  # An existing cluster ("HOST:6379"); None starts a local Ray.
    workers: int | None = None  # Runs at once; None fills whatever the cluster has free.
    cpus_per_run: float = 1
    gpus_per_run: float = 0
    max_retries: int = 2  # Extra attempts for a task that raised or whose worker died.


@dataclass
class Outcome:
    """Run folders by what happened to them in one call of `run_all`."""

    finished: list[Path] = field(default_factory=list)  # Trained (or resumed) by this call.
    skipped: list[Path] = field(default_factory=list)  # Already finished before this call.
    failed: dict[Path, str] = field(default_factory=dict)  # Run folder → why it failed.

    @property
    def submitted(self) -> int:
        return len(self.finished) + len(self.failed)


def is_finished(out_dir: Path) -> bool:
    return (Path(out_dir) / "metrics.json").is_file()


def run_all(
    jobs: Sequence[Job],
    data_path: str | Path | None,
    options: RayOptions | None = None,
    progress: bool = True,
) -> Outcome:
    """Train every unfinished job as a Ray task; report each finished run and return the tally.

    Ctrl-C cancels the outstanding tasks and re-raises `KeyboardInterrupt`; finished run
    folders are kept, and rerunning resumes the rest.
    """
    options = options or RayOptions()
    outcome = Outcome(skipped=[job.out_dir for job in jobs if is_finished(job.out_dir)])
    pending = [job for job in jobs if not is_finished(job.out_dir)]
    if progress and outcome.skipped:
        print(f"{len(outcome.skipped)} of {len(jobs)} runs already finished; not redoing them.")
    if not pending:
        return outcome
    if ray is None:
        raise UserError("Running jobs needs Ray; install it with: pip install 'cifarlab[ray]'.")
    # Resolved once here, so every task reads the same files (and nothing downloads twice).
    source = str(data.locate(data_path, pending[0].config.dataset).resolve())
    pending = [Job(job.config, Path(job.out_dir).resolve()) for job in pending]
    with ray_session(options):
        task = ray.remote(
            num_cpus=options.cpus_per_run,
            num_gpus=options.gpus_per_run,
            max_retries=options.max_retries,
            retry_exceptions=True,
            runtime_env={"env_vars": worker_environment(options)},
        )(train_one)
        _drive(task, pending, source, options.workers, outcome, progress)
    return outcome


@contextmanager
def ray_session(options: RayOptions) -> Iterator[None]:
    """Reuse an initialised Ray, else connect to `options.address` or start a local one."""
    if ray.is_initialized():
        yield
        return
    settings = {"include_dashboard": False, "log_to_driver": False}
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


def train_one(config: Config, out_dir: str, source: str) -> dict:
    """The body of one task: load the data, train and evaluate into `out_dir`.

    Bad input and training failures (`UserError`, `RunError`) are returned, not raised, because
    retrying them would fail the same way; anything else raises and Ray retries it.
    """
    import keras  # Imported here so that only the workers pay for TensorFlow.

    from cifarlab import training

    started = time.perf_counter()
    try:
        dataset = data.load_for(config, source, quiet=True)
        _crash_once_if_asked()
        metrics = training.run(config, out_dir, dataset, quiet=True)
    except (UserError, RunError) as error:
        return {"error": str(error)}
    finally:
        # Workers are reused from run to run; drop this run's graphs and models.
        keras.backend.clear_session()
    scores = {split: metrics[split] for split in ("val", "test")}
    return {"scores": scores, "seconds": time.perf_counter() - started}


def _crash_once_if_asked() -> None:
    marker = os.environ.get(FAULT_ONCE)
    if not marker:
        return
    try:
        # Creating the marker exclusively means exactly one task crashes, however many start.
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    os._exit(1)


def _drive(task, jobs: list[Job], source: str, workers, outcome: Outcome, progress: bool) -> None:
    """Keep at most `workers` tasks in flight, recording each as it finishes."""
    waiting = list(jobs)
    running: dict[ray.ObjectRef, Job] = {}
    limit = workers or len(jobs)
    with tqdm(total=len(jobs), unit="run", disable=not progress) as bar:
        try:
            while waiting or running:
                while waiting and len(running) < limit:
                    job = waiting.pop(0)
                    running[task.remote(job.config, str(job.out_dir), source)] = job
                done, _ = ray.wait(list(running), num_returns=1)
                for reference in done:
                    _record(reference, running.pop(reference), outcome, bar)
        except KeyboardInterrupt:
            # Force-cancelled tasks are not retried; their folders resume on the next call.
            for reference in running:
                ray.cancel(reference, force=True)
            raise


def _record(reference, job: Job, outcome: Outcome, bar: tqdm) -> None:
    try:
        result = ray.get(reference)
    except ray.exceptions.RayError as error:
        result = {"error": _reason(error)}
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


def _reason(error: ray.exceptions.RayError) -> str:
    """One line saying why a task failed after its retries."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}".splitlines()[0]
    first_line = next((line for line in str(error).splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {first_line}"
