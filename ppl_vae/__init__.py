"""ppl-vae: variational autoencoders as Pyro programs, beside EM and mean-field VI."""

__version__ = "0.1.0"
