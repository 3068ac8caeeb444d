"""Run folders at their edges: claims, kills, changed data, labels, resume rules, outputs.

Every refusal is one line, ``error: ...``, exit status 2, and leaves the files that were
there before exactly as they were.
"""

import csv
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ppl_vae.commands import main
from ppl_vae.errors import TrainingDiverged
from ppl_vae.inference import runs
from ppl_vae.inference.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = ("epoch", "step", "train_elbo", "test_elbo", "test_recon", "test_kl")
SMALL = ["--hidden", "16", "--latent-dim", "2", "--batch-size", "256", "--quiet"]


class Killed(BaseException):
    """Stands for a kill: no ``except Exception`` of the code under test catches it."""


def train(*argv):
    return main(["train", *SMALL, *map(str, argv)])


def refused(capsys, argv, expected=()):
    """Run ``argv``; assert one line ``error: ...`` holding each of ``expected``, exit 2."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    # one line, after at most the progress line of a run that had started
    last = err.splitlines()[-1]
    assert last.startswith("error: ") and err.count("error: ") == 1, err
    assert err.count("\n") == 1 or err.startswith("training "), err
    for text in expected:
        assert text in last, err
    return last


def snapshot(folder):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in Path(folder).iterdir()}


def metric_rows(folder):
    """metrics.csv's columns epoch .. test_kl (seconds differ between runs)."""
    with open(Path(folder) / "metrics.csv", newline="") as f:
        return [[row[k] for k in COLUMNS] for row in csv.DictReader(f)]


