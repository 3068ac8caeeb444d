"""A hierarchical VAE with two stochastic layers, written as a user writes a program.

    p(z2) = N(0, I),  p(z1 | z2) = N(mu(z2), diag sigma(z2)^2),  p(x | z1) = Bernoulli(f(z1))
    q(z2 | x) q(z1 | x, z2)       (a top-down guide: the generative order)

Train it with ``ppl-vae train --model hierarchical_vae`` (models/hierarchical_vae.toml).
Only the public API: Pyro, torch, and the sizes ``dims`` that ppl-vae passes in.
"""

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn.functional import softplus


def mlp(sizes):
    layers = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def normal(params, min_scale=1e-4):
    loc, raw = params.chunk(2, dim=-1)
    return dist.Normal(loc, softplus(raw) + min_scale).to_event(1)


def joined(a, b):
    """a and b side by side along the last dimension, batch dimensions broadcast."""
    shape = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    return torch.cat([a.expand(*shape, -1), b.expand(*shape, -1)], dim=-1)


class HierarchicalVAE(nn.Module):
    """z2 -> z1 -> x. ``dims.latent_dim`` is the size of z1; ``top_dim`` that of z2."""

    support = "unit"  # Bernoulli pixels

    def __init__(self, dims, *, top_dim=4, hidden=(256, 256)):
        super().__init__()
        self.num_data, self.sizes = dims.num_data, (dims.latent_dim, top_dim)
        d, l1, l2, h = dims.data_dim, dims.latent_dim, top_dim, list(hidden)
        self.decoder = mlp([l1, *h, d])                    # p(x | z1)
        self.middle = mlp([l2, h[-1], 2 * l1])             # p(z1 | z2)
        self.encoder_top = mlp([d, *h, 2 * l2])            # q(z2 | x)
        self.encoder_bottom = mlp([d + l2, *h, 2 * l1])    # q(z1 | x, z2)

    def plate(self, x, idx):
        return pyro.plate("data", len(x) if idx is None else self.num_data, subsample=idx)

    def model(self, x, y=None, idx=None):
        pyro.module("hierarchical_vae", self)
        with self.plate(x, idx):
            z2 = pyro.sample("z2", dist.Normal(x.new_zeros(len(x), self.sizes[1]), 1.0)
                             .to_event(1))
            z1 = pyro.sample("z1", normal(self.middle(z2)))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z1)).to_event(1), obs=x)

    def guide(self, x, y=None, idx=None):
        pyro.module("hierarchical_vae", self)
        with self.plate(x, idx):
            z2 = pyro.sample("z2", normal(self.encoder_top(x)))
            pyro.sample("z1", normal(self.encoder_bottom(joined(x, z2))))

    # Optional methods: they turn on the figures of a run.
    def encode(self, x, y=None):
        """q(z2 | x), the top layer's posterior (the latent-space figure)."""
        return normal(self.encoder_top(x))

    @torch.no_grad()
    def reconstruct(self, x, y=None):
        z2 = self.encode(x).mean
        z1 = normal(self.encoder_bottom(joined(x, z2))).mean
        return torch.sigmoid(self.decoder(z1))

    @torch.no_grad()
    def sample(self, num_samples, y=None):
        z2 = torch.randn(num_samples, self.sizes[1], device=self.decoder[0].weight.device)
        z1 = normal(self.middle(z2)).sample()
        return torch.sigmoid(self.decoder(z1))
