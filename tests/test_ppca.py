"""A linear-Gaussian VAE is probabilistic PCA: its ELBO reaches the closed-form maximum
log-likelihood (Tipping & Bishop 1999), because at the maximum the exact posterior is a
Gaussian with a covariance that a diagonal guide can represent (Lucas et al. 2019)."""

import pyro
import pytest
import torch

from ppl_vae.data import make_ppca, ppca_log_likelihood, ppca_mle
from ppl_vae.evaluate import elbo_terms
from ppl_vae.objectives import make_objective
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


def test_elbo_reaches_the_closed_form_ppca_maximum(trained_linear_vae):
    _, x, mean_elbo = trained_linear_vae
    best = ppca_mle(x, 2)["log_likelihood"]
    # The ELBO is below the maximum log-likelihood; 0.01 allows for Monte Carlo noise.
    assert best - 0.05 < mean_elbo < best + 0.01


def test_elbo_is_below_the_exact_likelihood_of_the_learned_parameters(trained_linear_vae):
    vae, x, mean_elbo = trained_linear_vae
    linear = vae.decoder[0]
    with torch.no_grad():
        exact = ppca_log_likelihood(x, linear.weight, linear.bias, vae.likelihood.scale)
    assert mean_elbo < exact + 0.01
    assert exact - mean_elbo < 0.05
