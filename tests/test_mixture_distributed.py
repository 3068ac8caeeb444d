"""EM and CAVI spread over processes (gloo on CPU), started by torchrun.

Each process fits its shard of the rows (every second row); the sufficient statistics
are summed over the processes with one all-reduce per iteration. From the same initial
parameters, both processes must end with identical parameters, equal to one process's
fit of all rows, in float64 to rounding.
"""

import json
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from ppl_vae import distributed
from ppl_vae.commands.gmm import main
from ppl_vae.mixture import BayesianGaussianMixture, DegenerateDataWarning, GaussianMixture

ROOT = Path(__file__).resolve().parents[1]
CLASSES = {"em": GaussianMixture, "cavi": BayesianGaussianMixture}
ATTRS = ("weights_", "means_", "covariances_", "precisions_cholesky_", "lower_bound_",
         "lower_bounds_", "n_iter_", "converged_")

# Runs in each torchrun process: fit every case on this rank's shard, count all-reduces.
WORKER = """
import pickle, sys, warnings
import torch
import torch.distributed as dist
from ppl_vae import distributed
from ppl_vae.mixture import BayesianGaussianMixture, GaussianMixture

torch.set_num_threads(1)
warnings.simplefilter("ignore")
distributed.init_from_environment(torch.device("cpu"))
rank, world = distributed.rank(), distributed.world_size()
with open(sys.argv[1], "rb") as f:
    job = pickle.load(f)
all_reduce, calls = dist.all_reduce, [0]

def counted(*args, **kwargs):
    calls[0] += 1
    return all_reduce(*args, **kwargs)

dist.all_reduce = counted
classes = {"em": GaussianMixture, "cavi": BayesianGaussianMixture}
results = {}
for name, (kind, kwargs) in job["cases"].items():
    if "resp_init" in kwargs:
        kwargs = {**kwargs, "resp_init": kwargs["resp_init"][rank::world]}
    calls[0] = 0
    model = classes[kind](**kwargs).fit(job["X"][rank::world])
    results[name] = {a: getattr(model, a) for a in job["attrs"]}
    results[name]["all_reduces"] = calls[0]
with open(f"{sys.argv[2]}/rank{rank}.pkl", "wb") as f:
    pickle.dump(results, f)
dist.destroy_process_group()
"""


def blobs(n=601, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0], [4.0, 4.0, 0.0], [0.0, 4.5, 4.5]])
    labels = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])
    scales = np.array([1.0, 0.6, 1.5])[labels, None]
    return centres[labels] + scales * rng.normal(size=(n, 3)), labels


def given_start(X, labels, cov_type, far=False):
    """User-given initial parameters: one mean near each blob (the last far away, so
    that its component loses all its points, when ``far``)."""
    means = X[[int(np.argmax(labels == k)) for k in range(3)]] + 2.5
    if far:
        means[2] = 1e4
    precisions = {"full": np.eye(3)[None].repeat(3, 0), "tied": np.eye(3),
                  "diag": np.ones((3, 3))}[cov_type]
    return dict(weights_init=[0.4, 0.3, 0.3], means_init=means, precisions_init=precisions)


def cases(X, labels):
    """name -> (estimator, constructor kwargs); ``exact`` cases start from given values."""
    resp = np.random.default_rng(1).dirichlet(np.ones(5), size=len(X))
    em = dict(n_components=3, tol=1e-8, max_iter=60, dtype="float64")
    cavi = dict(n_components=5, tol=1e-8, max_iter=60, dtype="float64")
    exact = {
        f"em-{c}": ("em", {**em, "covariance_type": c, **given_start(X, labels, c)})
        for c in ("full", "diag", "tied")
    }
    exact["em-reseed"] = ("em", {**em, "covariance_type": "full", "max_iter": 10,
                                 **given_start(X, labels, "full", far=True)})
    exact["cavi-full"] = ("cavi", {**cavi, "covariance_type": "full", "resp_init": resp,
                                   "weight_concentration_prior_type":
                                   "dirichlet_distribution"})
    exact["cavi-diag-dp"] = ("cavi", {**cavi, "covariance_type": "diag", "resp_init": resp})
    seeded = {
        "em-kmeans": ("em", {**em, "init_params": "kmeans", "n_init": 2}),
        "em-random_from_data": ("em", {**em, "init_params": "random_from_data",
                                       "random_state": 5}),
        "cavi-random": ("cavi", {**cavi, "n_components": 3, "init_params": "random",
                                 "random_state": 3, "max_iter": 200,
                                 "weight_concentration_prior_type":
                                 "dirichlet_distribution"}),
    }
    return exact, seeded


def fit_one_process(kind, kwargs, X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = CLASSES[kind](**kwargs).fit(X)
    return {a: getattr(model, a) for a in ATTRS}


def torchrun(*args, timeout=180):
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         *map(str, args)], capture_output=True, text=True, timeout=timeout,
        # PYTHONPATH: the workers import this checkout's ppl_vae, not whichever is installed.
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def sorted_components(fit):
    order = np.lexsort(np.asarray(fit["means"]).T[::-1])
    return {k: np.asarray(fit[k])[order] for k in ("weights", "means", "covariances")}


