"""Priors p(z) over the latent code.

A prior is an ``nn.Module`` whose ``forward()`` returns a distribution with
``event_shape == (latent_dim,)`` and empty batch shape; ``VAE.model`` expands it over the
data plate. Learnable priors keep their parameters as module parameters, so they train
with everything else.

A prior built from another part of the VAE declares it with ``bind(vae)``, which the VAE
calls once it holds all its parts (the VampPrior needs the guide's encoder), and with the
class attribute ``needs_encoder_density``, which :func:`ppl_vae.registry.incompatibility`
reads.
"""

import math

import pyro.distributions as dist
import torch
from pyro.distributions.transforms.softplus import softplus_inv
from torch import nn
from torch.nn.functional import softplus

from ppl_vae.errors import ConfigError


class DiagonalNormalMixture(dist.MixtureSameFamily):
    """A mixture of diagonal normals whose ``log_prob`` uses matrix products.

    sum_j (z_j - m_kj)^2 / s_kj^2 is expanded into
    z^2 @ (1/s^2)^T - 2 z @ (m/s^2)^T + sum_j m_kj^2 / s_kj^2, so that scoring N points
    against K components costs two (N, L) x (L, K) products instead of an (N, K, L)
    broadcast: the difference between seconds and a minute for log p(x) with K = 5000
    samples per point. The expansion cancels large terms, so it runs in float64. An
    expanded mixture (batch shape not empty) is scored the generic way.
    """

    def log_prob(self, value):
        if self.batch_shape:
            return super().log_prob(value)
        normal = self.component_distribution.base_dist
        precision = normal.scale.double().pow(-2)  # (K, L)
        weighted_loc = normal.loc.double() * precision
        z = value.double().reshape(-1, value.shape[-1])
        quadratic = (z.pow(2) @ precision.T - 2 * z @ weighted_loc.T
                     + (normal.loc.double() * weighted_loc).sum(-1))
        log_norm = (normal.scale.double().log().sum(-1)
                    + 0.5 * value.shape[-1] * math.log(2 * math.pi))
        log_weights = self.mixture_distribution.logits.double().log_softmax(-1)
        per_component = log_weights - log_norm - 0.5 * quadratic
        return per_component.logsumexp(-1).reshape(value.shape[:-1]).to(value.dtype)


def diagonal_mixture(logits, components):
    """The mixture ``logits`` x ``components``: the fast :class:`DiagonalNormalMixture` when
    the components are diagonal normals, Pyro's ``MixtureSameFamily`` otherwise."""
    weights = dist.Categorical(logits=logits)
    diagonal = (isinstance(components, dist.Independent)
                and isinstance(components.base_dist, dist.Normal)
                and components.reinterpreted_batch_ndims == 1)
    return (DiagonalNormalMixture if diagonal else dist.MixtureSameFamily)(weights, components)


class UnitNormal(dist.Normal):
    """N(0, 1) in each coordinate: the distribution of the :class:`StandardNormal` prior.

    A ``Normal`` whose loc is 0 and scale is 1 (only :class:`StandardNormal` builds one,
    from its buffers of zeros and ones). Its own type lets torch dispatch
    KL(N(m, s^2) || N(0, 1)) to the short closed form :func:`kl_normal_unit_normal`
    instead of the general normal-normal formula, which also divides by and squares the
    prior's parameters (``ppl-vae bench parts`` times both).
    """


@torch.distributions.kl.register_kl(torch.distributions.Normal, UnitNormal)
def kl_normal_unit_normal(q, p):
    """KL(N(m, s^2) || N(0, 1)) = (s^2 + m^2 - 1) / 2 - log s, per coordinate."""
    return 0.5 * (q.scale.pow(2) + q.loc.pow(2) - 1) - q.scale.log()


class StandardNormal(nn.Module):
    """p(z) = N(0, I), the prior of the original VAE (Kingma & Welling 2014).

    Parameters
    ----------
    dims : Dims
        Sizes of the model; only ``dims.latent_dim`` is used.
    """

    def __init__(self, dims):
        super().__init__()
        self.register_buffer("loc", torch.zeros(dims.latent_dim))
        self.register_buffer("scale", torch.ones(dims.latent_dim))

    def forward(self):
        return UnitNormal(self.loc, self.scale).to_event(1)


class MixtureOfGaussians(nn.Module):
    """p(z) = sum_k pi_k N(z; mu_k, diag(sigma_k^2)), every parameter learned.

    The weights are ``softmax(logits)``, the scales ``softplus(rho) + min_scale``. The means
    start as draws from N(0, I) and the scales at 1, so the untrained prior is a broad
    bump around the origin that the data then pull apart. KL(q || p) has no closed form:
    ``TraceMeanField_ELBO`` falls back to its Monte Carlo estimate.

    Parameters
    ----------
    dims : Dims
        Model sizes; ``dims.latent_dim`` is used.
    num_components : int
        K, the number of mixture components.
    min_scale : float
        Lower bound on every sigma, so that no component collapses onto a point.
    """

    def __init__(self, dims, *, num_components=10, min_scale=1e-3):
        super().__init__()
        if num_components < 1:
            raise ConfigError(f"num_components must be >= 1; got {num_components}")
        shape = (num_components, dims.latent_dim)
        self.logits = nn.Parameter(torch.zeros(num_components))
        self.locs = nn.Parameter(torch.randn(shape))
        raw_scale = float(softplus_inv(torch.tensor(1.0 - min_scale)))  # scales start at 1
        self.raw_scales = nn.Parameter(torch.full(shape, raw_scale))
        self.min_scale = min_scale

    def forward(self):
        components = dist.Normal(self.locs, softplus(self.raw_scales) + self.min_scale)
        return diagonal_mixture(self.logits, components.to_event(1))


