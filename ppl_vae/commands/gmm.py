"""The ``gmm`` command: fit a Gaussian mixture by EM, CAVI, Pyro SVI or NUTS.

``ppl-vae gmm ...`` and ``python scripts/fit_gmm.py ...`` run :func:`main`. It loads a
data set (synthetic blobs with known labels by default), fits the chosen method on 80%
of it while printing the objective per iteration, and writes ``ellipses.png``,
``objective.png`` and ``result.json`` (objective history, parameters, train and held-out
log-likelihood in nats per example, adjusted Rand index against known labels) into
``--out``. User errors print one line, ``error: ...``, and return exit status 2.

Under ``torchrun --nproc_per_node=N`` (em and cavi only) every process loads the data and
fits its shard of the training rows (every N-th row from its rank); the sufficient
statistics are summed over the processes each iteration, so the fit is that of all rows.
Only rank 0 prints, shows progress, evaluates and writes files.
"""

import contextlib
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from ppl_vae import distributed
from ppl_vae.commands.common import (
    OneLineParser,
    add_dataset_argument,
    add_shared_arguments,
    run_command,
)
from ppl_vae.data.points import load_points
from ppl_vae.device import resolve_device
from ppl_vae.errors import ConfigError
from ppl_vae.inference.runs import claim_run_dir
from ppl_vae.mixture._covariance import COVARIANCE_TYPES, covariance_type

METHOD_NAMES = ("em", "cavi", "pyro-map", "pyro-meanfield", "nuts")
SHARDED_METHODS = ("em", "cavi")  # the methods that torchrun spreads over processes


# ---------------------------------------------------------------------------- methods


@dataclass
class Fit:
    """What every method reports, whatever its model object."""

    model: object
    history: list
    objective: str
    covariances: np.ndarray  # full (K, d, d)
    extra: dict = field(default_factory=dict)


def _progress_callback(bar, name):
    def callback(iteration, lower_bounds):
        if bar.disable:
            return
        value = float(np.nanmax(lower_bounds))
        bar.update(1)
        bar.set_postfix({name: f"{value:.6g}"})
        tqdm.write(f"iter {iteration:4d}  {name} {value:.8g}")

    return callback


def _fit_sklearn_style(cls, args, data, objective, per_example, **kwargs):
    scale = 1.0 / len(data.x_train) if per_example else 1.0
    max_iter = args.max_iter or (30 if args.quick else 100)
    with tqdm(total=max_iter, desc=args.method, file=sys.stderr,
              disable=args.quiet or not distributed.is_main()) as bar:
        callback = _progress_callback(bar, "objective")
        model = cls(args.components, covariance_type=args.covariance_type, max_iter=max_iter,
                    n_init=args.n_init, random_state=args.seed, device=args.device,
                    batch_size=args.batch_size,
                    callback=lambda i, lb: callback(i, lb * scale), **kwargs)
        model.fit(data.x_train[distributed.rank()::distributed.world_size()])
    full = covariance_type(args.covariance_type, data.x_train.shape[1]).to_full(
        torch.as_tensor(model.covariances_), args.components).numpy()
    history = [value * scale for value in model.lower_bounds_]
    return Fit(model, history, objective, full,
               {"n_iter": model.n_iter_, "converged": bool(model.converged_)})


def fit_em(args, data):
    from ppl_vae.mixture import GaussianMixture

    return _fit_sklearn_style(GaussianMixture, args, data,
                              "mean log-likelihood (nats per example, higher is better)",
                              per_example=False)


def fit_cavi(args, data):
    from ppl_vae.mixture import BayesianGaussianMixture

    return _fit_sklearn_style(BayesianGaussianMixture, args, data,
                              "complete ELBO / N (nats per example, higher is better)",
                              per_example=True)


def _pyro_module():
    try:
        from ppl_vae.mixture import pyro_gmm
    except ImportError as exc:
        raise ConfigError(f"the Pyro methods need ppl_vae.mixture.pyro_gmm ({exc})") from None
    return pyro_gmm


def _check_full(args):
    if args.covariance_type != "full":
        raise ConfigError(f"--method {args.method} fits full covariances only; "
                          f"got --covariance-type {args.covariance_type}")


