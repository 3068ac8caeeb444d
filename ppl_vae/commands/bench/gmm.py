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
    cov: (cov, 200_000, 16, 16) for cov in ("full", "tied", "diag", "spherical")
}
GMM_QUICK = {cov: (cov, 2_000, 4, 3) for cov in ("full", "diag")}
# pomegranate 1.x's names for the covariance types it has (no tied).
POMEGRANATE_TYPES = {"full": "full", "diag": "diag", "spherical": "sphere"}
# Streaming rows reach this fraction of the batch method's final objective.
TARGET = 0.999


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
                  "tied": np.diag(1 / var),
                  "diag": np.repeat((1 / var)[None], k, 0),
                  "spherical": np.full(k, 1 / var.mean())}[cov_type]
    return {"weights_init": np.full(k, 1 / k), "means_init": means,
            "precisions_init": precisions}


def rss_anon():
    """This process's anonymous resident memory in bytes (Linux /proc/self/status)."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("RssAnon:"))
    return int(line.split()[1]) * 1024


class PeakRssAnon:
    """Samples ``RssAnon`` in a thread every ``interval`` seconds while in the block;
    ``added`` is then the peak minus the value on entry (bytes)."""

    def __init__(self, interval=0.005):
        self.interval, self.peak, self.before = interval, 0, 0

    def __enter__(self):
        import threading

        self.before = self.peak = rss_anon()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_anon())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_anon())

    @property
    def added(self):
        return self.peak - self.before


def pomegranate_version():
    """pomegranate's version, or None when it is not installed (it is optional: the
    ``[bench]`` extra)."""
    try:
        import pomegranate
    except ImportError:
        return None
    return pomegranate.__version__


class PomegranateFit:
    """pomegranate 1.x's GeneralMixtureModel from our start, with our fit/score names."""

    def __init__(self, cov_type, iters, weights_init, means_init, precisions_init):
        self.cov_type, self.iters = POMEGRANATE_TYPES[cov_type], iters
        covs = 1.0 / precisions_init if cov_type != "full" else np.linalg.inv(precisions_init)
        self.start = (weights_init, means_init, covs)

    def fit(self, X):
        import torch
        from pomegranate.distributions import Normal
        from pomegranate.gmm import GeneralMixtureModel

        weights, means, covs = (torch.as_tensor(a, dtype=torch.float32) for a in self.start)
        if self.cov_type == "sphere":
            # pomegranate checks that a spherical variance has the means' shape.
            covs = covs[:, None].expand(-1, means.shape[1]).contiguous()
        parts = [Normal(means=m, covs=c, covariance_type=self.cov_type)
                 for m, c in zip(means, covs, strict=True)]
        # tol=-inf: exactly `iters` iterations, like tol=0 in the others.
        self.model = GeneralMixtureModel(parts, priors=weights, max_iter=self.iters,
                                         tol=-np.inf).fit(torch.as_tensor(X, dtype=torch.float32))
        return self

    def score(self, X):
        import torch

        return float(self.model.log_probability(torch.as_tensor(X, dtype=torch.float32))
                     .double().mean())


def _timed(make, X, repeats):
    """Median wall and CPU seconds of ``make().fit(X)`` over ``repeats`` runs, and the
    peak anonymous memory added during the last one."""
    wall, cpu, model = [], [], None
    for _ in range(repeats):
        model = make()
        with PeakRssAnon() as memory:
            started, cpu_started = time.perf_counter(), _cpu_seconds()
            model.fit(X)
            wall.append(time.perf_counter() - started)
            cpu.append(_cpu_seconds() - cpu_started)
    return statistics.median(wall), statistics.median(cpu), model, memory.added


def _peer_fits(args, cov_type, k, kw):
    from sklearn.mixture import GaussianMixture as SklearnGaussianMixture

    from ppl_vae.mixture import GaussianMixture

    fits = {"scikit-learn": lambda: SklearnGaussianMixture(k, **kw)}
    if pomegranate_version() and cov_type in POMEGRANATE_TYPES:
        start_kw = {name: kw[name] for name in ("weights_init", "means_init",
                                                "precisions_init")}
        fits["pomegranate"] = lambda: PomegranateFit(cov_type, kw["max_iter"], **start_kw)
    for dtype in args.dtypes.split(","):
        fits[f"ours ({dtype})"] = lambda dtype=dtype: GaussianMixture(
            k, device=args.device, dtype=dtype, **kw)
    return fits


