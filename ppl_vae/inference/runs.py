"""Run folders: where a training run writes ``config.toml``, ``metrics.csv`` and
``checkpoint.pt``, and from which it is resumed.

The metrics table is a copy of what the checkpoint holds, written right after it, so that
a folder always describes the checkpoint's state.
"""

import csv
import re
from pathlib import Path

from ppl_vae.errors import CheckpointError, ConfigError
from ppl_vae.inference.checkpoint import load_checkpoint, save_checkpoint

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.toml"
METRICS_FILE = "metrics.csv"


class RunFolder:
    """One run's folder.

    Parameters
    ----------
    path : str or Path
    config_text : str
        The resolved configuration as TOML, written as ``config.toml`` and into every
        checkpoint.
    meta : dict, optional
        Plain values stored in every checkpoint beside the trainer's state (the model's
        sizes, say), for whoever rebuilds the run.
    """

    def __init__(self, path, config_text, meta=None):
        self.path = Path(path)
        self.config_text = config_text
        self.meta = dict(meta or {})

    @property
    def checkpoint(self):
        return self.path / CHECKPOINT

    def create(self):
        """Make the folder and write ``config.toml``."""
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / CONFIG).write_text(self.config_text)

    def save(self, state, metrics, metric_names):
        """Write the checkpoint (atomically), then ``metrics.csv`` from the same rows."""
        save_checkpoint(self.checkpoint, {**self.meta, "config": self.config_text, **state})
        with open(self.path / METRICS_FILE, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=metric_names)
            writer.writeheader()
            writer.writerows(metrics)

    def load(self):
        """The last checkpoint's state."""
        return load_checkpoint(self.checkpoint)


def config_path(run_dir):
    """``run_dir/config.toml``, or CheckpointError if ``run_dir`` is not a run folder."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a run folder: it has no {CONFIG}")
    return path


def new_run_dir(out, name, *, root="runs", changes=None):
    """The folder a new run writes to.

    An explicit ``out`` must be new or empty: an existing run is never written over. Without
    ``out`` the run goes to ``runs/<name>`` followed by what ``changes`` (``{"prior": "vamp",
    "lr": 0.003}``: what the command line changed from the model file) sets, as in
    ``runs/vae-prior=vamp-lr=0.003``; or to that name with ``-2``, ``-3``, ... if taken.
    """
    if out is not None:
        out = Path(out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ConfigError(f"{out} already exists and is not empty; choose another --out, "
                              f"or continue that run with --resume {out}")
        return out
    for key, value in (changes or {}).items():
        if isinstance(value, list | tuple):
            value = ",".join(map(str, value)) or "none"
        # A data file is named by its file name; nothing in a name may start a sub-folder.
        value = re.sub(r"[^\w.,+=-]", "_", Path(str(value)).name)
        name = f"{name}-{key}={value}"
    base = Path(root) / name
    candidate, k = base, 1
    while candidate.exists():
        k += 1
        candidate = base.with_name(f"{base.name}-{k}")
    return candidate
