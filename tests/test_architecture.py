"""The shape of the code, checked: no import circles, one owner of the run-folder format, and
only the command line (and the web service) prints or exits."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

from cifarlab import run_folder

SOURCE = Path(run_folder.__file__).resolve().parent
MODULES = {
    ".".join(("cifarlab", *path.relative_to(SOURCE).with_suffix("").parts)).removesuffix(
        ".__init__"
    ): path
    for path in sorted(SOURCE.rglob("*.py"))
}


def imported_modules(name: str, path: Path) -> set[str]:
    """Every cifarlab module `path` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}".rstrip(".")
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {module for module in found if module in MODULES and module != name}


def test_the_import_graph_has_no_circles():
    graph = {name: imported_modules(name, path) for name, path in MODULES.items()}
    assert len(graph) > 30 and graph["cifarlab.studies"]  # The graph is really read.
    graphlib.TopologicalSorter(graph).prepare()  # Raises CycleError naming the circle.


def test_lower_layers_never_import_the_command_line_or_the_api():
    for name, path in MODULES.items():
        if name not in ("cifarlab.cli", "cifarlab", "cifarlab.api"):
            assert not imported_modules(name, path) & {"cifarlab.cli", "cifarlab.api"}, name


def test_run_folder_file_names_are_spelled_only_in_run_folder():
    names = [
        value
        for key, value in vars(run_folder).items()
        if key.isupper() and isinstance(value, str) and "." in value
    ]
    assert {"metrics.json", "config.json", "history.csv", "best.keras", "report.html"} <= set(names)
    for module, path in MODULES.items():
        if module == "cifarlab.run_folder":
            continue
        text = path.read_text()
        assert not [name for name in names if name in text], module


def test_only_the_command_line_and_the_web_service_print_or_exit():
    for module, path in MODULES.items():
        if module == "cifarlab.cli" or module.startswith("cifarlab.serve"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                function = node.func
                assert not (isinstance(function, ast.Name) and function.id == "print"), module
                assert not (
                    isinstance(function, ast.Attribute)
                    and function.attr == "exit"
                    and getattr(function.value, "id", "") == "sys"
                ), module
