"""The notebooks: each runs in quick mode, and each is committed with clean outputs.

Quick mode (``PPL_VAE_QUICK=1``) shrinks a notebook's work to seconds. The committed
notebooks hold the outputs of a full run; a notebook saved without them, or with an error,
a warning or a path of the machine that ran it in them, fails here. A notebook written by a
``notebooks/_build_*.py`` script must hold exactly the cells that script builds.
"""

import os
import runpy
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
BUILDERS = sorted(NOTEBOOK_DIR.glob("_build_*.py"))
CELL_TIMEOUT = 300  # seconds; a quick-mode cell needs a few
MAX_BYTES = 1_000_000

# Run first in every executed notebook. The python3 kernelspec starts "python", which
# jupyter_client replaces by the Python running the tests; a kernelspec found elsewhere
# (another environment, the user's folder) would run a different one.
KERNEL_CHECK = f"""\
import os, sys
assert os.path.realpath(sys.prefix) == {os.path.realpath(sys.prefix)!r}, (
    f"the python3 kernel runs {{sys.executable}}, not the tests' Python {sys.executable!r}"
)
"""


def _ids(paths):
    return [p.name for p in paths]


def _output_text(output):
    if output.output_type == "stream":
        return output.text
    if output.output_type == "error":
        return "\n".join([output.ename, output.evalue, *output.traceback])
    return str(output.get("data", {}).get("text/plain", ""))


def _problems(nb):
    """Each code cell's outputs that hold an error, a traceback, a warning or a local path."""
    local_paths = {str(ROOT), str(Path.home())} - {"/"}
    found = []
    for number, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        for output in cell.outputs:
            text = _output_text(output)
            if output.output_type == "error" or "Traceback" in text:
                found.append(f"cell {number}: error output: {text[:300]}")
            elif "Warning" in text:
                found.append(f"cell {number}: warning in the output: {text[:300]}")
            elif any(path in text for path in local_paths):
                found.append(f"cell {number}: a path of this machine in the output: {text[:300]}")
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs_in_quick_mode(path, tmp_path, monkeypatch):
    monkeypatch.setenv("PPL_VAE_QUICK", "1")
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # ipykernel's debugger notice
    # The kernel (and any command it starts) is a new process that conftest's
    # torch.set_num_threads does not reach; on shared cores, one thread is several times faster.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = set(NOTEBOOK_DIR.rglob("*"))
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(KERNEL_CHECK))
    client = NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, naming the cell, on the first error
    nb.cells.pop(0)
    assert not _problems(nb), "\n".join(_problems(nb))
    # Colleagues' new notebooks and builders may appear meanwhile; anything else is ours.
    written = [p for p in set(NOTEBOOK_DIR.rglob("*")) - before
               if not (p.parent == NOTEBOOK_DIR and p.suffix in (".ipynb", ".py"))]
    assert not written, f"the notebook wrote into notebooks/: {sorted(written)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_committed_notebook_has_clean_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    assert path.stat().st_size < MAX_BYTES, (
        f"{path.name} is {path.stat().st_size:,} bytes; make its figures smaller")
    empty = [n for n, cell in enumerate(nb.cells)
             if cell.cell_type == "code" and not cell.outputs]
    assert not empty, (f"{path.name}: code cells {empty} have no output; execute the notebook "
                       "in full (without PPL_VAE_QUICK) and save it")
    assert not _problems(nb), "\n".join(_problems(nb))


@pytest.mark.parametrize("builder", BUILDERS, ids=_ids(BUILDERS))
def test_built_notebook_matches_its_builder(builder):
    namespace = runpy.run_path(str(builder), run_name=builder.stem)  # writes no __pycache__
    built, notebook = namespace["build"](), namespace["NOTEBOOK"]
    committed = nbformat.read(notebook, as_version=4)

    def cells(nb):
        return [(cell.cell_type, cell.source) for cell in nb.cells]

    assert cells(committed) == cells(built), (
        f"{notebook.name} differs from what {builder.name} builds; run "
        f"python notebooks/{builder.name} and commit both")
