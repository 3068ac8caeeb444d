"""ppl_vae.commands.bench (``ppl-vae bench``, ``scripts/bench.py``): the alternatives it times
compute what they claim, and the quick modes run. Nothing here times anything."""

import inspect
import math

import numpy as np
import pytest
import torch

from ppl_vae.build import build, make_objective
from ppl_vae.commands import bench
from ppl_vae.commands import main as cli_main
from ppl_vae.config import load_config
from ppl_vae.evaluation.likelihood import log_likelihood
from ppl_vae.vae import Dims, build_vae


def quick(name, *extra):
    # The benchmarks take a resolved device, as main hands them; "auto" is the flag's default.
    return bench.build_parser().parse_args([name, "--quick", "--device", "cpu", *extra])


@pytest.mark.slow
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


def svi_trainers(tmp_path, batch_size=16, d=12):
    """The trainers bench_svi times, built as it builds them (quick sizes)."""
    gen = torch.Generator().manual_seed(0)
    path = tmp_path / "data.npz"
    np.savez(path, x_train=torch.rand(4 * batch_size, d, generator=gen).numpy(),
             x_test=torch.rand(8, d, generator=gen).numpy())
    trainers = []
    for objective, jit in bench.SVI_VARIANTS:
        config = load_config("vae", {
            "data.dataset": str(path), "model.latent_dim": 3, "model.hidden": [8],
            "train.batch_size": batch_size, "train.objective": objective, "train.jit": jit,
            "train.device": "cpu"})
        trainers.append(build(config, progress=False).trainer)
    return trainers


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:DeprecationWarning")
def test_every_timed_svi_loop_computes_the_plain_loops_loss_at_the_same_parameters(tmp_path):
    """Each trainer bench_svi times starts from the plain loop's parameters, and at the same
    noise its loss is the plain loop's: exactly for meanfield (analytic KL), and with the
    KL's one-sample estimate log q(z) - log p(z) for elbo, both by hand."""
    trainers = svi_trainers(tmp_path)
    reference = trainers[0].program
    encoder, decoder = reference.posterior.encoder, reference.decoder
    idx = torch.arange(16)
    x = torch.bernoulli(trainers[0].data.x_train[idx],
                        generator=torch.Generator().manual_seed(1))
    n, min_scale = trainers[0].data.x_train.shape[0], reference.posterior.min_scale
    for (objective, jit), trainer in zip(bench.SVI_VARIANTS, trainers, strict=True):
        for key, value in reference.state_dict().items():
            torch.testing.assert_close(trainer.program.state_dict()[key], value)
        trainer.compile()
        torch.manual_seed(5)
        ours = trainer.loss(x, None, idx)
        torch.manual_seed(5)
        plain = bench.plain_torch_loss(encoder, decoder, x, n, min_scale)
        if objective == "elbo":
            plain = plain + n / len(x) * (one_sample_kl(encoder, x, min_scale, seed=5)
                                          - analytic_kl(encoder, x, min_scale))
        torch.testing.assert_close(ours, plain, rtol=1e-5, atol=1e-2,
                                   msg=lambda m, o=objective, j=jit: f"{o} jit={j}: {m}")


def analytic_kl(encoder, x, min_scale):
    loc, rho = encoder(x).chunk(2, dim=-1)
    scale = torch.nn.functional.softplus(rho) + min_scale
    return 0.5 * (scale**2 + loc**2 - 1 - 2 * scale.log()).sum()


def one_sample_kl(encoder, x, min_scale, seed):
    """log q(z) - log p(z) summed over the batch at the z the seed draws, by hand."""
    loc, rho = encoder(x).chunk(2, dim=-1)
    scale = torch.nn.functional.softplus(rho) + min_scale
    torch.manual_seed(seed)
    eps = torch.randn_like(loc)
    z = loc + scale * eps
    return (-0.5 * eps**2 - scale.log() + 0.5 * z**2).sum()


def test_each_timed_pair_of_parts_computes_the_same_thing():
    """bench parts times a usual form against ours: each pair gives the same draws, the
    same updated parameters, the same gradients or the same loss."""
    parts = bench.vae._parts("cpu", quick=True)
    (_, usual, ours) = parts[0]  # binarise: the same draws from the same seed
    torch.manual_seed(2)
    first = usual()
    torch.manual_seed(2)
    assert torch.equal(ours(), first) and 0 < first.mean() < 1
    (_, usual, ours) = parts[1]  # Adam: the same step from the same state
    vae = inspect.getclosurevars(usual).nonlocals["vae"]
    start = {k: v.detach().clone() for k, v in vae.named_parameters()}
    usual()
    after = {k: v.detach().clone() for k, v in vae.named_parameters()}
    vae.load_state_dict(start, strict=False)
    ours()
    for key, value in vae.named_parameters():
        torch.testing.assert_close(value, after[key])
        assert not torch.equal(value, start[key])
    for (_, usual, ours), leaves in zip(parts[2:4], (("loc", "scale"), ("logits",)),
                                        strict=True):  # KL, Bernoulli: the same gradients
        tensors = [inspect.getclosurevars(usual).nonlocals[name] for name in leaves]
        grads = []
        for call in (usual, ours):
            for t in tensors:
                t.grad = None
            call()
            grads.append([t.grad.clone() for t in tensors])
        for a, b in zip(*grads, strict=True):
            torch.testing.assert_close(a, b)
            assert a.abs().sum() > 0
    (_, usual, ours) = parts[4]  # the compiled ELBO, through Pyro's wrapper or directly
    torch.manual_seed(3)
    first = usual()
    torch.manual_seed(3)
    torch.testing.assert_close(ours(), first)


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
