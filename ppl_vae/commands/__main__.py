"""``python -m ppl_vae.commands ...``: the ``ppl-vae`` command."""

import sys

from ppl_vae.commands import main

sys.exit(main())
