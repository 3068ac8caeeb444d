"""CascadeVAE's latent (Jeong & Song 2019): continuous codes and a discrete code found by
optimisation, not by an encoder.

z = (z_c, c): z_c of size L - K from an amortized diagonal normal, c a one-hot vector of
size K. For a minibatch, the code of each point is the category under which the decoder
reconstructs it best, subject to every category taking an equal share of the batch (the
uniform prior on c): a balanced assignment of B points to K categories, solved exactly as
a linear assignment (:func:`balanced_assignment`). The guide is then a point mass on that
code, so a gradient step sees the assignment as fixed. Outside training (no minibatch
indices, or eval mode) a point takes its best category on its own.
"""

import math

import numpy as np
import pyro.distributions as dist
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torch.nn.functional import one_hot, softplus

from ppl_vae.errors import ConfigError
from ppl_vae.parts.guides import AmortizedGuide, _split_inputs
from ppl_vae.parts.priors import JointLatent, UnitNormal


def balanced_assignment(cost):
    """The cheapest assignment of B points to K categories that gives each category at most
    ceil(B / K) points (exactly B / K when K divides B).

    Solved by scipy's ``linear_sum_assignment`` on the cost table with each category's
    column repeated ceil(B / K) times: a matching of the B rows to distinct columns is an
    assignment that respects the capacities, and every such assignment is one (the
    min-cost-flow problem of Jeong & Song 2019, as a rectangular assignment problem).

    Parameters
    ----------
    cost : Tensor, shape (B, K)
        ``cost[i, k]``: the cost of giving point i category k.

    Returns
    -------
    LongTensor, shape (B,)
        Each point's category, on ``cost``'s device.
    """
    if cost.ndim != 2 or cost.shape[1] < 1:
        raise ValueError(f"expected a cost table of shape (B, K); got {tuple(cost.shape)}")
    num_points, num_categories = cost.shape
    capacity = math.ceil(num_points / num_categories)
    table = np.repeat(cost.detach().cpu().double().numpy(), capacity, axis=1)
    rows, columns = linear_sum_assignment(table)
    assignment = np.empty(num_points, dtype=np.int64)
    assignment[rows] = columns // capacity
    return torch.from_numpy(assignment).to(cost.device)


class CascadeLatent(JointLatent):
    """A diagonal normal z_c and a one-hot c as one vector z = (z_c, c).

    The discrete part is a ``OneHotCategorical`` (the prior) or a ``Delta`` on a one-hot
    vector (the guide); ``log_prob`` is the sum of the parts', ``mean`` their means.
    """

    @property
    def has_rsample(self):
        return self.discrete.has_rsample

    def expand(self, batch_shape, _instance=None):
        return CascadeLatent(self.continuous.expand(batch_shape),
                             self.discrete.expand(batch_shape))

    def sample(self, sample_shape=()):
        with torch.no_grad():
            return torch.cat([self.continuous.sample(sample_shape),
                              self.discrete.sample(sample_shape)], dim=-1)

    def log_prob(self, value):
        continuous, discrete = value.split([value.shape[-1] - self.num_categories,
                                            self.num_categories], dim=-1)
        return self.continuous.log_prob(continuous) + self.discrete.log_prob(discrete)

    @property
    def mean(self):
        return torch.cat([self.continuous.mean, self.discrete.mean], dim=-1)


@torch.distributions.kl.register_kl(CascadeLatent, CascadeLatent)
def kl_cascade(q, p):
    """KL of the normal parts (closed form) plus KL(delta(c) || p(c)) = -log p(c)."""
    if not isinstance(q.discrete, dist.Delta):
        raise NotImplementedError
    return (torch.distributions.kl_divergence(q.continuous, p.continuous)
            - p.discrete.log_prob(q.discrete.v))


def _check_sizes(dims, num_categories):
    if not 2 <= num_categories < dims.latent_dim:
        raise ConfigError(f"num_categories must be at least 2 and less than latent_dim "
                          f"({dims.latent_dim}), which counts both parts; got {num_categories}")


