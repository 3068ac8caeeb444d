"""The semi-supervised VAE M2 (Kingma, Rezende, Mohamed & Welling 2014), written as a user
writes a program: the class y is a discrete latent, summed over by ``TraceEnum_ELBO``
(``objective = "enum"``) wherever the label is missing.

    p(y) = Cat(1/K),  p(z) = N(0, I),  p(x | y, z) = Bernoulli(f(y, z))
    q(y | x) = Cat(pi(x)) (the classifier),  q(z | x, y) = N(mu(x, y), diag sigma(x, y)^2)

Only ``num_labelled`` training points keep their label (drawn once, with ``label_seed``);
for them y is observed (``q(y | x)`` is then a point mass on it) and the classifier's
log q(y | x), weighted by ``alpha``, is added to the objective, as in the paper. Every
other point, and every point at evaluation (``idx`` None), has y enumerated: the ELBO and
log p(x) are those of the unlabelled model. Train it with ``ppl-vae train --model m2``.
Only the public API: Pyro, torch, and the ``dims`` ppl-vae passes in.
"""

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn.functional import one_hot, softplus

# A logit far below the others: a class all but excluded, yet with a finite log density.
EXCLUDED = -30.0


def mlp(sizes):
    layers = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def joined(a, b):
    """a and b side by side along the last dimension, batch dimensions broadcast (y is
    enumerated in a dimension of its own, left of the data)."""
    shape = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    return torch.cat([a.expand(*shape, -1), b.expand(*shape, -1)], dim=-1)


class M2(nn.Module):
    """Kingma et al.'s M2. Needs labels (``conditional = true``) and ``objective = "enum"``."""

    support = "unit"

    def __init__(self, dims, *, num_labelled=100, label_seed=0, alpha=50.0,
                 hidden=(256, 256)):
        super().__init__()
        if dims.num_classes < 2:
            raise ValueError("M2 needs labelled data: set conditional = true in [model]")
        self.num_data, self.num_classes, self.latent_dim = (dims.num_data, dims.num_classes,
                                                            dims.latent_dim)
        self.alpha = alpha
        d, k, l, h = dims.data_dim, dims.num_classes, dims.latent_dim, list(hidden)
        self.classifier = mlp([d, *h, k])                  # q(y | x)
        self.encoder = mlp([d + k, *h, 2 * l])             # q(z | x, y)
        self.decoder = mlp([l + k, *h, d])                 # p(x | y, z)
        gen = torch.Generator().manual_seed(label_seed)
        chosen = torch.randperm(dims.num_data, generator=gen)[:num_labelled]
        labelled = torch.zeros(dims.num_data, dtype=torch.bool)
        labelled[chosen] = True
        self.register_buffer("labelled", labelled)  # which training points keep their label

    def plate(self, x, idx):
        return pyro.plate("data", len(x) if idx is None else self.num_data, subsample=idx)

    def known(self, y, idx):
        """Which rows of the minibatch keep their label (none at evaluation)."""
        if idx is None or y is None:
            return None
        return self.labelled[idx]

    def restrict(self, logits, y, known):
        """Logits with every class but the label excluded where the label is known."""
        if known is None:
            return logits
        only_label = torch.full_like(logits, EXCLUDED).scatter(-1, y[:, None], 0.0)
        return torch.where(known[:, None], only_label, logits)

    def model(self, x, y=None, idx=None):
        pyro.module("m2", self)
        known = self.known(y, idx)
        with self.plate(x, idx):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), self.latent_dim), 1.0)
                            .to_event(1))
            prior = self.restrict(x.new_zeros(len(x), self.num_classes), y, known)
            c = pyro.sample("y", dist.Categorical(logits=prior))
            logits = self.decoder(joined(z, one_hot(c, self.num_classes).to(x)))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)
            if known is not None:  # the classification term of the labelled points
                log_q = self.classifier(x).log_softmax(-1).gather(-1, y[:, None])[:, 0]
                pyro.factor("classify", self.alpha * log_q * known)

    def guide(self, x, y=None, idx=None):
        pyro.module("m2", self)
        known = self.known(y, idx)
        with self.plate(x, idx):
            c = pyro.sample("y", dist.Categorical(
                logits=self.restrict(self.classifier(x), y, known)))
            loc, raw = self.encoder(joined(x, one_hot(c, self.num_classes).to(x))).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, softplus(raw) + 1e-4).to_event(1))

    @torch.no_grad()
    def classify(self, x):
        """The most probable class under q(y | x), shape (N,)."""
        return self.classifier(x).argmax(-1)

    @torch.no_grad()
    def sample(self, num_samples, y=None):
        """Means of p(x | y, z) for z ~ p(z), the classes in turn (the samples figure)."""
        device = self.decoder[0].weight.device
        c = torch.arange(num_samples, device=device) % self.num_classes
        z = torch.randn(num_samples, self.latent_dim, device=device)
        return torch.sigmoid(self.decoder(joined(z, one_hot(c, self.num_classes).float())))
