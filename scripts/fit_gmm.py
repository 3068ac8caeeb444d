"""Fit a Gaussian mixture by EM, CAVI, Pyro SVI or NUTS; see ppl_vae.mixture.cli."""
import sys

from ppl_vae.mixture.cli import main

sys.exit(main(prog="fit_gmm.py"))
