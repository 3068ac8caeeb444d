"""The total-correlation estimators and the KL decomposition against answers computed
independently: quadrature of a known aggregate posterior, and a factorised one whose
total correlation is 0 exactly."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from ppl_vae.build import make_objective
from ppl_vae.errors import ConfigError
from ppl_vae.evaluation.aggregate import (
    kl_decomposition,
    kl_decomposition_terms,
    log_importance_weights,
    total_correlation,
)
from ppl_vae.vae import Dims, build_vae

STANDARD_NORMAL = dist.Normal(torch.zeros(2), 1.0).to_event(1)


def normal_pdf(x, mean, std):
    return np.exp(-((x - mean) ** 2) / (2 * std**2)) / math.sqrt(2 * math.pi * std**2)


def entropy_1d(density, dx):
    return -float((density * np.log(np.maximum(density, 1e-300))).sum() * dx)


def two_cluster_posteriors(n=1200, a=1.0, s=0.6):
    """q(z | x_n) = N(+-(a, a), s^2 I), half the points each: the aggregate posterior is an
    equal mixture of two normals whose coordinates are strongly dependent."""
    signs = torch.tensor([1.0, -1.0]).repeat_interleave(n // 2)
    loc = a * signs[:, None].expand(n, 2)
    return dist.Normal(loc, s).to_event(1)


def two_cluster_truth(a=1.0, s=0.6):
    """I, TC and dimension-wise KL of :func:`two_cluster_posteriors` by quadrature."""
    grid = np.linspace(-a - 8 * s, a + 8 * s, 401)
    dx = grid[1] - grid[0]
    marginal = 0.5 * normal_pdf(grid, a, s) + 0.5 * normal_pdf(grid, -a, s)
    gx, gy = np.meshgrid(grid, grid, indexing="ij")
    joint = 0.5 * (normal_pdf(gx, a, s) * normal_pdf(gy, a, s)
                   + normal_pdf(gx, -a, s) * normal_pdf(gy, -a, s))
    h_joint = entropy_1d(joint, dx * dx)
    h_posterior = 2 * 0.5 * math.log(2 * math.pi * math.e * s**2)
    prior = normal_pdf(grid, 0.0, 1.0)
    dwkl = 2 * float((marginal * np.log(marginal / prior)).sum() * dx)
    kl = 2 * 0.5 * (s**2 + a**2 - 1 - math.log(s**2))
    return {"mi": h_joint - h_posterior, "tc": 2 * entropy_1d(marginal, dx) - h_joint,
            "dwkl": dwkl, "kl": kl}


def assert_close_to(terms, truth, slack=0.01):
    for key, expected in truth.items():
        values = terms[key]
        stderr = float(values.std()) / math.sqrt(len(values))
        assert abs(float(values.mean()) - expected) < 4 * stderr + slack, (key, expected)


def test_decomposition_of_a_correlated_aggregate_matches_quadrature():
    q = two_cluster_posteriors()
    terms = kl_decomposition_terms(q, q.sample(), STANDARD_NORMAL)
    truth = two_cluster_truth()
    assert truth["mi"] + truth["tc"] + truth["dwkl"] == pytest.approx(truth["kl"], abs=1e-6)
    assert truth["tc"] > 0.4  # far from 0: the test can tell a wrong estimator
    assert_close_to(terms, truth)
    # The three parts add up to the Monte Carlo KL at the same codes, to rounding.
    total = terms["mi"] + terms["tc"] + terms["dwkl"]
    torch.testing.assert_close(total, terms["kl"], atol=1e-4, rtol=0)


def test_total_correlation_of_a_factorised_aggregate_is_zero():
    """Posterior means on a full product grid (every combination equally often) and scales
    that depend on the dimension only: q(z) is a product of 1-D mixtures, TC = 0 exactly."""
    values = [torch.tensor([-1.5, 0.0, 1.5]), torch.tensor([-1.0, 1.0]),
              torch.tensor([-2.0, -0.5, 1.0, 2.0])]
    grid = torch.cartesian_prod(*values).repeat(40, 1)  # 24 combinations x 40 = 960 points
    scales = torch.tensor([0.5, 0.8, 0.3])
    q = dist.Normal(grid, scales).to_event(1)
    terms = kl_decomposition_terms(q, q.sample(), dist.Normal(torch.zeros(3), 1.0).to_event(1))
    # Each dimension's marginal is a 1-D mixture: I and the dimension-wise KL by quadrature.
    mi = dwkl = 0.0
    for v, s in zip(values, scales.tolist(), strict=True):
        line = np.linspace(-8, 8, 20001)
        dx = line[1] - line[0]
        marginal = np.mean([normal_pdf(line, float(m), s) for m in v], axis=0)
        mi += entropy_1d(marginal, dx) - 0.5 * math.log(2 * math.pi * math.e * s**2)
        dwkl += float((marginal * np.log(marginal / normal_pdf(line, 0, 1))).sum() * dx)
    assert_close_to(terms, {"tc": 0.0, "mi": mi, "dwkl": dwkl}, slack=0.005)


def test_minibatch_stratified_estimate_is_nearly_unbiased():
    """MSS on minibatches of 64 out of 1200 points is within a few hundredths of a nat of
    the quadrature TC; with the whole data set as the batch its weights are all 1/N."""
    q_all = two_cluster_posteriors()
    gen = torch.Generator().manual_seed(0)
    idx = torch.stack([torch.randperm(1200, generator=gen)[:64] for _ in range(100)])
    q = dist.Normal(q_all.base_dist.loc[idx], 0.6).to_event(1)  # 100 batches at once
    estimates = total_correlation(q, q.sample(), 1200, "mss")
    assert estimates.shape == (100,)
    stderr = float(estimates.std()) / 10
    assert abs(float(estimates.mean()) - two_cluster_truth()["tc"]) < 4 * stderr + 0.02
    full = log_importance_weights(5, 5, "mss")
    torch.testing.assert_close(full, torch.full((5, 5), -math.log(5)))
    # Minibatch weighted sampling (Chen et al.'s eq. S5) weighs each point 1/(N B): its TC
    # carries a constant offset of (L - 1) log N, known and harmless to gradients.
    mws = total_correlation(q, q.sample(), 1200, "mws")
    offset = float(mws.mean() - estimates.mean())
    assert offset == pytest.approx(math.log(1200), abs=0.1)


def small_vae(num_data=64):
    dims = Dims(data_dim=16, latent_dim=3, num_data=num_data)
    return dims, build_vae(dims, hidden=(16,))


def test_tcvae_subtracts_beta_minus_one_times_n_times_the_minibatch_tc():
    dims, vae = small_vae()
    x = torch.bernoulli(torch.full((64, 16), 0.3))
    idx = torch.arange(8, 24)
    tcvae = make_objective("tcvae", options={"beta": 4.0}, dims=dims)
    plain = make_objective("meanfield")
    losses = []
    for objective in (plain, tcvae):
        pyro.set_rng_seed(5)
        losses.append(objective.differentiable_loss(vae.model, vae.guide, x[idx], idx=idx))
    pyro.set_rng_seed(5)
    trace = pyro.poutine.trace(vae.guide).get_trace(x[idx], idx=idx)
    q, z = trace.nodes["z"]["fn"], trace.nodes["z"]["value"]
    expected = 3.0 * 64 * total_correlation(q, z, 64)
    torch.testing.assert_close(losses[1] - losses[0], expected, rtol=1e-4, atol=1e-3)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:DeprecationWarning")
def test_tcvae_penalty_vectorizes_over_particles_and_compiles():
    dims, vae = small_vae()
    x = torch.bernoulli(torch.full((16, 16), 0.3))
    idx = torch.arange(16)

    def model(x, idx, batch_size):
        return vae.model(x, None, idx)

    def guide(x, idx, batch_size):
        return vae.guide(x, None, idx)

    results = []
    for jit in (False, True):
        objective = make_objective("tcvae", num_particles=3, jit=jit, dims=dims)
        pyro.set_rng_seed(2)
        objective.differentiable_loss(model, guide, x, idx, batch_size=16)  # compiles
        pyro.set_rng_seed(1)
        results.append(objective.differentiable_loss(model, guide, x, idx, batch_size=16))
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-3)


def test_kl_decomposition_of_a_vae_adds_up_to_its_kl_term():
    _, vae = small_vae()
    x = torch.bernoulli(torch.full((300, 16), 0.3))
    terms = kl_decomposition(vae, x)
    assert terms["mi"] + terms["tc"] + terms["dwkl"] == pytest.approx(terms["kl"], abs=1e-4)
    assert -0.05 < terms["mi"] <= math.log(300)  # a Monte Carlo average of an I >= 0
    with torch.no_grad():
        analytic = float(torch.distributions.kl_divergence(vae.encode(x), vae.prior()).mean())
    assert terms["kl"] == pytest.approx(analytic, abs=0.1 * analytic + 0.02)


def test_decomposition_needs_closed_form_marginals():
    dims = Dims(data_dim=16, latent_dim=3, num_data=64)
    x = torch.bernoulli(torch.full((10, 16), 0.3))
    with pytest.raises(ConfigError, match="marginals of the prior"):
        kl_decomposition(build_vae(dims, prior="mog", hidden=(8,)), x)
    with pytest.raises(ConfigError, match="marginals of the guide"):
        kl_decomposition(build_vae(dims, guide="iaf", hidden=(8,)), x)
