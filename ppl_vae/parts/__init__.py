"""The swappable parts of a VAE, one concept per module: priors p(z), guides q(z | x),
likelihoods p(x | z), the nets of encoders and decoders, the corruptions of the denoising
VAE, and the per-datapoint optimisation that semi-amortized guides and evaluation share.
Each is registered under a name in :mod:`ppl_vae.registry`."""
