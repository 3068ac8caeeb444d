"""Benchmarks of the VAE: training steps, the parts of a step, and log p(x)."""

import functools
import math
import os
import statistics
import warnings

import numpy as np

from ppl_vae.commands.bench._core import (
    _interleaved,
    _paired_ratio,
    benchmark,
)

# ------------------------------------------------------------------------------ svi

# (objective, jit): the trainer's variants timed against the plain loop.
SVI_VARIANTS = (("meanfield", False), ("elbo", False), ("meanfield", True), ("elbo", True))


def plain_torch_loss(encoder, decoder, x, num_data, min_scale):
    """The negative ELBO of a batch as a user writes it by hand, scaled to ``num_data``
    points: a reparameterised sample, binary cross-entropy and the analytic KL against
    N(0, I). The same value as the trainer's ``meanfield`` objective."""
    import torch
    from torch.nn.functional import binary_cross_entropy_with_logits, softplus

    loc, rho = encoder(x).chunk(2, dim=-1)
    scale = softplus(rho) + min_scale
    z = loc + scale * torch.randn_like(loc)
    nll = binary_cross_entropy_with_logits(decoder(z), x, reduction="sum")
    kl = 0.5 * (scale**2 + loc**2 - 1 - 2 * torch.log(scale)).sum()
    return (nll + kl) * (num_data / x.shape[0])


