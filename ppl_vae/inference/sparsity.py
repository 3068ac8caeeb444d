"""The sparse autoencoder's objective (Ng 2011): a penalty on the average activation of the
code units.

For code units with activations a_j(x) in (0, 1) (the ``delta-sigmoid`` guide), the
average activation of unit j over a minibatch is rho_hat_j = mean_i a_j(x_i), and the
penalty is

    N w sum_j KL(rho || rho_hat_j),
    KL(rho || rho_hat) = rho log(rho / rho_hat) + (1 - rho) log((1 - rho) / (1 - rho_hat)),

the KL divergence between Bernoulli(rho) and Bernoulli(rho_hat), zero where every unit is
active a share rho of the time on average. It is added to the autoencoder's objective as a
``pyro.factor`` by :class:`~ppl_vae.inference.penalties.PenalizedELBO` (Ng's cost is the
mean reconstruction error plus w sum_j KL; here per example too, times N like the ELBO).
"""

import torch

from ppl_vae.errors import ConfigError
from ppl_vae.inference.penalties import Penalty


def bernoulli_kl(rho, rho_hat):
    """KL(Bernoulli(rho) || Bernoulli(rho_hat)), elementwise."""
    return (rho * (torch.log(rho) - torch.log(rho_hat))
            + (1 - rho) * (torch.log1p(-rho) - torch.log1p(-rho_hat)))


class SparseActivation(Penalty):
    """The ``sparse`` objective: w x sum_j KL(rho || rho_hat_j) per example.

    Parameters
    ----------
    dims : Dims
    rho : float
        The target average activation, in (0, 1) (Ng: 0.05).
    weight : float
        w, the penalty's weight (Ng's beta: 3).
    """

    extra_metrics = ("mean_activation",)

    def __init__(self, dims, *, rho=0.05, weight=3.0):
        super().__init__()
        if not 0 < rho < 1 or not weight >= 0:
            raise ConfigError(f"the sparse objective needs 0 < rho < 1 and weight >= 0; got "
                              f"rho = {rho}, weight = {weight}")
        self.rho, self.weight = float(rho), float(weight)

    def check(self, vae, x, y=None):
        if getattr(vae.posterior, "code_range", None) != (0.0, 1.0):
            raise ConfigError("the sparse objective penalises the average activation of codes "
                              "in (0, 1); use guide 'delta-sigmoid'")

    def forward(self, q, z, num_data):
        rho_hat = z.mean(-2).clamp(1e-6, 1 - 1e-6)  # over the minibatch
        rho = torch.as_tensor(self.rho, dtype=z.dtype, device=z.device)
        return self.weight * num_data * bernoulli_kl(rho, rho_hat).sum(-1)

    @torch.no_grad()
    def evaluate_terms(self, vae, x, y=None):
        return {"mean_activation": float(vae.encode(x, y).mean.mean())}
