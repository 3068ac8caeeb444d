"""What every subcommand shares: user errors as one line and exit status 2."""

import argparse
import sys

from ppl_vae.errors import ConfigError, PplVaeError


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit status 2."""

    def error(self, message):
        raise ConfigError(message)


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