class CascadePrior(nn.Module):
    """CascadeVAE's prior: p(z_c, c) = N(z_c; 0, I) x uniform categorical c (one-hot).

    Parameters
    ----------
    dims : Dims
        ``dims.latent_dim`` counts both parts.
    num_categories : int
        K, the size of the discrete code (3 for the shapes' three shapes).
    """

    latent_support = "real x one-hot"

    def __init__(self, dims, *, num_categories=2):
        super().__init__()
        _check_sizes(dims, num_categories)
        self.num_categories = num_categories
        continuous = dims.latent_dim - num_categories
        self.register_buffer("loc", torch.zeros(continuous))
        self.register_buffer("scale", torch.ones(continuous))
        self.register_buffer("logits", torch.zeros(num_categories))

    def forward(self):
        return CascadeLatent(UnitNormal(self.loc, self.scale).to_event(1),
                             dist.OneHotCategorical(logits=self.logits))


class CascadeGuide(AmortizedGuide):
    """CascadeVAE's guide: q(z_c, c | x) = N(z_c; mu(x), diag(sigma(x)^2)) x delta(c - c*(x)).

    c*(x) is inferred, not encoded: the B x K table of reconstruction costs
    -log p(x_i | mu(x_i), c = k) is computed with the VAE's decoder (no gradient), and c* is
    the :func:`balanced_assignment` of a training minibatch (called with its indices, in
    train mode), each point's cheapest category otherwise. The local parameters are
    (mu, rho, c*). While ``code_on`` is false (the first stages of the ``cascade``
    objective) every point gets category 0, so the decoder learns from z_c alone.

    Parameters
    ----------
    num_categories : int
        K (the prior's must be the same).
    min_scale : float
        Lower bound on sigma.
    """

    latent_support = "real x one-hot"
    # Half of q (the code) is found by optimisation through the decoder, not output by an
    # encoder: no VampPrior (a mixture of encoder posteriors) can be built from it.
    amortized = False

    def __init__(self, dims, make_net, *, num_categories=2, min_scale=1e-4):
        _check_sizes(dims, num_categories)
        self.continuous_dim = dims.latent_dim - num_categories
        super().__init__(dims, make_net, 2 * self.continuous_dim)
        self.num_categories, self.min_scale = num_categories, min_scale
        self.register_buffer("code_on", torch.tensor(True))
        self._vae = None

    def bind(self, vae):
        """Keep the VAE (a plain reference) to score categories with its decoder."""
        if getattr(vae.prior, "num_categories", None) != self.num_categories:
            raise ConfigError(f"the cascade guide has {self.num_categories} categories but the "
                              f"prior {getattr(vae.prior, 'num_categories', None)}; use prior "
                              "'cascade' with the same num_categories in both option tables")
        object.__setattr__(self, "_vae", vae)

    def local_params(self, inputs, idx=None):
        local = self.encoder(inputs)
        code = self.infer_code(inputs, local[..., :self.continuous_dim],
                               balanced=self.training and idx is not None)
        return torch.cat([local, one_hot(code, self.num_categories).to(local)], dim=-1)

    def encode(self, inputs):
        """q(z | x) with each point's own best category."""
        return self.forward(inputs)

    @torch.no_grad()
    def costs(self, inputs, loc):
        """The (B, K) table -log p(x_i | z_c = loc_i, c = k)."""
        x, y = _split_inputs(self._vae, inputs)
        codes = torch.eye(self.num_categories, dtype=loc.dtype, device=loc.device)
        z = torch.cat([loc.expand(self.num_categories, *loc.shape),
                       codes[:, None, :].expand(-1, loc.shape[0], -1)], dim=-1)
        return -self._vae.decode(z, y).log_prob(x).T

    def infer_code(self, inputs, loc, *, balanced):
        """Each point's category (B,): balanced or each its cheapest; 0 while code_on is off."""
        if torch.jit.is_tracing():
            raise ConfigError("the cascade guide solves an assignment with scipy at every "
                              "step, which a JIT trace would freeze; train with --no-jit")
        if not bool(self.code_on):
            return torch.zeros(loc.shape[0], dtype=torch.int64, device=loc.device)
        cost = self.costs(inputs, loc.detach())
        return balanced_assignment(cost) if balanced else cost.argmin(-1)

    def family(self, local):
        loc, rho, code = local.split([self.continuous_dim, self.continuous_dim,
                                      self.num_categories], dim=-1)
        return CascadeLatent(dist.Normal(loc, softplus(rho) + self.min_scale).to_event(1),
                             dist.Delta(code, event_dim=1))
