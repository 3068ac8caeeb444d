"""Name -> class for every swappable part. The only place that maps strings to code.

Adding a part is one class plus one line here; the parametrized tests in
``tests/test_parts.py`` then run every registered part through the same checks.
"""

from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from ppl_vae.errors import ConfigError
from ppl_vae.inference.objectives import IWAE
from ppl_vae.inference.penalties import DIPVAE, DIPVAEII, FactorVAE, TotalCorrelation
from ppl_vae.parts import corruptions, guides, likelihoods, nets, priors

PRIORS = {
    "normal": priors.StandardNormal,
    "mog": priors.MixtureOfGaussians,
    "vamp": priors.VampPrior,
    "joint": priors.JointPrior,  # JointVAE: normal x relaxed one-hot categorical
}

GUIDES = {
    "diagonal": guides.AmortizedDiagonalNormal,
    "lowrank": guides.AmortizedLowRankNormal,
    "full": guides.AmortizedFullNormal,
    "iaf": guides.AmortizedFlow,
    "semi-amortized": guides.SemiAmortizedNormal,
    "per-datapoint": guides.PerDatapointNormal,
    "delta": guides.DeltaGuide,
    "joint": guides.AmortizedJoint,  # JointVAE: normal x relaxed one-hot categorical
}

LIKELIHOODS = {
    "bernoulli": likelihoods.Bernoulli,
    "gaussian": likelihoods.UnitGaussian,
    "gaussian-isotropic": likelihoods.IsotropicGaussian,
    "gaussian-diagonal": likelihoods.DiagonalGaussian,
    "continuous-bernoulli": likelihoods.ContinuousBernoulli,
    "discretized-logistic": likelihoods.DiscretizedLogistic,
    "discretized-logistic-mixture": likelihoods.DiscretizedLogisticMixture,
    "gaussian-dequantized": likelihoods.DequantizedGaussian,
}

ENCODERS = {
    "mlp": nets.MLP,
    "conv": nets.ConvEncoder,
    "conv-residual": nets.ResidualConvEncoder,
}

DECODERS = {
    "mlp": nets.MLP,
    "conv": nets.ConvDecoder,
    "conv-residual": nets.ResidualConvDecoder,
}

CORRUPTIONS = {  # of the guide's input while training: the denoising VAE
    "none": corruptions.NoCorruption,
    "gaussian": corruptions.GaussianCorruption,
    "salt-pepper": corruptions.SaltAndPepperCorruption,
    "mask": corruptions.MaskCorruption,
}

OBJECTIVES = {
    "elbo": Trace_ELBO,  # Monte Carlo estimate of the whole ELBO, KL term included
    "meanfield": TraceMeanField_ELBO,  # analytic KL wherever torch knows it
    "iwae": IWAE,  # importance-weighted bound, K = num_particles (RenyiELBO, alpha = 0)
    # The ELBO minus a penalty (objective_options: weights, and elbo = "meanfield" | "elbo")
    "tcvae": TotalCorrelation,  # beta-TCVAE: (beta - 1) x total correlation, MSS estimate
    "factorvae": FactorVAE,  # gamma x TC estimated by a discriminator trained alongside
    "dipvae-i": DIPVAE,  # Cov[mu(x)] towards I
    "dipvae-ii": DIPVAEII,  # Cov[z] of the aggregate posterior towards I
}

TABLES = {
    "prior": PRIORS,
    "guide": GUIDES,
    "likelihood": LIKELIHOODS,
    "encoder": ENCODERS,
    "decoder": DECODERS,
    "objective": OBJECTIVES,
    "corruption": CORRUPTIONS,
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


def incompatibility(prior, guide, likelihood):
    """Why the named parts cannot form a VAE, or None if they can.

    Two rules. A prior built from the guide's encoder (``needs_encoder_density``, the
    VampPrior) needs a guide that has an encoder and a density (``amortized`` and
    ``has_density``): not the per-datapoint table, not the delta guide. A prior and a guide
    must put z in the same space (``latent_support``, "real" unless a part says otherwise;
    None for a prior that takes the guide's). Every likelihood goes with every prior and
    guide.
    """
    prior_cls, guide_cls = lookup("prior", prior), lookup("guide", guide)
    lookup("likelihood", likelihood)
    prior_support = getattr(prior_cls, "latent_support", "real")
    guide_support = getattr(guide_cls, "latent_support", "real")
    if prior_support is not None and prior_support != guide_support:
        return (f"the {prior!r} prior is a distribution on {prior_support} but the {guide!r} "
                f"guide's q(z | x) is on {guide_support}")
    if getattr(prior_cls, "needs_encoder_density", False) and not (
            guide_cls.amortized and guide_cls.has_density):
        return (f"the {prior!r} prior is a mixture of the guide's encoder posteriors; the "
                f"{guide!r} guide has no encoder with a density")
    return None


def compatible(prior, guide, likelihood):
    """Whether the named parts form a VAE (see :func:`incompatibility`)."""
    return incompatibility(prior, guide, likelihood) is None
