"""Likelihoods p(x | z): a distribution over a data point built from the decoder's output.

A likelihood is an ``nn.Module`` with

- ``support``: the values the data may take, ``"unit"`` ([0, 1]) or ``"real"``; data are
  checked against it before training starts;
- ``num_outputs``: how many numbers per data point the decoder must produce;
- ``forward(out)``: a distribution with ``event_shape == (data_dim,)`` from the decoder
  output ``out`` of shape ``(..., num_outputs)``.

Learned noise scales are parameters of the likelihood itself, not decoder outputs.

Likelihoods for 8-bit images may say how they read uint8 data (``dequantize``: True adds
uniform noise, ``(x + u) / 256``; otherwise ``x / 255``) and how their nats become bits per
dimension (``log_bin_width``, see :func:`bits_per_dim`).
"""

import math

import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution, constraints
from torch import nn
from torch.nn.functional import binary_cross_entropy_with_logits, logsigmoid, softplus


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


# --- 8-bit images ---------------------------------------------------------------------------

LEVELS = 256  # the values of one 8-bit channel: k / 255 for k = 0..255 once scaled
# log(1/256): the log volume of one dequantisation bin of a density on [0, 1]
LOG_BIN_WIDTH = -math.log(LEVELS)
MIN_LOG_SCALE = -7.0  # PixelCNN++'s bound: narrower logistics put all mass on one level


def bits_per_dim(log_likelihood, data_dim, log_bin_width=0.0):
    """Bits per dimension of a log-likelihood (or bound) in nats per example.

    ``bits/dim = -(log p + D * log_bin_width) / (D ln 2)``. For a discrete likelihood over
    the 256 levels (``log_bin_width = 0``) this is ``-log p / (D ln 2)``. For a density on
    [0, 1] fit to uniformly dequantised data ``(x + u) / 256``, ``log p`` is a density and
    ``log p - D ln 256`` is a lower bound on the log-probability of the 8-bit image
    (Theis et al. 2016), so ``log_bin_width = -ln 256``. A uniform model gives 8 either
    way.
    """
    return -(log_likelihood + data_dim * log_bin_width) / (data_dim * math.log(2))


def program_bits_per_dim(program, log_likelihood, data_dim):
    """:func:`bits_per_dim` for ``program``'s likelihood, or None when it does not model
    8-bit data (no ``log_bin_width``; a program of your own may have no ``likelihood``)."""
    log_bin_width = getattr(getattr(program, "likelihood", None), "log_bin_width", None)
    return None if log_bin_width is None else bits_per_dim(log_likelihood, data_dim,
                                                             log_bin_width)


def _image_layout(dims):
    """(channels C, pixels P per channel) of the data: (1, D) without an image shape."""
    shape = dims.image_shape
    channels = shape[0] if shape is not None and len(shape) == 3 else 1
    return channels, dims.data_dim // channels


def _log_level_mass(x, loc, log_scale):
    """log P(level of x) under a logistic(loc, exp(log_scale)) discretised to the 256 levels
    of [0, 1]: the CDF's increase over the level's bin, the end bins taking the tails."""
    inv_scale = torch.exp(-log_scale)
    half = 0.5 / (LEVELS - 1)
    upper = (x + half - loc) * inv_scale
    lower = (x - half - loc) * inv_scale
    # sigmoid(a) - sigmoid(b) = sigmoid(a) sigmoid(-b) (1 - exp(b - a)), in log space
    middle = logsigmoid(upper) + logsigmoid(-lower) + torch.log(-torch.expm1(lower - upper))
    return torch.where(x < half, logsigmoid(upper),
                       torch.where(x > 1 - half, logsigmoid(-lower), middle))


