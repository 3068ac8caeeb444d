"""The mixtures as scikit-learn estimators: clone, get/set_params, repr, model selection."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import make_blobs
from sklearn.mixture import GaussianMixture as SklearnGaussianMixture
from sklearn.model_selection import GridSearchCV, KFold

from ppl_vae.errors import ConfigError, NotFittedError
from ppl_vae.mixture import BayesianGaussianMixture, GaussianMixture
from ppl_vae.mixture.pyro_gmm import MixturePrior, PyroGaussianMixture

X, _ = make_blobs(n_samples=300, centers=[[0, 0], [6, 0], [0, 6]], cluster_std=1.0,
                  random_state=0)

# Non-default settings, an array and an object among them, for each estimator.
ESTIMATORS = {
    "em": (GaussianMixture, dict(n_components=3, covariance_type="diag", tol=1e-5,
                                 means_init=np.array([[0.0, 0], [6, 0], [0, 6]]),
                                 dtype="float64", device="cpu", random_state=0)),
    "cavi": (BayesianGaussianMixture, dict(n_components=3, mean_precision_prior=0.5,
                                           weight_concentration_prior_type="dirichlet_distribution",
                                           mean_prior=[1.0, 1.0], device="cpu", random_state=0)),
    "pyro": (PyroGaussianMixture, dict(n_components=3, guide="meanfield", num_steps=5,
                                       lr=0.01, prior=MixturePrior(mean_scale=3.0),
                                       device="cpu", random_state=0)),
}


@pytest.mark.parametrize("name", ESTIMATORS)
def test_clone_is_unfitted_with_equal_params(name):
    cls, kwargs = ESTIMATORS[name]
    fitted = cls(**kwargs).fit(X)
    copy = clone(fitted)
    assert type(copy) is cls and copy is not fitted
    assert not hasattr(copy, "means_")
    with pytest.raises(NotFittedError):
        copy.predict(X)
    original, cloned = fitted.get_params(), copy.get_params()
    assert original.keys() == cloned.keys() == set(kwargs) | original.keys()
    for key, value in original.items():
        np.testing.assert_equal(cloned[key], value)
    # The clone fits to the same numbers as the original.
    np.testing.assert_allclose(copy.fit(X).means_, fitted.means_, rtol=1e-12)


@pytest.mark.parametrize("name", ESTIMATORS)
def test_get_params_set_params_round_trip(name):
    cls, kwargs = ESTIMATORS[name]
    given = cls(**kwargs)
    params = given.get_params()
    for key, value in kwargs.items():
        assert params[key] is value  # stored as given, not converted
    rebuilt = cls().set_params(**params)
    assert all(rebuilt.get_params()[key] is value for key, value in params.items())
    assert rebuilt.set_params(n_components=5) is rebuilt and rebuilt.n_components == 5
    with pytest.raises(ValueError, match="Invalid parameter 'n_comps'"):
        rebuilt.set_params(n_comps=2)


def test_repr_shows_only_non_default_params():
    assert repr(GaussianMixture()) == "GaussianMixture()"
    assert repr(GaussianMixture(3, covariance_type="diag", tol=1e-3)) == \
        "GaussianMixture(covariance_type='diag', n_components=3)"
    assert repr(BayesianGaussianMixture(reg_covar=1e-4)) == \
        "BayesianGaussianMixture(reg_covar=0.0001)"
    assert repr(PyroGaussianMixture(2, guide="meanfield")) == \
        "PyroGaussianMixture(guide='meanfield', n_components=2)"


BAD = [
    (GaussianMixture, dict(tol=-1.0), "tol must be a non-negative number; got -1.0"),
    (GaussianMixture, dict(max_iter=2.5), "max_iter must be a non-negative integer; got 2.5"),
    (GaussianMixture, dict(chunk_size=0), "chunk_size must be a positive integer or None; got 0"),
    (GaussianMixture, dict(callback=3), "callback must be a callable or None; got 3"),
    (GaussianMixture, dict(dtype="float16"), "dtype must be one of ['float32', 'float64']"),
    (BayesianGaussianMixture, dict(mean_precision_prior=-2),
     "mean_precision_prior must be a positive number or None; got -2"),
    (PyroGaussianMixture, dict(lr=0.0), "lr must be a positive number; got 0.0"),
    (PyroGaussianMixture, dict(num_steps=0), "num_steps must be a positive integer; got 0"),
    (PyroGaussianMixture, dict(guide="laplace"),
     "unknown guide 'laplace'; known guides: 'map', 'meanfield'"),
]


@pytest.mark.parametrize("cls, kwargs, message", BAD)
def test_bad_params_raise_one_line_config_error_at_fit(cls, kwargs, message):
    estimator = cls(**kwargs)  # stored as given: the check is at fit, as in scikit-learn
    with pytest.raises(ConfigError) as info:
        estimator.fit(X)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def _grid_search(estimator):
    search = GridSearchCV(estimator, {"n_components": [1, 2, 3, 4]}, cv=3)
    return search.fit(X)


def test_grid_search_picks_three_blobs_as_sklearn_does():
    ours = _grid_search(GaussianMixture(dtype="float64", device="cpu", random_state=0))
    theirs = _grid_search(SklearnGaussianMixture(random_state=0))
    assert ours.best_params_ == theirs.best_params_ == {"n_components": 3}
    assert isinstance(ours.best_estimator_, GaussianMixture)
    scores = ours.cv_results_["mean_test_score"]
    assert scores[2] > max(scores[0], scores[1], scores[3])
    # The scores are our held-out log-likelihoods: one fold by hand, then all of them.
    train, test = next(KFold(3).split(X))
    by_hand = GaussianMixture(3, dtype="float64", device="cpu",
                              random_state=0).fit(X[train]).score(X[test])
    assert ours.cv_results_["split0_test_score"][2] == pytest.approx(by_hand, rel=1e-12)
    # One component, and three on three blobs, have one maximum that both reach (two
    # or four have several: which blobs merge or which one splits).
    np.testing.assert_allclose(scores[[0, 2]], theirs.cv_results_["mean_test_score"][[0, 2]],
                               rtol=1e-6)
