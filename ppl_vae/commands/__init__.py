"""The ``ppl-vae`` command and the argument parsing shared with ``scripts/``.

``ppl-vae train ...`` and ``python scripts/train_vae.py ...`` take the same flags. Every
user error (a :class:`~ppl_vae.errors.PplVaeError`) ends as one line on stderr,
``error: ...``, and exit status 2.
"""

import argparse
import contextlib
import os
import sys
from pathlib import Path

from ppl_vae import __version__
from ppl_vae.commands.common import (
    OneLineParser,
    add_shared_arguments,
    bounded_int,
    new_folder,
    positive_int_list,
    run_command,
)
from ppl_vae.config import DEFAULTS
from ppl_vae.data.arrays import BINARIZATIONS
from ppl_vae.errors import PplVaeError
from ppl_vae.inference.schedules import KLSchedule

# Command-line flag -> configuration key (see ppl_vae.config.DEFAULTS).
TRAIN_OVERRIDES = {
    "dataset": "data.dataset",
    "data_dir": "data.data_dir",
    "download": "data.download",
    "binarize": "data.binarize",
    "missing_rate": "data.missing_rate",
    "program": "model.program",
    "stream": "data.stream",
    "prior": "model.prior",
    "guide": "model.guide",
    "likelihood": "model.likelihood",
    "encoder": "model.encoder",
    "decoder": "model.decoder",
    "latent_dim": "model.latent_dim",
    "hidden": "model.hidden",
    "beta": "model.beta",
    "conditional": "model.conditional",
    "corruption": "model.corruption",
    "corruption_level": "model.corruption_level",
    "objective": "train.objective",
    "num_particles": "train.num_particles",
    "jit": "train.jit",
    "epochs": "train.epochs",
    "eval_every": "train.eval_every",
    "batch_size": "train.batch_size",
    "lr": "train.lr",
    "seed": "train.seed",
    "device": "train.device",
    "kl_schedule": "train.kl_schedule",
    "kl_warmup_epochs": "train.kl_warmup_epochs",
    "kl_cycle_epochs": "train.kl_cycle_epochs",
}


# The tiny budget of ``train --quick``: a smoke test of the model file, not a model.
QUICK_EPOCHS = 2


def _builtin(key):
    """The built-in default of a configuration key, as it is written on the command line."""
    table, name = key.split(".")
    value = DEFAULTS[table][name]
    return ",".join(map(str, value)) if isinstance(value, list) else value


def _help(flag, text):
    """``text`` and the flag's default: the model file's value, else the built-in one."""
    return f"{text} (default: the model file's; built-in: {_builtin(TRAIN_OVERRIDES[flag])})"


def _part_help(kind, text=""):
    from ppl_vae.registry import TABLES

    names = ", ".join(TABLES[kind])
    return _help(kind, f"{text}{names}, or a part of your own as module:Class")


