"""The loop shared by EM and CAVI, and the scikit-learn-style methods around it.

A subclass says what its parameters are and how one coordinate step updates them; this
module runs the loop (``n_init`` restarts as a batch, convergence on ``tol``, history
of the objective), streams the data through the E-step in chunks with float64
sufficient statistics, and offers ``predict``, ``predict_proba``, ``score_samples``,
``score`` and ``sample`` with scikit-learn's conventions.

Hooks for a subclass (all shapes carry a leading restart axis R):

- ``_prepare(ctx)``: read data-dependent settings (priors, user initial parameters).
- ``_initial_params(stats, ctx)``: parameters from the initial responsibilities' statistics.
- ``_log_offset(params, cov)``: the per-component term of log rho_nk, shape (R, K); the
  E-step adds ``-0.5 * mahalanobis`` to it.
- ``_m_step(stats, params, ctx)`` and ``_lower_bound(stats, params, ctx)``: one step and the
  objective recorded after it, shape (R,).
- ``_export(params, ctx)``: the fitted attributes; ``_score_chunk(x)``: log density rows.

Under ``torch.distributed`` (e.g. started by ``torchrun``), ``fit(X)`` takes X as this
process's shard of the rows. Everything the loop computes from the data is a sum over
rows: the data mean and moments (hence the priors), N, and each pass's statistics (N_k,
sum r x, the second moment, the log-likelihood and entropy terms). Each pass sums its
statistics over the processes with one all-reduce of a single float64 buffer, so every
process runs the same M-step on the same numbers: all end with identical parameters,
equal to one process's fit of all rows, and stop at the same iteration. Initialisation
is made identical as follows: user-given parameters are used as given; ``resp_init``
holds the responsibilities of this process's rows; k-means++ and random_from_data seeds
are drawn by rank 0 among its own rows; k-means then runs Lloyd's iterations on all
shards; "random" draws each process's rows from its own stream of the shared seed.
Prediction and scoring stay per row and local.
"""

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.utils._param_validation import Options, StrOptions

from ppl_vae import distributed
from ppl_vae.device import resolve_device
from ppl_vae.errors import NotFittedError
from ppl_vae.mixture import _init
from ppl_vae.mixture._covariance import COVARIANCE_TYPES, CovarianceType, covariance_type
from ppl_vae.mixture._data import (
    DTYPES,
    ChunkedData,
    ConvergenceWarning,
    check_n_samples,
    default_chunk_size,
    resolve_dtype,
    warn_constant_features,
)
from ppl_vae.mixture._params import (
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    POSITIVE,
    POSITIVE_INT,
    RANDOM_STATE,
    validate,
)

# nk gets this added before dividing, as in scikit-learn, so that an empty component
# gives finite (if meaningless) statistics rather than 0/0.
NK_EPS = 10 * torch.finfo(torch.float64).eps
_EXP_FLOOR = {t: math.log(torch.finfo(t).tiny) + 1 for t in (torch.float32, torch.float64)}


@dataclass
class FitContext:
    """What one fit knows about its data and settings."""

    data: ChunkedData
    cov: CovarianceType
    n_components: int
    n_restarts: int
    moments: torch.Tensor  # sum_n x_n x_n^T in centred coordinates, float64 (d, d)
    mean_offset: torch.Tensor  # data mean in centred coordinates (zero up to rounding)

    @property
    def n_samples(self):
        """Rows of the whole data set (all processes' shards)."""
        return self.data.n_total

    @property
    def n_features(self):
        return self.data.n_features

    def covariance(self):
        """The data's covariance (ddof=1), float64 (d, d)."""
        n = self.n_samples
        scatter = self.moments - n * torch.outer(self.mean_offset, self.mean_offset)
        return scatter / max(n - 1, 1)


@dataclass
class Statistics:
    """Float64 sufficient statistics of one pass, per restart and component."""

    nk: torch.Tensor  # (R, K) sum_n r_nk
    sx: torch.Tensor  # (R, K, d) sum_n r_nk x_n
    s2: torch.Tensor | None  # the covariance type's second moment (about `shift`)
    shift: torch.Tensor  # (R, K, d) the centres that s2 is taken about
    log_likelihood: torch.Tensor = field(default=None)  # (R,) sum_n log sum_k rho_nk
    neg_entropy: torch.Tensor = field(default=None)  # (R,) sum_nk r_nk log r_nk


