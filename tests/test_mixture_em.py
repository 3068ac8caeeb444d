"""GaussianMixture (EM) against scikit-learn, invariants, chunking and bad inputs."""

import warnings

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal
from sklearn.exceptions import ConvergenceWarning as SklearnConvergenceWarning
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture as SklearnGaussianMixture

from ppl_vae.errors import ConfigError, DataError, NotFittedError
from ppl_vae.mixture import ConvergenceWarning, DegenerateDataWarning, GaussianMixture
from ppl_vae.mixture._covariance import covariance_type

COVARIANCE_TYPES = ["full", "tied", "diag", "spherical"]
NOT_CONVERGED = pytest.mark.filterwarnings(
    "ignore::sklearn.exceptions.ConvergenceWarning",
    "ignore::ppl_vae.mixture.ConvergenceWarning",
)



def blobs(n_per=200, seed=0, d=3):
    rng = np.random.default_rng(seed)
    centres = np.array([[0, 0, 0], [6, 6, 0], [0, 7, 7]], dtype=float)[:, :d]
    scales = [1.0, 0.6, 1.5]
    parts = zip(centres, scales, strict=True)
    X = np.concatenate([rng.normal(size=(n_per, d)) * s + c for c, s in parts])
    y = np.repeat(np.arange(3), n_per)
    return X, y


def sklearn_start(X, cov_type, n_components=3, seed=1):
    """Initial parameters from one scikit-learn iteration of a random start."""
    start = SklearnGaussianMixture(n_components, covariance_type=cov_type, max_iter=1, tol=0,
                                   init_params="random_from_data", random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SklearnConvergenceWarning)
        start.fit(X)
    return {"weights_init": start.weights_, "means_init": start.means_,
            "precisions_init": start.precisions_}


@NOT_CONVERGED
@pytest.mark.parametrize("cov_type", COVARIANCE_TYPES)
def test_lower_bound_matches_sklearn_from_same_start(cov_type):
    X, _ = blobs()
    init = sklearn_start(X, cov_type)
    ref = SklearnGaussianMixture(3, covariance_type=cov_type, max_iter=25, tol=0, **init).fit(X)
    ours = GaussianMixture(3, covariance_type=cov_type, max_iter=25, tol=0, **init).fit(X)
    assert ours.n_iter_ == ref.n_iter_ == 25
    np.testing.assert_allclose(ours.lower_bound_, ref.lower_bound_, rtol=1e-6)
    # float32 E-step: every iteration agrees to about 1e-6 (diag's matmul form is the loosest).
    np.testing.assert_allclose(ours.lower_bounds_, ref.lower_bounds_, rtol=5e-6)
    # In float64 the whole state agrees to rounding.
    exact = GaussianMixture(3, covariance_type=cov_type, max_iter=25, tol=0, dtype="float64",
                            **init).fit(X)
    np.testing.assert_allclose(exact.lower_bound_, ref.lower_bound_, rtol=1e-12)
    for name in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
        np.testing.assert_allclose(getattr(exact, name), getattr(ref, name), rtol=1e-8,
                                   atol=1e-10, err_msg=name)
    np.testing.assert_allclose(exact.predict_proba(X), ref.predict_proba(X), atol=1e-10)
    np.testing.assert_allclose(exact.score_samples(X), ref.score_samples(X), rtol=1e-10)
    np.testing.assert_allclose(exact.bic(X), ref.bic(X), rtol=1e-10)
    np.testing.assert_allclose(exact.aic(X), ref.aic(X), rtol=1e-10)


@NOT_CONVERGED
@pytest.mark.parametrize("cov_type", COVARIANCE_TYPES)
def test_log_likelihood_never_decreases(cov_type):
    X, _ = blobs(seed=3)
    gm = GaussianMixture(4, covariance_type=cov_type, max_iter=60, tol=0, n_init=2,
                         init_params="random", random_state=0, dtype="float64").fit(X)
    bounds = np.array(gm.lower_bounds_)
    assert len(bounds) == 60
    assert np.all(np.diff(bounds) >= -1e-10 * np.abs(bounds[1:]))


def test_best_restart_is_kept():
    X, _ = blobs(seed=4)
    seen = []
    gm = GaussianMixture(5, n_init=4, init_params="random", random_state=2, max_iter=200,
                         callback=lambda it, lb: seen.append(lb.copy())).fit(X)
    history = np.array(seen)
    final = [row[np.isfinite(row)][-1] if np.isfinite(row).any() else -np.inf
             for row in history.T]
    assert gm.lower_bound_ == pytest.approx(max(final), rel=1e-12)
    assert gm.converged_


