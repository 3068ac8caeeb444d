"""Penalties added to the ELBO: the disentangling objectives, and the aggregate-posterior
estimators they are built on.

The disentangling objectives of the literature are the ELBO minus a penalty on the guide's
codes (:class:`Penalty`): beta-TCVAE's total correlation (Chen et al. 2018), FactorVAE's
discriminator estimate of it (Kim & Mnih 2018), DIP-VAE's moment matching (Kumar et al.
2018). :class:`PenalizedELBO` adds a penalty to any ELBO of :mod:`ppl_vae.objectives` as a
``pyro.factor`` in the guide, so the same Pyro estimator, compiled or not, optimises the
sum; ``make_objective("tcvae", ...)`` builds one by name.

The estimators of the aggregate posterior q(z) = 1/N sum_n q(z | x_n) (its total
correlation, the split of the KL term into index-code mutual information, total
correlation and dimension-wise KL) serve the penalties and :mod:`ppl_vae.evaluate`.
"""

import itertools
import math

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from ppl_vae import distributed
from ppl_vae.errors import ConfigError
from ppl_vae.nets import MLP

# ---------------------------------------------------------------- aggregate posterior


def _is_diagonal_normal(q):
    return (isinstance(q, torch.distributions.Independent)
            and isinstance(q.base_dist, torch.distributions.Normal)
            and q.reinterpreted_batch_ndims == 1)


def factor_marginals(q, what="the guide"):
    """The one-dimensional marginals of a Gaussian q over R^L, as a Normal of batch (..., L).

    Raises ConfigError for a distribution without closed-form marginals (flows, mixtures,
    the joint latent of JointVAE).
    """
    if _is_diagonal_normal(q):
        return q.base_dist
    gaussians = (torch.distributions.MultivariateNormal,
                 torch.distributions.LowRankMultivariateNormal)
    if isinstance(q, gaussians):
        return dist.Normal(q.loc, q.variance.sqrt())
    raise ConfigError(f"the total-correlation terms need the one-dimensional marginals of "
                      f"{what}, a Gaussian; {type(q).__name__} has none in closed form")


def posterior_covariance(q):
    """Cov_q[z] of each point's q(z | x), shape (..., L, L)."""
    if _is_diagonal_normal(q):
        return torch.diag_embed(q.base_dist.scale.pow(2))
    try:
        return q.covariance_matrix
    except (AttributeError, NotImplementedError):
        raise ConfigError(f"DIP-VAE II needs the covariance of q(z | x); {type(q).__name__} "
                          "has none in closed form") from None


def pairwise_log_densities(q, z):
    """log q(z_i | x_j) for every code z_i against every point's q(. | x_j).

    Parameters
    ----------
    q : Distribution
        A Gaussian with batch shape (..., M): the posteriors of M points.
    z : Tensor, shape (..., B, L)
        Codes (usually z_i ~ q(. | x_i) of the same points, B = M).

    Returns
    -------
    joint : Tensor, shape (..., B, M)
        log q(z_i | x_j).
    per_dim : Tensor, shape (..., B, M, L)
        log q(z_il | x_j), the one-dimensional marginals.
    """
    marginals = factor_marginals(q)
    z_i = z.unsqueeze(-2)
    per_dim = dist.Normal(marginals.loc.unsqueeze(-3), marginals.scale.unsqueeze(-3)).log_prob(z_i)
    if _is_diagonal_normal(q):
        return per_dim.sum(-1), per_dim
    full = dist.MultivariateNormal(q.loc.unsqueeze(-3),
                                   scale_tril=q.scale_tril.unsqueeze(-4))
    return full.log_prob(z_i), per_dim


