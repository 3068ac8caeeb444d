"""Programs of your own, and trained runs loaded back from Python.

A **program** is any ``nn.Module`` with ``model(x, y=None, idx=None)`` and ``guide(x,
y=None, idx=None)`` written in Pyro, its per-example sites inside
``pyro.plate("data", N, subsample=idx)`` (N = ``dims.num_data``), its parameters module
parameters. A model file names one with ``[model] program = "path/to/file.py:Class"`` (or
``package.module:Class``), the command line with ``--program``; it is built as
``Class(dims, **program_options)`` with the same :class:`~ppl_vae.vae.Dims` the built-in
parts get. Optional attributes: ``support`` ("unit" or "real", the data it models; else
the ``likelihood`` setting's), and the methods ``sample(n)``, ``reconstruct(x)`` and
``encode(x)`` (a distribution with a ``mean``), which turn on the figures that need them.
Everything else is the toolkit's: :class:`~ppl_vae.inference.loop.Trainer`, checkpoints,
exact resume, ``ppl-vae eval`` (through :mod:`ppl_vae.evaluation.generic`).

:func:`ppl_vae.load.load_run` gives a trained one back (``ppl_vae.load_run``).
"""

from ppl_vae.errors import ConfigError
from ppl_vae.registry import lookup
from ppl_vae.vae import build_vae


def is_program(model_cfg):
    """Whether ``[model]`` names a program of its own instead of the VAE's parts."""
    return bool(model_cfg.get("program"))


def model_support(model_cfg):
    """The data a model file's model scores: a program's ``support`` attribute if it has
    one, else the likelihood part's."""
    if is_program(model_cfg):
        support = getattr(lookup("program", model_cfg["program"]), "support", None)
        if support is not None:
            return support
    return lookup("likelihood", model_cfg["likelihood"]).support


def build_program(dims, model_cfg):
    """The program of ``[model]``: ``Class(dims, **program_options)``, or the VAE of its
    parts when no program is named."""
    if not is_program(model_cfg):
        parts = {k: v for k, v in model_cfg.items()
                 if k not in ("latent_dim", "conditional", "program", "program_options")}
        return build_vae(dims, **parts)
    cls = lookup("program", model_cfg["program"])
    try:
        return cls(dims, **model_cfg["program_options"])
    except TypeError as err:
        raise ConfigError(f"bad program_options for {model_cfg['program']!r}: {err}") from None
    except ValueError as err:  # the program's own refusal of its sizes or options
        raise ConfigError(f"cannot build program {model_cfg['program']!r}: {err}") from None


def check_program_settings(config):
    """ConfigError for settings that only the built-in VAE reads, when a program is named."""
    if not is_program(config["model"]):
        return
    if config["train"]["kl_schedule"] != "constant":
        raise ConfigError("train.kl_schedule anneals the built-in VAE's KL term; a program "
                          "scales its own terms (poutine.scale): set kl_schedule = "
                          "\"constant\"")
    if config["model"]["beta"] != 1.0:
        raise ConfigError("model.beta weights the built-in VAE's KL term; a program scales "
                          "its own terms (poutine.scale): leave beta = 1")
