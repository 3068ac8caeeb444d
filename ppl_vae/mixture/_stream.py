"""Mini-batch fitting for both mixtures: stepwise EM and stochastic variational inference.

Both estimators' updates are functions of a few sufficient statistics: per component
N_k = sum_n r_nk, sum_n r_nk x_n and a second moment (for "tied", the data's second
moment). One mini-batch step

1. computes the batch's responsibilities under the current parameters (EM's E-step,
   CAVI's local step);
2. blends the batch's statistics, scaled up to ``n_ref`` rows, into running statistics,
   ``s <- (1 - rho_t) s + rho_t (n_ref / B) s_batch`` with ``rho_t = (t + tau)^(-kappa)``
   for steps t = 0, 1, ... (``learning_offset`` tau, ``learning_decay`` kappa);
3. runs the estimator's own M-step on the running statistics.

For :class:`~ppl_vae.mixture.GaussianMixture` this is stepwise (online) EM (Cappe &
Moulines 2009). For :class:`~ppl_vae.mixture.BayesianGaussianMixture` it is stochastic
variational inference (Hoffman, Blei, Wang & Paisley 2013): the natural parameters of
q(pi) and of each q(mu_k, Lambda_k) are the prior's plus the statistics (alpha_k =
alpha_0 + N_k, beta_k = beta_0 + N_k, beta_k m_k = beta_0 m_0 + sum r x, W_k^-1 +
beta_k m_k m_k^T = W_0^-1 + beta_0 m_0 m_0^T + sum r x x^T, nu_k = nu_0 + N_k), affine in
them, so blending the statistics is the natural-gradient step ``lambda <- (1 - rho) lambda
+ rho lambda_hat``, lambda_hat being CAVI's optimum for the batch repeated n_ref / B times.
The running statistics start from those of the initialisation (scaled to n_ref rows).

With one batch holding all the data and rho = 1 at every step (``learning_offset=1``,
``learning_decay=0``) each pass is exactly one iteration of batch EM or CAVI.
"""

import os
from dataclasses import dataclass, field, replace
from numbers import Real

import numpy as np
import torch
from sklearn.utils._param_validation import Interval

from ppl_vae.errors import ConfigError
from ppl_vae.mixture import _init
from ppl_vae.mixture._base import BaseMixture, FitContext, Statistics
from ppl_vae.mixture._data import ChunkedData, check_n_samples
from ppl_vae.mixture._params import POSITIVE_INT

# fit(X) with batch_size computes its start (k-means or init_params) on the first
# max(batch_size, INIT_ROWS) rows: a start from one small batch can leave components empty.
INIT_ROWS = 2**16

STREAM_PARAMETERS = {
    "batch_size": [POSITIVE_INT, None],
    "learning_decay": [Interval(Real, 0, 1, closed="both")],
    "learning_offset": [Interval(Real, 1, None, closed="left")],
    "total_samples": [POSITIVE_INT, None],
}


def step_size(t, offset, decay):
    """rho_t = (t + tau)^(-kappa) for step t = 0, 1, ..."""
    return float((t + offset) ** -decay)


def open_array(X):
    """X itself, or the array of a ``.npy`` path memory-mapped copy-on-write (pages are
    read from the file on use and never written back)."""
    if isinstance(X, (str, os.PathLike)):
        return np.load(X, mmap_mode="c")
    return X


def _scaled(stats, scale):
    def times(value):
        return None if value is None else value * scale
    return Statistics(nk=times(stats.nk), sx=times(stats.sx), s2=times(stats.s2),
                      shift=stats.shift, log_likelihood=times(stats.log_likelihood),
                      neg_entropy=times(stats.neg_entropy))


def _blend(old, new, keep, weight, cov):
    """``keep * old + weight * new``, the old second moment first moved to new's centres."""
    if old is None:
        return _scaled(new, weight)
    s2 = None
    if new.s2 is not None:
        moved = cov.move_second_moment(old.s2, old.nk, old.sx, old.shift, new.shift)
        s2 = keep * moved + weight * new.s2
    return Statistics(nk=keep * old.nk + weight * new.nk, sx=keep * old.sx + weight * new.sx,
                      s2=s2, shift=new.shift)


@dataclass
class Stream:
    """The state of a mini-batch fit between steps."""

    ctx: FitContext  # the context the fit started from (centre, covariance type)
    params: dict
    stats: Statistics | None  # running statistics, scaled to n_ref rows
    moments: torch.Tensor  # running data second moment, scaled to n_ref rows
    n_ref: float
    steps: int = 0
    history: list = field(default_factory=list)  # the objective after each step, (R,)


