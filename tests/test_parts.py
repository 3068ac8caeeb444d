"""Every registered part, in every combination, through the same checks (STYLE.md habit 4).

Adding a part to ppl_vae.registry adds it here with no test edits.
"""

import itertools
import math

import pyro
import pytest
import torch
from pyro import poutine
from torch.distributions import kl_divergence
from torch.nn.functional import binary_cross_entropy_with_logits

from ppl_vae import registry, testing
from ppl_vae.build import make_objective
from ppl_vae.errors import ConfigError
from ppl_vae.evaluation.likelihood import elbo_terms
from ppl_vae.vae import Dims, build_vae

DIMS = Dims(data_dim=64, latent_dim=3, num_data=40, image_shape=(8, 8))
# The likelihood enters only through p(x | z), independently of the prior and the guide:
# every compatible prior x guide pair is checked with the first likelihood, and every
# likelihood with the first pair. (tests/test_priors_guides.py trains the full product.)
FIRST_LIKELIHOOD = next(iter(registry.LIKELIHOODS))
COMBINATIONS = [
    *[(prior, guide, FIRST_LIKELIHOOD)
      for prior, guide in itertools.product(registry.PRIORS, registry.GUIDES)
      if registry.compatible(prior, guide, FIRST_LIKELIHOOD)],
    *[(next(iter(registry.PRIORS)), next(iter(registry.GUIDES)), likelihood)
      for likelihood in list(registry.LIKELIHOODS)[1:]],
]


def data_for(likelihood, n=DIMS.num_data):
    gen = torch.Generator().manual_seed(1)
    if registry.LIKELIHOODS[likelihood].support == "unit":
        return torch.bernoulli(torch.full((n, DIMS.data_dim), 0.3), generator=gen)
    return torch.randn(n, DIMS.data_dim, generator=gen)


def small_vae(prior, guide, likelihood, **kw):
    return build_vae(DIMS, prior=prior, guide=guide, likelihood=likelihood, hidden=(16,), **kw)


# Every registered part, of every kind, passes the check kit that users run on theirs.
PARTS = [(kind, name) for kind in ("prior", "guide", "likelihood", "encoder", "decoder",
                                   "objective", "corruption")
         for name in registry.TABLES[kind]]


@pytest.mark.parametrize("kind,name", PARTS)
def test_every_registered_part_passes_the_check_kit(kind, name):
    passed = testing.check_part(kind, name)
    assert passed == [check for check, _ in testing.CHECKS[kind]]


@pytest.mark.parametrize("prior,guide,likelihood", COMBINATIONS)
def test_model_and_guide_agree(prior, guide, likelihood):
    """The kit's site and gradient checks on every combination of parts."""
    vae = small_vae(prior, guide, likelihood)
    x = data_for(likelihood)
    testing.check_sites(vae, x, num_data=DIMS.num_data)
    testing.check_gradients(vae, x)
    idx = torch.arange(10, 20)
    z = poutine.trace(vae.guide).get_trace(x[idx], idx=idx).nodes["z"]["value"]
    assert z.shape == (10, DIMS.latent_dim)


@pytest.mark.parametrize("prior,guide,likelihood", COMBINATIONS)
def test_elbo_terms_match_pyro_elbo(prior, guide, likelihood):
    """The ELBO read off traces (evaluate.py) is the quantity Pyro's Trace_ELBO optimises."""
    vae = small_vae(prior, guide, likelihood)
    x = data_for(likelihood, n=8)
    # Both sides run the guide once on `repeats` copies of x, so that guides whose q is
    # itself random (a refined or fitted q) are averaged the same way on both sides.
    # The rows' training-set indices go along, so per-datapoint guides read their table.
    repeats, particles = 100, 5
    copies, idx = x.repeat(repeats, 1), torch.arange(len(x)).repeat(repeats)
    with torch.no_grad():
        # The data plate scales by N / len(idx); undo it to get the sum over the copies.
        loss = make_objective("elbo", num_particles=particles).differentiable_loss(
            vae.model, vae.guide, copies, idx=idx) * len(idx) / DIMS.num_data / repeats
        terms = elbo_terms(vae, copies, idx=idx)["elbo"]
    ours = terms.reshape(repeats, len(x)).sum(1)
    # Pyro's estimate averages `particles` times as many draws as ours.
    stderr = ours.std() / math.sqrt(len(ours)) * math.sqrt(1 + 1 / particles)
    assert abs(ours.mean() + loss) < 4 * stderr + 0.05


def test_analytic_kl_equals_closed_form_and_monte_carlo():
    vae = small_vae("normal", "diagonal", "bernoulli")
    x = data_for("bernoulli", n=5)
    with torch.no_grad():
        q = vae.encode(x)
        p = vae.prior().expand([5])
        analytic = kl_divergence(q, p)
        mu, sigma = q.base_dist.loc, q.base_dist.scale
        by_hand = 0.5 * (sigma**2 + mu**2 - 1 - torch.log(sigma**2)).sum(-1)
        z = q.sample((20000,))
        samples = q.log_prob(z) - p.log_prob(z)
    torch.testing.assert_close(analytic, by_hand, rtol=1e-5, atol=1e-6)
    stderr = samples.std(0) / math.sqrt(len(samples))
    assert ((samples.mean(0) - analytic).abs() < 4 * stderr).all()


