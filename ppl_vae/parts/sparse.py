"""The code layer of Ng's sparse autoencoder: a deterministic code of sigmoid units."""

import pyro.distributions as dist
import torch

from ppl_vae.parts.guides import DeltaGuide


class SigmoidDeltaGuide(DeltaGuide):
    """q(z | x) = delta(z - sigmoid(f(x))): the delta guide with codes in (0, 1), the
    activations of the code units of a sparse autoencoder (Ng 2011), which the decoder
    reads and the ``sparse`` objective keeps sparse on average.

    As for the delta guide, the objective log p(x | z) + log p(z) is not a bound on
    log p(x).
    """

    code_range = (0.0, 1.0)  # what the sparse objective checks

    def family(self, local):
        return dist.Delta(torch.sigmoid(local), event_dim=1)
