"""ppl_vae.inference.checkpoint: atomic writes, safe loads, whole refusals.

Written from the survivors of a mutation run on checkpoint.py: each test names the wrong
line it catches.
"""

import fnmatch

import pytest
import torch

from ppl_vae import __version__
from ppl_vae.errors import CheckpointError
from ppl_vae.inference import checkpoint
from ppl_vae.inference.checkpoint import FORMAT, load_checkpoint, save_checkpoint


class NotWeights:
    """A pickled object of a class: weights-only loading must refuse it."""


def test_a_checkpoint_comes_back_stamped_with_format_and_version(tmp_path):
    path = tmp_path / "checkpoint.pt"
    weights = torch.randn(3, 2)
    save_checkpoint(path, {"weights": weights, "epoch": 4})
    state = load_checkpoint(path)
    assert (state["format"], state["version"], state["epoch"]) == (FORMAT, __version__, 4)
    assert torch.equal(state["weights"], weights) and state["weights"].device.type == "cpu"


def test_load_maps_tensors_to_the_location_asked_for(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"weights": torch.ones(2)})
    assert load_checkpoint(path, map_location="meta")["weights"].device.type == "meta"


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1})
    seen = []

    def failing_replace(source, target):
        seen.append(source)
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"epoch": 2})
    (tmp,) = seen
    # A hidden sibling named as RunFolder's clean-up looks for stale ones (".NAME.*.tmp"):
    # the same folder keeps the final rename atomic.
    assert str(tmp).startswith(str(tmp_path) + "/")
    assert fnmatch.fnmatch(tmp.rsplit("/", 1)[1], ".checkpoint.pt.*.tmp")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1


def test_files_that_are_not_checkpoints_are_refused_with_one_whole_line(tmp_path):
    missing = tmp_path / "none.pt"
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(missing)
    assert str(error.value) == f"no checkpoint at {missing}"

    for name, content in [("list.pt", [1, 2]), ("format.pt", {"format": FORMAT + 1})]:
        torch.save(content, tmp_path / name)
        with pytest.raises(CheckpointError) as error:
            load_checkpoint(tmp_path / name)
        assert str(error.value) == f"{tmp_path / name} is not a ppl-vae checkpoint (format 1)"

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(Exception) as torch_error:  # the type torch raises, quoted by name
        torch.load(garbage, weights_only=True)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(garbage)
    assert str(error.value) == (
        f"cannot read checkpoint {garbage}: it is truncated, corrupt or not a ppl-vae "
        f"checkpoint ({torch_error.type.__name__}); train again or restore the file from a copy")


def test_a_pickled_object_is_refused_not_run(tmp_path):
    path = tmp_path / "object.pt"
    torch.save({"format": FORMAT, "object": NotWeights()}, path)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(path)