def add_train_arguments(parser):
    """The flags of ``ppl-vae train`` / ``scripts/train_vae.py``."""
    from ppl_vae.data.datasets import DATASETS

    parser.add_argument("--model",
                        help="model file: a name in models/ (vae, gaussian_vae, ...) or a path "
                             "to a .toml file; the defaults below are its settings "
                             "(default: vae)")
    parser.add_argument("--out", type=new_folder,
                        help="run folder (default: runs/<model name>, followed by the settings "
                             "changed here, e.g. runs/vae-prior=vamp)")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue the run in RUN_DIR from its last checkpoint "
                             "(only --epochs, --device, --jit and --eval-every may change)")
    parser.add_argument("--quick", action="store_true",
                        help=f"a smoke test: {QUICK_EPOCHS} epochs unless --epochs is given "
                             "(seconds on digits; not a trained model)")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", help=_help("dataset", f"{', '.join(DATASETS)}, "
                                                         "or a .npz/.npy file"))
    data.add_argument("--data-dir", help=_help("data_dir", "folder of downloaded data sets"))
    data.add_argument("--download", action="store_const", const=True,
                      help=_help("download", "download mnist / fashion-mnist into --data-dir "
                                             "if missing"))
    data.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                      help=_help("stream", "stream a uint8 .npy or an image folder from disk; "
                                 "auto: when it would not fit in memory"))
    data.add_argument("--binarize", choices=list(BINARIZATIONS),
                      help=_help("binarize", "binarisation of [0, 1] data for Bernoulli-type "
                                             "likelihoods"))
    data.add_argument("--missing-rate", type=float, metavar="R",
                      help=_help("missing_rate", "train with this share of the training "
                                                 "entries missing at random: the likelihood "
                                                 "scores the observed ones only"))
    parts = parser.add_argument_group("model parts (names from ppl_vae.registry)")
    parts.add_argument("--program", metavar="FILE.py:CLASS",
                       help=_help("program", "a program of your own (an nn.Module with model "
                                             "and guide) in place of the VAE's parts, as "
                                             "path/to/file.py:Class or package.module:Class; "
                                             "empty: the VAE"))
    for kind in ("prior", "guide", "likelihood", "encoder", "decoder"):
        parts.add_argument(f"--{kind}", help=_part_help(kind))
    parts.add_argument("--latent-dim", type=int, help=_help("latent_dim", "dimension of z"))
    parts.add_argument("--hidden", type=positive_int_list, metavar="W1,W2,...",
                       help=_help("hidden", "hidden widths of encoder and decoder; '' for "
                                            "linear nets"))
    parts.add_argument("--beta", type=float,
                       help=_help("beta", "weight of the KL term (1 = the ELBO)"))
    parts.add_argument("--conditional", action=argparse.BooleanOptionalAction, default=None,
                       help=_help("conditional", "conditional VAE: encoder and decoder see "
                                                 "the one-hot label"))
    parts.add_argument("--corruption", help=_part_help(
        "corruption", "denoising: noise on the guide's input while training: "))
    parts.add_argument("--corruption-level", type=float,
                       help=_help("corruption_level", "noise std (gaussian) or share of "
                                                      "entries corrupted"))
    train = parser.add_argument_group("training")
    train.add_argument("--objective", help=_part_help("objective"))
    train.add_argument("--num-particles", type=int,
                       help=_help("num_particles", "samples of z per point (K of iwae)"))
    train.add_argument("--jit", action=argparse.BooleanOptionalAction, default=None,
                       help=_help("jit", "compile model and guide with torch.jit "
                                         "(elbo, meanfield)"))
    train.add_argument("--epochs", type=int, help=_help("epochs", "passes over the data"))
    train.add_argument("--eval-every", type=int, metavar="N",
                       help=_help("eval_every", "score the test set every N epochs and after "
                                                "the last"))
    train.add_argument("--batch-size", type=int, help=_help("batch_size", "points per step"))
    train.add_argument("--lr", type=float, help=_help("lr", "Adam's learning rate"))
    add_shared_arguments(train, seed=None, device=None)
    train.add_argument("--kl-schedule", choices=list(KLSchedule.KINDS),
                       help=_help("kl_schedule", "KL annealing: the weight of the KL term rises "
                                                 "to --beta"))
    train.add_argument("--kl-warmup-epochs", type=float,
                       help=_help("kl_warmup_epochs", "epochs over which the KL weight rises "
                                                      "(linear, cyclical)"))
    train.add_argument("--kl-cycle-epochs", type=float,
                       help=_help("kl_cycle_epochs", "length of a cyclical cycle"))


def train_command(args):
    from ppl_vae import distributed
    from ppl_vae.build import build, resume
    from ppl_vae.config import load_config
    from ppl_vae.device import resolve_device
    from ppl_vae.inference.runs import claim_run_dir, run_name

    overrides = {key: getattr(args, flag) for flag, key in TRAIN_OVERRIDES.items()}
    if args.quick and args.resume:
        raise PplVaeError("--quick starts a new run; --resume continues one: give one of them")
    if args.quick and args.epochs is None:
        overrides["train.epochs"] = QUICK_EPOCHS
    # Only rank 0 of a torchrun job writes, so only it claims the folder.
    writer = int(os.environ.get("RANK", "0")) == 0
    if args.resume:
        if args.out and Path(args.out).resolve() != Path(args.resume).resolve():
            raise PplVaeError(f"--resume continues a run in its own folder {args.resume}; "
                              f"drop --out {args.out}")
        if args.model:  # every setting of that model file, checked against the run's
            config = load_config(args.model, overrides)
            overrides = {f"{section}.{key}": value for section, table in config.items()
                         if isinstance(table, dict) for key, value in table.items()}
            overrides["name"] = config["name"]
        claim = (claim_run_dir(args.resume, None, resume=True) if writer
                 else contextlib.nullcontext(args.resume))
        with claim as run_dir:
            experiment = resume(run_dir, overrides=overrides, progress=not args.quiet)
            return _train(experiment, distributed)
    config = load_config(args.model or "vae", overrides)
    distributed.init_from_environment(resolve_device(config["train"]["device"]))
    name = run_name(config["name"], _changes(args.model or "vae", config))
    claim = (claim_run_dir(args.out, name) if writer
             else contextlib.nullcontext(None))
    with claim as run_dir:
        return _train(build(config, run_dir, progress=not args.quiet), distributed)