def log_importance_weights(batch_size, num_data, estimator="mss", device=None):
    """log w_ij: how much q(z_i | x_j) weighs in the minibatch estimate of the aggregate
    posterior q(z_i) = 1/N sum_n q(z_i | x_n), z_i drawn for the batch's point i.

    - ``"mss"``, minibatch stratified sampling (Chen et al. 2018, appendix C.2, in its
      symmetric form): the point's own posterior weighs 1/N (it is certainly in the data)
      and each of the B - 1 others (N - 1) / (N (B - 1)), an unbiased estimate of the sum
      over the N - 1 other points. With B = N every weight is 1/N and q(z_i) is exact.
    - ``"mws"``, minibatch weighted sampling (Chen et al. 2018, eq. S5): 1 / (N B) each,
      which sum to 1/N, not 1: every log q(z) estimate is about log N too low, and a TC
      estimate carries a constant offset of about (L - 1) log N (no effect on gradients).

    A batch of one point has only its own posterior: weight 1.
    """
    if estimator not in ("mss", "mws"):
        raise ConfigError(f"estimator must be 'mss' or 'mws'; got {estimator!r}")
    if estimator == "mws":
        return torch.full((batch_size, batch_size), -math.log(num_data * batch_size),
                          device=device)
    if batch_size == 1:
        return torch.zeros(1, 1, device=device)
    others = math.log((num_data - 1) / (num_data * (batch_size - 1)))
    weights = torch.full((batch_size, batch_size), others, device=device)
    return weights.fill_diagonal_(-math.log(num_data))


def total_correlation(q, z, num_data, estimator="mss"):
    """Minibatch estimate of the total correlation of the aggregate posterior,

        TC = E_q(z)[log q(z) - sum_l log q(z_l)],   q(z) = 1/N sum_n q(z | x_n),

    from a batch's posteriors q(z | x_i) (batch shape (..., B)) and codes z_i ~ q(z | x_i)
    (shape (..., B, L)): the mean over i of log q^(z_i) - sum_l log q^(z_il), with q^ the
    estimate of :func:`log_importance_weights`. Returns shape (...,), nats.

    Bias: log q^ is the log of an unbiased estimate, so E[log q^] <= log q (Jensen), for
    the joint and each marginal alike; the difference, TC's estimate, is biased either
    way by an amount that vanishes as B approaches N (exact but for Monte Carlo noise at
    B = N). It is not clipped at 0 and can be slightly negative when TC is near 0.
    """
    joint, per_dim = pairwise_log_densities(q, z)
    log_w = log_importance_weights(z.shape[-2], num_data, estimator, device=z.device)
    log_qz = (joint + log_w).logsumexp(-1)
    log_qz_dims = (per_dim + log_w.unsqueeze(-1)).logsumexp(-2)
    return (log_qz - log_qz_dims.sum(-1)).mean(-1)


def kl_decomposition_terms(q, z, prior, *, chunk=256):
    """Per code, the three parts of log q(z | x) - log p(z) (Chen et al. 2018):

        mi   = log q(z | x) - log q(z)                  (index-code mutual information)
        tc   = log q(z) - sum_l log q(z_l)              (total correlation)
        dwkl = sum_l log q(z_l) - log p(z_l)            (dimension-wise KL)

    with q(z) = 1/M sum_j q(z | x_j) the aggregate posterior of the M points of ``q``,
    computed exactly (``chunk`` codes at a time), and p factorised. Their means over codes
    z_i ~ q(z | x_i) estimate I(x; z), TC and sum_l KL(q(z_l) || p(z_l)), and add up exactly
    to the mean of ``kl`` = log q(z | x) - log p(z), the KL term's Monte Carlo estimate.
    With the aggregate exact, the only error is Monte Carlo noise (no bias from q(z)'s
    estimate, as minibatch estimates have); means near 0 can come out slightly negative.

    Parameters
    ----------
    q : Distribution
        Gaussian, batch shape (M,).
    z : Tensor, shape (M, L)
        z_i ~ q(z | x_i).
    prior : Distribution
        p(z), with closed-form one-dimensional marginals.

    Returns
    -------
    dict of Tensor, each of shape (M,)
        ``mi``, ``tc``, ``dwkl``, ``kl``.
    """
    m = z.shape[0]
    log_pz_dims = factor_marginals(prior, "the prior").log_prob(z)
    log_qz, log_qz_dims = [], []
    for start in range(0, m, chunk):
        joint, per_dim = pairwise_log_densities(q, z[start : start + chunk])
        log_qz.append(joint.logsumexp(-1) - math.log(m))
        log_qz_dims.append(per_dim.logsumexp(-2) - math.log(m))
    log_qz, log_qz_dims = torch.cat(log_qz), torch.cat(log_qz_dims)
    own = q.log_prob(z)
    return {"mi": own - log_qz, "tc": log_qz - log_qz_dims.sum(-1),
            "dwkl": (log_qz_dims - log_pz_dims).sum(-1), "kl": own - log_pz_dims.sum(-1)}


