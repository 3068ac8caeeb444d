"""Gaussian mixtures three ways: EM, mean-field CAVI, and Pyro (SVI / NUTS)."""

from ppl_vae.mixture._data import ConvergenceWarning, DegenerateDataWarning
from ppl_vae.mixture.bayesian_mixture import BayesianGaussianMixture
from ppl_vae.mixture.gaussian_mixture import GaussianMixture

__all__ = [
    "BayesianGaussianMixture",
    "ConvergenceWarning",
    "DegenerateDataWarning",
    "GaussianMixture",
]
