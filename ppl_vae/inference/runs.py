"""Run folders: where a training run writes ``config.toml``, ``metrics.csv`` and
``checkpoint.pt``, and from which it is resumed; and the claim every command (train, gmm,
compare) takes on its output folder before it starts.

The checkpoint holds the metrics rows; ``metrics.csv`` is a copy written atomically right
after it, and rewritten from it when a run is resumed, so that after a kill at any moment
the folder describes the checkpoint's state (or, before the first checkpoint, nothing
worth keeping: a fresh run with the same ``--out`` takes the folder over).
"""

import csv
import fcntl
import io
import os
import re
import shutil
import tempfile
from pathlib import Path

from ppl_vae.errors import CheckpointError, ConfigError
from ppl_vae.inference.checkpoint import load_checkpoint, save_checkpoint

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.toml"
METRICS_FILE = "metrics.csv"
LOCK = ".ppl-vae.lock"


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
        sizes, the data's fingerprint, say), for whoever rebuilds the run.
    """

    def __init__(self, path, config_text, meta=None):
        self.path = Path(path)
        self.config_text = config_text
        self.meta = dict(meta or {})

    @property
    def checkpoint(self):
        return self.path / CHECKPOINT

    def start(self, metrics=(), metric_names=()):
        """Before the first epoch of a run or a resumption: drop the temp files of a killed
        write, write ``config.toml``, and ``metrics.csv`` from the checkpoint's ``metrics``."""
        self.path.mkdir(parents=True, exist_ok=True)
        for stale in self.path.glob(f".{CHECKPOINT}.*.tmp"):
            stale.unlink(missing_ok=True)
        write_atomic(self.path / CONFIG, self.config_text)
        if metrics:
            write_atomic(self.path / METRICS_FILE, metrics_csv(metrics, metric_names))

    def save(self, state, metrics, metric_names):
        """Write the checkpoint (atomically, holding the metrics rows), then ``metrics.csv``
        from the same rows (atomically)."""
        save_checkpoint(self.checkpoint, {**self.meta, "config": self.config_text, **state})
        write_atomic(self.path / METRICS_FILE, metrics_csv(metrics, metric_names))

    def load(self):
        """The last checkpoint's state."""
        return load_checkpoint(self.checkpoint)


def metrics_csv(rows, names):
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(names))
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def write_atomic(path, text):
    """Write ``text`` to ``path`` through a temp file in the same folder and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def config_path(run_dir):
    """``run_dir/config.toml``, or CheckpointError if ``run_dir`` is not a run folder."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a run folder: it has no {CONFIG}")
    return path


class Claim:
    """A command's hold on its output folder, from :func:`claim_run_dir` to the end of a
    ``with`` block.

    The hold is an exclusive ``flock`` on a lock file in the folder: the kernel drops it
    when the process ends, however it ends, so a folder whose run was killed can be taken
    over and one whose run is alive cannot. A fresh claim whose command fails before a
    checkpoint exists leaves no folder behind (or the empty folder it was given).
    """

    def __init__(self, path, fd, *, created, fresh):
        self.path, self._fd, self.created, self.fresh = Path(path), fd, created, fresh

    def __enter__(self):
        return self.path

    def __exit__(self, kind, error, traceback):
        self.release(failed=kind is not None)
        return False

    def release(self, *, failed=False):
        if self._fd is None:
            return
        if failed and self.fresh and not (self.path / CHECKPOINT).exists():
            # Everything in the folder is this command's own (it was empty, or held only
            # the config of a run killed before its first checkpoint).
            for entry in self.path.iterdir():
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink(missing_ok=True)
            if self.created:
                self.path.rmdir()
        else:
            (self.path / LOCK).unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None


def claim_run_dir(out, name, *, root="runs", resume=False):
    """Claim the folder a command writes to; use as ``with claim_run_dir(...) as path:``.

    An explicit ``out`` must be new or empty (or hold only the ``config.toml`` of a run
    killed before its first checkpoint): an existing run is never written over. Without
    ``out`` the command goes to ``runs/<name>``, or ``runs/<name>-2``, ``-3``, ... if
    taken. ``resume=True`` claims the existing run folder ``out`` to continue it. A folder
    that another live process holds, or that cannot be written, is refused.
    """
    if out is None:
        base, k = Path(root) / name, 1
        _make_parent(base)
        while True:
            candidate = base if k == 1 else base.with_name(f"{base.name}-{k}")
            try:
                os.mkdir(candidate)  # atomic: of two processes, one makes it
            except FileExistsError:
                k += 1
                continue
            except OSError as err:
                raise _unwritable(candidate, err) from None
            return Claim(candidate, _lock(candidate), created=True, fresh=True)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} exists and is not a folder")
    created = False
    if not resume:
        _make_parent(out)
        try:
            os.mkdir(out)
            created = True
        except FileExistsError:
            pass
        except OSError as err:
            raise _unwritable(out, err) from None
    elif not out.is_dir():
        raise CheckpointError(f"{out} is not a run folder: it does not exist")
    fd = _lock(out)
    if not resume and not _reusable(out):
        (out / LOCK).unlink()  # ours while we hold it; the folder is left as it was
        os.close(fd)
        raise ConfigError(f"{out} already exists and is not empty; choose another --out, "
                          f"or continue that run with --resume {out}")
    return Claim(out, fd, created=created, fresh=not resume)


def _reusable(path):
    """Empty, or what a run killed before its first checkpoint leaves."""
    return all(p.name in (CONFIG, LOCK) or (p.name.startswith(f".{CHECKPOINT}.")
                                            and p.name.endswith(".tmp"))
               for p in path.iterdir())


def _lock(path):
    lock = path / LOCK
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as err:
            raise _unwritable(path, err) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(f"{path} is in use by another run (a process holds "
                              f"{LOCK}); choose another --out, or wait for it") from None
        try:  # the holder removes the lock file when it ends; then take the new one
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _make_parent(path):
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _unwritable(path, err) from None


def _unwritable(path, err):
    return ConfigError(f"cannot write to {path}: {err.strerror or err}; choose another --out")


def run_name(name, changes=None):
    """``name`` followed by what ``changes`` (``{"prior": "vamp", "lr": 0.003}``: what the
    command line changed from the model file) sets, as in ``vae-prior=vamp-lr=0.003``."""
    for key, value in (changes or {}).items():
        if isinstance(value, list | tuple):
            value = ",".join(map(str, value)) or "none"
        # A data file is named by its file name; nothing in a name may start a sub-folder.
        value = re.sub(r"[^\w.,+=-]", "_", Path(str(value)).name)
        name = f"{name}-{key}={value}"
    return name
