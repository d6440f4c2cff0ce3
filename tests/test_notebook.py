"""The quickstart notebook runs top to bottom on the tiny archive, and shows the results table."""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO

NOTEBOOK = REPO / "examples" / "quickstart.ipynb"


def test_quickstart_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


@pytest.mark.slow
def test_quickstart_runs_top_to_bottom(tiny_archive, tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # As papermill does: skip the install cell (the test runs in the installed package) and
    # replace the parameters cell.
    notebook.cells = [
        cell for cell in notebook.cells if "install" not in cell.metadata.get("tags", [])
    ]
    parameters = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    parameters.source = f'DATA = r"{tiny_archive}"\nEPOCHS = 1\nOUT = "runs"\nIMAGE = None'
    NotebookClient(notebook, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()  # fmt: skip

    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code_cells)
    outputs = [output for cell in code_cells for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    html = "".join(output.get("data", {}).get("text/html", "") for output in outputs)
    assert "Val. acc." in html and "batchnorm" in html
    assert (tmp_path / "runs" / "report.html").is_file()
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(images) >= 3  # Two learning-curve figures and the comparison plot.
