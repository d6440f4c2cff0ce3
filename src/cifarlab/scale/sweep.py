"""Grid sweeps with repeated seeds: expand the grid, train it on Ray, summarise across seeds.

    cifarlab sweep baseline --grid learning_rate=1e-3,3e-3,1e-2 --grid batch_size=32,64 \
        --repeats 3 --data cifar-10-python.tar.gz --out runs

Each grid point × seed is an ordinary run folder, `OUT/<experiment>/<key=value,...>/seed=N`.
Next to the grid points the sweep writes a table (one row per point: mean, sample std and
95% interval of validation and test accuracy and loss across seeds), a plot (validation
accuracy against each swept value) and a text summary, which names the best setting: the highest
mean validation accuracy, since choosing by test accuracy would leak the test set into the
choice.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

from cifarlab import config as configs
from cifarlab import run_folder
from cifarlab.config import Config
from cifarlab.errors import RunError, UserError
from cifarlab.scale import ray_jobs, statistics
from cifarlab.scale.statistics import METRICS, STATISTICS


@dataclass(frozen=True)
class Point:
    """One grid point: the swept settings and its config for each seed."""

    settings: tuple[tuple[str, object], ...]
    configs: tuple[Config, ...]

    @property
    def label(self) -> str:
        """`learning_rate=0.001,batch_size=32`, also the point's folder name."""
        return ",".join(f"{key}={value}" for key, value in self.settings) or "default"


@dataclass(frozen=True)
class Result:
    rows: list[dict]  # One per grid point, as written to the sweep table.
    best: dict | None  # The row with the highest mean validation accuracy.
    outcome: ray_jobs.Outcome
    folder: Path
    text: str  # Each point, then the best setting; also written beside the table.


def sweep_grid(
    base: Config,
    grid_specs: list[str],
    repeats: int,
    data_path: str | Path | None,
    out: str | Path,
    options: ray_jobs.RayOptions | None = None,
    progress: bool = True,
) -> Result:
    """Train every grid point `repeats` times (seeds base.seed, base.seed + 1, ...); summarise.

    Finished runs are not trained again. If some runs fail, the others are still summarised and
    a `RunError` then says which failed. A grid point's folder that holds a run of another
    config (other epochs, say) is refused before anything trains.
    """
    grid = parse_grid(base, grid_specs)
    points = expand(base, grid, repeats)
    folder = Path(out) / base.name
    jobs = [
        ray_jobs.Job(config, point_folder(folder, point, config.seed))
        for point in points
        for config in point.configs
    ]
    outcome = ray_jobs.train_on_ray(jobs, data_path, options or ray_jobs.RayOptions(), progress)
    rows = aggregate(points, folder)
    best = max((row for row in rows if row["n"]), key=lambda row: row["val_accuracy_mean"],
               default=None)  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)  # Even if every run failed.
    columns = [*grid, "n", *(f"{metric}_{name}" for metric in METRICS for name in STATISTICS)]
    run_folder.write_csv(folder / run_folder.SWEEP_CSV, rows, columns)
    plot(folder / run_folder.SWEEP_PNG, grid, rows, best)
    text = summarise_points(points, folder)
    run_folder.write_text(folder / run_folder.SWEEP_TXT, text + "\n")
    if outcome.failed:
        raise RunError(
            f"{len(outcome.failed)} of {len(jobs)} runs failed ({_first(outcome.failed)}); the "
            f"others are summarised in {run_folder.SWEEP_CSV}. Rerun the same command to retry "
            "the failed ones."
        )
    return Result(rows, best, outcome, folder, text)


def parse_grid(base: Config, specs: list[str]) -> dict[str, list]:
    """`["learning_rate=1e-3,3e-3"]` → `{"learning_rate": [0.001, 0.003]}`, typed per field."""
    grid: dict[str, list] = {}
    for spec in specs:
        key, separator, values = spec.partition("=")
        key = key.strip().replace("-", "_")
        if not separator or not key or not values.strip():
            raise UserError(f"--grid {spec} is not KEY=V1,V2; try --grid learning_rate=1e-3,3e-3.")
        if key in grid:
            raise UserError(f"--grid names {key} twice; give all its values in one --grid.")
        if key in ("seed", "name"):
            raise UserError(f"{key} cannot be swept; seeds come from --repeats and --seed.")
        parsed = [configs.setting_value(configs.override(base, **{key: value.strip()}), key)
                  for value in values.split(",")]  # fmt: skip
        if len(set(parsed)) != len(parsed):
            raise UserError(f"--grid {spec} repeats a value; list each value once.")
        grid[key] = parsed
    return grid


def expand(base: Config, grid: dict[str, list], repeats: int) -> list[Point]:
    """Every combination of the grid's values, each with `repeats` consecutive seeds."""
    if repeats < 1:
        raise UserError(f"repeats must be a positive whole number, not {repeats}.")
    points = []
    for values in itertools.product(*grid.values()):
        settings = tuple(zip(grid, values, strict=True))
        point_configs = tuple(
            configs.override(base, **dict(settings), seed=base.seed + index)
            for index in range(repeats)
        )
        points.append(Point(settings, point_configs))
    return points


