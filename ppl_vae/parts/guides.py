"""Guides q(z | x): the approximate posterior, as a distribution over z for each data point.

A guide is an ``nn.Module`` called as ``guide(inputs, idx)`` that returns a distribution
with ``batch_shape == inputs.shape[:-1]`` and ``event_shape == (latent_dim,)``.
``inputs`` is the data point, with the one-hot condition appended for a conditional VAE;
``idx`` are the data points' indices in the training set (used by non-amortized guides).

Every guide here is written as two steps, which evaluation reuses:

- ``local_params(inputs, idx)`` -> lambda, shape (B, P): each point's variational
  parameters (an encoder's output, a row of a table, a refined encoder output);
- ``family(lambda)`` -> q: the distribution those parameters describe.

Class attributes declare what a guide offers: ``amortized`` (an encoder q(z | x) that
applies to any x, exposed as ``encode(inputs)``) and ``has_density`` (log q(z | x) is
finite, so E_q[log p(x, z) - log q(z | x)] is a bound on log p(x); false for the delta
guide); ``evaluation_note`` is what a results table must say about the guide's numbers;
``latent_support`` the space z lives in (see :mod:`ppl_vae.parts.priors`).

The corruptions of the guide's input while training (the denoising VAE) are in
:mod:`ppl_vae.parts.corruptions`.
"""

import pyro.distributions as dist
import torch
from pyro.distributions.transforms import ConditionalAffineAutoregressive
from pyro.distributions.transforms.softplus import softplus_inv
from pyro.nn import ConditionalAutoRegressiveNN
from torch import nn
from torch.nn.functional import softplus

from ppl_vae.errors import ConfigError
from ppl_vae.parts.local import fit_local, refine_local
from ppl_vae.parts.priors import check_joint_sizes, joint_latent


def diagonal_normal(local, min_scale=1e-4):
    """N(mu, diag(sigma^2)) from lambda = (mu, rho), sigma = softplus(rho) + min_scale."""
    loc, rho = local.chunk(2, dim=-1)
    return dist.Normal(loc, softplus(rho) + min_scale).to_event(1)


class AmortizedGuide(nn.Module):
    """Base of the amortized guides: lambda(x) = encoder(x), q(z | x) = family(lambda(x)).

    A subclass sets how many local parameters its family has and overrides ``family``.

    Parameters
    ----------
    dims : Dims
        Model sizes (``data_dim``, ``cond_dim``, ``latent_dim``).
    make_net : callable
        ``make_net(in_dim, out_dim) -> nn.Module``, the encoder factory.
    num_params : int
        P, the number of local parameters per data point (the encoder's output size).
    """

    amortized = True
    has_density = True
    evaluation_note = None  # what a results table must say about this guide's numbers

    def __init__(self, dims, make_net, num_params):
        super().__init__()
        self.latent_dim = dims.latent_dim
        self.encoder = make_net(dims.data_dim + dims.cond_dim, num_params)

    def family(self, local):
        raise NotImplementedError

    def local_params(self, inputs, idx=None):
        return self.encoder(inputs)

    def encode(self, inputs):
        """The encoder's q(z | x) (no per-datapoint refinement)."""
        return self.family(self.encoder(inputs))

    def forward(self, inputs, idx=None):
        return self.family(self.local_params(inputs, idx))


class AmortizedDiagonalNormal(AmortizedGuide):
    """q(z | x) = N(z; mu(x), diag(sigma(x)^2)), one encoder net for all data points.

    The encoder outputs ``(mu, rho)`` and ``sigma = softplus(rho) + min_scale``. Paired with
    a standard normal prior, the KL term has the closed form
    ``1/2 sum_j (sigma_j^2 + mu_j^2 - 1 - log sigma_j^2)``, which ``TraceMeanField_ELBO`` uses.

    Parameters
    ----------
    dims, make_net
        As for :class:`AmortizedGuide` (so for every guide below).
    min_scale : float
        Lower bound on sigma, which keeps log q finite.
    """

    def __init__(self, dims, make_net, *, min_scale=1e-4):
        super().__init__(dims, make_net, 2 * dims.latent_dim)
        self.min_scale = min_scale

    def family(self, local):
        return diagonal_normal(local, self.min_scale)


