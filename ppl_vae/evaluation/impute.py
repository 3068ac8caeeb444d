"""Filling in missing entries with a trained VAE, and the baselines it is measured against.

Each data point has a mask ``observed`` (True where the entry was seen); the missing entries
x_m are to be filled in from the observed ones x_o. Three imputers use the VAE, each run on
all points at once:

- ``single``: the decoder's mean at the guide's mean, E[x_m | z = E_q[z | x~]], x~ being x
  with its missing entries set to 0 (one pass);
- ``pseudo-gibbs`` (Rezende, Mohamed & Wierstra 2014): repeat z ~ q(z | x~), x~_m ~ p(x_m | z).
  Its chain does not in general leave p(z, x_m | x_o) invariant: the guide only approximates
  the posterior;
- ``mwg``, Metropolis-within-Gibbs (Mattei & Frellsen 2018): the same moves, with the z move
  an independent Metropolis-Hastings step proposing from q(z | x~) and accepting with
  min(1, p(x~, z') q(z | x~) / (p(x~, z) q(z' | x~))). It samples p(z, x_m | x_o) exactly
  in the limit, whatever the guide (as long as q covers the posterior).

Every imputer here gives a predictive distribution of x_m: p(x_m | z) at the single z, or the
mixture (1/T) sum_t p(x_m | z_t) over the chain's draws after burn-in. Its mean is the
imputation (the Rao-Blackwellised mean of the draws), and its density at the true x_m is the
log-likelihood reported, in nats per example. The baselines (the training set's mean of each
entry; scikit-learn's ``KNNImputer``) give a point; for binary data their predictive is a
Bernoulli with that mean (clipped to [``CLIP``, 1 - ``CLIP``]).
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.distributions import Bernoulli, Independent

from ppl_vae.data.masks import lower_half_mask, random_mask  # noqa: F401 (re-exported)
from ppl_vae.errors import ConfigError, DataError

METHODS = ("single", "pseudo-gibbs", "mwg")
CLIP = 1e-3  # the probabilities of the baselines' Bernoulli predictive are kept inside this


@dataclass
class Imputation:
    """What an imputer gives for a batch of points.

    Attributes
    ----------
    filled : Tensor, shape (N, D)
        x with its missing entries replaced by the predictive mean.
    log_lik : Tensor, shape (N,) or None
        log p(true x_m | x_o) under the imputer's predictive, summed over each point's missing
        entries (None when no truth was given).
    acceptance : float or None
        Mean Metropolis-Hastings acceptance rate (``mwg`` only).
    samples : Tensor, shape (S, N, D) or None
        The chain's draws of x after burn-in (observed entries kept), if asked for.
    """

    filled: torch.Tensor
    log_lik: torch.Tensor | None = None
    acceptance: float | None = None
    samples: torch.Tensor | None = None


def check_mask(observed, x):
    """The mask as a bool tensor on x's device; a clear error if it does not fit x."""
    observed = torch.as_tensor(np.asarray(observed)).to(x.device)
    if observed.shape != x.shape:
        raise DataError(f"the mask has shape {tuple(observed.shape)}; the data have "
                        f"{tuple(x.shape)}: give one entry per data entry")
    if observed.dtype != torch.bool:
        if not ((observed == 0) | (observed == 1)).all():
            raise DataError("the mask must hold booleans or 0/1 (1 = observed)")
        observed = observed.bool()
    if observed.all():
        raise DataError("the mask marks every entry observed: nothing to impute")
    return observed


