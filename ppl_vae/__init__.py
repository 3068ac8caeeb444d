"""ppl-vae: variational autoencoders as Pyro programs, beside EM and mean-field VI."""

__version__ = "0.1.0"


def load_run(run_dir, *, device="auto"):
    """A trained run from its folder: ``.program`` (eval mode), ``.config``, ``.metrics``,
    ``.data`` (read on first use). See :func:`ppl_vae.load.load_run`."""
    from ppl_vae.load import load_run as _load_run

    return _load_run(run_dir, device=device)
