"""Plain ``torch.nn`` encoders and decoders. No Pyro calls live here.

Every net has the same constructor, ``Net(in_dim, out_dim, *, hidden, image_shape)``, so that
the registry can build any of them for any part: a guide asks for an encoder with as many
outputs as its distribution has parameters, a likelihood for a decoder with as many outputs
as it needs per data point.
"""

import math

import torch
from torch import nn

from ppl_vae.errors import ConfigError


class MLP(nn.Sequential):
    """A multilayer perceptron on flat vectors.

    ``hidden=()`` gives a single affine map, the linear encoder or decoder of
    probabilistic PCA.

    Parameters
    ----------
    in_dim, out_dim : int
        Sizes of the input (..., in_dim) and output (..., out_dim).
    hidden : sequence of int
        Widths of the hidden layers.
    image_shape : tuple of int, optional
        Unused; accepted so that every net has one constructor.
    """

    def __init__(self, in_dim, out_dim, *, hidden=(256, 256), image_shape=None):
        widths = [in_dim, *hidden]
        layers = []
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], out_dim))
        super().__init__(*layers)


def _conv_grid(image_shape):
    if image_shape is None or len(image_shape) != 2:
        raise ConfigError(f"conv nets need 2-D images; got image_shape={image_shape}")
    height, width = image_shape
    if height % 4 or width % 4:
        raise ConfigError(f"conv nets need image sides divisible by 4; got {height}x{width}")
    return height // 4, width // 4


class ConvEncoder(nn.Module):
    """Two stride-2 convolutions and a linear head, for flat images of ``image_shape``.

    Extra inputs beyond the image (a one-hot label for a conditional VAE) join the linear
    head.
    """

    def __init__(self, in_dim, out_dim, *, hidden=(256,), image_shape=None):
        super().__init__()
        self.image_shape = tuple(image_shape or ())
        h4, w4 = _conv_grid(image_shape)
        self.num_pixels = math.prod(self.image_shape)
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(),
        )
        self.head = MLP(64 * h4 * w4 + in_dim - self.num_pixels, out_dim, hidden=hidden)

    def forward(self, x):
        pixels, extra = x[..., : self.num_pixels], x[..., self.num_pixels :]
        batch_shape = pixels.shape[:-1]
        images = pixels.reshape(-1, 1, *self.image_shape)
        features = self.features(images).reshape(*batch_shape, -1)
        return self.head(features if extra.shape[-1] == 0 else torch.cat([features, extra], -1))


class ConvDecoder(nn.Module):
    """A linear map to a 64-channel grid and two stride-2 transposed convolutions."""

    def __init__(self, in_dim, out_dim, *, hidden=(256,), image_shape=None):
        super().__init__()
        self.image_shape = tuple(image_shape or ())
        self.grid = _conv_grid(image_shape)
        channels = out_dim // math.prod(self.image_shape)
        if channels * math.prod(self.image_shape) != out_dim:
            raise ConfigError(f"conv decoder cannot produce {out_dim} outputs for {image_shape}")
        self.head = nn.Sequential(MLP(in_dim, 64 * self.grid[0] * self.grid[1], hidden=hidden),
                                  nn.ReLU())
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(32, channels, 4, stride=2, padding=1),
        )

    def forward(self, z):
        batch_shape = z.shape[:-1]
        grid = self.head(z).reshape(-1, 64, *self.grid)
        return self.deconv(grid).reshape(*batch_shape, -1)

