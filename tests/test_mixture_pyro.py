"""The Pyro mixture (SVI with enumeration, NUTS) and the ArviZ exports.

Oracles: the true parameters of synthetic blobs, scikit-learn's EM and mean-field
mixtures, scipy.stats densities, closed-form moments of the CAVI posterior, and NUTS as
the reference posterior for the meanfield guide.
"""

import copy

import arviz as az
import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import BayesianGaussianMixture as SkBayesianGaussianMixture
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from ppl_vae.errors import ConfigError, DataError, NotFittedError
from ppl_vae.mixture.arviz_export import (
    align_components,
    cavi_posterior_samples,
    cavi_to_arviz,
    nuts_to_arviz,
    svi_to_arviz,
)
from ppl_vae.mixture.bayesian_mixture import BayesianGaussianMixture
from ppl_vae.mixture.pyro_gmm import MixturePrior, PyroGaussianMixture, mixture_model, nuts_gmm

TRUE_WEIGHTS = np.array([0.25, 0.35, 0.40])
TRUE_MEANS = np.array([[-4.0, 0.0], [4.0, 0.0], [0.0, 6.0]])
TRUE_COVARIANCES = np.array([
    [[1.0, 0.5], [0.5, 1.0]],
    [[0.5, 0.0], [0.0, 1.5]],
    [[1.0, -0.3], [-0.3, 0.6]],
])


