"""The procedural shapes: pixels against the documented geometry, exact symmetries, splits."""

import math

import pytest
import torch

from ppl_vae.data import shapes

SQUARE, ELLIPSE, HEART = range(3)
CENTRE = 15  # pos index whose centre lies on a pixel centre at 64x64 (column 31.5)


def settings(*rows):
    return torch.tensor(rows, dtype=torch.long)


def images(factors, size):
    return shapes.render(factors, size).view(-1, size, size)


def radius(scale, size):
    """Documented: the disc radius is 0.24 * (0.5 + 0.1 * scale) * size pixels."""
    return 0.24 * (0.5 + 0.1 * scale) * size


def centre(pos, size):
    """Documented: the centre is size * (1/2 + (pos - 15.5) / 64) pixels from the edge."""
    return size * (0.5 + (pos - 15.5) / 64)


def reference_image(factor, size):
    """A pixel-by-pixel rendering straight from the documented geometry, for comparison."""
    shape, scale, rotation, pos_x, pos_y = (int(f) for f in factor)
    r = radius(scale, size)
    angle = 2 * math.pi * rotation / 40
    out = torch.zeros(size, size)
    for row in range(size):
        for col in range(size):
            x = (col + 0.5 - centre(pos_x, size)) / r
            y = (centre(pos_y, size) - row - 0.5) / r  # upwards
            # Rotate the point clockwise, i.e. the shape counter-clockwise.
            u = math.cos(angle) * x + math.sin(angle) * y
            v = -math.sin(angle) * x + math.cos(angle) * y
            if shape == SQUARE:
                inside = max(abs(u), abs(v)) <= 1 / math.sqrt(2)
            elif shape == ELLIPSE:
                inside = u**2 + (v / 0.5) ** 2 <= 1
            else:
                hx, hy = 1.25 * u, 1.25 * v + 0.25
                inside = (hx**2 + hy**2 - 1) ** 3 - hx**2 * hy**3 <= 0
            out[row, col] = float(inside)
    return out


def test_render_matches_pixel_by_pixel_reference():
    factors = shapes.sample_factors(24, torch.Generator().manual_seed(1))
    factors[:, 0] = torch.arange(24) % 3  # every shape
    got = images(factors, 32)
    want = torch.stack([reference_image(f, 32) for f in factors])
    # Float32 against float64 may only disagree on a pixel centre that lies on an edge.
    assert (got != want).sum() <= 2
    assert got.sum() > 24 * 20  # not trivially empty


def square_side(scale, pos, size):
    """Indicator of the pixels i whose centre i + 0.5 lies within half a side of the centre."""
    half = radius(scale, size) / math.sqrt(2)
    c = centre(pos, size)
    side = torch.zeros(size)
    side[math.ceil(c - half - 0.5) : math.floor(c + half - 0.5) + 1] = 1
    return side


@pytest.mark.parametrize("size", [32, 64])
def test_axis_aligned_square_covers_the_expected_pixels(size):
    for scale in range(6):
        for pos_x, pos_y in ((0, 31), (CENTRE, CENTRE), (31, 0), (7, 22)):
            got = images(settings([SQUARE, scale, 0, pos_x, pos_y]), size)[0]
            want = torch.outer(square_side(scale, pos_y, size), square_side(scale, pos_x, size))
            assert torch.equal(got, want)


def test_square_pixel_count_at_64():
    """Centred on a pixel centre, a square of half-side h covers (2 floor(h) + 1)^2 pixels."""
    for scale, want in ((0, 121), (5, 441)):
        half = radius(scale, 64) / math.sqrt(2)  # 5.43 and 10.86 pixels
        assert (2 * math.floor(half) + 1) ** 2 == want
        got = images(settings([SQUARE, scale, 0, CENTRE, CENTRE]), 64)
        assert got.sum() == want


