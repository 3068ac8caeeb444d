"""log p(x) by annealed importance sampling (Neal 2001) with HMC transitions, as Wu et al.
(2017) evaluate decoder-based models.

A chain starts at z_0 ~ p_0 (the guide's q(z | x), or the prior p(z)) and walks through the
geometric path of unnormalised densities

    f_t(z) = p_0(z)^(1 - beta_t) p(x, z)^beta_t,   0 = beta_0 < beta_1 < ... < beta_T = 1,

from p_0 to the posterior p(z | x) (normalised by p(x)). Before step t the chain's log
weight gains (beta_t - beta_{t-1}) [log p(x, z) - log p_0(z)] at its current z; then an HMC
transition that leaves f_t invariant moves z. exp(log weight) is an unbiased estimate of
p(x), so its log is a stochastic lower bound in expectation, which tightens as T grows; C
chains per point are combined as logsumexp - log C (an importance-sampling estimate with
AIS weights). With T = 1 and no transition it is importance sampling with K = C.

Everything is batched: C chains for each of B points are one tensor of shape (C, B, L), and
one leapfrog step is one forward and backward pass of the model over all of them. Pyro's
HMC runs one chain of one model; here thousands of chains move at once, hence this code.

Each chain has its own HMC step size, adapted between transitions towards an acceptance
rate of :data:`TARGET_ACCEPTANCE` (multiplied by 1.02 after a transition whose acceptance
probability was above it, by 0.98 otherwise), as Wu et al. (2017) do. A step size that
depends on the chain's past is a common approximation in AIS for these models; with the
step size fixed (``adapt=False``) every transition leaves f_t exactly invariant.
"""

import math
from dataclasses import dataclass

import torch

from ppl_vae.errors import ConfigError

TARGET_ACCEPTANCE = 0.65
# Annealing steps and chains per point by default: T = 500 and C = 16 cost as many model
# evaluations as 16 x 500 x (10 + 1) = 88,000 importance samples.
NUM_STEPS, NUM_CHAINS = 500, 16
STARTS = ("guide", "prior")


@dataclass
class AISResult:
    """log p(x) per point and how the HMC transitions went.

    Attributes
    ----------
    log_px : Tensor, shape (N,)
        logsumexp over chains of the AIS log weights, minus log C.
    acceptance : float
        Mean Metropolis acceptance probability over all transitions and chains.
    step_size : float
        Mean HMC step size at the end.
    """

    log_px: torch.Tensor
    acceptance: float
    step_size: float


def sigmoid_schedule(num_steps, *, delta=4.0):
    """beta_0 = 0 < ... < beta_T = 1, dense at both ends (Grosse, Ghahramani & Adams 2015):
    a rescaled sigmoid(delta (2 t / T - 1)). Returns a float64 tensor of T + 1 values."""
    if num_steps < 1:
        raise ConfigError(f"AIS needs at least 1 annealing step; got {num_steps}")
    s = torch.sigmoid(delta * (2 * torch.arange(num_steps + 1, dtype=torch.float64)
                               / num_steps - 1))
    return (s - s[0]) / (s[-1] - s[0])


def ais_log_likelihood(vae, x, y=None, *, num_steps=NUM_STEPS, num_chains=NUM_CHAINS, start="guide",
                       leapfrog_steps=10, step_size=0.05, adapt=True, batch_size=256,
                       progress=None):
    """log p(x) per example by AIS from ``start`` to the posterior, in nats.

    Parameters
    ----------
    vae : VAE
    x : Tensor, shape (N, D)
    y : LongTensor, shape (N,), optional
        Labels of a conditional VAE (then the estimate is log p(x | y)).
    num_steps : int
        T, the number of intermediate distributions.
    num_chains : int
        C, independent chains per point.
    start : {"guide", "prior"}
        p_0: the guide's q(z | x) (it needs a density) or the prior p(z).
    leapfrog_steps, step_size : int, float
        Leapfrog steps per HMC transition, and the initial step size.
    adapt : bool
        Adapt each chain's step size towards :data:`TARGET_ACCEPTANCE`.
    batch_size : int
        Data points per batch (each with ``num_chains`` chains).
    progress : callable, optional
        Called after each annealing step with the point-chains it moved.

    Returns
    -------
    AISResult
    """
    _check(vae, start, num_chains, leapfrog_steps, step_size)
    betas = sigmoid_schedule(num_steps).tolist()
    results, accepts, steps = [], [], []
    for first in range(0, len(x), batch_size):
        xb = x[first:first + batch_size]
        yb = None if y is None else y[first:first + batch_size]
        target = _Target(vae, xb, yb, start)
        chains = _Chains(target, num_chains, step_size)
        for previous, beta in zip(betas, betas[1:], strict=False):
            chains.log_weight += (beta - previous) * chains.log_ratio
            if beta < 1:
                chains.hmc(beta, leapfrog_steps, adapt)
            if progress:
                progress(num_chains * len(xb))
        results.append(chains.log_weight.logsumexp(0) - math.log(num_chains))
        accepts.append(chains.accept_sum / max(chains.transitions, 1))
        steps.append(chains.step_size.mean())
    return AISResult(torch.cat(results), float(torch.stack(accepts).mean()),
                     float(torch.stack(steps).mean()))


