"""Imputation against the exact Gaussian conditional of probabilistic PCA, the baselines
against hand computation and scikit-learn, masks, errors and the ``ppl-vae impute`` command."""

import csv

import numpy as np
import pytest
import torch

from ppl_vae.commands import main as cli_main
from ppl_vae.data.ppca import make_ppca
from ppl_vae.errors import ConfigError, DataError
from ppl_vae.evaluation.impute import (
    bernoulli_log_lik,
    check_mask,
    imputation_error,
    impute,
    knn_imputation,
    lower_half_mask,
    mean_imputation,
    random_mask,
)
from ppl_vae.testing import ppca_vae as linear_gaussian_vae
from ppl_vae.vae import Dims, build_vae

D, L, CHAINS = 6, 2, 400


def ppca_vae():
    """A linear-Gaussian VAE whose decoder is a PPCA model and whose guide is untrained and
    shrunk towards N(0, 0.7^2 I) for every x: a proposal that ignores the data."""
    x, true = make_ppca(1, D, L, noise_std=0.5, seed=2)
    vae = linear_gaussian_vae(true, noise_std=0.5)
    return vae, true, x[0]


def exact_conditional(true, x, observed):
    """Mean and covariance of x_m | x_o under x ~ N(mu, W W^T + sigma^2 I)."""
    W, mu = true["W"].double(), true["mu"].double()
    cov = W @ W.T + 0.25 * torch.eye(D, dtype=torch.float64)
    o, m = observed, ~observed
    gain = cov[m][:, o] @ torch.linalg.inv(cov[o][:, o])
    mean = mu[m] + gain @ (x.double()[o] - mu[o])
    return mean, cov[m][:, m] - gain @ cov[o][:, m]


def chain_moments(vae, x, observed, method):
    result = impute(vae, x.expand(CHAINS, D), observed.expand(CHAINS, D), method=method,
                    num_iterations=150, burn_in=50, keep_samples=True)
    draws = result.samples[:, :, ~observed].reshape(-1, int((~observed).sum())).double()
    return draws.mean(0), torch.cov(draws.T), result


def test_metropolis_within_gibbs_samples_the_exact_gaussian_conditional():
    vae, true, x = ppca_vae()
    observed = torch.tensor([True, False, True, False, True, False])
    mean, cov = exact_conditional(true, x, observed)
    got_mean, got_cov, result = chain_moments(vae, x, observed, "mwg")
    scale = cov.diagonal().sqrt()
    assert ((got_mean - mean).abs() < 0.1 * scale).all(), (got_mean, mean)
    torch.testing.assert_close(got_cov, cov, rtol=0.15, atol=0.1 * float(cov.diagonal().max()))
    assert 0.05 < result.acceptance < 1
    # The imputation is the chain's predictive mean; the observed entries stay as given.
    torch.testing.assert_close(result.filled[:, ~observed].mean(0).double(), mean,
                               atol=0.1 * float(scale.max()), rtol=0)
    assert torch.equal(result.filled[:, observed], x[observed].expand(CHAINS, -1))


def test_pseudo_gibbs_with_this_guide_misses_the_conditional():
    """The check above has teeth: without the Metropolis step the same moves sample
    something else (the guide ignores the data, so x_m follows the model's marginal)."""
    vae, true, x = ppca_vae()
    observed = torch.tensor([True, False, True, False, True, False])
    mean, cov = exact_conditional(true, x, observed)
    got_mean, got_cov, _ = chain_moments(vae, x, observed, "pseudo-gibbs")
    assert (got_mean - mean).abs().max() > 0.3 * float(cov.diagonal().sqrt().max()) or \
        not torch.allclose(got_cov, cov, rtol=0.3)


def test_single_pass_is_the_decoder_mean_at_the_guide_mean():
    vae, _, x = ppca_vae()
    observed = torch.tensor([True, True, True, False, False, True]).expand(3, D)
    xs = x.expand(3, D)
    result = impute(vae, xs, observed, method="single", truth=xs)
    with torch.no_grad():
        z = vae.encode(torch.where(observed, xs, torch.zeros_like(xs))).mean
        expected = vae.decode(z).mean
        log_lik = (vae.decode(z).base_dist.log_prob(xs) * ~observed).sum(-1)
    torch.testing.assert_close(result.filled, torch.where(observed, xs, expected))
    torch.testing.assert_close(result.log_lik, log_lik)


def test_baselines_against_hand_computation():
    x_train = torch.tensor([[0.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.9, 0.8, 1.0]])
    x = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    observed = torch.tensor([[True, False, True], [False, True, True]])
    torch.testing.assert_close(mean_imputation(x_train, x, observed),
                               torch.tensor([[1.0, 0.6, 0.0], [19 / 30, 1.0, 1.0]]))
    # One neighbour, distances over the observed entries: row 0 (x0=1, x2=0) is nearest to
    # training row 1; row 1 (x1=1, x2=1) to training row 2.
    torch.testing.assert_close(knn_imputation(x_train, x, observed, k=1),
                               torch.tensor([[1.0, 1.0, 0.0], [0.9, 1.0, 1.0]]))
    filled = torch.tensor([[1.0, 0.25, 0.0], [0.5, 1.0, 1.0]])
    truth = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    torch.testing.assert_close(bernoulli_log_lik(filled, truth, observed),
                               torch.tensor([np.log(0.25), np.log(0.5)], dtype=torch.float32))
    assert imputation_error(filled, truth, observed) == pytest.approx(
        np.sqrt((0.75 ** 2 + 0.5 ** 2) / 2))


