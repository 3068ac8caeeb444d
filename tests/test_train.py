"""The training loop, run folders, checkpoints, resume, the NaN guard and the CLI's errors."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ppl_vae.build import build, resume
from ppl_vae.commands import main
from ppl_vae.config import MODELS_DIR, load_config
from ppl_vae.errors import CheckpointError, TrainingDiverged
from ppl_vae.evaluation.likelihood import evaluate_elbo
from ppl_vae.inference.checkpoint import load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parent.parent
SMALL = {"model.hidden": [32], "model.latent_dim": 2, "train.batch_size": 256}


def small_config(epochs, **overrides):
    return load_config("vae", {**SMALL, "train.epochs": epochs, **overrides})


def run_cli(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err


def test_training_raises_the_elbo(tmp_path):
    trainer = build(small_config(6, **{"train.lr": 3e-3}), tmp_path / "run", progress=False)
    initial = evaluate_elbo(trainer.program, trainer.data.x_test)["elbo"]
    # A Bernoulli decoder at initialisation predicts about 1/2 everywhere: -64 log 2 nats.
    assert initial == pytest.approx(-64 * math.log(2), abs=2.0)
    trainer.run(figures=False)
    elbos = [row["test_elbo"] for row in trainer.metrics]
    assert elbos[-1] > elbos[0] + 1.0 > initial + 1.0
    assert trainer.metrics[-1]["train_elbo"] > trainer.metrics[0]["train_elbo"]


def test_resume_equals_an_uninterrupted_run(tmp_path):
    straight = build(small_config(4), tmp_path / "straight", progress=False)
    straight.run(figures=False)

    first = build(small_config(2), tmp_path / "split", progress=False)
    first.run(figures=False)
    resumed = resume(tmp_path / "split", overrides={"train.epochs": 4}, progress=False)
    assert resumed.trainer.epoch == 2
    resumed.run(figures=False)

    a, b = straight.program.state_dict(), resumed.program.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [r["test_elbo"] for r in straight.metrics] == [r["test_elbo"] for r in resumed.metrics]
    rows = (tmp_path / "split" / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 4


@pytest.mark.filterwarnings("ignore:Encountered NaN:UserWarning")  # Pyro's own NaN warning
def test_nan_loss_stops_training_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    trainer = build(small_config(3), tmp_path / "run", progress=False)
    trainer.run(figures=False)  # 3 epochs of 6 steps
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    before = checkpoint.read_bytes()

    # The poison is a Python method, which a JIT-compiled graph would never call again.
    resumed = resume(tmp_path / "run", overrides={"train.epochs": 5, "train.jit": False},
                             progress=False)
    decoder = resumed.program.decoder
    original = decoder.forward
    calls = {"n": 0}

    def poisoned(z):
        calls["n"] += 1
        out = original(z)
        return out * float("nan") if calls["n"] == 4 else out

    monkeypatch.setattr(decoder, "forward", poisoned)
    with pytest.raises(TrainingDiverged, match=r"NaN or infinite at step 22 \(epoch 4\).*"
                                               r"checkpoint of epoch 3 .* is intact"):
        resumed.run(figures=False)
    assert checkpoint.read_bytes() == before
    assert load_checkpoint(checkpoint)["epoch"] == 3


def test_checkpoints_hold_no_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "model": Payload()}, path)
    with pytest.raises(CheckpointError, match="corrupt or not a ppl-vae checkpoint"):
        load_checkpoint(path)


def test_checkpoint_is_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1})

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"epoch": 2})
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


@pytest.mark.parametrize("model_file", sorted(MODELS_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_every_model_file_trains(model_file, tmp_path):
    config = load_config(model_file, {"train.epochs": 1})
    trainer = build(config, tmp_path / "run", progress=False)
    trainer.run(figures=False)
    assert math.isfinite(trainer.metrics[-1]["test_elbo"])
    assert math.isfinite(trainer.metrics[-1]["train_elbo"])


def test_cli_writes_a_complete_run(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--epochs", "2", "--hidden", "32", "--latent-dim", "2",
                 "--out", str(out), "--quiet"])
    assert code == 0
    names = {p.name for p in out.iterdir()}
    assert names == {"config.toml", "metrics.csv", "checkpoint.pt", "elbo.png", "latent.png",
                     "reconstructions.png", "samples.png"}
    config = load_config(out / "config.toml")
    assert config["model"]["hidden"] == [32] and config["train"]["epochs"] == 2
    assert "test ELBO" in capsys.readouterr().out


@pytest.mark.slow
def test_script_runs(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train_vae.py"), "--epochs", "1",
         "--hidden", "16", "--out", str(tmp_path / "run"), "--quiet"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


# ---------------------------------------------------------------- bad input

def write_npy(tmp_path, array, name="data.npy"):
    path = tmp_path / name
    np.save(path, array)
    return str(path)


@pytest.mark.parametrize("make_args,expected", [
    (lambda t: ["--dataset", write_npy(t, np.full((20, 4), np.nan))], "NaN"),
    (lambda t: ["--dataset", write_npy(t, np.full((20, 4), 2.0))], "--likelihood gaussian"),
    (lambda t: ["--dataset", "mnist", "--data-dir", str(t / "nowhere")], "--download"),
    (lambda t: ["--prior", "vampire"], "known priors: "),
    (lambda t: ["--model", "no_such_model"], "no model file"),
    (lambda t: ["--hidden", "16", "--objective", "nope"], "known objectives: "),
])
def test_bad_input_gives_one_line_and_exit_2(tmp_path, capsys, make_args, expected):
    out = tmp_path / "run"
    code, err = run_cli(capsys, "train", "--epochs", "1", "--out", str(out), "--quiet",
                        *make_args(tmp_path))
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert expected in err
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_says_so(tmp_path, capsys):
    code, err = run_cli(capsys, "train", "--device", "cuda", "--out", str(tmp_path / "r"))
    assert code == 2 and "CUDA is not available" in err and "--device cpu" in err


def test_an_existing_run_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--hidden", "16", "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, err = run_cli(capsys, "train", "--epochs", "1", "--out", str(out))
    assert code == 2 and "already exists" in err and f"--resume {out}" in err
    code, err = run_cli(capsys, "train", "--resume", str(out), "--latent-dim", "5")
    assert code == 2 and "cannot change model.latent_dim when resuming" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_corrupt_or_mismatched_checkpoints_are_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--hidden", "16", "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    checkpoint = out / "checkpoint.pt"
    good = checkpoint.read_bytes()

    checkpoint.write_bytes(good[: len(good) // 2])
    code, err = run_cli(capsys, "train", "--resume", str(out), "--epochs", "2", "--quiet")
    assert code == 2 and "corrupt" in err and err.count("\n") == 1

    checkpoint.write_bytes(good)
    other = write_npy(tmp_path, np.random.default_rng(0).random((30, 10)))
    config = (out / "config.toml").read_text().replace('dataset = "digits"',
                                                       f'dataset = "{other}"')
    (out / "config.toml").write_text(config)
    code, err = run_cli(capsys, "train", "--resume", str(out), "--epochs", "2", "--quiet")
    # The checkpoint's config is the run's: an edited data set is refused by name.
    assert code == 2 and "data.dataset" in err and "'digits' in the run" in err
    assert checkpoint.read_bytes() == good


def test_auto_device_falls_back_to_the_cpu():
    from ppl_vae.device import resolve_device

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu").type == "cpu"


@pytest.mark.cuda
def test_training_on_cuda_matches_the_cpu_objective(tmp_path):
    """On a GPU the same run trains and evaluates on the device, with a comparable ELBO."""
    results = {}
    for device in ("cpu", "cuda"):
        trainer = build(small_config(3, **{"train.device": device}), tmp_path / device,
                          progress=False)
        assert trainer.data.x_train.device.type == device
        trainer.run(figures=device == "cuda")
        results[device] = trainer.metrics[-1]["test_elbo"]
    assert results["cuda"] == pytest.approx(results["cpu"], abs=1.5)


def test_ppl_vae_gmm_dispatches_to_the_mixture_command(tmp_path, capsys):
    out = tmp_path / "gmm"
    assert main(["gmm", "--method", "em", "--quick", "--out", str(out)]) == 0
    assert (out / "result.json").is_file()
    capsys.readouterr()
    code, err = run_cli(capsys, "gmm", "--data", str(tmp_path / "missing.npy"))
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1


@pytest.mark.parametrize("init", ["noise", "data"])
def test_vampprior_pseudo_inputs_start_where_the_config_says(tmp_path, init):
    config = small_config(1, **{"model.prior": "vamp",
                                "model.prior_options": {"num_pseudo_inputs": 5, "init": init}})
    trainer = build(config, tmp_path / "run", progress=False)
    pseudo = trainer.program.prior.pseudo_inputs
    rows = trainer.data.x_train.clamp(1e-3, 1 - 1e-3)
    nearest = torch.cdist(pseudo, rows).min(dim=1).values
    if init == "data":  # each pseudo-input is a training digit
        assert nearest.max() < 0.01
    else:  # noise around 1/2, far from every digit
        assert nearest.min() > 0.5
        assert torch.allclose(pseudo, torch.full_like(pseudo, 0.5), atol=0.2)


def test_vampprior_rejects_an_unknown_init(tmp_path):
    config = small_config(1, **{"model.prior": "vamp", "model.prior_options": {"init": "zeros"}})
    with pytest.raises(Exception, match="init is 'noise' or 'data'; got 'zeros'"):
        build(config, tmp_path / "run", progress=False)


def test_eval_every_skips_test_scoring_without_changing_training(tmp_path):
    """Epochs reseed from (seed, epoch), so scoring the test set less often changes nothing
    but the skipped rows, which hold NaN; the last epoch is always scored."""
    every = build(small_config(5), tmp_path / "every", progress=False)
    every.run(figures=False)
    sparse = build(small_config(5, **{"train.eval_every": 3}), tmp_path / "sparse",
                     progress=False)
    sparse.run(figures=True)
    assert [row["train_elbo"] for row in sparse.metrics] == \
        [row["train_elbo"] for row in every.metrics]
    scored = [row["epoch"] for row in sparse.metrics if not math.isnan(row["test_elbo"])]
    assert scored == [3, 5]
    for epoch in (3, 5):
        assert sparse.metrics[epoch - 1]["test_elbo"] == every.metrics[epoch - 1]["test_elbo"]
    assert (tmp_path / "sparse" / "elbo.png").stat().st_size > 1000
    with pytest.raises(Exception, match="'train.eval_every' in the command line must be >= 1"):
        small_config(5, **{"train.eval_every": 0})


def test_fused_adam_takes_the_steps_of_torchs_default_adam():
    from ppl_vae.inference.loop import adam

    torch.manual_seed(0)
    start = [torch.randn(5, 3), torch.randn(3)]
    runs, fused = [], []
    for make in (adam, lambda params, lr: torch.optim.Adam(params, lr=lr)):
        params = [p.clone().requires_grad_() for p in start]
        optimizer = make(params, lr=0.1)
        fused.append(optimizer.defaults["fused"])
        for step in range(5):
            for p in params:
                p.grad = torch.sin(p.detach() + step)
            optimizer.step()
        runs.append(params)
    assert fused == [True, None]  # on a CPU with float32 the fused kernel is taken
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b)



def test_each_epoch_draws_its_own_shuffle_and_noise_and_ranks_share_only_the_shuffle(
        tmp_path, monkeypatch):
    """(seed, epoch) seeds the shuffle, the same on every process; (seed, epoch, rank) the
    Monte Carlo draws."""
    from ppl_vae import distributed

    trainer = build(small_config(2), progress=False).trainer
    n = trainer.data.x_train.shape[0]
    draws = {}
    for epoch in (0, 1):
        for rank in (0, 1):
            monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
            trainer.epoch = epoch
            order = trainer._seed_epoch(n)
            draws[epoch, rank] = (order, torch.rand(5))
    assert not torch.equal(draws[0, 0][0], draws[1, 0][0])  # a new shuffle each epoch
    assert not torch.equal(draws[0, 0][1], draws[1, 0][1])  # new noise each epoch
    for epoch in (0, 1):
        assert torch.equal(draws[epoch, 0][0], draws[epoch, 1][0])  # ranks: same shuffle
        assert not torch.equal(draws[epoch, 0][1], draws[epoch, 1][1])  # own noise
    assert sorted(draws[0, 0][0].tolist()) == list(range(n))  # a permutation
