"""Procedural dSprites-like shapes: binary images with known generative factors.

dSprites (Matthey et al., 2017) is the usual test bed for disentanglement: white shapes on
black, drawn from five independent discrete factors. This module draws images of the same
kind analytically, so nothing has to be downloaded and any image size can be made.

Factors (:data:`FACTORS`, in this column order of every factor matrix):

======== ====== ====================================================================
shape    3      square, ellipse, heart
scale    6      ``0.5, 0.6, ..., 1.0``; the shape fits a disc of radius
                ``0.24 * scale * image_size`` pixels
rotation 40     ``2 pi k / 40`` radians, counter-clockwise on screen
pos_x    32     centre column ``image_size * (1/2 + (k - 15.5) / 64)`` pixels from the
                left edge: consecutive values are one pixel apart at 64x64, half a pixel
                at 32x32
pos_y    32     centre row, the same values, counted downwards from the top edge
======== ====== ====================================================================

Every setting keeps the whole shape inside the image. Pixel ``(row, col)`` covers the
square ``[row, row + 1) x [col, col + 1)`` and is set where its centre lies inside the
shape (point sampling, so values are exactly 0 or 1).

Symmetry: a square looks the same after a quarter turn and an ellipse after a half turn,
so rotation values ``k`` and ``k + 10`` (square) or ``k + 20`` (ellipse) give the same
image up to rasterisation; the heart has no rotational symmetry. As in dSprites, the
rotation factor therefore cannot be fully recovered from an image of a square or an
ellipse, which caps every metric's score for that factor below its maximum. At 32x32 the
smallest shapes are a few pixels across, so neighbouring rotation and position values
can also render alike.
"""

import math

import torch

# Factor name -> number of values, in the column order of factor matrices.
FACTORS = {"shape": 3, "scale": 6, "rotation": 40, "pos_x": 32, "pos_y": 32}
SHAPES = ("square", "ellipse", "heart")
DEFAULT_NUM_DATA = 20_000

# Radius (as a fraction of the image side) of the disc that holds a shape of scale 1.
_MAX_RADIUS = 0.24
_MIN_SCALE = 0.5
# Positions step by 1/64 of the image side: one pixel at dSprites' 64x64.
_POSITION_STEP = 1 / 64
# Image pixels per rendering chunk (256 images of 64x64): bounds the temporaries.
_CHUNK_PIXELS = 2**20


# Each shape is an indicator on the unit disc: (u, v) are coordinates relative to the
# shape's centre in units of its radius, u to the right and v upwards.


def _square(u, v):
    # Half-side 1/sqrt(2): the corners touch the unit circle at every rotation.
    return torch.maximum(u.abs(), v.abs()) <= 1 / math.sqrt(2)


def _ellipse(u, v):
    # Semi-axes 1 and 1/2.
    return u * u + 4 * v * v <= 1


def _heart(u, v):
    # The curve (x^2 + y^2 - 1)^3 = x^2 y^3 spans y from -1 to about 1.24; its smallest
    # enclosing circle has centre (0, 1/4) and radius 5/4 (found numerically), so this map
    # takes the unit disc onto that circle.
    x, y = 1.25 * u, 1.25 * v + 0.25
    r = x * x + y * y - 1
    return r * r * r <= x * x * y * y * y


_INSIDE = (_square, _ellipse, _heart)


