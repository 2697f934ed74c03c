"""Runs every notebook in notebooks/ top to bottom with nbclient, on the current Python.

The notebooks read the reference data (``SNAPFUSION_GOLDEN`` / ``SNAPFUSION_GOLDEN_EVAL``,
set here from the fixtures; the test skips when the data is absent). Each must finish in
under two minutes and is committed without outputs.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
TIME_LIMIT_S = 120
KERNEL = "snapfusion-test-python"


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Jupyter data folder with a kernel spec that runs this very interpreter."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "snapfusion tests", "language": "python"}))
    return root


def test_expected_notebooks_are_present():
    assert [p.name for p in NOTEBOOKS] == ["01_quickstart.ipynb", "02_evaluation.ipynb",
                                           "03_block_latency.ipynb"]
    assert (NOTEBOOK_DIR / "README.md").is_file()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_without_outputs(path: Path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, \
                f"{path.name}: strip the outputs before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path: Path, golden_dir: Path, golden_eval_dir: Path,
                                     kernel_env: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SNAPFUSION_GOLDEN", str(golden_dir))
    monkeypatch.setenv("SNAPFUSION_GOLDEN_EVAL", str(golden_eval_dir))
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_env))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(path, as_version=4)
    # one extra cell reports the interpreter the kernel ran on
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
    client = nbclient.NotebookClient(nb, timeout=TIME_LIMIT_S, kernel_name=KERNEL,
                                     resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    t0 = time.perf_counter()
    client.execute()  # raises CellExecutionError naming the failing cell
    elapsed = time.perf_counter() - t0
    assert elapsed < TIME_LIMIT_S, f"{path.name} took {elapsed:.0f} s"
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    for cell in code_cells:
        assert not [o for o in cell.outputs if o.output_type == "error"]
    printed = "".join(o.get("text", "") for o in code_cells[-1].outputs)
    assert Path(printed.strip()) == Path(sys.executable)
    images = sum(1 for c in code_cells for o in c.outputs if "image/png" in o.get("data", {}))
    assert images >= 1, f"{path.name}: expected figures in the outputs"