def _train(experiment, distributed):
    from ppl_vae.parts.likelihoods import program_bits_per_dim

    if not distributed.is_main():
        experiment.run()
        return 0
    dims = experiment.dims
    notes = [experiment.dataset.read_as] if experiment.dataset.read_as else []
    if experiment.trainer.batch_size > dims.num_data:
        notes.append(f"batch size {experiment.trainer.batch_size} clamped to the "
                     f"{dims.num_data} training examples")
    classes = ("" if experiment.classes is None else
               f", {len(experiment.classes)} classes: {', '.join(map(str, experiment.classes))}")
    print(f"training {experiment.config['name']} on {experiment.dataset.name} "
          f"({dims.num_data} examples, D={dims.data_dim}{classes}) "
          f"on {experiment.device}; writing to {experiment.run_dir}"
          + "".join(f"; {note}" for note in notes), file=sys.stderr)
    last = experiment.run()
    bpd = program_bits_per_dim(experiment.program, last["test_elbo"], dims.data_dim)
    bpd = "" if bpd is None else f", {bpd:.3f} bits/dim"
    print(f"epoch {last['epoch']}: train ELBO {last['train_elbo']:.3f}, "
          f"test ELBO {last['test_elbo']:.3f} nats per example{bpd} "
          f"(reconstruction {last['test_recon']:.3f}, KL {last['test_kl']:.3f}); "
          f"results in {experiment.run_dir}")
    return 0


def _changes(model, config):
    """``{flag: value}`` of the settings in ``config`` that differ from the model file's."""
    from ppl_vae.config import load_config

    base = load_config(model)
    changes = {}
    for flag, key in TRAIN_OVERRIDES.items():
        table, name = key.split(".")
        if config[table][name] != base[table][name]:
            changes[flag.replace("_", "-")] = config[table][name]
    return changes


def add_eval_arguments(parser):
    """The flags of ``ppl-vae eval`` / ``scripts/evaluate.py``."""
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder of ppl-vae train")
    parser.add_argument("--num-samples", type=bounded_int(1), default=5000,
                        help="K, importance samples per point for log p(x) (default: 5000)")
    parser.add_argument("--gap-points", type=bounded_int(1), default=500,
                        help="test (and training) points for the inference gaps (default: 500)")
    parser.add_argument("--gap-steps", type=int, default=300,
                        help="Adam steps of the per-datapoint q* fit (default: 300)")
    parser.add_argument("--estimator", choices=["is", "ais"], default="is",
                        help="log p(x) by importance sampling with K = --num-samples, or by "
                             "annealed importance sampling with HMC (default: is)")
    parser.add_argument("--ais-steps", type=bounded_int(1), default=500,
                        help="AIS: annealing steps from the guide to the posterior "
                             "(default: 500)")
    parser.add_argument("--ais-chains", type=bounded_int(1), default=16,
                        help="AIS: chains per point (default: 16)")
    add_shared_arguments(parser)


def eval_command(args):
    import pyro

    from ppl_vae.evaluation.report import evaluate_run, markdown_table

    pyro.set_rng_seed(args.seed)
    ais = (None if args.estimator == "is" else
           {"num_steps": args.ais_steps, "num_chains": args.ais_chains})
    row, paths = evaluate_run(args.run_dir, num_samples=args.num_samples,
                              gap_points=args.gap_points, gap_steps=args.gap_steps,
                              device=args.device, progress=not args.quiet, ais=ais)
    print(markdown_table([row]), end="")
    print(f"nats per example on the test set; written to {', '.join(map(str, paths))}",
          file=sys.stderr)
    return 0


