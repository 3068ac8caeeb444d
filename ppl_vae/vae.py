"""The VAE: a Pyro model p(z) p(x | z) and a Pyro guide q(z | x), composed from parts.

``VAE.model`` and ``VAE.guide`` are ordinary Pyro programs; hand them to any Pyro
inference algorithm::

    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), TraceMeanField_ELBO())
    svi.step(x_batch, idx=batch_indices)

The parts (prior, guide, likelihood, decoder) are chosen by name through
:func:`build_vae`; nothing in this file depends on which ones they are.
"""

import itertools
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from torch import nn

from ppl_vae.errors import ConfigError
from ppl_vae.registry import incompatibility, lookup

_instances = itertools.count()


@dataclass(frozen=True)
class Dims:
    """The sizes every part is built from.

    Attributes
    ----------
    data_dim : int
        Size D of a flattened data point.
    latent_dim : int
        Size L of the latent code z.
    num_data : int
        Number of training points N: the size of the data plate, so that minibatch
        ELBOs estimate the full-data ELBO.
    num_classes : int
        Number of classes of the condition y of a conditional VAE; 0 for a plain VAE.
    image_shape : tuple of int or None
        (height, width) of one-channel image data, or (channels, height, width) of colour
        images (flattened channel-major), for conv nets, likelihoods and figures.
    """

    data_dim: int
    latent_dim: int
    num_data: int = 0
    num_classes: int = 0
    image_shape: tuple | None = None

    @property
    def cond_dim(self):
        return self.num_classes


class VAE(nn.Module):
    """A variational autoencoder as a Pyro model and guide.

    Parameters
    ----------
    dims : Dims
        Model sizes.
    prior : nn.Module
        ``prior()`` -> p(z), event shape (L,).
    posterior : nn.Module
        The guide's distribution: ``posterior(inputs, idx)`` -> q(z | x), event shape (L,).
    likelihood : nn.Module
        ``likelihood(decoder_output)`` -> p(x | z), event shape (D,).
    decoder : nn.Module
        Maps z (with the one-hot condition appended, for a conditional VAE) to the
        likelihood's parameters.
    beta : float
        Weight of the latent sites: 1 gives the ELBO; beta != 1 the beta-VAE objective
        E_q[log p(x|z)] - beta KL (Higgins et al. 2017), applied with ``poutine.scale``.
        A call of :meth:`model` and :meth:`guide` may override it (KL annealing).
    corruption : nn.Module, optional
        Applied to the guide's input x while training (``self.training``), never to the
        data the model scores: the denoising VAE (Im et al. 2017), see
        ``ppl_vae.parts.corruptions.Corruption``. None leaves the input as it is.
    """

    def __init__(self, dims, prior, posterior, likelihood, decoder, *, beta=1.0,
                 corruption=None):
        super().__init__()
        self.dims = dims
        self.prior = prior
        self.posterior = posterior
        self.likelihood = likelihood
        self.decoder = decoder
        self.beta = beta
        self.corruption = corruption if corruption is not None else nn.Identity()
        # Training with missing entries: the training set's mask, see set_missing.
        self.register_buffer("observed", None)
        # Pyro's param store is global: two VAEs under one name would share (and silently
        # train) the first one's tensors under SVI. Each instance gets its own name.
        self.name = f"vae{next(_instances)}"
        # Parts built from other parts (the VampPrior from the guide's encoder, guides that
        # optimise the model's ELBO) connect here, holding plain references, not submodules.
        for part in (prior, posterior):
            if hasattr(part, "bind"):
                part.bind(self)

    @property
    def conditional(self):
        return self.dims.num_classes > 0

    def model(self, x, y=None, idx=None, beta=None):
        """p(z) p(x | z) (times p(y) = const for a conditional VAE).

        Parameters
        ----------
        x : Tensor, shape (B, D)
            A minibatch of data.
        y : LongTensor, shape (B,), optional
            Class labels; required by a conditional VAE, rejected by a plain one.
        idx : LongTensor, shape (B,), optional
            The minibatch's indices in the training set. With them the data plate has
            size N and scales the minibatch's log densities by N / B, so the objective
            estimates the full-data ELBO; without them the plate is the batch itself.
        beta : float or 0-d Tensor, optional
            The weight of the latent sites for this call, in place of ``self.beta``: the
            trainer's KL annealing passes the step's weight, as a tensor so that a
            JIT-compiled objective takes it as an input instead of freezing it.
        """
        pyro.module(self.name, self)
        with self._data_plate(x, idx):
            with poutine.scale(scale=self.beta if beta is None else beta):
                z = pyro.sample("z", self.prior().expand(x.shape[:-1]))
            out = self.decoder(self._condition(z, y))
            pyro.sample("x", self._masked(self.likelihood(out), idx), obs=x)
        return out

    def guide(self, x, y=None, idx=None, beta=None):
        """q(z | x) (q(z | x, y) for a conditional VAE); arguments as for :meth:`model`.

        While training, the encoder sees ``self.corruption(x)`` (the identity unless the
        VAE is a denoising one); the model always scores the clean x. With missing entries
        (:meth:`set_missing`) it sees them as zeros.
        """
        pyro.module(self.name, self)
        observed = self._observed_rows(idx)
        if observed is not None:
            x = torch.where(observed, x, torch.zeros_like(x))
        with self._data_plate(x, idx):
            with poutine.scale(scale=self.beta if beta is None else beta):
                inputs = self._condition(self.corruption(x), y)
                z = pyro.sample("z", self.posterior(inputs, idx))
        return z

    def set_missing(self, observed):
        """Train with missing entries: ``observed`` (N, D), True where an entry of the
        training set was seen. The model's likelihood of a training minibatch (given by its
        ``idx``) then scores the observed entries only, masked as ``poutine.mask`` masks a
        site (here per entry, inside the likelihood's event), and the guide sees the
        missing ones as zeros. Calls without ``idx`` (held-out data) score every entry."""
        self.observed = observed.to(torch.bool)

    def _observed_rows(self, idx):
        return None if self.observed is None or idx is None else self.observed[idx]

    def _masked(self, likelihood, idx):
        observed = self._observed_rows(idx)
        if observed is None:
            return likelihood
        return likelihood.base_dist.mask(observed).to_event(1)

    def forward(self, x, z, y=None):
        """The model's log densities at z, without Pyro: ``(log p(z), log p(x | z))``.

        z has shape (..., B, L) (samples first), x shape (B, D); both results have shape
        z.shape[:-1]. Being ``forward``, it can be evaluated at other parameter values with
        ``torch.func.functional_call(vae, params, (x, z, y))``.
        """
        return self.prior().log_prob(z), self.decode(z, y).log_prob(x)

    def encode(self, x, y=None, idx=None):
        """q(z | x) as a distribution, batch shape (B,), event shape (L,)."""
        return self.posterior(self._condition(x, y), idx)

    def decode(self, z, y=None):
        """p(x | z) as a distribution, batch shape z.shape[:-1], event shape (D,)."""
        return self.likelihood(self.decoder(self._condition(z, y)))

    @torch.no_grad()
    def reconstruct(self, x, y=None):
        """Mean of p(x | z) at the posterior mean of z: the usual reconstruction figure."""
        return self.decode(self.encode(x, y).mean, y).mean

    @torch.no_grad()
    def sample(self, num_samples, y=None):
        """Means of p(x | z) for z drawn from the prior, shape (num_samples, D)."""
        z = self.prior().sample((num_samples,))
        return self.decode(z, y).mean

    def _data_plate(self, x, idx):
        if idx is None:
            return pyro.plate("data", x.shape[0])
        return pyro.plate("data", self.dims.num_data, subsample=idx)

    def _condition(self, v, y):
        if not self.conditional:
            if y is not None:
                raise ValueError("this VAE is not conditional; call it without y")
            return v
        if y is None:
            raise ValueError("a conditional VAE needs the labels y")
        onehot = nn.functional.one_hot(y, self.dims.num_classes).to(v.dtype)
        return torch.cat([v, onehot.expand(*v.shape[:-1], -1)], dim=-1)


