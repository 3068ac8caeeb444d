"""Name -> class for every swappable part. The only place that maps strings to code.

Adding a part is one class plus one line here (or :func:`register` from Python); the
parametrized tests in ``tests/test_parts.py`` then run every registered part through the
same checks (:func:`ppl_vae.testing.check_part`).

A user's own part needs no registration: wherever a name is accepted, an import path
``package.module:ClassName`` or ``path/to/file.py:ClassName`` names it (:func:`lookup`),
and it is checked to be a part of that kind (:data:`KIND_RULES`).
"""

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch import nn

from ppl_vae.errors import ConfigError
from ppl_vae.inference.cascade import CascadeBottleneck
from ppl_vae.inference.objectives import IWAE, EnumELBO
from ppl_vae.inference.penalties import DIPVAE, DIPVAEII, FactorVAE, Penalty, TotalCorrelation
from ppl_vae.inference.sparsity import SparseActivation
from ppl_vae.parts import cascade, corruptions, guides, likelihoods, nets, priors, sparse

PRIORS = {
    "normal": priors.StandardNormal,
    "mog": priors.MixtureOfGaussians,
    "vamp": priors.VampPrior,
    "joint": priors.JointPrior,  # JointVAE: normal x relaxed one-hot categorical
    "cascade": cascade.CascadePrior,  # CascadeVAE: normal x uniform one-hot categorical
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
    "cascade": cascade.CascadeGuide,  # CascadeVAE: normal x a code found by assignment
    "delta-sigmoid": sparse.SigmoidDeltaGuide,  # sparse autoencoder: codes in (0, 1)
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
    # The ELBO with the guide's discrete sites enumerated (TraceEnum_ELBO, config_enumerate)
    "enum": EnumELBO,
    # The ELBO minus a penalty (objective_options: weights, and elbo = "meanfield" | "elbo")
    "tcvae": TotalCorrelation,  # beta-TCVAE: (beta - 1) x total correlation, MSS estimate
    "factorvae": FactorVAE,  # gamma x TC estimated by a discriminator trained alongside
    "dipvae-i": DIPVAE,  # Cov[mu(x)] towards I
    "dipvae-ii": DIPVAEII,  # Cov[z] of the aggregate posterior towards I
    "cascade": CascadeBottleneck,  # CascadeVAE: KL weight per dimension, relaxed one by one
    "sparse": SparseActivation,  # sparse autoencoder: KL(rho || mean activation) per unit
}

# Programs: whole models, nn.Modules with model(x, y, idx) and guide(x, y, idx); the
# built-in VAE is the one named by its parts, so this table starts empty.
PROGRAMS = {}

TABLES = {
    "program": PROGRAMS,
    "prior": PRIORS,
    "guide": GUIDES,
    "likelihood": LIKELIHOODS,
    "encoder": ENCODERS,
    "decoder": DECODERS,
    "objective": OBJECTIVES,
    "corruption": CORRUPTIONS,
}


def _is_module_class(cls):
    return isinstance(cls, type) and issubclass(cls, nn.Module)


def _has(*methods):
    return lambda cls: _is_module_class(cls) and all(
        callable(getattr(cls, m, None)) for m in methods)


# What makes a class a part of each kind: (test, what the kind is, in words).
KIND_RULES = {
    "program": (_has("model", "guide"), "an nn.Module with model(x, y=None, idx=None) and "
                                        "guide(x, y=None, idx=None)"),
    "prior": (_is_module_class, "an nn.Module whose forward() returns p(z)"),
    "guide": (_is_module_class, "an nn.Module whose forward(inputs, idx) returns q(z | x)"),
    "likelihood": (lambda cls: _is_module_class(cls) and hasattr(cls, "support"),
                   "an nn.Module with a support ('unit' or 'real') whose forward(out) "
                   "returns p(x | z)"),
    "encoder": (_is_module_class, "an nn.Module built as Class(in_dim, out_dim, hidden=..., "
                                  "image_shape=...)"),
    "decoder": (_is_module_class, "an nn.Module built as Class(in_dim, out_dim, hidden=..., "
                                  "image_shape=...)"),
    "objective": (lambda cls: callable(getattr(cls, "differentiable_loss", None)) or (
        isinstance(cls, type) and issubclass(cls, Penalty)),
                  "a Pyro ELBO class (with differentiable_loss) or a Penalty"),
    "corruption": (_is_module_class, "an nn.Module built as Class(level=...) mapping x to a "
                                     "corrupted x"),
}