class DiscretizedLogisticMixtureDistribution(TorchDistribution):
    """A mixture of K logistics per pixel, discretised to the 256 levels of each channel.

    As in PixelCNN++ (Salimans et al. 2017), the mixture weights are per pixel and shared
    by its channels (the channels are independent given the component; PixelCNN++'s
    linear dependence of green on red and blue on both is left out). Values are read on
    the grid k / 255, the bins of width 1/255 around them.

    Parameters
    ----------
    logits : Tensor, shape (..., K, P)
    loc, log_scale : Tensor, shape (..., K, C, P)
    """

    arg_constraints = {}
    support = constraints.unit_interval

    def __init__(self, logits, loc, log_scale):
        self.logits, self.loc = logits, loc
        self.log_scale = log_scale.clamp(min=MIN_LOG_SCALE)
        _, channels, pixels = loc.shape[-3:]
        super().__init__(loc.shape[:-3], torch.Size([channels * pixels]), validate_args=False)

    def _levels(self, value):
        return value.reshape(*value.shape[:-1], 1, *self.loc.shape[-2:])

    def log_prob(self, value):
        per_channel = _log_level_mass(self._levels(value), self.loc, self.log_scale)
        per_component = per_channel.sum(-2) + torch.log_softmax(self.logits, -2)
        return torch.logsumexp(per_component, -2).sum(-1)

    @property
    def mean(self):
        # E[k / 255] = sum_{k=1}^{255} P(level >= k) / 255, each term a logistic tail.
        edges = (torch.arange(1, LEVELS, device=self.loc.device, dtype=self.loc.dtype)
                 - 0.5) / (LEVELS - 1)
        inv_scale = torch.exp(-self.log_scale)
        means = sum(torch.sigmoid((self.loc - edge) * inv_scale) for edge in edges)
        weights = torch.softmax(self.logits, -2).unsqueeze(-2)
        return (weights * means / (LEVELS - 1)).sum(-3).flatten(-2)

    def sample(self, sample_shape=()):
        with torch.no_grad():
            shape = torch.Size(sample_shape) + self.loc.shape
            component = dist.Categorical(logits=self.logits.movedim(-2, -1)).sample(sample_shape)
            pick = component.unsqueeze(-2).unsqueeze(-3).expand(*shape[:-3], 1, *shape[-2:])
            loc = self.loc.expand(shape).gather(-3, pick).squeeze(-3)
            scale = self.log_scale.expand(shape).gather(-3, pick).squeeze(-3).exp()
            u = torch.rand(loc.shape, device=loc.device).clamp(1e-5, 1 - 1e-5)
            y = loc + scale * (torch.log(u) - torch.log1p(-u))
            return ((y * (LEVELS - 1)).round().clamp(0, LEVELS - 1) / (LEVELS - 1)).flatten(-2)


class DiscretizedLogisticMixture(nn.Module):
    """p(x | z): per pixel, a mixture of ``num_components`` discretised logistics
    (PixelCNN++'s likelihood, without the channel coupling).

    A discrete distribution over the 256 levels of every channel: log p(x | z) is a log
    probability, and bits per dimension is ``-log p / (D ln 2)``. 8-bit data are read as
    k / 255. The decoder gives, per pixel, K mixture logits and per channel K locations and
    K log scales (laid out as K + 2 K C maps).
    """

    support = "unit"
    log_bin_width = 0.0  # discrete: see bits_per_dim
    dequantize = False

    def __init__(self, dims, *, num_components=5):
        super().__init__()
        self.channels, self.pixels = _image_layout(dims)
        self.num_components = int(num_components)
        if self.num_components < 1:
            raise ValueError(f"num_components must be >= 1; got {num_components}")
        self.num_logits = self.num_components * self.pixels if self.num_components > 1 else 0
        self.num_outputs = self.num_logits + 2 * self.num_components * dims.data_dim

    def forward(self, out):
        batch, k = out.shape[:-1], self.num_components
        if k == 1:  # one component: its logit is a constant
            logits = torch.zeros(*batch, 1, self.pixels, device=out.device, dtype=out.dtype)
        else:
            logits = out[..., : self.num_logits].reshape(*batch, k, self.pixels)
        loc, log_scale = out[..., self.num_logits :].reshape(
            *batch, 2, k, self.channels, self.pixels).unbind(-4)
        return DiscretizedLogisticMixtureDistribution(logits, loc, log_scale)


class DiscretizedLogistic(DiscretizedLogisticMixture):
    """p(x | z): one discretised logistic per value (Kingma et al. 2016's IAF decoder): the
    mixture with one component."""

    def __init__(self, dims):
        super().__init__(dims, num_components=1)


class DequantizedGaussian(_LearnedScaleGaussian):
    """N(y; f(z), diag(sigma_1^2, ..., sigma_D^2)) on uniformly dequantised 8-bit data
    y = (x + u) / 256, u ~ U[0, 1)^D drawn anew for each training batch (once, with a fixed
    seed, for the test set). A density on [0, 1]^D: bits per dimension adds D ln 256 to
    -log p (see :func:`bits_per_dim`)."""

    shared = False
    log_bin_width = LOG_BIN_WIDTH
    dequantize = True
