"""The standard colour image sets, read from torchvision's folder layout under ``data_dir``
without importing torchvision (whose import can fail on a CPU-only torch); torchvision is
only asked to download, and only on request (``--download``), as for MNIST.

- ``cifar10``: ``cifar-10-batches-py/`` (the official 50,000/10,000 split), 32x32x3;
- ``svhn``: ``svhn/train_32x32.mat`` and ``svhn/test_32x32.mat``, 32x32x3, digit 0 as 0;
- ``celeba64``: ``celeba/img_align_celeba/*.jpg`` and ``celeba/list_eval_partition.txt``
  (partition 0 trains, 2 tests), each face cropped to its centre 148x148 square and
  resized to 64x64 (bilinear).

All are uint8 (N, 3*H*W), channel-major, with ``image_shape`` (3, H, W).
"""

import io
import pickle
from pathlib import Path

import numpy as np
import torch

from ppl_vae.data.arrays import Dataset
from ppl_vae.data.images import read_image
from ppl_vae.errors import DataError

CELEBA_CROP, CELEBA_SIZE = 148, 64
# name -> (torchvision class, folder under data_dir, the files that must be there)
STANDARD_SETS = {
    "cifar10": ("CIFAR10", "cifar-10-batches-py",
                [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]),
    "svhn": ("SVHN", "svhn", ["train_32x32.mat", "test_32x32.mat"]),
    "celeba64": ("CelebA", "celeba", ["img_align_celeba", "list_eval_partition.txt"]),
}


class _ArraysOnly(pickle.Unpickler):
    # CIFAR's batches are pickled dicts of numpy arrays: nothing else may be built.
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy", "ndarray"),
               ("numpy", "dtype"), ("numpy._core.multiarray", "_reconstruct")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a data file")
        return super().find_class(module, name)


def _cifar_batch(path):
    try:
        batch = _ArraysOnly(io.BytesIO(path.read_bytes()), encoding="latin1").load()
        x = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3 * 32 * 32)
        y = np.asarray(batch["labels"], dtype=np.int64)
    except Exception as exc:
        raise DataError(f"{path}: not a CIFAR-10 batch ({type(exc).__name__}: {exc})") from None
    return x, y


def _read_cifar10(folder):
    train = [_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    test = _cifar_batch(folder / "test_batch")
    return (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]),
            *test, (3, 32, 32))


def _svhn_part(path):
    from scipy.io import loadmat

    try:
        mat = loadmat(path)
        x, y = mat["X"], mat["y"].reshape(-1).astype(np.int64)
    except Exception as exc:
        raise DataError(f"{path}: not an SVHN .mat file ({type(exc).__name__}: {exc})") from None
    # stored (H, W, C, N); label 10 is the digit 0
    return np.ascontiguousarray(np.transpose(x, (3, 2, 0, 1)).reshape(len(y), -1)), y % 10


def _read_svhn(folder):
    return (*_svhn_part(folder / "train_32x32.mat"), *_svhn_part(folder / "test_32x32.mat"),
            (3, 32, 32))


def _read_celeba64(folder):
    parts = {0: [], 2: []}
    for line in (folder / "list_eval_partition.txt").read_text().split("\n"):
        fields = line.split()
        if len(fields) == 2 and int(fields[1]) in parts:
            parts[int(fields[1])].append(folder / "img_align_celeba" / fields[0])
    x = [np.stack([read_image(f, "RGB", (CELEBA_SIZE,) * 2, crop=CELEBA_CROP).reshape(-1)
                   for f in parts[p]]) for p in (0, 2)]
    return x[0], None, x[1], None, (3, CELEBA_SIZE, CELEBA_SIZE)


READERS = {"cifar10": _read_cifar10, "svhn": _read_svhn, "celeba64": _read_celeba64}


def _download(name, root, folder, files):
    cls_name = STANDARD_SETS[name][0]
    by_hand = (f"place {', '.join(files)} in {folder} by hand, e.g. copied from a machine "
               "with network access, and run again without --download")
    try:
        import torchvision
    except Exception as exc:  # a CPU torch with a CUDA torchvision fails with RuntimeError
        raise DataError(f"{name}: --download needs torchvision, whose import failed "
                        f"({type(exc).__name__}); " + by_hand) from None
    where = {"svhn": {"root": str(folder)}}.get(name, {"root": str(root)})
    try:
        for split in (("train", "test") if name == "svhn" else ("all",) if name == "celeba64"
                      else (None,)):
            kwargs = {"split": split} if split else {"train": True}
            getattr(torchvision.datasets, cls_name)(**where, **kwargs, download=True)
    except Exception as exc:
        raise DataError(f"{name}: download failed ({type(exc).__name__}: {exc}); "
                        + by_hand) from None


def load_standard(name, *, data_dir=None, download=False, test_fraction=0.2, seed=0):
    """``cifar10``, ``svhn`` or ``celeba64`` from ``data_dir`` (see the module's text); the
    official split (``test_fraction`` and ``seed`` are ignored)."""
    root = Path("data" if data_dir is None else data_dir).expanduser().absolute()
    _, sub, files = STANDARD_SETS[name]
    folder = root / sub
    missing = [f for f in files if not (folder / f).exists()]
    if missing and download:
        _download(name, root, folder, files)
        missing = [f for f in files if not (folder / f).exists()]
    if missing:
        raise DataError(f"{name}: files not found in {folder}: missing {', '.join(missing)}; "
                        f"pass --download to fetch them there, or --data-dir DIR for a folder "
                        f"that holds {sub}/")
    x_train, y_train, x_test, y_test, shape = READERS[name](folder)

    def tensor(a):
        return None if a is None else torch.from_numpy(a)

    return Dataset(name, tensor(x_train), tensor(x_test), tensor(y_train), tensor(y_test), shape,
                   "8-bit colour images kept as uint8 (N, 3, H, W), scaled per batch")
