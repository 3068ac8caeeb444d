"""BayesianGaussianMixture (CAVI) against scikit-learn, PRML's bound, and scipy."""

import math

import numpy as np
import pytest
from scipy.special import gammaln, logsumexp
from scipy.stats import multivariate_t
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import BayesianGaussianMixture as SklearnBGM

from ppl_vae.errors import ConfigError
from ppl_vae.mixture import BayesianGaussianMixture

COVARIANCE_TYPES = ["full", "tied", "diag", "spherical"]
PRIOR_TYPES = ["dirichlet_distribution", "dirichlet_process"]
NOT_CONVERGED = pytest.mark.filterwarnings(
    "ignore::sklearn.exceptions.ConvergenceWarning",
    "ignore::ppl_vae.mixture.ConvergenceWarning",
)



def blobs(n_per=150, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.array([[0, 0, 0], [6, 6, 0], [0, 7, 7]], dtype=float)
    parts = zip(centres, [1.0, 0.6, 1.5], strict=True)
    X = np.concatenate([rng.normal(size=(n_per, 3)) * s + c for c, s in parts])
    return X, np.repeat(np.arange(3), n_per)


def start_resp(X, n_components, seed=0):
    labels = KMeans(n_components, n_init=1, random_state=seed).fit(X).labels_
    return np.eye(n_components)[labels]


def sklearn_from(resp, **kwargs):
    """scikit-learn's BGM started from the given responsibilities (its private hook)."""

    class FromResp(SklearnBGM):
        def _initialize_parameters(self, X, random_state, xp=None):
            self._initialize(X, resp)

    return FromResp(**kwargs)


def constant_gap(model, X):
    """PRML's complete bound minus scikit-learn's, from the priors alone (see the Notes of
    BayesianGaussianMixture); scikit-learn's Wishart normaliser also leaves out the
    d(d-1)/4 log(pi) of the multivariate gamma function."""
    n, d = X.shape
    k = model.n_components
    nu0, beta0 = model.degrees_of_freedom_prior_, model.mean_precision_prior_
    cov0 = np.atleast_1d(model.covariance_prior_)
    if model.covariance_type in ("full", "tied"):
        log_det_cov0 = np.linalg.slogdet(cov0)[1]
    elif model.covariance_type == "diag":
        log_det_cov0 = np.log(cov0).sum()
    else:
        log_det_cov0 = d * np.log(cov0[0])
    log_b0 = (0.5 * nu0 * log_det_cov0 - 0.5 * nu0 * d * np.log(2)
              - 0.25 * d * (d - 1) * np.log(np.pi) - gammaln(0.5 * (nu0 - np.arange(d))).sum())
    alpha0 = model.weight_concentration_prior_
    if model.weight_concentration_prior_type == "dirichlet_distribution":
        c_pi = gammaln(k * alpha0) - k * gammaln(alpha0)
    else:
        c_pi = k * np.log(alpha0)
    return (-0.5 * n * d * np.log(2 * np.pi) + 0.5 * k * d * np.log(beta0) + k * log_b0
            + 0.25 * k * d * (d - 1) * np.log(np.pi) + c_pi)


@NOT_CONVERGED
@pytest.mark.parametrize("prior_type", PRIOR_TYPES)
@pytest.mark.parametrize("cov_type", COVARIANCE_TYPES)
def test_cavi_matches_sklearn_from_same_responsibilities(cov_type, prior_type):
    X, _ = blobs()
    resp = start_resp(X, 4)
    kw = dict(n_components=4, covariance_type=cov_type, max_iter=30, tol=0,
              weight_concentration_prior_type=prior_type)
    ref = sklearn_from(resp, **kw).fit(X)
    ours = BayesianGaussianMixture(resp_init=resp, dtype="float64", **kw).fit(X)
    names = ["weights_", "means_", "precisions_", "covariances_", "precisions_cholesky_",
             "mean_precision_", "degrees_of_freedom_"]
    for name in names:
        np.testing.assert_allclose(getattr(ours, name), getattr(ref, name), rtol=1e-5,
                                   atol=1e-10, err_msg=name)
    np.testing.assert_allclose(np.ravel(ours.weight_concentration_),
                               np.ravel(ref.weight_concentration_), rtol=1e-5)
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), atol=1e-8)
    # The complete bound is scikit-learn's plus a constant fixed by the priors.
    gap = np.ravel(ours.lower_bounds_) - np.ravel(ref.lower_bounds_)
    np.testing.assert_allclose(gap, constant_gap(ref, X), rtol=1e-9)


