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

:func:`load_run` gives back a trained run (the built-in VAE's or a program's) without a
trainer: ``ppl_vae.load_run(run_dir).program`` is in eval mode, ready for
``pyro.infer.Predictive(run.program.model, guide=run.program.guide, ...)``.
"""

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from ppl_vae.errors import CheckpointError, ConfigError
from ppl_vae.registry import lookup
from ppl_vae.vae import Dims, build_vae


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


@dataclass
class Run:
    """A trained run loaded back (:func:`load_run`).

    Attributes
    ----------
    program : nn.Module
        The trained program (the built-in VAE or your own) in eval mode, on ``device``.
    config : dict
        The run's resolved configuration.
    metrics : list of dict
        ``metrics.csv``'s rows, one per epoch.
    dims : Dims
    run_dir : Path
    device : torch.device
    """

    program: torch.nn.Module
    config: dict
    metrics: list
    dims: Dims
    run_dir: Path
    device: torch.device
    classes: list | None = None

    @cached_property
    def dataset(self):
        """The run's data as loaded (CPU, labels kept), read on first use."""
        from ppl_vae.build import load_data

        return load_data(self.config["data"], seed=self.config["train"]["seed"])

    @cached_property
    def data(self):
        """The data as the run's training saw them: on the device, the test set binarised
        with the run's seed where the model needs it."""
        from ppl_vae.build import data_as_trained

        return data_as_trained(self.config, self.dataset, self.classes, self.device)

    def log_likelihood(self, x=None, *, num_samples=1000):
        """Importance-sampled log p(x) per example (the test set by default), by the
        generic path (any program)."""
        from ppl_vae.evaluation.generic import log_likelihood

        x = self.data.x_test if x is None else x
        return log_likelihood(self.program, x, num_samples=num_samples)

    @property
    def last(self):
        """The last row of metrics (the last epoch's numbers)."""
        return self.metrics[-1] if self.metrics else {"epoch": 0, "test_elbo": math.nan}


def load_run(run_dir, *, device="auto"):
    """A trained run, from its folder: the program with the last checkpoint's parameters
    in eval mode, its resolved config and metrics, the data on demand.

    No trainer, optimizer or data are built; the program is rebuilt from the checkpoint's
    own copy of the configuration and sizes.

    Raises
    ------
    CheckpointError
        If ``run_dir`` holds no run, or no checkpoint yet.
    """
    import pyro

    from ppl_vae.config import config_from_text
    from ppl_vae.device import resolve_device
    from ppl_vae.inference.runs import CHECKPOINT, RunFolder, config_path

    if not (Path(run_dir) / CHECKPOINT).exists():
        config_path(run_dir)  # no run at all: its own message
        raise CheckpointError(f"no checkpoint in {run_dir}: the run ended before its first "
                              f"epoch; continue it with --resume {run_dir}")
    state = RunFolder(run_dir, "").load()
    config = config_from_text(state["config"], source=f"the checkpoint in {run_dir}")
    dims = Dims(**{**state["dims"], "image_shape": _shape(state["dims"]["image_shape"])})
    device = resolve_device(device)
    pyro.set_rng_seed(config["train"]["seed"])
    program = build_program(dims, config["model"]).to(device)
    try:
        program.load_state_dict(state["model"])
    except RuntimeError as err:
        raise CheckpointError(f"the checkpoint in {run_dir} does not fit its program: "
                              f"{str(err).splitlines()[0]}") from None
    program.eval()
    return Run(program, config, list(state["metrics"]), dims, Path(run_dir), device,
               state.get("classes"))


def _shape(shape):
    return None if shape is None else tuple(shape)