def plain_torch_epoch(encoder, decoder, optimizer, x, batch_size, min_scale, draw=None):
    """The loop a user would write by hand: shuffle, binarise, :func:`plain_torch_loss`,
    Adam; one host sync per epoch.

    ``draw`` binarises a batch: the trainer's :func:`ppl_vae.data.binarize` by default,
    ``torch.bernoulli`` for the loop as most users write it.
    """
    import torch

    from ppl_vae.data import binarize

    draw = draw or binarize
    n = x.shape[0]
    order = torch.randperm(n, device=x.device)
    total = torch.zeros((), device=x.device)
    for start in range(0, n, batch_size):
        loss = plain_torch_loss(encoder, decoder, draw(x[order[start : start + batch_size]]),
                                n, min_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach()
    return total.item()






@benchmark("svi", "VAE training steps per second: the Pyro trainer against a plain PyTorch loop")
def bench_svi(args):
    import copy
    import tempfile
    from pathlib import Path

    import torch

    from ppl_vae.build import build
    from ppl_vae.config import load_config
    from ppl_vae.inference.loop import adam

    torch.set_num_threads(args.threads)
    batch_sizes = (64, 256) if args.quick else (128, 1024)
    steps = 4 if args.quick else 30
    repeats = args.repeats or (1 if args.quick else 15)
    d = 64 if args.quick else 784
    print(f"steps per second of one epoch of {steps} steps, median of {repeats} after a "
          f"warm-up epoch, interleaved; MNIST-sized synthetic data (D={d}), MLP 256-256, "
          f"latent 16, Adam(1e-3), dynamic binarisation; {args.threads} thread(s), device "
          f"{args.device}; torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}")
    print(f"{'batch':>6}  {'loop':<48}{'steps/s':>9}{'ratio':>8}{'quartiles':>14}")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for batch_size in batch_sizes:
            n = steps * batch_size
            gen = torch.Generator().manual_seed(args.seed)
            path = Path(tmp) / f"data{batch_size}.npz"
            np.savez(path, x_train=torch.rand(n, d, generator=gen).numpy(),
                     x_test=torch.rand(256, d, generator=gen).numpy())
            trainers = []
            for objective, jit in SVI_VARIANTS:
                config = load_config("vae", {
                    "data.dataset": str(path), "model.latent_dim": 16,
                    "train.batch_size": batch_size, "train.objective": objective,
                    "train.jit": jit, "train.device": args.device})
                trainers.append(build(config, progress=False).trainer)
            reference = trainers[0]
            x, min_scale = reference.data.x_train, reference.program.posterior.min_scale
            loops = {}
            # The same networks and optimizer as the trainer's (fused Adam, fast
            # binarisation), and the loop as most users write it (default Adam,
            # torch.bernoulli): the first ratio is Pyro's cost, the second what a user gains.
            for label, make_optimizer, draw in (
                    ("plain PyTorch", adam, None),
                    ("plain PyTorch (Adam(), torch.bernoulli)",
                     lambda params, lr: torch.optim.Adam(params, lr=lr), torch.bernoulli)):
                encoder = copy.deepcopy(reference.program.posterior.encoder)
                decoder = copy.deepcopy(reference.program.decoder)
                optimizer = make_optimizer([*encoder.parameters(), *decoder.parameters()],
                                           lr=1e-3)
                loops[label] = functools.partial(plain_torch_epoch, encoder, decoder,
                                                 optimizer, x, batch_size, min_scale, draw)
            for trainer in trainers:
                trainer.compile()  # as Trainer.run does before the first epoch
                loops[f"ppl-vae Trainer ({type(trainer.objective).__name__})"] = \
                    trainer.train_epoch
            rates = _interleaved(loops, repeats, steps)
            for label, values in rates.items():
                rate = statistics.median(values)
                ratio, q1, q3 = _paired_ratio(rates, label, "plain PyTorch")
                print(f"{batch_size:>6}  {label:<48}{rate:>9.1f}{ratio:>8.3f}"
                      f"{f'{q1:.3f}-{q3:.3f}':>14}")
                rows[f"{batch_size} {label}"] = {
                    "batch_size": batch_size, "steps_per_s": rate, "ratio": ratio,
                    "ratio_quartiles": [q1, q3], "threads": args.threads}
    print("(ratio: the median over rounds of steps per second over the plain PyTorch loop's "
          "in the same round, with its quartiles; >= 1 is as fast)")
    return rows


# ------------------------------------------------------------------------------ parts


def _parts(device, quick, seed=0):
    """(name, the usual form, ours) for each part of a training step the trainer makes
    faster; both forms compute the same thing (the tests check each pair)."""
    import pyro.distributions as dist
    import torch
    from torch.distributions import kl_divergence

    from ppl_vae.build import make_objective
    from ppl_vae.data import binarize
    from ppl_vae.inference.loop import adam
    from ppl_vae.parts.likelihoods import IndependentBernoulli
    from ppl_vae.parts.priors import UnitNormal
    from ppl_vae.vae import Dims, build_vae

    b, d, latent = (16, 64, 4) if quick else (128, 784, 16)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(b, d, generator=gen).to(device)
    vae = build_vae(Dims(data_dim=d, latent_dim=latent, num_data=30 * b), hidden=(256, 256))
    vae.to(device)

    def adam_step(optimizer):
        def step():
            for p in vae.parameters():
                p.grad = torch.ones_like(p)
            optimizer.step()
        return step

    loc = torch.randn(b, latent, device=device, requires_grad=True)
    scale = torch.rand(b, latent, device=device).add(0.1).requires_grad_()
    zeros, ones = torch.zeros(latent, device=device), torch.ones(latent, device=device)

    def kl(prior_type):
        def call():
            q = dist.Normal(loc, scale).to_event(1)
            prior = prior_type(zeros, ones).to_event(1).expand((b,))
            kl_divergence(q, prior).sum().backward()
        return call

    logits = torch.randn(b, d, device=device, requires_grad=True)
    target = binarize(x)

    def bernoulli(make):
        return lambda: make(logits).log_prob(target).sum().backward()

    idx = torch.arange(b, device=device)
    objective = make_objective("meanfield", jit=True)

    def model(x, idx, batch_size):
        return vae.model(x, None, idx)

    def guide(x, idx, batch_size):
        return vae.guide(x, None, idx)

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`torch.jit.trace` is deprecated", DeprecationWarning)
        objective.differentiable_loss(model, guide, x, idx, batch_size=b)  # compiles
    return [
        (f"binarise {b} x {d}", lambda: torch.bernoulli(x), lambda: binarize(x)),
        (f"Adam step, MLP {d}-256-256-{latent}",
         adam_step(torch.optim.Adam(vae.parameters(), lr=1e-3)),
         adam_step(adam(vae.parameters(), lr=1e-3))),
        (f"KL(q || N(0, I)) + gradient, {b} x {latent}", kl(dist.Normal), kl(UnitNormal)),
        (f"Bernoulli log p(x | z) + gradient, {b} x {d}",
         bernoulli(lambda out: dist.Bernoulli(logits=out).to_event(1)),
         bernoulli(lambda out: IndependentBernoulli(dist.Bernoulli(logits=out), 1))),
        (f"compiled ELBO call (Pyro's wrapper vs direct), batch {b}",
         lambda: objective._compiled_loss(model, guide, x, idx, batch_size=b),
         lambda: objective.differentiable_loss(model, guide, x, idx, batch_size=b)),
    ]


@benchmark("parts", "each part of a training step the trainer speeds up, against its usual form")
def bench_parts(args):
    import torch

    torch.set_num_threads(args.threads)
    calls = 5 if args.quick else 200
    repeats = args.repeats or (1 if args.quick else 15)
    print(f"microseconds per call, median of {repeats} rounds of {calls} calls after a warm-up, "
          f"interleaved; {args.threads} thread(s), device {args.device}; torch "
          f"{torch.__version__}, load average {os.getloadavg()[0]:.1f}")
    print(f"{'part':<58}{'usual us':>10}{'ours us':>10}{'speed-up':>10}{'quartiles':>14}")
    rows = {}
    for name, usual, ours in _parts(args.device, args.quick, args.seed):
        loops = {"usual": lambda f=usual: [f() for _ in range(calls)],
                 "ours": lambda f=ours: [f() for _ in range(calls)]}
        rates = _interleaved(loops, repeats, calls)
        speedup, q1, q3 = _paired_ratio(rates, "ours", "usual")
        usual_us, ours_us = (1e6 / statistics.median(rates[k]) for k in ("usual", "ours"))
        print(f"{name:<58}{usual_us:>10.1f}{ours_us:>10.1f}{speedup:>10.2f}"
              f"{f'{q1:.2f}-{q3:.2f}':>14}")
        rows[name] = {"usual_us": usual_us, "ours_us": ours_us, "speedup": speedup,
                      "speedup_quartiles": [q1, q3], "threads": args.threads}
    print("(speed-up: calls per second of ours over the usual form's in the same round)")
    return rows


# ------------------------------------------------------------------------------ eval


def per_point_log_likelihood(vae, x, num_samples):
    """log p(x) by importance sampling as it is usually written by hand: one data point at
    a time, its K samples in one batch."""
    import torch

    out = torch.empty(len(x), device=x.device)
    with torch.no_grad():
        for i in range(len(x)):
            xi = x[i : i + 1]
            q = vae.encode(xi)
            z = q.sample((num_samples,))
            log_prior, log_lik = vae(xi, z)
            out[i] = (log_prior + log_lik - q.log_prob(z)).logsumexp(0).squeeze(0)
    return out - math.log(num_samples)


def pyro_log_likelihood(vae, x, num_samples):
    """log p(x) with Pyro's ``vectorized_importance_weights``: the model and guide run with
    the K samples as a vectorized plate, one data point at a time (the weights it returns
    are of the whole trace, so a batch would give the joint weight of its points)."""
    import torch
    from pyro.infer.importance import vectorized_importance_weights

    out = torch.empty(len(x), device=x.device)
    with torch.no_grad():
        for i in range(len(x)):
            log_weights, _, _ = vectorized_importance_weights(
                vae.model, vae.guide, x[i : i + 1], num_samples=num_samples,
                max_plate_nesting=1)
            out[i] = log_weights.logsumexp(0)
    return out - math.log(num_samples)


@benchmark("eval", "importance-sampled log p(x): points x samples per second")
def bench_eval(args):
    import torch

    from ppl_vae.evaluation.likelihood import log_likelihood
    from ppl_vae.vae import Dims, build_vae

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    d, n, sample_counts = (64, 16, (10, 100)) if args.quick else (784, 128, (100, 1000, 5000))
    repeats = args.repeats or (1 if args.quick else 5)
    torch.manual_seed(args.seed)
    vae = build_vae(Dims(data_dim=d, latent_dim=16, num_data=n), hidden=(256, 256)).to(device)
    vae.eval()
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.bernoulli(torch.rand(n, d, generator=gen)).to(device)
    print(f"log p(x) of {n} points (D={d}, an untrained VAE with the default MLP 256-256, "
          f"latent 16), K importance samples each; median of {repeats} after a warm-up, "
          f"interleaved; {args.threads} thread(s), device {device}; torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'K':>6}  {'estimator':<46}{'samples/s':>12}{'ratio':>8}{'quartiles':>14}"
          f"{'mean log p(x)':>15}")
    estimators = {
        "ppl-vae log_likelihood (batched, chunked)": lambda k: log_likelihood(
            vae, x, num_samples=k),
        "ppl-vae, 32,768-row chunks (a GPU's size)": lambda k: log_likelihood(
            vae, x, num_samples=k, max_rows=2**15),
        "per-point loop (hand-written)": lambda k: per_point_log_likelihood(vae, x, k),
        "Pyro vectorized_importance_weights": lambda k: pyro_log_likelihood(vae, x, k),
    }
    ours = next(iter(estimators))
    rows = {}
    for k in sample_counts:
        estimates = {}

        def keep(label, estimate, k=k, estimates=estimates):
            return lambda: estimates.__setitem__(label, estimate(k).mean().item())

        loops = {label: keep(label, estimate) for label, estimate in estimators.items()}
        rates = _interleaved(loops, repeats, n * k)
        for label, values in rates.items():
            rate = statistics.median(values)
            ratio, q1, q3 = _paired_ratio(rates, label, ours)
            print(f"{k:>6}  {label:<46}{rate:>12,.0f}{ratio:>8.3f}{f'{q1:.3f}-{q3:.3f}':>14}"
                  f"{estimates[label]:>15.3f}")
            rows[f"{k} {label}"] = {"num_samples": k, "num_points": n,
                                    "samples_per_s": rate, "ratio": ratio,
                                    "ratio_quartiles": [q1, q3],
                                    "mean_log_px": estimates[label], "threads": args.threads}
    print("(samples/s: points x importance samples per second; ratio: over ppl-vae's in the "
          "same round, < 1 is slower; mean log p(x): nats per point, the same estimator, "
          "so equal up to Monte Carlo error)")
    return rows

