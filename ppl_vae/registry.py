"""Name -> class for every swappable part. The only place that maps strings to code.

Adding a part is one class plus one line here; the parametrized tests in
``tests/test_parts.py`` then run every registered part through the same checks.
"""

from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from ppl_vae import guides, likelihoods, nets, priors
from ppl_vae.errors import ConfigError

PRIORS = {
    "normal": priors.StandardNormal,
}

GUIDES = {
    "diagonal": guides.AmortizedDiagonalNormal,
}

LIKELIHOODS = {
    "bernoulli": likelihoods.Bernoulli,
    "gaussian": likelihoods.UnitGaussian,
    "gaussian-isotropic": likelihoods.IsotropicGaussian,
    "gaussian-diagonal": likelihoods.DiagonalGaussian,
}

ENCODERS = {
    "mlp": nets.MLP,
    "conv": nets.ConvEncoder,
}

DECODERS = {
    "mlp": nets.MLP,
    "conv": nets.ConvDecoder,
}

OBJECTIVES = {
    "elbo": Trace_ELBO,  # Monte Carlo estimate of the whole ELBO, KL term included
    "meanfield": TraceMeanField_ELBO,  # analytic KL wherever torch knows it
}

TABLES = {
    "prior": PRIORS,
    "guide": GUIDES,
    "likelihood": LIKELIHOODS,
    "encoder": ENCODERS,
    "decoder": DECODERS,
    "objective": OBJECTIVES,
}


def lookup(kind, name):
    """The class registered as ``name`` among the parts of ``kind`` ("prior", "guide", ...).

    Raises
    ------
    ConfigError
        If no such part is registered; the message lists the known names.
    """
    table = TABLES[kind]
    try:
        return table[name]
    except KeyError:
        known = ", ".join(sorted(table))
        raise ConfigError(f"unknown {kind} {name!r}; known {kind}s: {known}") from None