@torch.no_grad()
def impute(vae, x, observed, *, method="mwg", num_iterations=500, burn_in=100, truth=None,
           keep_samples=False, batch_size=512):
    """Fill in the entries of ``x`` where ``observed`` is False, with one of :data:`METHODS`.

    Parameters
    ----------
    vae : VAE
        A trained (plain) VAE; its guide needs a density for ``mwg``.
    x : Tensor, shape (N, D)
        The data; its missing entries are ignored (set to 0 for the guide).
    observed : BoolTensor, shape (N, D)
    method : str
    num_iterations, burn_in : int
        Steps of the two chains, and how many of the first are discarded.
    truth : Tensor, shape (N, D), optional
        The true values, to score: ``log_lik`` is log p(truth_m | x_o).
    keep_samples : bool
        Keep the chains' draws of x (memory S x N x D).

    Returns
    -------
    Imputation
    """
    if method not in METHODS:
        raise ConfigError(f"unknown imputer {method!r}; choose from {', '.join(METHODS)}")
    if method == "mwg" and not vae.posterior.has_density:
        raise ConfigError("Metropolis-within-Gibbs needs a guide with a density")
    if method != "single" and not 0 <= burn_in < num_iterations:
        raise ConfigError(f"burn_in must lie in 0..num_iterations - 1; got {burn_in} of "
                          f"{num_iterations}")
    parts = [_impute_batch(vae, x[rows], observed[rows], method, num_iterations, burn_in,
                           None if truth is None else truth[rows], keep_samples)
             for rows in (slice(i, i + batch_size) for i in range(0, len(x), batch_size))]
    return Imputation(
        filled=torch.cat([p.filled for p in parts]),
        log_lik=None if truth is None else torch.cat([p.log_lik for p in parts]),
        acceptance=None if method != "mwg" else float(np.mean([p.acceptance for p in parts])),
        samples=torch.cat([p.samples for p in parts], 1) if keep_samples else None)


def _impute_batch(vae, x, observed, method, num_iterations, burn_in, truth, keep_samples):
    x_tilde = torch.where(observed, x, torch.zeros_like(x))
    if method == "single":
        z = vae.encode(x_tilde).mean.unsqueeze(0)
        return _summarise(vae, x, observed, z, truth, None, None)
    chain = _Chain(vae, x, observed, x_tilde, metropolis=method == "mwg")
    draws, samples = [], []
    for step in range(num_iterations):
        chain.step()
        if step >= burn_in:
            draws.append(chain.z)
            if keep_samples:
                samples.append(chain.x)
    acceptance = chain.accepted / num_iterations
    return _summarise(vae, x, observed, torch.stack(draws), truth, acceptance,
                      torch.stack(samples) if keep_samples else None)


class _Chain:
    """The state (z, x~) of the pseudo-Gibbs or Metropolis-within-Gibbs chain of each point."""

    def __init__(self, vae, x, observed, x_tilde, *, metropolis):
        self.vae, self.x_obs, self.observed, self.x = vae, x, observed, x_tilde
        self.metropolis, self.accepted = metropolis, 0.0
        self.z = vae.encode(x_tilde).sample()

    def step(self):
        q = self.vae.encode(self.x)
        proposal = q.sample()
        if self.metropolis:
            log_ratio = (self._log_joint(proposal) - self._log_joint(self.z)
                         + q.log_prob(self.z) - q.log_prob(proposal))
            accept = torch.rand_like(log_ratio).log() < log_ratio
            self.accepted += float(accept.float().mean())
            proposal = torch.where(accept.unsqueeze(-1), proposal, self.z)
        self.z = proposal
        self.x = torch.where(self.observed, self.x_obs, self.vae.decode(self.z).sample())

    def _log_joint(self, z):
        log_prior, log_lik = self.vae(self.x, z)
        return log_prior + log_lik


def _summarise(vae, x, observed, z, truth, acceptance, samples):
    """The predictive mixture over the draws z (S, B, L): its mean, and its log density at
    the truth's missing entries."""
    likelihood = vae.decode(z)
    filled = torch.where(observed, x, likelihood.mean.mean(0))
    log_lik = None
    if truth is not None:
        per_draw = (elementwise_log_prob(likelihood, truth) * ~observed).sum(-1)
        log_lik = per_draw.logsumexp(0) - math.log(len(z))
    return Imputation(filled, log_lik, acceptance, samples)


