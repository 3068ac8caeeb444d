"""Imputation against the exact Gaussian conditional of probabilistic PCA, the baselines
against hand computation and scikit-learn, masks, errors and the ``ppl-vae impute`` command."""

import numpy as np
import pytest
import torch

from ppl_vae.data.ppca import make_ppca
from ppl_vae.errors import ConfigError, DataError
from ppl_vae.evaluation.impute import (
    bernoulli_log_lik,
    check_mask,
    impute,
    imputation_error,
    knn_imputation,
    lower_half_mask,
    mean_imputation,
    random_mask,
)
from ppl_vae.vae import Dims, build_vae

D, L, CHAINS = 6, 2, 400


def ppca_vae():
    """A linear-Gaussian VAE whose decoder is a PPCA model and whose guide is untrained and
    shrunk towards N(0, 0.7^2 I) for every x: a proposal that ignores the data."""
    x, true = make_ppca(1, D, L, noise_std=0.5, seed=2)
    vae = build_vae(Dims(D, L, num_data=1), likelihood="gaussian-isotropic", hidden=(),
                    likelihood_options={"init_scale": 0.5})
    with torch.no_grad():
        vae.decoder[0].weight.copy_(true["W"])
        vae.decoder[0].bias.copy_(true["mu"])
        for param in vae.posterior.parameters():
            param.mul_(0.1)
    return vae, true, x[0]


def exact_conditional(true, x, observed):
    """Mean and covariance of x_m | x_o under x ~ N(mu, W W^T + sigma^2 I)."""
    W, mu = true["W"].double(), true["mu"].double()
    cov = W @ W.T + 0.25 * torch.eye(D, dtype=torch.float64)
    o, m = observed, ~observed
    gain = cov[m][:, o] @ torch.linalg.inv(cov[o][:, o])
    mean = mu[m] + gain @ (x.double()[o] - mu[o])
    return mean, cov[m][:, m] - gain @ cov[o][:, m]


def chain_moments(vae, x, observed, method):
    result = impute(vae, x.expand(CHAINS, D), observed.expand(CHAINS, D), method=method,
                    num_iterations=150, burn_in=50, keep_samples=True)
    draws = result.samples[:, :, ~observed].reshape(-1, int((~observed).sum())).double()
    return draws.mean(0), torch.cov(draws.T), result


def test_metropolis_within_gibbs_samples_the_exact_gaussian_conditional():
    vae, true, x = ppca_vae()
    observed = torch.tensor([True, False, True, False, True, False])
    mean, cov = exact_conditional(true, x, observed)
    got_mean, got_cov, result = chain_moments(vae, x, observed, "mwg")
    scale = cov.diagonal().sqrt()
    assert ((got_mean - mean).abs() < 0.1 * scale).all(), (got_mean, mean)
    torch.testing.assert_close(got_cov, cov, rtol=0.15, atol=0.1 * float(cov.diagonal().max()))
    assert 0.05 < result.acceptance < 1
    # The imputation is the chain's predictive mean; the observed entries stay as given.
    torch.testing.assert_close(result.filled[:, ~observed].mean(0).double(), mean,
                               atol=0.1 * float(scale.max()), rtol=0)
    assert torch.equal(result.filled[:, observed], x[observed].expand(CHAINS, -1))


def test_pseudo_gibbs_with_this_guide_misses_the_conditional():
    """The check above has teeth: without the Metropolis step the same moves sample
    something else (the guide ignores the data, so x_m follows the model's marginal)."""
    vae, true, x = ppca_vae()
    observed = torch.tensor([True, False, True, False, True, False])
    mean, cov = exact_conditional(true, x, observed)
    got_mean, got_cov, _ = chain_moments(vae, x, observed, "pseudo-gibbs")
    assert (got_mean - mean).abs().max() > 0.3 * float(cov.diagonal().sqrt().max()) or \
        not torch.allclose(got_cov, cov, rtol=0.3)
