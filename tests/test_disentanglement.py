"""MIG and the FactorVAE score on codes whose answer is known by hand; traversal figures."""

import math

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from scipy.stats import entropy
from sklearn.metrics import mutual_info_score

from ppl_vae.data import shapes
from ppl_vae.evaluation.disentanglement import (
    discretize,
    factor_entropies,
    factor_vae_score,
    latent_traversals,
    mig,
    mig_gaps,
    mutual_info_matrix,
)


def uniform_factors(n, sizes, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(k, (n,), generator=g) for k in sizes], 1)


# --- mutual information ---------------------------------------------------------------------


def test_mutual_info_matrix_matches_sklearn_on_numpy_histogram_bins():
    g = torch.Generator().manual_seed(0)
    factors = uniform_factors(3000, (3, 7, 12), seed=1)
    # Codes that depend on the factors in different degrees, plus noise.
    codes = torch.stack(
        [
            factors[:, 0] + 0.3 * torch.randn(3000, generator=g),
            factors[:, 1] * factors[:, 2] + torch.randn(3000, generator=g),
            torch.randn(3000, generator=g).exp(),
            torch.sin(factors[:, 2].double()) + 0.1 * torch.randn(3000, generator=g),
        ],
        1,
    ).double()
    bins = 15
    got = mutual_info_matrix(codes, factors, bins=bins)
    want = np.zeros((4, 3))
    for j, code in enumerate(codes.numpy().T):
        # numpy's bins: the last edge is left out so that the maximum lands in the last bin.
        labels = np.digitize(code, np.histogram_bin_edges(code, bins)[:-1])
        for k, factor in enumerate(factors.numpy().T):
            want[j, k] = mutual_info_score(factor, labels)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-12)
    assert want[0, 0] > 0.5 and want[2].max() < 0.02  # the test is not vacuous


def test_factor_entropies_match_scipy():
    factors = torch.tensor([[0, 5, 2], [0, 7, 2], [1, 5, 2], [2, 9, 2], [2, 5, 2]])
    want = [entropy(np.bincount(col)) for col in factors.numpy().T]
    np.testing.assert_allclose(factor_entropies(factors).numpy(), want, atol=1e-12)
    assert factor_entropies(factors)[2] == 0


def test_discretize_puts_the_maximum_in_the_last_bin():
    codes = torch.tensor([[0.0, 3.0], [0.5, 3.0], [0.999, 3.0], [1.0, 3.0], [0.25, 3.0]])
    got = discretize(codes, bins=4)
    assert got[:, 0].tolist() == [0, 2, 3, 3, 1]
    assert got[:, 1].tolist() == [0] * 5  # a constant code


# --- MIG --------------------------------------------------------------------------------------


def test_mig_of_a_copy_of_the_factors_is_one():
    """z_k = v_k + small noise: each code is its own factor's histogram, so I(z_k; v_k) =
    H(v_k) and the other codes carry only the plug-in bias, about (bins-1)(n-1)/(2N)."""
    factors = uniform_factors(20_000, (3, 6, 10), seed=2)
    codes = factors + 0.01 * torch.randn(factors.shape, generator=torch.Generator().manual_seed(3))
    info = mutual_info_matrix(codes, factors)
    torch.testing.assert_close(info.diagonal(), factor_entropies(factors))
    assert mig(codes, factors) > 0.99


def test_mig_of_independent_noise_is_zero():
    factors = uniform_factors(20_000, (3, 6, 10), seed=4)
    codes = torch.randn(20_000, 4, generator=torch.Generator().manual_seed(5))
    assert mig(codes, factors) < 0.01


