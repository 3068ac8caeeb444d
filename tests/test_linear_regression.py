"""Bayesian linear regression's closed forms against scikit-learn (LinearRegression, Ridge,
BayesianRidge at its fitted precisions), and Pyro's SVI and NUTS against them."""

import numpy as np
import pytest
import torch
from pyro.infer.autoguide import AutoDelta, AutoNormal
from sklearn.linear_model import BayesianRidge, LinearRegression, Ridge

from ppl_vae.errors import DataError
from ppl_vae.linear import (
    conjugate_posterior,
    fit_svi,
    least_squares,
    mean_field_variances,
    nuts_samples,
    polynomial_features,
    predictive,
    ridge,
)


def data(n=30, degree=3, noise=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1
    y = torch.sin(3 * x) + noise * torch.randn(n, generator=g, dtype=torch.float64)
    return polynomial_features(x, degree), y


def test_polynomial_features_are_powers_and_check_shape():
    features = polynomial_features(torch.tensor([2.0, -1.0]), 3)
    torch.testing.assert_close(features, torch.tensor([[1.0, 2, 4, 8], [1, -1, 1, -1]]))
    with pytest.raises(DataError, match=r"shape \(N,\)"):
        polynomial_features(torch.zeros(3, 2), 2)


def test_least_squares_is_sklearns_linear_regression():
    features, y = data()
    expected = LinearRegression(fit_intercept=False).fit(features.numpy(), y.numpy()).coef_
    np.testing.assert_allclose(least_squares(features, y).numpy(), expected, rtol=1e-8)


def test_map_with_a_gaussian_prior_is_sklearns_ridge():
    features, y = data()
    expected = Ridge(alpha=2.5, fit_intercept=False).fit(features.numpy(), y.numpy()).coef_
    np.testing.assert_allclose(ridge(features, y, 2.5).numpy(), expected, rtol=1e-8)
    # The posterior's mean is the MAP point: ridge with penalty alpha / beta.
    mean, _ = conjugate_posterior(features, y, prior_precision=2.0, noise_precision=8.0)
    torch.testing.assert_close(mean, ridge(features, y, 2.0 / 8.0))


def test_posterior_and_predictive_are_sklearns_bayesian_ridge():
    features, y = data()
    fit = BayesianRidge(fit_intercept=False).fit(features.numpy(), y.numpy())
    # sklearn's alpha_ is the noise precision, lambda_ the weights' precision.
    mean, cov = conjugate_posterior(features, y, prior_precision=fit.lambda_,
                                    noise_precision=fit.alpha_)
    np.testing.assert_allclose(mean.numpy(), fit.coef_, rtol=1e-7)
    np.testing.assert_allclose(cov.numpy(), fit.sigma_, rtol=1e-7)
    grid = polynomial_features(torch.linspace(-1.5, 1.5, 7, dtype=torch.float64), 3)
    loc, std = predictive(grid, mean, cov, noise_precision=fit.alpha_)
    expected_loc, expected_std = fit.predict(grid.numpy(), return_std=True)
    np.testing.assert_allclose(loc.numpy(), expected_loc, rtol=1e-7)
    np.testing.assert_allclose(std.numpy(), expected_std, rtol=1e-7)
    # A point estimate keeps only the noise.
    _, point_std = predictive(grid, mean, noise_precision=fit.alpha_)
    assert torch.allclose(point_std, torch.full_like(point_std, fit.alpha_ ** -0.5))


def test_mean_field_variances_are_inverse_precision_diagonals():
    cov = torch.tensor([[1.0, 0.8], [0.8, 1.0]], dtype=torch.float64)
    # Precision diagonal 1 / (1 - 0.8^2): the mean-field variance is 1 - 0.64 = 0.36.
    torch.testing.assert_close(mean_field_variances(cov),
                               torch.tensor([0.36, 0.36], dtype=torch.float64))


def test_autodelta_finds_the_mle_with_a_flat_prior_and_ridge_with_a_gaussian_one():
    features, y = data(degree=2)
    features, y = features.float(), y.float()
    mle, no_scale = fit_svi(AutoDelta, features, y, steps=600, lr=0.1, noise_precision=10.0)
    map_, _ = fit_svi(AutoDelta, features, y, steps=600, lr=0.1, prior_precision=5.0,
                      noise_precision=10.0)
    # Read after both fits: each has its own parameters.
    assert no_scale is None
    torch.testing.assert_close(mle, least_squares(features, y), atol=2e-3, rtol=0)
    torch.testing.assert_close(map_, ridge(features, y, 0.5), atol=2e-3, rtol=0)


@pytest.mark.slow
def test_autonormal_finds_the_mean_field_optimum():
    features, y = data(degree=2)
    features, y = features.float(), y.float()
    mean, cov = conjugate_posterior(features, y, prior_precision=1.0, noise_precision=10.0)
    loc, scale = fit_svi(AutoNormal, features, y, steps=1500, lr=0.05, prior_precision=1.0,
                         noise_precision=10.0)
    torch.testing.assert_close(loc, mean, atol=0.03, rtol=0)
    torch.testing.assert_close(scale ** 2, mean_field_variances(cov), atol=0, rtol=0.15)


@pytest.mark.slow
def test_nuts_matches_the_conjugate_posterior():
    features, y = data(n=20, degree=2)
    mean, cov = conjugate_posterior(features, y, prior_precision=1.0, noise_precision=10.0)
    draws = nuts_samples(features, y, num_samples=400, warmup_steps=200,
                         prior_precision=1.0, noise_precision=10.0).double()
    # Within 5 Monte Carlo standard errors (400 draws, correlated: n_eff taken as 150).
    se = (cov.diagonal() / 150).sqrt()
    assert ((draws.mean(0) - mean).abs() < 5 * se).all()
    torch.testing.assert_close(torch.cov(draws.T), cov, rtol=0.3, atol=0.3 * cov.abs().max())
