"""Sweeps on a local Ray: run folders, sweep.csv arithmetic, retries, and no redone work."""

from __future__ import annotations

import csv
import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import t as student_t

from cifarlab import cli, config, run_folder
from cifarlab.errors import RunError, UserError
from cifarlab.scale import ray_jobs, sweep

GRID = ["learning_rate=1e-3,3e-3", "batch_size=16,32"]
BASE = config.override(config.BASELINE, epochs=1)


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """One local Ray with two CPUs for the whole module; its workers use the test cache."""
    ray = pytest.importorskip("ray")
    # Workers inherit the environment Ray starts with, so point them at the isolated cache now.
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.getbasetemp() / "cache")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous


@pytest.fixture(scope="module")
def grid_sweep(local_ray, tiny_archive, tmp_path_factory):
    """A 2×2 grid × 2 seeds, one epoch each, two runs at a time."""
    out = tmp_path_factory.mktemp("sweep")
    options = ray_jobs.RayOptions(workers=2)
    return sweep.sweep_grid(BASE, GRID, 2, tiny_archive, out, options, progress=False)


def run_folders(folder):
    return sorted(path.parent for path in folder.glob("*/seed=*/metrics.json"))


@pytest.mark.slow
def test_grid_gives_one_finished_run_folder_per_point_and_seed(grid_sweep):
    folders = run_folders(grid_sweep.folder)
    assert len(folders) == 8 and len(grid_sweep.outcome.finished) == 8
    for folder in folders:
        saved = run_folder.read_config(folder)
        assert folder.parent.name == (
            f"learning_rate={saved.learning_rate},batch_size={saved.batch_size}"
        )
        assert folder.name == f"seed={saved.seed}" and saved.seed in (0, 1)
        assert saved.epochs == 1