def test_mig_of_a_mixed_code_matches_the_hand_computation():
    """Factors v_0, v_1 uniform on {0..n-1}, all n^2 pairs once; codes z_0 = v_0 + v_1 and
    z_1 = v_1. With 2n - 1 bins each integer value of a code has its own bin, so the
    estimator sees the exact discrete distributions.

    z_0 = s has c_s = n - |s - (n - 1)| pairs, so H(z_0) = 2 log n - sum_s c_s log c_s / n^2,
    and H(z_0 | v_0) = H(v_1) = log n, hence

        a := I(z_0; v_0) = I(z_0; v_1) = log n - sum_s c_s log c_s / n^2,
        I(z_1; v_1) = log n,   I(z_1; v_0) = 0.

    Gaps: for v_0 the best code is z_0 and the next z_1, gap a / log n; for v_1 the best is
    z_1 and the next z_0, gap 1 - a / log n. MIG = 1/2 for every n. For n = 4:
    a = (5/4) log 2 - (3/8) log 3 = 0.45444 nats, a / log 4 = 0.32781.
    """
    n = 4
    factors = torch.cartesian_prod(torch.arange(n), torch.arange(n))
    codes = torch.stack([factors[:, 0] + factors[:, 1], factors[:, 1]], 1).double()
    a = 1.25 * math.log(2) - 0.375 * math.log(3)
    counts = [n - abs(s - (n - 1)) for s in range(2 * n - 1)]
    assert a == pytest.approx(math.log(n) - sum(c * math.log(c) for c in counts) / n**2)
    info = mutual_info_matrix(codes, factors, bins=2 * n - 1)
    want = torch.tensor([[a, a], [0.0, math.log(n)]], dtype=torch.float64)
    torch.testing.assert_close(info, want, atol=1e-12, rtol=0)
    gaps = mig_gaps(codes, factors, bins=2 * n - 1)
    ratio = a / math.log(n)
    torch.testing.assert_close(gaps, torch.tensor([ratio, 1 - ratio], dtype=torch.float64))
    assert ratio == pytest.approx(0.32781, abs=1e-5)
    assert mig(codes, factors, bins=2 * n - 1) == pytest.approx(0.5, abs=1e-12)


def test_mig_leaves_out_constant_factors():
    factors = uniform_factors(5000, (4, 5), seed=6)
    codes = factors + 0.01 * torch.randn(factors.shape, generator=torch.Generator().manual_seed(7))
    with_constant = torch.cat([factors, torch.zeros(5000, 1, dtype=torch.long)], 1)
    assert torch.isnan(mig_gaps(codes, with_constant)[2])
    assert mig(codes, with_constant) == mig(codes, factors)
    with pytest.raises(ValueError, match="every factor is constant"):
        mig(codes, torch.zeros(5000, 2, dtype=torch.long))


def test_mig_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="codes hold 3 examples but factors 4"):
        mig(torch.zeros(3, 2), torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="factors must be integers"):
        mig(torch.zeros(3, 2), torch.zeros(3, 2))


# --- FactorVAE score --------------------------------------------------------------------------

K = len(shapes.FACTORS)


def factors_as_floats(factors):
    return factors.double()


def noisy(std, seed):
    g = torch.Generator().manual_seed(seed)
    return lambda shape: std * torch.randn(shape, generator=g, dtype=torch.float64)


def score(encode, **kwargs):
    options = {"num_train": 300, "num_eval": 2000, "num_variance_estimate": 2000}
    return factor_vae_score(
        encode,
        shapes.sample_factors,
        factors_as_floats,
        generator=torch.Generator().manual_seed(8),
        **(options | kwargs),
    )


def test_factor_vae_score_of_an_axis_aligned_code_is_one():
    """Code j = factor j + noise: fixing factor k leaves only noise in code k, so k has
    the least normalised variance in every batch. A constant code and one of std 0.01
    (below 0.05) are pruned; unpruned, the constant one would divide by zero."""
    noise = noisy(0.05, seed=9)

    def encode(x):
        n = len(x)
        return torch.cat([x + noise((n, K)), torch.zeros(n, 1), noise((n, 1)) / 5], 1)

    result = score(encode)
    assert result.score == 1.0 and result.train_accuracy == 1.0
    assert result.active.tolist() == [True] * K + [False, False]
    assert (result.votes[:K].diagonal() > 0).all()
    assert result.votes.sum() == result.votes[:K].diagonal().sum() == 300


