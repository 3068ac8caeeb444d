"""One class per covariance type: the only code that knows how each type stores Sigma.

Every other module asks a :class:`CovarianceType` for Mahalanobis distances, the
second-moment statistic of a chunk, the maximum-likelihood estimate, Cholesky factors
of the precisions and their log-determinants; :data:`COVARIANCE_TYPES` maps
scikit-learn's names to them. Shapes carry a leading restart dimension R (``n_init``
restarts run as a batch); K components, d features:

=========  ===================  ======================================================
type       covariances          precisions_cholesky (P = U U^T, U upper triangular)
=========  ===================  ======================================================
full       (R, K, d, d)         (R, K, d, d)
tied       (R, d, d)            (R, d, d)
diag       (R, K, d)            (R, K, d): 1 / sqrt(variances)
spherical  (R, K)               (R, K): 1 / sqrt(variance)
=========  ===================  ======================================================

Per-component counts (the weights of :meth:`CovarianceType.pool`) have shape (R, K), or
(R, 1) for ``tied``, so that they broadcast against per-component quantities.
"""

import numpy as np
import scipy.stats
import torch

from ppl_vae.errors import ConfigError, DataError

_CHOLESKY_HELP = (
    "it is not positive definite (for instance a component collapsed onto one point or "
    "onto duplicate points); raise reg_covar (now {reg:g}), use fewer components, or "
    "scale the data (e.g. standardise each feature)"
)


def _cholesky_error(index, reg):
    where = f"the covariance of component {index}" if index is not None else "the covariance"
    return DataError(f"cannot factorise {where}: " + _CHOLESKY_HELP.format(reg=reg))


def expand_as(w: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """``w`` with trailing singleton axes so that it broadcasts against ``cov``."""
    return w.reshape(w.shape + (1,) * (cov.ndim - w.ndim))


def _flip(m):
    return m.flip(-1).flip(-2)


def _matrix_precision_cholesky(cov, reg):
    """Upper-triangular U = L^{-T} with cov = L L^T, so that cov^{-1} = U U^T."""
    chol, info = torch.linalg.cholesky_ex(cov)
    if bool((info != 0).any()):
        bad = (info != 0).nonzero()[0].tolist()
        raise _cholesky_error(bad[-1] if cov.ndim > 3 else None, reg)
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device).expand_as(cov)
    return torch.linalg.solve_triangular(chol, eye, upper=False).mT


def _matrix_cholesky_from_precision(prec):
    # With J the exchange matrix, J P J = L L^T gives P = (J L J)(J L J)^T, J L J upper.
    chol, info = torch.linalg.cholesky_ex(_flip(prec))
    if bool((info != 0).any()):
        raise ConfigError("precisions_init must be symmetric positive definite")
    return _flip(chol)


def _check_symmetric_pd(m, what):
    if not torch.allclose(m, m.mT, rtol=1e-8, atol=1e-12):
        raise ConfigError(f"{what} must be symmetric")
    if bool((torch.linalg.eigvalsh(m) <= 0).any()):
        raise ConfigError(f"{what} must be positive definite")