# ---------------------------------------------------------------- penalties


class Penalty(nn.Module):
    """A term subtracted from the ELBO: a function of the guide's q(z | x) and codes z on a
    minibatch, in nats for the whole data set (like the ELBO the trainer optimises).

    A subclass overrides :meth:`forward`. It may own modules with their own optimizer,
    trained by :meth:`after_step` after every step of the VAE (FactorVAE's discriminator);
    :meth:`checkpoint_state` carries them in checkpoints. ``extra_metrics`` names the
    numbers :meth:`evaluate_terms` reports per epoch (columns of metrics.csv). The trainer
    calls these for every objective (see :func:`auxiliary`); the defaults do nothing.
    """

    extra_metrics = ()

    def forward(self, q, z, num_data):
        """The penalty, shape z.shape[:-2] (one value per vectorized particle)."""
        raise NotImplementedError

    def check(self, vae, x, y=None):
        """Raise ConfigError now if the penalty cannot work with this VAE (default: fine)."""

    @torch.no_grad()
    def evaluate_terms(self, vae, x, y=None):
        """The per-epoch numbers named in ``extra_metrics``, on held-out data."""
        return {}

    def after_step(self, vae, x, y, idx):
        """Train the penalty's own modules on the step's minibatch (default: nothing)."""

    def checkpoint_state(self):
        return {"module": self.state_dict()}

    def load_checkpoint_state(self, state):
        self.load_state_dict(state["module"])


class _KLDecompositionReport(Penalty):
    """Reports the KL term's three parts (index-code mutual information, total correlation,
    dimension-wise KL; Chen et al. 2018) of the test set, every epoch."""

    extra_metrics = ("mi", "tc", "dwkl")

    @torch.no_grad()
    def check(self, vae, x, y=None):
        factor_marginals(vae.encode(x[:2], None if y is None else y[:2]))
        factor_marginals(vae.prior(), "the prior")

    @torch.no_grad()
    def evaluate_terms(self, vae, x, y=None):
        from ppl_vae.evaluate import kl_decomposition  # evaluate imports this module

        terms = kl_decomposition(vae, x, y)
        return {key: terms[key] for key in _KLDecompositionReport.extra_metrics}


class TotalCorrelation(_KLDecompositionReport):
    """beta-TCVAE (Chen et al. 2018): the ELBO minus (beta - 1) x the total correlation.

    The KL term averaged over the data splits into index-code mutual information I(x; z),
    total correlation TC = KL(q(z) || prod_l q(z_l)) and dimension-wise KL
    sum_l KL(q(z_l) || p(z_l)); beta-TCVAE weighs TC by beta and the others by 1. The
    penalty is (beta - 1) N TC^, TC^ the minibatch estimate of :func:`total_correlation`.
    beta = 1 leaves the ELBO.

    Parameters
    ----------
    dims : Dims
    beta : float
        The weight of the total correlation (Chen et al.'s beta; 6 in their dSprites runs).
    estimator : str
        "mss" (minibatch stratified sampling) or "mws" (minibatch weighted sampling).
    """

    def __init__(self, dims, *, beta=6.0, estimator="mss"):
        super().__init__()
        log_importance_weights(2, 2, estimator)  # checks the name
        self.beta, self.estimator = float(beta), estimator

    def forward(self, q, z, num_data):
        return (self.beta - 1) * num_data * total_correlation(q, z, num_data, self.estimator)