def is_import_path(name):
    """Whether a part name is an import path (``module:Class`` or ``file.py:Class``)."""
    return isinstance(name, str) and ":" in name


def lookup(kind, name):
    """The class named ``name`` among the parts of ``kind`` ("prior", "guide", ...).

    ``name`` is a registered name, an import path (``package.module:ClassName`` or
    ``path/to/file.py:ClassName``), or a class itself; a class from a path or given
    directly must be a part of ``kind`` (:data:`KIND_RULES`).

    Raises
    ------
    ConfigError
        If no such part is registered (the message lists the known names), the path
        cannot be imported, or the class is not a part of ``kind`` (the message says why).
    """
    if kind not in TABLES:
        raise ConfigError(f"unknown kind of part {kind!r}; known kinds: "
                          f"{', '.join(sorted(TABLES))}")
    if is_import_path(name) or isinstance(name, type):
        cls = import_part(name) if is_import_path(name) else name
        check_kind(kind, cls, name)
        return cls
    table = TABLES[kind]
    try:
        return table[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(table)) or "none registered"
        raise ConfigError(f"unknown {kind} {name!r}; known {kind}s: {known}, or a class of "
                          "your own as package.module:Class or path/to/file.py:Class") from None


def check_kind(kind, cls, name=None):
    """ConfigError unless ``cls`` is a part of ``kind`` by :data:`KIND_RULES`."""
    test, what = KIND_RULES[kind]
    if not test(cls):
        label = name if isinstance(name, str) else getattr(cls, "__name__", repr(cls))
        raise ConfigError(f"{label!r} is not a {kind}: a {kind} is {what}")


def import_part(path):
    """The class named by ``package.module:Class`` or ``path/to/file.py:Class``.

    A file is imported once per resolved path, as a module named after it, so that two
    lookups give the same class.
    """
    where, _, attr = path.rpartition(":")
    if not where or not attr:
        raise ConfigError(f"{path!r} is not an import path; write package.module:Class or "
                          "path/to/file.py:Class")
    module = _import_file(where, path) if where.endswith(".py") else _import_module(where, path)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"{where} has no {attr!r} (from {path!r})") from None


def _import_module(name, path):
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise ConfigError(f"cannot import {name!r} (from {path!r}): {err}") from None


def _import_file(file, path):
    resolved = Path(file).expanduser().resolve()
    if not resolved.is_file():
        raise ConfigError(f"no file {file} (from {path!r}); give an existing .py file")
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:12]
    name = f"ppl_vae_user_{resolved.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, resolved)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: dataclasses and pickling look it up
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[name]
        raise ConfigError(f"importing {file} (from {path!r}) failed: "
                          f"{type(err).__name__}: {err}") from None
    return module


def resolve_path(name):
    """An import path with its file made absolute (the same class from any folder); other
    names unchanged."""
    if not is_import_path(name):
        return name
    where, _, attr = name.rpartition(":")
    if not where.endswith(".py"):
        return name
    return f"{Path(where).expanduser().resolve()}:{attr}"


def register(kind, name):
    """A class decorator: register the class as the part ``name`` of ``kind``.

    ::

        @register("prior", "laplace")
        class LaplacePrior(nn.Module):
            ...

    after which ``prior = "laplace"`` works in model files and on the command line (in
    this Python process). The class must be a part of ``kind``; a name already taken by
    another class is refused.
    """
    if kind not in TABLES:
        raise ConfigError(f"unknown kind of part {kind!r}; known kinds: "
                          f"{', '.join(sorted(TABLES))}")

    def decorate(cls):
        check_kind(kind, cls, name)
        table = TABLES[kind]
        if table.get(name, cls) is not cls:
            raise ConfigError(f"{kind} {name!r} is already registered (as "
                              f"{table[name].__name__}); choose another name")
        table[name] = cls
        return cls

    return decorate


def label(name):
    """A short name for a part given by name, import path or class (for tables)."""
    if isinstance(name, type):
        return name.__name__
    return name.rpartition(":")[2] if is_import_path(name) else name


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
