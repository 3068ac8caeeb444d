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


def image_channels(image_shape):
    """``(C, H, W)`` of an image shape given as ``(H, W)`` (one channel) or ``(C, H, W)``."""
    if image_shape is None or len(image_shape) not in (2, 3):
        raise ConfigError(f"conv nets need images of shape (H, W) or (C, H, W); got "
                          f"image_shape={image_shape}")
    return (1, *image_shape) if len(image_shape) == 2 else tuple(image_shape)


def _padded(side):
    # Two stride-2 layers halve the side twice: images are padded up to a multiple of 4
    # (centred) and the decoder's output cropped back, so any side works.
    return -(-side // 4) * 4


def _margins(side):
    before = (_padded(side) - side) // 2
    return before, _padded(side) - side - before


class ResidualBlock(nn.Module):
    """x + conv3x3(relu(conv3x3(relu(x)))): the channel count and the size are kept."""

    def __init__(self, channels):
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1),
                                  nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)


class ConvEncoder(nn.Module):
    """Two stride-2 convolutions and a linear head, for flat images of ``image_shape``
    (``(H, W)`` or ``(C, H, W)``, flattened channel-major), any side: the image is padded
    to sides divisible by 4. ``residual_blocks`` residual blocks follow each convolution.

    Extra inputs beyond the image (a one-hot label for a conditional VAE) join the linear
    head.
    """

    residual_blocks = 0

    def __init__(self, in_dim, out_dim, *, hidden=(256,), image_shape=None):
        super().__init__()
        self.channels, *self.sides = image_channels(image_shape)
        self.num_pixels = self.channels * math.prod(self.sides)
        # F.pad's order: left, right, top, bottom.
        self.padding = (*_margins(self.sides[1]), *_margins(self.sides[0]))
        grid = [_padded(side) // 4 for side in self.sides]
        self.features = nn.Sequential(
            nn.Conv2d(self.channels, 32, 4, stride=2, padding=1), nn.ReLU(),
            *[ResidualBlock(32) for _ in range(self.residual_blocks)],
            nn.Conv2d(32, 64, 4, stride=2, padding=1), nn.ReLU(),
            *[ResidualBlock(64) for _ in range(self.residual_blocks)],
            nn.Flatten(),
        )
        self.head = MLP(64 * grid[0] * grid[1] + in_dim - self.num_pixels, out_dim,
                        hidden=hidden)

    def forward(self, x):
        pixels, extra = x[..., : self.num_pixels], x[..., self.num_pixels :]
        batch_shape = pixels.shape[:-1]
        images = nn.functional.pad(pixels.reshape(-1, self.channels, *self.sides),
                                   self.padding)
        features = self.features(images).reshape(*batch_shape, -1)
        return self.head(features if extra.shape[-1] == 0 else torch.cat([features, extra], -1))


class ConvDecoder(nn.Module):
    """A linear map to a 64-channel grid and two stride-2 transposed convolutions, cropped
    to the image's sides; ``out_dim / (H W)`` output maps, flattened channel-major (C maps
    for a likelihood with one number per value, more for one with several)."""

    residual_blocks = 0

    def __init__(self, in_dim, out_dim, *, hidden=(256,), image_shape=None):
        super().__init__()
        _, *self.sides = image_channels(image_shape)
        self.grid = [_padded(side) // 4 for side in self.sides]
        self.crop = [_margins(side)[0] for side in self.sides]
        channels = out_dim // math.prod(self.sides)
        if channels * math.prod(self.sides) != out_dim:
            raise ConfigError(f"conv decoder cannot produce {out_dim} outputs for {image_shape}")
        self.head = nn.Sequential(MLP(in_dim, 64 * self.grid[0] * self.grid[1], hidden=hidden),
                                  nn.ReLU())
        self.deconv = nn.Sequential(
            *[ResidualBlock(64) for _ in range(self.residual_blocks)],
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), nn.ReLU(),
            *[ResidualBlock(32) for _ in range(self.residual_blocks)],
            nn.ConvTranspose2d(32, channels, 4, stride=2, padding=1),
        )

    def forward(self, z):
        batch_shape = z.shape[:-1]
        grid = self.head(z).reshape(-1, 64, *self.grid)
        (top, left), (h, w) = self.crop, self.sides
        images = self.deconv(grid)[..., top : top + h, left : left + w]
        return images.reshape(*batch_shape, -1)


class ResidualConvEncoder(ConvEncoder):
    """:class:`ConvEncoder` with a residual block after each convolution."""

    residual_blocks = 1


class ResidualConvDecoder(ConvDecoder):
    """:class:`ConvDecoder` with a residual block before each transposed convolution."""

    residual_blocks = 1