def test_masks():
    observed = random_mask((200, 50), 0.3, seed=1)
    assert abs((~observed).float().mean() - 0.3) < 0.02
    assert torch.equal(observed, random_mask((200, 50), 0.3, seed=1))
    half = lower_half_mask(2, (4, 3))
    assert torch.equal(half[0], torch.tensor([1] * 6 + [0] * 6, dtype=torch.bool))
    assert torch.equal(half[0], half[1])


def test_bad_input_is_a_clear_error():
    vae, _, x = ppca_vae()
    xs = x.expand(2, D)
    with pytest.raises(ConfigError, match="strictly between 0 and 1"):
        random_mask((2, D), 1.0)
    with pytest.raises(DataError, match=r"mask has shape \(2, 5\)"):
        check_mask(np.ones((2, 5), dtype=bool), xs)
    with pytest.raises(DataError, match="booleans or 0/1"):
        check_mask(np.full((2, D), 0.5), xs)
    with pytest.raises(DataError, match="nothing to impute"):
        check_mask(np.ones((2, D)), xs)
    observed = torch.zeros(2, D, dtype=torch.bool)
    with pytest.raises(ConfigError, match="unknown imputer 'gibbs'"):
        impute(vae, xs, observed, method="gibbs")
    with pytest.raises(ConfigError, match="burn_in"):
        impute(vae, xs, observed, num_iterations=10, burn_in=10)
    autoencoder = build_vae(Dims(D, L), guide="delta", hidden=())
    with pytest.raises(ConfigError, match="needs a guide with a density"):
        impute(autoencoder, xs, observed, method="mwg")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "vae"
    args = ["train", "--epochs", "1", "--hidden", "16", "--latent-dim", "2", "--quiet",
            "--no-jit", "--out", str(run_dir)]
    assert cli_main(args) == 0
    return run_dir


def test_impute_command_writes_a_table(trained_run, capsys):
    assert cli_main(["impute", str(trained_run), "--lower-half", "--iterations", "5",
                     "--burn-in", "1", "--methods", "single,mwg,mean"]) == 0
    table = (trained_run / "impute_lower-half.md").read_text()
    assert [line.split("|")[1].strip() for line in table.splitlines()[2:]] == [
        "single", "mwg", "mean"]
    with open(trained_run / "impute_lower-half.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # Mean imputation of binary pixels: the RMSE is at most 1 and the log-likelihood < 0.
    assert 0 < float(rows[2]["rmse"]) < 1 and float(rows[2]["log_lik"]) < 0
    assert 0 <= float(rows[1]["acceptance"]) <= 1


def test_impute_command_refuses_bad_masks(trained_run, tmp_path, capsys):
    np.save(tmp_path / "mask.npy", np.zeros(5, dtype=bool))
    assert cli_main(["impute", str(trained_run), "--missing", str(tmp_path / "mask.npy")]) == 2
    assert "the mask has shape" in capsys.readouterr().err
    assert cli_main(["impute", str(trained_run), "--missing-rate", "1.5"]) == 2
    assert "strictly between 0 and 1" in capsys.readouterr().err
    assert cli_main(["impute", str(trained_run)]) == 2


def test_training_with_missing_entries_scores_the_observed_ones_only():
    from pyro import poutine

    vae = build_vae(Dims(D, L, num_data=4), hidden=(8,), likelihood="gaussian-isotropic")
    x = torch.randn(4, D)
    observed = random_mask((4, D), 0.5, seed=3)
    vae.set_missing(observed)
    idx = torch.tensor([2, 0])
    guide = poutine.trace(vae.guide).get_trace(x[idx], idx=idx)
    model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x[idx], idx=idx)
    site = model.nodes["x"]
    with torch.no_grad():
        decoded = vae.decode(guide.nodes["z"]["value"])
        per_entry = decoded.base_dist.log_prob(x[idx])
        expected = (per_entry * observed[idx]).sum(-1)
        # The guide saw the missing entries as zeros.
        zero_filled = torch.where(observed[idx], x[idx], torch.zeros_like(x[idx]))
        torch.testing.assert_close(guide.nodes["z"]["fn"].mean, vae.encode(zero_filled).mean)
    torch.testing.assert_close(site["fn"].log_prob(x[idx]), expected)
    # Without idx (held-out data) every entry counts.
    full = poutine.trace(vae.model).get_trace(x)
    torch.testing.assert_close(full.nodes["x"]["fn"].log_prob(x),
                               vae.decode(full.nodes["z"]["value"]).log_prob(x))


def test_missing_rate_setting_is_checked():
    from ppl_vae.config import load_config

    assert load_config(None, {"data.missing_rate": 0.5})["data"]["missing_rate"] == 0.5
    with pytest.raises(ConfigError, match="missing_rate"):
        load_config(None, {"data.missing_rate": 1.0})