def test_responsibilities_sum_to_one_and_predict_is_their_argmax():
    X, _ = blobs()
    gm = GaussianMixture(3, random_state=0).fit(X)
    proba = gm.predict_proba(X)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(gm.predict(X), proba.argmax(1))
    np.testing.assert_array_equal(gm.fit_predict(X), gm.predict(X))


@pytest.mark.parametrize("cov_type", COVARIANCE_TYPES)
def test_one_component_is_sample_mean_and_biased_covariance(cov_type):
    X, _ = blobs(seed=5)
    reg = 1e-4
    gm = GaussianMixture(1, covariance_type=cov_type, reg_covar=reg, dtype="float64").fit(X)
    cov = np.cov(X.T, bias=True)
    expected = {"full": cov[None] + reg * np.eye(3), "tied": cov + reg * np.eye(3),
                "diag": np.diag(cov)[None] + reg, "spherical": [np.diag(cov).mean() + reg]}
    np.testing.assert_allclose(gm.means_, X.mean(0, keepdims=True), rtol=1e-10)
    np.testing.assert_allclose(gm.covariances_, expected[cov_type], rtol=1e-10)
    np.testing.assert_allclose(gm.weights_, [1.0])
    assert gm.converged_


def m_step_by_hand(X, weights, means, precisions, cov_type, reg):
    """One E-step from the given parameters (scipy densities) and the M-step's weighted
    covariances written out with numpy: sum_n r_nk (x_n - m_k)(x_n - m_k)^T / N_k."""
    k, d = means.shape
    full_prec = {"full": precisions, "tied": np.repeat(precisions[None], k, 0),
                 "diag": np.stack([np.diag(p) for p in np.atleast_2d(precisions)]),
                 "spherical": np.stack([p * np.eye(d) for p in np.atleast_1d(precisions)])}
    log_dens = np.stack([multivariate_normal.logpdf(X, means[j], np.linalg.inv(p))
                         for j, p in enumerate(full_prec[cov_type])], axis=1)
    resp = np.exp(logsumexp_normalise(log_dens + np.log(weights)))
    nk = resp.sum(0)
    new_means = resp.T @ X / nk[:, None]
    scatter = np.stack([(resp[:, j, None] * (X - new_means[j])).T @ (X - new_means[j])
                        for j in range(k)])
    full = scatter / nk[:, None, None]
    expected = {"full": full + reg * np.eye(d),
                "tied": scatter.sum(0) / len(X) + reg * np.eye(d),
                "diag": np.diagonal(full, axis1=1, axis2=2) + reg,
                "spherical": np.diagonal(full, axis1=1, axis2=2).mean(1) + reg}
    return nk / len(X), new_means, expected[cov_type]


def logsumexp_normalise(a):
    return a - np.logaddexp.reduce(a, axis=1, keepdims=True)


