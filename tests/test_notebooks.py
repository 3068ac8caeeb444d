"""The notebooks: each runs in quick mode, each is committed with clean outputs, and each
committed .ipynb holds the cells of its source.

A notebook's source is ``notebooks/NN_name.py`` in jupytext's percent format, paired with
``notebooks/NN_name.ipynb``, which holds the outputs of a full run. After editing a source,
``jupytext --sync notebooks/NN_name.py`` writes its cells into the .ipynb and keeps the outputs;
``jupyter execute --inplace notebooks/NN_name.ipynb`` (without PPL_VAE_QUICK) runs it in full.

Quick mode (``PPL_VAE_QUICK=1``) shrinks a notebook's work to seconds; the tests run the
source so. A notebook saved without outputs, or with an error, a warning or a path of the
machine that ran it in them, fails here.
"""

import difflib
import os
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
SOURCES = sorted(NOTEBOOK_DIR.glob("*.py"))
PAIRING = "ipynb,py:percent"  # the jupytext formats each notebook's metadata names
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


# Run last, in the kernel, after a notebook's own cells: its headline numbers against
# independent answers, within the tolerances stated here. Notebooks 01 and 02 assert theirs
# in their own cells; 03's are read back from its variables.
HEADLINE_CHECKS = {"03_em_vs_vi_vs_amortized": """\
import numpy as np
from scipy.special import logsumexp
from scipy.stats import multivariate_normal


def _scipy_loglik(x, fit):
    # Mean log-density of x under the fit's mixture in data space, by scipy.
    parts = [np.log(w) + multivariate_normal.logpdf(x, m, c)
             for w, m, c in zip(fit.weights, fit.means, fit.covariances, strict=True)]
    return logsumexp(np.stack(parts, axis=1), axis=1).mean()


# EM's held-out log-likelihood is its mixture's density: to 1e-6 nats.
assert abs(fits["em"].test_loglik - _scipy_loglik(digits.x_test, fits["em"])) < 1e-6
# EM's log-likelihood and CAVI's ELBO never decrease (1e-8 relative slack).
for _method in ("em", "cavi"):
    _h = fits[_method].history
    assert (np.diff(_h) >= -1e-8 * np.abs(_h[:-1])).all(), _method
# Both VAEs: log p(x) above the held-out ELBO; the linear-decoder VAE's importance-sampled
# log p(x), a lower bound in expectation, is below its implied mixture's exact one (0.02 nats
# of Monte Carlo slack): ELBO < log p(x) estimate < exact + 0.02.
for _method in ("vae-linear", "vae-mlp"):
    _elbo = evaluate_elbo(fits[_method].model, x_test)["elbo"]
    print(_method, "ELBO", _elbo, "log p(x)", fits[_method].test_loglik)
    assert fits[_method].test_loglik > _elbo, _method
_exact = _scipy_loglik(digits.x_test, fits["vae-linear"])
assert fits["vae-linear"].test_loglik < _exact + 0.02, (fits["vae-linear"].test_loglik, _exact)
# On the blobs every mixture method finds the labels' means to 0.5 and weights to 0.05.
for _fit in blob_fits.values():
    _matched = align_components(truth[1], {"means": _fit.means, "weights": _fit.weights})
    assert np.abs(_matched["means"] - truth[1]).max() < 0.5, _fit.label
    assert np.abs(_matched["weights"] - truth[0]).max() < 0.05, _fit.label
print("headline checks passed")
"""}


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


# Notebook 04 (conditional and disentangled VAEs, no headline asserted here) runs with the
# slow tests, to keep the default suite under 5 minutes of CPU.
QUICK_RUNS = [pytest.param(p, marks=pytest.mark.slow) if p.name.startswith("04_") else p
              for p in SOURCES]


@pytest.mark.parametrize("path", QUICK_RUNS, ids=_ids(SOURCES))
def test_notebook_runs_in_quick_mode(path, tmp_path, monkeypatch):
    monkeypatch.setenv("PPL_VAE_QUICK", "1")
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # ipykernel's debugger notice
    # The kernel (and any command it starts) is a new process that conftest's
    # torch.set_num_threads does not reach; on shared cores, one thread is several times faster.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = set(NOTEBOOK_DIR.rglob("*"))
    nb = jupytext.read(path)  # the source's cells, without outputs
    nb.cells.insert(0, nbformat.v4.new_code_cell(KERNEL_CHECK))
    checks = HEADLINE_CHECKS.get(path.stem)
    if checks:
        nb.cells.append(nbformat.v4.new_code_cell(checks))
    client = NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, naming the cell, on the first error
    nb.cells.pop(0)
    if checks:
        assert "headline checks passed" in _output_text(nb.cells.pop().outputs[-1])
    assert not _problems(nb), "\n".join(_problems(nb))
    # Colleagues' new notebooks may appear meanwhile; anything else is ours.
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


def _cells(nb):
    return [(cell.cell_type, cell.source) for cell in nb.cells]


def _first_difference(ours, theirs, names):
    """Where the cell lists ``ours`` and ``theirs`` first differ, as a diff of that cell."""
    for number, (a, b) in enumerate(zip(ours, theirs, strict=False)):
        if a != b:
            diff = difflib.unified_diff([f"[{a[0]}]\n", *a[1].splitlines(True)],
                                        [f"[{b[0]}]\n", *b[1].splitlines(True)], *names)
            return f"cell {number} differs:\n" + "".join(diff)
    return f"{len(ours)} cells in {names[0]}, {len(theirs)} in {names[1]}"


@pytest.mark.parametrize("name", sorted({p.stem for p in NOTEBOOKS + SOURCES}))
def test_notebook_is_in_sync_with_its_source(name):
    source, notebook = NOTEBOOK_DIR / f"{name}.py", NOTEBOOK_DIR / f"{name}.ipynb"
    assert source.exists() and notebook.exists(), (
        f"{name}: a notebook is a pair of notebooks/{name}.py (the source, jupytext percent "
        f"format) and notebooks/{name}.ipynb; run jupytext --set-formats {PAIRING} on the "
        "one there is")
    text, paired = jupytext.read(source), jupytext.read(notebook)
    for path, nb in ((source, text), (notebook, paired)):
        formats = nb.metadata.get("jupytext", {}).get("formats")
        assert formats == PAIRING, f"{path.name} is paired as {formats!r}, not {PAIRING!r}"
    assert text.metadata["jupytext"]["text_representation"]["format_name"] == "percent"
    ours, theirs = _cells(text), _cells(paired)
    assert ours == theirs, (
        f"{notebook.name} does not hold the cells of {source.name}; run "
        f"jupytext --sync notebooks/{source.name} and commit both\n"
        + _first_difference(ours, theirs, (source.name, notebook.name)))
