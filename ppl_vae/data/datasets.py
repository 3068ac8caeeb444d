"""The data sets: built-in names, MNIST-family IDX files, and users' array files.

Every loader returns a :class:`Dataset` of flattened float32 CPU tensors. Built-in names
live in :data:`DATASETS`; :func:`load_dataset` also accepts a path to a ``.npz`` or
``.npy`` file. MNIST and Fashion-MNIST are read from torchvision's folder layout by a
small IDX reader here, so that reading files never needs torchvision (whose import can
fail on a CPU-only torch); torchvision is only asked to download, and only on request.

The ``ppca`` data set is drawn from a random probabilistic-PCA model
(:func:`ppl_vae.data.ppca.make_ppca`), whose log-likelihood and maximum-likelihood fit are
known in closed form.
"""

import gzip
import math
import struct
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ppl_vae.data.arrays import Dataset, split_dataset, split_indices
from ppl_vae.data.checks import check_data
from ppl_vae.data.images import (
    RESIZE_RULE,
    channels_first,
    folder_geometry,
    image_files,
    read_folder,
    read_layout,
)
from ppl_vae.data.ppca import make_ppca
from ppl_vae.data.shapes import load_shapes
from ppl_vae.data.standard import STANDARD_SETS, load_standard
from ppl_vae.data.stream import FolderRows, MappedRows
from ppl_vae.errors import DataError

DEFAULT_DATA_DIR = "data"
ARRAY_SUFFIXES = (".npz", ".npy")

# Size of the built-in "ppca" data set: small enough for CPU tests, large enough that the
# MLE is close to the truth.
PPCA_DEFAULTS = {"num_data": 2000, "data_dim": 10, "latent_dim": 2, "noise_std": 0.5}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


# --- built-in data sets ---------------------------------------------------------------------