class VampPrior(nn.Module):
    """The VampPrior (Tomczak & Welling 2018): p(z) = 1/K sum_k q(z | u_k).

    The mixture of the guide's own encoder posteriors at K learned pseudo-inputs u_k: the
    prior that maximises the ELBO averaged over the data is the aggregate posterior
    1/N sum_n q(z | x_n), and the pseudo-inputs stand in for the N data points.

    The pseudo-inputs live in the data's space. For [0, 1] data (a likelihood whose
    ``support`` is ``"unit"``) they are ``sigmoid(raw)``, so they stay in the data's range;
    for real data they are ``raw`` itself. They start as noise around the middle of that
    range (``init="noise"``, as in the paper); :meth:`init_from_data` sets them to
    randomly chosen data points instead, which the builder does for a new run (through
    :meth:`setup_from_data`) when ``init="data"``
    (``[model.prior_options] init = "data"`` in a model file).

    The encoder is the guide's: the prior holds a reference to it that is not a
    registered submodule (the guide is registered once, under the VAE), see :meth:`bind`.

    Parameters
    ----------
    dims : Dims
        Model sizes; the pseudo-inputs have ``dims.data_dim`` entries.
    num_pseudo_inputs : int
        K, the number of pseudo-inputs.
    init_std : float
        Standard deviation of the noise the raw pseudo-inputs start from.
    init : {"noise", "data"}
        Where a new training run starts the pseudo-inputs: ``"data"`` has the trainer call
        :meth:`init_from_data` with the training set.
    """

    needs_encoder_density = True
    latent_support = None  # the guide's: its components are the guide's posteriors

    def __init__(self, dims, *, num_pseudo_inputs=50, init_std=0.1, init="noise"):
        super().__init__()
        if num_pseudo_inputs < 1:
            raise ConfigError(f"num_pseudo_inputs must be >= 1; got {num_pseudo_inputs}")
        if init not in ("noise", "data"):
            raise ConfigError(f"the VampPrior's init is 'noise' or 'data'; got {init!r}")
        self.init = init
        if dims.num_classes:
            raise ConfigError("the VampPrior is a mixture of q(z | u) over unlabelled "
                              "pseudo-inputs; it is not defined for a conditional VAE")
        self.raw_pseudo_inputs = nn.Parameter(init_std * torch.randn(num_pseudo_inputs,
                                                                     dims.data_dim))
        self.unit_range = True
        self._encoder = None

    def bind(self, vae):
        """Connect to the VAE's guide; called by the VAE once it holds all its parts.

        The prior keeps the guide's bound ``encode`` method, not the guide as a submodule,
        so the guide's parameters appear once in ``vae.parameters()`` and in checkpoints,
        under the guide. Which guides fit is the rule in ``ppl_vae.registry``.
        """
        self._encoder = vae.posterior.encode
        self.unit_range = vae.likelihood.support == "unit"

    @property
    def pseudo_inputs(self):
        """The K pseudo-inputs u_k, shape (K, D), in the data's range."""
        return torch.sigmoid(self.raw_pseudo_inputs) if self.unit_range else self.raw_pseudo_inputs

    def setup_from_data(self, x):
        """The setup step the builder calls for a new run with the training set ``x``:
        :meth:`init_from_data` when ``init == "data"``, nothing otherwise."""
        if self.init == "data":
            self.init_from_data(x)

    def init_from_data(self, x):
        """Set the pseudo-inputs to K data points drawn without replacement from ``x`` (N, D).

        Points on the boundary of [0, 1] are moved inside by 1e-3, where the sigmoid's
        inverse is finite.
        """
        if x.shape[0] < len(self.raw_pseudo_inputs):
            raise ConfigError(f"need at least {len(self.raw_pseudo_inputs)} data points to "
                              f"initialise the pseudo-inputs; got {x.shape[0]}")
        rows = x[torch.randperm(x.shape[0], device=x.device)[: len(self.raw_pseudo_inputs)]]
        rows = rows.detach().to(self.raw_pseudo_inputs)
        if self.unit_range:
            rows = torch.logit(rows.clamp(1e-3, 1 - 1e-3))
        with torch.no_grad():
            self.raw_pseudo_inputs.copy_(rows)

    def forward(self):
        if self._encoder is None:
            raise ConfigError("the VampPrior is not connected to a guide; build it with "
                              "build_vae, which calls bind(vae)")
        components = self._encoder(self.pseudo_inputs)
        k = components.batch_shape[-1]
        return diagonal_mixture(torch.zeros(k, device=self.raw_pseudo_inputs.device),
                                components)