@NOT_CONVERGED
@pytest.mark.parametrize("cov_type", COVARIANCE_TYPES)
def test_one_em_step_is_the_weighted_covariance_by_hand(cov_type):
    """Means started 1.5 from the blobs' centres in every coordinate, so that the scatter
    about the old means differs from the covariance by a large (x_k - old mean) outer
    product; wide components (precision 0.3) so that each keeps its points."""
    X, _ = blobs(n_per=60, seed=8)
    centres = np.array([[0, 0, 0], [6, 6, 0], [0, 7, 7]], dtype=float)
    precisions = {"full": np.repeat(0.3 * np.eye(3)[None], 3, 0), "tied": 0.3 * np.eye(3),
                  "diag": np.full((3, 3), 0.3), "spherical": np.full(3, 0.3)}
    start = {"weights_init": np.full(3, 1 / 3), "means_init": centres + 1.5,
             "precisions_init": precisions[cov_type]}
    reg = 1e-4
    gm = GaussianMixture(3, covariance_type=cov_type, reg_covar=reg, max_iter=1, tol=0,
                         dtype="float64", **start).fit(X)
    weights, means, cov = m_step_by_hand(X, start["weights_init"], start["means_init"],
                                         start["precisions_init"], cov_type, reg)
    np.testing.assert_allclose(gm.weights_, weights, rtol=1e-8)
    np.testing.assert_allclose(gm.means_, means, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(gm.covariances_, cov, rtol=1e-8, atol=1e-10)


def test_translation_moves_only_the_means():
    X, _ = blobs(seed=6)
    shift = np.array([1e3, -2e3, 5e2])
    kw = dict(n_components=3, random_state=0, max_iter=20, tol=0, init_params="random")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = GaussianMixture(**kw).fit(X)
        b = GaussianMixture(**kw).fit(X + shift)
    np.testing.assert_allclose(b.means_, a.means_ + shift, rtol=1e-9, atol=1e-5)
    np.testing.assert_allclose(b.covariances_, a.covariances_, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(b.weights_, a.weights_, atol=1e-6)
    np.testing.assert_allclose(b.lower_bound_, a.lower_bound_, rtol=1e-6)


def test_score_is_mean_of_score_samples_and_equals_logsumexp_of_components():
    from scipy.special import logsumexp
    from scipy.stats import multivariate_normal

    X, _ = blobs(seed=7)
    gm = GaussianMixture(3, random_state=0).fit(X)
    samples = gm.score_samples(X)
    assert gm.score(X) == pytest.approx(samples.mean(), rel=1e-12)
    parts = zip(gm.weights_, gm.means_, gm.covariances_, strict=True)
    direct = logsumexp([np.log(w) + multivariate_normal(m, c).logpdf(X) for w, m, c in parts],
                       axis=0)
    np.testing.assert_allclose(samples, direct, rtol=1e-5)


@pytest.mark.parametrize("cov_type", COVARIANCE_TYPES)
def test_recovers_well_separated_blobs(cov_type):
    X, y = blobs(seed=8)
    labels = GaussianMixture(3, covariance_type=cov_type, random_state=0).fit_predict(X)
    assert adjusted_rand_score(y, labels) >= 0.95


@NOT_CONVERGED
@pytest.mark.parametrize("cov_type", COVARIANCE_TYPES)
def test_chunked_e_step_equals_one_chunk(cov_type):
    X, _ = blobs(seed=9)
    kw = dict(n_components=3, covariance_type=cov_type, random_state=0, max_iter=15, tol=0,
              init_params="random", dtype="float64")
    whole = GaussianMixture(chunk_size=len(X), **kw).fit(X)
    chunked = GaussianMixture(chunk_size=37, **kw).fit(X)
    np.testing.assert_allclose(chunked.lower_bounds_, whole.lower_bounds_, rtol=1e-12)
    np.testing.assert_allclose(chunked.means_, whole.means_, rtol=1e-10)
    np.testing.assert_allclose(chunked.covariances_, whole.covariances_, rtol=1e-10)


def test_torch_input_gives_numpy_output_and_same_fit():
    X, _ = blobs(seed=10)
    a = GaussianMixture(3, random_state=0, dtype="float64").fit(X)
    b = GaussianMixture(3, random_state=0, dtype="float64").fit(torch.from_numpy(X))
    assert isinstance(b.predict(torch.from_numpy(X)), np.ndarray)
    assert isinstance(b.score_samples(X), np.ndarray)
    np.testing.assert_allclose(b.means_, a.means_, rtol=1e-12)


def test_sample_follows_the_fitted_mixture():
    X, _ = blobs(seed=11)
    gm = GaussianMixture(3, random_state=0).fit(X)
    draws, labels = gm.sample(30000)
    counts = np.bincount(labels, minlength=3) / len(labels)
    np.testing.assert_allclose(counts, gm.weights_, atol=0.01)
    for k in range(3):
        part = draws[labels == k]
        np.testing.assert_allclose(part.mean(0), gm.means_[k], atol=0.05)
        np.testing.assert_allclose(np.cov(part.T), gm.covariances_[k], atol=0.08)


def test_empty_component_is_reseeded_not_nan():
    X, _ = blobs(seed=12)
    means = np.array([[0, 0, 0], [6, 6, 0], [0, 7, 7], [1e4, 1e4, 1e4]], dtype=float)
    init = dict(weights_init=[0.3, 0.3, 0.3, 0.1], means_init=means,
                precisions_init=np.ones((4, 3)))
    with pytest.warns(DegenerateDataWarning, match="re-seeded"):
        gm = GaussianMixture(4, covariance_type="diag", max_iter=30, **init).fit(X)
    assert np.isfinite(gm.means_).all() and np.isfinite(gm.covariances_).all()
    assert np.all(gm.weights_ > 0)
    assert np.abs(gm.means_[3]).max() < 100  # moved onto the data


def test_constant_feature_warns_and_fits():
    X, _ = blobs(seed=13)
    X[:, 1] = 4.0
    with pytest.warns(DegenerateDataWarning, match="zero variance"):
        gm = GaussianMixture(3, covariance_type="diag", random_state=0).fit(X)
    np.testing.assert_allclose(gm.covariances_[:, 1], gm.reg_covar, rtol=1e-3)
    assert np.isfinite(gm.score(X))


def test_fewer_distinct_points_than_components_warns_and_fits():
    X = np.repeat(np.array([[0.0, 0.0], [3.0, 1.0], [1.0, 4.0]]), 20, axis=0)
    with pytest.warns(DegenerateDataWarning, match="fewer distinct points"):
        gm = GaussianMixture(5, init_params="k-means++", random_state=0, max_iter=10).fit(X)
    assert np.isfinite(gm.score(X))
    assert set(np.unique(gm.predict(X)).tolist()) <= set(range(5))


def test_failed_cholesky_says_what_to_change():
    cov = torch.tensor([[[[1.0, 2.0], [2.0, 1.0]]]], dtype=torch.float64)
    with pytest.raises(DataError, match="raise reg_covar.*scale the data"):
        covariance_type("full", 2).precision_cholesky(cov, 1e-6)


X_OK = blobs(n_per=20)[0]
BAD_FITS = [
    (dict(), np.full(100, 1.0), DataError,
     r"expected 2-D data of shape \(n_samples, n_features\); got shape \(100,\)"),
    (dict(), np.where(np.arange(60)[:, None] == 5, np.nan, X_OK), DataError, "NaN or inf"),
    (dict(), np.where(np.arange(60)[:, None] == 7, np.inf, X_OK), DataError, "NaN or inf"),
    (dict(n_components=8), X_OK[:5], DataError, "too few for n_components=8"),
    (dict(reg_covar=0.0), X_OK, ConfigError, "reg_covar must be a positive number"),
    (dict(reg_covar=-1.0), X_OK, ConfigError, "reg_covar must be a positive number"),
    (dict(covariance_type="banded"), X_OK, ConfigError, "covariance_type must be one of"),
    (dict(n_components=0), X_OK, ConfigError, "n_components must be a positive integer"),
    (dict(init_params="best"), X_OK, ConfigError, "init_params must be one of"),
    (dict(means_init=np.zeros((3, 2))), X_OK, ConfigError, r"means_init must have shape"),
    (dict(weights_init=[0.5, 0.6, 0.1]), X_OK, ConfigError, "sum to 1"),
    (dict(precisions_init=-np.ones((3, 3))), X_OK, ConfigError, "precisions_init"),
    (dict(), [["a", "b"], ["c", "d"]], DataError, "real numbers"),
]


@pytest.mark.parametrize("kwargs, X, error, message", BAD_FITS)
def test_bad_fit_inputs_raise_one_line_errors(kwargs, X, error, message):
    params = dict(n_components=3) | kwargs
    if "precisions_init" in kwargs:
        params["covariance_type"] = "diag"
    with pytest.raises(error, match=message) as info:
        GaussianMixture(**params).fit(X)
    assert "\n" not in str(info.value)


def test_predict_before_fit_and_wrong_feature_count():
    gm = GaussianMixture(2)
    with pytest.raises(NotFittedError, match="not fitted yet"):
        gm.predict(X_OK)
    gm.fit(X_OK)
    with pytest.raises(DataError, match=r"expected 3 features.*got shape \(60, 2\)"):
        gm.predict(X_OK[:, :2])
    with pytest.raises(DataError, match="2-D data"):
        gm.score_samples(X_OK[0])


def test_get_params_returns_constructor_arguments_as_given():
    means = np.zeros((2, 3))
    gm = GaussianMixture(2, covariance_type="diag", means_init=means, tol=1e-5)
    params = gm.get_params()
    assert params["n_components"] == 2 and params["covariance_type"] == "diag"
    assert params["means_init"] is means and params["tol"] == 1e-5
    assert gm.set_params(max_iter=7).max_iter == 7


@NOT_CONVERGED
@pytest.mark.cuda
@pytest.mark.parametrize("cov_type", COVARIANCE_TYPES)
def test_em_on_cuda_matches_sklearn_from_same_start(cov_type):
    X, _ = blobs()
    init = sklearn_start(X, cov_type)
    ref = SklearnGaussianMixture(3, covariance_type=cov_type, max_iter=25, tol=0, **init).fit(X)
    ours = GaussianMixture(3, covariance_type=cov_type, max_iter=25, tol=0, device="cuda",
                           dtype="float64", **init).fit(X)
    np.testing.assert_allclose(ours.lower_bound_, ref.lower_bound_, rtol=1e-10)
    np.testing.assert_allclose(ours.means_, ref.means_, rtol=1e-8, atol=1e-10)
