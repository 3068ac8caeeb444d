"""Benchmarks of ppl-vae against the alternatives a user would pick: ``python scripts/bench.py
svi|gmm|gmm-memory|eval|all``.

The same as ``ppl-vae bench``; see :mod:`ppl_vae.commands.bench` and ``--help``.
"""

import sys

from ppl_vae.commands import run
from ppl_vae.commands.bench import main

if __name__ == "__main__":
    sys.exit(run(main))
