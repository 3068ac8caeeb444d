"""The gmm command and scripts/fit_gmm.py (quick modes)."""

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from ppl_vae.commands.gmm import main
from ppl_vae.data.points import load_points

ROOT = Path(__file__).resolve().parents[1]



def run_gmm(tmp_path, *args):
    out = tmp_path / "run"
    code = main(["--quick", "--out", str(out), *args])
    return code, out


def test_em_quick_writes_figures_and_a_result_that_matches_scipy(tmp_path, capsys):
    code, out = run_gmm(tmp_path, "--method", "em", "--seed", "1")
    assert code == 0
    assert (out / "ellipses.png").stat().st_size > 1000
    assert (out / "objective.png").stat().st_size > 1000
    result = json.loads((out / "result.json").read_text())
    history = np.array(result["objective"]["history"])
    assert np.all(np.diff(history) >= -1e-6 * np.abs(history[1:]))
    assert result["ari_test"] >= 0.95 and result["ari_train"] >= 0.95
    assert sum(result["weights"]) == pytest.approx(1.0)
    # The reported held-out score is the mixture density of the reported parameters.
    data = load_points("blobs", seed=1, quick=True)
    direct = logsumexp([np.log(w) + multivariate_normal(m, c).logpdf(data.x_test)
                        for w, m, c in zip(result["weights"], result["means"],
                                           result["covariances"], strict=True)], axis=0)
    assert result["test_score"] == pytest.approx(direct.mean(), rel=1e-5)
    printed = capsys.readouterr().out
    assert "iter    1" in printed and "wrote" in printed


def test_cavi_quick_on_a_npy_file(tmp_path):
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(-3, 1, (100, 3)), rng.normal(3, 1, (100, 3))])
    path = tmp_path / "x.npy"
    np.save(path, X)
    code, out = run_gmm(tmp_path, "--method", "cavi", "--data", str(path),
                        "--components", "5", "--covariance-type", "diag")
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    assert result["ari_test"] is None and result["n_train"] + result["n_test"] == 200
    history = np.array(result["objective"]["history"])
    assert np.all(np.diff(history) >= -1e-6 * np.abs(history[1:]))
    assert sum(result["weights"]) == pytest.approx(1.0)
    # Two clusters are needed; the other three components keep little weight.
    assert sorted(result["weights"])[-2] > 0.4


BAD = [
    (["--data", "missing.npy"], "does not exist"),
    (["--dataset", "table.csv"], "--dataset must be blobs"),
    (["--components", "0"], "--components must be a positive integer"),
    (["--method", "gibbs"], "invalid choice"),
    (["--method", "nuts", "--covariance-type", "diag"], "full covariances only"),
    (["--covariance-type", "full", "--data", "{bad}"], "NaN or inf"),
]


@pytest.mark.parametrize("args, message", BAD)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, args, message):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 1.0], [2.0, 0.0]]))
    args = [str(bad) if a == "{bad}" else a for a in args]
    code, _ = run_gmm(tmp_path, *args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_fit_gmm_script_runs_the_same_command(tmp_path, monkeypatch):
    out = tmp_path / "script"
    monkeypatch.setattr(sys, "argv", ["fit_gmm.py", "--quick", "--data", "iris",
                                      "--components", "3", "--out", str(out)])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(ROOT / "scripts" / "fit_gmm.py"), run_name="__main__")
    assert done.value.code == 0
    result = json.loads((out / "result.json").read_text())
    assert result["data"] == "iris" and len(result["means"][0]) == 4
    assert result["ari_train"] > 0.5  # iris: setosa alone is separable; the rest overlap


