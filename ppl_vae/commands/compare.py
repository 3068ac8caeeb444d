"""The ``compare`` command: EM vs mean-field VI vs amortized VI on one data set, one table
(the methods are :mod:`ppl_vae.evaluation.compare`'s)."""

import shlex
import sys

from ppl_vae.commands.common import (
    OneLineParser,
    add_dataset_argument,
    add_shared_arguments,
    run_command,
)
from ppl_vae.device import resolve_device
from ppl_vae.errors import ConfigError
from ppl_vae.evaluation import compare
from ppl_vae.inference.runs import claim_run_dir


def build_parser(prog="ppl-vae compare"):
    parser = OneLineParser(prog=prog, description=compare.__doc__.splitlines()[0])
    add_dataset_argument(parser, default="digits",
                         help=f"{', '.join(compare.DATA_SETS)}, or a .npy file of points (N, d) "
                              "or a .npz holding them as x (and labels as y), as in gmm "
                              "(default: digits)")
    parser.add_argument("--pca-dims", type=int, default=compare.PCA_DIMS,
                        help="principal components kept of digits (default: "
                             f"{compare.PCA_DIMS})")
    parser.add_argument("--methods", default=",".join(compare.METHODS),
                        help=f"comma-separated, from {', '.join(compare.METHODS)} "
                             "(default: all)")
    parser.add_argument("--components", type=int,
                        help="K (default: the number of classes: 10 digits, 3 blobs; "
                             "needed for a file without labels)")
    default = compare.Settings()
    for flag, help_text in (("svi-steps", "SVI steps of the Pyro mixtures"),
                            ("nuts-points", "training points NUTS sees"),
                            ("stream-batch", "rows per step of em-stepwise and svi"),
                            ("stream-passes", "passes of em-stepwise and svi"),
                            ("nuts-draws", "NUTS draws (and warm-up steps)"),
                            ("vae-steps", "SVI steps of each VAE"),
                            ("num-samples", "K of the VAEs' importance-sampled log p(x)")):
        value = getattr(default, flag.replace("-", "_")) or "all"
        parser.add_argument(f"--{flag}", type=int, help=f"{help_text} (default: {value})")
    add_shared_arguments(parser)
    parser.add_argument("--out", help="output folder "
                                                              "(default: runs/compare)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny budgets for a smoke test (seconds, not converged)")
    return parser


def settings_from_args(args):
    changes = {"components": args.components, "seed": args.seed, "device": args.device,
               "progress": not args.quiet}
    for name in ("svi_steps", "nuts_points", "stream_batch", "stream_passes", "nuts_draws",
                 "vae_steps", "num_samples"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer; "
                              f"got {value}")
        changes[name] = value
    changes = {k: v for k, v in changes.items() if v is not None}
    return compare.Settings.quick(**changes) if args.quick else compare.Settings(**changes)


def run(args):
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    compare.check_methods(methods)
    settings = settings_from_args(args)
    resolve_device(settings.device)
    # Claimed before any fitting: a folder that holds another run or cannot be written
    # is refused at once.
    with claim_run_dir(args.out, "compare") as out:
        return _compare_into(args, out, methods, settings)


def _compare_into(args, out, methods, settings):
    data = compare.load_data(args.dataset, pca_dims=args.pca_dims, seed=args.seed, quick=args.quick)
    settings = compare.resolve_settings(data, settings)
    print(f"{data.description}: {len(data.x_train)} train / {len(data.x_test)} test points, "
          f"{settings.components} components", file=sys.stderr)
    fits = compare.run_comparison(data, settings, methods,
                                  log=lambda line: print(line, file=sys.stderr))
    rows = compare.table_rows(fits)
    command = shlex.join(["ppl-vae", "compare", *args.argv])
    preamble = (f"{data.description}; {len(data.x_train)} training and {len(data.x_test)} "
                f"held-out points; log p(x) in nats per example (higher is better).\n"
                f"Made by `{command}`.\n\n")
    written = compare.write_table(rows, out, preamble)
    written.append(compare.save_figure(compare.plot_objectives(fits), out / "objectives.png"))
    written.append(compare.save_figure(compare.plot_passes(fits), out / "passes.png"))
    written.append(compare.save_figure(compare.plot_mixtures(data, fits), out / "ellipses.png"))
    if {"cavi", "pyro-meanfield", "nuts"} <= set(methods):
        exports = compare.posterior_exports(data, fits, settings)
        compare.posterior_summary(exports).to_csv(out / "posterior_summary.csv")
        written += [out / "posterior_summary.csv",
                    compare.save_figure(compare.plot_forest(exports), out / "forest.png")]
    print(compare.markdown_table(rows), end="")
    print(f"wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    return 0


def main(argv=None, prog="ppl-vae compare") -> int:
    """Run the compare command on ``argv`` (default: sys.argv[1:]); returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)

    def command(argv):
        args = build_parser(prog).parse_args(argv)
        args.argv = argv
        return run(args)

    return run_command(command, argv)
