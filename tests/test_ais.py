"""Annealed importance sampling against the closed-form PPCA marginal, against importance
sampling (one step of AIS is importance sampling), and its errors."""

import csv

import numpy as np
import pyro
import pytest
import torch

from ppl_vae.data.ppca import make_ppca, ppca_log_likelihood
from ppl_vae.errors import ConfigError
from ppl_vae.evaluation.ais import ais_log_likelihood, sigmoid_schedule
from ppl_vae.evaluation.likelihood import log_likelihood
from ppl_vae.testing import ppca_vae as linear_gaussian_vae
from ppl_vae.vae import Dims, build_vae


def ppca_vae():
    """A linear-Gaussian VAE whose decoder is the true PPCA model and whose guide is an
    untrained one shrunk towards q(z | x) = N(0, 0.7^2 I) for every x: a poor proposal, so
    that importance sampling with a few samples is far from log p(x) and AIS has work."""
    x, true = make_ppca(20, 10, 2, noise_std=0.5, seed=1)
    vae = linear_gaussian_vae(true, noise_std=0.5, num_data=20)
    exact = torch.tensor([ppca_log_likelihood(x[i:i + 1], true["W"], true["mu"], 0.5)
                          for i in range(len(x))], dtype=torch.float64)
    return vae, x, exact


def test_ais_matches_the_closed_form_ppca_log_likelihood():
    vae, x, exact = ppca_vae()
    importance = log_likelihood(vae, x, num_samples=32).double()
    result = ais_log_likelihood(vae, x, num_steps=100, num_chains=32)
    error = result.log_px.double() - exact
    # The check has teeth: with the same 32 draws per point, importance sampling from the
    # untrained guide misses log p(x) by more than a nat on average.
    assert (exact - importance).mean() > 1.0
    assert abs(error.mean()) < 0.05
    assert error.abs().max() < 1.0
    assert 0.4 < result.acceptance < 0.95


def test_ais_from_the_prior_matches_the_closed_form_too():
    vae, x, exact = ppca_vae()
    result = ais_log_likelihood(vae, x[:10], num_steps=100, num_chains=64, start="prior",
                                step_size=0.2)
    assert abs((result.log_px.double() - exact[:10]).mean()) < 0.1


def test_one_annealing_step_is_importance_sampling_with_as_many_samples():
    vae, x, _ = ppca_vae()
    pyro.set_rng_seed(3)
    importance = log_likelihood(vae, x, num_samples=16)
    pyro.set_rng_seed(3)
    ais = ais_log_likelihood(vae, x, num_steps=1, num_chains=16).log_px
    torch.testing.assert_close(ais, importance)


def test_sigmoid_schedule_runs_from_zero_to_one_and_rises():
    betas = sigmoid_schedule(50)
    assert len(betas) == 51 and betas[0] == 0 and betas[-1] == 1
    assert (betas.diff() > 0).all()
    # Denser at the ends than in the middle.
    assert betas.diff()[0] < betas.diff()[25] and betas.diff()[-1] < betas.diff()[25]


def test_bad_settings_are_one_line_errors():
    vae, x, _ = ppca_vae()
    with pytest.raises(ConfigError, match="starts from one of guide, prior"):
        ais_log_likelihood(vae, x, start="encoder")
    with pytest.raises(ConfigError, match="at least 1 annealing step"):
        ais_log_likelihood(vae, x, num_steps=0)
    with pytest.raises(ConfigError, match="step_size > 0"):
        ais_log_likelihood(vae, x, step_size=0.0)
    autoencoder = build_vae(Dims(10, 2, num_data=20), guide="delta", hidden=(),
                            likelihood="gaussian-isotropic")
    with pytest.raises(ConfigError, match="start='prior'"):
        ais_log_likelihood(autoencoder, x)


@pytest.mark.slow
def test_eval_command_with_ais_writes_its_own_files(tmp_path, capsys):
    from ppl_vae.commands import main as cli_main

    run_dir = tmp_path / "vae"
    assert cli_main(["train", "--epochs", "1", "--hidden", "16", "--latent-dim", "2",
                     "--quiet", "--no-jit", "--out", str(run_dir)]) == 0
    assert cli_main(["eval", str(run_dir), "--estimator", "ais", "--ais-steps", "5",
                     "--ais-chains", "2", "--gap-points", "2", "--gap-steps", "2",
                     "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| AIS 2x5 |" in out and "log p(x) by AIS from the guide: 2 chains, 5 steps" in out
    assert not (run_dir / "eval.md").exists()  # the importance-sampling files are not touched
    points = np.loadtxt(run_dir / "log_px_ais.csv", skiprows=1)
    with open(run_dir / "eval_ais.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["log_px"]) == pytest.approx(points.mean(), rel=1e-6)
    assert cli_main(["eval", str(run_dir), "--estimator", "hmc"]) == 2
    assert "invalid choice: 'hmc'" in capsys.readouterr().err
