"""Tests written to kill surviving mutants of ``ppl_vae.parts.priors`` (``scripts/mutation.sh``):
each pins a line that the rest of the suite let change without a failure, against an
independent answer (scipy densities, numpy by hand, whole error messages)."""

import math
import re

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from scipy import stats
from scipy.special import gammaln, logsumexp

from ppl_vae.errors import ConfigError
from ppl_vae.parts.priors import (
    DiagonalNormalMixture,
    JointLatent,
    MixtureOfGaussians,
    VampPrior,
    check_joint_sizes,
    diagonal_mixture,
    relaxed_one_hot_log_prob,
)
from ppl_vae.vae import Dims, build_vae

DIMS = Dims(data_dim=12, latent_dim=3, num_data=30)


def logit_by_hand(x):
    """logit(clip(x, 1e-3, 1 - 1e-3)) in float64 numpy."""
    p = np.clip(np.asarray(x, dtype=np.float64), 1e-3, 1 - 1e-3)
    return np.log(p / (1 - p))


def concrete_log_density(x, logits, tau):
    """log of the Concrete density (Maddison et al. 2017, eq. 8) at x on the simplex:
    (K-1)! tau^(K-1) prod_k pi_k x_k^(-tau-1) / (sum_k pi_k x_k^(-tau))^K."""
    x, log_pi = np.asarray(x, np.float64), np.asarray(logits, np.float64)
    log_pi = log_pi - logsumexp(log_pi)
    k = x.shape[-1]
    return (gammaln(k) + (k - 1) * math.log(tau) + (log_pi - (tau + 1) * np.log(x)).sum(-1)
            - k * logsumexp(log_pi - tau * np.log(x), axis=-1))


# ---------------------------------------------------------------- diagonal_mixture


def test_diagonal_normal_components_get_the_fast_mixture_and_others_the_generic_one():
    loc, scale = torch.randn(4, 3), torch.rand(4, 3) + 0.5
    fast = diagonal_mixture(torch.zeros(4), dist.Normal(loc, scale).to_event(1))
    assert type(fast) is DiagonalNormalMixture
    laplace = diagonal_mixture(torch.zeros(4), dist.Laplace(loc, scale).to_event(1))
    assert type(laplace) is dist.MixtureSameFamily


def test_mixture_of_matrix_valued_normals_scores_by_hand():
    """Components with event shape (2, 3) (to_event(2)) are not the diagonal (K, L) case."""
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(4, generator=gen)
    loc = torch.randn(4, 2, 3, generator=gen)
    scale = torch.rand(4, 2, 3, generator=gen) + 0.5
    mixture = diagonal_mixture(logits, dist.Normal(loc, scale).to_event(2))
    assert type(mixture) is dist.MixtureSameFamily
    z = torch.randn(5, 2, 3, generator=gen)
    per_component = stats.norm.logpdf(z.numpy()[:, None], loc.numpy(), scale.numpy())
    log_w = logits.numpy() - logsumexp(logits.numpy())
    expected = logsumexp(log_w + per_component.sum((-2, -1)), axis=-1)
    np.testing.assert_allclose(mixture.log_prob(z).numpy(), expected, rtol=1e-5)


# ---------------------------------------------------------------- MixtureOfGaussians


def test_mixture_of_gaussians_defaults_to_ten_components():
    assert build_vae(DIMS, prior="mog", hidden=(4,)).prior.logits.shape == (10,)


def test_one_component_mixture_starts_as_a_unit_normal_around_its_mean():
    """K = 1 is allowed, and the scales start at exactly 1 whatever min_scale is."""
    prior = MixtureOfGaussians(DIMS, num_components=1, min_scale=0.25)
    z = torch.randn(6, DIMS.latent_dim)
    mean = prior.locs.detach()[0].numpy()
    expected = stats.multivariate_normal(mean, np.eye(DIMS.latent_dim)).logpdf(z.numpy())
    np.testing.assert_allclose(prior().log_prob(z).detach().numpy(), expected, rtol=1e-5)


# ---------------------------------------------------------------- VampPrior construction


