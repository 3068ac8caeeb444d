"""Benchmarks of ppl-vae against the alternatives a user would pick: ``python scripts/bench.py
svi|gmm|gmm-memory|eval|all``.

The same as ``ppl-vae bench``; see :mod:`ppl_vae.bench` and ``--help``.
"""

import sys

from ppl_vae.bench import main
from ppl_vae.cli import run

if __name__ == "__main__":
    sys.exit(run(main))
