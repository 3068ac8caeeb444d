"""Evaluation of a trained VAE, in nats per example (higher is better for every bound).

The ELBO and its two terms are read off Pyro traces of the VAE's own guide and model, so
they are the same numbers for every combination of parts: the guide is run, the model is
replayed on the guide's z, and the sites' log densities give

    ELBO(x) = E_q[log p(x | z)] - KL(q(z | x) || p(z)).

The KL is the closed form where torch has one (a diagonal normal guide against a normal
prior) and a one-sample Monte Carlo estimate, log q(z|x) - log p(z), elsewhere.

Beyond the ELBO:

- :func:`log_likelihood`: log p(x) by importance sampling,
  log p(x) ~ logsumexp_k [log p(x, z_k) - log q(z_k | x)] - log K with z_k ~ q(z | x),
  a stochastic lower bound that rises to log p(x) as K grows (Burda et al. 2016);
  vectorized over data points and over chunks of the K samples, which a running
  logsumexp combines, so memory stays bounded for any K;
- :func:`active_units`: latent dimensions whose posterior mean varies with x
  (Burda et al. 2016);
- :func:`inference_gaps`: log p(x) - ELBO(q) split into the approximation gap
  log p(x) - ELBO(q*) and the amortization gap ELBO(q*) - ELBO(q) (Cremer, Li & Duvenaud
  2018), q* being each point's optimal member of the guide's family;
- :func:`ppl_vae.evaluation.aggregate.kl_decomposition`: the KL term split into index-code
  mutual information, total correlation and dimension-wise KL (Chen et al. 2018);

:mod:`ppl_vae.evaluation.report` puts them together as one row of a results table.
"""

import math

import torch
from pyro import poutine
from pyro.distributions.transforms.softplus import softplus_inv
from torch.distributions import kl_divergence

from ppl_vae.errors import ConfigError
from ppl_vae.parts.guides import diagonal_normal
from ppl_vae.parts.local import fit_local

# Samples x points per vectorized chunk of log p(x), by device type: it bounds memory
# whatever K and N are. On a CPU a chunk whose activations stay in cache is fastest: 2,048
# rows (2 MB per hidden layer of width 256) ran about twice as fast as 32,768 for D = 784
# (``ppl-vae bench eval``); a GPU wants large chunks to stay busy (about 40 MB per layer).
MAX_ROWS = {"cpu": 2**11, "cuda": 2**15}
# The scale that q* of a guide without a density (the delta guide) starts from.
DELTA_PROPOSAL_SCALE = 0.1
# Monte Carlo draws per point: of each ELBO of the inference gaps, of each step of the q* fit.
ELBO_SAMPLES = 1000
Q_STAR_SAMPLES = 8


def elbo_terms(vae, x, y=None, idx=None):
    """Per-example ELBO terms for a batch, one sample of z per example.

    Parameters
    ----------
    vae : VAE
    x : Tensor, shape (B, D)
    y : LongTensor, shape (B,), optional (conditional VAEs)
    idx : LongTensor, shape (B,), optional
        Training-set indices of the rows, for guides that keep per-datapoint parameters.

    Returns
    -------
    dict of Tensor, each of shape (B,)
        ``recon`` = log p(x | z), ``kl`` = KL(q(z|x) || p(z)) (or its one-sample estimate),
        ``elbo`` = recon - kl. Nats; higher ELBO is better.
    """
    guide_trace = poutine.trace(vae.guide).get_trace(x, y, idx)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(
        x, y, idx)
    q = guide_trace.nodes["z"]["fn"]
    p = model_trace.nodes["z"]["fn"]
    z = guide_trace.nodes["z"]["value"]
    recon = model_trace.nodes["x"]["fn"].log_prob(x)
    try:
        kl = kl_divergence(q, p)
    except NotImplementedError:
        kl = q.log_prob(z) - p.log_prob(z)
    return {"recon": recon, "kl": kl, "elbo": recon - kl}


def evaluate_elbo(vae, x, y=None, *, batch_size=1024):
    """Mean ELBO, reconstruction term and KL over a data set, in nats per example.

    Returns
    -------
    dict of float
        ``elbo``, ``recon``, ``kl``: averages over the rows of ``x``.
    """
    with torch.no_grad():
        totals = {"recon": 0.0, "kl": 0.0, "elbo": 0.0}
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size]
            yb = None if y is None else y[start : start + batch_size]
            for key, value in elbo_terms(vae, xb, yb).items():
                totals[key] += value.sum()
        return {key: float(total) / x.shape[0] for key, total in totals.items()}


# ---------------------------------------------------------------- proposals