def _log_likelihood(model, X):
    # scikit-learn's and ours' lower_bound_ is that of the start of the last iteration;
    # the final model's mean log-likelihood is the same number for every library.
    return model.score(X)


@benchmark("gmm", "EM: ours against scikit-learn and pomegranate (same data, start, "
                  "iterations), and streaming EM and SVI against batch EM and CAVI")
def bench_gmm(args):
    import torch
    from threadpoolctl import threadpool_limits

    cases = GMM_QUICK if args.quick else GMM_CASES
    iters = args.iters or (3 if args.quick else 10)
    repeats = args.repeats or (1 if args.quick else 3)
    torch.set_num_threads(args.threads)
    import sklearn

    pom = pomegranate_version()
    print(f"EM, {iters} iterations from the same start (tol=0), median of {repeats} after a "
          f"warm-up; {args.threads} thread(s) for torch and for numpy's BLAS; torch "
          f"{torch.__version__}, scikit-learn {sklearn.__version__}, pomegranate "
          f"{pom or 'not installed (pip install ppl-vae[bench])'}; PyCave: not run (it "
          f"needs torch<2 and pytorch-lightning<1.5); {os.cpu_count()} CPU cores, load "
          f"average {os.getloadavg()[0]:.1f}")
    print(f"{'case':<10}{'N':>9}{'d':>4}{'K':>4}  {'fit':<16}{'wall s':>8}{'CPU s':>8}"
          f"{'CPU ratio':>10}{'log-lik':>14}{'rel. diff':>10}{'peak MiB':>9}")
    rows = {}
    for name, (cov_type, n, d, k) in cases.items():
        X, means = mixture_data(n, d, k, seed=args.seed)
        kw = dict(covariance_type=cov_type, max_iter=iters, tol=0.0, **start(X, means, cov_type))
        timings = {}
        with warnings.catch_warnings(), threadpool_limits(limits=args.threads):
            warnings.simplefilter("ignore")
            for label, make in _peer_fits(args, cov_type, k, kw).items():
                # Warm-up: first calls pay for thread pools, allocator growth and imports.
                warm = make()
                if isinstance(warm, PomegranateFit):
                    warm.iters = 1
                else:
                    warm.set_params(max_iter=1)
                warm.fit(X)
                wall, cpu, model, memory = _timed(make, X, repeats)
                timings[label] = (wall, cpu, _log_likelihood(model, X), memory)
        _, sk_cpu, sk_ll, _ = timings["scikit-learn"]
        for label, (wall, cpu, ll, memory) in timings.items():
            rel = abs(ll - sk_ll) / abs(sk_ll)
            print(f"{name:<10}{n:>9,}{d:>4}{k:>4}  {label:<16}{wall:>8.2f}{cpu:>8.2f}"
                  f"{cpu / sk_cpu:>10.2f}{ll:>14.6f}{rel:>10.1e}{memory / 2**20:>9.1f}")
            rows[f"{name} {label}"] = {
                "covariance_type": cov_type, "n_samples": n, "n_features": d,
                "n_components": k, "iterations": iters, "threads": args.threads,
                "wall_s": wall, "cpu_s": cpu, "cpu_ratio": cpu / sk_cpu,
                "log_likelihood": ll, "sklearn_log_likelihood": sk_ll,
                "peak_rss_anon_added_bytes": memory}
    print("(CPU ratio: CPU time / scikit-learn's; log-lik: mean log-likelihood per sample "
          "of the final model in nats; rel. diff: against scikit-learn's; peak MiB: peak "
          "RssAnon added during the last fit, sampled every 5 ms)")
    rows.update(_streaming_rows(args))
    return rows


# ------------------------------------------------------------------------------ streaming

