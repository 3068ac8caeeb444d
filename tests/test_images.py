"""Images: layouts, 8-bit values, the discretised logistic (mixture), bits per dimension,
conv nets for colour and any side, image folders and the standard sets' readers."""

import csv
import math
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

from ppl_vae.commands import main
from ppl_vae.data import load_dataset
from ppl_vae.data.images import to_unit
from ppl_vae.errors import DataError
from ppl_vae.parts.likelihoods import (
    LOG_BIN_WIDTH,
    DiscretizedLogistic,
    DiscretizedLogisticMixture,
    _log_level_mass,
    bits_per_dim,
)
from ppl_vae.parts.nets import ConvDecoder, ConvEncoder, ResidualConvEncoder
from ppl_vae.vae import Dims

LEVELS = torch.arange(256, dtype=torch.float64) / 255


def mixture(image_shape, k, seed=0, batch=4):
    dims = Dims(data_dim=math.prod(image_shape), latent_dim=2, image_shape=image_shape)
    likelihood = (DiscretizedLogistic(dims) if k == 1
                  else DiscretizedLogisticMixture(dims, num_components=k))
    gen = torch.Generator().manual_seed(seed)
    out = 2 * torch.randn(batch, likelihood.num_outputs, generator=gen, dtype=torch.float64)
    return likelihood(out)


@pytest.mark.parametrize("k", [1, 4])
def test_discretized_logistic_probabilities_sum_to_one(k):
    # one value per example: the 256 levels
    p = mixture((1, 1, 1), k).log_prob(LEVELS[:, None, None]).exp()
    torch.testing.assert_close(p.sum(0), torch.ones(4, dtype=torch.float64), atol=1e-5, rtol=0)
    # two channels of one pixel share the mixture weights: the joint over 256^2 sums to 1
    a, b = torch.meshgrid(LEVELS, LEVELS, indexing="ij")
    pairs = torch.stack([a.reshape(-1), b.reshape(-1)], -1)[:, None, :]
    joint = mixture((2, 1, 1), k, seed=1).log_prob(pairs).exp().sum(0)
    torch.testing.assert_close(joint, torch.ones(4, dtype=torch.float64), atol=1e-5, rtol=0)


def test_level_mass_against_scipy_logistic():
    loc, log_scale = torch.tensor(0.3, dtype=torch.float64), torch.tensor(-3.0,
                                                                          dtype=torch.float64)
    ours = _log_level_mass(LEVELS, loc, log_scale).exp().numpy()
    edges = np.concatenate([[-np.inf], (np.arange(255) + 0.5) / 255, [np.inf]])
    cdf = stats.logistic.cdf(edges, loc=0.3, scale=math.exp(-3.0))
    np.testing.assert_allclose(ours, np.diff(cdf), rtol=1e-9, atol=1e-15)


def test_mean_and_samples_of_the_mixture():
    q = mixture((3, 2, 2), 3, seed=2, batch=2)
    # the mean is sum_k k/255 P(k) per value; the channels are independent given the
    # component, so each value's marginal is the mixture of its channel's logistics
    weights = torch.softmax(q.logits, -2).unsqueeze(-2)  # (B, K, 1, P)
    mass = _log_level_mass(LEVELS.reshape(256, 1, 1, 1, 1), q.loc, q.log_scale).exp()
    by_hand = (weights * (LEVELS.reshape(256, 1, 1, 1, 1) * mass).sum(0)).sum(-3).flatten(-2)
    torch.testing.assert_close(q.mean, by_hand, atol=1e-9, rtol=0)
    torch.manual_seed(0)
    draws = q.sample((4000,))
    assert set((draws * 255).round().unique().tolist()) <= set(range(256))
    assert torch.allclose(draws.mean(0), q.mean, atol=0.03)


def test_bits_per_dim_of_uniform_models_is_eight():
    d = 3 * 4 * 4
    discrete = torch.distributions.Categorical(logits=torch.zeros(256, dtype=torch.float64))
    log_p = discrete.log_prob(torch.randint(256, (d,))).sum().item()
    assert bits_per_dim(log_p, d) == pytest.approx(8.0, abs=1e-12)
    dequantised = torch.distributions.Uniform(torch.tensor(0.0, dtype=torch.float64), 1.0)
    y = to_unit(torch.randint(256, (d,), dtype=torch.uint8), dequantize=True).double()
    assert 0 <= y.min() and y.max() < 1
    log_p = dequantised.log_prob(y).sum().item()
    assert bits_per_dim(log_p, d, LOG_BIN_WIDTH) == pytest.approx(8.0, abs=1e-12)


@pytest.mark.parametrize("net", [ConvEncoder, ResidualConvEncoder])
def test_conv_encoder_sees_every_pixel_of_any_side(net):
    encoder = net(3 * 7 * 5, 4, hidden=(8,), image_shape=(3, 7, 5))
    x = torch.rand(2, 3 * 7 * 5, requires_grad=True)
    encoder(x).sum().backward()
    assert (x.grad.abs() > 0).all()  # no pixel lost to the padding


def test_conv_decoder_crops_to_the_image():
    decoder = ConvDecoder(2, 2 * 3 * 7 * 5, hidden=(8,), image_shape=(3, 7, 5))
    z = torch.randn(6, 2)
    full = decoder.deconv(decoder.head(z).reshape(-1, 64, *decoder.grid))
    (top, left) = decoder.crop
    assert full.shape[-2:] == (8, 8) and (top, left) == (0, 1)
    torch.testing.assert_close(decoder(z), full[..., top:top + 7, left:left + 5].flatten(1))


