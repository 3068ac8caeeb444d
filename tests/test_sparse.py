"""The sparse autoencoder's penalty: value and gradient by hand, and training that brings
the average activations to the target."""

import math

import pytest
import torch

from ppl_vae.build import make_objective
from ppl_vae.data import load_digits
from ppl_vae.errors import ConfigError
from ppl_vae.vae import Dims, build_vae

DIMS = Dims(data_dim=64, latent_dim=6, num_data=100)


def test_penalty_and_its_gradient_by_hand():
    rho, weight, num_data = 0.1, 3.0, 100
    penalty = make_objective("sparse", dims=DIMS, options={"rho": rho, "weight": weight}).penalty
    z = torch.rand(5, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z.requires_grad_(True)
    value = penalty(None, z, num_data)
    value.backward()
    expected, grad = 0.0, []
    for j in range(6):
        rho_hat = z[:, j].mean().item()
        expected += rho * math.log(rho / rho_hat) + (1 - rho) * math.log((1 - rho) / (1 - rho_hat))
        # d KL / d rho_hat = -rho / rho_hat + (1 - rho) / (1 - rho_hat); d rho_hat / dz = 1/5
        grad.append((-rho / rho_hat + (1 - rho) / (1 - rho_hat)) / 5)
    assert value.item() == pytest.approx(weight * num_data * expected, rel=1e-10)
    hand = weight * num_data * torch.tensor(grad, dtype=torch.float64).expand(5, 6)
    assert torch.allclose(z.grad, hand, rtol=1e-10)
    # At rho_hat = rho the penalty and its gradient vanish.
    at_target = torch.full((5, 6), rho, dtype=torch.float64, requires_grad=True)
    penalty(None, at_target, num_data).backward()
    assert penalty(None, at_target, num_data).item() == pytest.approx(0.0, abs=1e-12)
    assert at_target.grad.abs().max() < 1e-9


def mean_activation_after_training(rho, beta, steps=150):
    x = load_digits().x_train[:100]
    vae = build_vae(DIMS, prior="normal", guide="delta-sigmoid", hidden=(32,), beta=beta)
    objective = make_objective("sparse", dims=DIMS, options={"rho": rho, "weight": 3.0})
    objective.penalty.check(vae, x)
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-2)
    for step in range(steps):
        idx = torch.arange(step * 50, (step + 1) * 50) % len(x)
        loss = objective.differentiable_loss(vae.model, vae.guide, x[idx].bernoulli(),
                                             idx=idx)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return vae.encode(x).mean.mean(0)  # each unit's average activation


@pytest.mark.parametrize("rho", [0.05, 0.4])
def test_trained_mean_activations_approach_rho(rho):
    activations = mean_activation_after_training(rho, beta=0.01)
    assert abs(float(activations.mean()) - rho) < 0.03
    assert (activations - rho).abs().max() < 0.1


def test_sparse_objective_refuses_codes_outside_the_unit_interval_and_bad_rho():
    x = load_digits().x_train[:4]
    penalty = make_objective("sparse", dims=DIMS).penalty
    with pytest.raises(ConfigError, match="delta-sigmoid"):
        penalty.check(build_vae(DIMS, guide="delta", hidden=(8,)), x)
    with pytest.raises(ConfigError, match="0 < rho < 1"):
        make_objective("sparse", dims=DIMS, options={"rho": 1.5})


def test_sweep_script_writes_the_table_and_the_figure(tmp_path):
    import csv
    import runpy
    from pathlib import Path

    script = runpy.run_path(str(Path(__file__).parents[1] / "scripts" / "sparse_sweep.py"),
                            run_name="sparse_sweep")
    out = tmp_path / "out"
    assert script["main"](["--quick", "--rhos", "0.1", "--out", str(out)]) == 0
    with open(out / "sparse_sweep.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["rho"] == "0.1"
    assert 0 < float(row["min_unit"]) <= float(row["mean_activation"]) <= float(row["max_unit"]) < 1
    assert (out / "sparse_sweep.png").stat().st_size > 0
