"""ppl_vae.commands.bench (``ppl-vae bench``, ``scripts/bench.py``): the alternatives it times
compute what they claim, and the quick modes run. Nothing here times anything."""

import math

import pytest
import torch

from ppl_vae.build import make_objective
from ppl_vae.commands import bench
from ppl_vae.commands import main as cli_main
from ppl_vae.evaluation.likelihood import log_likelihood
from ppl_vae.vae import Dims, build_vae


def quick(name, *extra):
    # The benchmarks take a resolved device, as main hands them; "auto" is the flag's default.
    return bench.build_parser().parse_args([name, "--quick", "--device", "cpu", *extra])


def test_fit_adds_less_peak_memory_than_the_data():
    # 2,000,000 x 8 float32 (64 MB), K=16; a fresh process measures its peak resident size.
    row = bench.measure_memory("ours", 2_000_000, 8, 16, 2, init_params="random_from_data")
    assert row["added_peak_bytes"] < row["data_bytes"]


def test_plain_torch_loss_is_the_trainers_meanfield_objective():
    """The svi benchmark's ratio compares like with like only if the hand-written loop
    optimises the same loss: at the same parameters and noise it is the same number."""
    dims = Dims(data_dim=20, latent_dim=3, num_data=500)
    vae = build_vae(dims, hidden=(16,))
    x = torch.bernoulli(torch.full((10, 20), 0.3))
    idx = torch.arange(10)
    torch.manual_seed(5)
    pyro_loss = make_objective("meanfield").differentiable_loss(vae.model, vae.guide, x, None,
                                                                idx)
    torch.manual_seed(5)
    plain = bench.plain_torch_loss(vae.posterior.encoder, vae.decoder, x, 500,
                                   vae.posterior.min_scale)
    torch.testing.assert_close(plain, pyro_loss, rtol=1e-5, atol=1e-3)


@pytest.fixture(scope="module")
def tiny_vae():
    torch.manual_seed(0)
    vae = build_vae(Dims(data_dim=12, latent_dim=2, num_data=6), hidden=(8,))
    # A proposal wider than the prior, q(z | x) = N(0, 1.5^2 I): the importance weights
    # p(z) p(x | z) / q(z) are then bounded, so K = 20000 pins log p(x) to about 0.005 nats
    # (one standard deviation).
    last = vae.posterior.encoder[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.0, 0.0, 1.2587, 1.2587]))  # softplus -> 1.5
    x = torch.bernoulli(torch.full((6, 12), 0.4))
    return vae, x


def quadrature_log_likelihood(vae, x, half_width=7.0, points=401):
    """log p(x) = log of the integral of p(z) p(x | z) over a 2-D grid of z: exact up to
    the grid's error, independent of any proposal."""
    axis = torch.linspace(-half_width, half_width, points)
    grid = torch.cartesian_prod(axis, axis)  # (G, 2)
    z = grid[:, None, :].expand(-1, len(x), -1)  # (G, N, 2)
    with torch.no_grad():
        log_prior, log_lik = vae(x, z)
    cell = (axis[1] - axis[0]).item() ** 2
    return (log_prior + log_lik).logsumexp(0) + math.log(cell)


@pytest.mark.parametrize("estimator", ["ppl-vae", "per-point", "pyro"])
def test_every_timed_estimator_of_log_px_matches_quadrature(tiny_vae, estimator):
    vae, x = tiny_vae
    exact = quadrature_log_likelihood(vae, x)
    torch.manual_seed(1)
    estimate = {"ppl-vae": lambda: log_likelihood(vae, x, num_samples=20_000),
                "per-point": lambda: bench.per_point_log_likelihood(vae, x, 20_000),
                "pyro": lambda: bench.pyro_log_likelihood(vae, x, 20_000)}[estimator]()
    assert estimate.shape == exact.shape
    torch.testing.assert_close(estimate, exact, rtol=0, atol=0.025)


@pytest.mark.cuda
def test_log_likelihood_on_cuda_matches_quadrature(tiny_vae):
    vae, x = tiny_vae
    exact = quadrature_log_likelihood(vae, x)
    on_gpu = build_vae(Dims(data_dim=12, latent_dim=2, num_data=6), hidden=(8,)).to("cuda")
    on_gpu.load_state_dict(vae.state_dict())
    torch.manual_seed(1)
    estimate = log_likelihood(on_gpu, x.to("cuda"), num_samples=20_000)
    assert estimate.is_cuda
    torch.testing.assert_close(estimate.cpu(), exact, rtol=0, atol=0.025)


@pytest.mark.cuda
def test_bench_quick_runs_on_cuda(capsys):
    assert bench.main(["svi", "--quick", "--device", "cuda"]) == 0
    assert bench.main(["eval", "--quick", "--device", "cuda"]) == 0
    assert "device cuda" in capsys.readouterr().out


def test_bench_eval_parts_and_svi_quick_report_every_loop(capsys):
    rows = bench.bench_eval(quick("eval"))
    assert {row["num_samples"] for row in rows.values()} == {10, 100}
    ours = [row for label, row in rows.items() if "ppl-vae log_likelihood" in label]
    assert len(ours) == 2 and all(row["ratio"] == 1.0 for row in ours)  # against itself
    estimates = [row["mean_log_px"] for row in rows.values() if row["num_samples"] == 100]
    assert max(estimates) - min(estimates) < 1.0  # the same quantity, up to Monte Carlo
    rows = bench.bench_parts(quick("parts"))
    assert len(rows) == 5 and all(row["usual_us"] > 0 and row["ours_us"] > 0
                                  for row in rows.values())
    rows = bench.bench_svi(quick("svi"))
    assert len(rows) == 2 * (2 + len(bench.SVI_VARIANTS))
    assert all(row["steps_per_s"] > 0 for row in rows.values())
    assert "ratio" in capsys.readouterr().out


def test_bench_command_errors_are_one_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    assert cli_main(["bench", "svi", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: device 'cuda' was requested") and "\n" not in err
    # A usage error is one line too (argparse's own would print the usage and exit).
    assert cli_main(["bench", "nonsense"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: argument name: invalid choice: 'nonsense'") and "\n" not in err
