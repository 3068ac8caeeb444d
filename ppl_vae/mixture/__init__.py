"""Gaussian mixtures three ways: EM, mean-field CAVI, and Pyro (SVI / NUTS).

``GaussianMixture`` and ``BayesianGaussianMixture`` are torch implementations with
scikit-learn's API; ``PyroGaussianMixture`` and ``nuts_gmm`` (from
:mod:`ppl_vae.mixture.pyro_gmm`) are imported on first use, so that importing this
package does not import Pyro.
"""

import importlib

from ppl_vae.mixture._data import ConvergenceWarning, DegenerateDataWarning
from ppl_vae.mixture.bayesian_mixture import BayesianGaussianMixture
from ppl_vae.mixture.gaussian_mixture import GaussianMixture

_LAZY = {"PyroGaussianMixture": "ppl_vae.mixture.pyro_gmm",
         "nuts_gmm": "ppl_vae.mixture.pyro_gmm"}

__all__ = [
    "BayesianGaussianMixture",
    "ConvergenceWarning",
    "DegenerateDataWarning",
    "GaussianMixture",
    *_LAZY,
]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
