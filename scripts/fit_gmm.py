"""Fit a Gaussian mixture by EM, CAVI, Pyro SVI or NUTS; see ppl_vae.commands.gmm."""
import sys

from ppl_vae.commands.gmm import main

sys.exit(main(prog="fit_gmm.py"))
