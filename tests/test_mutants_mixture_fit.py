"""Tests written to kill surviving mutants of the mixtures' fit loop (ppl_vae/mixture/_base.py)
and of the variational mixture (ppl_vae/mixture/bayesian_mixture.py): each pins a line that
the rest of the suite let change without a failure, against scikit-learn, scipy or numpy."""

import os
import re
import warnings

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal, multivariate_t
from sklearn.mixture import GaussianMixture as SklearnGaussianMixture
from test_mixture_cavi import blobs, constant_gap, sklearn_from, start_resp

from ppl_vae.errors import ConfigError, DataError, NotFittedError
from ppl_vae.mixture import (
    BayesianGaussianMixture,
    ConvergenceWarning,
    DegenerateDataWarning,
    GaussianMixture,
)

COVARIANCE_TYPES = ["full", "tied", "diag", "spherical"]
NOT_CONVERGED = pytest.mark.filterwarnings(
    "ignore::sklearn.exceptions.ConvergenceWarning",
    "ignore::ppl_vae.mixture.ConvergenceWarning",
)


def small_blobs(n_per=30, seed=0):
    return blobs(n_per=n_per, seed=seed)[0]


# ---------------------------------------------------------------- priors given by the user

PRIORS = {
    "full": np.array([[2.0, 0.3, 0.1], [0.3, 1.5, -0.2], [0.1, -0.2, 0.8]]),
    "tied": np.array([[1.2, -0.1, 0.0], [-0.1, 0.9, 0.2], [0.0, 0.2, 1.7]]),
    "diag": np.array([1.5, 0.7, 2.2]),
    "spherical": 1.3,
}


@NOT_CONVERGED
@pytest.mark.parametrize("cov_type, prior_type", [
    ("full", "dirichlet_process"), ("tied", "dirichlet_distribution"),
    ("diag", "dirichlet_distribution"), ("spherical", "dirichlet_process")])
def test_every_prior_given_matches_sklearn(cov_type, prior_type):
    """Each prior reaches the fit (alpha0, beta0 != 1, m0 far from the data mean, nu0 !=
    d + 1, W0^-1): parameters equal scikit-learn's and the bound is its bound plus the
    constant of the priors. mean_prior and covariance_prior come as numpy longdouble
    arrays, which are converted to float64."""
    X = small_blobs(n_per=40)
    resp = start_resp(X, 3)
    priors = dict(weight_concentration_prior=0.37, mean_precision_prior=2.5,
                  mean_prior=X.mean(0) + [3.0, -2.0, 1.0], degrees_of_freedom_prior=5.5,
                  covariance_prior=PRIORS[cov_type])
    kw = dict(n_components=3, covariance_type=cov_type, max_iter=8, tol=0,
              weight_concentration_prior_type=prior_type)
    ref = sklearn_from(resp, **kw, **priors).fit(X)
    ours = BayesianGaussianMixture(
        resp_init=resp, dtype="float64", **kw,
        **{**priors, "mean_prior": np.asarray(priors["mean_prior"], np.longdouble),
           "covariance_prior": np.asarray(priors["covariance_prior"], np.longdouble)}).fit(X)
    for name in ["weights_", "means_", "precisions_", "mean_precision_", "degrees_of_freedom_",
                 "mean_prior_", "covariance_prior_", "weight_concentration_prior_",
                 "mean_precision_prior_", "degrees_of_freedom_prior_"]:
        np.testing.assert_allclose(getattr(ours, name), getattr(ref, name), rtol=1e-7,
                                   atol=1e-12, err_msg=name)
    gap = np.ravel(ours.lower_bounds_) - np.ravel(ref.lower_bounds_)
    np.testing.assert_allclose(gap, constant_gap(ref, X), rtol=1e-9)


def test_degrees_of_freedom_prior_must_exceed_d_minus_one():
    X = small_blobs()
    with pytest.raises(ConfigError) as info:
        BayesianGaussianMixture(2, degrees_of_freedom_prior=2.0).fit(X)
    assert str(info.value) == ("degrees_of_freedom_prior must be greater than n_features - 1 "
                               "= 2; got 2")


