"""Trained runs loaded back from Python, without a trainer: :func:`load_run`
(``ppl_vae.load_run``) gives the program (the built-in VAE or your own) in eval mode, ready
for ``pyro.infer.Predictive(run.program.model, guide=run.program.guide, ...)``, with the
run's configuration, metrics and, on first use, its data.
"""

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pyro
import torch

from ppl_vae.build import data_as_trained, load_data
from ppl_vae.config import config_from_text
from ppl_vae.device import resolve_device
from ppl_vae.errors import CheckpointError
from ppl_vae.inference.runs import CHECKPOINT, RunFolder, config_path
from ppl_vae.programs import build_program
from ppl_vae.vae import Dims


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
        return load_data(self.config["data"], seed=self.config["train"]["seed"])

    @cached_property
    def data(self):
        """The data as the run's training saw them: on the device, the test set binarised
        with the run's seed where the model needs it."""
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