def add_check_part_arguments(parser):
    """The arguments of ``ppl-vae check-part``."""
    from ppl_vae.registry import TABLES

    parser.add_argument("kind", metavar="KIND", choices=list(TABLES),
                        help=f"the kind of part: {', '.join(TABLES)}")
    parser.add_argument("part", metavar="PATH:CLASS",
                        help="the part: path/to/file.py:Class, package.module:Class or a "
                             "registered name")
    parser.add_argument("--options", default="{}", metavar="JSON",
                        help="keyword options of its constructor, as a JSON object "
                             "(default: {})")


def check_part_command(args):
    import json

    from ppl_vae.testing import check_part

    try:
        options = json.loads(args.options)
    except json.JSONDecodeError as err:
        raise PplVaeError(f"--options must be a JSON object; got {args.options!r} "
                          f"({err})") from None
    if not isinstance(options, dict):
        raise PplVaeError(f"--options must be a JSON object; got {args.options!r}")
    passed = check_part(args.kind, args.part, options=options)
    print(f"{args.part} passes the {args.kind} checks: {', '.join(passed)}")
    return 0


def gmm_command(argv):
    from ppl_vae.commands.gmm import main as gmm_main

    return gmm_main(argv)


def compare_command(argv):
    from ppl_vae.commands.compare import main as compare_main

    return compare_main(argv)


def bench_command(argv):
    from ppl_vae.commands.bench import main as bench_main

    return bench_main(argv, prog="ppl-vae bench")


def impute_command(argv):
    from ppl_vae.commands.impute import main as impute_main

    return impute_main(argv)


# Commands with their own parser: ``ppl-vae NAME ...`` hands them the rest of the line.
OWN_PARSERS = {"gmm": gmm_command, "compare": compare_command, "bench": bench_command,
               "impute": impute_command}


def build_parser():
    parser = OneLineParser(
        prog="ppl-vae",
        description="Variational autoencoders as Pyro programs, beside the Gaussian mixtures "
                    "(EM, mean-field VI, Pyro SVI and NUTS) they grow out of.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = commands.add_parser("train", help="train a VAE with SVI (see --help)")
    add_train_arguments(train)
    evaluate = commands.add_parser("eval", help="evaluate a trained run: ELBO, log p(x), "
                                                "active units, inference gaps")
    add_eval_arguments(evaluate)
    check = commands.add_parser("check-part", help="run the checks every registered part "
                                                   "passes on a part of your own")
    add_check_part_arguments(check)
    commands.add_parser("gmm", add_help=False,
                        help="fit a Gaussian mixture: EM, CAVI, Pyro SVI or NUTS")
    commands.add_parser("compare", add_help=False,
                        help="EM vs mean-field VI vs amortized VI (VAE) on one data set: "
                             "one table")
    commands.add_parser("bench", add_help=False,
                        help="benchmarks against plain PyTorch, Pyro and scikit-learn: "
                             "svi, eval, parts, gmm, gmm-memory, all")
    commands.add_parser("impute", add_help=False,
                        help="fill in missing test entries of a trained run: the VAE's "
                             "imputers against mean and k-NN imputation")
    return parser


run = run_command  # the name scripts/ use


def train_main(argv=None):
    parser = OneLineParser(prog="train_vae.py",
                                     description="Train a VAE with SVI.")
    add_train_arguments(parser)
    return run(lambda a: train_command(parser.parse_args(a)), argv)


def eval_main(argv=None):
    parser = OneLineParser(prog="evaluate.py",
                                     description="Evaluate the checkpoint of a run folder.")
    add_eval_arguments(parser)
    return run(lambda a: eval_command(parser.parse_args(a)), argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in OWN_PARSERS:
        return run(OWN_PARSERS[argv[0]], argv[1:])
    parser = build_parser()

    def dispatch(a):
        args = parser.parse_args(a)
        return {"train": train_command, "eval": eval_command,
                "check-part": check_part_command}[args.command](args)

    return run(dispatch, argv)