@pytest.mark.slow
def test_sweep_csv_rows_match_numpy_on_the_run_folders(grid_sweep):
    with open(grid_sweep.folder / "sweep.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    settings = [(float(row["learning_rate"]), int(row["batch_size"])) for row in rows]
    assert settings == [(0.001, 16), (0.001, 32), (0.003, 16), (0.003, 32)]
    for row in rows:
        point = (
            grid_sweep.folder
            / f"learning_rate={row['learning_rate']},batch_size={row['batch_size']}"
        )
        runs = [
            json.loads((point / f"seed={seed}" / "metrics.json").read_text()) for seed in (0, 1)
        ]
        assert int(row["n"]) == 2
        for split in ("val", "test"):
            for name in ("accuracy", "loss"):
                values = np.array([run[split][name] for run in runs])
                half_width = student_t.ppf(0.975, 1) * values.std(ddof=1) / np.sqrt(2)
                prefix = f"{split}_{name}"
                assert float(row[f"{prefix}_mean"]) == pytest.approx(values.mean())
                assert float(row[f"{prefix}_std"]) == pytest.approx(values.std(ddof=1))
                assert float(row[f"{prefix}_ci_low"]) == pytest.approx(values.mean() - half_width)
                assert float(row[f"{prefix}_ci_high"]) == pytest.approx(values.mean() + half_width)
    best = max(rows, key=lambda row: float(row["val_accuracy_mean"]))
    label = f"learning_rate={best['learning_rate']},batch_size={best['batch_size']}"
    report = (grid_sweep.folder / "sweep.txt").read_text()
    assert f"Best setting (highest mean validation accuracy): {label}" in report
    assert (grid_sweep.folder / "sweep.png").stat().st_size > 0


@pytest.mark.slow
def test_rerunning_the_command_trains_nothing(grid_sweep, tiny_archive, capsys):
    folders = run_folders(grid_sweep.folder)
    files = [folder / name for folder in folders for name in ("best.keras", "metrics.json")]
    before = {path: path.stat().st_mtime_ns for path in files}
    out = grid_sweep.folder.parent
    argv = ["sweep", "baseline", "--grid", GRID[0], "--grid", GRID[1], "--repeats", "2"]
    argv += ["--epochs", "1", "--data", str(tiny_archive), "--out", str(out), "--workers", "2"]
    assert cli.main(argv) == 0
    assert "8 of 8 runs already finished" in capsys.readouterr().out
    again = sweep.sweep_grid(BASE, GRID, 2, tiny_archive, out, progress=False)
    assert again.outcome.submitted == 0 and len(again.outcome.skipped) == 8
    assert {path: path.stat().st_mtime_ns for path in files} == before


@pytest.mark.slow
def test_a_different_config_in_a_finished_sweep_is_refused_naming_it(
    grid_sweep, tiny_archive, capsys
):
    out = grid_sweep.folder.parent
    argv = ["sweep", "baseline", "--grid", GRID[0], "--grid", GRID[1], "--repeats", "2"]
    argv += ["--epochs", "2", "--data", str(tiny_archive), "--out", str(out), "--workers", "2"]
    assert cli.main(argv) == 2
    error = capsys.readouterr().err
    assert "holds a run with a different config (epochs 1 → 2)" in error
    assert all(run_folder.read_config(folder).epochs == 1 for folder in run_folders(out))


def training_worker() -> int | None:
    """The process id of a Ray worker of this test's own Ray running `train_one` (Ray titles it
    `ray::train_one`): a descendant of this process, never another user's worker."""
    for entry in Path("/proc").iterdir():
        try:
            title = (entry / "cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        own = entry.name.isdigit() and descends_from_this_process(int(entry.name))
        if own and title.startswith(b"ray::train_one"):
            return int(entry.name)
    return None


def descends_from_this_process(pid: int) -> bool:
    """Whether `pid`'s chain of parents reaches this test process (the local Ray's driver)."""
    while pid > 1:
        if pid == os.getpid():
            return True
        try:
            # The parent id is the field after the parenthesised command, which may hold spaces.
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rpartition(")")[2].split()[1])
    return False


def kill_the_worker_once_it_trains(run_dir: Path, timeout: float = 300) -> None:
    """`kill -9` the Ray worker training into `run_dir`, once its run folder has begun."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = training_worker()
        if pid and (run_dir / "config.json").is_file():
            os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.1)
    raise AssertionError(f"no worker began training into {run_dir}")


@pytest.mark.slow
def test_a_killed_worker_is_reported_without_retries_and_retried_with_them(
    local_ray, tiny_archive, tmp_path
):
    out = tmp_path / "out"
    run_dir = out / "baseline" / "batch_size=32" / "seed=0"
    with ThreadPoolExecutor(1) as pool:
        no_retries = ray_jobs.RayOptions(workers=1, max_retries=0)
        future = pool.submit(sweep.sweep_grid, BASE, ["batch_size=32"], 1, tiny_archive, out,
                             no_retries, False)  # fmt: skip
        kill_the_worker_once_it_trains(run_dir)
        with pytest.raises(RunError, match="1 of 1 runs failed"):
            future.result()
    rows = (out / "baseline" / "sweep.csv").read_text().splitlines()
    assert rows[1].startswith("32,0,")  # The point is listed, with no finished seeds.
    assert not run_folder.is_finished(run_dir)

    with ThreadPoolExecutor(1) as pool:
        one_retry = ray_jobs.RayOptions(workers=1, max_retries=1)
        future = pool.submit(sweep.sweep_grid, BASE, ["batch_size=32"], 1, tiny_archive, out,
                             one_retry, False)  # fmt: skip
        kill_the_worker_once_it_trains(run_dir)
        result = future.result()
    assert result.outcome.failed == {} and len(result.outcome.finished) == 1  # The retry ran.
    assert len(run_folders(result.folder)) == 1 and result.rows[0]["n"] == 1


def test_grid_values_are_parsed_to_each_settings_type():
    grid = sweep.parse_grid(BASE, ["learning_rate=1e-3, 3e-3", "batch-size=32", "batch_norm=true"])
    assert grid == {"learning_rate": [0.001, 0.003], "batch_size": [32], "batch_norm": [True]}
    points = sweep.expand(BASE, grid, repeats=3)
    assert [point.label for point in points] == [
        "learning_rate=0.001,batch_size=32,batch_norm=True",
        "learning_rate=0.003,batch_size=32,batch_norm=True",
    ]
    assert [config.seed for config in points[0].configs] == [0, 1, 2]


@pytest.mark.parametrize(
    "grid",
    [{}, {"batch_norm": [False, True]}, {"learning_rate": [1e-3, 1e-2], "batch_size": [32]}],
)
def test_plot_draws_any_grid_including_none(grid, tmp_path):
    points = sweep.expand(BASE, grid, repeats=1)
    rows = [{**dict(point.settings), "n": 2, "val_accuracy_mean": 0.5, "val_accuracy_ci_high": 0.6}
            for point in points]  # fmt: skip
    rows[-1]["n"] = 0  # A point whose runs all failed is left out of the lines.
    sweep.plot(tmp_path / "sweep.png", grid, rows, best=rows[0])
    assert (tmp_path / "sweep.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("learning_rate", "not KEY=V1,V2"),
        ("learning_rate=fast", "must be of type float"),
        ("momentum=0.9", "Unknown setting 'momentum'"),
        ("seed=1,2", "seeds come from --repeats"),
        ("batch_size=32,32", "repeats a value"),
    ],
)
def test_bad_grids_are_refused_with_one_sentence(spec, message, tmp_path, capsys):
    with pytest.raises(UserError, match=message):
        sweep.parse_grid(BASE, [spec])
    assert cli.main(["sweep", "baseline", "--grid", spec, "--out", str(tmp_path)]) == 2
    assert message.split("'")[0] in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # Nothing was written for a bad command.
