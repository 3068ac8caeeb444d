"""Evaluation of any program: the ELBO and importance-sampled log p(x) over all its latent
sites at once, with the program's own guide as the proposal.

A program (see :mod:`ppl_vae.programs`) is an ``nn.Module`` with ``model(x, y=None,
idx=None)`` and ``guide(...)`` whose per-example sites sit in a plate named ``"data"``.
For a batch of points, the guide is run under an outer ``"particles"`` plate (K draws of
every latent site, vectorised), the model is replayed on the guide's values, and each
site's log density is summed over every dimension but the particle and data ones:

    log w_k(x) = sum_{observed s} log p(s | ...) + sum_{latent s} [log p(s | ...) - log q(s | ...)]

so that log p(x) ~ logsumexp_k log w_k - log K (Burda et al. 2016) and ELBO(x) ~ mean_k
log w_k. Discrete latent sites are sampled from the guide here, not enumerated: the
estimates stay unbiased (for p(x) and the ELBO), at a higher variance. Every observed site
of the model counts as data. The built-in VAE keeps its fast path
(:mod:`ppl_vae.evaluation.likelihood`); the two agree within Monte Carlo error (a test).
"""

import math
import time

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from ppl_vae.errors import ConfigError

DATA_PLATE = "data"
# Particles x points per vectorised pass, by device type, bounding memory;
MAX_ROWS = {"cpu": 2**14, "cuda": 2**16}  # larger than the fast path's: a pass costs two traces
ELBO_PARTICLES = 8  # draws per point of the per-epoch test ELBO of a program


def _call(fn, x, y):
    return fn(x) if y is None else fn(x, y)


def _plate_nesting(program, x, y):
    """How many plates deep the program's sites go (the particle plate goes left of them)."""
    trace = poutine.trace(program.guide).get_trace(*((x,) if y is None else (x, y)))
    trace = poutine.trace(poutine.replay(program.model, trace=trace)).get_trace(
        *((x,) if y is None else (x, y)))
    return max([-frame.dim for site in trace.nodes.values() if site["type"] == "sample"
                for frame in site["cond_indep_stack"] if frame.vectorized] or [1])


def _per_point(site, name, nesting, shape):
    """The site's log density summed over every dimension but particles and data points,
    shape ``shape`` = (K, B)."""
    dims = [frame.dim for frame in site["cond_indep_stack"] if frame.name == DATA_PLATE]
    if not dims:
        raise ConfigError(f"site {name!r} of the program is outside the {DATA_PLATE!r} plate: "
                          "the generic evaluation scores each data point and needs every "
                          f"site inside pyro.plate({DATA_PLATE!r}, ...)")
    log_prob = site["fn"].log_prob(site["value"])
    if site["mask"] is not None:
        log_prob = log_prob * site["mask"]
    log_prob = log_prob.reshape((1,) * max(0, nesting + 1 - log_prob.dim()) + log_prob.shape)
    log_prob = log_prob.movedim((-(nesting + 1), dims[0]), (0, 1))
    return log_prob.reshape(*log_prob.shape[:2], -1).sum(-1).expand(shape)


def log_weight_terms(program, x, y=None, *, num_particles, nesting=None):
    """Per-point log densities of K joint draws from the guide.

    Returns
    -------
    observed, latent : Tensor, shape (K, B)
        sum of log p over the model's observed sites; sum of log p - log q over the latent
        sites. Their sum is log w.
    """
    nesting = nesting or _plate_nesting(program, x, y)
    args = (x,) if y is None else (x, y)
    with pyro.plate("particles", num_particles, dim=-(nesting + 1)):
        guide = poutine.trace(program.guide).get_trace(*args)
        model = poutine.trace(poutine.replay(program.model, trace=guide)).get_trace(*args)
    shape = (num_particles, x.shape[0])
    observed, latent = torch.zeros(shape, device=x.device), torch.zeros(shape, device=x.device)
    for name, site in model.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        if site["is_observed"]:
            observed = observed + _per_point(site, name, nesting, shape)
            continue
        if name not in guide.nodes:
            raise ConfigError(f"latent site {name!r} is in the program's model but not in its "
                              "guide; the generic evaluation draws every latent site from "
                              "the guide")
        latent = latent + (_per_point(site, name, nesting, shape)
                           - _per_point(guide.nodes[name], name, nesting, shape))
    return observed, latent