def build_vae(dims, *, prior="normal", guide="diagonal", likelihood="bernoulli",
              encoder="mlp", decoder="mlp", hidden=(256, 256), beta=1.0,
              corruption="none", corruption_level=0.1,
              prior_options=None, guide_options=None, likelihood_options=None):
    """Build a :class:`VAE` from registered part names.

    Parameters
    ----------
    dims : Dims
        Model sizes.
    prior, guide, likelihood, encoder, decoder : str
        Registered names (see ``ppl_vae.registry``).
    hidden : sequence of int
        Hidden widths of the encoder and decoder nets; ``()`` makes them linear.
    beta : float
        KL weight (see :class:`VAE`).
    corruption : str
        Registered corruption of the guide's input while training (``"none"``,
        ``"gaussian"``, ``"salt-pepper"``, ``"mask"``): the denoising VAE.
    corruption_level : float
        Its strength (noise standard deviation, or the share of pixels corrupted).
    prior_options, guide_options, likelihood_options : dict, optional
        Keyword options passed to the part's constructor.
    """
    hidden = tuple(hidden)
    reason = incompatibility(prior, guide, likelihood)
    if reason:
        raise ConfigError(reason)
    if not beta > 0:  # NaN fails too
        raise ConfigError(f"beta must be > 0; got {beta}")

    def net_factory(kind, name):
        cls = lookup(kind, name)
        return lambda in_dim, out_dim: cls(in_dim, out_dim, hidden=hidden,
                                           image_shape=dims.image_shape)

    likelihood_part = _make("likelihood", likelihood, dims, options=likelihood_options)
    make_decoder = net_factory("decoder", decoder)
    return VAE(
        dims,
        prior=_make("prior", prior, dims, options=prior_options),
        posterior=_make("guide", guide, dims, net_factory("encoder", encoder),
                        options=guide_options),
        likelihood=likelihood_part,
        decoder=make_decoder(dims.latent_dim + dims.cond_dim, likelihood_part.num_outputs),
        beta=beta,
        corruption=_make("corruption", corruption, options={"level": corruption_level}),
    )


def _make(kind, name, *args, options=None):
    cls = lookup(kind, name)
    try:
        return cls(*args, **(options or {}))
    except TypeError as err:
        raise ConfigError(f"bad options for {kind} {name!r}: {err}") from None
    except ValueError as err:  # a part's own refusal of its sizes or options, one line
        raise ConfigError(f"cannot build {kind} {name!r}: {err}") from None


def parameter_bytes(dims, **parts):
    """Bytes of the parameters and buffers ``build_vae(dims, **parts)`` makes, counted on
    torch's meta device, where nothing is allocated: a size can be refused before it is
    built. None where a part cannot be built there."""
    try:
        with torch.device("meta"):
            program = build_vae(dims, **parts)
    except (NotImplementedError, RuntimeError):  # an operation the meta device lacks
        return None
    return sum(t.numel() * t.element_size()
               for t in itertools.chain(program.parameters(), program.buffers()))
