"""Tests written to kill surviving mutants of the numeric core (``scripts/mutation.sh``):
each pins a line that the rest of the suite let change without a failure."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from ppl_vae.build import make_objective
from ppl_vae.errors import ConfigError
from ppl_vae.evaluation.likelihood import (
    Q_STAR_SAMPLES,
    fit_optimal_posterior,
    inference_gaps,
    log_likelihood,
    monte_carlo_elbo,
)
from ppl_vae.inference.objectives import _plate_scale
from ppl_vae.vae import Dims, build_vae

DIMS = Dims(data_dim=12, latent_dim=3, num_data=30)


def binary(n=8, seed=0):
    return torch.rand(n, DIMS.data_dim, generator=torch.Generator().manual_seed(seed)).round()


# ---------------------------------------------------------------- objectives.IWAE


def test_iwae_loss_is_its_differentiable_loss():
    """Pyro's RenyiELBO.loss, which IWAE inherits, is the same bound (alpha = 0) as the
    differentiable_loss the trainer calls: the same number from the same draws."""
    vae = build_vae(DIMS, hidden=(8,))
    x = binary()
    objective = make_objective("iwae", num_particles=5)
    with torch.no_grad():
        pyro.set_rng_seed(2)
        ours = objective.differentiable_loss(vae.model, vae.guide, x)
        pyro.set_rng_seed(2)
        inherited = objective.loss(vae.model, vae.guide, x)
    assert ours.item() == pytest.approx(inherited, rel=1e-5)


def test_iwae_refuses_a_guide_without_reparameterization():
    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Bernoulli(0.5 * torch.ones(len(x))))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        p = pyro.param("p", torch.full((len(x),), 0.3))
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Bernoulli(p))

    with pytest.raises(ConfigError, match=r"^the iwae objective needs a reparameterized "
                                          r"guide; site 'z' is not$"):
        make_objective("iwae", num_particles=2).differentiable_loss(model, guide,
                                                                    torch.zeros(4))


def test_plate_scale_multiplies_over_nested_subsampled_plates():
    """A site inside two subsampled plates, 2 of 10 and 3 of 6, is scaled by 5 x 2."""
    def model():
        with pyro.plate("a", 10, subsample_size=2, dim=-2), \
                pyro.plate("b", 6, subsample_size=3, dim=-1):
            pyro.sample("w", dist.Normal(0.0, 1.0))

    site = pyro.poutine.trace(model).get_trace().nodes["w"]
    assert _plate_scale(site) == pytest.approx(10.0)
    assert site["scale"] == pytest.approx(10.0)  # Pyro's own scale of the site agrees


# ---------------------------------------------------------------- evaluation.likelihood


def test_evaluation_refuses_the_delta_guide_with_whole_messages():
    vae = build_vae(DIMS, guide="delta", hidden=(8,))
    x = binary(3)
    with pytest.raises(ConfigError, match=r"^the inference gaps need a guide with a density; "
                                          r"the delta guide's objective is not an ELBO$"):
        inference_gaps(vae, x)
    with pytest.raises(ConfigError, match=r"^the \w+ is a point mass: it has no density, so it "
                                          r"cannot be an importance-sampling proposal and its "
                                          r"objective is not a bound on log p\(x\); pass "
                                          r"proposal=fit_optimal_posterior\(vae, x\) for a "
                                          r"fitted one$"):
        log_likelihood(vae, x, num_samples=4)
    with pytest.raises(ConfigError, match=r"^num_samples must be >= 1; got 0$"):
        monte_carlo_elbo(build_vae(DIMS, hidden=(8,)), x, num_samples=0)


@pytest.mark.parametrize("case", ["conditional", "per-datapoint"])
def test_inference_gaps_are_its_estimators_called_with_its_arguments(case):
    """Every number of inference_gaps is what its four estimators give when called in turn
    with the same labels, indices, sample counts, steps and learning rate from the same seed
    (the labels of a conditional VAE; the table rows of the per-datapoint guide, without
    which it would fit new parameters), and progress hears of every point-sample scored."""
    if case == "conditional":
        dims = Dims(data_dim=12, latent_dim=3, num_data=30, num_classes=3)
        vae = build_vae(dims, hidden=(8,))
        y, idx = torch.tensor([0, 1, 2, 0, 1]), None
    else:
        vae = build_vae(DIMS, guide="per-datapoint", hidden=(8,),
                        guide_options={"fit_steps": 5})
        y, idx = None, torch.arange(5)
    x = binary(5)
    pyro.set_rng_seed(7)
    log_px = log_likelihood(vae, x, y, idx=idx, num_samples=50).mean().item()
    elbo = monte_carlo_elbo(vae, x, y, idx=idx, num_samples=20).mean().item()
    q_star = fit_optimal_posterior(vae, x, y, idx=idx, steps=3, lr=0.2)
    elbo_star = monte_carlo_elbo(vae, x, y, num_samples=20, proposal=q_star).mean().item()
    pyro.set_rng_seed(7)
    counted = []
    gaps = inference_gaps(vae, x, y, idx=idx, num_samples=50, elbo_samples=20, steps=3,
                          lr=0.2, progress=counted.append)
    expected = {"log_px": log_px, "elbo": elbo, "elbo_star": elbo_star}
    for key, value in expected.items():
        assert gaps[key] == pytest.approx(value, rel=1e-6), key
    assert sum(counted) == 5 * (50 + 20 + 3 * Q_STAR_SAMPLES + 20)
