"""Tests written to kill surviving mutants of ppl_vae/evaluation/likelihood.py (issue 17).

The ELBO's terms of a linear-Gaussian VAE are checked against their closed forms, written
out here in numpy; the batching of :func:`evaluate_elbo` and :func:`active_units` against
numpy over the whole data, with labels and training-set indices passed through.
"""

import math

import numpy as np
import pyro
import pytest
import torch

from ppl_vae.errors import ConfigError
from ppl_vae.evaluation import likelihood
from ppl_vae.evaluation.likelihood import (
    active_units,
    elbo_terms,
    evaluate_elbo,
    log_likelihood,
    monte_carlo_elbo,
)
from ppl_vae.vae import Dims, build_vae

D, L = 4, 2


def linear_vae(**kwargs):
    torch.manual_seed(0)
    return build_vae(Dims(D, L, **kwargs.pop("dims", {})), likelihood="gaussian-isotropic",
                     hidden=(), likelihood_options={"init_scale": 0.7}, **kwargs).double()


def closed_form_kl(q):
    """KL(N(m, diag s^2) || N(0, I)) per row, by hand."""
    m, s = q.mean.detach().numpy(), q.stddev.detach().numpy()
    return 0.5 * (s**2 + m**2 - 1 - 2 * np.log(s)).sum(-1)


def test_conditional_vae_terms_use_the_label_in_guide_and_model():
    """KL from the guide's q(z | x, y); recon from a decoder that reads only the label."""
    vae = linear_vae(dims={"num_classes": 3})
    with torch.no_grad():
        vae.decoder[0].weight[:, :L] = 0  # p(x | z, y) = N(bias + W_y onehot(y), sigma^2)
    x = torch.randn(6, D, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    terms = {k: v.detach() for k, v in elbo_terms(vae, x, y).items()}
    np.testing.assert_allclose(terms["kl"].numpy(), closed_form_kl(vae.encode(x, y)),
                               rtol=1e-10)
    weight = vae.decoder[0].weight.detach().numpy()[:, L:]
    mean = vae.decoder[0].bias.detach().numpy() + weight[:, y.numpy()].T
    sigma = float(vae.likelihood.scale.detach())
    recon = (-0.5 * ((x.numpy() - mean) / sigma) ** 2 - math.log(sigma)
             - 0.5 * math.log(2 * math.pi)).sum(-1)
    np.testing.assert_allclose(terms["recon"].numpy(), recon, rtol=1e-10)
    np.testing.assert_allclose(terms["elbo"].numpy(), recon - terms["kl"].numpy(), rtol=1e-10)


def test_per_datapoint_terms_read_the_rows_of_the_table():
    """With training-set indices, q(z | x) is the table's row of each point."""
    vae = linear_vae(guide="per-datapoint", dims={"num_data": 5})
    with torch.no_grad():
        for param in vae.posterior.parameters():
            param.copy_(torch.randn_like(param))
    x = torch.randn(3, D, dtype=torch.float64)
    idx = torch.tensor([4, 0, 2])
    kl = elbo_terms(vae, x, None, idx)["kl"].detach().numpy()
    np.testing.assert_allclose(kl, closed_form_kl(vae.encode(x, None, idx)), rtol=1e-10)
    assert not np.allclose(kl, closed_form_kl(vae.encode(x, None, torch.tensor([0, 1, 2]))))


def test_without_a_closed_form_kl_the_estimate_is_log_q_minus_log_p_at_the_guides_z():
    vae = linear_vae(prior="mog")
    x = torch.randn(5, D, dtype=torch.float64)
    pyro.set_rng_seed(3)
    kl = elbo_terms(vae, x)["kl"]
    pyro.set_rng_seed(3)
    q = vae.encode(x)
    z = q.rsample()
    torch.testing.assert_close(kl, q.log_prob(z) - vae.prior().log_prob(z))


def fake_terms(vae, x, y=None, idx=None):
    """Terms that are exact functions of the rows, so that the means are known."""
    label = torch.zeros(len(x), dtype=x.dtype) if y is None else y.to(x.dtype)
    recon, kl = x.sum(-1) + label, 0.5 + 0.1 * label
    return {"recon": recon, "kl": kl, "elbo": recon - kl}


@pytest.mark.parametrize("batch_size", [1, 3, 7, 1024])
def test_evaluate_elbo_means_every_batch_over_the_rows(monkeypatch, batch_size):
    monkeypatch.setattr(likelihood, "elbo_terms", fake_terms)
    x = torch.arange(35, dtype=torch.float64).reshape(7, 5)
    y = torch.tensor([2, 0, 1, 1, 0, 2, 2])
    result = evaluate_elbo(None, x, y, batch_size=batch_size)
    recon = x.numpy().sum(-1) + y.numpy()
    kl = 0.5 + 0.1 * y.numpy()
    assert result == pytest.approx({"recon": recon.mean(), "kl": kl.mean(),
                                    "elbo": (recon - kl).mean()}, rel=1e-12)
    unlabelled = evaluate_elbo(None, x, batch_size=batch_size)
    assert unlabelled["kl"] == pytest.approx(0.5, rel=1e-12)


class FakeVAE:
    """encode(x, y, idx): q whose mean is x + y + 10 idx, per row."""

    def encode(self, x, y=None, idx=None):
        loc = x + y[:, None].to(x.dtype) + 10 * idx[:, None].to(x.dtype)
        return torch.distributions.Normal(loc, 1.0)


@pytest.mark.parametrize("batch_size", [2, 1024])
def test_active_units_count_the_variances_of_the_means_above_the_threshold(batch_size):
    x = torch.tensor([[0.0, 0.0, 0.3], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.1],
                      [0.0, 0.0, 0.2]], dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 0, 0])
    idx = torch.tensor([0, 0, 0, 0, 0])
    means = x.numpy()
    variances = means.var(0, ddof=1)  # 0.3, 0, 0.0157
    count, got = active_units(FakeVAE(), x, y, idx=idx, batch_size=batch_size)
    np.testing.assert_allclose(got.numpy(), variances, rtol=1e-12)
    assert count == 2  # the default threshold 0.01 counts the first and the third
    assert active_units(FakeVAE(), x, y, idx=idx, threshold=float(got[0]),
                        batch_size=batch_size)[0] == 0  # strictly above
    shifted = active_units(FakeVAE(), x, y + torch.tensor([0, 2, 0, 0, 0]),
                           idx=torch.tensor([1, 0, 0, 0, 0]), batch_size=batch_size)[1]
    expected = (means + np.array([10, 2, 0, 0, 0])[:, None]).var(0, ddof=1)
    np.testing.assert_allclose(shifted.numpy(), expected, rtol=1e-12)


