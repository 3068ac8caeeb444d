"""The one SVI loop (ppl_vae.inference.svi): against Pyro's own SVI, a closed-form
posterior, and the step a NaN first appears at."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI as PyroSVI
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from ppl_vae.errors import TrainingDiverged
from ppl_vae.inference.svi import SVI

DATA = torch.tensor([0.3, 1.1, 2.0, 1.4, 0.9])
PRIOR_SCALE, NOISE = 2.0, 1.0


def model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, PRIOR_SCALE))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(mu, NOISE), obs=x)


def exact_posterior(x):
    """The conjugate normal posterior of mu: precision-weighted mean and its std."""
    precision = 1 / PRIOR_SCALE**2 + len(x) / NOISE**2
    return float(x.sum() / NOISE**2 / precision), precision**-0.5


def batches(n):
    return (((DATA,), {}) for _ in range(n))


def test_pyro_optimizer_path_is_pyros_svi_step_for_step():
    results = []
    for run in ("ours", "pyro"):
        pyro.clear_param_store()
        pyro.set_rng_seed(3)
        guide = AutoNormal(model)
        optim = pyro.optim.Adam({"lr": 0.05})
        if run == "ours":
            losses = SVI.of(model, guide, optim, Trace_ELBO()).run(batches(40), 40)
        else:
            svi = PyroSVI(model, guide, optim, Trace_ELBO())
            losses = torch.tensor([svi.step(DATA) for _ in range(40)])
        results.append((losses, {k: v.detach().clone() for k, v in
                                 pyro.get_param_store().items()}))
    (ours, ours_params), (theirs, theirs_params) = results
    torch.testing.assert_close(ours, theirs.to(ours.dtype))
    for key in theirs_params:
        torch.testing.assert_close(ours_params[key], theirs_params[key])


def test_torch_optimizer_path_reaches_the_exact_posterior():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoNormal(model)
    guide(DATA)  # creates the guide's parameters, so a torch optimizer can take them
    optimizer = torch.optim.Adam(guide.parameters(), lr=0.05)
    svi = SVI.of(model, guide, optimizer, Trace_ELBO(num_particles=64, vectorize_particles=True,
                                                               max_plate_nesting=1))
    losses = svi.run(batches(600), 600)
    mean, std = exact_posterior(DATA)
    assert guide.locs.mu.item() == pytest.approx(mean, abs=0.05)
    assert guide.scales.mu.item() == pytest.approx(std, abs=0.05)
    assert losses[-100:].mean() < losses[:100].mean()


@pytest.mark.parametrize("bad_step", [1, 7, 25, 26])
def test_a_nan_loss_stops_the_run_naming_its_first_step(bad_step):
    weight = torch.nn.Parameter(torch.tensor(1.0))
    calls = {"n": 0}

    def loss_fn():
        calls["n"] += 1
        return weight**2 * (float("nan") if calls["n"] >= bad_step else 1.0)

    svi = SVI(loss_fn, torch.optim.SGD([weight], lr=0.1))
    with pytest.raises(TrainingDiverged, match=rf"at step {bad_step + 99}; lower it") as info:
        svi.run((((), {}) for _ in range(30)), 30, first_step=100, sync_every=25,
                hint="lower it")
    assert info.value.step == bad_step + 99
    # It stops at the first look after the NaN: no more than sync_every steps later.
    assert calls["n"] == (25 if bad_step <= 25 else 30)


def test_after_step_sees_each_batch_once_after_its_update():
    weight = torch.nn.Parameter(torch.tensor(0.0))
    seen = []

    def loss_fn(target):
        return (weight - target) ** 2

    svi = SVI(loss_fn, torch.optim.SGD([weight], lr=0.5),
              after_step=lambda target: seen.append((target.item(), weight.item())))
    svi.run((((torch.tensor(t),), {}) for t in (1.0, 3.0)), 2)
    # SGD with lr 1/2 on (w - t)^2 jumps to t in one step.
    assert seen == [(1.0, 1.0), (3.0, 3.0)]