class CovarianceType:
    """Interface; see the module docstring for shapes."""

    name: str
    per_component = True
    # Whether estimates need the data's full second moment (else its diagonal suffices).
    full_moments = True

    def __init__(self, n_features: int):
        self.n_features = n_features

    def n_parameters(self, n_components: int, n_features: int) -> int:
        raise NotImplementedError

    def shape(self, n_components: int, n_features: int) -> tuple:
        raise NotImplementedError

    def row_floats(self, n_rk: int, n_features: int) -> int:
        """Floats of E-step intermediates per data row, for choosing a chunk size."""
        raise NotImplementedError

    def mahalanobis(self, x, means, prec_chol):
        """Squared distances (x_n - mu_k)^T P_k (x_n - mu_k), shape (n, R, K), and a cache
        that :meth:`second_moment` may reuse."""
        raise NotImplementedError

    def second_moment(self, x, resp, shift, cache):
        """This chunk's float64 second-moment statistic (None when the type needs none)."""
        raise NotImplementedError

    def estimate(self, nk, xk, s2, shift, reg, moments):
        """Maximum-likelihood covariances from the accumulated statistics, plus reg_covar."""
        raise NotImplementedError

    def move_second_moment(self, s2, nk, sx, old, new):
        """The second-moment statistic ``s2``, taken about centres ``old``, re-expressed
        about ``new`` (per restart and component); ``sx`` is sum_n r_nk x_n. Types whose
        statistic does not depend on the centres return it unchanged."""
        return s2

    def precision_cholesky(self, cov, reg):
        raise NotImplementedError

    def precision_cholesky_from_precisions(self, prec):
        raise NotImplementedError

    def precisions(self, prec_chol):
        raise NotImplementedError

    def covariances(self, prec_chol):
        """Inverse of the precisions, from their Cholesky factors."""
        raise NotImplementedError

    def log_det_cholesky(self, prec_chol):
        """log det U = 0.5 log det P, per component: shape (R, K), or (R, 1) for tied."""
        raise NotImplementedError

    def quad_form(self, v, prec_chol):
        """v_k^T P_k v_k for vectors v of shape (R, K, d); returns (R, K)."""
        raise NotImplementedError

    def weighted_trace(self, m, w, prec_chol):
        """sum_k w_k tr(M_k P_k), with M in this type's shape (or one prior matrix)."""
        raise NotImplementedError

    def weighted_outer(self, v, w):
        """sum of w_k v_k v_k^T in this type's shape (tied: averaged over components)."""
        raise NotImplementedError

    def pool(self, nk):
        """Counts that go with this type's covariances: (R, K), or their mean for tied."""
        return nk

    def project(self, full):
        """A full (d, d) matrix in this type's shape (no component axis)."""
        raise NotImplementedError

    def to_full(self, cov, n_components):
        """Covariances as (..., K, d, d) matrices (for sampling and plotting)."""
        raise NotImplementedError

    def wishart_precisions(self, precisions_cholesky, dof, num_draws, rng):
        """Draws of the precisions from the variational factors q(Lambda_k) =
        Wishart(nu_k, E[Lambda_k] / nu_k) of a fitted Bayesian mixture (numpy, shape
        (num_draws, K, d, d)); only full covariances have these factors."""
        raise ConfigError(f"posterior draws of the precisions need covariance_type='full'; "
                          f"got {self.name!r}")

    def check_precisions(self, prec, n_components, n_features):
        """Validate a user's ``precisions_init`` (float64, no restart axis)."""
        expected = self.shape(n_components, n_features)
        if tuple(prec.shape) != expected:
            raise ConfigError(f"precisions_init for covariance_type={self.name!r} must have "
                              f"shape {expected}; got {tuple(prec.shape)}")
        self._check_values(prec, "precisions_init")
        return prec

    def check_prior(self, prior, n_features):
        """Validate a user's ``covariance_prior`` (float64)."""
        expected = self.shape(1, n_features)[1:] if self.per_component else \
            self.shape(1, n_features)
        if tuple(prior.shape) != expected:
            raise ConfigError(f"covariance_prior for covariance_type={self.name!r} must have "
                              f"shape {expected}; got {tuple(prior.shape)}")
        self._check_values(prior, "covariance_prior")
        return prior

    def _check_values(self, m, what):
        if bool((m <= 0).any()):
            raise ConfigError(f"{what} must be positive")