@pytest.fixture(scope="module")
def two_process_fits(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shards")
    X, labels = blobs()
    exact, seeded = cases(X, labels)
    (tmp / "worker.py").write_text(WORKER)
    with open(tmp / "job.pkl", "wb") as f:
        pickle.dump({"X": X, "cases": {**exact, **seeded}, "attrs": ATTRS}, f)
    torchrun(tmp / "worker.py", tmp / "job.pkl", tmp)
    ranks = []
    for rank in range(2):
        with open(tmp / f"rank{rank}.pkl", "rb") as f:
            ranks.append(pickle.load(f))
    return X, exact, seeded, ranks


@pytest.mark.slow
def test_both_processes_hold_identical_parameters(two_process_fits):
    _, exact, seeded, (zero, one) = two_process_fits
    for name in {**exact, **seeded}:
        for attr in ATTRS:
            np.testing.assert_array_equal(np.asarray(zero[name][attr]),
                                          np.asarray(one[name][attr]), err_msg=name + attr)


@pytest.mark.slow
def test_shards_give_the_single_process_fit_with_one_all_reduce_per_iteration(
        two_process_fits):
    X, exact, _, (zero, _) = two_process_fits
    for name, (kind, kwargs) in exact.items():
        ref, got = fit_one_process(kind, kwargs, X), zero[name]
        assert got["n_iter_"] == ref["n_iter_"] and got["converged_"] == ref["converged_"]
        for attr in ATTRS[:6]:
            np.testing.assert_allclose(got[attr], ref[attr], rtol=1e-9, atol=1e-11,
                                       err_msg=f"{name} {attr}")
        # Setup: the data mean, then the moments; resp_init: two passes of its statistics.
        setup = 4 if "resp_init" in kwargs else 2
        assert got["all_reduces"] == got["n_iter_"] + setup, name
    converged = [n for n in exact if zero[n]["converged_"]]
    assert set(converged) >= {"em-full", "em-diag", "em-tied", "cavi-full"}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::ppl_vae.mixture.ConvergenceWarning")
def test_reseeding_an_empty_component_moves_it_onto_the_data(two_process_fits):
    X, exact, _, (zero, _) = two_process_fits
    with pytest.warns(DegenerateDataWarning, match="re-seeded"):
        GaussianMixture(**exact["em-reseed"][1]).fit(X)
    assert np.abs(zero["em-reseed"]["means_"]).max() < 100


@pytest.mark.slow
def test_data_driven_starts_reach_the_single_process_optimum(two_process_fits):
    # Seeds come from rank 0's rows, so the path differs; on well-separated blobs the
    # optimum, up to the order of the components, is the same.
    X, _, seeded, (zero, _) = two_process_fits
    for name, (kind, kwargs) in seeded.items():
        ref = fit_one_process(kind, {**kwargs, "random_state": 0}, X)
        got = zero[name]
        np.testing.assert_allclose(got["lower_bound_"], ref["lower_bound_"], rtol=1e-5,
                                   err_msg=name)
        big = np.asarray(got["weights_"]) > 0.05
        ref_big = np.asarray(ref["weights_"]) > 0.05
        a = sorted_components({"weights": got["weights_"][big], "means": got["means_"][big],
                               "covariances": got["covariances_"][big]})
        b = sorted_components({"weights": ref["weights_"][ref_big],
                               "means": ref["means_"][ref_big],
                               "covariances": ref["covariances_"][ref_big]})
        for key in a:
            np.testing.assert_allclose(a[key], b[key], atol=1e-3, err_msg=f"{name} {key}")


@pytest.mark.slow
def test_cli_under_torchrun_writes_one_result_with_the_single_process_fit(tmp_path,
                                                                          capsys):
    args = ["--quick", "--method", "em", "--seed", "2"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    capsys.readouterr()
    run = torchrun(ROOT / "scripts" / "fit_gmm.py", *args, "--out", tmp_path / "two")
    assert run.stdout.count("2 process(es)") == 1 and run.stdout.count("iter    1 ") == 1
    assert run.stdout.count("wrote") == 1
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [
        "ellipses.png", "objective.png", "result.json"]
    one, two = (json.loads((tmp_path / d / "result.json").read_text()) for d in ("one", "two"))
    assert (one["processes"], two["processes"]) == (1, 2)
    assert two["n_train"] == one["n_train"]
    # The E-step computes in float32 on differently composed chunks: agreement to ~1e-7.
    np.testing.assert_allclose(two["objective"]["history"], one["objective"]["history"],
                               rtol=1e-6)
    for key in ("train_score", "test_score", "ari_test"):
        assert two[key] == pytest.approx(one[key], rel=1e-6)
    a, b = sorted_components(two), sorted_components(one)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_pyro_methods_refuse_torchrun(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["--quick", "--method", "nuts"]) == 2
    assert "under torchrun use em or cavi" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::ppl_vae.mixture.ConvergenceWarning")
def test_one_process_runs_no_collective(monkeypatch):
    def refuse(*tensors):
        raise AssertionError("a collective without torch.distributed")

    monkeypatch.setattr(distributed, "all_reduce_sum_many", refuse)
    monkeypatch.setattr(distributed, "all_gather", refuse)
    X, _ = blobs()
    assert not distributed.is_distributed()
    for kind in CLASSES:
        CLASSES[kind](3, max_iter=5, tol=0, random_state=0).fit(X)
