"""What every subcommand shares: user errors as one line and exit status 2."""

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