def load_digits(*, data_dir=None, download=False, test_fraction=0.2, seed=0) -> Dataset:
    """scikit-learn's 1,797 8x8 handwritten digits, pixels scaled from 0..16 to [0, 1].

    Shipped inside scikit-learn, so no download; ``data_dir`` and ``download`` are
    accepted for a uniform signature and ignored. The train/test split is a seeded
    random permutation.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    # Each pixel counts the set bits of a 4x4 block of a 32x32 bitmap, so 16 is its maximum.
    x = torch.tensor(bunch.data / 16.0, dtype=torch.float32)
    y = torch.tensor(bunch.target, dtype=torch.int64)
    return split_dataset("digits", x, y, tuple(bunch.images.shape[1:]), test_fraction, seed)


def load_ppca(*, data_dir=None, download=False, test_fraction=0.2, seed=0) -> Dataset:
    """Real-valued synthetic data from :func:`make_ppca` with :data:`PPCA_DEFAULTS`.

    ``seed`` draws both the true parameters and the split.
    """
    x, _ = make_ppca(**PPCA_DEFAULTS, seed=seed)
    return split_dataset("ppca", x, None, None, test_fraction, seed)


# --- IDX files (MNIST, Fashion-MNIST) -------------------------------------------------------

_IDX_UBYTE = 0x08  # the only element type the MNIST-family files use
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Dataset name -> torchvision class, whose name is also its folder under data_dir.
IDX_DATASETS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}


def read_idx(path, *, ndim: int) -> np.ndarray:
    """Read one IDX file of unsigned bytes, gzipped or plain.

    Parameters
    ----------
    path : str or Path
    ndim : int
        The number of dimensions the file must have (3 for images, 1 for labels).

    Returns
    -------
    np.ndarray
        uint8, with the shape stored in the file's header.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # gzip's own magic, whatever the file is called
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read IDX file ({_one_line(exc)})") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != _IDX_UBYTE or raw[3] != ndim:
        raise DataError(
            f"{path}: not an IDX file of {ndim}-D unsigned bytes (magic number "
            f"{raw[:4].hex() or 'missing'}, expected 000008{ndim:02x}); the file is corrupt "
            "or of another kind"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX file ({len(raw)} bytes, header needs {header})")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = math.prod(shape)
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: IDX header promises shape {shape} ({expected} bytes) but the file holds "
            f"{len(raw) - header}; the file is truncated or corrupt, delete it and fetch it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _idx_paths(raw_dir: Path) -> dict[str, Path | None]:
    found = {}
    for stem in (*IDX_FILES["train"], *IDX_FILES["test"]):
        candidates = [raw_dir / stem, raw_dir / f"{stem}.gz"]
        found[stem] = next((p for p in candidates if p.is_file()), None)
    return found


def _download_idx(name: str, root: Path, raw_dir: Path, expected: str) -> None:
    by_hand = (
        f"place {expected} (plain or .gz) in {raw_dir} by hand, e.g. copied from a machine "
        "with network access, and run again without --download"
    )
    try:
        import torchvision
    except Exception as exc:  # a CPU torch with a CUDA torchvision fails with RuntimeError
        raise DataError(
            f"{name}: --download needs torchvision, whose import failed ({_one_line(exc)}); "
            + by_hand
        ) from None
    try:
        getattr(torchvision.datasets, IDX_DATASETS[name])(root=str(root), train=True, download=True)
    except Exception as exc:
        raise DataError(f"{name}: download failed ({_one_line(exc)}); " + by_hand) from None


def _load_idx_dataset(name: str, data_dir, download: bool) -> Dataset:
    root = Path(DEFAULT_DATA_DIR if data_dir is None else data_dir).expanduser().absolute()
    raw_dir = root / IDX_DATASETS[name] / "raw"
    paths = _idx_paths(raw_dir)
    missing = [stem for stem, p in paths.items() if p is None]
    if missing and download:
        _download_idx(name, root, raw_dir, ", ".join(paths))
        paths = _idx_paths(raw_dir)
        missing = [stem for stem, p in paths.items() if p is None]
    if missing:
        raise DataError(
            f"{name}: files not found in {raw_dir}: missing {', '.join(missing)} (plain or .gz); "
            f"pass --download to fetch them there, or --data-dir DIR for a folder that holds "
            f"{IDX_DATASETS[name]}/raw/"
        )
    parts = {}
    for part, (images_stem, labels_stem) in IDX_FILES.items():
        images = read_idx(paths[images_stem], ndim=3)
        labels = read_idx(paths[labels_stem], ndim=1)
        if len(images) != len(labels):
            raise DataError(
                f"{name}: {paths[images_stem].name} holds {len(images)} images but "
                f"{paths[labels_stem].name} holds {len(labels)} labels"
            )
        # Copy: frombuffer's array is read-only, which torch.from_numpy warns about.
        x = torch.from_numpy(images.reshape(len(images), -1).copy()).to(torch.float32) / 255
        parts[part] = (x, torch.from_numpy(labels.astype(np.int64)))
        image_shape = tuple(images.shape[1:])
    if parts["train"][0].shape[1] != parts["test"][0].shape[1]:
        raise DataError(f"{name}: train and test images in {raw_dir} differ in size")
    return Dataset(
        name, parts["train"][0], parts["test"][0], parts["train"][1], parts["test"][1], image_shape
    )


def load_mnist(*, data_dir=None, download=False, test_fraction=0.2, seed=0) -> Dataset:
    """MNIST from ``{data_dir}/MNIST/raw/``, the official 60,000/10,000 split, pixels in [0, 1].

    ``test_fraction`` and ``seed`` are ignored: the split is the official one.
    """
    return _load_idx_dataset("mnist", data_dir, download)


def load_fashion_mnist(*, data_dir=None, download=False, test_fraction=0.2, seed=0) -> Dataset:
    """Fashion-MNIST from ``{data_dir}/FashionMNIST/raw/``, the official split, pixels in [0, 1].

    ``test_fraction`` and ``seed`` are ignored: the split is the official one.
    """
    return _load_idx_dataset("fashion-mnist", data_dir, download)


DATASETS: dict[str, Callable[..., Dataset]] = {
    "digits": load_digits,
    "mnist": load_mnist,
    "fashion-mnist": load_fashion_mnist,
    "ppca": load_ppca,
    "shapes": load_shapes,
    **{name: partial(load_standard, name) for name in STANDARD_SETS},
}


# --- user files -----------------------------------------------------------------------------

_NPZ_LAYOUTS = (
    {"x"},
    {"x", "y"},
    {"x_train", "x_test"},
    {"x_train", "x_test", "y_train", "y_test"},
)


def _array(arrays, key: str, where: str) -> np.ndarray:
    try:
        a = arrays[key] if key else arrays
    except ValueError as exc:  # object arrays refuse to load without pickle
        raise DataError(
            f"{where}: cannot read {key!r} ({_one_line(exc)}); "
            "expected numeric arrays saved without pickle"
        ) from None
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_) or np.iscomplexobj(a):
        raise DataError(f"{where}: {key or 'the array'} has dtype {a.dtype}; expected real numbers")
    return a


