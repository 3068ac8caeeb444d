"""EM vs mean-field VI vs amortized VI on one data set: ``python scripts/compare.py --quick``.

The same as ``ppl-vae compare``; ``--help`` lists the flags, ppl_vae/evaluation/compare.py says what
each method is and how it is scored.
"""

import sys

from ppl_vae.commands.compare import main

if __name__ == "__main__":
    sys.exit(main(prog="compare.py"))
