"""The swappable priors, guides, likelihood and objective of issue 4, each against an
independent answer: a mixture written out over its components, closed-form densities,
Pyro's own RenyiELBO, finite differences through the semi-amortized refinement.

The registry drives the training test: every combination that ``registry.compatible``
admits trains for a few steps.
"""

import itertools
import math

import pyro
import pytest
import torch
from pyro.infer import RenyiELBO, Trace_ELBO

from ppl_vae import registry, testing
from ppl_vae.build import make_objective
from ppl_vae.errors import ConfigError
from ppl_vae.evaluation.likelihood import elbo_terms
from ppl_vae.vae import Dims, build_vae

DIMS = Dims(data_dim=12, latent_dim=3, num_data=30)
COMBINATIONS = [parts for parts in itertools.product(registry.PRIORS, registry.GUIDES,
                                                    registry.LIKELIHOODS)
                if registry.compatible(*parts)]


def data_for(likelihood, n=DIMS.num_data, dims=DIMS):
    gen = torch.Generator().manual_seed(2)
    if registry.LIKELIHOODS[likelihood].support == "unit":
        return torch.rand(n, dims.data_dim, generator=gen).round()
    return torch.randn(n, dims.data_dim, generator=gen)


def small_vae(prior="normal", guide="diagonal", likelihood="bernoulli", dims=DIMS, **kw):
    return build_vae(dims, prior=prior, guide=guide, likelihood=likelihood, hidden=(16,), **kw)


def sharpen(vae, factor=4.0):
    """Make the decoder depend strongly on z, so that the posterior is far from the prior
    and from an untrained encoder's guess."""
    with torch.no_grad():
        vae.decoder[0].weight.mul_(factor)
    return vae


def train(vae, x, objective="meanfield", *, steps=3, batch_size=10, lr=1e-2, num_particles=1):
    """A few steps of the check kit's loop (Pyro's differentiable loss, torch Adam,
    minibatches identified by their training-set indices). Returns the losses."""
    return testing.svi_losses(vae, x, objective=objective, steps=steps, batch_size=batch_size,
                              lr=lr, num_particles=num_particles)


# ---------------------------------------------------------------- every part trains


@pytest.mark.parametrize("prior,guide,likelihood", COMBINATIONS)
def test_every_combination_trains_a_few_steps(prior, guide, likelihood):
    vae = small_vae(prior, guide, likelihood)
    before = {name: p.detach().clone() for name, p in vae.named_parameters()}
    losses = train(vae, data_for(likelihood))
    assert all(math.isfinite(loss) for loss in losses)
    changed = [name for name, p in vae.named_parameters() if not torch.equal(p, before[name])]
    assert changed, "no parameter moved"


@pytest.mark.parametrize("objective", ["elbo", "meanfield", "iwae"])
@pytest.mark.parametrize("guide", registry.GUIDES)
def test_every_bound_trains_every_guide(objective, guide):
    """The three bounds (Monte Carlo ELBO, analytic-KL ELBO, IWAE) with every guide.
    Penalized objectives, which some guides cannot serve, are tested with their code."""
    prior = next(p for p in registry.PRIORS if registry.compatible(p, guide, "bernoulli"))
    vae = small_vae(prior, guide)
    losses = train(vae, data_for("bernoulli"), objective, num_particles=3)
    assert all(math.isfinite(loss) for loss in losses)


def test_incompatible_parts_are_refused_with_the_reason():
    assert not registry.compatible("vamp", "per-datapoint", "bernoulli")
    assert not registry.compatible("vamp", "delta", "gaussian")
    assert registry.compatible("vamp", "iaf", "continuous-bernoulli")
    with pytest.raises(ConfigError, match="'vamp' prior is a mixture of the guide's encoder"):
        small_vae("vamp", "per-datapoint")


# ---------------------------------------------------------------- priors