def test_channels_last_and_first_give_the_same_rows(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (10, 4, 5, 3), dtype=np.uint8)
    np.save(tmp_path / "last.npy", images)
    np.save(tmp_path / "first.npy", np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    last, first = (load_dataset(tmp_path / f"{n}.npy") for n in ("last", "first"))
    assert last.image_shape == first.image_shape == (3, 4, 5)
    assert last.x_train.dtype == torch.uint8 and torch.equal(last.x_train, first.x_train)
    assert "channels-last" in last.read_as and "(N, C, H, W)" in first.read_as
    # each row is an image moved to (C, H, W) and flattened
    original = {im.transpose(2, 0, 1).tobytes() for im in images}
    assert {r.numpy().tobytes() for r in torch.cat([last.x_train, last.x_test])} == original


def write_folder(root, n_per_class=6, size=(6, 5), seed=0, classes=("cat", "dog")):
    rng = np.random.default_rng(seed)
    arrays = []
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(n_per_class):
            a = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(a, "RGB").save(root / name / f"{i:02d}.png")
            arrays.append(a)
    return np.stack(arrays)


def test_image_folder_reads_pixels_labels_and_resizes(tmp_path):
    arrays = write_folder(tmp_path / "imgs")
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(tmp_path / "imgs" / "dog" / "zz.png")
    ds = load_dataset(tmp_path / "imgs", test_fraction=0.25)
    assert ds.image_shape == (3, 6, 5) and ds.x_train.dtype == torch.uint8
    x = torch.cat([ds.x_train, ds.x_test])
    rows = {a.transpose(2, 0, 1).tobytes() for a in arrays}
    assert sum(r.numpy().tobytes() in rows for r in x) == 12  # the 13th was resized
    assert sorted(torch.cat([ds.y_train, ds.y_test]).tolist()) == [0] * 6 + [1] * 7
    assert "bilinear" in ds.read_as and "2 classes" in ds.read_as
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .png/.jpg/.jpeg images"):
        load_dataset(tmp_path / "empty")


def test_cifar10_reader_and_missing_files(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = {}
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        batches[name] = {"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8),
                         "labels": rng.integers(0, 10, 3).tolist()}
        (folder / name).write_bytes(pickle.dumps(batches[name]))
    ds = load_dataset("cifar10", data_dir=tmp_path)
    assert ds.image_shape == (3, 32, 32) and ds.x_train.dtype == torch.uint8
    assert torch.equal(ds.x_test, torch.from_numpy(batches["test_batch"]["data"]))
    assert ds.y_train.tolist() == sum((batches[f"data_batch_{i}"]["labels"]
                                       for i in range(1, 6)), [])
    with pytest.raises(DataError, match="svhn: files not found .* pass --download"):
        load_dataset("svhn", data_dir=tmp_path)
    (folder / "test_batch").write_bytes(pickle.dumps({"data": print}))
    with pytest.raises(DataError, match="not a CIFAR-10 batch"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_colour_folder_trains_end_to_end_and_equals_its_npy(tmp_path, capsys):
    arrays = write_folder(tmp_path / "imgs", n_per_class=8, size=(8, 7))
    np.save(tmp_path / "imgs.npy", arrays)  # channels-last, the folder's order
    common = ["--likelihood", "discretized-logistic-mixture", "--encoder", "conv",
              "--decoder", "conv", "--hidden", "16", "--latent-dim", "2", "--epochs", "2",
              "--batch-size", "5", "--no-jit", "--quiet"]
    outputs = {}
    for name in ("imgs", "imgs.npy"):
        out = tmp_path / f"run-{name}"
        assert main(["train", "--dataset", str(tmp_path / name), "--out", str(out),
                     *common]) == 0
        outputs[name] = capsys.readouterr().out
        assert "bits/dim" in outputs[name]
        figure = np.asarray(Image.open(out / "reconstructions.png").convert("RGB"), float)
        assert np.abs(figure[..., 0] - figure[..., 1]).max() > 50  # colour, not grey
    metrics = [(tmp_path / f"run-{n}" / "metrics.csv").read_text() for n in ("imgs", "imgs.npy")]
    strip = [[line.rsplit(",", 1)[0] for line in m.splitlines()] for m in metrics]
    assert strip[0] == strip[1]  # every number but the seconds
    bpd = float(outputs["imgs"].split(" bits/dim")[0].rsplit(", ", 1)[1])
    elbo = float(outputs["imgs"].split("test ELBO ")[1].split(" ")[0])
    assert bpd == pytest.approx(-elbo / (3 * 8 * 7 * math.log(2)), abs=1e-3)
    # eval reports bits/dim of log p(x) beside it
    assert main(["eval", str(tmp_path / "run-imgs"), "--num-samples", "4", "--gap-points",
                 "2", "--gap-steps", "1", "--quiet"]) == 0
    with open(tmp_path / "run-imgs" / "eval.csv", newline="") as f:
        values = next(csv.DictReader(f))
    assert float(values["bits_per_dim"]) == pytest.approx(
        -float(values["log_px"]) / (3 * 8 * 7 * math.log(2)), rel=1e-9)
