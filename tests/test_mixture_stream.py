"""Mini-batch EM and stochastic VI (ppl_vae.mixture._stream) against batch EM and CAVI,
and against the step written out by hand from predict_proba."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs

from ppl_vae.errors import ConfigError
from ppl_vae.mixture import BayesianGaussianMixture, GaussianMixture
from ppl_vae.mixture._covariance import covariance_type

COV_TYPES = ["full", "tied", "diag", "spherical"]
ATTRIBUTES = ("weights_", "means_", "covariances_", "precisions_cholesky_")


def _blobs(n=1200, seed=0):
    X, _ = make_blobs(n, centers=3, n_features=3, cluster_std=[1.0, 1.5, 0.7],
                      random_state=seed)
    return X


def _quiet_fit(model, X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit(X)


def _same(a, b, names=ATTRIBUTES):
    for name in names:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


RHO_ONE = dict(learning_decay=0.0, learning_offset=1.0)
EXACT = dict(random_state=0, device="cpu", dtype="float64", tol=0.0)


@pytest.mark.parametrize("cov", COV_TYPES)
def test_one_full_batch_with_rho_one_is_batch_em(cov):
    X = _blobs()
    batch = _quiet_fit(GaussianMixture(3, covariance_type=cov, max_iter=4, **EXACT), X)
    stream = _quiet_fit(GaussianMixture(3, covariance_type=cov, max_iter=4, batch_size=len(X),
                                        **RHO_ONE, **EXACT), X)
    _same(batch, stream)
    assert stream.lower_bounds_ == batch.lower_bounds_


@pytest.mark.parametrize("cov", COV_TYPES)
def test_svi_step_with_rho_one_on_all_data_is_one_cavi_iteration(cov):
    X = _blobs()
    cavi = _quiet_fit(BayesianGaussianMixture(3, covariance_type=cov, max_iter=1, **EXACT), X)
    svi = _quiet_fit(BayesianGaussianMixture(3, covariance_type=cov, max_iter=1,
                                             batch_size=len(X), **RHO_ONE, **EXACT), X)
    _same(cavi, svi, ATTRIBUTES + ("mean_precision_", "degrees_of_freedom_"))
    np.testing.assert_array_equal(cavi.weight_concentration_, svi.weight_concentration_)
    # SVI records the ELBO at the factors before the step; CAVI's step can only raise it.
    assert svi.lower_bound_ < cavi.lower_bound_


def test_partial_fit_on_all_data_continues_like_batch_em():
    X = _blobs()
    model = GaussianMixture(3, **RHO_ONE, **EXACT)
    for _ in range(3):
        model.partial_fit(X)
    batch = _quiet_fit(GaussianMixture(3, max_iter=3, **EXACT), X)
    _same(batch, model)
    assert model.n_iter_ == 3 and model.lower_bounds_ == batch.lower_bounds_


def _start(X, k=3):
    """A deterministic start (no k-means): three rows as means, the data's precision."""
    return dict(weights_init=np.full(k, 1 / k), means_init=X[[0, 1, 2]],
                precisions_init=np.repeat(np.linalg.inv(np.cov(X.T))[None], k, 0))


