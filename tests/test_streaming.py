"""Streaming: a memory-mapped uint8 .npy or an image folder read a minibatch at a time
trains to the very parameters of the in-memory path (the same permutation and batches),
resumes exactly, and the automatic choice follows the data's size."""

import numpy as np
import pytest
import torch
from PIL import Image

from ppl_vae.build import build, resume
from ppl_vae.config import load_config
from ppl_vae.data.stream import MappedRows, choose_stream, is_streamed, minibatches
from ppl_vae.errors import ConfigError, DataError

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
