"""Runs recorded where practitioners' tools already look: MLflow, and TensorBoard's HParams.

The run folder stays the source of truth. `log_runs` reads what a finished run wrote (its
config, every epoch of its history, its final metrics and verdict, its figures and files) and
records it as one MLflow run, in the store `MLFLOW_TRACKING_URI` names, else in MLflow's own
default, `mlflow.db` (SQLite) in the current folder, where `mlflow ui` started in the same
folder finds it and lists and compares a study's, a sweep's or a search's runs. (MLflow 3.7
replaced its `mlruns/` file store with that default, and later versions refuse the file store
unless `MLFLOW_ALLOW_FILE_STORE` is set.) A run already recorded from the same folder with the
same config and metrics is not recorded twice. Tracking never fails a training: a store that
cannot be written is one warning.

    cifarlab study --data cifar-10-python.tar.gz --track mlflow   # then: mlflow ui
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from pathlib import Path

from cifarlab import run_folder
from cifarlab.config import dotted

DEFAULT_STORE = "mlflow.db"  # In the folder the command runs in, as `mlflow ui` looks.
EXPERIMENT = "cifarlab"
KEY_TAG = "cifarlab.record"  # What a recorded run was recorded from: config + metrics digest.
FOLDER_TAG = "cifarlab.run_folder"
FILES = (run_folder.CONFIG, run_folder.METRICS, run_folder.HISTORY, run_folder.DATA)


def log_runs(run_dirs: list[Path], experiment: str = EXPERIMENT) -> list[str]:
    """Record each run folder (finished, or a search's trained trial) in MLflow; the MLflow run
    ids (new or already there). A failure is one warning and ends the recording, never the
    command."""
    try:
        import mlflow
    except ImportError:
        warnings.warn("--track mlflow needs MLflow (pip install 'cifarlab[track]'); the runs "
                      "are complete in their folders.", stacklevel=2)  # fmt: skip
        return []
    ids = []
    # MLflow and Alembic announce every table they create; only their warnings are shown.
    chatty = [logging.getLogger(name) for name in ("mlflow", "alembic")]
    levels = [logger.level for logger in chatty]
    for logger in chatty:
        logger.setLevel(logging.WARNING)
    try:
        if "MLFLOW_TRACKING_URI" not in os.environ:
            mlflow.set_tracking_uri(f"sqlite:///{Path(DEFAULT_STORE).resolve()}")
        client = mlflow.MlflowClient()
        experiment_id = _experiment_id(client, experiment)
        for run_dir in run_dirs:
            ids.append(_log_run(client, experiment_id, Path(run_dir)))
    except Exception as error:  # A full disk, an unreachable server: the folders stand.
        reason = f"{type(error).__name__}: {error}".splitlines()[0]
        warnings.warn(f"MLflow tracking failed ({reason}); the runs are complete in their "
                      "folders.", stacklevel=2)  # fmt: skip
    finally:
        for logger, level in zip(chatty, levels, strict=True):
            logger.setLevel(level)
    return ids


def _experiment_id(client, name: str) -> str:
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found is not None else client.create_experiment(name)


def _record_key(run_dir: Path) -> str:
    """What identifies one recording: the run's folder, config, history and metrics as written
    (a search's trials have no metrics: only its best is scored)."""
    digest = hashlib.sha256(str(run_dir.resolve()).encode())
    for name in (run_folder.CONFIG, run_folder.HISTORY, run_folder.METRICS):
        if (run_dir / name).is_file():
            digest.update((run_dir / name).read_bytes())
    return digest.hexdigest()


def _log_run(client, experiment_id: str, run_dir: Path) -> str:
    from mlflow.entities import Metric, Param

    key = _record_key(run_dir)
    existing = client.search_runs([experiment_id], f"tags.`{KEY_TAG}` = '{key}'", max_results=1)
    if existing:
        return existing[0].info.run_id
    config = run_folder.read_config(run_dir)
    metrics = run_folder.read_metrics(run_dir) if run_folder.is_finished(run_dir) else {}
    diagnosis = metrics.get("diagnosis")
    verdict = diagnosis.get("verdict") if isinstance(diagnosis, dict) else None
    tags = {KEY_TAG: key, FOLDER_TAG: str(run_dir.resolve()), "experiment": config.name,
            "mlflow.runName": run_name(run_dir)}  # fmt: skip
    if verdict is not None:
        tags["verdict"] = str(verdict)
    run = client.create_run(experiment_id, tags=tags)
    run_id = run.info.run_id
    params = [Param(name, str(value)) for name, value in dotted(config.to_dict()).items()]
    values = [
        Metric(name, float(value), 0, int(row["epoch"]) + 1)  # Epochs counted from 1.
        for row in run_folder.read_history(run_dir)
        for name, value in row.items()
        if name != "epoch" and value is not None
    ]
    for split in ("train", "val", "test"):
        scores = metrics.get(split)
        if isinstance(scores, dict):
            values += [Metric(f"final_{split}_{name}", float(value), 0, 0)
                       for name, value in scores.items() if isinstance(value, int | float)]
    for name in ("best_epoch", "epochs_run", "params"):
        if isinstance(metrics.get(name), int | float):
            values.append(Metric(name, float(metrics[name]), 0, 0))
    for start in range(0, len(params), 100):  # MLflow takes at most 100 params a call.
        client.log_batch(run_id, params=params[start : start + 100])
    for start in range(0, len(values), 1000):
        client.log_batch(run_id, metrics=values[start : start + 1000])
    for path in sorted(run_dir.glob("*.png")) + [run_dir / name for name in FILES]:
        if path.is_file():
            client.log_artifact(run_id, str(path))
    client.set_terminated(run_id)
    return run_id


def run_name(run_dir: Path) -> str:
    """`baseline`, or `baseline/seed=1` for one of a study's repeated runs: how MLflow and
    TensorBoard's HParams name the run."""
    if run_dir.name.startswith(run_folder.SEED_PREFIX):
        return f"{run_dir.parent.name}/{run_dir.name}"
    return run_dir.name


def write_hparams(logs: Path, config_dict: dict, trial: str) -> None:
    """TensorBoard's HParams record of one run, in its log folder, so the HParams dashboard
    sets a study's or search's runs side by side with the epoch metrics Keras logs there."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hparams

    values = {name: value if isinstance(value, bool | int | float | str) else str(value)
              for name, value in dotted(config_dict).items()}  # fmt: skip
    with tf.summary.create_file_writer(str(logs)).as_default():
        hparams.hparams(values, trial_id=trial)
