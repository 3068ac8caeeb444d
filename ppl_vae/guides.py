"""Guides q(z | x): the approximate posterior, as a distribution over z for each data point.

A guide is an ``nn.Module`` called as ``guide(inputs, idx)`` that returns a distribution
with ``batch_shape == inputs.shape[:-1]`` and ``event_shape == (latent_dim,)``.
``inputs`` is the data point, with the one-hot condition appended for a conditional VAE;
``idx`` are the data points' indices in the training set (used by non-amortized guides).
"""

import pyro.distributions as dist
from torch import nn
from torch.nn.functional import softplus


class AmortizedDiagonalNormal(nn.Module):
    """q(z | x) = N(z; mu(x), diag(sigma(x)^2)), one encoder net for all data points.

    The encoder outputs ``(mu, rho)`` and ``sigma = softplus(rho) + min_scale``. Paired with
    a standard normal prior, the KL term has the closed form
    ``1/2 sum_j (sigma_j^2 + mu_j^2 - 1 - log sigma_j^2)``, which ``TraceMeanField_ELBO`` uses.

    Parameters
    ----------
    dims : Dims
        Model sizes (``data_dim``, ``cond_dim``, ``latent_dim``).
    make_net : callable
        ``make_net(in_dim, out_dim) -> nn.Module``, the encoder factory.
    min_scale : float
        Lower bound on sigma, which keeps log q finite.
    """

    def __init__(self, dims, make_net, *, min_scale=1e-4):
        super().__init__()
        self.encoder = make_net(dims.data_dim + dims.cond_dim, 2 * dims.latent_dim)
        self.min_scale = min_scale

    def forward(self, inputs, idx=None):
        loc, rho = self.encoder(inputs).chunk(2, dim=-1)
        return dist.Normal(loc, softplus(rho) + self.min_scale).to_event(1)
