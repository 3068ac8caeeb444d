"""What every subcommand shares: user errors as one line and exit status 2, and the flags
that mean the same everywhere (one name, one help, one default)."""

import argparse
import sys
from pathlib import Path

from ppl_vae.config import SEED_MAX
from ppl_vae.errors import ConfigError, PplVaeError


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit status 2."""

    def error(self, message):
        raise ConfigError(message)


def bounded_int(low, high=None):
    """An argparse ``type``: an integer in ``low .. high`` (no upper bound if None), refused
    with the allowed range."""
    allowed = f">= {low}" if high is None else f"in {low} .. {high}"

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected an integer {allowed}; got {text!r}")
        return value

    return parse


seed_int = bounded_int(0, SEED_MAX)  # the --seed of every command


def positive_int_list(text):
    """An argparse ``type``: comma-separated positive integers (``''``: none)."""
    try:
        widths = [int(w) for w in text.split(",") if w.strip()]
    except ValueError:
        widths = None
    if widths is None or any(w < 1 for w in widths):
        raise argparse.ArgumentTypeError(f"takes comma-separated positive integers, e.g. "
                                         f"256,256 ('' for none); got {text!r}")
    return widths


def new_folder(text):
    """An argparse ``type``: a folder to create or fill; an existing file is refused."""
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder; give a folder "
                                         "that is new or empty")
    return text


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

    parser.add_argument("--seed", type=seed_int, default=seed,
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
