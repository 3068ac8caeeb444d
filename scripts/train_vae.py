"""Train a VAE with SVI: ``python scripts/train_vae.py --model vae --epochs 50``.

The same as ``ppl-vae train``; ``--help`` lists the flags.
"""

import sys

from ppl_vae.commands import train_main

if __name__ == "__main__":
    sys.exit(train_main())