@pytest.mark.parametrize("make,message", [
    (lambda: MixtureOfGaussians(DIMS, num_components=0),
     "num_components must be >= 1; got 0"),
    (lambda: VampPrior(DIMS, num_pseudo_inputs=0), "num_pseudo_inputs must be >= 1; got 0"),
    (lambda: VampPrior(DIMS, init="bogus"),
     "the VampPrior's init is 'noise' or 'data'; got 'bogus'"),
    (lambda: VampPrior(Dims(data_dim=12, latent_dim=3, num_classes=2)),
     "the VampPrior is a mixture of q(z | u) over unlabelled pseudo-inputs; it is not "
     "defined for a conditional VAE"),
    (lambda: VampPrior(DIMS).forward(),
     "the VampPrior is not connected to a guide; build it with build_vae, which calls "
     "bind(vae)"),
    (lambda: VampPrior(DIMS, num_pseudo_inputs=5).init_from_data(torch.rand(3, 12)),
     "need at least 5 data points to initialise the pseudo-inputs; got 3"),
    (lambda: check_joint_sizes(DIMS, 3, 0.67),
     "num_categories must be at least 2 and less than latent_dim (3), which counts both "
     "parts; got 3"),
    (lambda: check_joint_sizes(DIMS, 2, 0), "temperature must be > 0; got 0"),
])
def test_bad_prior_settings_raise_whole_messages(make, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        make()


def test_vamp_prior_starts_from_fifty_noise_pseudo_inputs_of_std_point_one():
    """The default raw pseudo-inputs are 0.1 x standard normal draws, (50, D); unbound,
    the prior assumes [0, 1] data, so the pseudo-inputs are their sigmoids."""
    torch.manual_seed(3)
    expected = 0.1 * torch.randn(50, DIMS.data_dim)
    torch.manual_seed(3)
    prior = VampPrior(DIMS)
    assert torch.equal(prior.raw_pseudo_inputs.detach(), expected)
    assert torch.equal(prior.pseudo_inputs.detach(), torch.sigmoid(expected))
    assert VampPrior(DIMS, num_pseudo_inputs=1).raw_pseudo_inputs.shape == (1, DIMS.data_dim)


# ---------------------------------------------------------------- VampPrior from data


def unit_rows(n, d, seed=0):
    """n distinct rows of [0, 1] data with exact zeros and ones."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=gen)
    x[:, 0], x[:, 1] = 0.0, 1.0
    return x


def assert_rows_are_a_permutation(raw, expected):
    """Every row of ``raw`` is one row of ``expected``, each used once."""
    raw = raw.detach().double().numpy()
    distance = np.abs(raw[:, None] - expected[None]).max(-1)
    assert np.all(np.isfinite(raw))
    np.testing.assert_allclose(distance.min(1), 0, atol=1e-4)  # float32 logits
    assert sorted(distance.argmin(1)) == list(range(len(expected)))


def test_init_from_data_uses_every_row_when_there_are_exactly_k_of_them():
    """N == K rows, fewer features than rows: the pseudo-inputs are the logits of all the
    rows, in some order, with 0 and 1 moved inside by 1e-3."""
    x = unit_rows(6, 4)
    prior = VampPrior(Dims(data_dim=4, latent_dim=2), num_pseudo_inputs=6)
    prior.init_from_data(x)
    assert_rows_are_a_permutation(prior.raw_pseudo_inputs, logit_by_hand(x.numpy()))
    raw = prior.raw_pseudo_inputs.detach()
    assert raw.min().item() == pytest.approx(math.log(1e-3 / 0.999), abs=1e-4)
    assert raw.max().item() == pytest.approx(math.log(0.999 / 1e-3), abs=1e-4)


def test_init_from_data_works_in_the_priors_precision_whatever_the_datas():
    """bfloat16 data: 1 - 1e-3 does not exist in bfloat16 (it rounds to 1, whose logit is
    infinite), so the rows are converted to the prior's float32 before the clamp."""
    x = unit_rows(4, DIMS.data_dim)
    prior = VampPrior(DIMS, num_pseudo_inputs=4)
    prior.init_from_data(x.to(torch.bfloat16))
    expected = logit_by_hand(x.to(torch.bfloat16).float().numpy())
    assert_rows_are_a_permutation(prior.raw_pseudo_inputs, expected)


@pytest.mark.parametrize("init", ["noise", "data"])
def test_setup_from_data_initialises_from_data_only_when_asked(init):
    x = unit_rows(5, DIMS.data_dim)
    prior = VampPrior(DIMS, num_pseudo_inputs=5, init=init)
    before = prior.raw_pseudo_inputs.detach().clone()
    prior.setup_from_data(x)
    if init == "noise":
        assert torch.equal(prior.raw_pseudo_inputs.detach(), before)
    else:
        assert_rows_are_a_permutation(prior.raw_pseudo_inputs, logit_by_hand(x.numpy()))


# ---------------------------------------------------------------- relaxed one-hot, JointLatent


def test_relaxed_one_hot_log_prob_is_the_concrete_density_per_point():
    logits, tau = torch.tensor([0.3, -1.0, 0.5]), 0.67
    x = torch.tensor([[0.2, 0.3, 0.5], [0.7, 0.1, 0.2]])
    relaxed = dist.RelaxedOneHotCategorical(torch.tensor(tau), logits=logits)
    np.testing.assert_allclose(relaxed_one_hot_log_prob(relaxed, x).numpy(),
                               concrete_log_density(x.numpy(), logits.numpy(), tau), rtol=1e-5)


@pytest.mark.parametrize("batched", ["continuous", "discrete"])
def test_joint_latent_broadcasts_the_batch_shapes_of_its_parts(batched):
    """One part with batch shape (3,), the other unbatched: the joint has batch shape (3,)
    and scores each row as a normal density plus a Concrete density."""
    loc = torch.tensor([[0.0, 1.0], [0.5, -0.5], [2.0, 0.0]])
    logits = torch.tensor([[0.0, 1.0, -1.0], [0.2, 0.2, 0.0], [1.5, 0.0, 0.0]])
    if batched == "continuous":
        logits = logits[0]
    else:
        loc = loc[0]
    tau = 0.5
    joint = JointLatent(dist.Normal(loc, 0.8).to_event(1),
                        dist.RelaxedOneHotCategorical(torch.tensor(tau), logits=logits))
    assert joint.batch_shape == (3,)
    value = torch.tensor([[0.1, 0.2, 0.2, 0.3, 0.5],
                          [1.0, -1.0, 0.6, 0.3, 0.1],
                          [0.0, 0.5, 0.1, 0.1, 0.8]])
    normal = stats.norm.logpdf(value[:, :2].numpy(), loc.numpy(), 0.8).sum(-1)
    concrete = concrete_log_density(value[:, 2:].numpy(), logits.numpy(), tau)
    np.testing.assert_allclose(joint.log_prob(value).numpy(), normal + concrete, rtol=1e-5)


@pytest.mark.cuda
def test_vamp_prior_on_cuda_draws_and_scores_on_the_device():
    """On a GPU the mixture weights are created on the pseudo-inputs' device (else scoring
    mixes devices), and the pseudo-inputs are drawn with the device's generator, leaving
    the CPU's random stream untouched."""
    vae = build_vae(DIMS, prior="vamp", hidden=(4,), prior_options={"num_pseudo_inputs": 5})
    vae = vae.to("cuda")
    cpu_state = torch.get_rng_state()
    vae.prior.init_from_data(unit_rows(8, DIMS.data_dim).to("cuda"))
    assert torch.equal(torch.get_rng_state(), cpu_state)
    z = torch.randn(4, DIMS.latent_dim, device="cuda")
    components = vae.posterior.encode(vae.prior.pseudo_inputs)
    by_hand = components.log_prob(z[:, None]).logsumexp(-1) - math.log(5)
    torch.testing.assert_close(vae.prior().log_prob(z), by_hand, rtol=1e-5, atol=1e-5)