def test_factor_vae_score_of_noise_is_chance():
    """Codes independent of the factors: whatever the classifier, a held-out vote's factor
    is uniform and independent of its code, so accuracy ~ Binomial(2000, 1/5) / 2000,
    standard deviation 0.009; the tolerance is 4.5 of them."""
    noise = noisy(1.0, seed=10)
    result = score(lambda x: noise((len(x), 6)))
    assert result.score == pytest.approx(1 / K, abs=0.04)
    assert result.active.all()


def test_factor_vae_score_with_one_factor_unrepresented():
    """Codes copy factors 0..3 and ignore pos_y. Votes that fix pos_y land on a random code
    (a quarter of a fifth of the votes each), fewer than the fifth it gets from its own
    factor, so each code j predicts factor j: every vote is right except those that fix
    pos_y, and the expected accuracy is 4/5 (standard deviation 0.009)."""
    noise = noisy(0.05, seed=11)
    result = score(lambda x: x[:, :4] + noise((len(x), 4)))
    assert result.score == pytest.approx(0.8, abs=0.04)
    assert result.votes[:, :4].diagonal().sum() + result.votes[:, 4].sum() == 300


def test_factor_vae_score_of_collapsed_codes_is_zero():
    # Factor values span at most 0..39, so 0.001 x has standard deviation below 0.012.
    result = score(lambda x: 0.001 * x[:, :3])
    assert result.score == 0.0 and not result.active.any()


def test_factor_vae_score_on_rendered_shapes_with_a_hand_made_encoder():
    """An 'encoder' that reads the centre of mass off rendered 32x32 images. Fixing pos_x
    leaves code 0 nearly still (a heart's centre of mass moves a little with rotation),
    while code 1 still follows pos_y, so every such vote goes to code 0; likewise pos_y
    to code 1. Votes that fix another factor fall on either code at random, and they are
    fewer per code than its position factor's, so the classifier maps the codes to pos_x
    and pos_y and gets exactly the position votes right: accuracy about 2/5 (standard
    deviation 0.024 over 400 votes)."""
    grid = torch.arange(32, dtype=torch.float64)

    def centre_of_mass(x):
        images = x.view(-1, 32, 32).double()
        mass = images.sum((1, 2))
        return torch.stack(
            [(images.sum(1) * grid).sum(1) / mass, (images.sum(2) * grid).sum(1) / mass], 1
        )

    result = factor_vae_score(
        centre_of_mass,
        shapes.sample_factors,
        lambda f: shapes.render(f, 32),
        num_train=100,
        num_eval=400,
        batch_size=32,
        num_variance_estimate=1000,
        generator=torch.Generator().manual_seed(12),
    )
    assert result.votes[1, 3] == 0 and result.votes[0, 4] == 0  # pos votes never cross
    assert result.votes[0, 3] > 0 and result.votes[1, 4] > 0
    assert result.votes.argmax(1).tolist() == [3, 4]
    assert result.score == pytest.approx(0.4, abs=0.1)


# --- traversals -------------------------------------------------------------------------------


def test_latent_traversals_lays_out_one_row_per_code():
    """decode(z) is the 1x2 image ((z_0 + 3)/6, (z_1 + 3)/6): row j of the grid sweeps
    pixel j over (values + 3)/6 and holds the other at (z0 + 3)/6."""
    z0 = torch.tensor([0.0, 1.5])
    values = torch.tensor([-3.0, 0.0, 3.0])
    fig = latent_traversals(lambda z: (z + 3) / 6, z0, (1, 2), values=values)
    canvas = np.asarray(fig.axes[0].images[0].get_array())
    # Two rows of 1-pixel-high images with a 1-pixel gap, three 2-pixel images per row.
    assert canvas.shape == (3, 8)
    row0 = [0.0, 0.75, 0.2, 0.5, 0.75, 0.2, 1.0, 0.75]
    row1 = [0.5, 0.0, 0.2, 0.5, 0.5, 0.2, 0.5, 1.0]
    np.testing.assert_allclose(canvas[0], row0)
    np.testing.assert_allclose(canvas[2], row1)
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert labels == ["z[0]", "z[1]", "-3", "0", "3"]
    plt.close(fig)
