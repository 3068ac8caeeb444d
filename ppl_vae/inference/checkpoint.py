"""Checkpoints: written atomically, loaded without running code, stamped with config and version.

A checkpoint is a dict of tensors and plain Python values (no pickled objects), so it loads
with ``torch.load(..., weights_only=True)``: opening a checkpoint cannot execute code.
"""

import os
import tempfile
from pathlib import Path

import torch

from ppl_vae import __version__
from ppl_vae.errors import CheckpointError

FORMAT = 1


def save_checkpoint(path, state):
    """Write ``state`` to ``path`` atomically: a temp file in the same folder, then a rename.

    A crash mid-write leaves the previous checkpoint as it was.
    """
    path = Path(path)
    state = {"format": FORMAT, "version": __version__, **state}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint written by :func:`save_checkpoint`.

    Raises
    ------
    CheckpointError
        If the file is missing, corrupt, holds anything but weights and plain values, or
        was not written by ppl-vae.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for a bad file; all mean the same here
        # torch's own text runs to paragraphs and advises weights_only=False, which would let
        # the file run code: only its type is quoted.
        raise CheckpointError(f"cannot read checkpoint {path}: it is truncated, corrupt or "
                              f"not a ppl-vae checkpoint ({type(err).__name__}); train "
                              "again or restore the file from a copy") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a ppl-vae checkpoint (format {FORMAT})")
    return state