class Full(CovarianceType):
    name = "full"

    def n_parameters(self, n_components, n_features):
        return n_components * n_features * (n_features + 1) // 2

    def shape(self, n_components, n_features):
        return (n_components, n_features, n_features)

    def row_floats(self, n_rk, n_features):
        return 3 * n_rk * n_features

    def mahalanobis(self, x, means, prec_chol):
        n, d = x.shape
        r, k = means.shape[:2]
        diff = x.unsqueeze(0) - means.reshape(r * k, 1, d)
        y = torch.bmm(diff, prec_chol.reshape(r * k, d, d))
        return y.square_().sum(-1).T.reshape(n, r, k), diff

    def second_moment(self, x, resp, shift, cache):
        n, r, k = resp.shape
        d = x.shape[1]
        diff = cache if cache is not None else x.unsqueeze(0) - shift.reshape(r * k, 1, d)
        weighted = resp.reshape(n, r * k).T.unsqueeze(-1) * diff
        return torch.bmm(weighted.mT, diff).reshape(r, k, d, d).to(torch.float64)

    def estimate(self, nk, xk, s2, shift, reg, moments):
        # s2 is the scatter about `shift` (the previous means): subtracting the small
        # (xk - shift) outer product avoids the cancellation of E[xx^T] - mu mu^T.
        delta = xk - shift
        cov = s2 / nk[..., None, None] - delta.unsqueeze(-1) * delta.unsqueeze(-2)
        cov = 0.5 * (cov + cov.mT)
        return cov + reg * torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)

    def move_second_moment(self, s2, nk, sx, old, new):
        # sum r (x - b)(x - b)^T = S_a + (a - b) u^T + u (a - b)^T + N (a - b)(a - b)^T,
        # with u = sum r (x - a) = sx - N a.
        step = old - new
        u = sx - nk[..., None] * old
        cross = step.unsqueeze(-1) * u.unsqueeze(-2)
        return (s2 + cross + cross.mT
                + nk[..., None, None] * step.unsqueeze(-1) * step.unsqueeze(-2))

    def precision_cholesky(self, cov, reg):
        return _matrix_precision_cholesky(cov, reg)

    def precision_cholesky_from_precisions(self, prec):
        return _matrix_cholesky_from_precision(prec)

    def precisions(self, prec_chol):
        return prec_chol @ prec_chol.mT

    def covariances(self, prec_chol):
        eye = torch.eye(prec_chol.shape[-1], dtype=prec_chol.dtype, device=prec_chol.device)
        inverse = torch.linalg.solve_triangular(prec_chol, eye.expand_as(prec_chol), upper=True)
        return inverse.mT @ inverse

    def log_det_cholesky(self, prec_chol):
        return torch.diagonal(prec_chol, dim1=-2, dim2=-1).log().sum(-1)

    def quad_form(self, v, prec_chol):
        return (v.unsqueeze(-2) @ prec_chol).squeeze(-2).square().sum(-1)

    def weighted_trace(self, m, w, prec_chol):
        return (w * ((m @ prec_chol) * prec_chol).sum((-2, -1))).sum(-1)

    def weighted_outer(self, v, w):
        return w[..., None, None] * v.unsqueeze(-1) * v.unsqueeze(-2)

    def project(self, full):
        return full

    def to_full(self, cov, n_components):
        return cov

    def wishart_precisions(self, precisions_cholesky, dof, num_draws, rng):
        chol = np.asarray(precisions_cholesky, dtype=float)
        expected = chol @ np.swapaxes(chol, -1, -2)
        d = chol.shape[-1]
        return np.stack([
            scipy.stats.wishart(df=nu, scale=mean / nu).rvs(
                size=num_draws, random_state=rng).reshape(num_draws, d, d)
            for mean, nu in zip(expected, np.asarray(dof, dtype=float), strict=True)
        ], axis=1)

    def _check_values(self, m, what):
        _check_symmetric_pd(m, what)


class Tied(Full):
    name = "tied"
    per_component = False
    # One Wishart factor shared by the components is not what the CAVI update fits.
    wishart_precisions = CovarianceType.wishart_precisions

    def n_parameters(self, n_components, n_features):
        return n_features * (n_features + 1) // 2

    def shape(self, n_components, n_features):
        return (n_features, n_features)

    def row_floats(self, n_rk, n_features):
        return n_rk * n_features + 2 * n_features

    def mahalanobis(self, x, means, prec_chol):
        xu = torch.matmul(x, prec_chol)                      # (R, n, d)
        y = xu.unsqueeze(1) - (means @ prec_chol).unsqueeze(2)  # (R, K, n, d)
        return y.square_().sum(-1).permute(2, 0, 1), None

    def second_moment(self, x, resp, shift, cache):
        return None  # the tied scatter comes from the data's second moment

    def move_second_moment(self, s2, nk, sx, old, new):
        return s2

    def estimate(self, nk, xk, s2, shift, reg, moments):
        between = (nk[..., None, None] * xk.unsqueeze(-1) * xk.unsqueeze(-2)).sum(-3)
        cov = (moments - between) / nk.sum(-1)[..., None, None]
        cov = 0.5 * (cov + cov.mT)
        return cov + reg * torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)

    def log_det_cholesky(self, prec_chol):
        return super().log_det_cholesky(prec_chol).unsqueeze(-1)

    def quad_form(self, v, prec_chol):
        return super().quad_form(v, prec_chol.unsqueeze(-3))

    def weighted_trace(self, m, w, prec_chol):
        return w.sum(-1) * ((m @ prec_chol) * prec_chol).sum((-2, -1))

    def weighted_outer(self, v, w):
        return super().weighted_outer(v, w).mean(-3)

    def pool(self, nk):
        return nk.mean(-1, keepdim=True)

    def to_full(self, cov, n_components):
        return cov.unsqueeze(-3).expand(*cov.shape[:-2], n_components, *cov.shape[-2:])


