"""Benchmarks of ppl-vae against the alternatives a user would pick, one subcommand each.

    ppl-vae bench svi           # VAE training steps/s: the Pyro trainer vs plain PyTorch
    ppl-vae bench eval          # log p(x) by importance sampling: points x samples per second
    ppl-vae bench parts         # each part of a step the trainer speeds up, vs its usual form
    ppl-vae bench gmm           # EM: ours vs scikit-learn, time and log-likelihood
    ppl-vae bench gmm-memory    # peak memory added by fitting 2,000,000 x 8, K=16
    ppl-vae bench all           # every benchmark
    ppl-vae bench svi --quick   # tiny sizes (a smoke test)

(``python scripts/bench.py ...`` is the same command.) Each benchmark runs ours and the
alternative in one process, on the same data, after a warm-up, and prints medians and
their ratio. A benchmark is a function ``(args) -> dict`` registered in
:data:`BENCHMARKS` with :func:`benchmark`; it prints its table and returns its numbers
(``--json`` writes them).
"""

import functools
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np

from ppl_vae.commands.common import OneLineParser, add_shared_arguments, bounded_int

BENCHMARKS = {}


def benchmark(name, help):
    """Register ``function(args) -> dict`` as the subcommand ``name``."""

    def register(function):
        BENCHMARKS[name] = (function, help)
        return function

    return register


# ------------------------------------------------------------------------------ gmm

GMM_CASES = {
    # name: (covariance_type, n_samples, n_features, n_components)
    "full": ("full", 200_000, 16, 16),
    "diag": ("diag", 1_000_000, 64, 64),
}
GMM_QUICK = {"full": ("full", 2_000, 4, 3), "diag": ("diag", 3_000, 8, 4)}