def test_areas_of_ellipse_and_heart():
    """Pixel counts near the areas: pi a b for the ellipse, 2.3437 r^2 for the heart.

    The heart (x^2 + y^2 - 1)^3 <= x^2 y^3 has area 3.6620 (numerical integration),
    divided by 1.25^2 in units of the shape's radius.
    """
    r = radius(5, 64)
    got = images(settings([ELLIPSE, 5, 0, CENTRE, CENTRE], [HEART, 5, 0, CENTRE, CENTRE]), 64)
    assert got[0].sum() == pytest.approx(math.pi * r * r / 2, rel=0.03)
    assert got[1].sum() == pytest.approx(3.6620 / 1.25**2 * r * r, rel=0.03)


@pytest.mark.parametrize("size,step", [(64, 1), (32, 2)])
def test_position_changes_translate_exactly(size, step):
    """pos steps of 1/64 of the side: one pixel at 64x64, so 2 steps per pixel at 32x32."""
    factors = shapes.sample_factors(60, torch.Generator().manual_seed(2))
    factors[:, 3:] = factors[:, 3:].clamp(max=31 - step)
    moved_x, moved_y = factors.clone(), factors.clone()
    moved_x[:, 3] += step
    moved_y[:, 4] += step
    base = images(factors, size)
    assert torch.equal(images(moved_x, size), base.roll(1, dims=2))
    assert torch.equal(images(moved_y, size), base.roll(1, dims=1))
    # So the centre of mass moves by exactly one pixel.
    cols = torch.arange(size, dtype=torch.float64)
    com = (base.double().sum(1) * cols).sum(1) / base.double().sum((1, 2))
    moved = images(moved_x, size).double()
    com_moved = (moved.sum(1) * cols).sum(1) / moved.sum((1, 2))
    torch.testing.assert_close(com_moved - com, torch.ones(60, dtype=torch.float64))


def test_rotational_symmetries():
    """Centred on a pixel centre, a quarter turn maps the pixel grid onto itself, so a
    square rotated by 10 steps (90 degrees), or an ellipse by 20, renders the same."""
    for scale in (0, 5):
        for k in range(10):
            square = images(settings([SQUARE, scale, k, CENTRE, CENTRE],
                                     [SQUARE, scale, k + 10, CENTRE, CENTRE]), 64)
            assert (square[0] != square[1]).sum() <= 2
        for k in range(20):
            ellipse = images(settings([ELLIPSE, scale, k, CENTRE, CENTRE],
                                      [ELLIPSE, scale, k + 20, CENTRE, CENTRE]), 64)
            assert (ellipse[0] != ellipse[1]).sum() <= 2
    heart = images(settings([HEART, 5, 0, CENTRE, CENTRE], [HEART, 5, 10, CENTRE, CENTRE]), 64)
    assert (heart[0] != heart[1]).sum() > 100


def test_rotation_is_counter_clockwise():
    """A quarter turn counter-clockwise takes an offset (dx, dy_up) to (-dy_up, dx).

    The heart's tip points down at rotation 0, at distance r from the centre (its lobes
    reach 0.79 r up): after a quarter turn it points right. Its centre of mass, above
    the centre at rotation 0, moves to the left by as much.
    """
    heart = images(settings([HEART, 5, 0, CENTRE, CENTRE], [HEART, 5, 10, CENTRE, CENTRE]), 64)
    r = radius(5, 64)
    down = heart[0].amax(1).nonzero().squeeze(1)
    right = heart[1].amax(0).nonzero().squeeze(1)
    assert down.max() + 0.5 - 31.5 == pytest.approx(r, abs=1)
    assert 31.5 - (down.min() + 0.5) == pytest.approx(0.79 * r, abs=1)
    assert right.max() + 0.5 - 31.5 == pytest.approx(r, abs=1)
    assert 31.5 - (right.min() + 0.5) == pytest.approx(0.79 * r, abs=1)
    grid = torch.arange(64, dtype=torch.float64) + 0.5
    offsets = []
    for image in heart.double():
        mass = image.sum()
        dx = (image.sum(0) * grid).sum() / mass - 31.5
        dy_up = 31.5 - (image.sum(1) * grid).sum() / mass
        offsets.append((float(dx), float(dy_up)))
    (dx0, dy0), (dx1, dy1) = offsets
    assert dy0 > 0.5 and dx0 == pytest.approx(0, abs=1e-9)  # mirror-symmetric about x = 0
    assert dx1 == pytest.approx(-dy0, abs=0.05) and dy1 == pytest.approx(dx0, abs=0.05)