def _fit_pyro(args, data, guide):
    _check_full(args)
    pyro_gmm = _pyro_module()
    steps = args.max_iter or (30 if args.quick else 1000)
    model = pyro_gmm.PyroGaussianMixture(args.components, guide=guide, num_steps=steps,
                                         random_state=args.seed, device=args.device,
                                         progress=not args.quiet)
    model.fit(data.x_train)
    history = [float(v) for v in np.asarray(model.lower_bounds_)]
    for step in range(0, len(history), max(1, len(history) // 20)):
        print(f"step {step + 1:5d}  ELBO {history[step]:.8g}")
    return Fit(model, history, "ELBO (nats per example, higher is better)",
               np.asarray(model.covariances_), {"n_iter": len(history)})


def fit_pyro_map(args, data):
    return _fit_pyro(args, data, "map")


def fit_pyro_meanfield(args, data):
    return _fit_pyro(args, data, "meanfield")


def _draw_log_likelihoods(samples, X):
    """Mean log-likelihood per example of each posterior draw, shape (S,)."""
    x = torch.as_tensor(X, dtype=torch.float64)[:, None, None]
    components = torch.distributions.MultivariateNormal(
        torch.as_tensor(samples["means"], dtype=torch.float64),
        covariance_matrix=torch.as_tensor(samples["covariances"], dtype=torch.float64))
    log_w = torch.as_tensor(samples["weights"], dtype=torch.float64).log()
    return torch.logsumexp(components.log_prob(x) + log_w, -1).mean(0).numpy()


def fit_nuts(args, data):
    _check_full(args)
    pyro_gmm = _pyro_module()
    draws = args.max_iter or (10 if args.quick else 500)
    model = pyro_gmm.nuts_gmm(data.x_train, args.components, num_samples=draws,
                              warmup_steps=draws, random_state=args.seed, device=args.device,
                              progress=not args.quiet)
    history = [float(v) for v in _draw_log_likelihoods(model.samples, data.x_train)]
    for i in range(0, len(history), max(1, len(history) // 20)):
        print(f"draw {i + 1:5d}  log-likelihood {history[i]:.8g}")
    return Fit(model, history, "log-likelihood of each posterior draw (nats per example)",
               np.asarray(model.covariances_), {"n_draws": len(history)})


# One entry per --method: a function (args, data) -> Fit.
METHODS = {"em": fit_em, "cavi": fit_cavi, "pyro-map": fit_pyro_map,
           "pyro-meanfield": fit_pyro_meanfield, "nuts": fit_nuts}


# ---------------------------------------------------------------------------- command


def build_parser(prog="ppl-vae gmm"):
    parser = OneLineParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=list(METHODS), default="em",
                        help="em (maximum likelihood), cavi (mean-field VI), pyro-map, "
                             "pyro-meanfield (Pyro SVI) or nuts (default: em)")
    add_dataset_argument(parser, default="blobs",
                         help="blobs (synthetic, known labels), digits, iris, wine, or a .npy "
                              "file of shape (n_samples, n_features) or a .npz holding it as "
                              "x (and labels as y) (default: blobs)")
    parser.add_argument("--pca-dims", type=int, default=2,
                        help="principal components kept of the 64 digits pixels (default: 2)")
    parser.add_argument("--components", type=int, default=3,
                        help="number of components K (default: 3)")
    parser.add_argument("--covariance-type", choices=sorted(COVARIANCE_TYPES), default="full",
                        help="em and cavi only; the Pyro methods are full (default: full)")
    parser.add_argument("--max-iter", type=int,
                        help="iterations (em, cavi; default 100), SVI steps (pyro-*; default "
                             "1000) or NUTS draws and warm-up steps (nuts; default 500)")
    parser.add_argument("--n-init", type=int, default=1, help="restarts (em, cavi; default 1)")
    parser.add_argument("--batch-size", type=int,
                        help="em, cavi: fit in mini-batches of this many rows (stepwise EM, "
                             "stochastic VI); --max-iter then counts passes (default: batch)")
    add_shared_arguments(parser)
    parser.add_argument("--out", help="output folder (default: runs/gmm-<method>)")
    parser.add_argument("--quick", action="store_true",
                        help="small data and few iterations, for a smoke test")
    return parser


def _adjusted_rand(labels, predicted):
    from sklearn.metrics import adjusted_rand_score

    return None if labels is None else float(adjusted_rand_score(labels, predicted))


def _finite(value):
    return None if value is None or not math.isfinite(value) else float(value)


def _join_processes(args):
    """Under torchrun (WORLD_SIZE > 1), join its process group and use this process's
    device; returns True when this call created the group."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or distributed.is_distributed():
        return False
    if args.method not in SHARDED_METHODS:
        raise ConfigError(f"--method {args.method} runs in one process; under torchrun use "
                          f"{' or '.join(SHARDED_METHODS)}")
    args.device = str(distributed.init_from_environment(resolve_device(args.device)))
    return True


def run(args):
    if args.components < 1:
        raise ConfigError(f"--components must be a positive integer; got {args.components}")
    if args.max_iter is not None and args.max_iter < 1:
        raise ConfigError(f"--max-iter must be a positive integer; got {args.max_iter}")
    created = _join_processes(args)
    try:
        return _fit_and_report(args)
    finally:
        if created:
            torch.distributed.destroy_process_group()


def _fit_and_report(args):
    writer = distributed.is_main()
    # Claimed before any fitting: a folder that holds another run or cannot be written
    # is refused at once.
    claim = (claim_run_dir(args.out, f"gmm-{args.method}") if writer
             else contextlib.nullcontext(None))
    with claim as out:
        return _fit_into(args, out)


def _fit_into(args, out):
    writer = out is not None
    data = load_points(args.dataset, pca_dims=args.pca_dims, seed=args.seed, quick=args.quick)
    if writer:
        print(f"{args.method} on {data.name}: {len(data.x_train)} train / "
              f"{len(data.x_test)} test points, {data.x_train.shape[1]} features, "
              f"{args.components} components, {distributed.world_size()} process(es)")
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = METHODS[args.method](args, data)
    seconds = time.perf_counter() - started
    if not writer:
        return 0
    for warning in caught:
        if issubclass(warning.category, UserWarning):
            print(f"warning: {warning.message}", file=sys.stderr)
    model = fit.model
    train_score = float(np.mean(model.score_samples(data.x_train)))
    test_score = float(np.mean(model.score_samples(data.x_test)))
    result = {
        "method": args.method,
        "data": data.name,
        "n_train": len(data.x_train),
        "n_test": len(data.x_test),
        "n_components": args.components,
        "covariance_type": args.covariance_type,
        "processes": distributed.world_size(),
        "seconds": seconds,
        "objective": {"name": fit.objective, "history": [_finite(v) for v in fit.history]},
        "weights": np.asarray(model.weights_).tolist(),
        "means": np.asarray(model.means_).tolist(),
        "covariances": fit.covariances.tolist(),
        "train_score": train_score,
        "test_score": test_score,
        "score_units": "mean log p(x), nats per example",
        "ari_train": _adjusted_rand(data.y_train, model.predict(data.x_train)),
        "ari_test": _adjusted_rand(data.y_test, model.predict(data.x_test)),
        **fit.extra,
    }
    from ppl_vae.mixture.plots import save_figures

    save_figures(out, data.x_train, result["weights"], result["means"], fit.covariances,
                 fit.history, ylabel=fit.objective.split(" (")[0], labels=data.y_train,
                 title=f"{args.method} on {data.name}")
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    ari = "" if result["ari_test"] is None else f", ARI (test) {result['ari_test']:.3f}"
    print(f"train {train_score:.4f}, test {test_score:.4f} nats per example{ari}; "
          f"{seconds:.1f} s; wrote {out}/ellipses.png, objective.png, result.json")
    return 0


def main(argv=None, prog="ppl-vae gmm") -> int:
    """Run the gmm command on ``argv`` (default: sys.argv[1:]); returns the exit status."""
    return run_command(lambda a: run(build_parser(prog).parse_args(a)), argv)
