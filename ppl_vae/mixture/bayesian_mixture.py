"""Variational Bayesian Gaussian mixture fitted by coordinate ascent (mean-field CAVI)."""

import math

import numpy as np
import torch
from sklearn.utils._param_validation import StrOptions

from ppl_vae.errors import ConfigError, DataError
from ppl_vae.mixture._base import NK_EPS
from ppl_vae.mixture._covariance import expand_as
from ppl_vae.mixture._params import POSITIVE
from ppl_vae.mixture._stream import StreamingMixture
from ppl_vae.mixture._weight_priors import WEIGHT_PRIORS, weight_prior


def _sum_digamma(nu, d):
    """sum_{i=0}^{d-1} digamma((nu - i) / 2), elementwise in nu."""
    i = torch.arange(d, dtype=nu.dtype, device=nu.device)
    return torch.special.digamma(0.5 * (nu.unsqueeze(-1) - i)).sum(-1)


def _log_wishart_norm(log_det_w, nu, d):
    """log B(W, nu) of the Wishart density (Bishop, PRML B.79); the multivariate log-gamma
    holds the d (d - 1) / 4 log pi term."""
    return -0.5 * nu * log_det_w - 0.5 * nu * d * math.log(2) - torch.mvlgamma(0.5 * nu, d)


def _log_det_w0(cov, cov0, reg, default):
    """log |W_0| = -log |cov0| of the Wishart prior, once per fit (the bound holds it, unlike
    scikit-learn's, which drops it), so cov0 must be positive definite. The default cov0 is
    the data's covariance: singular when a feature is constant or features are collinear."""
    try:
        return 2 * cov.log_det_cholesky(cov.precision_cholesky(cov0, reg))
    except DataError:
        if not default:
            raise
        raise DataError(
            "the default covariance_prior (the data's covariance) is singular, so the "
            "evidence lower bound is undefined: some feature is constant or features are "
            "collinear; drop or combine those features, or pass covariance_prior") from None


def _float_or(value, default):
    return default if value is None else float(value)