class FittedPosterior:
    """Per-point distributions ``family(local[rows])`` from fitted local parameters.

    Called with the rows of the evaluated data, like every proposal here.
    """

    def __init__(self, family, local):
        self.family, self.local = family, local

    def __call__(self, rows, x=None, y=None):
        return self.family(self.local[rows])


def guide_proposal(vae, idx=None):
    """The guide's q(z | x) as a proposal: ``proposal(rows, x_rows, y_rows)``.

    ``idx`` are the rows' training-set indices (for the per-datapoint guide's table);
    without them, that guide fits its parameters for the rows first.
    """
    def proposal(rows, x, y):
        return vae.encode(x, y, None if idx is None else idx[rows])

    return proposal


def _proposal_or_guide(vae, proposal, idx):
    if proposal is not None:
        return proposal
    if not vae.posterior.has_density:
        raise ConfigError(
            f"the {type(vae.posterior).__name__} is a point mass: it has no density, so it "
            "cannot be an importance-sampling proposal and its objective is not a bound on "
            "log p(x); pass proposal=fit_optimal_posterior(vae, x) for a fitted one")
    return guide_proposal(vae, idx)


def fit_optimal_posterior(vae, x, y=None, *, idx=None, steps=300, lr=0.05,
                          num_samples=Q_STAR_SAMPLES, batch_size=512, progress=None):
    """q*: each point's best member of the guide's family, by Adam on its own ELBO.

    Starting from the guide's local parameters for the point (the encoder's output, the
    refined output of the semi-amortized guide, the table row or the fit of the
    per-datapoint guide), with the model fixed (:func:`ppl_vae.parts.local.fit_local`). For the
    diagonal guide q* is the per-datapoint diagonal normal of Cremer et al. (2018). A guide
    without a density (the delta guide) gets a diagonal normal centred at its point, scale
    ``DELTA_PROPOSAL_SCALE`` to start. ``progress``, if given, is called with the
    point-samples each step scored (``steps * len(x) * num_samples`` in all).

    Returns
    -------
    FittedPosterior
        A proposal for the rows of ``x``.
    """
    guide = vae.posterior
    family = guide.family if guide.has_density else diagonal_normal
    fitted = []
    for rows in _batches(len(x), batch_size):
        xb, yb = x[rows], _rows(y, rows)
        with torch.no_grad():
            init = guide.local_params(vae._condition(xb, yb), _rows(idx, rows))
        if not guide.has_density:
            raw = float(softplus_inv(torch.tensor(DELTA_PROPOSAL_SCALE)))
            init = torch.cat([init, torch.full_like(init, raw)], dim=-1)
        fitted.append(fit_local(vae, xb, yb, family, init, steps=steps, lr=lr,
                                num_samples=num_samples, progress=progress))
    return FittedPosterior(family, torch.cat(fitted))


# ---------------------------------------------------------------- estimators


def log_likelihood(vae, x, y=None, *, idx=None, num_samples=5000, proposal=None,
                   batch_size=1024, max_rows=None, progress=None):
    """Importance-sampled log p(x) per example, with z_k ~ q(z | x):

        log p(x) ~ logsumexp_k [log p(x, z_k) - log q(z_k | x)] - log K.

    Its expectation is the K-sample bound of Burda et al. (2016): at most log p(x), equal
    to the ELBO for K = 1, non-decreasing in K. Data points are processed ``batch_size``
    at a time and the K samples in chunks of ``max_rows // batch`` (one vectorized pass
    each), combined with a running logsumexp.

    Parameters
    ----------
    vae : VAE
    x : Tensor, shape (N, D)
    y : LongTensor, shape (N,), optional
        Labels of a conditional VAE: the estimate is then the conditional log p(x | y)
        (z_k ~ q(z | x, y), scored by p(z) p(x | z, y)).
    idx : LongTensor, shape (N,), optional
        Training-set indices of the rows (the per-datapoint guide needs them).
    num_samples : int
        K.
    proposal : callable, optional
        ``proposal(rows, x_rows, y_rows) -> q`` with batch shape (len(rows),); the guide's
        q(z | x) by default. The delta guide has no density and needs one given (for
        instance :func:`fit_optimal_posterior`).
    batch_size : int
        Data points per batch.
    max_rows : int, optional
        Samples x points per vectorized pass; by default :data:`MAX_ROWS` of ``x``'s
        device type (2,048 on a CPU, 32,768 on a GPU). The estimate does not depend on it.
    progress : callable, optional
        Called after each chunk with the point-samples it scored (``N * K`` in all).

    Returns
    -------
    Tensor, shape (N,)
        Nats per example.
    """
    proposal = _proposal_or_guide(vae, proposal, idx)
    return _reduce_log_weights(vae, x, y, proposal, num_samples, logsumexp=True,
                               batch_size=batch_size, max_rows=max_rows, progress=progress)


