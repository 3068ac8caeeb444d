"""Tests written to kill surviving mutants of ``ppl_vae/mixture/_covariance.py``: each
covariance type's numbers against scikit-learn's GaussianMixture internals, numpy by hand
or scipy, its error messages in full, and the Wishart draws used by ``arviz_export``.

Shapes use R=2 restarts, K=3 components and d=4 features so that no two axes have the
same length (a reduction or broadcast over the wrong axis then changes the result)."""

import re

import numpy as np
import pytest
import scipy.stats
import torch
from sklearn.mixture import _gaussian_mixture as skgm

from ppl_vae.errors import ConfigError, DataError
from ppl_vae.mixture._covariance import Diag, Full, Spherical, Tied, covariance_type

R, K, D = 2, 3, 4
TYPES = {"full": Full, "tied": Tied, "diag": Diag, "spherical": Spherical}
HELP = ("it is not positive definite (for instance a component collapsed onto one point or "
        "onto duplicate points); raise reg_covar (now 0.001), use fewer components, or "
        "scale the data (e.g. standardise each feature)")


def _rng(seed=0):
    return np.random.default_rng(seed)


def _spd(shape, seed=0):
    """Random symmetric positive definite matrices of shape ``shape + (D, D)``."""
    a = _rng(seed).normal(size=shape + (D, D))
    return a @ np.swapaxes(a, -1, -2) + D * np.eye(D)


def _upper_cholesky_of_inverse(cov):
    """U upper triangular with inv(cov) = U U^T, by numpy: scikit-learn's convention."""
    return np.swapaxes(np.linalg.inv(np.linalg.cholesky(cov)), -1, -2)


def _statistics(seed=0):
    """Data, responsibilities per restart and the sufficient statistics the mixtures
    accumulate: nk (R, K), xk (R, K, d), s2 about ``shift`` (R, K, d, d), moments."""
    rng = _rng(seed)
    x = rng.normal(size=(40, D)) * [1.0, 2.0, 0.5, 3.0]
    resp = rng.dirichlet(np.ones(K), size=(40, R))           # (n, R, K)
    nk = resp.sum(0)
    xk = np.einsum("nrk,nd->rkd", resp, x) / nk[..., None]
    shift = xk + rng.normal(scale=0.3, size=xk.shape)        # the previous means
    diff = x[None, None] - shift[:, :, None]                 # (R, K, n, d)
    s2 = np.einsum("nrk,rkni,rknj->rkij", resp, diff, diff)
    return x, resp, nk, xk, shift, s2, x.T @ x


def _t(a):
    return torch.as_tensor(a, dtype=torch.float64)


# ------------------------------------------------------------------ estimates


