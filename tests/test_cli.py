"""The command line's messages and vocabulary: what --help shows, --version, the flags every
subcommand shares, run folder names, progress bars on stderr."""

import csv
import json
import re

import numpy as np
import pytest

from ppl_vae import __version__, commands
from ppl_vae.commands import bench, compare, gmm
from ppl_vae.config import DEFAULTS, load_config
from ppl_vae.data.datasets import DATASETS
from ppl_vae.inference.runs import claim_run_dir, run_name
from ppl_vae.registry import TABLES


@pytest.fixture(scope="module")
def train_help():
    """``ppl-vae train --help``, one line per flag (no wrapping), as {flag: its line}."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COLUMNS", "2000")
        text = commands.build_parser()._subparsers._group_actions[0].choices[
            "train"].format_help()
    entries, flag = {}, None
    for line in text.splitlines():
        if line.strip().startswith("-"):
            flag = line.split()[0].rstrip(",")
            entries[flag] = ""
        if flag and line.startswith(" "):  # a flag's line or its help's continuation
            entries[flag] += " " + line.strip()
        elif not line.startswith(" "):  # a group's title
            flag = None
    return entries


@pytest.mark.parametrize("kind, name", [(kind, name) for kind, table in TABLES.items()
                                        for name in table])
def test_train_help_lists_every_registered_part(train_help, kind, name):
    help_text = train_help[f"--{kind}"].split(maxsplit=2)[2].split("(default")[0]
    assert name in re.split(r"[\s,:]+", help_text)


@pytest.mark.parametrize("flag, key", commands.TRAIN_OVERRIDES.items())
def test_train_help_shows_each_built_in_default(train_help, flag, key):
    table, name = key.split(".")
    value = DEFAULTS[table][name]
    shown = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    assert f"built-in: {shown})" in train_help["--" + flag.replace("_", "-")]


@pytest.mark.parametrize("name", DATASETS)
def test_dataset_help_lists_every_data_set(train_help, name):
    assert name in re.split(r"[\s,:]+", train_help["--dataset"])


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        commands.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"ppl-vae {__version__}\n"


# The parser of each subcommand, and the arguments it needs besides the one tested.
PARSERS = {
    "train": (lambda: commands.build_parser(), ["train"]),
    "eval": (lambda: commands.build_parser(), ["eval", "runs/vae"]),
    "gmm": (gmm.build_parser, []),
    "compare": (compare.build_parser, []),
    "bench": (bench.build_parser, ["svi"]),
}


def parse(command, *argv):
    make, needed = PARSERS[command]
    return make().parse_args([*needed, *argv])


@pytest.mark.parametrize("command", PARSERS)
def test_seed_and_device_mean_the_same_in_every_command(command):
    args = parse(command, "--seed", "3", "--device", "cpu")
    assert (args.seed, args.device) == (3, "cpu")
    default = parse(command).device
    # train's None defers to the model file, whose built-in default is auto.
    assert (default or DEFAULTS["train"]["device"]) == "auto"


@pytest.mark.parametrize("command", ["train", "eval", "gmm", "compare"])
def test_quiet_in_every_command_with_a_progress_bar(command):
    assert parse(command, "--quiet").quiet and not parse(command).quiet


@pytest.mark.parametrize("command", ["train", "gmm", "compare", "bench"])
def test_quick_in_every_command_with_a_budget(command):
    assert parse(command, "--quick").quick and not parse(command).quick


@pytest.mark.parametrize("command, flag", [("train", "--dataset"), ("gmm", "--dataset"),
                                           ("compare", "--dataset"), ("gmm", "--data"),
                                           ("compare", "--data")])  # train never had --data
def test_dataset_and_its_old_name(command, flag):
    assert parse(command, flag, "x.npy").dataset == "x.npy"


def test_data_alias_is_hidden_from_help():
    text = gmm.build_parser().format_help() + compare.build_parser().format_help()
    assert "--dataset" in text and "--data " not in text and "--data," not in text


def two_clusters(path):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-4, 1, (60, 2)), rng.normal(4, 1, (60, 2))])
    np.savez(path, x=x, y=np.repeat([0, 1], 60))


def test_gmm_reads_points_and_labels_of_a_npz(tmp_path):
    two_clusters(tmp_path / "points.npz")
    assert gmm.main(["--dataset", str(tmp_path / "points.npz"), "--components", "2",
                     "--quick", "--quiet", "--out", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["n_train"] + result["n_test"] == 120
    assert result["ari_test"] == pytest.approx(1.0)  # the labels in y were read


@pytest.mark.parametrize("labels", [True, False])
def test_compare_reads_a_npz_or_npy_of_points(tmp_path, capsys, labels):
    two_clusters(tmp_path / "points.npz")
    path = tmp_path / "points.npz"
    if not labels:
        path = tmp_path / "points.npy"
        np.save(path, np.load(tmp_path / "points.npz")["x"])
    argv = ["compare", "--dataset", str(path), "--methods", "em,cavi", "--quick",
            "--quiet", "--out", str(tmp_path / "out")]
    if not labels:
        assert commands.main(argv) == 2
        assert "give --components" in capsys.readouterr().err
        argv += ["--components", "2"]
    assert commands.main(argv) == 0
    with open(tmp_path / "out" / "compare.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["n_train"] for row in rows] == ["96", "96"]
    ari = float(rows[0]["ari"]) if rows[0]["ari"] else None
    assert (ari == pytest.approx(1.0)) if labels else ari is None


def test_run_folders_are_named_after_what_changed(tmp_path):
    config = load_config("vae", {"model.prior": "vamp", "train.lr": 0.003,
                                 "train.epochs": 200, "model.hidden": [],
                                 "data.dataset": str(tmp_path / "my data.npz")})
    changes = commands._changes("vae", config)
    # --epochs 200 is the model file's own value: not a change.
    assert changes == {"dataset": str(tmp_path / "my data.npz"), "prior": "vamp",
                       "hidden": [], "lr": 0.003}
    name = run_name("vae", changes)
    assert name == "vae-dataset=my_data.npz-prior=vamp-hidden=none-lr=0.003"
    with claim_run_dir(None, name, root=tmp_path) as first:
        assert first == tmp_path / name
        (first / "config.toml").write_text("")  # a run is there now
        (first / "checkpoint.pt").write_text("")
    with claim_run_dir(None, name, root=tmp_path) as second:
        assert second.name == name + "-2"
    assert run_name("vae") == "vae"


def test_train_quick_then_eval_with_and_without_progress(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert commands.main(["train", "--quick", "--quiet", "--latent-dim", "2",
                          "--hidden", "16"]) == 0
    run = tmp_path / "runs" / "vae-latent-dim=2-hidden=16-epochs=2"
    with open(run / "metrics.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["1", "2"]
    assert "%|" not in capsys.readouterr().err  # --quiet: no progress bar
    small = ["--num-samples", "7", "--gap-points", "5", "--gap-steps", "3"]
    assert commands.main(["eval", str(run), *small, "--quiet"]) == 0
    assert "%|" not in capsys.readouterr().err
    assert commands.main(["eval", str(run), *small]) == 0
    err = capsys.readouterr().err
    # The bar's last state: it counted exactly the point-samples it announced.
    assert err.rsplit("evaluating:", 1)[1].lstrip().startswith("100%|")
