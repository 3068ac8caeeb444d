"""The ``impute`` command: hide entries of a run's test set and fill them in with the VAE
(decoder mean at the guide's mean, pseudo-Gibbs, Metropolis-within-Gibbs) and with the
baselines (training mean, k-nearest neighbours); one table (:mod:`ppl_vae.evaluation.impute`)."""

import sys
from pathlib import Path

import numpy as np

from ppl_vae.commands.common import OneLineParser, add_shared_arguments, bounded_int, run_command
from ppl_vae.errors import ConfigError, DataError
from ppl_vae.evaluation import impute, tables


def build_parser(prog="ppl-vae impute"):
    parser = OneLineParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder of ppl-vae train")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--missing", metavar="MASK.npy",
                       help="which test entries are missing: a .npy of booleans or 0/1 "
                            "(1 = missing), shape (N_test, D) or (D,) for every point")
    which.add_argument("--missing-rate", type=float, metavar="R",
                       help="hide each test entry independently with probability R")
    which.add_argument("--lower-half", action="store_true",
                       help="hide the lower half of every test image")
    parser.add_argument("--methods", default=",".join(impute.METHODS + impute.BASELINES),
                        help="comma-separated, from "
                             f"{', '.join(impute.METHODS + impute.BASELINES)} (default: all)")
    parser.add_argument("--iterations", type=bounded_int(1), default=500,
                        help="steps of the pseudo-Gibbs and Metropolis-within-Gibbs chains "
                             "(default: 500)")
    parser.add_argument("--burn-in", type=bounded_int(0), default=100,
                        help="first chain steps discarded (default: 100)")
    parser.add_argument("--neighbours", type=bounded_int(1), default=5,
                        help="k of the k-nearest-neighbour imputer (default: 5)")
    add_shared_arguments(parser, quiet=False)
    return parser


def observed_mask(args, x, image_shape):
    """The ``observed`` mask the flags ask for, checked against the test set ``x``."""
    if args.missing_rate is not None:
        observed = impute.random_mask(x.shape, args.missing_rate, seed=args.seed)
    elif args.lower_half:
        if image_shape is None:
            raise ConfigError("--lower-half needs image data; this run's data are not images")
        observed = impute.lower_half_mask(len(x), image_shape)
    else:
        path = Path(args.missing)
        if not path.is_file():
            raise DataError(f"no mask file {path}")
        missing = np.load(path, allow_pickle=False)
        if missing.shape == x.shape[1:]:
            missing = np.broadcast_to(missing, x.shape)
        observed = ~impute.check_mask(missing, x)
    return impute.check_mask(observed, x)


def main(argv=None):
    args = build_parser().parse_args(argv)
    import pyro
    import torch

    from ppl_vae.build import load_run

    pyro.set_rng_seed(args.seed)
    run = load_run(args.run_dir, device=args.device)
    x, x_train = (t.float() / 255 if t.dtype == torch.uint8 else t.float()
                  for t in (run.data.x_test, run.data.x_train))
    from ppl_vae.vae import VAE

    if not isinstance(run.program, VAE) or run.program.conditional:
        raise ConfigError("impute handles the built-in, unconditional VAE; this run is a "
                          "program of your own or conditional")
    observed = observed_mask(args, x, run.dims.image_shape)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    rows = impute.compare_imputers(run.program, x_train, x, observed,
                                   methods=methods, num_iterations=args.iterations,
                                   burn_in=args.burn_in, k=args.neighbours)
    name = ("rate=" + f"{args.missing_rate:g}" if args.missing_rate is not None else
            "lower-half" if args.lower_half else Path(args.missing).stem)
    run_dir = Path(args.run_dir)
    paths = tables.write_table(rows, impute.COLUMNS, run_dir / f"impute_{name}.md",
                               run_dir / f"impute_{name}.csv")
    print(tables.markdown_table(rows, impute.COLUMNS), end="")
    print(f"{int((~observed).sum())} of {observed.numel()} test entries missing; "
          f"log p(x_m | x_o) in nats per test point; written to "
          f"{', '.join(map(str, paths))}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