def test_meanfield_and_trace_elbo_agree_in_expectation():
    vae = small_vae("normal", "diagonal", "bernoulli")
    x = data_for("bernoulli", n=16)
    with torch.no_grad():
        losses = {name: make_objective(name, num_particles=20000).differentiable_loss(
            vae.model, vae.guide, x) for name in ("elbo", "meanfield")}
    assert losses["elbo"] == pytest.approx(float(losses["meanfield"]), rel=2e-3)


def test_minibatch_objective_is_scaled_to_the_full_data():
    vae = small_vae("normal", "diagonal", "bernoulli")
    x = data_for("bernoulli")
    idx = torch.arange(8)
    elbo = make_objective("meanfield")
    pyro.set_rng_seed(3)
    scaled = elbo.differentiable_loss(vae.model, vae.guide, x[idx], idx=idx)
    pyro.set_rng_seed(3)
    plain = elbo.differentiable_loss(vae.model, vae.guide, x[idx])
    assert scaled.item() == pytest.approx(plain.item() * DIMS.num_data / 8, rel=1e-5)


def test_likelihoods_against_closed_forms():
    dims = Dims(data_dim=5, latent_dim=2)
    gen = torch.Generator().manual_seed(0)
    out = torch.randn(4, 5, generator=gen)
    x01 = torch.bernoulli(torch.full((4, 5), 0.5), generator=gen)
    bern = registry.LIKELIHOODS["bernoulli"](dims)(out).log_prob(x01)
    bce = binary_cross_entropy_with_logits(out, x01, reduction="none").sum(-1)
    torch.testing.assert_close(bern, -bce)

    x = torch.randn(4, 5, generator=gen)
    unit = registry.LIKELIHOODS["gaussian"](dims)(out).log_prob(x)
    by_hand = -0.5 * ((x - out) ** 2).sum(-1) - 2.5 * math.log(2 * math.pi)
    torch.testing.assert_close(unit, by_hand)

    iso = registry.LIKELIHOODS["gaussian-isotropic"](dims, init_scale=0.7)
    assert iso.scale.item() == pytest.approx(0.7, rel=1e-6)
    sigma = 0.7
    by_hand = (-0.5 * ((x - out) ** 2).sum(-1) / sigma**2
               - 5 * math.log(sigma) - 2.5 * math.log(2 * math.pi))
    torch.testing.assert_close(iso(out).log_prob(x), by_hand, rtol=1e-5, atol=1e-5)

    diag = registry.LIKELIHOODS["gaussian-diagonal"](dims, min_scale=0.05)
    with torch.no_grad():
        diag.raw_scale.fill_(-100.0)
    torch.testing.assert_close(diag.scale, torch.full((5,), 0.05))


def test_unknown_part_names_list_the_known_ones():
    with pytest.raises(ConfigError, match="unknown prior 'vampire'; known priors: .*normal"):
        build_vae(DIMS, prior="vampire")
    with pytest.raises(ConfigError, match="bad options for likelihood 'bernoulli'"):
        build_vae(DIMS, likelihood_options={"scale": 2.0})


def test_conditional_vae_uses_the_label():
    dims = Dims(data_dim=64, latent_dim=2, num_data=10, num_classes=10, image_shape=(8, 8))
    vae = build_vae(dims, hidden=(16,))
    x = data_for("bernoulli", n=10)
    z = torch.zeros(10, 2)
    means = [vae.decode(z, torch.full((10,), c)).mean for c in (0, 1)]
    assert not torch.allclose(means[0], means[1])
    with pytest.raises(ValueError, match="needs the labels"):
        vae.model(x)
    plain = small_vae("normal", "diagonal", "bernoulli")
    with pytest.raises(ValueError, match="not conditional"):
        plain.guide(x, torch.zeros(10, dtype=torch.long))


@pytest.mark.parametrize("net", ["mlp", "conv"])
def test_nets_reconstruct_the_data_shape(net):
    """Conv and MLP nets both give one output per pixel for any batch shape, and the
    conv encoder takes the condition alongside the image."""
    dims = Dims(data_dim=64, latent_dim=2, num_data=10, num_classes=3, image_shape=(8, 8))
    vae = build_vae(dims, encoder=net, decoder=net, hidden=(16,))
    x = data_for("bernoulli", n=6)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    q = vae.encode(x, y)
    assert q.batch_shape == (6,) and q.event_shape == (2,)
    z = q.rsample((4,))
    p = vae.decode(z, y)
    assert p.batch_shape == (4, 6) and p.event_shape == (64,)
    assert torch.isfinite(p.log_prob(x)).all()