def mixture_data(n, d, k, seed):
    """n points from a random K-component mixture in d dimensions, and a common start:
    K random data points as means, equal weights, the data's precision for every
    component."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(k, d))
    scales = rng.uniform(0.5, 1.5, size=(k, d))
    labels = rng.integers(k, size=n)
    X = centres[labels] + rng.standard_normal((n, d)) * scales[labels]
    means = X[rng.choice(n, size=k, replace=False)]
    return X, means


def start(X, means, cov_type):
    k, d = means.shape
    var = X.var(0)
    precisions = {"full": np.repeat(np.diag(1 / var)[None], k, 0),
                  "diag": np.repeat((1 / var)[None], k, 0)}[cov_type]
    return {"weights_init": np.full(k, 1 / k), "means_init": means,
            "precisions_init": precisions}


def _cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _timed(make, X, repeats):
    """Median wall and CPU seconds of ``make().fit(X)`` over ``repeats`` runs."""
    wall, cpu, model = [], [], None
    for _ in range(repeats):
        model = make()
        started, cpu_started = time.perf_counter(), _cpu_seconds()
        model.fit(X)
        wall.append(time.perf_counter() - started)
        cpu.append(_cpu_seconds() - cpu_started)
    return statistics.median(wall), statistics.median(cpu), model


@benchmark("gmm", "EM against scikit-learn's GaussianMixture: same data, start, iterations")
def bench_gmm(args):
    import torch
    from sklearn.mixture import GaussianMixture as SklearnGaussianMixture
    from threadpoolctl import threadpool_limits

    from ppl_vae.mixture import GaussianMixture

    cases = GMM_QUICK if args.quick else GMM_CASES
    iters = args.iters or (3 if args.quick else 10)
    repeats = args.repeats or (1 if args.quick else 3)
    torch.set_num_threads(args.threads)
    print(f"EM, {iters} iterations from the same start (tol=0), median of {repeats} after a "
          f"warm-up; {args.threads} thread(s) for torch and for numpy's BLAS; torch "
          f"{torch.__version__}, {os.cpu_count()} CPU cores, load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'case':<5}{'N':>10}{'d':>4}{'K':>4}  {'fit':<16}{'wall s':>8}{'CPU s':>8}"
          f"{'CPU ratio':>10}{'log-lik':>16}{'rel. diff':>10}")
    rows = {}
    for name, (cov_type, n, d, k) in cases.items():
        X, means = mixture_data(n, d, k, seed=args.seed)
        kw = dict(covariance_type=cov_type, max_iter=iters, tol=0.0, **start(X, means, cov_type))
        fits = {"scikit-learn": lambda kw=kw, k=k: SklearnGaussianMixture(k, **kw)}
        for dtype in args.dtypes.split(","):
            fits[f"ours ({dtype})"] = lambda kw=kw, k=k, dtype=dtype: GaussianMixture(
                k, device=args.device, dtype=dtype, **kw)
        timings = {}
        with warnings.catch_warnings(), threadpool_limits(limits=args.threads):
            warnings.simplefilter("ignore")
            for label, make in fits.items():
                # Warm-up: first calls pay for thread pools, allocator growth and imports.
                make().set_params(max_iter=1).fit(X)
                timings[label] = _timed(make, X, repeats)
        _, sk_cpu, sk_model = timings["scikit-learn"]
        for label, (wall, cpu, model) in timings.items():
            rel = abs(model.lower_bound_ - sk_model.lower_bound_) / abs(sk_model.lower_bound_)
            print(f"{name:<5}{n:>10,}{d:>4}{k:>4}  {label:<16}{wall:>8.2f}{cpu:>8.2f}"
                  f"{cpu / sk_cpu:>10.2f}{model.lower_bound_:>16.8f}{rel:>10.1e}")
            rows[f"{name} {label}"] = {
                "covariance_type": cov_type, "n_samples": n, "n_features": d,
                "n_components": k, "iterations": iters, "threads": args.threads,
                "wall_s": wall, "cpu_s": cpu, "cpu_ratio": cpu / sk_cpu,
                "lower_bound": model.lower_bound_,
                "sklearn_lower_bound": sk_model.lower_bound_}
    print("(CPU ratio: CPU time / scikit-learn's; log-lik: lower_bound_, the mean "
          "log-likelihood per sample in nats at the last iteration; rel. diff: against "
          "scikit-learn's)")
    return rows


# ------------------------------------------------------------------------------ memory

MEMORY_CHILD = textwrap.dedent("""
    import json, resource, sys, warnings
    import numpy as np, torch
    from threadpoolctl import threadpool_limits
    n, d, k, iters, threads = (int(a) for a in sys.argv[1:6])
    which, init = sys.argv[6:8]

    def status(field):  # bytes, from /proc/self/status (VmRSS: now, VmHWM: peak)
        with open("/proc/self/status") as f:
            line = next(l for l in f if l.startswith(field + ":"))
        return int(line.split()[1]) * 1024

    def reset_peak():  # Linux: make the peak (VmHWM) equal to the current resident size
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return "VmHWM reset before fit"
        except OSError:
            return "ru_maxrss (not reset; an earlier peak may hide part of the fit's)"

    torch.set_num_threads(threads)
    if which == "ours":
        from ppl_vae.mixture import GaussianMixture as Model
        kw, dtype = dict(device="cpu"), np.float32
    else:
        from sklearn.mixture import GaussianMixture as Model
        kw, dtype = {}, np.float64
    warnings.simplefilter("ignore")
    rng = np.random.default_rng(0)
    with threadpool_limits(limits=threads):
        # Warm-up on small data: thread pools and library buffers belong to the baseline.
        Model(k, max_iter=2, random_state=0, **kw).fit(rng.normal(size=(5000, d)))
        # The data, filled in blocks so that making it never needs more than its own size.
        X = np.empty((n, d), dtype=dtype)
        centres = rng.normal(scale=4.0, size=(k, d))
        for s in range(0, n, 100_000):
            block = X[s:s + 100_000]
            block[:] = centres[rng.integers(k, size=len(block))] + rng.standard_normal(
                block.shape)
        how = reset_peak()
        before = status("VmRSS")
        Model(k, max_iter=iters, tol=0, random_state=0, init_params=init, **kw).fit(X)
        peak = (status("VmHWM") if how.startswith("VmHWM")
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    print(json.dumps({"data_bytes": X.nbytes, "added_peak_bytes": peak - before, "how": how}))
""")


def measure_memory(which, n, d, k, iters, threads=1, init_params="kmeans"):
    """Peak resident memory that one fit adds, measured in a fresh process.

    Returns a dict with ``data_bytes``, ``added_peak_bytes`` and ``how`` it was measured.
    """
    out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(n), str(d), str(k),
                          str(iters), str(threads), which, init_params],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"the memory measurement for {which} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


@benchmark("gmm-memory", "peak memory added by an EM fit, against the size of the data")
def bench_gmm_memory(args):
    n, d, k = (200_000, 8, 16) if args.quick else (2_000_000, 8, 16)
    iters = 3 if args.quick else 10
    print(f"peak resident memory added by fit() on {n:,} x {d} data, K={k}, {iters} "
          "iterations, default k-means start\n(a fresh process per library, after a warm-up "
          "fit: the peak resident size during fit minus the resident size before it)")
    rows = {}
    for which, label in (("ours", "ours (float32 data)"), ("sklearn", "sklearn (float64)")):
        if which == "sklearn" and args.skip_sklearn_memory:
            continue
        row = measure_memory(which, n, d, k, iters, args.threads)
        share = row["added_peak_bytes"] / row["data_bytes"]
        print(f"{label:<22} data {row['data_bytes'] / 2**20:8.1f} MiB   added peak "
              f"{row['added_peak_bytes'] / 2**20:8.1f} MiB   ({share:.2f} x the data; "
              f"{row['how']})")
        rows[which] = row
    return rows


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


def _interleaved(loops, repeats, work):
    """Run each loop once per round, ``repeats + 1`` rounds (the first a warm-up); returns
    per-loop lists of ``work / seconds``. Interleaving puts every loop under the same load."""
    rates = {label: [] for label in loops}
    for repeat in range(repeats + 1):
        for label, loop in loops.items():
            started = time.perf_counter()
            loop()
            if repeat:
                rates[label].append(work / (time.perf_counter() - started))
    return rates


def _paired_ratio(rates, label, reference):
    """The median, first and third quartiles over rounds of the rate of ``label`` over the
    reference's in the same round: a slow spell of the machine cancels in each pair."""
    pairs = [a / b for a, b in zip(rates[label], rates[reference], strict=True)]
    if len(pairs) < 2:
        return pairs[0], pairs[0], pairs[0]
    q1, median, q3 = statistics.quantiles(pairs, n=4)
    return median, q1, q3


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


# ------------------------------------------------------------------------------ command


def build_parser(prog=None):
    parser = OneLineParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=[*BENCHMARKS, "all"], help="benchmark to run")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--iters", type=int, help="EM iterations (gmm; default 10)")
    parser.add_argument("--repeats", type=int,
                        help="timed rounds, median reported (default: 15 for svi and parts, 5 for "
                             "eval, 3 for gmm)")
    add_shared_arguments(parser, quiet=False)
    parser.add_argument("--dtypes", default="float32,float64",
                        help="compute dtypes of ours to time (default: float32,float64)")
    parser.add_argument("--threads", type=bounded_int(1), default=1,
                        help="threads for torch and for numpy's BLAS (default: 1; the same "
                             "for both libraries)")
    parser.add_argument("--skip-sklearn-memory", action="store_true",
                        help="gmm-memory: measure ours only")
    parser.add_argument("--json", help="also write the numbers to this JSON file")
    return parser


def main(argv=None, prog=None):
    from ppl_vae.device import resolve_device

    args = build_parser(prog).parse_args(argv)
    args.device = str(resolve_device(args.device))  # one line, not a traceback, if absent
    names = list(BENCHMARKS) if args.name == "all" else [args.name]
    results = {}
    for name in names:
        print(f"== {name}: {BENCHMARKS[name][1]}")
        results[name] = BENCHMARKS[name][0](args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


