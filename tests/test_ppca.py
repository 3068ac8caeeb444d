"""Probabilistic PCA's closed forms against scipy and scikit-learn, and a linear-Gaussian
VAE as probabilistic PCA: its ELBO reaches the closed-form maximum log-likelihood (Tipping &
Bishop 1999), because at the maximum the exact posterior is a Gaussian with a covariance
that a diagonal guide can represent (Lucas et al. 2019)."""

import math

import numpy as np
import pyro
import pytest
import torch
from scipy.stats import multivariate_normal
from sklearn.decomposition import PCA

from ppl_vae.build import make_objective
from ppl_vae.data.ppca import make_ppca, ppca_log_likelihood, ppca_mle
from ppl_vae.errors import DataError
from ppl_vae.evaluation.likelihood import elbo_terms
from ppl_vae.vae import Dims, build_vae


@pytest.fixture(scope="module")
def trained_linear_vae():
    pyro.set_rng_seed(0)
    x, _ = make_ppca(1000, 5, 2, noise_std=0.5, seed=0)
    vae = build_vae(Dims(data_dim=5, latent_dim=2, num_data=len(x)),
                    likelihood="gaussian-isotropic", hidden=())
    steps = 1500
    optimizer = torch.optim.Adam(vae.parameters(), lr=0.02)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    elbo = make_objective("meanfield")
    for _ in range(steps):
        loss = elbo.differentiable_loss(vae.model, vae.guide, x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    with torch.no_grad():
        mean_elbo = torch.stack([elbo_terms(vae, x)["elbo"].mean() for _ in range(200)]).mean()
    return vae, x, float(mean_elbo)


@pytest.mark.slow
def test_elbo_reaches_the_closed_form_ppca_maximum(trained_linear_vae):
    _, x, mean_elbo = trained_linear_vae
    best = ppca_mle(x, 2)["log_likelihood"]
    # The ELBO is below the maximum log-likelihood; 0.01 allows for Monte Carlo noise.
    assert best - 0.05 < mean_elbo < best + 0.01


@pytest.mark.slow
def test_elbo_is_below_the_exact_likelihood_of_the_learned_parameters(trained_linear_vae):
    vae, x, mean_elbo = trained_linear_vae
    linear = vae.decoder[0]
    with torch.no_grad():
        exact = ppca_log_likelihood(x, linear.weight, linear.bias, vae.likelihood.scale)
    assert mean_elbo < exact + 0.01
    assert exact - mean_elbo < 0.05


# --- probabilistic PCA ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def ppca_data():
    return make_ppca(2000, 10, 2, noise_std=0.5, seed=0)


def test_make_ppca_matches_its_parameters(ppca_data):
    x, true = ppca_data
    assert x.shape == (2000, 10) and x.dtype == torch.float32
    assert true["W"].shape == (10, 2) and float(true["sigma"]) == 0.5
    covariance = true["W"] @ true["W"].T + 0.25 * torch.eye(10)
    # Sample moments of 2,000 points agree with the model's to a few standard errors.
    se_mean = (covariance.diagonal() / 2000).sqrt()
    assert torch.all((x.mean(0) - true["mu"]).abs() < 4 * se_mean)
    torch.testing.assert_close(torch.cov(x.T), covariance, rtol=0.1, atol=0.1)


def test_ppca_log_likelihood_matches_scipy(ppca_data):
    x, true = ppca_data
    W = true["W"].double()
    covariance = W @ W.T + 0.25 * torch.eye(10, dtype=torch.float64)
    expected = multivariate_normal.logpdf(
        x.double().numpy(), mean=true["mu"].double().numpy(), cov=covariance.numpy()
    ).mean()
    assert ppca_log_likelihood(x, true["W"], true["mu"], true["sigma"]) == pytest.approx(
        expected, rel=1e-10
    )
    assert ppca_log_likelihood(x, true["W"], true["mu"], 0.5) == pytest.approx(expected, rel=1e-10)


def test_ppca_mle_beats_the_truth_and_matches_sklearn(ppca_data):
    x, true = ppca_data
    N, D = x.shape
    fit = ppca_mle(x.double(), latent_dim=2)
    truth = ppca_log_likelihood(x, true["W"], true["mu"], true["sigma"])
    assert fit["log_likelihood"] >= truth
    assert fit["log_likelihood"] == pytest.approx(
        ppca_log_likelihood(x.double(), fit["W"], fit["mu"], fit["sigma"]), abs=1e-10
    )

    pca = PCA(n_components=2).fit(x.double().numpy())
    assert fit["log_likelihood"] == pytest.approx(pca.score(x.double().numpy()), abs=1e-5)
    # sklearn divides the covariance by N - 1, the MLE by N: the fits differ by the factor
    # c = N / (N - 1), which costs exactly D/2 (log c + 1/c - 1) nats per example.
    c = N / (N - 1)
    gap = D / 2 * (math.log(c) + 1 / c - 1)
    assert fit["log_likelihood"] - pca.score(x.double().numpy()) == pytest.approx(gap, rel=1e-4)
    assert float(fit["sigma"]) ** 2 == pytest.approx(pca.noise_variance_ / c, rel=1e-10)
    np.testing.assert_allclose(
        (fit["W"] @ fit["W"].T).numpy() + float(fit["sigma"]) ** 2 * np.eye(D),
        pca.get_covariance() / c,
        atol=1e-10,
    )


def test_ppca_mle_keeps_the_dtype_and_checks_latent_dim(ppca_data):
    x, _ = ppca_data
    fit = ppca_mle(x, latent_dim=3)
    assert fit["W"].dtype == torch.float32 and fit["W"].shape == (10, 3)
    torch.testing.assert_close(fit["mu"], x.mean(0))
    with pytest.raises(ValueError, match="latent_dim"):
        ppca_mle(x, latent_dim=10)
    flat = torch.randn(50, 2, dtype=torch.float64) @ torch.randn(2, 5, dtype=torch.float64)
    with pytest.raises(DataError, match="rank <= 2"):
        ppca_mle(flat, latent_dim=2)