class FactorVAE(_KLDecompositionReport):
    """FactorVAE (Kim & Mnih 2018): the ELBO minus gamma x a discriminator's estimate of TC.

    A classifier D(z) learns to tell codes z ~ q(z) from codes whose dimensions were each
    shuffled across the batch, draws from prod_l q(z_l); at its optimum its logit is
    log q(z) / prod_l q(z_l), whose mean over q(z) is the total correlation. The penalty is
    gamma N mean_i logit D(z_i); the discriminator's weights enter it detached, so the
    VAE's step does not train them. After each VAE step, :meth:`after_step` takes one Adam
    step on the discriminator's cross-entropy, with fresh codes of the same minibatch and
    their dimension-wise permutation (the paper draws the permuted codes from a second
    batch). ``tc_discriminator`` reports the discriminator's TC estimate per epoch.

    Parameters
    ----------
    dims : Dims
    gamma : float
        The weight of the total correlation beyond the ELBO's (the paper's gamma).
    hidden : sequence of int
        Hidden widths of the discriminator MLP (the paper: 6 layers of 1000).
    lr : float
        Adam's learning rate for the discriminator (the paper: 1e-4, betas (0.5, 0.9)).
    """

    extra_metrics = (*_KLDecompositionReport.extra_metrics, "tc_discriminator")
    _instances = itertools.count()

    def __init__(self, dims, *, gamma=10.0, hidden=(256, 256), lr=1e-4):
        super().__init__()
        self.gamma = float(gamma)
        self.discriminator = MLP(dims.latent_dim, 1, hidden=tuple(hidden))
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=lr,
                                          betas=(0.5, 0.9))
        # A Pyro parameter name, so that a JIT-compiled objective takes the weights as
        # inputs and sees every update instead of freezing the first values.
        self.name = f"factorvae_discriminator{next(self._instances)}"

    def logits(self, z, detach=False):
        """The discriminator's logit log D(z) / (1 - D(z)) per code, shape z.shape[:-1];
        ``detach``: with its weights as constants (torch.func cannot run in a JIT trace)."""
        h = z
        for layer in self.discriminator:
            if detach and isinstance(layer, nn.Linear):
                h = nn.functional.linear(h, layer.weight.detach(), layer.bias.detach())
            else:
                h = layer(h)
        return h.squeeze(-1)

    def forward(self, q, z, num_data):
        pyro.module(self.name, self.discriminator)
        return self.gamma * num_data * self.logits(z, detach=True).mean(-1)

    def after_step(self, vae, x, y, idx):
        with torch.no_grad():
            z = vae.guide(x, y, idx)
        logits = self.logits(torch.cat([z, permute_dims(z)]))
        labels = torch.cat([torch.ones(len(z)), torch.zeros(len(z))]).to(logits)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if distributed.is_distributed():  # every process keeps the same discriminator
            for p in self.discriminator.parameters():
                distributed.all_reduce_sum(p.grad).div_(distributed.world_size())
        self.optimizer.step()

    @torch.no_grad()
    def evaluate_terms(self, vae, x, y=None):
        terms = super().evaluate_terms(vae, x, y)
        terms["tc_discriminator"] = float(self.logits(vae.encode(x, y).sample()).mean())
        return terms

    def checkpoint_state(self):
        return {**super().checkpoint_state(), "optimizer": self.optimizer.state_dict()}

    def load_checkpoint_state(self, state):
        super().load_checkpoint_state(state)
        self.optimizer.load_state_dict(state["optimizer"])


def permute_dims(z):
    """Each column of z (B, L) shuffled across the batch on its own: draws from the product
    of the batch's marginals (Kim & Mnih 2018, algorithm 1)."""
    order = torch.rand(z.shape, device=z.device).argsort(dim=0)
    return z.gather(0, order)


