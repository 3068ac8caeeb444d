"""Streaming: a memory-mapped uint8 .npy or an image folder read a minibatch at a time
trains to the very parameters of the in-memory path (the same permutation and batches),
resumes exactly, and the automatic choice follows the data's size."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ppl_vae.build import build, resume
from ppl_vae.config import load_config
from ppl_vae.data.stream import MappedRows, choose_stream, is_streamed, minibatches
from ppl_vae.errors import ConfigError, DataError
from ppl_vae.inference.checkpoint import load_checkpoint

SMALL = {"model.hidden": [16], "model.latent_dim": 2, "train.batch_size": 7,
         "train.jit": False, "model.encoder": "conv", "model.decoder": "conv"}


def config(path, stream, epochs=2, **overrides):
    return load_config("vae", {**SMALL, "data.dataset": str(path), "data.stream": stream,
                               "train.epochs": epochs, **overrides})


def images(tmp_path, n=40):
    x = np.random.default_rng(0).integers(0, 256, (n, 6, 5, 3), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    return tmp_path / "x.npy"


def trained(cfg, run_dir):
    experiment = build(cfg, run_dir, progress=False)
    experiment.run(figures=False)
    return experiment


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian-dequantized"])
def test_streamed_and_in_memory_give_equal_parameters(tmp_path, likelihood):
    path = images(tmp_path)
    runs = {stream: trained(config(path, stream, **{"model.likelihood": likelihood}),
                            tmp_path / f"run-{stream}") for stream in (True, False)}
    assert is_streamed(runs[True].data.x_train)
    assert runs[False].data.x_train.dtype == torch.uint8  # 8-bit in memory too
    assert "streamed from disk" in runs[True].dataset.read_as
    assert "held in memory" in runs[False].dataset.read_as
    for (name, a), (_, b) in zip(runs[True].program.state_dict().items(),
                                 runs[False].program.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert runs[True].metrics[-1]["test_elbo"] == runs[False].metrics[-1]["test_elbo"]


def test_streamed_folder_resumes_exactly(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(30):
        Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)).save(
            tmp_path / f"{i:02d}.png")
    whole = trained(config(tmp_path, True), tmp_path.parent / f"{tmp_path.name}-whole")
    first = trained(config(tmp_path, True, epochs=1), tmp_path.parent / f"{tmp_path.name}-cut")
    resumed = resume(first.run_dir, overrides={"train.epochs": 2}, progress=False)
    assert is_streamed(resumed.data.x_train)
    resumed.run(figures=False)
    for a, b in zip(whole.program.parameters(), resumed.program.parameters(), strict=True):
        assert torch.equal(a, b)


def test_minibatches_read_the_rows_asked_for(tmp_path):
    array = np.arange(60, dtype=np.uint8).reshape(10, 2, 3)  # (N, H, W) grey
    np.save(tmp_path / "a.npy", array)
    rows = MappedRows(np.load(tmp_path / "a.npy", mmap_mode="r"), np.array([1, 3, 4, 8, 9]))
    indices = [torch.tensor([4, 0]), torch.tensor([2, 3, 1])]
    got = list(minibatches(rows, indices, "cpu", workers=1))
    expected = torch.from_numpy(array.reshape(10, 6))[[9, 1]], \
        torch.from_numpy(array.reshape(10, 6))[[4, 8, 3]]
    for g, e in zip(got, expected, strict=True):
        assert torch.equal(g, e)
    assert torch.equal(rows[:2], torch.from_numpy(array.reshape(10, 6))[[1, 3]])


def test_automatic_choice_and_refusals(tmp_path):
    assert choose_stream(600, 1000)[0] is True
    assert choose_stream(400, 1000)[0] is False
    assert choose_stream(10, 1000, True) == (True, choose_stream(10, 1000, True)[1])
    assert "as data.stream = false asks" in choose_stream(10**9, 1000, False)[1]
    with pytest.raises(DataError, match="'auto', true or false"):
        choose_stream(1, 1, "yes")
    with pytest.raises(ConfigError, match="must be 'auto', true or false"):
        load_config("vae", {"data.stream": "sometimes"})
    with pytest.raises(ConfigError, match="cannot be streamed"):
        build(load_config("vae", {"data.stream": True}), None, progress=False)


def torchrun(out, nproc, *args):
    root = Path(__file__).resolve().parent.parent
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 f"--nproc_per_node={nproc}"] if nproc > 1 else [sys.executable])
    result = subprocess.run([*launcher, str(root / "scripts" / "train_vae.py"), *args,
                             "--out", str(out)], capture_output=True, text=True, timeout=240,
                            env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                                 "PYTHONPATH": str(root)})
    assert result.returncode == 0, result.stderr[-3000:]
    return load_checkpoint(out / "checkpoint.pt")


@pytest.mark.slow
def test_ddp_shards_streamed_minibatches_as_in_memory_ones(tmp_path):
    """Under torchrun each process streams its share of every global minibatch: 2
    streaming processes end with the very parameters of 2 in-memory ones (the delta guide
    and a discretised likelihood: nothing random)."""
    path = images(tmp_path, n=64)
    args = ["--dataset", str(path), "--guide", "delta", "--likelihood", "discretized-logistic",
            "--hidden", "16", "--latent-dim", "2", "--batch-size", "16", "--epochs", "2",
            "--no-jit", "--quiet"]
    held = torchrun(tmp_path / "held", 2, *args, "--no-stream")
    streamed = torchrun(tmp_path / "streamed", 2, *args, "--stream")
    assert held["step"] == streamed["step"] == 2 * 4
    for key, value in held["model"].items():
        assert torch.equal(streamed["model"][key], value), key


@pytest.mark.cuda
def test_uint8_images_stay_uint8_on_the_gpu(tmp_path):
    experiment = build(config(images(tmp_path), False, **{"train.device": "cuda"}), None,
                       progress=False)
    x = experiment.data.x_train
    assert x.device.type == "cuda" and x.dtype == torch.uint8
    assert torch.isfinite(torch.tensor(experiment.trainer.train_epoch()))
