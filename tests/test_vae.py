"""The VAE as a Pyro program under Pyro's own SVI."""

import pyro
import pytest
import torch
from pyro.infer import SVI, TraceMeanField_ELBO

from ppl_vae.build import make_objective
from ppl_vae.errors import ConfigError
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


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("name", ["meanfield", "elbo"])
def test_jit_objective_equals_the_eager_one(name, device):
    """The compiled graph draws the same random numbers and computes the same loss and
    gradients as Pyro's eager objective at the same parameters."""
    dims = Dims(data_dim=16, latent_dim=2, num_data=40)
    vae = build_vae(dims, hidden=(8,)).to(device)
    x = torch.bernoulli(torch.full((8, 16), 0.4)).to(device)
    idx = torch.arange(8, device=device)

    def model(x, idx, batch_size):
        return vae.model(x, None, idx)

    def guide(x, idx, batch_size):
        return vae.guide(x, None, idx)

    jit, eager = make_objective(name, jit=True), make_objective(name)
    jit.differentiable_loss(model, guide, x, idx, batch_size=8)  # compile
    results = []
    for objective in (eager, jit):
        pyro.set_rng_seed(1)
        loss = objective.differentiable_loss(model, guide, x, idx, batch_size=8)
        grads = torch.autograd.grad(loss, list(vae.parameters()))
        results.append((loss.detach(), grads))
    (a, grads_a), (b, grads_b) = results
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    for ga, gb in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-5)


def test_iwae_has_no_jit_version():
    with pytest.raises(ConfigError, match="'iwae' objective has no JIT-compiled version"):
        make_objective("iwae", jit=True)
