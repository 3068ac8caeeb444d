"""Every edge a clear error and nothing lost (issue 12): each class of bad input ends as one
line, ``error: ...``, exit status 2, with no run folder left behind; edges that are not
errors (tiny data, uint8 images) just work; the figures say what they show."""

import csv
from fractions import Fraction

import matplotlib
import numpy as np
import pytest
import torch

from ppl_vae.commands import main
from ppl_vae.config import DEFAULTS, dump_toml

matplotlib.use("Agg")


def _fails(capsys, argv, *fragments):
    """``main(argv)`` is a user error: status 2 and one line naming every fragment."""
    assert main(argv) == 2
    *before, err, end = capsys.readouterr().err.split("\n")
    assert err.startswith("error: ") and end == "", err
    assert all(line.startswith("\r") for line in before), before  # a progress bar at most
    for fragment in fragments:
        assert fragment in err, err
    return err


def _argv_id(value):
    return " ".join(value) if isinstance(value, list) else ""


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    np.savez("empty.npz", x=np.zeros((0, 64), np.float32))
    np.save("empty.npy", np.zeros((0, 64), np.float32))
    np.savez("empty_test.npz", x_train=rng.random((10, 4), np.float32),
             x_test=np.zeros((0, 4), np.float32))
    np.save("no_features.npy", np.zeros((10, 0), np.float32))
    np.save("huge.npy", rng.standard_normal((60, 2)) * 1e39)
    (tmp_path / "a_file").write_text("")
    return tmp_path