def point_folder(folder: Path, point: Point, seed: int) -> Path:
    return run_folder.seed_folder(folder / point.label, seed)


def collect(point: Point, folder: Path) -> dict[str, list[float]]:
    """Each metric's values over the point's seeds that finished with exactly its config."""
    values = {metric: [] for metric in METRICS}
    for config in point.configs:
        run_dir = point_folder(folder, point, config.seed)
        if run_folder.finished_with(run_dir, config):
            metrics = run_folder.read_metrics(run_dir)
            for metric in METRICS:
                split, name = metric.split("_")
                values[metric].append(metrics[split][name])
    return values


def aggregate(points: list[Point], folder: Path) -> list[dict]:
    """Per point: the swept values, the number of finished seeds, and each metric's statistics."""
    return [
        {**dict(point.settings), **statistics.summary_row(collect(point, folder))}
        for point in points
    ]


def summarise_points(points: list[Point], folder: Path) -> str:
    """Each point's validation and test accuracy across seeds, then the best setting."""
    lines = []
    accuracies = {}
    for point in points:
        values = collect(point, folder)
        if not values["val_accuracy"]:
            lines.append(f"{point.label}: no finished runs")
            continue
        accuracies[point.label] = values["val_accuracy"]
        validation, test = (
            statistics.summarize(values[f"{split}_accuracy"]) for split in ("val", "test")
        )
        lines.append(
            f"{point.label}: val accuracy {statistics.format_summary(validation)}, "
            f"test accuracy {statistics.format_summary(test)}"
        )
    if not accuracies:
        return "\n".join([*lines, "No grid point finished; there is no best setting."])
    ranked = sorted(accuracies, key=lambda label: -statistics.summarize(accuracies[label]).mean)
    lines.append(f"Best setting (highest mean validation accuracy): {ranked[0]}")
    if len(ranked) > 1:
        first, second = ranked[:2]
        lines.append(statistics.compare_sentence(
            first, accuracies[first], second, accuracies[second], "validation accuracy"
        ))  # fmt: skip
    return "\n".join(lines)


def plot(path: Path, grid: dict[str, list], rows: list[dict], best: dict | None) -> None:
    """One panel per swept key: mean validation accuracy with 95% intervals, one line per
    combination of the other keys."""
    from matplotlib.figure import Figure  # A bare Figure needs no GUI backend.

    keys = list(grid) or ["setting"]
    figure = Figure(figsize=(5 * len(keys), 4), layout="constrained")
    for axes, key in zip(figure.subplots(1, len(keys), squeeze=False)[0], keys, strict=True):
        others = [other for other in grid if other != key]
        for group, members in itertools.groupby(
            sorted(rows, key=lambda row: [str(row[other]) for other in others]),
            key=lambda row: tuple(row[other] for other in others),
        ):
            members = [row for row in members if row["n"]]
            positions = [_position(grid, key, row) for row in members]
            means = [100 * row["val_accuracy_mean"] for row in members]
            errors = [100 * (row["val_accuracy_ci_high"] - row["val_accuracy_mean"])
                      for row in members]  # fmt: skip
            label = ", ".join(
                f"{other}={value}" for other, value in zip(others, group, strict=True)
            )
            axes.errorbar(positions, means, yerr=errors, marker="o", capsize=4, label=label or None)
        _format_axis(axes, grid, key)
        if others:
            axes.legend(fontsize="small")
    title = "validation accuracy, mean and 95% interval across seeds"
    if best is not None:
        best_label = ", ".join(f"{key}={best[key]}" for key in grid) or "default"
        title += f"\nbest: {best_label}"
    figure.suptitle(title)
    with run_folder.atomic_path(path, suffix=".png") as partial:
        figure.savefig(partial, dpi=100)


def _numeric(values: list) -> bool:
    return all(isinstance(value, int | float) and not isinstance(value, bool) for value in values)


def _position(grid: dict[str, list], key: str, row: dict) -> float:
    if key not in grid:
        return 0
    return row[key] if _numeric(grid[key]) else grid[key].index(row[key])


def _format_axis(axes, grid: dict[str, list], key: str) -> None:
    axes.set_xlabel(key)
    axes.set_ylabel("validation accuracy (%)")
    values = grid.get(key, [])
    if values and _numeric(values) and min(values) > 0 and max(values) >= 10 * min(values):
        # Learning rates and the like are swept on a log scale.
        axes.set_xscale("log")
    if values:
        axes.set_xticks(
            values if _numeric(values) else range(len(values)), [str(value) for value in values]
        )
        axes.minorticks_off()
    # Intervals from two or three seeds can reach past what an accuracy can be.
    low, high = axes.get_ylim()
    axes.set_ylim(max(low, 0), min(high, 100))


def _first(failed: dict[Path, str]) -> str:
    run_dir, reason = next(iter(failed.items()))
    more = f" and {len(failed) - 1} more" if len(failed) > 1 else ""
    return f"{run_dir}: {reason}{more}"
