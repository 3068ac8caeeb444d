"""A normalising-flow prior, written as a user writes a part: p(z) is N(0, I) pushed
through a few affine autoregressive layers (Papamakarios et al. 2017) of
``pyro.distributions.transforms``.

Use it by import path: ``ppl-vae train --prior models/flow_prior.py:FlowPrior`` or
models/flow_prior.toml; ``ppl-vae check-part prior models/flow_prior.py:FlowPrior`` runs
the checks every built-in prior passes.
"""

import pyro.distributions as dist
import torch
from pyro.distributions.transforms import AffineAutoregressive
from pyro.nn import AutoRegressiveNN
from torch import nn


class FlowPrior(nn.Module):
    """p(z): the density of z = f^-1(u), u ~ N(0, I), f a stack of ``num_flows`` MADE layers.

    Each layer is used in its inverse direction, so that log p(z) (what training and
    log p(x) evaluate, at the guide's z) takes one pass per layer; sampling (figures only)
    inverts them one coordinate at a time.
    """

    def __init__(self, dims, *, num_flows=2, hidden=64):
        super().__init__()
        size = dims.latent_dim
        self.flows = nn.ModuleList(
            AffineAutoregressive(AutoRegressiveNN(size, [hidden, hidden]), stable=True)
            for _ in range(num_flows))
        self.register_buffer("loc", torch.zeros(size))
        self.register_buffer("scale", torch.ones(size))

    def forward(self):
        base = dist.Normal(self.loc, self.scale).to_event(1)
        return dist.TransformedDistribution(base, [flow.inv for flow in self.flows])