def test_vamp_prior_is_the_mixture_of_encoder_posteriors_at_the_pseudo_inputs():
    vae = small_vae("vamp", "diagonal", prior_options={"num_pseudo_inputs": 7})
    z = torch.randn(5, 4, DIMS.latent_dim)
    with torch.no_grad():
        u = vae.prior.pseudo_inputs
        per_component = torch.stack([vae.posterior.encode(u[k]).log_prob(z) for k in range(7)])
        by_hand = per_component.logsumexp(0) - math.log(7)
        torch.testing.assert_close(vae.prior().log_prob(z), by_hand, rtol=1e-5, atol=1e-5)
        # Expanded over a data plate, as VAE.model uses it.
        torch.testing.assert_close(vae.prior().expand([4]).log_prob(z), by_hand,
                                   rtol=1e-5, atol=1e-5)


def test_vamp_prior_with_a_flow_guide_scores_arbitrary_points():
    vae = small_vae("vamp", "iaf", prior_options={"num_pseudo_inputs": 3})
    z = torch.randn(6, DIMS.latent_dim)
    with torch.no_grad():
        u = vae.prior.pseudo_inputs
        per_component = torch.stack([vae.posterior.encode(u[k]).log_prob(z) for k in range(3)])
        torch.testing.assert_close(vae.prior().log_prob(z),
                                   per_component.logsumexp(0) - math.log(3), rtol=1e-4,
                                   atol=1e-4)


