"""Masks of missing entries: ``observed`` is True where an entry was seen."""

import torch

from ppl_vae.errors import ConfigError


def random_mask(shape, rate, *, seed=0, device=None):
    """``observed`` mask with each entry missing independently with probability ``rate``
    (missing completely at random), drawn from a generator seeded with ``seed``."""
    if not 0 < rate < 1:
        raise ConfigError(f"the missing rate must lie strictly between 0 and 1; got {rate}")
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) >= rate).to(device)


def lower_half_mask(num_points, image_shape):
    """``observed`` mask with the lower half of every image (rows H//2 and below) missing."""
    height, width = image_shape
    rows = torch.arange(height).unsqueeze(-1).expand(height, width)
    return (rows < height // 2).reshape(1, -1).expand(num_points, -1).clone()