def _features(a: np.ndarray, what: str, *, lazy=False, rows=None):
    """(x as (N, D) rows, the shape of one example if it had several axes, how the values
    were read). uint8 stays uint8 (8-bit images, scaled per batch); other values become
    float32, checked for NaN and inf. ``lazy`` keeps uint8 rows ``rows`` of a memory map
    on disk (:class:`~ppl_vae.data.stream.MappedRows`)."""
    if a.ndim < 2:
        raise DataError(f"{what}: expected shape (N, D) or (N, H, W); got {a.shape}")
    image_shape, channels_last, layout = read_layout(a.shape)
    if a.dtype == np.uint8:
        read_as = f"uint8 data read as {layout} 8-bit images, kept as uint8, scaled per batch"
        if lazy:
            return MappedRows(a, np.arange(len(a)) if rows is None else rows,
                              channels_last=channels_last), image_shape, read_as
        # A copy: the memory map is read-only, and read whole here.
        x = torch.from_numpy(np.array(channels_first(a, channels_last), order="C"))
        return x, image_shape, read_as
    # Checked after the cast so that values too large for float32 show up as inf too.
    with np.errstate(over="ignore"):
        x = np.array(channels_first(a, channels_last), dtype=np.float32, order="C")
    x = torch.from_numpy(x)
    check_data(x, support="real", name=what)
    read_as = f"read as {layout}" if channels_last or (image_shape and len(image_shape) == 3) \
        else ""
    return x, image_shape, read_as


def _labels(a: np.ndarray, n: int, what: str) -> torch.Tensor:
    if a.shape != (n,):
        raise DataError(f"{what}: expected labels of shape ({n},); got {a.shape}")
    a = a.astype(np.float64) if a.dtype == np.bool_ else a
    if not np.all(np.isfinite(a)) or np.any(a != np.round(a)) or np.any(a < 0):
        raise DataError(f"{what}: labels must be non-negative integers")
    return torch.from_numpy(a.astype(np.int64))


def load_array_file(path, *, test_fraction=0.2, seed=0, lazy=False) -> Dataset:
    """A data set from a ``.npy`` or ``.npz`` file; values are used as given, except uint8
    arrays, read as 8-bit images: kept as uint8 and scaled to [0, 1] per batch (``x / 255``,
    as torchvision reads them, or dequantised), which the Dataset's ``read_as`` records.

    A ``.npy`` file holds ``x`` of shape ``(N, D)``, ``(N, H, W)``, ``(N, C, H, W)`` or
    channels-last ``(N, H, W, C)`` (C = 1 or 3; ``read_as`` says which was read). A ``.npz``
    file holds ``x`` (and optionally labels ``y``, shape ``(N,)``), split by ``seed`` and
    ``test_fraction``, or ``x_train`` and ``x_test`` (and optionally ``y_train`` and
    ``y_test``). Examples with more than one axis are flattened channel-major and their
    shape kept as ``image_shape``. ``lazy``: a uint8 ``.npy`` is memory-mapped and its
    training rows left on disk (:class:`~ppl_vae.data.stream.MappedRows`), to stream.
    """
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise DataError(f"{where}: file not found; expected a .npz or .npy file of data")
    try:
        loaded = np.load(path, allow_pickle=False,
                         mmap_mode="r" if path.suffix.lower() == ".npy" else None)
    except Exception as exc:
        raise DataError(f"{where}: cannot read as {path.suffix} ({_one_line(exc)})") from None
    if isinstance(loaded, np.ndarray):
        array = _array(loaded, "", where)
        if lazy and array.dtype == np.uint8 and array.ndim >= 2:
            train, test = split_indices(len(array), test_fraction, seed, where)
            x, image_shape, read_as = _features(array, where, lazy=True, rows=train.numpy())
            return Dataset(where, x, MappedRows(array, test.numpy(),
                                                channels_last=x.channels_last).load(),
                           None, None, image_shape, read_as)
        x, image_shape, read_as = _features(array, where)
        return split_dataset(where, x, None, image_shape, test_fraction, seed, read_as)
    with loaded as arrays:
        keys = set(arrays.files)
        if keys not in _NPZ_LAYOUTS:
            raise DataError(
                f"{where}: holds arrays {sorted(keys)}; expected 'x' (and optional 'y'), or "
                "'x_train' and 'x_test' (and optional 'y_train' and 'y_test')"
            )
        parts = ("",) if "x" in keys else ("_train", "_test")
        xs, ys, shapes, read_as = {}, {}, {}, {}
        for part in parts:
            xs[part], shapes[part], read_as[part] = _features(
                _array(arrays, f"x{part}", where), f"{where}: x{part}"
            )
            if f"y{part}" in keys:
                y = _array(arrays, f"y{part}", where)
                ys[part] = _labels(y, len(xs[part]), f"{where}: y{part}")
    if "x" in keys:
        return split_dataset(where, xs[""], ys.get(""), shapes[""], test_fraction, seed,
                             read_as[""])
    if xs["_train"].shape[1] != xs["_test"].shape[1] or shapes["_train"] != shapes["_test"]:
        train, test = ((shapes[p] or (xs[p].shape[1],)) for p in ("_train", "_test"))
        raise DataError(f"{where}: x_train examples have shape {train} but x_test ones {test}")
    return Dataset(
        where, xs["_train"], xs["_test"], ys.get("_train"), ys.get("_test"), shapes["_train"],
        "; ".join(sorted({note for note in read_as.values() if note})),
    )


