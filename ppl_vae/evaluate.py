"""Evaluation of a trained VAE: the ELBO and its two terms, in nats per example.

The terms are read off Pyro traces of the VAE's own guide and model, so they are the same
numbers for every combination of parts: the guide is run, the model is replayed on the
guide's z, and the sites' log densities give

    ELBO(x) = E_q[log p(x | z)] - KL(q(z | x) || p(z)).

The KL is the closed form where torch has one (a diagonal normal guide against a normal
prior) and a one-sample Monte Carlo estimate, log q(z|x) - log p(z), elsewhere.
"""

import torch
from pyro import poutine
from torch.distributions import kl_divergence


def elbo_terms(vae, x, y=None):
    """Per-example ELBO terms for a batch, one sample of z per example.

    Parameters
    ----------
    vae : VAE
    x : Tensor, shape (B, D)
    y : LongTensor, shape (B,), optional (conditional VAEs)

    Returns
    -------
    dict of Tensor, each of shape (B,)
        ``recon`` = log p(x | z), ``kl`` = KL(q(z|x) || p(z)) (or its one-sample estimate),
        ``elbo`` = recon - kl. Nats; higher ELBO is better.
    """
    guide_trace = poutine.trace(vae.guide).get_trace(x, y)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x, y)
    q = guide_trace.nodes["z"]["fn"]
    p = model_trace.nodes["z"]["fn"]
    z = guide_trace.nodes["z"]["value"]
    recon = model_trace.nodes["x"]["fn"].log_prob(x)
    try:
        kl = kl_divergence(q, p)
    except NotImplementedError:
        kl = q.log_prob(z) - p.log_prob(z)
    return {"recon": recon, "kl": kl, "elbo": recon - kl}


@torch.no_grad()
def evaluate_elbo(vae, x, y=None, *, batch_size=1024):
    """Mean ELBO, reconstruction term and KL over a data set, in nats per example.

    Returns
    -------
    dict of float
        ``elbo``, ``recon``, ``kl``: averages over the rows of ``x``.
    """
    totals = {"recon": 0.0, "kl": 0.0, "elbo": 0.0}
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size]
        yb = None if y is None else y[start : start + batch_size]
        for key, value in elbo_terms(vae, xb, yb).items():
            totals[key] += value.sum()
    return {key: float(total) / x.shape[0] for key, total in totals.items()}
