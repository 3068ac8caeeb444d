"""Likelihoods p(x | z): a distribution over a data point built from the decoder's output.

A likelihood is an ``nn.Module`` with

- ``support``: the values the data may take, ``"unit"`` ([0, 1]) or ``"real"``; data are
  checked against it before training starts;
- ``num_outputs``: how many numbers per data point the decoder must produce;
- ``forward(out)``: a distribution with ``event_shape == (data_dim,)`` from the decoder
  output ``out`` of shape ``(..., num_outputs)``.

Learned noise scales are parameters of the likelihood itself, not decoder outputs.
"""

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn.functional import binary_cross_entropy_with_logits, softplus


class IndependentBernoulli(dist.Independent):
    """``Bernoulli(logits=...).to_event(1)`` whose ``log_prob`` is minus the binary
    cross-entropy summed over the event, negated after the sum: the same number with one
    operation (and its gradient) on the whole (B, D) batch fewer (``ppl-vae bench parts``
    times both). Build it with ``reinterpreted_batch_ndims`` 1 (as :class:`Bernoulli`
    does)."""

    def log_prob(self, value):
        logits, value = torch.broadcast_tensors(self.base_dist.logits, value)
        return -binary_cross_entropy_with_logits(logits, value, reduction="none").sum(-1)


class Bernoulli(nn.Module):
    """p(x | z) = prod_d Bernoulli(x_d; sigmoid(f(z)_d)).

    ``log p(x | z)`` is minus the binary cross-entropy. Values in [0, 1] that are not
    binary are scored by the same formula (the cross-entropy with soft targets), which is
    not a normalised density: binarise the data (``binarize = "dynamic"``) for a true
    likelihood, or use the continuous Bernoulli.
    """

    support = "unit"

    def __init__(self, dims):
        super().__init__()
        self.num_outputs = dims.data_dim

    def forward(self, out):
        # validate_args=False: soft targets in [0, 1] are allowed (see the class docstring).
        return IndependentBernoulli(dist.Bernoulli(logits=out, validate_args=False), 1)


class UnitGaussian(nn.Module):
    """p(x | z) = N(x; f(z), I), the decoder of the textbook derivation.

    ``log p(x | z) = -||x - f(z)||^2 / 2 - (D/2) log(2 pi)``: the squared error plus a
    constant.
    """

    support = "real"

    def __init__(self, dims):
        super().__init__()
        self.num_outputs = dims.data_dim

    def forward(self, out):
        return dist.Normal(out, torch.ones((), device=out.device)).to_event(1)


class _LearnedScaleGaussian(nn.Module):
    """p(x | z) = N(x; f(z), diag(sigma^2)) with sigma learned, bounded below by ``min_scale``.

    The bound matters on image data: a pixel that is constant in the training set would
    otherwise drive its sigma, and the likelihood, to infinity.
    """

    support = "real"
    shared = True

    def __init__(self, dims, *, init_scale=1.0, min_scale=1e-2):
        super().__init__()
        self.num_outputs = dims.data_dim
        self.min_scale = min_scale
        shape = () if self.shared else (dims.data_dim,)
        # Inverse softplus, so that the initial scale is exactly init_scale.
        raw = torch.full(shape, float(init_scale - min_scale))
        self.raw_scale = nn.Parameter(raw + torch.log(-torch.expm1(-raw)))

    @property
    def scale(self):
        return softplus(self.raw_scale) + self.min_scale

    def forward(self, out):
        return dist.Normal(out, self.scale.expand(out.shape[-1:])).to_event(1)


class IsotropicGaussian(_LearnedScaleGaussian):
    """N(x; f(z), sigma^2 I) with one learned sigma: with a linear decoder this is
    probabilistic PCA (Tipping & Bishop 1999)."""

    shared = True


class DiagonalGaussian(_LearnedScaleGaussian):
    """N(x; f(z), diag(sigma_1^2, ..., sigma_D^2)), one learned sigma per dimension: with a
    linear decoder this is factor analysis."""

    shared = False


class ContinuousBernoulli(nn.Module):
    """p(x | z) = prod_d CB(x_d; sigmoid(f(z)_d)) (Loaiza-Ganem & Cunningham 2019).

    The continuous Bernoulli is the Bernoulli formula made a density on [0, 1]: it adds
    the log normalising constant log C(lambda) that the cross-entropy of soft targets
    leaves out, so for grey-level data in [0, 1] log p(x | z) is a true log density and
    log p(x) a comparable number. Its mean is not lambda but a monotone function of it.
    """

    support = "unit"

    def __init__(self, dims):
        super().__init__()
        self.num_outputs = dims.data_dim

    def forward(self, out):
        return dist.ContinuousBernoulli(logits=out).to_event(1)
