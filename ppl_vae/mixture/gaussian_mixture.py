"""Maximum-likelihood Gaussian mixture fitted by EM, in torch, on the CPU or CUDA."""

import math
import warnings

import numpy as np
import torch

from ppl_vae import distributed
from ppl_vae.errors import ConfigError
from ppl_vae.mixture._base import NK_EPS
from ppl_vae.mixture._data import DegenerateDataWarning
from ppl_vae.mixture._stream import StreamingMixture

# A component whose responsibilities sum to less than this has no data: it is re-seeded.
EMPTY_MASS = 1e-6


class GaussianMixture(StreamingMixture):
    r"""Gaussian mixture fitted by expectation-maximisation (maximum likelihood).

    The model is :math:`p(x) = \sum_k \pi_k \mathcal{N}(x \mid \mu_k, \Sigma_k)`. Each
    iteration computes the responsibilities :math:`r_{nk} = p(z_n = k \mid x_n)` (E-step,
    closing the gap between the ELBO and :math:`\log p(X)`) and maximises the ELBO in
    the parameters (M-step), so the log-likelihood never decreases (Dempster, Laird &
    Rubin, 1977; Bishop, PRML 9.2). The API, parameter names and sign conventions are
    scikit-learn's ``GaussianMixture``.

    The E-step streams the data in chunks of ``chunk_size`` rows: it computes in
    ``dtype`` (float32 by default) on data centred on their mean, and accumulates the
    sufficient statistics in float64, so that memory does not grow with
    n_samples x n_components. Restarts (``n_init``) run together as a batch.

    Parameters
    ----------
    n_components : int, default=1
        Number of mixture components K.
    covariance_type : {"full", "tied", "diag", "spherical"}, default="full"
        Each component its own full covariance; one shared full covariance; each its own
        diagonal covariance; each its own single variance.
    tol : float, default=1e-3
        Stop when the mean log-likelihood per sample changes by less than ``tol``.
    reg_covar : float, default=1e-6
        Added to the diagonal of every covariance; must be positive.
    max_iter : int, default=100
        Maximum number of EM iterations per restart.
    n_init : int, default=1
        Number of restarts; the one with the largest final log-likelihood is kept.
    init_params : {"kmeans", "k-means++", "random", "random_from_data"}, default="kmeans"
        How the initial responsibilities are chosen (``"kmeans++"`` is accepted for
        ``"k-means++"``); unused when all three ``*_init`` arrays are given.
    weights_init : array-like of shape (n_components,), optional
        Initial weights (non-negative, summing to one).
    means_init : array-like of shape (n_components, n_features), optional
        Initial means.
    precisions_init : array-like, optional
        Initial precisions (inverse covariances); shape (n_components, n_features,
        n_features) for full, (n_features, n_features) for tied, (n_components,
        n_features) for diag, (n_components,) for spherical.
    random_state : int, numpy Generator or RandomState, or None
        Seed of the initialisation and of :meth:`sample`.
    chunk_size : int, optional
        Rows per E-step chunk; default chosen so that a chunk's largest intermediate
        takes about 4 MiB on the CPU (256 MiB on CUDA).
    device : str or torch.device, default="auto"
        "auto" (CUDA when available), "cpu" or "cuda[:i]".
    dtype : {"float32", "float64"}, default="float32"
        Compute dtype of the E-step; statistics are float64 either way.
    callback : callable, optional
        Called after each iteration as ``callback(n_iter, lower_bounds)`` with an array
        of shape (n_init,) (NaN for restarts that have stopped).
    batch_size : int, optional
        Fit by stepwise (online) EM in mini-batches of this many rows (Cappe & Moulines
        2009; see :mod:`ppl_vae.mixture._stream`); ``max_iter`` then counts passes, and X
        may be a memory-mapped array or a ``.npy`` path, read a batch at a time. Default:
        batch EM. :meth:`partial_fit` takes one such step on the batch it is given.
    learning_decay, learning_offset : float, default=0.7, 1.0
        kappa in [0, 1] and tau >= 1 of the step size rho_t = (t + tau)^(-kappa) of step
        t = 0, 1, ... (kappa in (0.5, 1] for the convergence guarantee; kappa = 0 with
        tau = 1 gives rho = 1, i.e. each batch's statistics replace the running ones).
    total_samples : int, optional
        Rows that the statistics of one batch are scaled to in :meth:`partial_fit`
        (default: the first batch's size; only the scale of N_k depends on it).

    Attributes
    ----------
    weights_ : ndarray of shape (n_components,)
    means_ : ndarray of shape (n_components, n_features)
    covariances_ : ndarray
        Shape as ``precisions_init``.
    precisions_ : ndarray
        Inverses of ``covariances_``.
    precisions_cholesky_ : ndarray
        Upper-triangular U with precision = U U^T (full, tied); 1 / sqrt(variance) (diag,
        spherical); the same matrices scikit-learn stores.
    converged_ : bool
    n_iter_ : int
        Iterations run by the best restart.
    lower_bound_ : float
        Mean log-likelihood per sample (nats) at the start of the last iteration, i.e.
        of the parameters before the last M-step (scikit-learn's convention).
    lower_bounds_ : list of float
        That value at every iteration of the best restart.
    n_features_in_ : int

    Notes
    -----
    A component whose responsibilities sum to less than 1e-6 is re-seeded at the
    worst-fitted data point (covariance: the data covariance; weight: 1 / n_samples)
    with a :class:`~ppl_vae.mixture.DegenerateDataWarning`; the log-likelihood may drop
    at that iteration.

    When ``torch.distributed`` is initialised (e.g. under ``torchrun``), ``fit(X)`` takes X
    as this process's shard of the rows: the statistics of every iteration are summed
    over the processes with one all-reduce, and all processes end with the parameters of
    one fit of all rows (see :mod:`ppl_vae.mixture._base` for the initialisation).

    References
    ----------
    C. M. Bishop, *Pattern Recognition and Machine Learning*, Springer 2006, section 9.2.
    """

    _parameter_constraints = {
        **StreamingMixture._parameter_constraints,
        "weights_init": ["array-like", None],
        "means_init": ["array-like", None],
        "precisions_init": ["array-like", None],
    }

    def __init__(self, n_components=1, *, covariance_type="full", tol=1e-3, reg_covar=1e-6,
                 max_iter=100, n_init=1, init_params="kmeans", weights_init=None,
                 means_init=None, precisions_init=None, random_state=None, chunk_size=None,
                 device="auto", dtype="float32", callback=None, batch_size=None,
                 learning_decay=0.7, learning_offset=1.0, total_samples=None):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.chunk_size = chunk_size
        self.device = device
        self.dtype = dtype
        self.callback = callback
        self.batch_size = batch_size
        self.learning_decay = learning_decay
        self.learning_offset = learning_offset
        self.total_samples = total_samples

    # ------------------------------------------------------------------ hooks

    def _deterministic_init(self):
        return all(v is not None for v in (self.weights_init, self.means_init,
                                           self.precisions_init))

    def _prepare(self, ctx):
        k, d = ctx.n_components, ctx.n_features
        device = ctx.data.device
        self._user_init = {}
        if self.weights_init is not None:
            w = _as_float64(self.weights_init, "weights_init", (k,), device)
            if bool((w < 0).any()) or bool((w > 1).any()) or abs(float(w.sum()) - 1) > 1e-6:
                raise ConfigError("weights_init must lie in [0, 1] and sum to 1; "
                                  f"got sum {float(w.sum()):g}")
            self._user_init["weights"] = w
        if self.means_init is not None:
            m = _as_float64(self.means_init, "means_init", (k, d), device)
            self._user_init["means"] = m - ctx.data.center
        if self.precisions_init is not None:
            shape = ctx.cov.shape(k, d)
            p = ctx.cov.check_precisions(
                _as_float64(self.precisions_init, "precisions_init", shape, device), k, d)
            self._user_init["precisions_cholesky"] = ctx.cov.precision_cholesky_from_precisions(p)

    def _init_provider(self, ctx, generator):
        if self._deterministic_init():
            return None
        return super()._init_provider(ctx, generator)

    def _initial_params(self, stats, ctx):
        r = ctx.n_restarts
        params = {} if stats is None else self._m_step(stats, None, ctx)
        for name, value in self._user_init.items():
            params[name] = value.unsqueeze(0).expand(r, *value.shape).clone()
        if "precisions_cholesky" in self._user_init:
            params["covariances"] = ctx.cov.covariances(params["precisions_cholesky"])
        return params

    def _log_offset(self, params, cov):
        return (params["weights"].log() + cov.log_det_cholesky(params["precisions_cholesky"])
                - 0.5 * cov.n_features * math.log(2 * math.pi))

    def _m_step(self, stats, params, ctx):
        nk = stats.nk + NK_EPS
        means = stats.sx / nk[..., None]
        cov = ctx.cov.estimate(nk, means, stats.s2, stats.shift, self.reg_covar, ctx.moments)
        weights = nk / nk.sum(-1, keepdim=True)
        empty = stats.nk < EMPTY_MASS
        if params is not None and bool(empty.any()):
            weights, means, cov = self._reseed(ctx, params, empty, weights, means, cov)
        return {"weights": weights, "means": means, "covariances": cov,
                "precisions_cholesky": ctx.cov.precision_cholesky(cov, self.reg_covar)}

    def _lower_bound(self, stats, params, ctx):
        return stats.log_likelihood / ctx.n_samples

    def _step_objective(self, stats, params, ctx, scale):
        return self._lower_bound(stats, params, ctx)  # a mean per sample: no scaling

    def _score_chunk(self, x):
        return torch.logsumexp(self._log_rho_chunk(x), -1)

    def _export(self, params, ctx):
        cov_type = ctx.cov
        self.weights_ = params["weights"][0].cpu().numpy()
        self.means_ = (params["means"][0] + ctx.data.center).cpu().numpy()
        self.covariances_ = params["covariances"][0].cpu().numpy()
        self.precisions_cholesky_ = params["precisions_cholesky"][0].cpu().numpy()
        self.precisions_ = cov_type.precisions(params["precisions_cholesky"][0]).cpu().numpy()

    # ------------------------------------------------------------------ empty components

    def _reseed(self, ctx, params, empty, weights, means, cov):
        """Move empty components to the worst-fitted points (see the class Notes)."""
        weights, means, cov = weights.clone(), means.clone(), cov.clone()
        data_cov = ctx.cov.project(ctx.covariance())
        for r in torch.nonzero(empty.any(-1)).flatten().tolist():
            ks = torch.nonzero(empty[r]).flatten()
            means[r, ks] = self._worst_points(ctx, {n: v[r:r + 1] for n, v in params.items()},
                                              len(ks))
            weights[r, ks] = 1.0 / ctx.n_samples
            if ctx.cov.per_component:
                cov[r, ks] = data_cov
        warnings.warn(
            f"{int(empty.sum())} component(s) lost all their points; re-seeded at the "
            "worst-fitted points (the log-likelihood may drop at this iteration)",
            DegenerateDataWarning, stacklevel=6)
        return weights / weights.sum(-1, keepdim=True), means, cov

    def _worst_points(self, ctx, params, count):
        """The ``count`` rows (centred, float64) with the lowest log-likelihood under
        ``params``, among all processes' rows."""
        dtype = ctx.data.dtype
        offset = self._log_offset(params, ctx.cov).to(dtype)
        values, indices = [], []
        for start, x in ctx.data.chunks():
            maha, _ = ctx.cov.mahalanobis(x, params["means"].to(dtype),
                                          params["precisions_cholesky"].to(dtype))
            lse = torch.logsumexp(maha.mul_(-0.5).add_(offset), -1)[:, 0]
            low = torch.topk(lse, min(count, len(lse)), largest=False)
            values.append(low.values)
            indices.append(low.indices + start)
        values, indices = torch.cat(values), torch.cat(indices)
        low = torch.topk(values, min(count, len(values)), largest=False)
        values, rows = low.values, ctx.data.rows(indices[low.indices])
        if ctx.data.shard:
            values, rows = _gather_lowest(values, rows, count)
        return rows[torch.topk(values, count, largest=False).indices]

    # ------------------------------------------------------------------ model selection

    def _n_parameters(self):
        d = self.n_features_in_
        k = self.n_components
        return self._cov.n_parameters(k, d) + k * d + k - 1

    def bic(self, X):
        """Bayesian information criterion on X: ``-2 log L + n_parameters log N``
        (lower is better)."""
        n = self._validated(X).n_samples
        return -2 * self.score(X) * n + self._n_parameters() * math.log(n)

    def aic(self, X):
        """Akaike information criterion on X: ``-2 log L + 2 n_parameters``
        (lower is better)."""
        n = self._validated(X).n_samples
        return -2 * self.score(X) * n + 2 * self._n_parameters()


def _gather_lowest(values, rows, count):
    """Every process's (up to) ``count`` lowest values and their rows, padded with inf
    so that all processes' shapes agree."""
    pad = count - len(values)
    values = torch.nn.functional.pad(values, (0, pad), value=torch.inf)
    rows = torch.nn.functional.pad(rows, (0, 0, 0, pad))
    return (distributed.all_gather(t).flatten(0, 1) for t in (values, rows))


def _as_float64(value, name, shape, device):
    try:
        tensor = torch.as_tensor(np.asarray(value, dtype=np.float64), device=device)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be an array of real numbers") from None
    if tuple(tensor.shape) != tuple(shape):
        raise ConfigError(f"{name} must have shape {tuple(shape)}; got {tuple(tensor.shape)}")
    if not bool(torch.isfinite(tensor).all()):
        raise ConfigError(f"{name} contains NaN or inf")
    return tensor