def test_vamp_prior_shares_the_guide_without_registering_it_twice():
    vae = small_vae("vamp", "diagonal")
    plain = small_vae("normal", "diagonal")
    assert [name for name, _ in vae.prior.named_parameters()] == ["raw_pseudo_inputs"]
    keys = set(vae.state_dict())
    assert not any(key.startswith("prior.") and "encoder" in key for key in keys)
    extra = sum(p.numel() for p in vae.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == vae.prior.raw_pseudo_inputs.numel()
    # The prior depends on the encoder: its density moves when the encoder does.
    z = torch.randn(3, DIMS.latent_dim)
    before = vae.prior().log_prob(z).detach()
    with torch.no_grad():
        next(vae.posterior.encoder.parameters()).add_(0.5)
    assert not torch.allclose(vae.prior().log_prob(z), before)


def test_vamp_pseudo_inputs_stay_in_the_data_range():
    unit = small_vae("vamp", "diagonal", "continuous-bernoulli",
                     prior_options={"num_pseudo_inputs": 10})
    with torch.no_grad():
        unit.prior.raw_pseudo_inputs.mul_(100)
    assert ((unit.prior.pseudo_inputs >= 0) & (unit.prior.pseudo_inputs <= 1)).all()
    real = small_vae("vamp", "diagonal", "gaussian")
    torch.testing.assert_close(real.prior.pseudo_inputs, real.prior.raw_pseudo_inputs)
    x = data_for("bernoulli") * 0.8 + 0.1
    unit.prior.init_from_data(x)
    rows = unit.prior.pseudo_inputs
    matches = (rows[:, None, :] - x[None]).abs().amax(-1).amin(-1)
    assert (matches < 1e-5).all(), "every pseudo-input is one of the data points"


def test_mixture_of_gaussians_prior_density_by_hand():
    vae = small_vae("mog", "diagonal", prior_options={"num_components": 4})
    prior = vae.prior
    z = torch.randn(7, DIMS.latent_dim)
    with torch.no_grad():
        weights = prior.logits.softmax(0)
        scales = torch.nn.functional.softplus(prior.raw_scales) + prior.min_scale
        density = sum(weights[k] * torch.exp(
            -0.5 * (((z - prior.locs[k]) / scales[k]) ** 2).sum(-1)
            - scales[k].log().sum() - 0.5 * DIMS.latent_dim * math.log(2 * math.pi))
            for k in range(4))
        torch.testing.assert_close(prior().log_prob(z), density.log(), rtol=1e-5, atol=1e-5)
    assert {name for name, _ in prior.named_parameters()} == {"logits", "locs", "raw_scales"}


# ---------------------------------------------------------------- guides


@pytest.mark.parametrize("guide", ["lowrank", "full"])
def test_structured_normal_guides_have_a_valid_correlated_covariance(guide):
    vae = small_vae(guide=guide)
    with torch.no_grad():
        q = vae.encode(data_for("bernoulli", n=5))
        cov = q.covariance_matrix
    assert cov.shape == (5, DIMS.latent_dim, DIMS.latent_dim)
    torch.testing.assert_close(cov, cov.transpose(-1, -2))
    assert (torch.linalg.eigvalsh(cov) > 0).all()
    off_diagonal = cov - torch.diag_embed(cov.diagonal(dim1=-2, dim2=-1))
    assert off_diagonal.abs().max() > 1e-3, "the guide can express correlations"


def test_flow_guide_weights_are_module_parameters_and_its_density_is_exact():
    vae = small_vae(guide="iaf")
    flow_names = [name for name, _ in vae.named_parameters() if ".flows." in name]
    assert flow_names and all(name in vae.state_dict() for name in flow_names)
    x = data_for("bernoulli", n=4)
    with torch.no_grad():
        q = vae.encode(x)
        z = q.sample((3,))
        cached = q.log_prob(z)
        fresh = q.log_prob(z.clone())  # not the cached tensor: inverts the flows
        torch.testing.assert_close(cached, fresh, rtol=1e-4, atol=1e-4)
        # Change of variables by hand: log q(z) = log N(eps) - sum log|det J|.
        base, transforms = q.base_dist, q.transforms
        eps = z.clone()
        log_det = torch.zeros(3, 4)
        for t in reversed(transforms):
            previous = t.inv(eps)
            log_det = log_det + t.log_abs_det_jacobian(previous, eps)
            eps = previous
        torch.testing.assert_close(cached, base.log_prob(eps) - log_det, rtol=1e-4, atol=1e-4)
    clone = small_vae(guide="iaf")
    clone.load_state_dict(vae.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(clone.encode(x).log_prob(z.clone()), fresh)


def test_per_datapoint_guide_reads_its_table_and_trains_only_the_visited_rows():
    scaled = small_vae(guide="per-datapoint", guide_options={"step_scale": 10.0})
    torch.testing.assert_close(scaled.posterior.local_params(None, torch.arange(3)),
                               scaled.posterior.prior_params.expand(3, -1))

    vae = small_vae(guide="per-datapoint")
    x = data_for("bernoulli")
    idx = torch.tensor([3, 7, 11])
    table = vae.posterior.table
    with torch.no_grad():
        table.copy_(torch.randn_like(table))
    q = vae.encode(x[idx], idx=idx)
    torch.testing.assert_close(q.mean, table[idx, : DIMS.latent_dim])
    loss = make_objective("elbo").differentiable_loss(vae.model, vae.guide, x[idx], idx=idx)
    loss.backward()
    visited = table.grad.abs().sum(-1) > 0
    assert visited.nonzero().flatten().tolist() == idx.tolist()


def test_per_datapoint_guide_fits_new_points_without_touching_gradients():
    vae = sharpen(small_vae(guide="per-datapoint", guide_options={"fit_steps": 150}))
    x = data_for("bernoulli", n=6)
    with torch.no_grad():
        unfitted = vae.posterior.family(vae.posterior.prior_params.expand(6, -1))
        z = unfitted.sample((2000,))
        log_prior, log_lik = vae(x, z)
        start = (log_prior + log_lik - unfitted.log_prob(z)).mean(0)
        # One call fits 300 independent copies of the 6 points, 150 Adam steps each.
        fitted = elbo_terms(vae, x.repeat(300, 1))["elbo"].reshape(300, 6).mean(0)
    assert (fitted > start).all(), "the fit improves every point's ELBO over q = N(0, I)"
    assert all(p.grad is None for p in vae.parameters())


def test_semi_amortized_refinement_raises_the_elbo():
    vae = sharpen(small_vae(guide="semi-amortized",
                            guide_options={"num_steps": 10, "step_size": 0.05}))
    x = data_for("bernoulli", n=20)
    with torch.no_grad():
        encoder = vae.posterior.encode(x)
        refined = vae.encode(x)

        def elbo(q):
            z = q.sample((4000,))
            log_prior, log_lik = vae(x, z)
            return (log_prior + log_lik - q.log_prob(z)).mean()

        assert elbo(refined) > elbo(encoder)
    assert all(p.grad is None for p in vae.parameters())


def test_semi_amortized_gradients_are_those_of_kim_et_al():
    """The decoder sees lambda_K as fixed; the encoder gets the exact derivative through the
    unrolled steps (checked by finite differences at fixed noise, in float64)."""
    vae = small_vae(guide="semi-amortized", guide_options={"num_steps": 3, "step_size": 0.2})
    vae.double()
    x = data_for("bernoulli", n=5).double()
    elbo = make_objective("elbo")

    def loss(seed):
        pyro.set_rng_seed(seed)
        return elbo.differentiable_loss(vae.model, vae.guide, x)

    loss(1).backward()
    decoder_grad = [p.grad.clone() for p in vae.decoder.parameters()]
    bias = vae.posterior.encoder[-1].bias
    encoder_grad = bias.grad.clone()

    # Decoder: the same loss with lambda_K computed, then cut from the graph.
    vae.zero_grad()
    refine = vae.posterior.local_params
    vae.posterior.local_params = lambda inputs, idx=None: refine(inputs, idx).detach()
    loss(1).backward()
    del vae.posterior.local_params
    for ours, held in zip(decoder_grad, (p.grad for p in vae.decoder.parameters()),
                          strict=True):
        torch.testing.assert_close(ours, held)

    # Encoder: central finite differences on two entries of the last bias.
    with torch.no_grad():
        for j in (0, DIMS.latent_dim):
            h = 1e-5
            bias[j] += h
            up = loss(1)
            bias[j] -= 2 * h
            down = loss(1)
            bias[j] += h
            assert encoder_grad[j].item() == pytest.approx(((up - down) / (2 * h)).item(),
                                                           rel=1e-4, abs=1e-6)


def test_delta_guide_objective_has_no_entropy_term():
    vae = small_vae(guide="delta")
    x = data_for("bernoulli", n=5)
    with torch.no_grad():
        terms = elbo_terms(vae, x)
        point = vae.posterior.encode(x).mean
        torch.testing.assert_close(terms["kl"], -vae.prior().log_prob(point))
        torch.testing.assert_close(terms["recon"], vae.decode(point).log_prob(x))


# ---------------------------------------------------------------- likelihood


def test_continuous_bernoulli_against_its_closed_form_and_normalised():
    dims = Dims(data_dim=4, latent_dim=2)
    likelihood = registry.LIKELIHOODS["continuous-bernoulli"](dims)
    logits = torch.tensor([[-3.0, -0.5, 0.7, 2.5]], dtype=torch.float64)
    x = torch.tensor([[0.1, 0.5, 0.93, 0.0]], dtype=torch.float64)
    lam = torch.sigmoid(logits)
    log_norm = torch.log(2 * torch.atanh(1 - 2 * lam) / (1 - 2 * lam))
    by_hand = (x * lam.log() + (1 - x) * torch.log1p(-lam) + log_norm).sum(-1)
    torch.testing.assert_close(likelihood(logits).log_prob(x), by_hand)
    grid = torch.linspace(0, 1, 20001, dtype=torch.float64)[:, None].expand(-1, 4)
    per_dim = likelihood(logits).base_dist.log_prob(grid).exp()
    torch.testing.assert_close(torch.trapezoid(per_dim, grid[:, 0], dim=0),
                               torch.ones(4, dtype=torch.float64), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- objective


def test_iwae_equals_pyros_renyi_bound_and_scales_after_the_average():
    vae = small_vae()
    x = data_for("bernoulli", n=8)
    kwargs = {"num_particles": 6, "vectorize_particles": True, "max_plate_nesting": 1}
    with torch.no_grad():
        pyro.set_rng_seed(4)
        ours = make_objective("iwae", num_particles=6).differentiable_loss(vae.model,
                                                                          vae.guide, x)
        pyro.set_rng_seed(4)
        theirs = RenyiELBO(alpha=0, **kwargs).loss(vae.model, vae.guide, x)
        assert ours.item() == pytest.approx(theirs, rel=1e-5)

        # With a subsample of B of N points, the bound of the B points times N / B.
        idx = torch.arange(8)
        full = Dims(data_dim=DIMS.data_dim, latent_dim=DIMS.latent_dim, num_data=40)
        vae40 = small_vae(dims=full)
        vae40.load_state_dict(vae.state_dict())
        pyro.set_rng_seed(4)
        scaled = make_objective("iwae", num_particles=6).differentiable_loss(
            vae40.model, vae40.guide, x, idx=idx)
        assert scaled.item() == pytest.approx(5 * theirs, rel=1e-5)

        # One particle: the ELBO itself.
        pyro.set_rng_seed(5)
        one = make_objective("iwae").differentiable_loss(vae.model, vae.guide, x)
        pyro.set_rng_seed(5)
        assert one.item() == pytest.approx(Trace_ELBO().loss(vae.model, vae.guide, x),
                                           rel=1e-5)


def test_kl_against_the_standard_normal_prior_is_the_general_normal_formula():
    """The normal prior's own KL (a short closed form) equals torch's general normal-normal
    KL against N(0, 1), value and gradients, through the Independent and expand wrappers
    that the VAE's model puts around it."""
    from torch.distributions import Independent, Normal, kl_divergence

    from ppl_vae.parts.priors import StandardNormal, UnitNormal

    prior = StandardNormal(Dims(data_dim=4, latent_dim=3, num_data=1))().expand((5,))
    assert isinstance(prior.base_dist, UnitNormal)
    general = Independent(Normal(torch.zeros(3), torch.ones(3)), 1).expand((5,))
    loc = torch.randn(5, 3, requires_grad=True)
    scale = (torch.rand(5, 3) + 0.1).requires_grad_()
    q = Independent(Normal(loc, scale), 1)
    ours, theirs = kl_divergence(q, prior), kl_divergence(q, general)
    torch.testing.assert_close(ours, theirs)
    for a, b in zip(torch.autograd.grad(ours.sum(), [loc, scale]),
                    torch.autograd.grad(theirs.sum(), [loc, scale]), strict=True):
        torch.testing.assert_close(a, b)
    # The closed form by hand: (s^2 + m^2 - 1) / 2 - log s, summed over coordinates.
    by_hand = (0.5 * (scale**2 + loc**2 - 1) - scale.log()).sum(-1)
    torch.testing.assert_close(ours, by_hand)


def test_bernoulli_likelihood_scores_as_pyros_bernoulli():
    import pyro.distributions as dist

    from ppl_vae.parts.likelihoods import Bernoulli

    likelihood = Bernoulli(Dims(data_dim=6, latent_dim=2, num_data=1))
    logits = torch.randn(4, 6, requires_grad=True)
    x = torch.bernoulli(torch.full((4, 6), 0.3))
    ours = likelihood(logits)
    reference = dist.Bernoulli(logits=logits).to_event(1)
    torch.testing.assert_close(ours.log_prob(x), reference.log_prob(x))
    torch.testing.assert_close(torch.autograd.grad(ours.log_prob(x).sum(), logits)[0],
                               torch.autograd.grad(reference.log_prob(x).sum(), logits)[0])
    expanded = ours.expand((3, 4))  # the shape Pyro gives it under vectorized particles
    assert type(expanded) is type(ours) and expanded.batch_shape == (3, 4)
    torch.testing.assert_close(expanded.log_prob(x), reference.log_prob(x).expand(3, 4))
    assert ours.event_shape == (6,) and torch.allclose(ours.mean, torch.sigmoid(logits))