def assert_same_run(a, b):
    ours, theirs = load_checkpoint(Path(a) / "checkpoint.pt"), load_checkpoint(Path(b) /
                                                                               "checkpoint.pt")
    assert ours["epoch"] == theirs["epoch"]
    for key, value in ours["model"].items():
        assert torch.equal(value, theirs["model"][key]), key
    assert metric_rows(a) == metric_rows(b)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted 3-epoch run."""
    out = tmp_path_factory.mktemp("straight") / "run"
    assert train("--epochs", 3, "--out", out) == 0
    return out


# ---------------------------------------------------------------- 1. claims

@pytest.mark.slow
def test_two_processes_asking_for_one_folder_one_is_refused(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "ppl_vae.commands", "train", *SMALL, "--epochs", "2",
               "--out", str(out)]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = sorted((p.returncode, err) for p in procs
                     for _, err in [p.communicate(timeout=300)])
    assert [code for code, _ in results] == [0, 2], results
    err = results[1][1]
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert str(out) in err
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["epoch"] == 2 and len(metric_rows(out)) == 2
    assert metric_rows(out) == [[str(row[k]) for k in COLUMNS] for row in state["metrics"]]
    assert {p.name for p in out.iterdir()} >= {"config.toml", "metrics.csv", "checkpoint.pt"}


# ---------------------------------------------------------------- 2. kills and failures

def _kill_before_either(monkeypatch):
    save = runs.save_checkpoint

    def dying(path, state):
        if state["epoch"] == 2:
            raise Killed
        save(path, state)
    monkeypatch.setattr(runs, "save_checkpoint", dying)


def _kill_after_the_checkpoint(monkeypatch):
    table = runs.metrics_csv

    def dying(rows, names):
        if len(rows) == 2:
            raise Killed
        return table(rows, names)
    monkeypatch.setattr(runs, "metrics_csv", dying)


def _kill_after_the_metrics(monkeypatch):
    save = runs.RunFolder.save

    def dying(self, state, metrics, names):
        save(self, state, metrics, names)
        if state["epoch"] == 2:
            raise Killed
    monkeypatch.setattr(runs.RunFolder, "save", dying)


@pytest.mark.parametrize("kill", [_kill_before_either, _kill_after_the_checkpoint,
                                  _kill_after_the_metrics], ids=lambda f: f.__name__[6:])
def test_a_run_killed_at_any_write_resumes_to_the_uninterrupted_result(
        tmp_path, monkeypatch, straight, kill):
    out = tmp_path / "run"
    with monkeypatch.context() as patched:
        kill(patched)
        with pytest.raises(Killed):
            train("--epochs", 3, "--out", out)
    saved = load_checkpoint(out / "checkpoint.pt")
    assert [row["epoch"] for row in saved["metrics"]] == list(range(1, saved["epoch"] + 1))
    # Resumed to where it stands, it trains nothing and its metrics.csv is the checkpoint's.
    assert train("--resume", out, "--epochs", saved["epoch"]) == 0
    assert metric_rows(out) == [[str(row[k]) for k in COLUMNS] for row in saved["metrics"]]
    (out / ".checkpoint.pt.killed.tmp").write_bytes(b"half a checkpoint")
    # The same command line with --resume appended continues it.
    assert train("--epochs", 3, "--out", out, "--resume", out) == 0
    assert_same_run(out, straight)
    assert not list(out.glob(".*.tmp"))


def test_a_run_killed_before_its_first_epoch_is_resumable_and_reusable(
        tmp_path, straight, capsys):
    for how in ("--resume", "--out"):
        out = tmp_path / how.strip("-")
        out.mkdir()
        (out / "config.toml").write_bytes((straight / "config.toml").read_bytes())
        (out / ".checkpoint.pt.x.tmp").write_bytes(b"")
        argv = ["--resume", out] if how == "--resume" else ["--epochs", 3, "--out", out]
        assert train(*argv) == 0, capsys.readouterr().err
        assert_same_run(out, straight)


def test_a_failed_run_leaves_no_folder(tmp_path, monkeypatch, capsys):
    def diverge(self, bar=None):
        raise TrainingDiverged("the loss is NaN at step 1")
    monkeypatch.setattr("ppl_vae.inference.loop.Trainer.train_epoch", diverge)
    out = tmp_path / "run"
    refused(capsys, ["train", *SMALL, "--out", out], ["NaN at step 1"])
    assert not out.exists()
    out.mkdir()  # an empty folder given stays, empty, and a re-run accepts it
    refused(capsys, ["train", *SMALL, "--out", out], ["NaN at step 1"])
    assert out.is_dir() and not list(out.iterdir())
    monkeypatch.undo()
    assert train("--epochs", 1, "--out", out) == 0


# ---------------------------------------------------------------- 3. data

@pytest.mark.filterwarnings("ignore:No data for colormapping")  # unlabelled data's figure
def test_data_is_found_from_anywhere_and_refused_once_changed(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    data = tmp_path / "data" / "points.npy"
    data.parent.mkdir()
    np.save(data, rng.random((60, 8)).astype(np.float32))
    monkeypatch.chdir(data.parent)
    assert train("--epochs", 1, "--dataset", "points.npy", "--out", tmp_path / "run") == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run = Path("..") / "run"
    evaluate = ["eval", run, "--num-samples", 4, "--gap-points", 4, "--gap-steps", 1,
                "--device", "cpu"]
    assert main(list(map(str, evaluate))) == 0
    assert train("--resume", run, "--epochs", 2) == 0
    before = snapshot(run)
    old = load_checkpoint(run / "checkpoint.pt")["data"]["fingerprint"]
    np.save(data, rng.random((60, 8)).astype(np.float32))  # same shape, other values
    for argv in (evaluate, ["train", "--resume", run, "--epochs", 3]):
        err = refused(capsys, argv, [str(data), old])
        assert err.count("fingerprint") == 2
    assert snapshot(run) == before


# ---------------------------------------------------------------- 4. labels

def test_conditional_labels_are_indexed_by_the_classes_present(tmp_path, capsys):
    rng = np.random.default_rng(0)
    labels = np.where(rng.random(60) < 0.5, 0, 1_000_000)
    data = tmp_path / "labelled.npz"
    np.savez(data, x=rng.random((60, 8)).astype(np.float32), y=labels)
    out = tmp_path / "run"
    assert train("--epochs", 1, "--conditional", "--dataset", data, "--out", out) == 0
    assert "2 classes: 0, 1000000" in capsys.readouterr().err
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["classes"] == [0, 1_000_000] and state["dims"]["num_classes"] == 2
    assert main(["eval", str(out), "--num-samples", "4", "--gap-points", "4",
                 "--gap-steps", "1", "--device", "cpu"]) == 0
    assert train("--resume", out, "--epochs", 2) == 0


# ---------------------------------------------------------------- 5. resume rules

@pytest.mark.slow
def test_resume_refuses_real_changes_only_and_names_them(tmp_path, capsys):
    out = tmp_path / "run"
    line = ["train", *SMALL, "--model", "vae", "--epochs", 2, "--lr", 0.001, "--out", out]
    assert main(list(map(str, line))) == 0
    before = snapshot(out)
    refused(capsys, ["train", "--resume", out, "--lr", 0.5],
            ["train.lr", "0.001 in the run", "0.5 given"])
    refused(capsys, ["train", "--model", "cvae", "--resume", out],
            ["model.conditional", "False in the run", "True given"])
    refused(capsys, ["train", "--resume", out, "--epochs", 1],
            ["already at epoch 2", "--epochs 2"])
    refused(capsys, ["train", "--resume", out, "--out", tmp_path / "other"], ["drop --out"])
    assert snapshot(out) == before
    toml = (out / "config.toml").read_text()
    for edit, expected in (("lr = 0.001", ["train.lr", "0.001 in the run", "0.1 in config"]),
                           ("latent_dim = 2", ["model.latent_dim", "5 in config.toml"])):
        new = edit.replace("0.001", "0.1").replace("2", "5")
        (out / "config.toml").write_text(toml.replace(edit, new))
        refused(capsys, ["train", "--resume", out, "--epochs", 3], expected)
    (out / "config.toml").write_text(toml)
    # The same command line with --resume appended: every value equals the run's.
    assert main(list(map(str, [*line, "--resume", out]))) == 0
    assert main(list(map(str, [*line, "--epochs", 3, "--resume", out]))) == 0
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 3


# ---------------------------------------------------------------- 6. gmm and compare outputs

GMM = ["gmm", "--method", "em", "--quick"]
COMPARE = ["compare", "--quick", "--data", "blobs", "--methods", "em"]


def test_gmm_and_compare_never_write_into_another_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(GMM) == 0 and main(GMM) == 0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["gmm-em", "gmm-em-2"]
    assert main(COMPARE) == 0 and main(COMPARE) == 0
    assert (tmp_path / "runs" / "compare-2" / "ellipses.png").is_file()
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "forest.png").write_bytes(b"another run's figure")
    before = snapshot(taken)
    for command in (GMM, COMPARE, ["train", *SMALL]):
        refused(capsys, [*command, "--out", taken], ["already exists and is not empty"])
    assert snapshot(taken) == before


@pytest.mark.parametrize("blocked", ["read-only parent", "parent is a file"])
@pytest.mark.parametrize("command", [["train", *SMALL], GMM, COMPARE], ids=lambda c: c[0])
def test_an_unwritable_output_is_refused_before_any_work(tmp_path, monkeypatch, capsys,
                                                         command, blocked):
    def no_work(*args, **kwargs):
        raise AssertionError("work started before the output folder was claimed")
    for target in ("ppl_vae.build.build", "ppl_vae.commands.gmm.load_points",
                   "ppl_vae.evaluation.compare.load_data"):
        monkeypatch.setattr(target, no_work)
    parent = tmp_path / "parent"
    if blocked == "parent is a file":
        parent.write_text("")
    else:
        parent.mkdir()
        parent.chmod(stat.S_IRUSR | stat.S_IXUSR)
        if os.access(parent, os.W_OK):
            pytest.skip("this user writes into read-only folders (root)")
    try:
        refused(capsys, [*command, "--out", parent / "out"], ["cannot write to"])
    finally:
        parent.chmod(stat.S_IRWXU)
