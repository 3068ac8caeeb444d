"""Corruptions of the guide's input while training: the denoising VAE."""

import torch
from torch import nn

from ppl_vae.errors import ConfigError


class Corruption(nn.Module):
    """Noise on the guide's input while training (``self.training``); the identity otherwise.

    A denoising VAE (Vincent et al. 2008 for autoencoders; Im et al. 2017) encodes a
    corrupted x~ and is scored on reconstructing the clean x: the model's likelihood always
    sees the clean data, only the encoder's input changes. Evaluation (the module in eval
    mode) encodes clean data. Subclasses override ``corrupt``.

    Parameters
    ----------
    level : float
        The noise's strength: a standard deviation, or the share of entries corrupted.
    """

    max_level = 1.0

    def __init__(self, *, level=0.1):
        super().__init__()
        if not 0 <= level <= self.max_level:
            raise ConfigError(f"corruption_level must be in [0, {self.max_level:g}] for "
                              f"{type(self).__name__}; got {level}")
        self.level = float(level)

    def corrupt(self, x):
        raise NotImplementedError

    def forward(self, x):
        return self.corrupt(x) if self.training else x


class NoCorruption(Corruption):
    """The input as it is: the plain VAE."""

    max_level = float("inf")

    def forward(self, x):
        return x


class GaussianCorruption(Corruption):
    """x + level * eps, eps ~ N(0, I) (additive isotropic Gaussian noise)."""

    max_level = float("inf")

    def corrupt(self, x):
        return x + self.level * torch.randn_like(x)


class SaltAndPepperCorruption(Corruption):
    """A share ``level`` of the entries, chosen at random, set to 0 or 1 with equal odds."""

    def corrupt(self, x):
        hit = torch.rand_like(x) < self.level
        return torch.where(hit, (torch.rand_like(x) < 0.5).to(x.dtype), x)


class MaskCorruption(Corruption):
    """A share ``level`` of the entries, chosen at random, set to 0 (masking noise)."""

    def corrupt(self, x):
        return x * (torch.rand_like(x) >= self.level).to(x.dtype)