def test_stepwise_em_blends_scaled_batch_statistics_with_rho():
    X = _blobs()
    a, b = X[:300], X[300:800]
    kw = dict(**_start(a), device="cpu", dtype="float64", learning_decay=0.8,
              learning_offset=2.0, total_samples=1000)
    initial = GaussianMixture(3, max_iter=0, **kw).fit(a)
    model = GaussianMixture(3, **kw).partial_fit(a)
    resp_a = initial.predict_proba(a)
    resp_b = model.predict_proba(b)            # under the parameters after step 0
    model.partial_fit(b)
    rho = 3.0 ** -0.8                          # step 1: (1 + tau)^-kappa
    # Step 0 has no running statistics before it (a user-given start): its own are kept.
    nk = (1 - rho) * resp_a.sum(0) * 1000 / 300 + rho * resp_b.sum(0) * 1000 / 500
    sx = ((1 - rho) * resp_a.T @ a * 1000 / 300 + rho * resp_b.T @ b * 1000 / 500)
    second = ((1 - rho) * np.einsum("nk,nd,ne->kde", resp_a, a, a) * 1000 / 300
              + rho * np.einsum("nk,nd,ne->kde", resp_b, b, b) * 1000 / 500)
    means = sx / nk[:, None]
    covariances = second / nk[:, None, None] - means[:, :, None] * means[:, None, :]
    np.testing.assert_allclose(model.weights_, nk / nk.sum(), rtol=1e-9)
    np.testing.assert_allclose(model.means_, means, rtol=1e-9)
    np.testing.assert_allclose(model.covariances_, covariances + 1e-6 * np.eye(3), rtol=1e-8)


def test_svi_step_is_a_natural_gradient_step_on_the_global_factors():
    X = _blobs()
    a, b = X[:400], X[400:700]
    n = 1200
    kw = dict(random_state=0, device="cpu", dtype="float64", learning_decay=0.6,
              learning_offset=1.5, total_samples=n,
              weight_concentration_prior_type="dirichlet_distribution")
    model = BayesianGaussianMixture(3, **kw).partial_fit(a)
    beta1, alpha1, m1 = model.mean_precision_, model.weight_concentration_, model.means_
    resp = model.predict_proba(b)              # the local step under the current factors
    model.partial_fit(b)
    rho = 2.5 ** -0.6
    beta0, alpha0 = model.mean_precision_prior_, model.weight_concentration_prior_
    nk_hat = resp.sum(0) * n / len(b)
    # lambda <- (1 - rho) lambda + rho lambda_hat, lambda_hat = prior + (N / B) batch stats
    np.testing.assert_allclose(model.mean_precision_,
                               (1 - rho) * beta1 + rho * (beta0 + nk_hat), rtol=1e-10)
    np.testing.assert_allclose(model.weight_concentration_,
                               (1 - rho) * alpha1 + rho * (alpha0 + nk_hat), rtol=1e-10)
    hat_beta_m = beta0 * model.mean_prior_ + resp.T @ b * n / len(b)
    np.testing.assert_allclose(model.mean_precision_[:, None] * model.means_,
                               (1 - rho) * beta1[:, None] * m1 + rho * hat_beta_m, rtol=1e-9)


def test_minibatch_em_held_out_within_a_hundredth_of_a_nat_of_batch_em():
    X = _blobs(6000)
    train, test = X[:5000], X[5000:]
    for cov in ("full", "diag"):
        batch = GaussianMixture(3, covariance_type=cov, random_state=0, device="cpu").fit(train)
        stream = _quiet_fit(GaussianMixture(3, covariance_type=cov, random_state=0,
                                            device="cpu", batch_size=250, max_iter=4), train)
        assert abs(stream.score(test) - batch.score(test)) < 0.01, cov


def test_svi_elbo_within_a_tenth_of_a_percent_of_cavi():
    X = _blobs(5000)
    cavi = BayesianGaussianMixture(3, random_state=0, device="cpu").fit(X)
    svi = _quiet_fit(BayesianGaussianMixture(3, random_state=0, device="cpu", batch_size=250,
                                             max_iter=4), X)
    reached, best = svi.objective(X), cavi.objective(X)
    assert abs(best - cavi.lower_bound_) < 1e-3 * abs(best)
    assert abs(reached - best) < 1e-3 * abs(best)


def test_moving_the_full_second_moment_to_new_centres():
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.normal(size=(50, 3)))
    r = torch.as_tensor(rng.uniform(size=(50, 1, 2)))
    old, new = (torch.as_tensor(rng.normal(size=(1, 2, 3))) for _ in range(2))
    cov = covariance_type("full", 3)
    s_old = cov.second_moment(x, r, old, None)
    nk, sx = r.sum(0), torch.einsum("nrk,nd->rkd", r, x)
    moved = cov.move_second_moment(s_old, nk, sx, old, new)
    torch.testing.assert_close(moved, cov.second_moment(x, r, new, None), rtol=1e-12,
                               atol=1e-12)


