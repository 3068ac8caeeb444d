"""Priors p(z) over the latent code.

A prior is an ``nn.Module`` whose ``forward()`` returns a distribution with
``event_shape == (latent_dim,)`` and empty batch shape; ``VAE.model`` expands it over the
data plate. Learnable priors keep their parameters as module parameters, so they train
with everything else.
"""

import pyro.distributions as dist
import torch
from torch import nn


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
        return dist.Normal(self.loc, self.scale).to_event(1)