def check_factors(factors: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``factors`` is an integer ``(N, 5)`` matrix of valid values."""
    if not isinstance(factors, torch.Tensor) or factors.is_floating_point() or factors.is_complex():
        what = factors.dtype if isinstance(factors, torch.Tensor) else type(factors).__name__
        raise ValueError(f"factors must be an integer tensor; got {what}")
    if factors.ndim != 2 or factors.shape[1] != len(FACTORS):
        raise ValueError(
            f"expected factors of shape (N, {len(FACTORS)}) for {', '.join(FACTORS)}; "
            f"got {tuple(factors.shape)}"
        )
    for k, (name, size) in enumerate(FACTORS.items()):
        column = factors[:, k]
        if len(column) and (column.min() < 0 or column.max() >= size):
            raise ValueError(
                f"factor {name} takes values 0..{size - 1}; got values from "
                f"{int(column.min())} to {int(column.max())}"
            )


def sample_factors(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw ``n`` factor settings, each factor independent and uniform over its values.

    Parameters
    ----------
    n : int
    generator : torch.Generator, optional
        A CPU generator, for reproducible draws.

    Returns
    -------
    torch.LongTensor
        Shape ``(n, 5)``, columns in the order of :data:`FACTORS`.
    """
    columns = [torch.randint(size, (n,), generator=generator) for size in FACTORS.values()]
    return torch.stack(columns, dim=1)


def render(factors: torch.Tensor, image_size: int = 32) -> torch.Tensor:
    """Draw the images of given factor settings.

    All images of one shape are evaluated at once on windows of the pixel grid around
    their centres: pixel centres are shifted to the shape's centre, rotated by minus its
    angle (rotating the grid, not the shape) and divided by its radius, then tested
    against the shape's indicator on the unit disc. No loop runs over images or pixels.

    Parameters
    ----------
    factors : torch.LongTensor
        Shape ``(N, 5)``, columns in the order of :data:`FACTORS`.
    image_size : int
        Side S of the square images in pixels (64 as in dSprites, 32 for quick runs).

    Returns
    -------
    torch.Tensor
        Shape ``(N, S * S)``, float32, values in {0, 1}, rows flattened row-major.
    """
    check_factors(factors)
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8 pixels; got {image_size}")
    factors = factors.cpu()
    images = torch.zeros(len(factors), image_size, image_size)
    chunk = max(1, _CHUNK_PIXELS // (image_size * image_size))
    for index, inside in enumerate(_INSIDE):
        # One shape at a time, so that each chunk evaluates one indicator on all its pixels.
        rows = (factors[:, 0] == index).nonzero().squeeze(1)
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            u, v, window_rows, window_cols = _window_coordinates(factors[part], image_size)
            images[part[:, None, None], window_rows, window_cols] = inside(u, v).float()
    return images.flatten(1)


def _window_coordinates(factors: torch.Tensor, size: int):
    """Pixel centres of a window around each shape, in the shape's own frame.

    A shape lies in a disc of radius at most ``R = 0.24 * size`` pixels, so only a window
    of ``W = floor(2 R) + 2`` pixels square around its centre needs testing: a quarter of
    the image. ``u`` and ``v`` are the rotated offsets from the centre divided by the
    radius. Rotation mixes the two axes linearly, so each is a column term plus a row
    term: products are taken on ``(N, W)`` vectors in float64, only sums on the grid.

    Returns
    -------
    u, v : torch.Tensor
        Shapes ``(N, W, W)``, float32.
    rows, cols : torch.LongTensor
        Shapes ``(N, W, 1)`` and ``(N, 1, W)``: the window's pixels in the image.
    """
    _, scale, rotation, pos_x, pos_y = factors.to(torch.float64).T
    relative_scale = _MIN_SCALE + (1 - _MIN_SCALE) * scale / (FACTORS["scale"] - 1)
    radius = (size * _MAX_RADIUS * relative_scale)[:, None]
    angle = (2 * math.pi * rotation / FACTORS["rotation"])[:, None]
    offset = (FACTORS["pos_x"] - 1) / 2
    centre_x = size * (0.5 + (pos_x[:, None] - offset) * _POSITION_STEP)
    centre_y = size * (0.5 + (pos_y[:, None] - offset) * _POSITION_STEP)
    # The first pixel whose centre can be within R of the centre; the clamp only guards
    # rounding, since every shape lies inside the image.
    max_radius = size * _MAX_RADIUS
    width = math.floor(2 * max_radius) + 2
    steps = torch.arange(width)
    cols = (torch.ceil(centre_x - max_radius - 0.5).long().clamp(0, size - width) + steps)
    rows = (torch.ceil(centre_y - max_radius - 0.5).long().clamp(0, size - width) + steps)
    # Offsets of pixel centres are exact binary fractions for sizes like 32 and 64, so a
    # change of position by whole pixels shifts the image exactly. Rows count downwards
    # and v points up, hence the sign of dy.
    dx = (cols + 0.5 - centre_x) / radius
    dy = (centre_y - rows - 0.5) / radius
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Rotating the grid by minus the angle puts the shape back in its reference pose.
    u = (cos * dx).float()[:, None, :] + (sin * dy).float()[:, :, None]
    v = (cos * dy).float()[:, :, None] - (sin * dx).float()[:, None, :]
    return u, v, rows[:, :, None], cols[:, None, :]


def make_shapes(
    num_data: int, *, image_size: int = 32, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random factor settings and their images.

    Parameters
    ----------
    num_data : int
        N, the number of images (settings are drawn independently, so repeats can occur).
    image_size : int
        Side S in pixels.
    seed : int

    Returns
    -------
    x : torch.Tensor
        Shape ``(N, S * S)``, float32 in {0, 1}.
    factors : torch.LongTensor
        Shape ``(N, 5)``, columns in the order of :data:`FACTORS`.
    """
    factors = sample_factors(num_data, torch.Generator().manual_seed(seed))
    return render(factors, image_size), factors


def load_shapes_with_factors(
    *, test_fraction=0.2, seed=0, image_size=32, num_data=DEFAULT_NUM_DATA
):
    """:func:`load_shapes` together with the full factor matrices of both splits.

    Returns
    -------
    dataset : Dataset
        As :func:`load_shapes`.
    factors_train, factors_test : torch.LongTensor
        Shapes ``(N_train, 5)`` and ``(N_test, 5)``, rows aligned with ``x_train`` and
        ``x_test``: the ground truth for disentanglement metrics.
    """
    # Imported here: data.py registers load_shapes, so a module-level import would be circular.
    from ppl_vae.data.arrays import Dataset, split_indices

    x, factors = make_shapes(num_data, image_size=image_size, seed=seed)
    train, test = split_indices(num_data, test_fraction, seed, "shapes")
    dataset = Dataset(
        "shapes", x[train], x[test], factors[train, 0], factors[test, 0], (image_size, image_size)
    )
    return dataset, factors[train], factors[test]


def load_shapes(
    *, data_dir=None, download=False, test_fraction=0.2, seed=0, image_size=32,
    num_data=DEFAULT_NUM_DATA,
):
    """dSprites-like shapes as a :class:`~ppl_vae.data.Dataset`, labelled by shape.

    Generated, so ``data_dir`` and ``download`` are accepted for a uniform signature and
    ignored. ``seed`` draws both the factor settings and the train/test split. The labels
    ``y`` are the shape (0 square, 1 ellipse, 2 heart), so latent plots can be coloured by
    it; :func:`load_shapes_with_factors` also returns every factor.
    """
    dataset, _, _ = load_shapes_with_factors(
        test_fraction=test_fraction, seed=seed, image_size=image_size, num_data=num_data
    )
    return dataset