# Flags out of range: refused where they are parsed (or in the configuration), naming
# what is allowed.
BAD_NUMBERS = [
    (["train", "--seed", "-1"], "0 .. 4294967295"),
    (["train", "--seed", str(2**66)], "0 .. 4294967295"),
    (["gmm", "--seed", "-1"], "0 .. 4294967295"),
    (["compare", "--seed", str(2**66)], "0 .. 4294967295"),
    (["train", "--kl-schedule", "linear", "--kl-warmup-epochs", "nan"], "'train.kl_warmup_epochs'"),
    (["train", "--hidden", "0,5"], "comma-separated positive integers"),
    (["train", "--hidden", "a,b"], "comma-separated positive integers"),
    (["train", "--latent-dim", "1000000000", "--quiet"], "bytes to train"),
    (["train", "--out", "a_file"], "a_file is a file"),
    (["eval", "run", "--gap-points", "0"], "--gap-points: expected an integer >= 1"),
    (["eval", "run", "--num-samples", "0"], "--num-samples: expected an integer >= 1"),
    (["bench", "gmm", "--threads", "0"], "--threads: expected an integer >= 1"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_NUMBERS, ids=_argv_id)
def test_numbers_out_of_range_are_one_line(files, capsys, argv, message):
    writes = argv[0] in ("train", "gmm", "compare") and "--out" not in argv
    _fails(capsys, [*argv, "--out", "out"] if writes else argv, message)
    assert not (files / "out").exists() and not (files / "runs").exists()


def test_a_seed_out_of_range_in_a_model_file_is_refused_too(files, capsys):
    (files / "m.toml").write_text("[train]\nseed = -1\n")
    _fails(capsys, ["train", "--model", "m.toml", "--out", "out"], "'train.seed'", "-1")
    assert not (files / "out").exists()


BAD_DATA = [
    (["train", "--dataset", "empty.npz"], "x: empty data set (shape (0, 64))"),
    (["train", "--dataset", "empty.npy"], "empty data set (shape (0, 64))"),
    (["train", "--dataset", "empty_test.npz"], "x_test: empty data set (shape (0, 4))"),
    (["train", "--dataset", "no_features.npy"], "zero features"),
    (["gmm", "--data", "huge.npy", "--quick"], "overflow float32"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_DATA, ids=_argv_id)
def test_unusable_data_is_one_line(files, capsys, argv, message):
    _fails(capsys, [*argv, "--out", "out"], message)
    assert not (files / "out").exists()


def test_a_corrupt_checkpoint_is_one_line_of_our_own(files, capsys):
    run = files / "run"
    run.mkdir()
    (run / "config.toml").write_text(dump_toml(DEFAULTS))
    # An object torch's weights_only loader refuses, with paragraphs of advice.
    torch.save({"format": 1, "odd": Fraction(1, 3)}, run / "checkpoint.pt")
    err = _fails(capsys, ["eval", str(run)], "cannot read checkpoint", "train again")
    assert "weights_only" not in err and err.rstrip().endswith("copy")


def _metrics(path):
    with open(path / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def test_tiny_data_trains_with_jit_and_draws_its_figures(files, capsys):
    rng = np.random.default_rng(1)
    np.save("forty.npy", rng.random((50, 64), np.float32))  # 40 training rows < 128
    assert main(["train", "--dataset", "forty.npy", "--epochs", "1", "--quiet",
                 "--out", "forty"]) == 0
    assert "batch size 128 clamped to the 40 training examples" in capsys.readouterr().err
    np.savez("one.npz", x_train=rng.random((1, 4), np.float32),
             x_test=rng.random((1, 4), np.float32))
    assert main(["train", "--dataset", "one.npz", "--batch-size", "1", "--epochs", "1",
                 "--quiet", "--out", "one"]) == 0
    assert (files / "one" / "latent.png").is_file() and len(_metrics(files / "one")) == 1


def test_uint8_images_train_as_float_divided_by_255(files, capsys):
    images = np.random.default_rng(2).integers(0, 256, (60, 8, 8)).astype(np.uint8)
    np.save("u8.npy", images)
    np.save("f32.npy", images.astype(np.float32) / 255)
    common = ["--epochs", "2", "--batch-size", "16", "--quiet", "--no-jit"]
    assert main(["train", "--dataset", "u8.npy", *common, "--out", "u8"]) == 0
    first = capsys.readouterr().err.splitlines()[0]
    assert "8-bit images, kept as uint8, scaled per batch" in first and "held in memory" in first
    assert main(["train", "--dataset", "f32.npy", *common, "--out", "f32"]) == 0
    assert "scaled" not in capsys.readouterr().err
    assert _metrics(files / "u8") == _metrics(files / "f32")


def test_latent_space_has_one_colour_per_class_and_no_warning_without_labels():
    from ppl_vae.evaluation.plots import latent_space
    from ppl_vae.vae import Dims, build_vae

    vae = build_vae(Dims(data_dim=6, latent_dim=3, num_data=30))
    x = torch.rand(30, 6)
    fig = latent_space(vae, x, torch.arange(30) % 3)
    ax = fig.axes[0]
    assert len(fig.axes) == 1  # no colour bar
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["0", "1", "2"]
    colours = [tuple(c.get_facecolor()[0][:3]) for c in ax.collections]
    assert len(set(colours)) == 3
    latent_space(vae, x)  # the test run turns a warning into an error


def test_ellipses_colour_each_point_as_its_component_in_the_data_units():
    from matplotlib.colors import to_rgb

    from ppl_vae.mixture.plots import plot_ellipses

    rng = np.random.default_rng(3)
    means = np.array([[100.0, 0.0], [110.0, 5.0]])
    X = np.concatenate([rng.normal(m, 0.5, (50, 2)) for m in means])
    labels = np.repeat([1, 0], 50)  # numbered the other way round from the components
    ax = plot_ellipses(X, [0.5, 0.5], means, np.stack([np.eye(2) * 0.25] * 2), labels=labels)
    points = ax.collections[0]
    assert np.allclose(points.get_offsets(), X)  # not mean-centred
    colours = points.get_facecolor()[:, :3]
    assert np.allclose(colours[:50], to_rgb("C0")) and np.allclose(colours[50:], to_rgb("C1"))
    assert to_rgb(ax.patches[0].get_edgecolor()) == to_rgb("C0")