class StreamingMixture(BaseMixture):
    """Adds ``partial_fit`` and mini-batch ``fit`` (``batch_size``) to a mixture; see the
    module docstring for the update."""

    _parameter_constraints = {**BaseMixture._parameter_constraints, **STREAM_PARAMETERS}

    def fit(self, X, y=None):
        """Fit the mixture to X of shape (n_samples, n_features); returns self.

        With ``batch_size`` set, X may also be a path to a ``.npy`` file (memory-mapped),
        and ``max_iter`` counts passes over the data in mini-batches of that many rows
        (contiguous blocks, visited in a random order each pass); the start is computed
        on the first max(batch_size, 65,536) rows. ``lower_bounds_`` then
        holds one value per pass: the batches' estimates of the objective during the
        pass, each under the parameters before its step (as batch EM records the
        log-likelihood at the start of each iteration), averaged over the rows.
        """
        self.__dict__.pop("_stream", None)
        if self.batch_size is None:
            return self._fit(X)
        return self._fit_stream(open_array(X))

    def partial_fit(self, X, y=None):
        """One mini-batch step on the rows of X; returns self.

        The first call initialises the model from X (its mean and covariance set the
        centre and, for the variational mixture, the default priors) and takes a step;
        later calls continue. The statistics of each batch are scaled to
        ``total_samples`` rows (required for the variational mixture, whose posterior
        depends on the size of the data set; for EM the default is the first batch's
        size, which changes nothing but the scale). ``lower_bounds_`` holds the objective
        of every step; ``n_iter_`` counts the steps.
        """
        stream = getattr(self, "_stream", None)
        if stream is None:
            ctx = self._stream_context(open_array(X))
            self._prepare(ctx)
            n_ref = self._reference_rows(ctx.n_samples, self.total_samples)
            generator = torch.Generator().manual_seed(_init.seed_from(self.random_state))
            stream = self._start(ctx, ctx, n_ref, generator)
        stream.history.append(self._step(stream, open_array(X)))
        self._stream = stream
        self._finish(stream, stream.history, False, stream.steps)
        return self

    def _stream_context(self, X):
        ctx = self._context(X, resident=False)
        if ctx.data.shard:
            raise ConfigError("mini-batch fitting (batch_size, partial_fit) is not supported "
                              "under torch.distributed; fit in one process")
        return ctx

    def _reference_rows(self, n_batch, total):
        """Rows the batch statistics are scaled to (EM: any scale will do)."""
        return float(total or n_batch)

    # ------------------------------------------------------------------ the steps

    def _start(self, ctx, init_ctx, n_ref, generator):
        """Initial parameters from the rows of ``init_ctx``, statistics scaled to n_ref."""
        scale = n_ref / init_ctx.n_samples
        provider = self._init_provider(init_ctx, generator)
        stats = None if provider is None else _scaled(
            self._statistics_from(init_ctx, provider), scale)
        moments = init_ctx.moments * scale
        params = self._initial_params(stats, replace(init_ctx, moments=moments))
        return Stream(ctx=ctx, params=params, stats=stats, moments=moments, n_ref=n_ref)

    def _batch_context(self, ctx, X):
        data = ChunkedData(X, device=ctx.data.device, dtype=ctx.data.dtype,
                           center=ctx.data.center, n_features=ctx.n_features, resident=False)
        data.chunk_size = ctx.data.chunk_size
        moments, offset = data.moments(full=ctx.cov.full_moments)
        return FitContext(data, ctx.cov, ctx.n_components, ctx.n_restarts, moments, offset)

    def _step(self, stream, X):
        """One mini-batch step; returns the batch's estimate of the objective under the
        parameters before the step, shape (R,), on the CPU."""
        ctx = stream.ctx if X is stream.ctx.data else self._batch_context(stream.ctx, X)
        stats = self._e_step(ctx, stream.params)
        scale = stream.n_ref / ctx.n_samples
        rho = step_size(stream.steps, self.learning_offset, self.learning_decay)
        keep, weight = (1.0 - rho, rho * scale) if stream.stats is not None else (0.0, scale)
        stream.stats = _blend(stream.stats, stats, keep, weight, ctx.cov)
        stream.moments = keep * stream.moments + weight * ctx.moments
        # Moments enter the M-step only for tied covariances (the pooled scatter); the
        # other types use them only to re-seed an empty component, from this batch.
        m_ctx = ctx if ctx.cov.per_component else replace(ctx, moments=stream.moments)
        value = self._step_objective(stats, stream.params, ctx, scale).cpu()
        stream.params = self._m_step(stream.stats, stream.params, m_ctx)
        stream.steps += 1
        return value

    def _step_objective(self, stats, params, ctx, scale):
        """The objective at ``params`` (those the batch's E-step used) estimated from one
        batch, in the units of ``lower_bound_``: unbiased for the full data's, unlike one
        taken after the update, which the batch itself has just pulled up."""
        return self._lower_bound(_scaled(stats, scale), params,
                                 replace(ctx, moments=ctx.moments * scale))

    # ------------------------------------------------------------------ the loop

    def _fit_stream(self, X):
        ctx = self._stream_context(X)
        self._prepare(ctx)
        n = ctx.n_samples
        size = min(int(self.batch_size), n)
        seed = _init.seed_from(self.random_state)
        head = min(n, max(size, INIT_ROWS))
        init_ctx = ctx if head == n else self._batch_context(ctx, X[:head])
        check_n_samples(init_ctx.n_samples, ctx.n_components, "the first rows")
        stream = self._start(ctx, init_ctx, float(n), torch.Generator().manual_seed(seed))
        order = np.random.default_rng(seed)
        starts = np.arange(0, n, size)
        previous = torch.full((ctx.n_restarts,), -torch.inf, dtype=torch.float64)
        converged, passes = False, 0
        for passes in range(1, int(self.max_iter) + 1):
            total = torch.zeros(ctx.n_restarts, dtype=torch.float64)
            for start in order.permutation(starts) if len(starts) > 1 else starts:
                rows = ctx.data if size == n else X[start:start + size]
                total += self._step(stream, rows) * (min(size, n - start) / n)
            stream.history.append(total)
            if self.callback is not None:
                self.callback(passes, total.numpy())
            converged = bool(((total - previous).abs() < self.tol).all())
            previous = total
            if converged:
                break
        if not converged and self.max_iter > 0:
            self._warn_not_converged(ctx.n_restarts)
        self._stream = stream
        self._finish(stream, stream.history, converged, passes)
        return self

    def _finish(self, stream, history, converged, n_iter):
        last = history[-1] if history else torch.zeros(stream.ctx.n_restarts)
        best = int(torch.as_tensor(last).argmax())
        chosen = {name: value[best:best + 1] for name, value in stream.params.items()}
        self._set_fitted(stream.ctx, chosen, [float(h[best]) for h in history], converged,
                         n_iter, float(last[best]))
