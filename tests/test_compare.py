"""The comparison of EM, mean-field VI and amortized VI (ppl_vae.evaluation.compare,
ppl-vae compare).

Oracles: scikit-learn's GaussianMixture scoring our EM parameters, the parameters that
generated the blobs, NUTS as the reference posterior for CAVI, and the exact Gaussian
mixture that a linear-decoder VAE defines.
"""

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from ppl_vae import commands
from ppl_vae.evaluation import compare
from ppl_vae.evaluation.likelihood import log_likelihood
from ppl_vae.mixture import GaussianMixture
from ppl_vae.mixture.arviz_export import align_components
from ppl_vae.vae import Dims, build_vae

ROOT = Path(__file__).resolve().parent.parent
# The parameters of ppl_vae.data.points.make_blobs, which generates compare's "blobs".
BLOBS_MEANS = np.array([[0.0, 0.0], [5.0, 4.0], [-4.0, 5.0]])
# Means recovered from 1,200 points: each component's sample mean is off by about
# sd / sqrt(n_k) <= 1.5 / sqrt(240) ~ 0.1 per coordinate; 0.25 is 2.5 of those.
MEANS_TOLERANCE = 0.25


def _read_csv(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


@pytest.mark.slow
def test_quick_run_writes_one_table_and_scores_em_exactly(tmp_path, capsys):
    out = tmp_path / "compare"
    status = commands.main(["compare", "--quick", "--data", "blobs", "--out", str(out)])
    assert status == 0
    for name in ("compare.md", "compare.csv", "posterior_summary.csv", "forest.png",
                 "objectives.png", "passes.png", "ellipses.png"):
        assert (out / name).is_file(), name
    header, rows = _read_csv(out / "compare.csv")
    assert header == [key for key, _, _ in compare.COLUMNS]
    assert [row["method"] for row in rows] == [
        "EM", "CAVI", "stepwise EM, batches of 100", "SVI natural gradient, batches of 100",
        "Pyro SVI, MAP", "Pyro SVI, mean-field", "NUTS",
        "VAE, MoG prior, linear decoder", "VAE, MoG prior, MLP decoder 64-64"]
    assert {row["device"] for row in rows} == {"cpu"}
    for row in rows:
        assert np.isfinite(float(row["test_loglik"])), row
        assert 0 <= int(row["components"]) <= 3
        assert -1 <= float(row["ari"]) <= 1
    assert "ppl-vae compare --quick --data blobs" in (out / "compare.md").read_text()
    assert "| EM | maximum likelihood |" in capsys.readouterr().out

    # The same split and fit, scored by our GaussianMixture and by scikit-learn's.
    data = compare.load_data("blobs", quick=True)
    settings = compare.Settings.quick(components=3)
    em = GaussianMixture(3, max_iter=settings.max_iter, random_state=0).fit(data.x_train)
    em_row = rows[0]
    assert float(em_row["test_loglik"]) == pytest.approx(em.score(data.x_test), abs=1e-9)
    sk = SkGaussianMixture(3)
    sk.weights_, sk.means_, sk.covariances_ = em.weights_, em.means_, em.covariances_
    sk.precisions_cholesky_ = em.precisions_cholesky_
    assert float(em_row["test_loglik"]) == pytest.approx(sk.score(data.x_test), abs=1e-4)


def test_stepwise_em_and_svi_rows_reach_em_and_cavi_on_the_blobs():
    data = compare.load_data("blobs")
    fits = compare.run_comparison(data, compare.Settings(stream_passes=10),
                                  ["em", "cavi", "em-stepwise", "svi"])
    assert abs(fits["em-stepwise"].test_loglik - fits["em"].test_loglik) < 0.01
    cavi, svi = fits["cavi"].objective, fits["svi"].objective
    assert abs(svi - cavi) < 1e-3 * abs(cavi)
    # The SVI row's objective is the ELBO of its final factors on all training points.
    x = data.x_train
    assert svi == pytest.approx(fits["svi"].model.objective(x) / len(x), rel=1e-12)
    assert len(fits["svi"].history) == fits["svi"].model.n_iter_

    figure = compare.plot_passes(fits)
    likelihood, variational = ({line.get_label() for line in ax.get_lines()}
                               for ax in figure.axes[:2])
    assert likelihood == {"EM", "stepwise EM, batches of 100"}
    assert variational == {"CAVI", "SVI natural gradient, batches of 100"}


def test_a_vae_step_counts_as_a_batch_of_a_pass():
    data = compare.load_data("blobs", quick=True)
    settings = compare.Settings.quick(components=3, vae_batch=60)
    fit = compare.run_comparison(data, settings, ["vae-linear"])["vae-linear"]
    assert fit.passes_per_entry == pytest.approx(60 / len(data.x_train))


def test_digits_are_whitened_principal_components_of_the_project_split():
    from ppl_vae.data import load_dataset

    data = compare.load_data("digits", pca_dims=3)
    digits = load_dataset("digits")
    assert data.x_train.shape == (len(digits.x_train), 3)
    assert data.x_test.shape == (len(digits.x_test), 3)
    np.testing.assert_array_equal(data.y_test, digits.y_test.numpy())
    # Whitened on the training set: zero mean, identity covariance (ddof=1, as PCA's).
    np.testing.assert_allclose(data.x_train.mean(0), 0, atol=1e-10)
    np.testing.assert_allclose(np.cov(data.x_train.T), np.eye(3), atol=1e-8)
    fit = compare.run_comparison(data, compare.Settings.quick(), ["em"])["em"]
    assert fit.components == 10  # one component per digit by default
    assert fit.test_loglik == pytest.approx(fit.model.score(data.x_test))


@pytest.mark.slow
def test_em_cavi_and_pyro_map_recover_the_blobs_means():
    data = compare.load_data("blobs")
    fits = compare.run_comparison(data, compare.Settings(svi_steps=300),
                                  ["em", "cavi", "pyro-map"])
    for method, fit in fits.items():
        means = align_components(BLOBS_MEANS, {"means": fit.means})["means"]
        error = np.abs(means - BLOBS_MEANS).max()
        assert error < MEANS_TOLERANCE, f"{method}: means off by {error:.3f}\n{means}"
        assert fit.ari > 0.9, method


@pytest.mark.slow
def test_nuts_and_cavi_posterior_means_agree():
    """On 240 blob points the two posteriors (different priors, both weak) have means
    within one posterior standard deviation of each other, component by component."""
    data = compare.load_data("blobs", quick=True)
    settings = compare.Settings(components=3, nuts_draws=100, svi_steps=200,
                                posterior_draws=2000)
    exports = compare.posterior_exports(data, {}, settings)
    nuts, cavi = (exports[name].posterior for name in ("NUTS", "CAVI"))
    for name in ("weights", "means"):
        nuts_mean = nuts[name].mean(("chain", "draw")).values
        cavi_mean = cavi[name].mean(("chain", "draw")).values
        sd = np.maximum(nuts[name].std(("chain", "draw")).values,
                        cavi[name].std(("chain", "draw")).values)
        assert np.all(np.abs(nuts_mean - cavi_mean) < sd), (name, nuts_mean, cavi_mean, sd)
    # The forest figure and the side-by-side summary of the same exports.
    summary = compare.posterior_summary(exports)
    assert len(summary) == 3 + 3 * 2
    assert set(summary.columns.get_level_values(0)) == {"CAVI", "SVI meanfield", "NUTS"}


def test_a_linear_decoder_vae_is_the_gaussian_mixture_it_implies():
    """log p(x) of the implied mixture against importance sampling from the MoG prior."""
    torch.manual_seed(0)
    vae = build_vae(Dims(data_dim=3, latent_dim=2, num_data=10), prior="mog",
                    likelihood="gaussian-diagonal", hidden=(),
                    prior_options={"num_components": 3}).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    weights, means, covariances = compare.implied_mixture(vae)
    exact = compare.mixture_log_likelihood(x.numpy(), weights, means, covariances)

    def prior_proposal(rows, xb, yb):
        return vae.prior().expand((len(xb),))

    estimate = log_likelihood(vae, x, num_samples=200_000, proposal=prior_proposal)
    np.testing.assert_allclose(estimate.numpy(), exact, atol=0.02)


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "mnist"], "--dataset must be one of digits, blobs, or a .npy/.npz file; "
                             "got 'mnist'"),
    (["--methods", "em,gibbs"], "unknown method(s) gibbs"),
    (["--nuts-draws", "0"], "--nuts-draws must be a positive integer; got 0"),
    (["--pca-dims", "65"], "--pca-dims must be between 1 and 64; got 65"),
])
def test_user_errors_are_one_line_and_exit_2(argv, message, tmp_path, capsys):
    assert commands.main(["compare", *argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_script_runs_the_same_command(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare.py"), "--dataset",
                             "nope", "--out", str(tmp_path / "out")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr == ("error: --dataset must be one of digits, blobs, or a .npy/.npz "
                             "file; got 'nope'\n")