class Diag(CovarianceType):
    name = "diag"
    full_moments = False

    def n_parameters(self, n_components, n_features):
        return n_components * n_features

    def shape(self, n_components, n_features):
        return (n_components, n_features)

    def row_floats(self, n_rk, n_features):
        return n_rk + 2 * n_features

    def mahalanobis(self, x, means, prec_chol):
        n, d = x.shape
        r, k = means.shape[:2]
        prec = prec_chol.square().reshape(r * k, d)
        mu = means.reshape(r * k, d)
        x2 = x.square()
        # sum_j P_j (x_j - mu_j)^2 = x^2 . P - 2 x . (mu P) + mu^2 . P, as two matmuls.
        maha = torch.addmm((mu.square() * prec).sum(-1), x2, prec.T)
        maha.addmm_(x, (mu * prec).T, alpha=-2.0)
        return maha.clamp_(min=0).reshape(n, r, k), x2

    def second_moment(self, x, resp, shift, cache):
        n, r, k = resp.shape
        x2 = cache if cache is not None else x.square()
        return (resp.reshape(n, r * k).T @ x2).reshape(r, k, -1).to(torch.float64)

    def estimate(self, nk, xk, s2, shift, reg, moments):
        return (s2 / nk[..., None] - xk.square()).clamp(min=0) + reg

    def precision_cholesky(self, cov, reg):
        if bool((cov <= 0).any()):
            bad = (cov <= 0).nonzero()[0].tolist()
            raise _cholesky_error(bad[1] if len(bad) > 1 else None, reg)
        return cov.rsqrt()

    def precision_cholesky_from_precisions(self, prec):
        return prec.sqrt()

    def precisions(self, prec_chol):
        return prec_chol.square()

    def covariances(self, prec_chol):
        return prec_chol.square().reciprocal()

    def log_det_cholesky(self, prec_chol):
        return prec_chol.log().sum(-1)

    def quad_form(self, v, prec_chol):
        return (v.square() * prec_chol.square()).sum(-1)

    def weighted_trace(self, m, w, prec_chol):
        return (w * (m * prec_chol.square()).sum(-1)).sum(-1)

    def weighted_outer(self, v, w):
        return w[..., None] * v.square()

    def project(self, full):
        return torch.diagonal(full, dim1=-2, dim2=-1).clone()

    def to_full(self, cov, n_components):
        return torch.diag_embed(cov)


class Spherical(Diag):
    name = "spherical"

    def n_parameters(self, n_components, n_features):
        return n_components

    def shape(self, n_components, n_features):
        return (n_components,)

    def row_floats(self, n_rk, n_features):
        return n_rk + n_features

    def mahalanobis(self, x, means, prec_chol):
        n, d = x.shape
        r, k = means.shape[:2]
        mu = means.reshape(r * k, d)
        x2 = x.square().sum(-1, keepdim=True)
        dist = torch.addmm(mu.square().sum(-1), x, mu.T, alpha=-2.0).add_(x2)
        return (dist.clamp_(min=0) * prec_chol.square().reshape(r * k)).reshape(n, r, k), x2

    def second_moment(self, x, resp, shift, cache):
        n, r, k = resp.shape
        x2 = cache if cache is not None else x.square().sum(-1, keepdim=True)
        return (resp.reshape(n, r * k).T @ x2).reshape(r, k).to(torch.float64)

    def estimate(self, nk, xk, s2, shift, reg, moments):
        d = xk.shape[-1]
        return (s2 / nk - xk.square().sum(-1)).clamp(min=0) / d + reg

    def log_det_cholesky(self, prec_chol):
        return prec_chol.log() * self.n_features

    def quad_form(self, v, prec_chol):
        return v.square().sum(-1) * prec_chol.square()

    def weighted_trace(self, m, w, prec_chol):
        return (w * m * prec_chol.square()).sum(-1) * self.n_features

    def weighted_outer(self, v, w):
        return w * v.square().mean(-1)

    def project(self, full):
        return torch.diagonal(full, dim1=-2, dim2=-1).mean(-1)

    def to_full(self, cov, n_components):
        eye = torch.eye(self.n_features, dtype=cov.dtype, device=cov.device)
        return cov[..., None, None] * eye


COVARIANCE_TYPES = {cls.name: cls for cls in (Full, Tied, Diag, Spherical)}


def covariance_type(name: str, n_features: int) -> CovarianceType:
    """The :class:`CovarianceType` for scikit-learn's name, ready for ``n_features``."""
    if name not in COVARIANCE_TYPES:
        raise ConfigError(
            f"covariance_type must be one of {sorted(COVARIANCE_TYPES)}; got {name!r}"
        )
    return COVARIANCE_TYPES[name](n_features)