def _check(vae, start, num_chains, leapfrog_steps, step_size):
    if start not in STARTS:
        raise ConfigError(f"AIS starts from one of {', '.join(STARTS)}; got {start!r}")
    if start == "guide" and not vae.posterior.has_density:
        raise ConfigError(f"the {type(vae.posterior).__name__} has no density to start AIS "
                          "from; start from the prior (start='prior')")
    if num_chains < 1 or leapfrog_steps < 1 or not step_size > 0:
        raise ConfigError("AIS needs num_chains >= 1, leapfrog_steps >= 1 and step_size > 0; "
                          f"got {num_chains}, {leapfrog_steps}, {step_size}")


class _Target:
    """log p_0(z) and log p(x, z) at z of shape (C, B, L), for a batch of points."""

    def __init__(self, vae, x, y, start):
        self.vae, self.x, self.y = vae, x, y
        with torch.no_grad():
            q = vae.encode(x, y) if start == "guide" else vae.prior()
        self.start = q if start == "guide" else q.expand((len(x),))

    def sample(self, num_chains):
        with torch.no_grad():
            return self.start.sample((num_chains,))

    def __call__(self, z, beta):
        """log f_beta(z), its gradient in z, and log p(x, z) - log p_0(z), detached."""
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            log_prior, log_lik = self.vae(self.x, z, self.y)
            log_start = self.start.log_prob(z)
            log_ratio = log_prior + log_lik - log_start
            log_f = log_start + beta * log_ratio
            (grad,) = torch.autograd.grad(log_f.sum(), z)
        return log_f.detach(), grad, log_ratio.detach()


class _Chains:
    """C chains per point: position, log weight, step size and the log densities at z."""

    def __init__(self, target, num_chains, step_size):
        self.target = target
        self.z = target.sample(num_chains)
        self.log_weight = torch.zeros(self.z.shape[:-1], dtype=self.z.dtype,
                                      device=self.z.device)
        self.step_size = torch.full_like(self.log_weight, step_size)
        self.log_ratio = target(self.z, 0.0)[2]
        self.accept_sum, self.transitions = torch.zeros((), device=self.z.device), 0

    def hmc(self, beta, leapfrog_steps, adapt):
        """One HMC transition leaving f_beta invariant, for every chain at once."""
        eps = self.step_size.unsqueeze(-1)
        log_f, grad, _ = self.target(self.z, beta)
        momentum = torch.randn_like(self.z)
        z, p = self.z, momentum + 0.5 * eps * grad
        for step in range(leapfrog_steps):
            z = z + eps * p
            new_log_f, new_grad, new_ratio = self.target(z, beta)
            p = p + (eps if step < leapfrog_steps - 1 else 0.5 * eps) * new_grad
        log_accept = (new_log_f - 0.5 * p.pow(2).sum(-1)) - (log_f - 0.5 * momentum.pow(2).sum(-1))
        accept_prob = log_accept.nan_to_num(nan=-math.inf).clamp(max=0).exp()
        accepted = torch.rand_like(accept_prob) < accept_prob
        self.z = torch.where(accepted.unsqueeze(-1), z, self.z)
        self.log_ratio = torch.where(accepted, new_ratio, self.log_ratio)
        self.accept_sum = self.accept_sum + accept_prob.mean()
        self.transitions += 1
        if adapt:  # one step size per point, from its chains' mean acceptance
            rate = accept_prob.mean(0, keepdim=True)
            self.step_size = self.step_size * torch.where(rate > TARGET_ACCEPTANCE, 1.02, 0.98)
