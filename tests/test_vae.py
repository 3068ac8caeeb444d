"""The VAE as a Pyro program under Pyro's own SVI."""

import pyro
import torch
from pyro.infer import SVI, TraceMeanField_ELBO

from ppl_vae.vae import Dims, build_vae


def test_two_vaes_in_one_process_train_their_own_parameters():
    """Pyro's param store is global; each VAE must register under its own name."""
    dims = Dims(data_dim=16, latent_dim=2, num_data=32)
    x = torch.bernoulli(torch.full((32, 16), 0.3))
    for _ in range(2):
        vae = build_vae(dims, hidden=(8,))
        before = {k: v.detach().clone() for k, v in vae.named_parameters()}
        svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 0.01}), TraceMeanField_ELBO())
        for _ in range(3):
            svi.step(x)
        changed = [k for k, v in vae.named_parameters() if not torch.equal(v, before[k])]
        assert len(changed) == len(before), "every parameter of this VAE must train"


def test_svi_lowers_the_loss():
    dims = Dims(data_dim=16, latent_dim=2, num_data=64)
    gen = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.rand(4, 16, generator=gen).repeat(16, 1), generator=gen)
    vae = build_vae(dims, hidden=(16,))
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 0.01}), TraceMeanField_ELBO())
    first = sum(svi.evaluate_loss(x) for _ in range(20)) / 20
    for _ in range(300):
        svi.step(x)
    last = sum(svi.evaluate_loss(x) for _ in range(20)) / 20
    assert last < first - 64  # at least a nat per example