def elementwise_log_prob(distribution, x):
    """log p(x_d | ...) of each entry of a likelihood whose entries are independent
    (an ``Independent`` over the last dimension, as every likelihood part here is)."""
    if not isinstance(distribution, Independent):
        raise ConfigError(f"cannot split the log density of a {type(distribution).__name__} "
                          "into entries: imputation needs independent entries given z")
    return distribution.base_dist.log_prob(x)


# ---------------------------------------------------------------- baselines


def mean_imputation(x_train, x, observed):
    """Each missing entry replaced by the training set's mean of that entry."""
    return torch.where(observed, x, x_train.mean(0).expand_as(x))


def knn_imputation(x_train, x, observed, *, k=5):
    """scikit-learn's ``KNNImputer``: the mean of the k training points nearest in the
    observed entries."""
    from sklearn.impute import KNNImputer

    imputer = KNNImputer(n_neighbors=k).fit(x_train.cpu().numpy())
    holes = np.where(observed.cpu().numpy(), x.cpu().numpy(), np.nan)
    filled = torch.as_tensor(imputer.transform(holes), dtype=x.dtype, device=x.device)
    return torch.where(observed, x, filled)


def bernoulli_log_lik(filled, truth, observed):
    """log p(truth_m) under independent Bernoullis with the filled values as probabilities
    (clipped to [CLIP, 1 - CLIP]), summed over each point's missing entries."""
    probs = filled.clamp(CLIP, 1 - CLIP)
    return (Bernoulli(probs=probs).log_prob(truth) * ~observed).sum(-1)


def imputation_error(filled, truth, observed):
    """Root-mean-square error over all missing entries."""
    missing = ~observed
    return float(((filled - truth)[missing] ** 2).mean().sqrt())


# ---------------------------------------------------------------- the comparison

BASELINES = ("mean", "knn")
COLUMNS = [("imputer", "imputer", None), ("rmse", "RMSE (missing entries)", 3),
           ("log_lik", "log p(x_m \\| x_o)", 2), ("log_lik_se", "± s.e.", 2),
           ("acceptance", "MH acceptance", 2), ("seconds", "seconds", 1)]


def compare_imputers(vae, x_train, x, observed, *, methods=METHODS + BASELINES,
                     num_iterations=500, burn_in=100, k=5):
    """One row per imputer on the points ``x`` with entries hidden where ``observed`` is
    False: RMSE over the missing entries and the mean log-likelihood of their true values
    (nats per example; for the baselines only when ``x`` is binary). ``x_train`` is what
    the baselines learn from."""
    import time

    unknown = set(methods) - set(METHODS + BASELINES)
    if unknown:
        raise ConfigError(f"unknown imputer {sorted(unknown)[0]!r}; choose from "
                          f"{', '.join(METHODS + BASELINES)}")
    binary = bool(((x == 0) | (x == 1)).all())
    rows = []
    for method in methods:
        start = time.perf_counter()
        if method in METHODS:
            result = impute(vae, x, observed, method=method, num_iterations=num_iterations,
                            burn_in=burn_in, truth=x)
            filled, log_lik, acceptance = result.filled, result.log_lik, result.acceptance
        else:
            filled = (mean_imputation(x_train, x, observed) if method == "mean"
                      else knn_imputation(x_train, x, observed, k=k))
            log_lik = bernoulli_log_lik(filled, x, observed) if binary else None
            acceptance = None
        row = {"imputer": method, "rmse": imputation_error(filled, x, observed),
               "acceptance": acceptance, "seconds": time.perf_counter() - start}
        if log_lik is not None:
            row["log_lik"] = float(log_lik.mean())
            row["log_lik_se"] = float(log_lik.std() / math.sqrt(len(log_lik)))
        rows.append(row)
    return rows