@NOT_CONVERGED
@pytest.mark.parametrize("cov_type", ["full", "diag"])
def test_float32_default_agrees_with_sklearn(cov_type):
    X, _ = blobs(seed=1)
    resp = start_resp(X, 3)
    kw = dict(n_components=3, covariance_type=cov_type, max_iter=30, tol=0,
              weight_concentration_prior_type="dirichlet_distribution")
    ref = sklearn_from(resp, **kw).fit(X)
    ours = BayesianGaussianMixture(resp_init=resp, **kw).fit(X)
    scale = np.abs(ref.means_).max()
    np.testing.assert_allclose(ours.means_, ref.means_, atol=1e-5 * scale)
    np.testing.assert_allclose(ours.weights_, ref.weights_, atol=1e-5)
    np.testing.assert_allclose(ours.precisions_, ref.precisions_, rtol=1e-4,
                               atol=1e-5 * np.abs(ref.precisions_).max())


@NOT_CONVERGED
@pytest.mark.parametrize("prior_type", PRIOR_TYPES)
@pytest.mark.parametrize("cov_type", COVARIANCE_TYPES)
def test_lower_bound_never_decreases(cov_type, prior_type):
    X, _ = blobs(seed=2)
    bgm = BayesianGaussianMixture(6, covariance_type=cov_type, max_iter=50, tol=0,
                                  weight_concentration_prior_type=prior_type,
                                  init_params="random", random_state=0, dtype="float64").fit(X)
    bounds = np.array(bgm.lower_bounds_)
    assert len(bounds) == 50
    assert np.all(np.diff(bounds) >= -1e-10 * np.abs(bounds[1:]))


def test_lower_bound_is_below_the_log_likelihood_of_a_good_fit():
    # log p(X) >= ELBO; the ML log-likelihood of the fitted means is a loose stand-in for
    # log p(X) from above, so a complete bound must lie below it.
    from ppl_vae.mixture import GaussianMixture

    X, _ = blobs(seed=3)
    bgm = BayesianGaussianMixture(3, random_state=0, max_iter=300).fit(X)
    ml = GaussianMixture(3, random_state=0).fit(X)
    assert bgm.lower_bound_ < ml.score(X) * len(X)
    assert bgm.lower_bound_ > ml.score(X) * len(X) - 200  # nats: the bound is not vacuous


@pytest.mark.parametrize("prior_type", PRIOR_TYPES)
def test_unneeded_components_fade(prior_type):
    X, y = blobs(n_per=100, seed=4)
    bgm = BayesianGaussianMixture(10, weight_concentration_prior_type=prior_type,
                                  weight_concentration_prior=1e-2, random_state=0,
                                  max_iter=500).fit(X)
    assert np.sum(bgm.weights_ > 0.01) <= 3
    assert adjusted_rand_score(y, bgm.predict(X)) >= 0.95


def student_t_mixture(bgm, X, extra=None):
    """The posterior predictive (PRML 10.81) with scipy's multivariate t."""
    d = X.shape[1]
    if bgm.weight_concentration_prior_type == "dirichlet_distribution":
        alpha = bgm.weight_concentration_
        pi, rest = alpha / alpha.sum(), 0.0
    else:
        a, b = bgm.weight_concentration_
        stick = b / (a + b)
        pi = a / (a + b) * np.concatenate([[1.0], np.cumprod(stick)[:-1]])
        rest = np.prod(stick)
    terms = []
    for k in range(bgm.n_components):
        nu = bgm.degrees_of_freedom_[k]
        beta = bgm.mean_precision_[k]
        W = bgm.precisions_[k] / nu
        L = (nu + 1 - d) * beta / (1 + beta) * W
        terms.append(np.log(pi[k]) + multivariate_t(bgm.means_[k], np.linalg.inv(L),
                                                    df=nu + 1 - d).logpdf(X))
    if rest > 0:
        nu0, beta0 = bgm.degrees_of_freedom_prior_, bgm.mean_precision_prior_
        L0 = (nu0 + 1 - d) * beta0 / (1 + beta0) * np.linalg.inv(bgm.covariance_prior_)
        terms.append(np.log(rest) + multivariate_t(bgm.mean_prior_, np.linalg.inv(L0),
                                                   df=nu0 + 1 - d).logpdf(X))
    return logsumexp(terms, axis=0)


