"""Penalties added to the ELBO: the disentangling objectives.

The disentangling objectives of the literature are the ELBO minus a penalty on the guide's
codes (:class:`Penalty`): beta-TCVAE's total correlation (Chen et al. 2018), FactorVAE's
discriminator estimate of it (Kim & Mnih 2018), DIP-VAE's moment matching (Kumar et al.
2018). :class:`PenalizedELBO` adds a penalty to any ELBO of :mod:`ppl_vae.inference.objectives` as a
``pyro.factor`` in the guide, so the same Pyro estimator, compiled or not, optimises the
sum; ``make_objective("tcvae", ...)`` builds one by name.

They are built on the aggregate-posterior estimators of :mod:`ppl_vae.evaluation.aggregate`.
"""

import itertools

import pyro
import torch
from pyro import poutine
from torch import nn

from ppl_vae import distributed
from ppl_vae.evaluation.aggregate import (
    factor_marginals,
    kl_decomposition,
    log_importance_weights,
    posterior_covariance,
    total_correlation,
)
from ppl_vae.parts.nets import MLP

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