class AmortizedLowRankNormal(AmortizedGuide):
    """q(z | x) = N(z; mu(x), F(x) F(x)^T + diag(d(x))), F of shape (L, rank).

    Correlations between latent dimensions at O(L * rank) parameters per point; the
    diagonal ``d = (softplus(rho) + min_scale)^2`` keeps the covariance positive definite.

    Parameters
    ----------
    rank : int
        Number of columns of the factor F.
    min_scale : float
        Lower bound on sqrt(d).
    """

    def __init__(self, dims, make_net, *, rank=2, min_scale=1e-4):
        if rank < 1:
            raise ConfigError(f"rank must be >= 1; got {rank}")
        super().__init__(dims, make_net, (2 + rank) * dims.latent_dim)
        self.rank = rank
        self.min_scale = min_scale

    def family(self, local):
        size = self.latent_dim
        loc, factor, rho = local.split([size, size * self.rank, size], dim=-1)
        factor = factor.reshape(*factor.shape[:-1], size, self.rank)
        diag = (softplus(rho) + self.min_scale) ** 2
        return dist.LowRankMultivariateNormal(loc, factor, diag)


class AmortizedFullNormal(AmortizedGuide):
    """q(z | x) = N(z; mu(x), L(x) L(x)^T), L lower triangular with positive diagonal.

    The encoder outputs mu and the L(L+1)/2 entries of the Cholesky factor; its diagonal is
    ``softplus(raw) + min_scale``.
    """

    def __init__(self, dims, make_net, *, min_scale=1e-4):
        size = dims.latent_dim
        super().__init__(dims, make_net, size + size * (size + 1) // 2)
        self.min_scale = min_scale
        self.register_buffer("rows", torch.tril_indices(size, size)[0], persistent=False)
        self.register_buffer("cols", torch.tril_indices(size, size)[1], persistent=False)

    def family(self, local):
        size = self.latent_dim
        loc, entries = local.split([size, local.shape[-1] - size], dim=-1)
        tril = entries.new_zeros(*entries.shape[:-1], size, size)
        tril[..., self.rows, self.cols] = entries
        diagonal = softplus(tril.diagonal(dim1=-2, dim2=-1)) + self.min_scale
        tril = tril.tril(-1) + torch.diag_embed(diagonal)
        return dist.MultivariateNormal(loc, scale_tril=tril)


class FlowPosterior(dist.TransformedDistribution):
    """A diagonal normal pushed through conditioned autoregressive flows.

    Two additions to Pyro's ``TransformedDistribution``: ``log_prob`` first broadcasts its
    argument against the batch shape (the conditioned flows need a context for every row,
    as in a mixture of such posteriors), and ``mean``, which has no closed form, is a
    Monte Carlo estimate from ``mean_samples`` draws.
    """

    mean_samples = 1000

    def log_prob(self, value):
        shape = torch.broadcast_shapes(value.shape[:-1], self.batch_shape)
        if value.shape[:-1] != shape:  # an expanded view would miss the flows' cache
            value = value.expand(*shape, value.shape[-1])
        return super().log_prob(value)

    @property
    def mean(self):
        return self.sample((self.mean_samples,)).mean(0)


class AmortizedFlow(AmortizedGuide):
    """An amortized normalizing flow: inverse autoregressive flow (Kingma et al. 2016).

    The encoder gives a diagonal normal's (mu, rho) and a context vector h(x); ``num_flows``
    affine autoregressive transforms (Pyro's ``ConditionalAffineAutoregressive``, the
    numerically stable gated form), each conditioned on h(x), map a draw of that normal to
    z. Sampling and scoring a drawn z take one pass per flow; scoring an arbitrary z
    inverts the flows, L passes each. The flows are submodules, so their weights train and
    checkpoint with the rest. Successive flows read z in opposite orders.

    Parameters
    ----------
    num_flows : int
        Number of stacked flows.
    context_dim : int
        Size of h(x).
    flow_hidden : int
        Width of each flow's autoregressive net (at least latent_dim).
    min_scale : float
        Lower bound on the base normal's sigma.
    """

    def __init__(self, dims, make_net, *, num_flows=2, context_dim=16, flow_hidden=64,
                 min_scale=1e-4):
        size = dims.latent_dim
        if size < 2:
            raise ConfigError(f"an autoregressive flow needs latent_dim >= 2; got {size}")
        if flow_hidden < size:
            raise ConfigError(f"flow_hidden must be >= latent_dim ({size}); got {flow_hidden}")
        super().__init__(dims, make_net, 2 * size + context_dim)
        self.min_scale = min_scale
        orders = [torch.arange(size), torch.arange(size).flip(0)]
        self.flows = nn.ModuleList(
            ConditionalAffineAutoregressive(
                ConditionalAutoRegressiveNN(size, context_dim, [flow_hidden],
                                            permutation=orders[k % 2]),
                stable=True)
            for k in range(num_flows))

    def family(self, local):
        base, context = local.split([2 * self.latent_dim, local.shape[-1] - 2 * self.latent_dim],
                                    dim=-1)
        return FlowPosterior(diagonal_normal(base, self.min_scale),
                             [flow.condition(context) for flow in self.flows])


class SemiAmortizedNormal(AmortizedDiagonalNormal):
    """Semi-amortized VI (Kim et al. 2018): the encoder's guess, refined per batch.

    lambda_0 = encoder(x) = (mu, rho); then ``num_steps`` steps of gradient ascent on each
    point's ELBO give lambda_K, and q(z | x) = N(mu_K, diag(sigma_K^2)). Training
    differentiates through the steps to reach the encoder; the other parameters see
    lambda_K as fixed (see :func:`ppl_vae.parts.local.refine_local` for exactly what is
    differentiated). The VampPrior uses the unrefined encoder (:meth:`encode`).

    Parameters
    ----------
    num_steps : int
        Refinement steps per call.
    step_size : float
        Gradient-ascent step size.
    num_samples : int
        Monte Carlo samples per step and point.
    max_grad_norm : float
        Clip of each point's gradient norm.
    """

    def __init__(self, dims, make_net, *, num_steps=5, step_size=0.05, num_samples=1,
                 max_grad_norm=5.0, min_scale=1e-4):
        super().__init__(dims, make_net, min_scale=min_scale)
        self.refinement = {"steps": num_steps, "step_size": step_size,
                           "num_samples": num_samples, "max_grad_norm": max_grad_norm}
        self._vae = None

    def bind(self, vae):
        """Keep the VAE (a plain reference, not a submodule) for the refinement's ELBO."""
        object.__setattr__(self, "_vae", vae)  # bypasses nn.Module's submodule registration

    def local_params(self, inputs, idx=None):
        x, y = _split_inputs(self._vae, inputs)
        return refine_local(self._vae, x, y, self.family, self.encoder(inputs),
                            **self.refinement)


class PerDatapointNormal(nn.Module):
    """Non-amortized mean-field normal: a table of (mu_n, sigma_n) for the N training points.

    The classical VI of THEORY.md item 8: no encoder; one (N, 2L) parameter table holds
    each training point's local parameters lambda_n = (mu_n, rho_n), ``idx`` picks the
    minibatch's rows, and a row is trained only when its point is in the minibatch.

    That is about B/N of the updates a shared weight gets. The table is stored divided by
    ``step_scale``, which makes Adam's steps on it (whose size is set by the learning
    rate, whatever the gradient's scale) ``step_scale`` times larger; step_scale ~ N/B
    evens out the visits. It changes the parameterization, not the family.

    Data outside the training set (``idx=None``) have no row. For them the guide fits
    fresh local parameters: ``fit_steps`` Adam steps on each point's ELBO from the prior's
    N(0, I), model fixed (:func:`ppl_vae.parts.local.fit_local`). That makes test ELBOs and
    log p(x) of this guide those of a fitted q, which evaluation reports as such.

    Parameters
    ----------
    dims : Dims
        ``num_data`` (N, the table's rows) and ``latent_dim``.
    make_net : callable
        Unused (no encoder); accepted so that every guide has one constructor.
    step_scale : float
        The table's step multiplier (see above).
    fit_steps, fit_lr, fit_samples : int, float, int
        The fit for data outside the training set.
    min_scale : float
        Lower bound on sigma.
    """

    amortized = False
    has_density = True

    def __init__(self, dims, make_net=None, *, step_scale=1.0, fit_steps=200, fit_lr=0.05,
                 fit_samples=1, min_scale=1e-4):
        super().__init__()
        if dims.num_data < 1:
            raise ConfigError("the per-datapoint guide needs the number of training points "
                              "(Dims.num_data)")
        if step_scale <= 0:
            raise ConfigError(f"step_scale must be > 0; got {step_scale}")
        self.latent_dim = dims.latent_dim
        self.min_scale = min_scale
        self.step_scale = step_scale
        self.fit = {"steps": fit_steps, "lr": fit_lr, "num_samples": fit_samples}
        # lambda = (mu, rho) of N(0, I): the starting point of the rows and of new fits.
        self.register_buffer("prior_params", torch.cat([
            torch.zeros(dims.latent_dim),
            torch.full((dims.latent_dim,), float(softplus_inv(torch.tensor(1.0 - min_scale))))]),
            persistent=False)
        self.table = nn.Parameter(self.prior_params.repeat(dims.num_data, 1) / step_scale)
        self._vae = None

    @property
    def evaluation_note(self):
        return (f"per-datapoint guide: q for points outside the training set fitted by "
                f"{self.fit['steps']} Adam steps from N(0, I) before every number")

    def bind(self, vae):
        """Keep the VAE (a plain reference, not a submodule) for fits to new data."""
        object.__setattr__(self, "_vae", vae)  # bypasses nn.Module's submodule registration

    def family(self, local):
        return diagonal_normal(local, self.min_scale)

    def local_params(self, inputs, idx=None):
        if idx is not None:
            return self.step_scale * self.table[idx]
        x, y = _split_inputs(self._vae, inputs)
        start = self.prior_params.expand(x.shape[0], -1)
        return fit_local(self._vae, x, y, self.family, start, **self.fit)

    def forward(self, inputs, idx=None):
        return self.family(self.local_params(inputs, idx))


class AmortizedJoint(AmortizedGuide):
    """JointVAE's guide (Dupont 2018): q(z, c | x) = N(z; mu(x), diag(sigma(x)^2)) x
    RelaxedOneHotCategorical(c; tau, logits(x)), z continuous of size L - K, c a relaxed
    one-hot vector of size K (:class:`ppl_vae.parts.priors.JointLatent`).

    The encoder outputs (mu, rho, logits). Both parts are reparameterized (the relaxed
    categorical through Gumbel noise), so every objective applies; the KL term has no closed
    form and is estimated by Monte Carlo. Goes with the ``joint`` prior, whose
    ``num_categories`` and ``temperature`` must be the same (checked when the VAE is built).

    Parameters
    ----------
    num_categories : int
        K (the prior's default, 2).
    temperature : float
        tau of the relaxation.
    min_scale : float
        Lower bound on sigma.
    """

    latent_support = "real x simplex"

    def __init__(self, dims, make_net, *, num_categories=2, temperature=0.67, min_scale=1e-4):
        check_joint_sizes(dims, num_categories, temperature)
        continuous = dims.latent_dim - num_categories
        super().__init__(dims, make_net, 2 * continuous + num_categories)
        self.num_categories = num_categories
        self.continuous_dim = continuous
        self.min_scale = min_scale
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def bind(self, vae):
        """Check that the prior's discrete part is the guide's."""
        prior = vae.prior
        if getattr(prior, "num_categories", self.num_categories) != self.num_categories or (
                float(getattr(prior, "temperature", self.temperature)) != float(self.temperature)):
            raise ConfigError(
                f"the joint guide has {self.num_categories} categories at temperature "
                f"{float(self.temperature):g} but the prior {prior.num_categories} at "
                f"{float(prior.temperature):g}; give both the same prior_options and "
                "guide_options")

    def family(self, local):
        loc, rho, logits = local.split([self.continuous_dim, self.continuous_dim,
                                        self.num_categories], dim=-1)
        return joint_latent(loc, softplus(rho) + self.min_scale, self.temperature, logits)


class DeltaGuide(AmortizedGuide):
    """q(z | x) = delta(z - f(x)): a deterministic autoencoder, the MAP limit of the VAE.

    Its "ELBO" is log p(x | f(x)) + log p(f(x)): the entropy of q, which is minus infinity
    for a point mass, is left out, so it is **not** a lower bound on log p(x); it trains
    the encoder and decoder as a regularised autoencoder. Evaluation reports it as such and
    estimates log p(x) only with a proposal that has a density.
    """

    has_density = False
    evaluation_note = ("delta guide (autoencoder): its ELBO lacks the entropy of q and is not "
                       "a bound on log p(x); log p(x) uses a fitted diagonal-normal proposal")

    def __init__(self, dims, make_net):
        super().__init__(dims, make_net, dims.latent_dim)

    def family(self, local):
        return dist.Delta(local, event_dim=1)


def _split_inputs(vae, inputs):
    """(x, y) from a guide's inputs: the data and, for a conditional VAE, the label."""
    if vae is None:
        raise ConfigError("this guide is not connected to a VAE; build it with build_vae, "
                          "which calls bind(vae)")
    num_classes = vae.dims.num_classes
    if not num_classes:
        return inputs, None
    return inputs[..., :-num_classes], inputs[..., -num_classes:].argmax(-1)