def _softmax_stats(log_rho, need_log_resp):
    """Responsibilities, log-normaliser (log-sum-exp) and optionally log responsibilities,
    with one exp: log_rho is overwritten.

    Shifted log-probabilities are floored where exp stays a normal number: a smaller
    responsibility is zero at the dtype's precision anyway, and exp of arguments that
    underflow is 10-30 times slower on the CPU."""
    top = log_rho.amax(-1, keepdim=True)
    log_rho.sub_(top).clamp_(min=_EXP_FLOOR[log_rho.dtype])
    resp = log_rho.exp()
    total = resp.sum(-1, keepdim=True)
    resp.div_(total)
    log_total = total.log_()
    lse = (top + log_total).squeeze(-1)
    log_resp = log_rho.sub_(log_total) if need_log_resp else None
    return resp, lse, log_resp


class BaseMixture(DensityMixin, BaseEstimator):
    """Base class of :class:`GaussianMixture` and :class:`BayesianGaussianMixture`.

    scikit-learn's ``BaseEstimator`` gives ``get_params``, ``set_params`` and ``repr``
    from the constructor's signature; ``_parameter_constraints`` are checked at ``fit``.
    """

    _needs_entropy = False

    _parameter_constraints = {
        "n_components": [POSITIVE_INT],
        "covariance_type": [StrOptions(set(COVARIANCE_TYPES))],
        "tol": [NON_NEGATIVE],
        "reg_covar": [POSITIVE],
        "max_iter": [NON_NEGATIVE_INT],
        "n_init": [POSITIVE_INT],
        "init_params": [StrOptions(set(_init.INIT_PARAMS))],
        "random_state": RANDOM_STATE,
        "chunk_size": [POSITIVE_INT, None],
        "device": [str, torch.device],
        "dtype": [StrOptions(set(DTYPES)), Options(torch.dtype, set(DTYPES.values()))],
        "callback": [callable, None],
    }

    def _check_fitted(self):
        if not hasattr(self, "_fitted"):
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet; call fit(X) first"
            )

    # ------------------------------------------------------------------ fitting

    def _deterministic_init(self):
        """True when the initialisation uses no randomness (restarts would be identical)."""
        return getattr(self, "resp_init", None) is not None

    def _context(self, X, resident=True):
        validate(self.get_params(deep=False), self._parameter_constraints, type(self).__name__)
        device = resolve_device(self.device)
        dtype = resolve_dtype(self.dtype)
        data = ChunkedData(X, device=device, dtype=dtype, shard=distributed.is_distributed(),
                           resident=resident)
        check_n_samples(data.n_total, self.n_components)
        cov = covariance_type(self.covariance_type, data.n_features)
        restarts = 1 if self._deterministic_init() else int(self.n_init)
        rk = restarts * self.n_components
        data.chunk_size = self.chunk_size or default_chunk_size(
            cov.row_floats(rk, data.n_features) + 4 * rk, device, dtype.itemsize)
        moments, offset = data.moments(full=cov.full_moments)
        ctx = FitContext(data, cov, int(self.n_components), restarts, moments, offset)
        variances = torch.diagonal(ctx.covariance())
        warn_constant_features(variances, float(variances.max()))
        return ctx

    def _fit(self, X):
        ctx = self._context(X)
        self._prepare(ctx)
        seed = _init.seed_from(self.random_state)
        if ctx.data.shard:
            seed = distributed.broadcast_object(seed)
        generator = torch.Generator().manual_seed(seed)
        params = self._initialize(ctx, generator)
        best, history, converged, n_iter, bound = self._run(ctx, params)
        if not converged and self.max_iter > 0:
            self._warn_not_converged(ctx.n_restarts)
        self._set_fitted(ctx, best, history, converged, n_iter, bound)
        return self

    def _warn_not_converged(self, n_restarts, stacklevel=4):
        warnings.warn(
            f"the best of {n_restarts} restart(s) did not converge in "
            f"max_iter={self.max_iter} iterations (last change above tol={self.tol}); "
            "raise max_iter or tol, or check the data",
            ConvergenceWarning, stacklevel=stacklevel)

    def _set_fitted(self, ctx, best, history, converged, n_iter, bound):
        """The fitted attributes from the best restart's parameters ``best`` (R = 1)."""
        self.n_features_in_ = ctx.n_features
        self.converged_ = converged
        self.n_iter_ = n_iter
        self.lower_bound_ = bound
        self.lower_bounds_ = history
        self._center = ctx.data.center
        self._export(best, ctx)
        self._fitted = {name: value[:1].clone() for name, value in best.items()}
        self._cov = ctx.cov
        self._device, self._dtype = ctx.data.device, ctx.data.dtype

    def _initialize(self, ctx, generator):
        provider = self._init_provider(ctx, generator)
        stats = None if provider is None else self._statistics_from(ctx, provider)
        return self._initial_params(stats, ctx)

    def _init_provider(self, ctx, generator):
        if getattr(self, "resp_init", None) is not None:
            return _init.given(self.resp_init, ctx.data.n_samples, ctx.n_components)
        variance = float(torch.diagonal(ctx.covariance()).mean())
        return _init.responsibilities(self.init_params, ctx.data, ctx.n_components,
                                      ctx.n_restarts, generator, variance)

    def _run(self, ctx, params):
        r = ctx.n_restarts
        bound = torch.full((r,), -torch.inf, dtype=torch.float64)
        history = [[] for _ in range(r)]
        converged = torch.zeros(r, dtype=torch.bool)
        n_iter = torch.zeros(r, dtype=torch.long)
        active = torch.arange(r)
        for iteration in range(1, int(self.max_iter) + 1):
            current = {name: value[active] for name, value in params.items()}
            stats = self._e_step(ctx, current)
            new = self._m_step(stats, current, ctx)
            lower = self._lower_bound(stats, new, ctx).cpu()
            for name, value in new.items():
                params[name][active] = value
            change = lower - bound[active]
            bound[active] = lower
            n_iter[active] = iteration
            for i, value in zip(active.tolist(), lower.tolist(), strict=True):
                history[i].append(value)
            done = change.abs() < self.tol
            converged[active[done]] = True
            if self.callback is not None:
                shown = torch.full((r,), float("nan"), dtype=torch.float64)
                shown[active] = lower
                self.callback(iteration, shown.numpy())
            active = active[~done]
            if len(active) == 0:
                break
        best = int(bound.argmax()) if self.max_iter > 0 else 0
        chosen = {name: value[best:best + 1] for name, value in params.items()}
        return (chosen, history[best], bool(converged[best]), int(n_iter[best]),
                float(bound[best]))

    # ------------------------------------------------------------------ E-step

    def _statistics_from(self, ctx, provider):
        """Statistics of given responsibilities: a pass for the means, then one for the
        second moment about them (so that it suffers no cancellation)."""
        first = self._accumulate(ctx, provider, shift=None, second=False)
        shift = first.sx / (first.nk + NK_EPS)[..., None]
        second = self._accumulate(ctx, provider, shift=shift, second=True)
        second.sx, second.nk = first.sx, first.nk
        return second

    def _accumulate(self, ctx, provider, shift, second):
        shift_c = None if shift is None else shift.to(ctx.data.dtype)
        stats = _empty_stats(ctx.n_restarts, ctx.n_components, ctx.n_features,
                             ctx.data.device, None if shift is None else shift_c.double())
        for start, x in ctx.data.chunks():
            resp = provider(start, x)
            _add_first_moments(stats, x, resp)
            if second:
                _add_second_moment(stats, ctx.cov.second_moment(x, resp, shift_c, None))
        return _sum_over_shards(stats, ctx.data)

    def _e_step(self, ctx, params):
        """One pass: responsibilities under ``params`` and their statistics."""
        means = params["means"]
        r, k, d = means.shape
        stats = _empty_stats(r, k, d, ctx.data.device, means)
        stats.log_likelihood = torch.zeros(r, dtype=torch.float64, device=ctx.data.device)
        stats.neg_entropy = torch.zeros_like(stats.log_likelihood)
        dtype = ctx.data.dtype
        means_c = means.to(dtype)
        stats.shift = means_c.double()
        prec_c = params["precisions_cholesky"].to(dtype)
        offset = self._log_offset(params, ctx.cov).to(dtype)
        for _, x in ctx.data.chunks():
            maha, cache = ctx.cov.mahalanobis(x, means_c, prec_c)
            log_rho = maha.mul_(-0.5).add_(offset)
            resp, lse, log_resp = _softmax_stats(log_rho, self._needs_entropy)
            _add_first_moments(stats, x, resp)
            _add_second_moment(stats, ctx.cov.second_moment(x, resp, means_c, cache))
            stats.log_likelihood += lse.double().sum(0)
            if log_resp is not None:
                stats.neg_entropy += (resp * log_resp).sum((0, 2)).double()
        return _sum_over_shards(stats, ctx.data)

    # ------------------------------------------------------------------ prediction

    def _validated(self, X):
        self._check_fitted()
        return ChunkedData(X, device=self._device, dtype=self._dtype, center=self._center,
                           n_features=self.n_features_in_)

    def _prediction_data(self, X):
        data = self._validated(X)
        k = self.n_components
        data.chunk_size = self.chunk_size or default_chunk_size(
            self._cov.row_floats(k, data.n_features) + 4 * k, data.device, self._dtype.itemsize)
        return data

    def _log_rho_chunk(self, x):
        params = self._fitted
        maha, _ = self._cov.mahalanobis(x, params["means"].to(x.dtype),
                                        params["precisions_cholesky"].to(x.dtype))
        offset = self._log_offset(params, self._cov).to(x.dtype)
        return maha.mul_(-0.5).add_(offset)[:, 0]

    def _map_rows(self, X, row_fn, out, columns=()):
        """``row_fn`` of each chunk of X, concatenated, or written into ``out`` (an array
        of shape (n_samples, *columns), e.g. a memory-mapped .npy) chunk by chunk."""
        data = self._prediction_data(X)
        if out is not None:
            expected = (data.n_samples, *columns)
            if tuple(getattr(out, "shape", ())) != expected:
                raise ValueError(f"out must be an array of shape {expected}; got "
                                 f"{getattr(out, 'shape', type(out).__name__)}")
        parts = []
        for start, x in data.chunks():
            value = row_fn(x).cpu()
            if out is None:
                parts.append(value)
            else:
                out[start:start + len(value)] = value.numpy()
        return torch.cat(parts).numpy() if out is None else out

    def predict_proba(self, X, out=None):
        """Responsibilities p(component k | x_n): array of shape (n_samples, n_components),
        rows summing to one (for the variational mixture, q(z_n = k)). With ``out`` (e.g.
        ``np.lib.format.open_memmap(path, "w+", np.float32, (n, K))``) the rows are written
        there chunk by chunk and ``out`` is returned: memory stays bounded at any N."""
        return self._map_rows(X, lambda x: torch.softmax(self._log_rho_chunk(x).double(), -1),
                              out, (self.n_components,))

    def predict(self, X, out=None):
        """The most responsible component of each row: int array of shape (n_samples,);
        ``out`` as in :meth:`predict_proba`."""
        return self._map_rows(X, lambda x: self._log_rho_chunk(x).argmax(-1), out)

    def score_samples(self, X, out=None):
        """log p(x_n) per row, in nats: array of shape (n_samples,); ``out`` as in
        :meth:`predict_proba`."""
        return self._map_rows(X, lambda x: self._score_chunk(x).double(), out)

    def score(self, X, y=None):
        """Mean of :meth:`score_samples` over the rows of X (nats per example), summed
        chunk by chunk (no per-row array is held)."""
        data = self._prediction_data(X)
        total = sum(float(self._score_chunk(x).double().sum()) for _, x in data.chunks())
        return total / data.n_samples

    def objective(self, X):
        """The fit's objective on X at the fitted parameters, after an E-step on X: the
        mean log-likelihood per sample for EM (= :meth:`score`), the complete evidence
        lower bound in total nats for the variational mixture."""
        data = self._prediction_data(X)
        moments, offset = data.moments(full=self._cov.full_moments)
        ctx = FitContext(data, self._cov, self.n_components, 1, moments, offset)
        stats = self._e_step(ctx, self._fitted)
        return float(self._lower_bound(stats, self._fitted, ctx)[0])

    def fit(self, X, y=None):
        """Fit the mixture to X of shape (n_samples, n_features); returns self."""
        return self._fit(X)

    def fit_predict(self, X, y=None):
        """Fit, then return ``predict(X)`` (labels from a final E-step, as scikit-learn)."""
        return self._fit(X).predict(X)

    def sample(self, n_samples=1):
        """Draw from the fitted mixture (plug-in ``weights_``, ``means_``, ``covariances_``).

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        y : ndarray of shape (n_samples,)
            The component of each draw; draws are grouped by component, as in scikit-learn.
        """
        self._check_fitted()
        validate({"n_samples": n_samples}, {"n_samples": [POSITIVE_INT]}, "sample")
        rng = np.random.default_rng(_init.seed_from(self.random_state))
        counts = rng.multinomial(n_samples, self.weights_ / self.weights_.sum())
        full = self._cov.to_full(torch.as_tensor(self.covariances_), self.n_components)
        chol = torch.linalg.cholesky(full).numpy()
        draws = [self.means_[k] + rng.standard_normal((c, self.n_features_in_)) @ chol[k].T
                 for k, c in enumerate(counts)]
        labels = np.repeat(np.arange(self.n_components), counts)
        return np.concatenate(draws), labels


def _empty_stats(r, k, d, device, shift):
    zeros = dict(dtype=torch.float64, device=device)
    return Statistics(nk=torch.zeros((r, k), **zeros), sx=torch.zeros((r, k, d), **zeros),
                      s2=None, shift=shift)


_SUMMED = ("nk", "sx", "s2", "log_likelihood", "neg_entropy")


def _sum_over_shards(stats, data):
    """The statistics of all processes' rows (one collective for all of them)."""
    summed = data.sum_over_shards(*(getattr(stats, name) for name in _SUMMED))
    for name, value in zip(_SUMMED, summed, strict=True):
        setattr(stats, name, value)
    return stats


def _add_first_moments(stats, x, resp):
    n, r, k = resp.shape
    stats.nk += resp.sum(0).double()
    stats.sx += (resp.reshape(n, r * k).T @ x).reshape(r, k, -1).double()


def _add_second_moment(stats, s2):
    if s2 is not None:
        stats.s2 = s2 if stats.s2 is None else stats.s2.add_(s2)