def load_image_folder(path, *, test_fraction=0.2, seed=0, image_size=None, lazy=False):
    """A folder of PNG/JPEG images (see :mod:`ppl_vae.data.images`) as uint8 rows, split by
    ``seed`` and ``test_fraction``; all images take the first one's size (or
    ``image_size``, S or (H, W)) and colour mode. ``lazy`` leaves the training images on
    disk (:class:`~ppl_vae.data.stream.FolderRows`), read a minibatch at a time."""
    where = str(path)
    if not lazy:
        x, y, image_shape, note = read_folder(path, image_size)
        return split_dataset(where, x, y, image_shape, test_fraction, seed, note)
    files, labels, classes = image_files(path)
    mode, size = folder_geometry(files, image_size)
    train, test = split_indices(len(files), test_fraction, seed, where)
    x_train = FolderRows([files[i] for i in train], mode, size)
    x_test = FolderRows([files[i] for i in test], mode, size).load()
    y = None if labels is None else torch.from_numpy(labels)
    channels = 1 if mode == "L" else 3
    return Dataset(where, x_train, x_test, None if y is None else y[train],
                   None if y is None else y[test],
                   tuple(size) if channels == 1 else (3, *size),
                   f"{len(files)} images streamed as uint8 (N, {channels}, {size[0]}, "
                   f"{size[1]}), other sizes " + RESIZE_RULE.format(h=size[0], w=size[1]))


def load_dataset(
    name_or_path: str, *, data_dir=None, download=False, test_fraction=0.2, seed=0,
    lazy=False, image_size=None,
) -> Dataset:
    """Load a built-in data set by name, a ``.npz``/``.npy`` file or an image folder by path.

    Parameters
    ----------
    name_or_path : str or Path
        A key of :data:`DATASETS` (``"digits"``, ``"mnist"``, ``"fashion-mnist"``,
        ``"ppca"``, ``"shapes"``, ``"cifar10"``, ``"svhn"``, ``"celeba64"``), a path ending
        in ``.npz`` or ``.npy``, or a folder of images.
    data_dir : str or Path, optional
        Where the standard sets' files live (torchvision's layout); default ``"data"``.
    download : bool
        Fetch missing standard files through torchvision.
    test_fraction : float
        Share of examples held out where a data set has no official split.
    seed : int
        Seed of that split (and of the ``ppca`` parameters and data).
    lazy : bool
        Leave a uint8 ``.npy`` file's or an image folder's training rows on disk, to be
        streamed (:mod:`ppl_vae.data.stream`); the test set is read.
    image_size : int or (int, int), optional
        The size images of a folder are brought to (default: the first image's).

    Returns
    -------
    Dataset
        Tensors on the CPU: float32, or uint8 for 8-bit images.
    """
    key = str(name_or_path)
    if key.lower() in DATASETS:
        return DATASETS[key.lower()](
            data_dir=data_dir, download=download, test_fraction=test_fraction, seed=seed
        )
    if Path(key).suffix.lower() in ARRAY_SUFFIXES:
        return load_array_file(key, test_fraction=test_fraction, seed=seed, lazy=lazy)
    if Path(key).is_dir():
        return load_image_folder(key, test_fraction=test_fraction, seed=seed,
                                 image_size=image_size, lazy=lazy)
    raise DataError(
        f"unknown data set {key!r}: use one of {', '.join(DATASETS)}, a path to a file "
        f"ending in {' or '.join(ARRAY_SUFFIXES)}, or a folder of images"
    )