class _Clock:
    """Seconds of work, with the evaluations between steps left out."""

    def __init__(self):
        self.spent, self._since = 0.0, time.perf_counter()

    def pause(self):
        self.spent += time.perf_counter() - self._since

    def resume(self):
        self._since = time.perf_counter()


def _batch_time_to(make, X, target_of):
    """Fit ``make()`` with a callback; the seconds until its recorded objective first
    reached the target of its final one, and that final objective."""
    seen = []
    started = time.perf_counter()
    model = make().set_params(callback=lambda i, v: seen.append(
        (time.perf_counter() - started, float(np.nanmax(v)))))
    model.fit(X)
    final = model.objective(X)
    goal = target_of(final)
    reached = next((i for i, (_, v) in enumerate(seen) if v >= goal), len(seen) - 1)
    return model, final, seen[reached][0], reached + 1


def _stream_time_to(model, X, batch, goal, max_passes, evaluations_per_pass=10):
    """partial_fit over shuffled contiguous batches until ``objective(X)`` reaches
    ``goal`` (evaluated ``evaluations_per_pass`` times a pass, not timed)."""
    n = len(X)
    starts = np.arange(0, n, batch)
    every = max(1, len(starts) // evaluations_per_pass)
    order, clock, steps, value = np.random.default_rng(0), _Clock(), 0, -np.inf
    while steps < max_passes * len(starts):
        for s in order.permutation(starts):
            model.partial_fit(X[s:s + batch])
            steps += 1
            if steps % every == 0:
                clock.pause()
                value = model.objective(X)
                clock.resume()
                if value >= goal:
                    return clock.spent, steps * batch / n, value
    clock.pause()
    return clock.spent, steps * batch / n, value


def _streaming_rows(args):
    from ppl_vae.mixture import BayesianGaussianMixture, GaussianMixture

    n, d, k = (4_000, 4, 3) if args.quick else (200_000, 16, 16)
    batch = n // 100
    X, means = mixture_data(n, d, k, seed=args.seed)
    X = X.astype(np.float32)
    kw = dict(covariance_type="full", device=args.device, dtype="float32",
              random_state=args.seed)
    init = start(X, means, "full")

    def target(final):
        return final - (1 - TARGET) * abs(final)

    rows = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        em, em_final, em_time, em_iters = _batch_time_to(
            lambda: GaussianMixture(k, max_iter=300, tol=1e-4, **init, **kw), X, target)
        em_row = (em_time, em_iters, em_final)
        step_row = _stream_time_to(GaussianMixture(k, **init, **kw), X, batch,
                                   target(em_final), max_passes=20)
        cavi, cavi_final, cavi_time, cavi_iters = _batch_time_to(
            lambda: BayesianGaussianMixture(k, max_iter=300, **kw), X, target)
        svi_row = _stream_time_to(BayesianGaussianMixture(k, total_samples=n, **kw), X, batch,
                                  target(cavi_final), max_passes=20)
    print(f"\nstreaming, full covariances, N={n:,}, d={d}, K={k}, float32, batches of "
          f"{batch:,} rows (kappa=0.7, tau=1): seconds and passes until the objective on all "
          f"the data reaches {TARGET:.1%} of the batch method's final one (evaluations not "
          f"timed; batch methods: until the iteration whose objective first reached it)")
    print(f"{'method':<26}{'seconds':>9}{'passes':>8}{'objective':>16}")
    for label, (secs, passes, value) in (
            ("batch EM (log-lik/example)", em_row), ("stepwise EM", step_row),
            ("CAVI (ELBO, total nats)", (cavi_time, cavi_iters, cavi_final)),
            ("SVI (natural gradient)", svi_row)):
        print(f"{label:<26}{secs:>9.2f}{passes:>8.2f}{value:>16.4f}")
        rows[f"stream {label}"] = {"seconds": secs, "passes": passes, "objective": value,
                                   "n_samples": n, "batch_size": batch}
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



# ------------------------------------------------------------------------------ out of core

STREAM_CHILD = textwrap.dedent("""
    import json, os, sys, threading, time, warnings
    import numpy as np, torch
    from ppl_vae.commands.bench.gmm import PeakRssAnon
    from ppl_vae.mixture import GaussianMixture
    n, d, k, batch, passes = (int(a) for a in sys.argv[1:6])
    folder = sys.argv[6]
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    path, out_path = os.path.join(folder, "x.npy"), os.path.join(folder, "proba.npy")
    score_path = os.path.join(folder, "scores.npy")
    result = {}

    def phase(name, work):
        with PeakRssAnon(0.01) as memory:
            started = time.perf_counter()
            value = work()
        result[name] = {"wall_s": time.perf_counter() - started,
                        "peak_rss_anon_bytes": memory.peak}
        return value

    def write():
        rng = np.random.default_rng(0)
        X = np.lib.format.open_memmap(path, "w+", np.float32, (n, d))
        centres = rng.normal(scale=4.0, size=(k, d)).astype(np.float32)
        for s in range(0, n, 1_000_000):
            rows = min(1_000_000, n - s)
            X[s:s + rows] = centres[rng.integers(k, size=rows)] + rng.standard_normal(
                (rows, d), dtype=np.float32)
        X.flush()
        del X

    try:
        result["baseline_rss_anon_bytes"] = PeakRssAnon().__enter__().before
        phase("write", write)
        model = GaussianMixture(k, covariance_type="full", batch_size=batch, max_iter=passes,
                                tol=0.0, random_state=0, device="cpu")
        phase("fit", lambda: model.fit(path))
        X = np.load(path, mmap_mode="c")
        proba = np.lib.format.open_memmap(out_path, "w+", np.float32, (n, k))
        phase("predict_proba", lambda: model.predict_proba(X, out=proba).flush())
        scores = np.lib.format.open_memmap(score_path, "w+", np.float64, (n,))
        phase("score_samples", lambda: scores.flush() or model.score_samples(X, out=scores))
        result["mean_log_likelihood"] = phase("score", lambda: model.score(X))
        result["check"] = {"proba_rows_sum_to_one": bool(np.allclose(
            np.asarray(proba[:1000]).sum(1), 1, atol=1e-5)), "n_iter": model.n_iter_}
    finally:
        for p in (path, out_path, score_path):
            if os.path.exists(p):
                os.remove(p)
    print(json.dumps(result))
""")


@benchmark("gmm-stream", "out of core: mini-batch EM fit, predict_proba and score over a "
                         "memory-mapped rows x 16 float32 file, peak RssAnon")
def bench_gmm_stream(args):
    import tempfile

    n = 200_000 if args.quick else (args.rows or 10_000_000)
    d, k, batch, passes = 16, 8, min(1_000_000, n // 4), 2 if args.quick else 3
    with tempfile.TemporaryDirectory(dir=args.scratch) as folder:
        out = subprocess.run([sys.executable, "-c", STREAM_CHILD, str(n), str(d), str(k),
                              str(batch), str(passes), folder], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"the out-of-core benchmark failed:\n{out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    size = n * d * 4
    print(f"{n:,} x {d} float32 ({size / 2**30:.2f} GiB) memory-mapped from a .npy file; "
          f"GaussianMixture(K={k}, full) with batch_size={batch:,}, {passes} passes, 1 "
          f"thread; a fresh process; RssAnon sampled every 10 ms (baseline "
          f"{result['baseline_rss_anon_bytes'] / 2**20:.0f} MiB after imports)")
    print(f"{'phase':<15}{'wall s':>9}{'peak RssAnon MiB':>18}")
    for name in ("write", "fit", "predict_proba", "score_samples", "score"):
        row = result[name]
        print(f"{name:<15}{row['wall_s']:>9.1f}{row['peak_rss_anon_bytes'] / 2**20:>18.1f}")
    print(f"(fit: validation, mean and second-moment passes, a k-means start on the first "
          f"batch, then {passes} passes; predict_proba writes a memory-mapped "
          f"{n:,} x {k} float32 output, score_samples a float64 one; mean log-likelihood "
          f"{result['mean_log_likelihood']:.4f} nats/example; files deleted afterwards)")
    return {**result, "n_samples": n, "n_features": d, "n_components": k,
            "batch_size": batch, "passes": passes}
