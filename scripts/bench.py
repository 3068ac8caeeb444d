"""Benchmarks of ppl-vae against reference implementations, one subcommand each.

    python scripts/bench.py gmm           # EM: ours vs scikit-learn, time and log-likelihood
    python scripts/bench.py gmm-memory    # peak memory added by fitting 2,000,000 x 8, K=16
    python scripts/bench.py all           # every registered benchmark
    python scripts/bench.py gmm --quick   # tiny sizes (a smoke test)

A benchmark is a function ``(args) -> dict`` registered in :data:`BENCHMARKS` with
:func:`benchmark`; it prints its table and returns its numbers (``--json`` writes them).
"""

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np

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
        X, means = mixture_data(n, d, k, seed=0)
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


def plain_torch_epoch(encoder, decoder, optimizer, x, batch_size, min_scale):
    """The loop a user would write by hand: shuffle, binarise, reparameterised sample,
    binary cross-entropy plus the analytic KL, Adam; one host sync per epoch."""
    import torch
    from torch.nn.functional import binary_cross_entropy_with_logits, softplus

    n = x.shape[0]
    order = torch.randperm(n, device=x.device)
    total = torch.zeros((), device=x.device)
    for start in range(0, n, batch_size):
        xb = torch.bernoulli(x[order[start : start + batch_size]])
        loc, rho = encoder(xb).chunk(2, dim=-1)
        scale = softplus(rho) + min_scale
        z = loc + scale * torch.randn_like(loc)
        nll = binary_cross_entropy_with_logits(decoder(z), xb, reduction="sum")
        kl = 0.5 * (scale**2 + loc**2 - 1 - 2 * torch.log(scale)).sum()
        loss = (nll + kl) * (n / xb.shape[0])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach()
    return float(total)


@benchmark("svi", "VAE training steps per second: the Pyro trainer against a plain PyTorch loop")
def bench_svi(args):
    import copy
    import tempfile
    from pathlib import Path

    import torch

    from ppl_vae.config import load_config
    from ppl_vae.train import Trainer

    torch.set_num_threads(args.threads)
    batch_sizes = (64, 256) if args.quick else (128, 1024)
    steps = 4 if args.quick else 30
    repeats = args.repeats or (1 if args.quick else 5)
    d = 64 if args.quick else 784
    print(f"steps per second of one epoch of {steps} steps, median of {repeats} after a "
          f"warm-up epoch, interleaved; MNIST-sized synthetic data (D={d}), MLP 256-256, "
          f"latent 16, Adam(1e-3), dynamic binarisation; {args.threads} thread(s), device "
          f"{args.device}; torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}")
    print(f"{'batch':>6}  {'loop':<40}{'steps/s':>9}{'ratio':>8}")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for batch_size in batch_sizes:
            n = steps * batch_size
            gen = torch.Generator().manual_seed(0)
            path = Path(tmp) / f"data{batch_size}.npz"
            np.savez(path, x_train=torch.rand(n, d, generator=gen).numpy(),
                     x_test=torch.rand(256, d, generator=gen).numpy())
            trainers = []
            for objective, jit in SVI_VARIANTS:
                config = load_config("vae", {
                    "data.dataset": str(path), "model.latent_dim": 16,
                    "train.batch_size": batch_size, "train.objective": objective,
                    "train.jit": jit, "train.device": args.device})
                trainers.append(Trainer(config, Path(tmp) / objective, progress=False))
            reference = trainers[0]
            encoder = copy.deepcopy(reference.vae.posterior.encoder)
            decoder = copy.deepcopy(reference.vae.decoder)
            optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=1e-3)
            min_scale = reference.vae.posterior.min_scale
            x = reference.x_train
            loops = {"plain PyTorch": functools.partial(
                plain_torch_epoch, encoder, decoder, optimizer, x, batch_size, min_scale)}
            for trainer in trainers:
                name = type(trainer.objective).__name__
                loops[f"ppl-vae Trainer ({name})"] = trainer.train_epoch
            rates = {label: [] for label in loops}
            for repeat in range(repeats + 1):
                for label, epoch in loops.items():
                    started = time.perf_counter()
                    epoch()
                    if repeat:  # the first round is the warm-up
                        rates[label].append(steps / (time.perf_counter() - started))
            plain = statistics.median(rates["plain PyTorch"])
            for label, values in rates.items():
                rate = statistics.median(values)
                print(f"{batch_size:>6}  {label:<40}{rate:>9.1f}{rate / plain:>8.3f}")
                rows[f"{batch_size} {label}"] = {"batch_size": batch_size, "steps_per_s": rate,
                                                 "ratio": rate / plain,
                                                 "threads": args.threads}
    print("(ratio: steps per second over the plain PyTorch loop's; >= 1 is as fast)")
    return rows


# ------------------------------------------------------------------------------ command


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=[*BENCHMARKS, "all"], help="benchmark to run")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--iters", type=int, help="EM iterations (gmm; default 10)")
    parser.add_argument("--repeats", type=int, help="timed repeats, median reported (default 3)")
    parser.add_argument("--device", default="cpu", help="device for ours (default: cpu)")
    parser.add_argument("--dtypes", default="float32,float64",
                        help="compute dtypes of ours to time (default: float32,float64)")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads for torch and for numpy's BLAS (default: 1; the same "
                             "for both libraries)")
    parser.add_argument("--skip-sklearn-memory", action="store_true",
                        help="gmm-memory: measure ours only")
    parser.add_argument("--json", help="also write the numbers to this JSON file")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    names = list(BENCHMARKS) if args.name == "all" else [args.name]
    results = {}
    for name in names:
        print(f"== {name}: {BENCHMARKS[name][1]}")
        results[name] = BENCHMARKS[name][0](args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