def blobs(n=300, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.choice(3, size=n, p=TRUE_WEIGHTS)
    chol = np.linalg.cholesky(TRUE_COVARIANCES)
    X = TRUE_MEANS[labels] + np.einsum("nij,nj->ni", chol[labels], rng.standard_normal((n, 2)))
    return X, labels


def mixture_loglik(X, weights, means, covariances):
    """sum_n logsumexp_k [log pi_k + log N(x_n | mu_k, Sigma_k)] with scipy."""
    log_joint = np.stack([
        np.log(w) + multivariate_normal(m, c).logpdf(X)
        for w, m, c in zip(weights, means, covariances, strict=True)
    ], axis=1)
    return logsumexp(log_joint, axis=1)


def posterior_predictive_loglik(X, samples):
    """log (1/S) sum_s p(x | theta_s), per point, with scipy."""
    per_draw = np.stack([
        mixture_loglik(X, w, m, c)
        for w, m, c in zip(samples["weights"], samples["means"], samples["covariances"],
                           strict=True)
    ])
    return logsumexp(per_draw, axis=0) - np.log(len(per_draw))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These tensors are tiny: on shared cores a second thread only adds contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def blob_data():
    return blobs()


@pytest.fixture(scope="module")
def map_fit(blob_data):
    X, _ = blob_data
    return PyroGaussianMixture(3, guide="map", num_steps=200, random_state=0).fit(X)


@pytest.fixture(scope="module")
def small_data():
    """60 points, two components in 2-D: small enough for NUTS in a test."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, size=60)
    means = np.array([[-2.0, 0.0], [2.0, 1.0]])
    return means[labels] + 0.7 * rng.standard_normal((60, 2)), means


@pytest.fixture(scope="module")
def nuts_fit(small_data):
    X, _ = small_data
    return nuts_gmm(X, 2, num_samples=150, warmup_steps=150, random_state=0)


@pytest.fixture(scope="module")
def meanfield_fit(small_data):
    X, _ = small_data
    return PyroGaussianMixture(2, guide="meanfield", num_steps=400, random_state=0).fit(X)


# ----------------------------------------------------------------------------- the model


@pytest.mark.parametrize("d, batch_size", [(1, None), (2, None), (3, None), (2, 10)])
def test_enumerated_likelihood_equals_scipy_logsumexp(d, batch_size):
    """TraceEnum_ELBO at fixed parameters, less the priors' log density, is -log p(X | theta).

    With a minibatch (its indices fixed by conditioning the plate's subsample site), the
    data term is N/B times the minibatch's: the full-data ELBO's unbiased estimate.
    """
    rng = np.random.default_rng(d)
    k, n = 3, 25
    X = torch.as_tensor(rng.standard_normal((n, d)) * 2.0)
    a = rng.standard_normal((k, d, d))
    covariances = a @ a.transpose(0, 2, 1) + 0.5 * np.eye(d)
    scales = np.sqrt(np.diagonal(covariances, axis1=1, axis2=2))
    theta = {
        "weights": torch.as_tensor(rng.dirichlet(np.ones(k))),
        "means": torch.as_tensor(rng.standard_normal((k, d))),
        "scales": torch.as_tensor(scales),
    }
    if d > 1:
        corr = covariances / (scales[:, :, None] * scales[:, None, :])
        theta["corr_cholesky"] = torch.as_tensor(np.linalg.cholesky(corr))
    rows = np.arange(n) if batch_size is None else rng.choice(n, batch_size, replace=False)
    data = dict(theta) if batch_size is None else {**theta, "data": torch.as_tensor(rows)}
    conditioned = poutine.condition(mixture_model, data=data)

    no_guide = lambda *args, **kwargs: None  # noqa: E731 - every latent is enumerated
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(conditioned, no_guide, X, k,
                                                    batch_size=batch_size)
    trace = poutine.trace(conditioned).get_trace(X, k, batch_size=batch_size)
    trace.compute_log_prob()
    log_prior = sum(float(trace.nodes[name]["log_prob_sum"]) for name in theta)

    per_point = mixture_loglik(X.numpy()[rows], theta["weights"].numpy(),
                               theta["means"].numpy(), covariances)
    assert -(loss + log_prior) == pytest.approx(n / len(rows) * per_point.sum(), rel=1e-10)


# ----------------------------------------------------------------------------- MAP by SVI


def test_map_recovers_blobs(blob_data, map_fit):
    X, labels = blob_data
    assert adjusted_rand_score(labels, map_fit.predict(X)) >= 0.95
    fitted = align_components(TRUE_MEANS, {"means": map_fit.means_,
                                           "weights": map_fit.weights_})
    counts = np.bincount(labels, minlength=3)
    # The sample mean of n_k points has std sqrt(Sigma_jj / n_k) <= sqrt(1.5 / 75) ~ 0.14;
    # 4 of those, per coordinate.
    tolerance = 4 * np.sqrt(np.diagonal(TRUE_COVARIANCES, axis1=1, axis2=2) / counts[:, None])
    assert np.all(np.abs(fitted["means"] - TRUE_MEANS) < tolerance)
    # Binomial std of a frequency, sqrt(0.4 * 0.6 / 300) ~ 0.028, 4 of those; and with
    # separated blobs the weights are the observed frequencies (mean responsibilities).
    assert np.all(np.abs(fitted["weights"] - TRUE_WEIGHTS) < 0.11)
    np.testing.assert_allclose(fitted["weights"], counts / len(labels), atol=0.01)


def test_map_agrees_with_em(blob_data, map_fit):
    """MAP under the weak prior is EM's maximum-likelihood answer, shifted by the prior only.

    Tolerances: the flat Dirichlet leaves the weights' optimum where EM's is (5e-4 covers
    the optimiser); the means' Normal prior (10 data stds) adds a precision ~1e-5 of the
    likelihood's, so means agree to 2e-3; the LogNormal prior on the scales acts like
    about one extra pseudo-observation per ~100 points, so covariances agree to 3 % and
    the mean log-likelihood to 1e-3 nats.
    """
    X, _ = blob_data
    em = SkGaussianMixture(3, tol=1e-10, max_iter=1000, random_state=0).fit(X)
    ours = align_components(em.means_, {"weights": map_fit.weights_, "means": map_fit.means_,
                                        "covariances": map_fit.covariances_})
    np.testing.assert_allclose(ours["weights"], em.weights_, atol=5e-4)
    np.testing.assert_allclose(ours["means"], em.means_, atol=2e-3)
    np.testing.assert_allclose(ours["covariances"], em.covariances_, rtol=0.03, atol=0.01)
    assert map_fit.score(X) == pytest.approx(em.score(X), abs=1e-3)
    assert map_fit.score(X) <= em.score(X) + 1e-6  # EM maximises exactly this


def test_lower_bounds_are_elbo_per_example(blob_data, map_fit):
    """For MAP, -loss/N = [log p(X | theta) + log p(theta)] / N: the last bound is the
    log-likelihood per example plus the prior's log density (standardized coordinates) / N."""
    X, _ = blob_data
    n = X.shape[0]
    assert map_fit.n_iter_ == len(map_fit.lower_bounds_) == 200
    conditioned = poutine.condition(mixture_model, data=map_fit._point)
    Z = (torch.as_tensor(X) - map_fit._center) / map_fit._spread
    trace = poutine.trace(conditioned).get_trace(Z, 3, **map_fit._model_kwargs)
    trace.compute_log_prob()
    log_prior = sum(float(trace.nodes[name]["log_prob_sum"]) for name in map_fit._point)
    loglik = mixture_loglik(X, map_fit.weights_, map_fit.means_, map_fit.covariances_).sum()
    assert map_fit.lower_bounds_[-1] == pytest.approx((loglik + log_prior) / n, abs=1e-6)


def test_scoring_invariants_and_scipy(blob_data, map_fit):
    X, _ = blob_data
    proba = map_fit.predict_proba(X)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-12)
    # predict is infer_discrete's MAP assignment; it must be the argmax of the posterior.
    np.testing.assert_array_equal(map_fit.predict(X), proba.argmax(1))
    scores = map_fit.score_samples(X)
    assert map_fit.score(X) == pytest.approx(scores.mean(), rel=1e-12)
    expected = mixture_loglik(X, map_fit.weights_, map_fit.means_, map_fit.covariances_)
    np.testing.assert_allclose(scores, expected, rtol=1e-10)
    # Streaming the rows in small chunks changes nothing.
    chunked = copy.copy(map_fit)
    chunked._chunk_elements = 7
    np.testing.assert_allclose(chunked.score_samples(X), scores, rtol=1e-12)
    np.testing.assert_allclose(chunked.predict_proba(X), proba, rtol=1e-12)
    np.testing.assert_array_equal(chunked.predict(X), proba.argmax(1))


def test_posterior_samples_of_map_are_the_point(map_fit):
    samples = map_fit.posterior_samples(4, random_state=0)
    np.testing.assert_allclose(samples["means"], np.broadcast_to(map_fit.means_, (4, 3, 2)),
                               rtol=1e-12)
    np.testing.assert_allclose(samples["scales"] ** 2,
                               np.diagonal(samples["covariances"], axis1=-2, axis2=-1))
    np.testing.assert_allclose(samples["weights"].sum(1), 1.0)


def test_seed_reproducible_and_global_rng_untouched():
    X, _ = blobs(60, seed=3)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    fits = [PyroGaussianMixture(3, guide="meanfield", num_steps=5, batch_size=20,
                                random_state=7).fit(X)
            for _ in range(2)]
    assert torch.equal(torch.get_rng_state(), before)
    np.testing.assert_array_equal(fits[0].lower_bounds_, fits[1].lower_bounds_)
    np.testing.assert_array_equal(fits[0].means_, fits[1].means_)


# ----------------------------------------------------------------------------- NUTS


@pytest.mark.slow
def test_nuts_recovers_means_and_scores(small_data, nuts_fit):
    X, true_means = small_data
    means = align_components(true_means, nuts_fit.samples)["means"]
    assert np.all(np.abs(means.mean(0) - true_means) < 3.5 * means.std(0))
    scores = nuts_fit.score_samples(X)
    np.testing.assert_allclose(scores, posterior_predictive_loglik(X, nuts_fit.samples),
                               rtol=1e-10)
    assert nuts_fit.score(X) == pytest.approx(scores.mean(), rel=1e-12)
    proba = nuts_fit.predict_proba(X)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(nuts_fit.predict(X), proba.argmax(1))


@pytest.mark.slow
def test_meanfield_agrees_with_nuts(small_data, nuts_fit, meanfield_fit):
    """Both approximate one posterior: the meanfield means and weights sit within two NUTS
    posterior stds of NUTS's, and its posterior stds are of the same size."""
    _, true_means = small_data
    nuts = align_components(true_means, nuts_fit.samples)
    svi = align_components(true_means, meanfield_fit.posterior_samples(2000, random_state=0))
    for name in ("means", "weights", "scales"):
        sd = nuts[name].std(0)
        assert np.all(np.abs(svi[name].mean(0) - nuts[name].mean(0)) < 2 * sd), name
        np.testing.assert_allclose(svi[name].std(0), sd, rtol=0.5)


# ----------------------------------------------------------------------------- labels


def test_align_components_undoes_permutations():
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((4, 3)) * 5
    draws = {"means": reference + 0.1 * rng.standard_normal((50, 4, 3)),
             "weights": rng.dirichlet(np.ones(4), size=50),
             "covariances": np.broadcast_to(np.eye(3), (50, 4, 3, 3)) * np.arange(1, 5)[:, None,
                                                                                         None],
             "num_steps": np.array(7)}
    perms = np.stack([rng.permutation(4) for _ in range(50)])
    shuffled = {name: np.take_along_axis(value, perms.reshape(50, 4, *[1] * (value.ndim - 2)), 1)
                for name, value in draws.items() if name != "num_steps"}
    shuffled["num_steps"] = draws["num_steps"]
    aligned = align_components(reference, shuffled)
    for name, value in draws.items():
        np.testing.assert_array_equal(aligned[name], value)
    point = align_components(reference, {"means": reference[::-1]})
    np.testing.assert_array_equal(point["means"], reference)


# ----------------------------------------------------------------------------- ArviZ


def _expected_weights(bgm):
    """E[weights] under q: Dirichlet mean, or E[v_k] prod_{j<k} E[1 - v_j] with v_K = 1."""
    if bgm.weight_concentration_prior_type == "dirichlet_process":
        alpha, beta = (np.asarray(c, dtype=float) for c in bgm.weight_concentration_)
        v = alpha / (alpha + beta)
        return np.append(v[:-1], 1.0) * np.cumprod(np.append(1.0, 1 - v[:-1]))
    alpha = np.asarray(bgm.weight_concentration_, dtype=float)
    return alpha / alpha.sum()


def _check_cavi_moments(bgm, d, s=4000):
    """Draws against q's closed-form moments, within 4.5 Monte Carlo standard errors."""
    draws = cavi_posterior_samples(bgm, s, random_state=0)

    def close(sample, expected):
        stderr = sample.std(0) / np.sqrt(s)
        assert np.all(np.abs(sample.mean(0) - expected) < 4.5 * stderr + 1e-12)

    precisions = np.asarray(bgm.precisions_, dtype=float)
    close(draws["weights"], _expected_weights(bgm))
    close(draws["precisions"], precisions)  # E[Lambda] = nu W
    close(draws["means"], np.asarray(bgm.means_, dtype=float))
    np.testing.assert_allclose(draws["weights"].sum(1), 1.0)
    # Var(mean_kj) = E[(beta Lambda)^-1]_jj = W^-1_jj / (beta (nu - d - 1)).
    nu = np.asarray(bgm.degrees_of_freedom_, dtype=float)
    inverse_w = np.linalg.inv(precisions / nu[:, None, None])
    expected_var = np.diagonal(inverse_w, axis1=1, axis2=2) / (
        np.asarray(bgm.mean_precision_, dtype=float) * (nu - d - 1))[:, None]
    np.testing.assert_allclose(draws["means"].var(0), expected_var, rtol=0.1)


@pytest.mark.parametrize("prior_type", ["dirichlet_distribution", "dirichlet_process"])
def test_cavi_draws_match_closed_form_moments(blob_data, prior_type):
    X, _ = blob_data
    bgm = SkBayesianGaussianMixture(n_components=3, weight_concentration_prior_type=prior_type,
                                    max_iter=500, random_state=0).fit(X)
    _check_cavi_moments(bgm, X.shape[1])


def _check_export(idata, reference):
    posterior = idata.posterior
    assert posterior["weights"].dims == ("chain", "draw", "component")
    assert posterior["means"].dims == ("chain", "draw", "component", "feature")
    assert posterior["scales"].dims == ("chain", "draw", "component", "feature")
    np.testing.assert_allclose(posterior["weights"].sum("component"), 1.0)
    # Aligned to the reference: component k is the one whose mean is nearest reference[k].
    means = posterior["means"].mean(("chain", "draw")).values
    distance = np.linalg.norm(means[:, None, :] - reference[None, :, :], axis=-1)
    np.testing.assert_array_equal(distance.argmin(1), np.arange(len(reference)))
    summary = az.summary(idata, var_names=["means"], kind="stats")
    np.testing.assert_allclose(summary["mean"].values, means.ravel(), atol=1e-3)


@pytest.mark.slow  # its NUTS fit is the module's slowest fixture
def test_arviz_exports_side_by_side(small_data, nuts_fit, meanfield_fit):
    X, true_means = small_data
    reference = true_means[::-1]  # not the order any method found on its own
    bgm = SkBayesianGaussianMixture(n_components=2, max_iter=500, random_state=0).fit(X)
    exports = {
        "cavi": cavi_to_arviz(bgm, 500, random_state=0, reference_means=reference),
        "svi": svi_to_arviz(meanfield_fit, 500, random_state=0, reference_means=reference),
        "nuts": nuts_to_arviz(nuts_fit, reference_means=reference),
    }
    for idata in exports.values():
        _check_export(idata, reference)
    assert int(exports["nuts"].sample_stats["diverging"].sum()) == 0
    # Three approximations of one posterior: the same means, component by component.
    nuts = exports["nuts"].posterior
    for name in ("cavi", "svi"):
        other = exports[name].posterior
        gap = np.abs(other["means"].mean(("chain", "draw")) - nuts["means"].mean(("chain", "draw")))
        assert np.all(gap < 2 * nuts["means"].std(("chain", "draw"))), name
    axes = az.plot_forest(list(exports.values()), model_names=list(exports), var_names=["means"])
    assert len(axes) == 1
    import matplotlib.pyplot as plt

    plt.close("all")


def test_svi_export_of_map_is_the_point(map_fit):
    idata = svi_to_arviz(map_fit, 10, reference_means=TRUE_MEANS)
    expected = align_components(TRUE_MEANS, {"means": map_fit.means_})["means"]
    np.testing.assert_allclose(idata.posterior["means"].values[0, 3], expected, rtol=1e-12)


@pytest.mark.parametrize("prior_type", ["dirichlet_distribution", "dirichlet_process"])
def test_cavi_export_with_ours(blob_data, prior_type):
    """The same checks on this project's CAVI mixture."""
    X, _ = blob_data
    ours = BayesianGaussianMixture(
        n_components=3, weight_concentration_prior_type=prior_type, max_iter=500,
        random_state=0, device="cpu",
    ).fit(X)
    _check_cavi_moments(ours, X.shape[1])
    _check_export(cavi_to_arviz(ours, 500, random_state=0, reference_means=TRUE_MEANS),
                  TRUE_MEANS)


# ----------------------------------------------------------------------------- bad inputs


def test_bad_inputs_raise_documented_errors(blob_data):
    X, _ = blob_data
    bad = X.copy()
    bad[5, 1] = np.nan
    with pytest.raises(DataError, match="NaN"):
        PyroGaussianMixture(3).fit(bad)
    with pytest.raises(DataError, match="NaN"):
        nuts_gmm(bad, 2, num_samples=1, warmup_steps=1)
    with pytest.raises(DataError, match=r"expected data of shape \(N, D\)"):
        PyroGaussianMixture(3).fit(X[:, 0])
    known = "unknown guide 'laplace'; known guides: 'map', 'meanfield'"
    with pytest.raises(ConfigError, match=known):
        PyroGaussianMixture(3, guide="laplace").fit(X)
    with pytest.raises(ConfigError, match="n_components"):
        PyroGaussianMixture(0).fit(X)
    with pytest.raises(DataError, match="constant"):
        PyroGaussianMixture(2).fit(np.column_stack([X[:, 0], np.ones(len(X))]))
    with pytest.raises(DataError, match="too few"):
        PyroGaussianMixture(5).fit(X[:3])
    with pytest.raises(NotFittedError, match=r"call fit\(X\) first"):
        PyroGaussianMixture(3).predict(X)
    with pytest.raises(DataError, match=r"expected data of shape \(N, 2\)"):
        PyroGaussianMixture(2, num_steps=1).fit(X).predict_proba(X[:, :1])
    with pytest.raises(DataError, match="do not match"):
        align_components(np.zeros((2, 2)), {"means": np.zeros((3, 2))})
    with pytest.raises(ConfigError, match="covariance_type='full'"):
        cavi_posterior_samples(SkBayesianGaussianMixture(n_components=2, covariance_type="diag",
                                                         random_state=0).fit(X), 5)


@pytest.mark.cuda
def test_cuda_fit_matches_cpu(blob_data):
    X, _ = blob_data
    fits = [PyroGaussianMixture(3, num_steps=100, random_state=0, device=device).fit(X)
            for device in ("cpu", "cuda")]
    np.testing.assert_allclose(fits[1].means_, fits[0].means_, atol=1e-3)
    np.testing.assert_allclose(fits[1].score_samples(X), fits[0].score_samples(X), atol=1e-3)


def test_prior_is_used():
    """A strong prior on the means pulls MAP towards the data mean (sanity check of wiring)."""
    X, _ = blobs(60, seed=4)
    loose = PyroGaussianMixture(3, num_steps=100, random_state=0).fit(X)
    tight = PyroGaussianMixture(3, num_steps=100, random_state=0,
                                prior=MixturePrior(mean_scale=0.05)).fit(X)
    spread = [np.abs(m.means_ - X.mean(0)).max() for m in (loose, tight)]
    assert spread[1] < 0.5 * spread[0]
    assert pyro.get_param_store().keys() == set()  # each fit kept its own params