def monte_carlo_elbo(vae, x, y=None, *, idx=None, num_samples=ELBO_SAMPLES, proposal=None,
                     batch_size=1024, max_rows=None, progress=None):
    """The ELBO per example, E_q[log p(x, z) - log q(z | x)], averaged over ``num_samples``
    draws of z: the same log weights as :func:`log_likelihood`, averaged instead of
    log-sum-exp'ed. Arguments as there."""
    proposal = _proposal_or_guide(vae, proposal, idx)
    return _reduce_log_weights(vae, x, y, proposal, num_samples, logsumexp=False,
                               batch_size=batch_size, max_rows=max_rows, progress=progress)


def _reduce_log_weights(vae, x, y, proposal, num_samples, *, logsumexp, batch_size,
                        max_rows, progress):
    with torch.no_grad():
        if num_samples < 1:
            raise ConfigError(f"num_samples must be >= 1; got {num_samples}")
        rows = max_rows or MAX_ROWS.get(x.device.type, MAX_ROWS["cuda"])
        results = []
        for batch in _batches(len(x), batch_size):
            xb, yb = x[batch], _rows(y, batch)
            q = proposal(batch, xb, yb)
            chunk = max(1, rows // len(xb))
            total = None
            for start in range(0, num_samples, chunk):
                z = q.sample((min(chunk, num_samples - start),))
                if progress:
                    progress(len(z) * len(xb))
                log_prior, log_lik = vae(xb, z, yb)
                log_weights = log_prior + log_lik - q.log_prob(z)
                if logsumexp:
                    part = log_weights.logsumexp(0)
                    total = part if total is None else torch.logaddexp(total, part)
                else:
                    part = log_weights.sum(0)
                    total = part if total is None else total + part
            results.append(total - math.log(num_samples) if logsumexp
                           else total / num_samples)
        return torch.cat(results)


def active_units(vae, x, y=None, *, idx=None, threshold=0.01, batch_size=1024):
    """Latent dimensions in use: A_j = Cov_x(E_q[z_j | x]) > ``threshold`` (Burda et al. 2016).

    Returns
    -------
    count : int
        The number of active dimensions.
    variances : Tensor, shape (L,)
        Cov_x(E_q[z_j | x]) for each j, over the rows of ``x``.
    """
    with torch.no_grad():
        proposal = guide_proposal(vae, idx)
        means = torch.cat([proposal(rows, x[rows], _rows(y, rows)).mean
                           for rows in _batches(len(x), batch_size)])
        variances = means.var(0)
        return int((variances > threshold).sum()), variances


def inference_gaps(vae, x, y=None, *, idx=None, log_px=None, num_samples=5000,
                   elbo_samples=ELBO_SAMPLES, steps=300, lr=0.05, progress=None):
    """The inference gap log p(x) - ELBO(q) and its two parts (Cremer et al. 2018).

    - approximation gap = log p(x) - ELBO(q*): what the guide's family cannot express;
    - amortization gap = ELBO(q*) - ELBO(q): what the encoder loses against optimising
      each point's parameters (q* from :func:`fit_optimal_posterior`).

    Both ELBOs are Monte Carlo averages over ``elbo_samples`` draws per point; log p(x) is
    :func:`log_likelihood` with K = ``num_samples`` unless given (per point). ``progress``
    hears of every chunk of samples and step of the q* fit, as in those functions.

    Returns
    -------
    dict of float
        Means over the rows of ``x``: ``log_px``, ``elbo``, ``elbo_star``,
        ``approximation_gap``, ``amortization_gap``, ``inference_gap``.
    """
    if not vae.posterior.has_density:
        raise ConfigError("the inference gaps need a guide with a density; the delta guide's "
                          "objective is not an ELBO")
    if log_px is None:
        log_px = log_likelihood(vae, x, y, idx=idx, num_samples=num_samples, progress=progress)
    elbo = monte_carlo_elbo(vae, x, y, idx=idx, num_samples=elbo_samples, progress=progress)
    q_star = fit_optimal_posterior(vae, x, y, idx=idx, steps=steps, lr=lr, progress=progress)
    elbo_star = monte_carlo_elbo(vae, x, y, num_samples=elbo_samples, proposal=q_star,
                                 progress=progress)
    means = {"log_px": log_px.mean(), "elbo": elbo.mean(), "elbo_star": elbo_star.mean()}
    means = {key: float(value) for key, value in means.items()}
    means["approximation_gap"] = means["log_px"] - means["elbo_star"]
    means["amortization_gap"] = means["elbo_star"] - means["elbo"]
    means["inference_gap"] = means["log_px"] - means["elbo"]
    return means


def _batches(n, size):
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def _rows(t, rows):
    return None if t is None else t[rows]