def test_partial_fit_without_total_samples_says_what_is_missing():
    with pytest.raises(ConfigError) as info:
        BayesianGaussianMixture(2).partial_fit(small_blobs())
    assert str(info.value) == (
        "partial_fit of the variational mixture needs total_samples, the number of rows of "
        "the data set the batches come from (the posterior depends on it)")


@pytest.mark.parametrize("cov_type", ["full", "diag"])
def test_constant_feature_makes_the_default_covariance_prior_singular(cov_type):
    """A bug the mutants showed: the bound's log |W_0| failed with advice to raise
    reg_covar, which the prior does not contain."""
    X = small_blobs(seed=12)
    X[:, 1] = 2.0
    with pytest.warns(DegenerateDataWarning), pytest.raises(DataError) as info:
        BayesianGaussianMixture(2, covariance_type=cov_type).fit(X)
    assert str(info.value) == (
        "the default covariance_prior (the data's covariance) is singular, so the evidence "
        "lower bound is undefined: some feature is constant or features are collinear; drop "
        "or combine those features, or pass covariance_prior")


def test_default_covariance_prior_of_two_samples_uses_ddof_one():
    X = np.array([[0.0, 1.0], [2.0, 4.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        bgm = BayesianGaussianMixture(1, max_iter=1, dtype="float64").fit(X)
    np.testing.assert_allclose(bgm.covariance_prior_, np.cov(X.T, ddof=1), rtol=1e-12)


# ---------------------------------------------------------------- the loop and its restarts


def test_restarts_are_reported_to_the_callback_and_the_best_is_kept():
    """max_iter=1 with three restarts: the callback sees iteration 1 and three distinct
    values (one per restart), the best one is kept, and the warning names three restarts
    and points at the caller (this file)."""
    X = small_blobs(seed=3)
    seen = []
    gm = GaussianMixture(3, n_init=3, init_params="random_from_data", random_state=2,
                         max_iter=1, tol=0, dtype="float64",
                         callback=lambda it, values: seen.append((it, values.copy())))
    message = ("the best of 3 restart(s) did not converge in max_iter=1 iterations (last "
               "change above tol=0); raise max_iter or tol, or check the data")
    with pytest.warns(ConvergenceWarning, match=re.escape(message)) as record:
        gm.fit(X)
    assert len(record) == 1 and str(record[0].message) == message
    if "MUTANT_UNDER_TEST" not in os.environ:  # mutmut's trampoline adds stack frames
        assert record[0].filename == __file__
    [(iteration, values)] = seen
    assert iteration == 1 and values.shape == (3,)
    assert len(set(np.round(values, 6))) == 3
    assert int(np.argmax(values)) != 0  # the seed makes a later restart the best
    assert gm.lower_bound_ == values.max() and gm.lower_bounds_ == [values.max()]
    assert gm.n_iter_ == 1 and not gm.converged_


def test_given_responsibilities_run_one_restart_whatever_n_init():
    X = small_blobs(seed=4)
    seen = []
    message = ("the best of 1 restart(s) did not converge in max_iter=2 iterations (last "
               "change above tol=0); raise max_iter or tol, or check the data")
    bgm = BayesianGaussianMixture(3, resp_init=start_resp(X, 3), n_init=4, max_iter=2, tol=0,
                                  callback=lambda it, values: seen.append((it, len(values))))
    with pytest.warns(ConvergenceWarning, match=re.escape(message)):
        bgm.fit(X)
    assert seen == [(1, 1), (2, 1)]


@pytest.mark.parametrize("cls", [GaussianMixture, BayesianGaussianMixture])
def test_no_iteration_leaves_the_bound_at_minus_infinity(cls):
    X = small_blobs(seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = cls(2, max_iter=0, random_state=0).fit(X)
    assert model.lower_bound_ == -np.inf and model.lower_bounds_ == []
    assert model.n_iter_ == 0 and model.converged_ is False


@pytest.mark.parametrize("cov_type", ["full", "tied"])
def test_converged_bound_of_each_restart_is_its_objective(cov_type):
    """With two restarts run as a batch to the last iteration (CAVI: k-means finds the same
    three blobs twice), the converged bound of the kept one equals the objective at its
    parameters: the mean log-likelihood (by scipy) for EM, and for CAVI the bound after a
    fresh E-step on the data (tied: from the data's full moments); no restart's terms leak
    into another's."""
    X = small_blobs(n_per=40)
    kw = dict(covariance_type=cov_type, n_init=2, max_iter=2000, random_state=0,
              dtype="float64")
    seen = []
    bgm = BayesianGaussianMixture(3, tol=1e-9, callback=lambda it, v: seen.append(v), **kw)
    bgm.fit(X)
    assert bgm.converged_ and np.isfinite(seen[-1]).all()
    assert bgm.lower_bound_ == pytest.approx(bgm.objective(X), abs=1e-6)
    gm = GaussianMixture(3, tol=1e-12, init_params="random", **kw).fit(X)
    covariances = np.broadcast_to(gm.covariances_, (3, 3, 3))
    log_p = logsumexp([np.log(w) + multivariate_normal(m, c).logpdf(X)
                       for w, m, c in zip(gm.weights_, gm.means_, covariances, strict=True)],
                      axis=0)
    assert gm.lower_bound_ == pytest.approx(log_p.mean(), abs=1e-9)


@NOT_CONVERGED
def test_a_far_outlier_keeps_its_own_responsibilities():
    """An outlier 300 standard deviations away sits in the same chunk as the rest: its
    log-probabilities are shifted by its own row's maximum, so EM matches scikit-learn."""
    X = np.concatenate([small_blobs(seed=6), [[300.0, 0.0, 0.0]]])
    start = SklearnGaussianMixture(3, max_iter=1, tol=0, init_params="random_from_data",
                                   random_state=1).fit(X)
    init = dict(weights_init=start.weights_, means_init=start.means_,
                precisions_init=start.precisions_)
    kw = dict(n_components=3, max_iter=3, tol=0, **init)
    ref = SklearnGaussianMixture(**kw).fit(X)
    ours = GaussianMixture(dtype="float64", **kw).fit(X)
    assert ours.lower_bound_ == pytest.approx(ref.lower_bound_, rel=1e-10)
    np.testing.assert_allclose(ours.means_, ref.means_, rtol=1e-8)


@NOT_CONVERGED
def test_default_chunks_fill_four_mebibytes():
    """The default chunk holds (rows, row_floats) float32 intermediates of 4 MiB; a full
    covariance with R restarts of K components in d dimensions needs 3 R K d + 4 R K."""
    X = np.random.default_rng(0).normal(size=(40, 4))
    gm = GaussianMixture(3, n_init=2, random_state=0, max_iter=1).fit(X)
    assert gm._context(X).data.chunk_size == 4 * 2**20 // ((3 * 6 * 4 + 4 * 6) * 4)
    assert gm._prediction_data(X).chunk_size == 4 * 2**20 // ((3 * 3 * 4 + 4 * 3) * 4)


# ---------------------------------------------------------------- prediction and errors


def test_out_of_the_wrong_shape_or_type_is_refused():
    X = small_blobs(seed=7)
    gm = GaussianMixture(2, random_state=0).fit(X)
    for out, got in [(np.empty(5), "(5,)"), ([], "list")]:
        with pytest.raises(ValueError) as info:
            gm.predict_proba(X, out=out)
        assert str(info.value) == f"out must be an array of shape (90, 2); got {got}"


def test_unfitted_model_names_its_class():
    with pytest.raises(NotFittedError) as info:
        BayesianGaussianMixture(2).predict(small_blobs())
    assert str(info.value) == ("this BayesianGaussianMixture is not fitted yet; "
                               "call fit(X) first")


def test_get_params_returns_chunk_size_and_callback():
    def callback(iteration, values):
        return None

    params = BayesianGaussianMixture(2, chunk_size=7, callback=callback).get_params()
    assert params["chunk_size"] == 7 and params["callback"] is callback


def full_matrices(cov_type, value, k, d):
    """A covariance-type-shaped array as k full (d, d) matrices."""
    value = np.asarray(value, dtype=float)
    if cov_type == "full":
        return value
    if cov_type == "tied":
        return np.broadcast_to(value, (k, d, d))
    if cov_type == "diag":
        return np.array([np.diag(v) for v in np.atleast_2d(value)])
    return np.array([v * np.eye(d) for v in np.atleast_1d(value)])


@pytest.mark.parametrize("cov_type", COVARIANCE_TYPES)
def test_predictive_with_the_prior_term_is_scipys_student_t(cov_type):
    """PRML 10.81 with scipy's multivariate t for every covariance type, the stick-breaking
    prior's leftover mass on the prior predictive; probes far from the data, where that
    term matters, are included."""
    X = small_blobs(n_per=15, seed=8)
    k, d = 3, X.shape[1]
    bgm = BayesianGaussianMixture(k, covariance_type=cov_type, random_state=0,
                                  dtype="float64").fit(X)
    probe = np.concatenate([X[:4], X[:4] + 40.0, X[:2] - 100.0])
    a, b = bgm.weight_concentration_
    stick = b / (a + b)
    pi = a / (a + b) * np.concatenate([[1.0], np.cumprod(stick)[:-1]])
    precisions = full_matrices(cov_type, bgm.precisions_, k, d)
    dof = np.broadcast_to(bgm.degrees_of_freedom_, (k,))
    terms = []
    for j in range(k):
        nu, beta = dof[j], bgm.mean_precision_[j]
        scale = np.linalg.inv((nu + 1 - d) * beta / (1 + beta) * precisions[j] / nu)
        terms.append(np.log(pi[j]) + multivariate_t(bgm.means_[j], scale,
                                                    df=nu + 1 - d).logpdf(probe))
    nu0, beta0 = bgm.degrees_of_freedom_prior_, bgm.mean_precision_prior_
    cov0 = np.asarray(bgm.covariance_prior_)
    cov0 = cov0 if cov0.ndim == 2 else np.diag(cov0 * np.ones(d))
    scale0 = cov0 * (1 + beta0) / ((nu0 + 1 - d) * beta0)
    terms.append(np.log(np.prod(stick)) + multivariate_t(bgm.mean_prior_, scale0,
                                                         df=nu0 + 1 - d).logpdf(probe))
    np.testing.assert_allclose(bgm.score_samples(probe), logsumexp(terms, axis=0),
                               rtol=1e-10)


# ---------------------------------------------------------------- sample


def test_sample_default_is_one_row_and_a_seed_repeats_the_draws():
    X = small_blobs(seed=9)
    gm = GaussianMixture(2, random_state=3).fit(X)
    draws, labels = gm.sample()
    assert draws.shape == (1, 3) and labels.shape == (1,)
    first, second = gm.sample(50), gm.sample(50)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


def test_sample_of_zero_rows_is_refused():
    gm = GaussianMixture(2, random_state=0).fit(small_blobs(seed=10))
    with pytest.raises(ConfigError) as info:
        gm.sample(0)
    assert str(info.value) == "n_samples must be a positive integer; got 0"


@pytest.mark.parametrize("cov_type", ["tied", "spherical"])
def test_sample_moments_follow_the_fitted_mixture(cov_type):
    """Counts per component follow the weights; each component's draws have its fitted mean
    and covariance (tied: the shared matrix; spherical: a multiple of the identity)."""
    X = small_blobs(seed=11)
    bgm = BayesianGaussianMixture(3, covariance_type=cov_type, random_state=0,
                                  max_iter=300).fit(X)
    draws, labels = bgm.sample(40000)
    np.testing.assert_allclose(np.bincount(labels, minlength=3) / len(labels), bgm.weights_,
                               atol=0.01)
    covariances = full_matrices(cov_type, bgm.covariances_, 3, 3)
    for j in range(3):
        part = draws[labels == j]
        np.testing.assert_allclose(part.mean(0), bgm.means_[j], atol=0.06)
        np.testing.assert_allclose(np.cov(part.T), covariances[j], atol=0.1)
