"""Evaluate a trained run: ``python scripts/evaluate.py runs/vae``.

The same as ``ppl-vae eval``: test ELBO and its terms, importance-sampled log p(x) with
K = 5000, active units and the inference gaps, as eval.md and eval.csv in the run folder.
``--help`` lists the flags.
"""

import sys

from ppl_vae.commands import eval_main

if __name__ == "__main__":
    sys.exit(eval_main())
