"""Benchmarks of the mixtures: EM against scikit-learn, time and peak memory."""

import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np

from ppl_vae.commands.bench._core import _cpu_seconds, benchmark

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