def test_training_rows_with_missing_entries_score_only_their_observed_entries():
    """With indices into a training set with missing entries, log p(x | z) sums the
    observed entries' densities (a decoder that ignores z makes it exact)."""
    vae = linear_vae(dims={"num_data": 4})
    with torch.no_grad():
        vae.decoder[0].weight.zero_()
    observed = torch.tensor([[1, 1, 0, 1], [0, 0, 0, 1], [1, 1, 1, 1], [1, 0, 1, 0]])
    vae.set_missing(observed)
    x = torch.randn(2, D, dtype=torch.float64)
    idx = torch.tensor([3, 1])
    mean = vae.decoder[0].bias.detach().numpy()
    sigma = float(vae.likelihood.scale.detach())
    density = -0.5 * ((x.numpy() - mean) / sigma) ** 2 - math.log(sigma * math.sqrt(2 * math.pi))
    recon = elbo_terms(vae, x, None, idx)["recon"].detach().numpy()
    np.testing.assert_allclose(recon, (density * observed[idx].numpy()).sum(-1), rtol=1e-10)


@pytest.mark.parametrize("estimate", [log_likelihood, monte_carlo_elbo])
def test_training_indices_pick_the_tables_rows_as_the_proposal(estimate):
    """With ``idx``, the per-datapoint guide's rows idx[rows] are the proposal: the same
    numbers as passing those rows' q by hand, draw for draw."""
    vae = linear_vae(guide="per-datapoint", dims={"num_data": 5})
    with torch.no_grad():
        vae.posterior.table.copy_(torch.randn_like(vae.posterior.table))
    x = torch.randn(3, D, dtype=torch.float64)
    idx = torch.tensor([4, 0, 2])

    def by_hand(rows, x_rows, y_rows):
        return vae.encode(x_rows, None, idx[rows])

    pyro.set_rng_seed(1)
    got = estimate(vae, x, idx=idx, num_samples=7, batch_size=2)
    pyro.set_rng_seed(1)
    expected = estimate(vae, x, num_samples=7, batch_size=2, proposal=by_hand)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("estimate, default", [(log_likelihood, 5000), (monte_carlo_elbo, 1000)])
def test_draws_come_in_chunks_of_max_rows_and_the_default_count(estimate, default):
    vae = linear_vae()
    x = torch.randn(2, D, dtype=torch.float64)
    calls = []
    estimate(vae, x, num_samples=7, max_rows=6, progress=calls.append)
    assert calls == [6, 6, 2]  # 3 draws x 2 rows per chunk
    calls.clear()
    estimate(vae, torch.randn(4, D, dtype=torch.float64), num_samples=3, max_rows=6,
             progress=calls.append)
    assert calls == [4, 4, 4]  # fewer rows than the batch's: one draw per chunk
    calls.clear()
    estimate(vae, x, progress=calls.append)
    assert sum(calls) == default * len(x)


def test_on_the_cpu_draws_come_in_chunks_of_2048_rows():
    calls = []
    log_likelihood(linear_vae(), torch.randn(1, D, dtype=torch.float64), progress=calls.append)
    assert calls == [2048, 2048, 904]  # MAX_ROWS["cpu"]; K = 5000 for one row


@pytest.mark.parametrize("estimate", [log_likelihood, monte_carlo_elbo])
def test_a_point_mass_guide_is_refused_as_a_proposal(estimate):
    vae = linear_vae(guide="delta")
    with pytest.raises(ConfigError) as excinfo:
        estimate(vae, torch.randn(2, D, dtype=torch.float64))
    assert str(excinfo.value) == (
        "the DeltaGuide is a point mass: it has no density, so it cannot be an "
        "importance-sampling proposal and its objective is not a bound on log p(x); pass "
        "proposal=fit_optimal_posterior(vae, x) for a fitted one")