@pytest.mark.parametrize("name", ["full", "tied", "diag", "spherical"])
def test_estimate_matches_sklearn(name):
    """Maximum-likelihood covariances plus reg_covar, restart by restart, against
    scikit-learn's _estimate_gaussian_covariances_<type> (reg 0.1 is not a float32)."""
    x, resp, nk, xk, shift, s2, moments = _statistics()
    reg = 0.1
    cov = TYPES[name](D)
    if name == "full":
        args = (_t(s2),)
    elif name == "tied":
        args = (None,)
    else:   # the diagonal types accumulate sum_n r x^2 (about the origin)
        x2 = np.einsum("nrk,nd->rkd", resp, x ** 2)
        args = (_t(x2 if name == "diag" else x2.sum(-1)),)
    ours = cov.estimate(_t(nk), _t(xk), *args, _t(shift), reg, _t(moments)).numpy()
    sk = getattr(skgm, f"_estimate_gaussian_covariances_{name}")
    expected = np.stack([sk(resp[:, r], x, nk[r], xk[r], reg) for r in range(R)])
    np.testing.assert_allclose(ours, expected, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("name", ["full", "diag", "spherical"])
def test_second_moment_is_float64_weighted_scatter(name):
    """The chunk statistic is float64 even for float32 data, and equals the
    responsibility-weighted scatter about ``shift`` (full) or sum r x^2 (diagonal types)."""
    x, resp, _, xk, shift, _, _ = _statistics(1)
    cov = TYPES[name](D)
    xf, rf, sf = (torch.as_tensor(a, dtype=torch.float32) for a in (x, resp, shift))
    ours = cov.second_moment(xf, rf, sf, None)
    assert ours.dtype == torch.float64
    if name == "full":
        diff = x[None, None] - shift[:, :, None]
        expected = np.einsum("nrk,rkni,rknj->rkij", resp, diff, diff)
    else:
        expected = np.einsum("nrk,nd->rkd", resp, x ** 2)
        expected = expected if name == "diag" else expected.sum(-1)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_tied_pool_is_the_mean_count_of_each_restart():
    nk = _rng().uniform(1, 9, size=(R, K))
    np.testing.assert_allclose(Tied(D).pool(_t(nk)).numpy(), nk.mean(1, keepdims=True))


# ------------------------------------------------------------------ precisions


def test_full_precision_cholesky_and_back():
    """U with U U^T = inv(cov), upper triangular, as scikit-learn computes it; the
    covariances recovered from U; and U recovered from the precisions U U^T."""
    cov = _spd((R, K))
    ours = Full(D).precision_cholesky(_t(cov), 1e-3)
    expected = np.stack([skgm._compute_precision_cholesky(c, "full") for c in cov])
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(Full(D).covariances(ours).numpy(), cov, rtol=1e-10)
    prec = np.linalg.inv(cov[0])                               # (K, d, d): precisions_init
    back = Full(D).precision_cholesky_from_precisions(_t(prec)).numpy()
    assert np.all(np.tril(back, -1) == 0) and np.all(np.diagonal(back, 0, -2, -1) > 0)
    np.testing.assert_allclose(back @ np.swapaxes(back, -1, -2), prec, rtol=1e-10)


@pytest.fixture
def default_float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def test_results_keep_the_input_dtype(default_float64):
    """Float32 inputs give float32 results whatever torch's default dtype is: the identity
    matrices of the estimates and of to_full are built in the input's dtype."""
    f32 = torch.float32
    cov = torch.as_tensor(_spd((R, K)), dtype=f32)
    u = Full(D).precision_cholesky(cov, 1e-3)
    assert u.dtype == f32
    assert Full(D).covariances(u).dtype == f32
    _, _, nk, xk, shift, s2, moments = (torch.as_tensor(a, dtype=f32) if a is not None
                                        else None for a in _statistics())
    assert Full(D).estimate(nk, xk, s2, shift, 0.1, moments).dtype == f32
    assert Tied(D).estimate(nk, xk, None, shift, 0.1, moments).dtype == f32
    assert Spherical(D).to_full(torch.ones(K, dtype=f32), K).dtype == f32


@pytest.mark.cuda
def test_device_follows_input():
    """On a GPU the identity matrices are built on the input's device."""
    cov = torch.as_tensor(_spd((R, K)), device="cuda")
    u = Full(D).precision_cholesky(cov, 1e-3)
    assert Full(D).covariances(u).device.type == "cuda"
    _, _, nk, xk, shift, s2, moments = (torch.as_tensor(a, device="cuda") for a in
                                        _statistics())
    assert Full(D).estimate(nk, xk, s2, shift, 0.1, moments).device.type == "cuda"
    assert Tied(D).estimate(nk, xk, None, shift, 0.1, moments).device.type == "cuda"
    assert Spherical(D).to_full(torch.ones(K, device="cuda"), K).device.type == "cuda"


def _prec_chol(name):
    if name in ("full", "tied"):
        cov = _spd((R, K) if name == "full" else (R,))
        return _upper_cholesky_of_inverse(cov), np.linalg.inv(cov)
    shape = (R, K, D) if name == "diag" else (R, K)
    u = _rng(3).uniform(0.5, 2.0, size=shape)
    return u, u ** 2


def _as_full_matrices(name, c):
    """(..., K, d, d) matrices, by numpy, from values in a type's shape (K = 3, d = 4)."""
    if name == "full":
        return c
    if name == "tied":
        return np.repeat(c[..., None, :, :], K, axis=-3)
    if name == "diag":
        return c[..., None] * np.eye(D)
    return c[..., None, None] * np.eye(D)


@pytest.mark.parametrize("name", ["full", "tied", "diag", "spherical"])
def test_quad_form_and_weighted_trace_by_hand(name):
    """v_k^T P_k v_k and sum_k w_k tr(M_k P_k), per restart, with P in numpy."""
    rng = _rng(4)
    u, prec = _prec_chol(name)
    v, w = rng.normal(size=(R, K, D)), rng.uniform(0.5, 3.0, size=(R, K))
    full_p = _as_full_matrices(name, prec)
    cov = TYPES[name](D)
    np.testing.assert_allclose(cov.quad_form(_t(v), _t(u)).numpy(),
                               np.einsum("rki,rkij,rkj->rk", v, full_p, v), rtol=1e-12)
    m = _rng(5).uniform(0.5, 2.0, size=u.shape)             # M in this type's shape
    m_full = _as_full_matrices(name, m)
    expected = np.einsum("rk,rkij,rkji->r", w, m_full, full_p)
    np.testing.assert_allclose(cov.weighted_trace(_t(m), _t(w), _t(u)).numpy(), expected,
                               rtol=1e-12)


@pytest.mark.parametrize("name", ["full", "tied", "diag", "spherical"])
def test_log_det_cholesky_matches_sklearn(name):
    u, _ = _prec_chol(name)
    ours = TYPES[name](D).log_det_cholesky(_t(u)).numpy()
    expected = np.stack([skgm._compute_log_det_cholesky(u[r], name, D) for r in range(R)])
    np.testing.assert_allclose(ours, expected.reshape(ours.shape), rtol=1e-12)


# ------------------------------------------------------------------ to_full, sizes


@pytest.mark.parametrize("batch", [(), (R,)])
@pytest.mark.parametrize("name", ["full", "tied", "diag", "spherical"])
def test_to_full_by_hand(name, batch):
    """(..., K, d, d) matrices from each type's covariances, with or without a leading
    batch axis."""
    rng = _rng(6)
    shape = {"full": (K, D, D), "tied": (D, D), "diag": (K, D), "spherical": (K,)}[name]
    c = rng.uniform(0.5, 2.0, size=batch + shape)
    np.testing.assert_array_equal(TYPES[name](D).to_full(_t(c), K).numpy(),
                                  _as_full_matrices(name, c))


@pytest.mark.parametrize("name, count", [
    ("full", K * D * (D + 1) // 2), ("tied", D * (D + 1) // 2), ("diag", K * D),
    ("spherical", K)])
def test_n_parameters_is_an_int(name, count):
    ours = TYPES[name](D).n_parameters(K, D)
    assert type(ours) is int and ours == count


@pytest.mark.parametrize("name, floats", [
    # full: the centred rows (rk, n, d), their product with U, the weighted rows
    ("full", 3 * 6 * 5),
    # tied: x U (n, d), the centred products (rk, n, d), their squares summed (d)
    ("tied", 6 * 5 + 2 * 5),
    # diag: the distances (n, rk), x^2 and the products (2 d)
    ("diag", 6 + 2 * 5),
    # spherical: the distances (n, rk), x (d)
    ("spherical", 6 + 5)])
def test_row_floats_counts_the_e_step_intermediates(name, floats):
    """Floats per data row that the E-step allocates (which size the default chunks),
    counted by hand for rk = 6 restart-components and d = 5 features."""
    assert TYPES[name](5).row_floats(6, 5) == floats


# ------------------------------------------------------------------ errors


def test_full_cholesky_failure_names_the_component():
    """A non-positive-definite covariance (leading minor 2 fails) of restart 1, component
    2 is reported as component 2; the tied type has no component to name."""
    cov = np.broadcast_to(np.eye(2), (R, K, 2, 2)).copy()
    cov[1, 2] = [[1.0, 2.0], [2.0, 1.0]]
    with pytest.raises(DataError) as info:
        Full(2).precision_cholesky(_t(cov), 1e-3)
    assert str(info.value) == "cannot factorise the covariance of component 2: " + HELP
    with pytest.raises(DataError) as info:
        Tied(2).precision_cholesky(_t(cov[:, 2]), 1e-3)
    assert str(info.value) == "cannot factorise the covariance: " + HELP


@pytest.mark.parametrize("name", ["diag", "spherical"])
def test_diagonal_zero_variance_names_the_component(name):
    """A variance of exactly zero at restart 1, component 2 (feature 0) fails; a variance
    below one elsewhere does not."""
    cov = np.ones((R, K, D) if name == "diag" else (R, K))
    cov[0, 0] = 0.5
    cov[1, 2] = 0.0 if name == "spherical" else [0.0, 1.0, 1.0, 1.0]
    with pytest.raises(DataError) as info:
        TYPES[name](D).precision_cholesky(_t(cov), 1e-3)
    assert str(info.value) == "cannot factorise the covariance of component 2: " + HELP


def _asymmetric(offdiag_up, offdiag_low):
    return np.array([[[2.0, offdiag_up], [offdiag_low, 2.0]]])


@pytest.mark.parametrize("name, prec, message", [
    ("full", _asymmetric(1 + 1e-7, 1.0), "precisions_init must be symmetric"),    # rtol
    ("full", _asymmetric(1e-10, 0.0), "precisions_init must be symmetric"),       # atol
    ("full", _asymmetric(0.5, 0.0), "precisions_init must be symmetric"),
    ("full", np.array([[[1.0, 0.0], [0.0, 0.0]]]), "precisions_init must be positive definite"),
    ("full", np.array([[[1.0, 0.0], [0.0, -1.0]]]), "precisions_init must be positive definite"),
    ("diag", np.array([[1.0, 0.0]]), "precisions_init must be positive"),
    ("spherical", np.array([-1.0]), "precisions_init must be positive"),
    ("tied", np.ones((1, 2, 2)),
     "precisions_init for covariance_type='tied' must have shape (2, 2); got (1, 2, 2)"),
])
def test_check_precisions_messages(name, prec, message):
    with pytest.raises(ConfigError) as info:
        TYPES[name](2).check_precisions(_t(prec), 1, 2)
    assert str(info.value) == message


@pytest.mark.parametrize("name, prior", [
    ("full", np.eye(2)), ("tied", np.eye(2)), ("diag", np.ones(2)), ("spherical", 1.0)])
def test_check_prior_accepts_one_matrix_of_the_type(name, prior):
    """The prior has the type's shape without a component axis."""
    p = _t(prior)
    assert TYPES[name](2).check_prior(p, 2) is p


@pytest.mark.parametrize("name, prior, message", [
    ("tied", np.eye(3), "covariance_prior for covariance_type='tied' must have shape "
     "(2, 2); got (3, 3)"),
    ("full", np.ones((1, 2, 2)), "covariance_prior for covariance_type='full' must have "
     "shape (2, 2); got (1, 2, 2)"),
    ("full", [[1.0, 0.5], [0.0, 1.0]], "covariance_prior must be symmetric"),
    ("diag", [1.0, 0.0], "covariance_prior must be positive"),
])
def test_check_prior_messages(name, prior, message):
    with pytest.raises(ConfigError) as info:
        TYPES[name](2).check_prior(_t(prior), 2)
    assert str(info.value) == message


def test_precisions_from_a_non_definite_matrix():
    with pytest.raises(ConfigError) as info:
        Full(2).precision_cholesky_from_precisions(_t([[[1.0, 2.0], [2.0, 1.0]]]))
    assert str(info.value) == "precisions_init must be symmetric positive definite"


def test_unknown_covariance_type():
    with pytest.raises(ConfigError, match=re.escape(
            "covariance_type must be one of ['diag', 'full', 'spherical', 'tied']; "
            "got 'bogus'")):
        covariance_type("bogus", 2)


@pytest.mark.parametrize("name", ["tied", "diag", "spherical"])
def test_wishart_draws_need_full(name):
    with pytest.raises(ConfigError) as info:
        TYPES[name](2).wishart_precisions(np.ones((1, 2, 2)), [5.0], 3, _rng())
    assert str(info.value) == ("posterior draws of the precisions need "
                               f"covariance_type='full'; got {name!r}")


# ------------------------------------------------------------------ Wishart draws


def _fitted_factors():
    """Precision Cholesky factors (K=2, d=3) and degrees of freedom of a fitted mixture."""
    u = _upper_cholesky_of_inverse(_spd((2,), seed=7)[:, :3, :3])
    return u, np.array([5.5, 9.0])


def test_wishart_draws_are_scipy_wishart_of_the_expected_precision():
    """Component k's draws are scipy's Wishart(nu_k, U_k U_k^T / nu_k) from the same
    generator, in component order, stacked as (num_draws, K, d, d); float32 factors are
    read in float64."""
    u, nu = _fitted_factors()
    ours = Full(3).wishart_precisions(u.astype(np.float32), nu, 4, _rng(8))
    rng = _rng(8)
    u64 = u.astype(np.float32).astype(np.float64)
    expected = np.stack([scipy.stats.wishart(df=n, scale=uk @ uk.T / n).rvs(
        size=4, random_state=rng) for uk, n in zip(u64, nu, strict=True)], axis=1)
    assert ours.shape == (4, 2, 3, 3)
    np.testing.assert_allclose(ours, expected, rtol=1e-12)
    one = Full(3).wishart_precisions(u, nu, 1, _rng(8))
    assert one.shape == (1, 2, 3, 3)


def test_wishart_draws_average_to_the_expected_precision():
    """E[Lambda_k] = nu_k (E_k / nu_k) = U_k U_k^T, within 5 Monte Carlo standard errors
    (Var Lambda_ij = (E_ij^2 + E_ii E_jj) / nu)."""
    u, nu = _fitted_factors()
    n = 2000
    draws = Full(3).wishart_precisions(u, nu, n, _rng(9))
    mean = u @ np.swapaxes(u, -1, -2)
    diag = np.diagonal(mean, axis1=-2, axis2=-1)
    se = np.sqrt((mean ** 2 + diag[:, :, None] * diag[:, None, :]) / nu[:, None, None] / n)
    assert np.all(np.abs(draws.mean(0) - mean) < 5 * se)


def test_wishart_draws_need_one_dof_per_component():
    u, _ = _fitted_factors()
    with pytest.raises(ValueError, match="zip"):
        Full(3).wishart_precisions(u, [5.0], 3, _rng())