@pytest.mark.parametrize("prior_type", PRIOR_TYPES)
def test_score_samples_is_the_student_t_predictive(prior_type):
    X, _ = blobs(n_per=15, seed=5)
    bgm = BayesianGaussianMixture(3, weight_concentration_prior_type=prior_type,
                                  random_state=0, dtype="float64").fit(X)
    probe = np.concatenate([X[:10], X[:5] + 3.0])
    np.testing.assert_allclose(bgm.score_samples(probe), student_t_mixture(bgm, probe),
                               rtol=1e-9)
    assert bgm.score(probe) == pytest.approx(bgm.score_samples(probe).mean(), rel=1e-12)


def test_predictive_integrates_to_one_in_one_dimension():
    rng = np.random.default_rng(6)
    X = np.concatenate([rng.normal(-2, 0.5, (30, 1)), rng.normal(3, 1.0, (20, 1))])
    bgm = BayesianGaussianMixture(4, random_state=0).fit(X)
    grid = np.linspace(-60, 60, 240001)[:, None]
    density = np.exp(bgm.score_samples(grid))
    assert np.trapezoid(density, grid[:, 0]) == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("cov_type", COVARIANCE_TYPES)
def test_recovers_well_separated_blobs(cov_type):
    X, y = blobs(seed=7)
    bgm = BayesianGaussianMixture(3, covariance_type=cov_type, random_state=0,
                                  max_iter=300).fit(X)
    assert adjusted_rand_score(y, bgm.predict(X)) >= 0.95
    np.testing.assert_allclose(bgm.predict_proba(X).sum(1), 1.0, rtol=1e-12)


@NOT_CONVERGED
def test_chunked_e_step_equals_one_chunk():
    X, _ = blobs(seed=8)
    kw = dict(n_components=4, random_state=0, max_iter=10, tol=0, init_params="random",
              dtype="float64")
    whole = BayesianGaussianMixture(chunk_size=len(X), **kw).fit(X)
    chunked = BayesianGaussianMixture(chunk_size=29, **kw).fit(X)
    np.testing.assert_allclose(chunked.lower_bounds_, whole.lower_bounds_, rtol=1e-12)
    np.testing.assert_allclose(chunked.means_, whole.means_, rtol=1e-10)


def test_default_priors_are_sklearns():
    X, _ = blobs(seed=9)
    ours = BayesianGaussianMixture(3, covariance_type="diag", max_iter=2, tol=10.0,
                                   random_state=0).fit(X)
    assert ours.weight_concentration_prior_ == pytest.approx(1 / 3)
    assert ours.mean_precision_prior_ == 1.0
    assert ours.degrees_of_freedom_prior_ == 3.0
    np.testing.assert_allclose(ours.mean_prior_, X.mean(0), rtol=1e-12)
    np.testing.assert_allclose(ours.covariance_prior_, X.var(0, ddof=1), rtol=1e-10)


BAD = [
    (dict(degrees_of_freedom_prior=1.5), "degrees_of_freedom_prior must be greater than"),
    (dict(weight_concentration_prior_type="pitman_yor"), "weight_concentration_prior_type"),
    (dict(weight_concentration_prior=0.0), "weight_concentration_prior must be a positive"),
    (dict(mean_prior=[0.0, 1.0]), "mean_prior must be 3 finite numbers"),
    (dict(covariance_prior=np.eye(2)), r"covariance_prior .* must have shape \(3, 3\)"),
    (dict(resp_init=np.ones((5, 3))), r"resp_init must have shape \(450, 3\)"),
]


@pytest.mark.parametrize("kwargs, message", BAD)
def test_bad_settings_raise_config_error(kwargs, message):
    X, _ = blobs(seed=10)
    with pytest.raises(ConfigError, match=message):
        BayesianGaussianMixture(3, **kwargs).fit(X)


def test_tied_degrees_of_freedom_is_a_number():
    X, _ = blobs(seed=11)
    bgm = BayesianGaussianMixture(3, covariance_type="tied", random_state=0).fit(X)
    assert isinstance(bgm.degrees_of_freedom_, float)
    assert bgm.degrees_of_freedom_ == pytest.approx(3 + len(X) / 3, rel=1e-9)
    assert math.isfinite(bgm.lower_bound_)