def relaxed_one_hot_log_prob(relaxed, value):
    """``relaxed.log_prob(value)`` for a relaxed one-hot categorical, finite at the vertices.

    Torch scores a point of the simplex through its logarithm, which is -inf where a
    float32 draw has underflowed to 0; the logarithm is floored at the smallest normal
    float instead, which changes nothing elsewhere.
    """
    log_value = value.clamp(min=torch.finfo(value.dtype).tiny).log()
    return relaxed.base_dist.log_prob(log_value) - log_value.sum(-1)


class JointLatent(dist.TorchDistribution):
    """Independent continuous and relaxed discrete latents as one vector z = (z_c, c).

    The first ``L - K`` coordinates follow a diagonal normal, the last ``K`` a relaxed
    one-hot categorical (Gumbel-softmax / Concrete: Jang et al. 2017, Maddison et al. 2017),
    a point of the simplex that tends to a one-hot vector as the temperature goes to 0:
    the latent of JointVAE (Dupont 2018). One sample site carries both, so the VAE, its
    guide and every objective treat it like any other z; ``log_prob`` is the sum of the
    two parts' densities, and no closed-form KL exists (objectives use Monte Carlo).

    ``mean`` is the normal's mean followed by the categorical's probabilities (the limit
    of the relaxed mean as the temperature goes to 0): a point summary for figures.

    Parameters
    ----------
    continuous : Independent(Normal)
        Event shape (L - K,).
    discrete : RelaxedOneHotCategorical
        Event shape (K,).
    """

    arg_constraints = {}
    support = dist.constraints.real_vector  # a product of R^(L-K) and the simplex, in fact
    has_rsample = True

    def __init__(self, continuous, discrete, validate_args=None):
        batch_shape = torch.broadcast_shapes(continuous.batch_shape, discrete.batch_shape)
        self.continuous = continuous.expand(batch_shape)
        self.discrete = discrete.expand(batch_shape)
        event_shape = (continuous.event_shape[0] + discrete.event_shape[0],)
        super().__init__(batch_shape, torch.Size(event_shape), validate_args=False)

    @property
    def num_categories(self):
        return self.discrete.event_shape[0]

    def expand(self, batch_shape, _instance=None):
        return JointLatent(self.continuous.expand(batch_shape), self.discrete.expand(batch_shape))

    def rsample(self, sample_shape=()):
        return torch.cat([self.continuous.rsample(sample_shape),
                          self.discrete.rsample(sample_shape)], dim=-1)

    def sample(self, sample_shape=()):
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value):
        continuous, discrete = value.split([value.shape[-1] - self.num_categories,
                                            self.num_categories], dim=-1)
        return (self.continuous.log_prob(continuous)
                + relaxed_one_hot_log_prob(self.discrete, discrete))

    @property
    def mean(self):
        return torch.cat([self.continuous.mean, self.discrete.probs], dim=-1)


def joint_latent(loc, scale, temperature, logits):
    """The :class:`JointLatent` N(loc, diag(scale^2)) x RelaxedOneHotCategorical(temperature,
    logits)."""
    return JointLatent(dist.Normal(loc, scale).to_event(1),
                       dist.RelaxedOneHotCategorical(temperature, logits=logits))


def check_joint_sizes(dims, num_categories, temperature):
    """Raise ConfigError unless K categories leave a continuous part and tau > 0."""
    if not 2 <= num_categories < dims.latent_dim:
        raise ConfigError(f"num_categories must be at least 2 and less than latent_dim "
                          f"({dims.latent_dim}), which counts both parts; got {num_categories}")
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0; got {temperature}")


class JointPrior(nn.Module):
    """JointVAE's prior (Dupont 2018): p(z, c) = N(z; 0, I) x RelaxedOneHotCategorical(c; tau,
    uniform), z of size ``latent_dim - num_categories``, c of size ``num_categories``.

    It goes with the ``joint`` guide (see :func:`ppl_vae.registry.incompatibility`); the
    decoder reads the concatenation (z, c).

    Parameters
    ----------
    dims : Dims
        ``dims.latent_dim`` is the size of both parts together.
    num_categories : int
        K, the size of the discrete part (2 by default, which fits any latent_dim >= 3;
        Dupont uses 3 on dSprites, 10 on MNIST).
    temperature : float
        tau of the relaxation (0.67, as in Dupont 2018 and Maddison et al. 2017).
    """

    latent_support = "real x simplex"

    def __init__(self, dims, *, num_categories=2, temperature=0.67):
        super().__init__()
        check_joint_sizes(dims, num_categories, temperature)
        continuous = dims.latent_dim - num_categories
        self.num_categories = num_categories
        self.register_buffer("loc", torch.zeros(continuous))
        self.register_buffer("scale", torch.ones(continuous))
        self.register_buffer("logits", torch.zeros(num_categories))
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self):
        return joint_latent(self.loc, self.scale, self.temperature, self.logits)
