"""Mutation testing with mutmut over the modules whose mistakes give wrong answers or let things in.

Each module is mutated in its own mutmut run, against the fast tests that state its behaviour
(``SELECTIONS``). mutmut runs those tests once to learn which test reaches which function, then
runs, for every mutant, only the tests that reach the mutated function. The work happens in a
scratch copy of the repository (``src``, ``tests``, ``pyproject.toml``), never in this checkout.

    python bench/mutation.py                       # all modules, 2 workers
    python bench/mutation.py diagnosis run_folder  # some of them
    python bench/mutation.py --keep /tmp/mutation  # keep the scratch copy to inspect survivors

It prints, per module, mutants, killed (those that timed out among them), survived and the
time taken, then every survivor with its diff (``mutmut show``), and writes the same as JSON
with ``--json``. Mutants that cannot change behaviour are not generated: their lines carry
``# pragma: no mutate`` with the reason beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# module (under src/cifarlab) -> the tests that state its behaviour and run in seconds to minutes.
SELECTIONS: dict[str, list[str]] = {
    "diagnosis": ["tests/test_diagnosis.py", "tests/test_diagnosis_boundaries.py"],
    "scale/statistics": ["tests/test_statistics.py"],
    "data/safe_files": ["tests/test_hostile_archives.py", "tests/test_data.py"],
    "data/folders": ["tests/test_folders.py"],
    # test_scaling.py holds the validation limit's tests (`max_val_images`, modern's 1,000).
    "data/dataset": ["tests/test_datasets.py", "tests/test_data.py", "tests/test_scaling.py"],
    "run_folder": ["tests/test_run_folder.py"],
    "augmentation": ["tests/test_augmentation_layers.py"],
    "input_pipeline": ["tests/test_input_pipeline.py"],
    "evaluation": ["tests/test_evaluation.py"],
    # In-process runs of a few seconds; the kill tests' runs are other processes, which mutmut
    # cannot map to the functions they reach.
    "training": ["tests/test_training_rules.py", "tests/test_scaling.py"],
}


WORDING = r"""^\s*[rfu]?("[^"{]*"|'[^'{]*')\s*[,)]*\s*(#.*)?$"""


# What mutmut calls a mutant whose tests did not pass: a test failed, or the tests never ended
# (a mutant that loops forever) or crashed. All three are caught; "no tests" and "survived" are
# not.
CAUGHT = ("killed", "timeout", "segfault")


def caught(counts: dict[str, int]) -> int:
    """How many of a module's mutants were caught, from its counts by status."""
    return sum(counts.get(status, 0) for status in CAUGHT)


def scratch_copy(root: Path) -> Path:
    """A copy of what the tests need, with ``../shared`` beside it as in a checkout."""
    copy = root / "cifarlab"
    copy.mkdir(parents=True)
    for name in ("src", "tests"):
        shutil.copytree(REPO / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "pyproject.toml", copy / "pyproject.toml")
    with (copy / "tests" / "conftest.py").open("a") as conftest:
        conftest.write(ORDERED_BY_KILLS)
    shared = REPO.parent / "shared"
    if shared.exists():
        # The tests find the shared data at <repository>/../shared, and mutmut runs them from
        # <copy>/mutants, so the link goes inside the copy.
        (copy / "shared").symlink_to(shared)
    return copy


def configure(copy: Path, module: str, tests: list[str]) -> None:
    """mutmut reads its settings from pyproject.toml's [tool.mutmut] table."""
    settings = {
        "source_paths": ["src"],
        "only_mutate": [f"src/cifarlab/{module}.py"],
        "pytest_add_cli_args_test_selection": tests,
        # Tests marked slow train on real data for a minute each: not the fast tests.
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-q", "-m", "not slow"],
        # Keras and TensorFlow are not fork-safe once they have run: each mutant forks from a
        # server that has only collected the tests.
        "process_isolation": "forkserver",
        "use_git_change_detection": False,
        # A mutant times out after (its tests' seconds + constant) × multiplier of wall time.
        # mutmut's seconds leave out fixtures' set-up (a training of 16 s in test_folders.py),
        # which the constant covers; its default multiplier, 15, let each of data/folders'
        # three mutants that loop forever run for 162 s (bench/README.md).
        "timeout_constant": 20,
        "timeout_multiplier": 2,
        # The wording of messages is not mutated: a line that holds nothing but a string
        # literal without placeholders is part of a sentence (a placeholder's expression is).
        "do_not_mutate_patterns": [WORDING],
    }
    table = (f"{key} = {json.dumps(value)}" for key, value in settings.items())
    lines = ["", "[tool.mutmut]", *table]
    with (copy / "pyproject.toml").open("a") as handle:
        handle.write("\n".join(lines) + "\n")


# Appended to the scratch copy's tests/conftest.py. mutmut hands each mutant's tests to pytest
# in a set's arbitrary order and stops at the first failure, so a mutant that one test kills at
# once could wait first on others that train for seconds each. mutmut's first run (its "stats"
# run, every test in file order) records what each test costs, fixtures' set-up included, which
# mutmut's own durations leave out. Every mutant's run then notes which tests it ran and which
# one failed, and the next runs take their tests in the order that kills soonest on average:
# seconds divided by the share of runs the test failed (Laplace's estimate). On `training`,
# where every test trains, cheapest-first alone ran the one test that reads the run's records
# fifth of ten.
ORDERED_BY_KILLS = """

# bench/mutation.py: run each mutant's tests in the order that kills soonest.
import json as _json
import os as _os
import time as _time

_MUTATION_COSTS = "mutation-test-costs.json"
_MUTATION_RUNS = "mutation-test-runs.txt"
_mutation_seconds = {}  # Each test's seconds, set-up and tear-down included.
_mutation_runs = []  # The file of each test's runs and failures.


def _mutant():
    return _os.environ.get("MUTANT_UNDER_TEST", "")


def pytest_runtest_logstart(nodeid, location):
    _mutation_seconds[nodeid] = _time.perf_counter()


def pytest_runtest_logfinish(nodeid, location):
    _mutation_seconds[nodeid] = _time.perf_counter() - _mutation_seconds[nodeid]


def pytest_configure(config):
    _mutation_runs.append(config.rootpath / _MUTATION_RUNS)  # Before a test changes cwd.


def pytest_runtest_logreport(report):
    if "__mutmut_" in _mutant() and (report.when == "call" or report.failed):
        with open(_mutation_runs[0], "a") as runs:  # Short appends: whole lines.
            runs.write(("failed " if report.failed else "ran ") + report.nodeid + "\\n")


def pytest_sessionfinish(session):
    if _mutant() == "stats" and _mutation_seconds:
        (session.config.rootpath / _MUTATION_COSTS).write_text(_json.dumps(_mutation_seconds))


def pytest_collection_modifyitems(config, items):
    costs = config.rootpath / _MUTATION_COSTS
    if _mutant() == "stats" or not costs.is_file():
        return
    cost = _json.loads(costs.read_text())
    runs, kills = {}, {}
    history = config.rootpath / _MUTATION_RUNS
    for line in history.read_text().splitlines() if history.is_file() else []:
        outcome, _, nodeid = line.partition(" ")
        counts = kills if outcome == "failed" else runs
        counts[nodeid] = counts.get(nodeid, 0) + 1

    def seconds_per_kill(item):
        failed = kills.get(item.nodeid, 0)
        share = (failed + 1) / (runs.get(item.nodeid, 0) + failed + 2)
        return cost.get(item.nodeid, 0.0) / share

    items.sort(key=seconds_per_kill)
"""


# Run inside the scratch copy, after ``mutmut run``: every mutant's status, and the diff of those
# the tests did not kill. One process, because ``mutmut show`` starts Python once per mutant.
SURVEY = """
import json, sys
from mutmut.__main__ import SourceFileMutationData, status_by_exit_code, walk_mutatable_files
from mutmut.mutation.diff_apply import get_diff_for_mutant
survey = {}
for path in walk_mutatable_files():
    data = SourceFileMutationData(path=path)
    data.load()
    for name, code in data.exit_code_by_key.items():
        status = status_by_exit_code[code]
        survey[name] = [status, "" if status == "killed" else get_diff_for_mutant(name, path=path)]
json.dump(survey, sys.stdout)
"""


def survey(copy: Path, env: dict[str, str]) -> dict[str, list[str]]:
    """Mutant name -> [status, diff]."""
    out = subprocess.run([sys.executable, "-c", SURVEY], cwd=copy, env=env, capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    return json.loads(out)


def mutate(module: str, root: Path, workers: int) -> dict:
    copy = scratch_copy(root / module.replace("/", "."))
    configure(copy, module, SELECTIONS[module])
    # Tests that start cifarlab in a subprocess must import the mutated code too. The folder
    # exists before Python starts, or the import system caches it as missing.
    mutated = copy / "mutants" / "src"
    mutated.mkdir(parents=True)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(mutated))
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(workers)],
                         cwd=copy, env=env, capture_output=True, text=True)  # fmt: skip
    seconds = time.monotonic() - started
    mutants = survey(copy, env) if run.returncode == 0 else {}
    counts: dict[str, int] = {}
    for status, _ in mutants.values():
        counts[status] = counts.get(status, 0) + 1
    survivors = {name: f"{status}\n{shown}" for name, (status, shown) in mutants.items()
                 if status not in CAUGHT}  # fmt: skip
    return {"module": module, "seconds": round(seconds), "counts": counts, "mutants": len(mutants),
            "survivors": survivors, "returncode": run.returncode,
            "log": run.stdout[-2000:] + run.stderr[-2000:] if run.returncode else ""}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", metavar="MODULE",
                        help=f"src/cifarlab's modules: {', '.join(SELECTIONS)} (default: all)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--keep", type=Path, help="a scratch folder to keep (default: temporary)")
    parser.add_argument("--json", type=Path, help="write the figures and survivors here")
    args = parser.parse_args()
    # Checked here: Python 3.11's argparse refuses an empty `nargs="*"` list given `choices`.
    unknown = [module for module in args.modules if module not in SELECTIONS]
    if unknown:
        parser.error(f"unknown module {unknown[0]!r}; choose from {', '.join(SELECTIONS)}")

    root = args.keep or Path(tempfile.mkdtemp(prefix="cifarlab-mutation-"))
    root.mkdir(parents=True, exist_ok=True)
    reports = []
    try:
        for module in args.modules or list(SELECTIONS):
            report = mutate(module, root, args.workers)
            reports.append(report)
            killed = caught(report["counts"])
            share = f"{100 * killed / report['mutants']:.1f}%" if report["mutants"] else "-"
            left, seconds = len(report["survivors"]), report["seconds"]
            timeouts = report["counts"].get("timeout", 0)
            print(f"{module:18} {report['mutants']:5} mutants  {killed:5} killed ({share}, "
                  f"{timeouts} by timeout)  {left:4} left  {seconds:5} s", flush=True)  # fmt: skip
            if report["returncode"]:
                print(report["log"], file=sys.stderr)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    total = sum(r["mutants"] for r in reports)
    killed = sum(caught(r["counts"]) for r in reports)
    if total:
        seconds = sum(r["seconds"] for r in reports)
        print(f"{'all':18} {total:5} mutants  {killed:5} killed ({100 * killed / total:.1f}%)"
              f"  {total - killed:4} left  {seconds:5} s")  # fmt: skip
    for report in reports:
        for name, shown in report["survivors"].items():
            print(f"\n--- {name}: {shown}")
    if args.json:
        args.json.write_text(json.dumps(reports, indent=1))


if __name__ == "__main__":
    main()