def test_memory_mapped_path_and_out_arrays(tmp_path):
    X = _blobs(900).astype(np.float32)
    path = tmp_path / "x.npy"
    np.save(path, X)
    kw = dict(random_state=0, device="cpu", batch_size=200, max_iter=2)
    in_memory = _quiet_fit(GaussianMixture(3, **kw), X)
    mapped = _quiet_fit(GaussianMixture(3, **kw), str(path))
    _same(in_memory, mapped)
    out = np.lib.format.open_memmap(tmp_path / "p.npy", "w+", np.float64, (900, 3))
    assert mapped.predict_proba(X, out=out) is out
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), mapped.predict_proba(X))
    scores = np.empty(900)
    mapped.score_samples(X, out=scores)
    assert mapped.score(X) == pytest.approx(scores.mean(), rel=1e-12)
    labels = np.full(900, -1)
    mapped.predict(X, out=labels)
    np.testing.assert_array_equal(labels, mapped.predict_proba(X).argmax(1))
    with pytest.raises(ValueError, match=r"out must be an array of shape \(900, 3\)"):
        mapped.predict_proba(X, out=np.empty((900, 2)))


def test_bad_streaming_settings_are_one_line_errors():
    X = _blobs(300)
    with pytest.raises(ConfigError, match="learning_decay"):
        GaussianMixture(3, batch_size=50, learning_decay=1.5).fit(X)
    with pytest.raises(ConfigError, match="batch_size"):
        GaussianMixture(3, batch_size=0).fit(X)
    with pytest.raises(ConfigError, match="total_samples"):
        BayesianGaussianMixture(3).partial_fit(X)


@pytest.mark.cuda
def test_streaming_on_cuda_moves_each_batch_and_matches_the_cpu():
    X = _blobs(2000)
    kw = dict(random_state=0, dtype="float64", batch_size=300, max_iter=2)
    cpu = _quiet_fit(GaussianMixture(3, device="cpu", **kw), X)
    gpu = _quiet_fit(GaussianMixture(3, device="cuda", **kw), X)
    for name in ATTRIBUTES:
        np.testing.assert_allclose(getattr(gpu, name), getattr(cpu, name), rtol=1e-7,
                                   atol=1e-9)
    np.testing.assert_allclose(gpu.predict_proba(X), cpu.predict_proba(X), atol=1e-8)


@pytest.mark.cuda
def test_svi_partial_fit_on_cuda_from_a_cpu_batch():
    X = _blobs(1000)
    kw = dict(random_state=0, dtype="float64", total_samples=1000)
    cpu = BayesianGaussianMixture(3, device="cpu", **kw)
    gpu = BayesianGaussianMixture(3, device="cuda", **kw)
    for s in (0, 500):
        cpu.partial_fit(X[s:s + 500])
        gpu.partial_fit(X[s:s + 500])
    np.testing.assert_allclose(gpu.means_, cpu.means_, rtol=1e-7, atol=1e-9)


def test_gmm_command_fits_in_mini_batches(tmp_path):
    import json

    from ppl_vae import commands
    from ppl_vae.data.points import load_points

    out = tmp_path / "run"
    code = commands.main(["gmm", "--method", "em", "--batch-size", "60", "--max-iter", "3",
                          "--quick", "--quiet", "--seed", "1", "--out", str(out)])
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    data = load_points("blobs", seed=1, quick=True)
    model = _quiet_fit(GaussianMixture(3, random_state=1, batch_size=60, max_iter=3,
                                       device="cpu"), data.x_train)
    np.testing.assert_allclose(result["means"], model.means_, rtol=1e-6)
    assert result["objective"]["history"] == pytest.approx(model.lower_bounds_)