class BayesianGaussianMixture(StreamingMixture):
    r"""Gaussian mixture with priors on all parameters, fitted by mean-field CAVI.

    The model (Bishop, PRML 10.2) puts a Dirichlet or stick-breaking prior on the
    weights and a Normal-Wishart prior on each component's mean and precision:
    :math:`\Lambda_k \sim \mathcal{W}(W_0, \nu_0)`,
    :math:`\mu_k \mid \Lambda_k \sim \mathcal{N}(m_0, (\beta_0 \Lambda_k)^{-1})`. The
    posterior is approximated by :math:`q(Z) q(\pi) \prod_k q(\mu_k, \Lambda_k)` and
    each factor is updated in turn to its optimum given the others (PRML 10.46-10.63),
    so the evidence lower bound never decreases. Components the data do not need keep
    weights near zero. Priors, defaults, updates and attribute names are
    scikit-learn's ``BayesianGaussianMixture``, so the two can be compared.

    ``covariance_type`` restricts the Wishart scale matrix ``W_k`` of ``q``: "full" is
    PRML's model; "diag" and "spherical" keep ``W_k`` (and the prior's ``W_0``) diagonal
    or a multiple of the identity; "tied" gives every component the same ``q(Lambda)``.
    In each case the update is the optimum within that restricted family, which is what
    scikit-learn computes.

    Parameters
    ----------
    n_components : int, default=1
        Upper bound K on the number of components.
    covariance_type : {"full", "tied", "diag", "spherical"}, default="full"
    tol : float, default=1e-3
        Stop when the lower bound (total nats) changes by less than ``tol``.
    reg_covar : float, default=1e-6
        Added to the diagonal of each component's scatter S_k (see Notes).
    max_iter : int, default=100
    n_init : int, default=1
        Restarts, run as a batch; the one with the largest lower bound is kept.
    init_params : {"kmeans", "k-means++", "random", "random_from_data"}, default="kmeans"
    weight_concentration_prior_type : {"dirichlet_process", "dirichlet_distribution"}
        Stick-breaking (default) or a symmetric Dirichlet.
    weight_concentration_prior : float, optional
        gamma of the sticks or alpha_0 of the Dirichlet; default 1 / n_components.
    mean_precision_prior : float, optional
        beta_0; default 1.
    mean_prior : array-like of shape (n_features,), optional
        m_0; default the data mean.
    degrees_of_freedom_prior : float, optional
        nu_0 > n_features - 1; default n_features.
    covariance_prior : float or array-like, optional
        W_0^{-1}, in the covariance type's shape; default the data covariance (ddof=1),
        its diagonal (diag) or the mean of its diagonal (spherical).
    resp_init : array-like of shape (n_samples, n_components), optional
        Initial responsibilities (overrides ``init_params``), e.g. from labels; under
        ``torch.distributed``, those of this process's rows of X (as for GaussianMixture,
        X is then this process's shard of the data).
    random_state, chunk_size, device, dtype, callback
        As in :class:`~ppl_vae.mixture.GaussianMixture`.
    batch_size, learning_decay, learning_offset : optional
        Stochastic variational inference (Hoffman et al. 2013) in mini-batches of
        ``batch_size`` rows: natural-gradient steps of size rho_t = (t + tau)^(-kappa)
        on the global factors q(pi), q(mu_k, Lambda_k), the local step q(z) as in CAVI
        (see :mod:`ppl_vae.mixture._stream`); ``max_iter`` then counts passes and
        ``lower_bounds_`` holds per pass the mean of the batches' ELBO estimates.
        Default: batch CAVI. Defaults and ranges as in
        :class:`~ppl_vae.mixture.GaussianMixture`.
    total_samples : int, optional
        N, the size of the data set that :meth:`partial_fit`'s batches come from
        (required there: each batch stands for N / B copies of itself).

    Attributes
    ----------
    weights_ : ndarray of shape (n_components,)
        E[pi_k] under q, normalised over the K components (scikit-learn's weights_).
    weight_concentration_ : ndarray of shape (n_components,) or tuple of two
        alpha (Dirichlet) or the Beta parameters (a, b) of the sticks.
    mean_precision_ : ndarray of shape (n_components,)
        beta_k.
    means_ : ndarray of shape (n_components, n_features)
        m_k.
    degrees_of_freedom_ : ndarray of shape (n_components,), or float for tied
        nu_k.
    covariances_ : ndarray
        (nu_k W_k)^{-1} = 1 / E[Lambda_k], in the covariance type's shape.
    precisions_ : ndarray
        nu_k W_k = E[Lambda_k].
    precisions_cholesky_ : ndarray
        As in :class:`~ppl_vae.mixture.GaussianMixture`.
    lower_bound_ : float
        The complete evidence lower bound (total nats over the training set) after the
        best restart's last iteration.
    lower_bounds_ : list of float
        The bound after every iteration.
    converged_, n_iter_, n_features_in_
    weight_concentration_prior_, mean_precision_prior_, mean_prior_,
    degrees_of_freedom_prior_, covariance_prior_
        The priors used (defaults filled in).

    Notes
    -----
    **The lower bound.** ``lower_bound_`` is PRML's bound (10.70-10.77) with every
    constant: ``E[log p(X, Z, pi, mu, Lambda)] - E[log q]``, a true lower bound on
    log p(X) (with ``reg_covar`` counted as part of each S_k). It is evaluated after
    each M-step, with the responsibilities of that iteration's E-step. scikit-learn's
    ``lower_bound_`` drops the terms that do not change between iterations; the two
    differ by

    .. math::
        C = -\tfrac{Nd}{2}\log 2\pi + \tfrac{Kd}{2}\log\beta_0 + K \log B(W_0, \nu_0)
            + \tfrac{K d (d-1)}{4} \log \pi + c_\pi,

    with :math:`c_\pi = \log\Gamma(K\alpha_0) - K\log\Gamma(\alpha_0)` for the Dirichlet
    and :math:`c_\pi = K\log\gamma` for the sticks. Unlike the EM objective, this bound
    is a total over samples, not a mean (as in scikit-learn).

    **Prediction.** :meth:`score_samples` is the log posterior predictive density, a
    mixture of Student-t densities (PRML 10.81) weighted by E[pi_k]; with the
    stick-breaking prior the mass beyond the K components goes to the prior predictive.
    :meth:`predict_proba` returns the variational responsibilities q(z = k), computed
    as in the E-step (scikit-learn's choice).

    References
    ----------
    C. M. Bishop, *Pattern Recognition and Machine Learning*, Springer 2006, section 10.2.
    D. M. Blei and M. I. Jordan, Variational inference for Dirichlet process mixtures,
    *Bayesian Analysis* 1(1), 2006.
    """

    _needs_entropy = True

    _parameter_constraints = {
        **StreamingMixture._parameter_constraints,
        "weight_concentration_prior_type": [StrOptions(set(WEIGHT_PRIORS))],
        "weight_concentration_prior": [POSITIVE, None],
        "mean_precision_prior": [POSITIVE, None],
        "mean_prior": ["array-like", None],
        "degrees_of_freedom_prior": [POSITIVE, None],
        "covariance_prior": [POSITIVE, "array-like", None],
        "resp_init": ["array-like", None],
    }

    def __init__(self, n_components=1, *, covariance_type="full", tol=1e-3, reg_covar=1e-6,
                 max_iter=100, n_init=1, init_params="kmeans",
                 weight_concentration_prior_type="dirichlet_process",
                 weight_concentration_prior=None, mean_precision_prior=None, mean_prior=None,
                 degrees_of_freedom_prior=None, covariance_prior=None, resp_init=None,
                 random_state=None, chunk_size=None, device="auto", dtype="float32",
                 callback=None, batch_size=None, learning_decay=0.7, learning_offset=1.0,
                 total_samples=None):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weight_concentration_prior_type = weight_concentration_prior_type
        self.weight_concentration_prior = weight_concentration_prior
        self.mean_precision_prior = mean_precision_prior
        self.mean_prior = mean_prior
        self.degrees_of_freedom_prior = degrees_of_freedom_prior
        self.covariance_prior = covariance_prior
        self.resp_init = resp_init
        self.random_state = random_state
        self.chunk_size = chunk_size
        self.device = device
        self.dtype = dtype
        self.callback = callback
        self.batch_size = batch_size
        self.learning_decay = learning_decay
        self.learning_offset = learning_offset
        self.total_samples = total_samples

    def _reference_rows(self, n_batch, total):
        if total is None:
            raise ConfigError("partial_fit of the variational mixture needs total_samples, "
                              "the number of rows of the data set the batches come from "
                              "(the posterior depends on it)")
        return float(total)

    # ------------------------------------------------------------------ priors

    def _prepare(self, ctx):
        d, k = ctx.n_features, ctx.n_components
        device = ctx.data.device
        self._weights = weight_prior(self.weight_concentration_prior_type)
        alpha0 = _float_or(self.weight_concentration_prior, 1.0 / k)
        beta0 = _float_or(self.mean_precision_prior, 1.0)
        nu0 = _float_or(self.degrees_of_freedom_prior, float(d))
        if nu0 <= d - 1:
            raise ConfigError(f"degrees_of_freedom_prior must be greater than n_features - 1 "
                              f"= {d - 1}; got {nu0:g}")
        center = ctx.data.center
        if self.mean_prior is None:
            m0 = ctx.mean_offset.clone()
        else:
            m0 = torch.as_tensor(np.asarray(self.mean_prior, dtype=np.float64), device=device)
            if tuple(m0.shape) != (d,) or not bool(torch.isfinite(m0).all()):
                raise ConfigError(f"mean_prior must be {d} finite numbers; got shape "
                                  f"{tuple(m0.shape)}")
            m0 = m0 - center
        default = self.covariance_prior is None
        if default:
            cov0 = ctx.cov.project(ctx.covariance())
        else:
            cov0 = ctx.cov.check_prior(torch.as_tensor(
                np.asarray(self.covariance_prior, dtype=np.float64), device=device), d)
        self._prior = {"alpha0": alpha0, "beta0": beta0, "nu0": nu0, "m0": m0, "cov0": cov0,
                       "log_det_w0": _log_det_w0(ctx.cov, cov0, self.reg_covar, default)}
        self.weight_concentration_prior_ = alpha0
        self.mean_precision_prior_ = beta0
        self.degrees_of_freedom_prior_ = nu0
        self.mean_prior_ = (m0 + center).cpu().numpy()
        self.covariance_prior_ = cov0.cpu().numpy()

    # ------------------------------------------------------------------ CAVI step

    def _initial_params(self, stats, ctx):
        return self._m_step(stats, None, ctx)

    def _gaussian_statistics(self, stats, ctx):
        nk = stats.nk + NK_EPS
        xk = stats.sx / nk[..., None]
        sk = ctx.cov.estimate(nk, xk, stats.s2, stats.shift, self.reg_covar, ctx.moments)
        return nk, xk, sk

    def _m_step(self, stats, params, ctx):
        """q(pi), then q(mu_k, Lambda_k) (PRML 10.58, 10.60-10.63) from this E-step."""
        prior, cov = self._prior, ctx.cov
        nk, xk, sk = self._gaussian_statistics(stats, ctx)
        beta = prior["beta0"] + nk
        means = (prior["beta0"] * prior["m0"] + nk[..., None] * xk) / beta[..., None]
        pooled = cov.pool(nk)
        dof = prior["nu0"] + pooled
        scatter = (prior["cov0"] + expand_as(pooled, sk) * sk
                   + cov.weighted_outer(xk - prior["m0"], prior["beta0"] * nk / beta))
        covariances = scatter / expand_as(dof, scatter)
        return {
            "weight_concentration": self._weights.posterior(nk, prior["alpha0"]),
            "mean_precision": beta,
            "means": means,
            "degrees_of_freedom": dof,
            "covariances": covariances,
            "precisions_cholesky": cov.precision_cholesky(covariances, self.reg_covar),
        }

    def _expected_log_det(self, params, cov):
        """E[log |Lambda_k|] (PRML 10.65) and log |W_k|, broadcast to (R, K)."""
        d = cov.n_features
        nu = params["degrees_of_freedom"]
        log_det_w = 2 * cov.log_det_cholesky(params["precisions_cholesky"]) - d * nu.log()
        shape = params["mean_precision"].shape
        expected = _sum_digamma(nu, d) + d * math.log(2) + log_det_w
        return expected.expand(shape), log_det_w.expand(shape), nu.expand(shape)

    def _log_offset(self, params, cov):
        """log rho_nk + 0.5 nu_k (x - m_k)^T W_k (x - m_k) (PRML 10.46, 10.64-10.66)."""
        d = cov.n_features
        log_lambda, _, _ = self._expected_log_det(params, cov)
        return (self._weights.expected_log_weights(params["weight_concentration"])
                + 0.5 * (log_lambda - d / params["mean_precision"])
                - 0.5 * d * math.log(2 * math.pi))

    def _lower_bound(self, stats, params, ctx):
        """The complete bound, PRML (10.70)-(10.77), per restart."""
        cov, prior = ctx.cov, self._prior
        d, k = ctx.n_features, ctx.n_components
        beta0, nu0 = prior["beta0"], prior["nu0"]
        nk, xk, sk = self._gaussian_statistics(stats, ctx)
        beta, m = params["mean_precision"], params["means"]
        prec_chol = params["precisions_cholesky"]
        log_lambda, log_det_w, nu = self._expected_log_det(params, cov)
        log_pi = self._weights.expected_log_weights(params["weight_concentration"])
        log_2pi = math.log(2 * math.pi)

        # E[log p(X | Z, mu, Lambda)] (10.71) and E[log p(Z | pi)] (10.72)
        data = (0.5 * (nk * (log_lambda - d / beta - d * log_2pi)).sum(-1)
                - 0.5 * cov.weighted_trace(sk, nk, prec_chol)
                - 0.5 * (nk * cov.quad_form(xk - m, prec_chol)).sum(-1)
                + (nk * log_pi).sum(-1))
        # E[log p(mu, Lambda)] (10.74)
        log_det_w0 = prior["log_det_w0"]
        log_b0 = _log_wishart_norm(log_det_w0.reshape(()), torch.full_like(log_det_w0, nu0)
                                   .reshape(()), d)
        p_theta = (0.5 * (d * math.log(beta0 / (2 * math.pi)) + log_lambda - d * beta0 / beta
                          - beta0 * cov.quad_form(m - prior["m0"], prec_chol)).sum(-1)
                   + k * log_b0 + 0.5 * (nu0 - d - 1) * log_lambda.sum(-1)
                   - 0.5 * cov.weighted_trace(prior["cov0"], torch.ones_like(nk), prec_chol))
        # E[log q(mu, Lambda)] (10.77) with the Wishart entropy (B.82)
        log_b = _log_wishart_norm(log_det_w, nu, d)
        entropy = -log_b - 0.5 * (nu - d - 1) * log_lambda + 0.5 * nu * d
        q_theta = (0.5 * log_lambda + 0.5 * d * (beta / (2 * math.pi)).log()
                   - 0.5 * d - entropy).sum(-1)
        kl_pi = self._weights.kl(params["weight_concentration"], prior["alpha0"])
        # -E[log q(Z)] (10.75) is -neg_entropy.
        return data + p_theta - q_theta - kl_pi - stats.neg_entropy

    # ------------------------------------------------------------------ prediction

    def _student_t(self, x, means, prec_chol, nu, beta):
        """log St(x | m_k, L_k, nu_k + 1 - d) with L_k = (nu_k + 1 - d) beta_k W_k /
        (1 + beta_k) (PRML 10.81-10.82); W_k = P_k / nu_k. Shape (n, R, K)."""
        cov = self._cov
        d = cov.n_features
        maha, _ = cov.mahalanobis(x.double(), means, prec_chol)
        dof = nu + 1 - d
        scale = dof * beta / ((1 + beta) * nu)
        return (torch.lgamma(0.5 * (dof + d)) - torch.lgamma(0.5 * dof)
                + 0.5 * d * scale.log() + cov.log_det_cholesky(prec_chol)
                - 0.5 * d * (dof * math.pi).log()
                - 0.5 * (dof + d) * torch.log1p(scale * maha / dof))

    def _score_chunk(self, x):
        params, prior, cov = self._fitted, self._prior, self._cov
        nu = params["degrees_of_freedom"].expand_as(params["mean_precision"])
        log_t = self._student_t(x, params["means"], params["precisions_cholesky"], nu,
                                params["mean_precision"])[:, 0]
        mean_pi, rest = self._weights.predictive_weights(params["weight_concentration"])
        terms = log_t + mean_pi.log()
        if float(rest[0]) > 0:
            # Components beyond K have q = prior: their predictive is the prior's.
            cov0 = prior["cov0"] / prior["nu0"]
            shape = (1, 1) if cov.per_component else (1,)
            prec0 = cov.precision_cholesky(cov0.expand(*shape, *cov0.shape), self.reg_covar)
            one = torch.ones((1, 1), dtype=torch.float64, device=x.device)
            log_prior = self._student_t(x, prior["m0"].reshape(1, 1, -1), prec0,
                                        prior["nu0"] * one, prior["beta0"] * one)[:, 0]
            terms = torch.cat([terms, log_prior + rest.log()], -1)
        return torch.logsumexp(terms, -1)

    def _export(self, params, ctx):
        p = {name: value[0] for name, value in params.items()}
        self.weights_ = self._weights.weights(p["weight_concentration"]).cpu().numpy()
        self.weight_concentration_ = self._weights.export(p["weight_concentration"])
        self.mean_precision_ = p["mean_precision"].cpu().numpy()
        self.means_ = (p["means"] + ctx.data.center).cpu().numpy()
        dof = p["degrees_of_freedom"].cpu().numpy()
        self.degrees_of_freedom_ = dof if ctx.cov.per_component else float(dof[0])
        self.covariances_ = p["covariances"].cpu().numpy()
        self.precisions_cholesky_ = p["precisions_cholesky"].cpu().numpy()
        self.precisions_ = ctx.cov.precisions(p["precisions_cholesky"]).cpu().numpy()
