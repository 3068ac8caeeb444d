"""Likelihoods p(x | z) against hand computations and scipy (issue 17: the surviving
mutants of ppl_vae/parts/likelihoods.py)."""

import math
import re
from types import SimpleNamespace

import numpy as np
import pyro
import pytest
import torch
from scipy import stats

from ppl_vae.parts.likelihoods import (
    Bernoulli,
    DequantizedGaussian,
    DiagonalGaussian,
    DiscretizedLogistic,
    DiscretizedLogisticMixture,
    DiscretizedLogisticMixtureDistribution,
    IsotropicGaussian,
    UnitGaussian,
    _image_layout,
    program_bits_per_dim,
)
from ppl_vae.vae import Dims

F64 = torch.float64


def test_bernoulli_scores_soft_targets_per_value():
    # soft targets in [0, 1] are scored by the cross-entropy formula, also per value
    logits = torch.tensor([[-1.5, 0.2, 3.0]], dtype=F64)
    x = torch.tensor([[0.25, 0.5, 1.0]], dtype=F64)
    p = 1 / (1 + np.exp(-logits.numpy()))
    by_hand = x.numpy() * np.log(p) + (1 - x.numpy()) * np.log1p(-p)
    q = Bernoulli(Dims(data_dim=3, latent_dim=1))(logits)
    np.testing.assert_allclose(q.base_dist.log_prob(x).numpy(), by_hand, rtol=1e-12)
    np.testing.assert_allclose(q.log_prob(x).numpy(), by_hand.sum(-1), rtol=1e-12)


def test_learned_scales_start_at_one_and_take_an_unbatched_output():
    dims = Dims(data_dim=3, latent_dim=1)
    assert IsotropicGaussian(dims).scale.item() == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(DiagonalGaussian(dims).scale.detach(), torch.ones(3))
    out, x = torch.tensor([0.1, -0.4, 2.0]), torch.tensor([0.3, 0.0, 1.2])
    lik = DiagonalGaussian(dims, init_scale=0.7)
    expected = stats.norm.logpdf(x.numpy(), out.numpy(), 0.7).sum()
    assert lik(out).log_prob(x).item() == pytest.approx(expected, rel=1e-5)


class _NoWidth:
    pass


@pytest.mark.parametrize("likelihood, bin_width", [
    (None, None),  # a program without a likelihood
    (Bernoulli, None),  # a likelihood that does not model 8-bit data
    (DequantizedGaussian, -math.log(256)),
    (DiscretizedLogistic, 0.0),
])
def test_program_bits_per_dim(likelihood, bin_width):
    dims = Dims(data_dim=12, latent_dim=1, image_shape=(3, 2, 2))
    program = (_NoWidth() if likelihood is None
               else SimpleNamespace(likelihood=likelihood(dims)))
    result = program_bits_per_dim(program, -50.0, 12)
    if bin_width is None:
        assert result is None
    else:
        assert result == pytest.approx((50.0 - 12 * bin_width) / (12 * math.log(2)), rel=1e-12)


@pytest.mark.parametrize("shape, data_dim, layout", [
    ((3, 4, 4), 48, (3, 16)), ((8, 8), 64, (1, 64)), (None, 10, (1, 10))])
def test_image_layout(shape, data_dim, layout):
    assert _image_layout(Dims(data_dim=data_dim, latent_dim=1, image_shape=shape)) == layout


@pytest.mark.parametrize("make, k", [
    (DiscretizedLogistic, 1),
    (DiscretizedLogisticMixture, 5),  # the default
    (lambda dims: DiscretizedLogisticMixture(dims, num_components=2), 2),
])
def test_logistic_mixture_output_sizes(make, k):
    # per pixel K logits (none when K = 1), per value K locations and K log scales
    lik = make(Dims(data_dim=12, latent_dim=1, image_shape=(3, 2, 2)))
    assert lik.num_components == k
    assert lik.num_outputs == (4 * k if k > 1 else 0) + 2 * k * 12


