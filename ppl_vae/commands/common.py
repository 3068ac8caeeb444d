"""What every subcommand shares: user errors as one line and exit status 2, and the flags
that mean the same everywhere (one name, one help, one default)."""

import argparse
import sys

from ppl_vae.errors import ConfigError, PplVaeError


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit status 2."""

    def error(self, message):
        raise ConfigError(message)


SEED_HELP = "random seed"
DEVICE_HELP = "auto (CUDA if available), cpu or cuda"
QUIET_HELP = "no progress bars"


def add_shared_arguments(parser, *, seed=0, device="auto", quiet=True):
    """``--seed``, ``--device`` and (for a command with progress bars) ``--quiet``.

    A ``None`` default means "the model file's"; the help then names the built-in one.
    """
    def default(value, builtin):
        return f"default: {value}" if value is not None else \
            f"default: the model file's; built-in: {builtin}"

    parser.add_argument("--seed", type=int, default=seed,
                        help=f"{SEED_HELP} ({default(seed, 0)})")
    parser.add_argument("--device", default=device,
                        help=f"{DEVICE_HELP} ({default(device, 'auto')})")
    if quiet:
        parser.add_argument("--quiet", action="store_true", help=QUIET_HELP)


def add_dataset_argument(parser, **kwargs):
    """``--dataset``, with ``--data`` (its old name in gmm and compare) as a hidden alias."""
    parser.add_argument("--dataset", **kwargs)
    parser.add_argument("--data", dest="dataset", default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)


def run_command(main, argv=None):
    """Call ``main(argv)``, turning user errors into one line and exit status 2."""
    try:
        return main(argv)
    except PplVaeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