@torch.no_grad()
def _reduce(program, x, y, num_samples, how, *, batch_size, max_rows, progress):
    if num_samples < 1:
        raise ConfigError(f"num_samples must be >= 1; got {num_samples}")
    rows = max_rows or MAX_ROWS.get(x.device.type, MAX_ROWS["cuda"])
    results = []
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size]
        yb = None if y is None else y[start : start + batch_size]
        nesting = _plate_nesting(program, xb, yb)
        chunk, total = max(1, rows // len(xb)), None
        for first in range(0, num_samples, chunk):
            k = min(chunk, num_samples - first)
            observed, latent = log_weight_terms(program, xb, yb, num_particles=k,
                                                nesting=nesting)
            log_w = (observed + latent).double()
            part = log_w.logsumexp(0) if how == "logsumexp" else log_w.sum(0)
            total = part if total is None else (torch.logaddexp(total, part)
                                                if how == "logsumexp" else total + part)
            if progress:
                progress(k * len(xb))
        results.append(total - math.log(num_samples) if how == "logsumexp"
                       else total / num_samples)
    return torch.cat(results)


def log_likelihood(program, x, y=None, *, num_samples=5000, batch_size=1024, max_rows=None,
                   progress=None):
    """Importance-sampled log p(x) per example (nats), the guide as proposal over every
    latent site: logsumexp_k log w_k - log K, a stochastic lower bound rising to log p(x)
    with K (for y given, log p(x, y) of a program that observes y, log p(x | y) of one that
    conditions on it). Data points go ``batch_size`` at a time, the K draws in chunks of
    ``max_rows // batch`` vectorised particles, combined by a running logsumexp; the
    estimate does not depend on the chunking. ``progress`` hears of each chunk's
    point-samples. Returns a float64 Tensor of shape (N,)."""
    return _reduce(program, x, y, num_samples, "logsumexp", batch_size=batch_size,
                   max_rows=max_rows, progress=progress)


def monte_carlo_elbo(program, x, y=None, *, num_samples=1000, batch_size=1024, max_rows=None,
                     progress=None):
    """The ELBO per example, mean_k log w_k: the same draws as :func:`log_likelihood`,
    averaged instead of log-sum-exp'ed. Returns a float64 Tensor of shape (N,)."""
    return _reduce(program, x, y, num_samples, "mean", batch_size=batch_size,
                   max_rows=max_rows, progress=progress)


@torch.no_grad()
def evaluate_elbo(program, x, y=None, *, num_particles=ELBO_PARTICLES, batch_size=1024):
    """Mean ELBO and its two terms over a data set (nats per example), as the trainer
    records them each epoch: ``recon`` = E_q[log p(observed | latents)], ``kl`` =
    E_q[log q(latents) - log p(latents)], ``elbo`` = recon - kl."""
    totals = {"recon": 0.0, "kl": 0.0}
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size]
        yb = None if y is None else y[start : start + batch_size]
        observed, latent = log_weight_terms(program, xb, yb, num_particles=num_particles)
        totals["recon"] += float(observed.double().mean(0).sum())
        totals["kl"] -= float(latent.double().mean(0).sum())
    means = {key: value / len(x) for key, value in totals.items()}
    return {**means, "elbo": means["recon"] - means["kl"]}


def evaluate_program(program, x, y=None, *, num_samples=5000, progress=None):
    """One results row for a trained program on held-out ``x``: the test ELBO and its
    terms, log p(x) with its standard error over points (and each point's, as
    ``log_px_points``), K. The columns of :data:`ppl_vae.evaluation.report.COLUMNS` that a
    program determines."""
    start = time.perf_counter()
    program.eval()
    row = {f"test_{key}": value for key, value in evaluate_elbo(program, x, y).items()}
    log_px = log_likelihood(program, x, y, num_samples=num_samples, progress=progress)
    row["log_px"] = float(log_px.mean())
    row["log_px_points"] = log_px.tolist()
    row["log_px_se"] = float(log_px.std() / math.sqrt(len(log_px))) if len(log_px) > 1 else 0.0
    row["num_samples"] = num_samples
    row["eval_seconds"] = time.perf_counter() - start
    return row