def test_logistic_mixture_rejects_no_components():
    dims = Dims(data_dim=4, latent_dim=1, image_shape=(2, 2))
    with pytest.raises(ValueError, match=re.escape("num_components must be >= 1; got 0")):
        DiscretizedLogisticMixture(dims, num_components=0)


def test_parts_follow_the_output_device_not_the_default_one():
    # a stand-in for a GPU: tensors made without the output's device would land on "meta"
    dims = Dims(data_dim=2, latent_dim=1, image_shape=(1, 1, 2))
    out, x = torch.tensor([[0.5, -1.0]]), torch.tensor([[0.0, 1.0]])
    params = torch.tensor([[0.2, 0.9, -3.0, -2.0]], dtype=F64)
    # (validation off: torch's checks of Categorical's logits cannot run on "meta")
    with torch.device("meta"), pyro.validation_enabled(False):
        log_p = UnitGaussian(dims)(out).log_prob(x)
        q = DiscretizedLogistic(dims)(params)
        draws = q.sample((5,))
    expected = stats.norm.logpdf(x.numpy(), out.numpy()).sum()
    assert log_p.device.type == "cpu" and log_p.item() == pytest.approx(expected, rel=1e-6)
    # one component: its logit is a constant zero, of the output's dtype
    assert q.logits.device.type == "cpu" and q.logits.dtype == F64
    assert torch.equal(q.logits, torch.zeros(1, 1, 2, dtype=F64))
    assert draws.device.type == "cpu" and draws.shape == (5, 1, 2)


def test_sample_is_the_logistic_quantile_of_the_uniform(monkeypatch):
    # inverse-CDF sampling; u is kept in [1e-5, 1 - 1e-5] as in PixelCNN++
    u = np.array([0.0, 0.3, 0.7, 1 - 2.0 ** -24, 1e-6, 0.999])
    loc = np.array([0.5, 0.4, 0.6, 0.5, 0.0, 1.0])
    scale = np.array([0.02, 0.05, 0.05, 0.02, 0.01, 0.01])
    monkeypatch.setattr(torch, "rand", lambda shape, **_: torch.tensor(u).reshape(shape))
    q = DiscretizedLogisticMixtureDistribution(
        torch.zeros(1, 6, dtype=F64), torch.tensor(loc).reshape(1, 1, 6),
        torch.tensor(np.log(scale)).reshape(1, 1, 6))
    y = stats.logistic.ppf(np.clip(u, 1e-5, 1 - 1e-5), loc, scale)
    expected = np.clip(np.round(y * 255), 0, 255) / 255
    assert expected[4] == 0 and expected[5] == 1  # both end levels are reached
    np.testing.assert_allclose(q.sample().numpy(), expected, rtol=0, atol=1e-12)


def _level_probabilities(weights, loc, scale):
    """P(level k), k = 0..255, of a mixture of discretised logistics, by scipy."""
    edges = np.concatenate([[-np.inf], (np.arange(255) + 0.5) / 255, [np.inf]])
    cdf = stats.logistic.cdf(edges[:, None], loc, scale)  # (257, K)
    return np.diff(cdf, axis=0) @ weights


def test_sample_frequencies_match_the_level_probabilities():
    # one channel, two pixels, two components, no batch: sample((n,)) draws n images
    logits = np.array([[0.3, -0.5], [-0.2, 0.4]])  # (K, P)
    loc = np.array([[0.0, 0.995], [0.6, 0.3]])
    scale = np.array([[0.01, 0.004], [0.004, 0.02]])
    q = DiscretizedLogisticMixtureDistribution(
        torch.tensor(logits), torch.tensor(loc)[:, None], torch.tensor(np.log(scale))[:, None])
    n = 20000
    torch.manual_seed(0)
    draws = q.sample((n,)).numpy()
    levels = np.round(draws * 255)
    np.testing.assert_allclose(draws * 255, levels, rtol=0, atol=1e-9)  # on the grid k/255
    weights = np.exp(logits) / np.exp(logits).sum(0)
    for pixel in range(2):
        p = _level_probabilities(weights[:, pixel], loc[:, pixel], scale[:, pixel])
        freq = np.bincount(levels[:, pixel].astype(int), minlength=256) / n
        assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / n) + 5 / n)