class DIPVAE(_KLDecompositionReport):
    """DIP-VAE I (Kumar et al. 2018): the ELBO minus a penalty that pulls the covariance of
    the encoder's means, Cov_x[mu(x)], towards the identity,

        N (lambda_od sum_{i != j} C_ij^2 + lambda_d sum_i (C_ii - 1)^2),

    C estimated on the minibatch (divided by B). beta-VAE-like disentangling without
    changing the KL's weight.

    Parameters
    ----------
    dims : Dims
    lambda_od : float
        Weight of the off-diagonal entries.
    lambda_d : float, optional
        Weight of the diagonal ones; default 10 lambda_od (DIP-VAE I), lambda_od (II).
    """

    def __init__(self, dims, *, lambda_od=10.0, lambda_d=None):
        super().__init__()
        self.lambda_od = float(lambda_od)
        self.lambda_d = float(self.default_diagonal_factor * lambda_od
                              if lambda_d is None else lambda_d)

    default_diagonal_factor = 10.0

    def covariance(self, q):
        mu = q.mean
        centred = mu - mu.mean(-2, keepdim=True)
        return centred.transpose(-1, -2) @ centred / mu.shape[-2]

    def forward(self, q, z, num_data):
        cov = self.covariance(q)
        diagonal = cov.diagonal(dim1=-2, dim2=-1)
        off_diagonal = cov - torch.diag_embed(diagonal)
        return num_data * (self.lambda_od * off_diagonal.pow(2).sum((-2, -1))
                           + self.lambda_d * (diagonal - 1).pow(2).sum(-1))


class DIPVAEII(DIPVAE):
    """DIP-VAE II (Kumar et al. 2018): as DIP-VAE I, with C the covariance of the aggregate
    posterior's codes, Cov_q(z)[z] = E_x[Cov_q(z|x)[z]] + Cov_x[mu(x)]; lambda_d defaults
    to lambda_od."""

    default_diagonal_factor = 1.0

    def covariance(self, q):
        return super().covariance(q) + posterior_covariance(q).mean(-3)


class PenalizedELBO:
    """An ELBO minus a :class:`Penalty`, added as a ``pyro.factor`` in the guide.

    The guide is wrapped: it runs as it is, then the penalty of its q(z | x) and z enters
    as ``pyro.factor("penalty", penalty, has_rsample=True)``; a factor in the guide is
    subtracted from the ELBO. Being part of the guide's trace, the penalty is compiled with
    everything else by a JIT objective, vectorized over particles, and differentiated by
    Pyro's own estimator. Model, guide and the reported ELBO are untouched.

    Call it like an ELBO (``differentiable_loss``), or hand it to ``SVI`` as ``loss``
    (SVI does not call :meth:`after_step`).

    Parameters
    ----------
    elbo : pyro.infer.ELBO
        The ELBO the penalty is added to.
    penalty : Penalty
    """

    def __init__(self, elbo, penalty):
        self.elbo, self.penalty = elbo, penalty
        self._guides = {}  # id(guide) -> (guide, wrapper): a JIT ELBO keys its graphs on ids

    def differentiable_loss(self, model, guide, *args, **kwargs):
        return self.elbo.differentiable_loss(model, self._penalized(guide), *args, **kwargs)

    __call__ = differentiable_loss

    def loss(self, model, guide, *args, **kwargs):
        """The loss as a float, like ``ELBO.loss``."""
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))

    def _penalized(self, guide):
        if id(guide) not in self._guides:
            def penalized(*args, **kwargs):
                with poutine.trace() as tape:
                    result = guide(*args, **kwargs)
                site = tape.trace.nodes["z"]
                num_data = _data_size(site)
                penalty = self.penalty(site["fn"], site["value"], num_data)
                # One value per particle, at the particle plate's dimension (-2).
                pyro.factor("penalty", penalty.unsqueeze(-1), has_rsample=True)
                return result

            self._guides[id(guide)] = (guide, penalized)
        return self._guides[id(guide)][1]


def _data_size(site):
    """N, the full size of the data plate around a site (the batch size without one)."""
    for frame in site["cond_indep_stack"]:
        if frame.name == "data":
            return frame.full_size or frame.size
    return site["value"].shape[-2]


def auxiliary(objective):
    """The objective's training extras (after-step hook, modules, metrics): its
    :class:`Penalty`, or one that does nothing for a plain ELBO."""
    return getattr(objective, "penalty", None) or Penalty()