def test_non_symmetric_settings_give_distinct_images():
    grid = torch.cartesian_prod(torch.arange(6), torch.arange(40))
    hearts = torch.cat([torch.full((240, 1), HEART), grid, torch.full((240, 2), CENTRE)], 1)
    grid = torch.cartesian_prod(torch.arange(6), torch.arange(10))
    squares = torch.cat([torch.full((60, 1), SQUARE), grid, torch.full((60, 2), CENTRE)], 1)
    grid = torch.cartesian_prod(torch.arange(6), torch.arange(20))
    ellipses = torch.cat([torch.full((120, 1), ELLIPSE), grid, torch.full((120, 2), CENTRE)], 1)
    x = shapes.render(torch.cat([hearts, squares, ellipses]), 64)
    assert len(torch.unique(x, dim=0)) == 240 + 60 + 120


@pytest.mark.parametrize("size", [32, 64])
def test_shapes_stay_inside_their_disc_and_the_image(size):
    grid = torch.cartesian_prod(torch.arange(3), torch.arange(40), torch.tensor([0, 31]))
    factors = torch.stack(
        [grid[:, 0], torch.full_like(grid[:, 0], 5), grid[:, 1], grid[:, 2], 31 - grid[:, 2]], 1
    )
    x = images(factors, size)
    assert x[:, 0].sum() == x[:, -1].sum() == x[:, :, 0].sum() == x[:, :, -1].sum() == 0
    rows, cols = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    cx = centre(factors[:, 3].double(), size)[:, None, None]
    cy = centre(factors[:, 4].double(), size)[:, None, None]
    distance = ((cols - cx) ** 2 + (rows - cy) ** 2).sqrt()
    assert distance[x.bool()].max() <= radius(5, size) + 1e-4


def test_make_shapes_is_binary_and_seeded():
    x, factors = shapes.make_shapes(200, image_size=32, seed=3)
    assert x.shape == (200, 1024) and x.dtype == torch.float32
    assert set(x.unique().tolist()) == {0.0, 1.0}
    assert factors.shape == (200, 5) and factors.dtype == torch.long
    sizes = torch.tensor(list(shapes.FACTORS.values()))
    assert (factors >= 0).all() and (factors < sizes).all()
    again, factors_again = shapes.make_shapes(200, image_size=32, seed=3)
    assert torch.equal(x, again) and torch.equal(factors, factors_again)
    other, _ = shapes.make_shapes(200, image_size=32, seed=4)
    assert not torch.equal(x, other)
    assert torch.equal(x, shapes.render(factors, 32))


def test_loader_splits_images_labels_and_factors_consistently():
    dataset, train, test = shapes.load_shapes_with_factors(
        num_data=500, image_size=32, test_fraction=0.2, seed=5
    )
    assert dataset.name == "shapes" and dataset.image_shape == (32, 32)
    assert len(dataset.x_test) == 100 and len(dataset.x_train) == 400
    assert torch.equal(dataset.x_test, shapes.render(test, 32))
    assert torch.equal(dataset.x_train, shapes.render(train, 32))
    assert torch.equal(dataset.y_train, train[:, 0]) and dataset.num_classes == 3
    plain = shapes.load_shapes(num_data=500, test_fraction=0.2, seed=5)
    assert torch.equal(plain.x_test, dataset.x_test)


@pytest.mark.parametrize(
    "factors,message",
    [
        (torch.zeros(2, 4, dtype=torch.long), r"expected factors of shape \(N, 5\)"),
        (torch.zeros(2, 5), "integer tensor"),
        (torch.tensor([[0, 6, 0, 0, 0]]), "factor scale takes values 0..5; got values from 6"),
    ],
)
def test_bad_factors_raise(factors, message):
    with pytest.raises(ValueError, match=message):
        shapes.render(factors)
