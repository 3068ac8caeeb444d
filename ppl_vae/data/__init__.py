"""Data: the :class:`Dataset` container, built-in and user data sets, and their checks.

- :mod:`~ppl_vae.data.arrays`: the container, its seeded train/test split, binarisation;
- :mod:`~ppl_vae.data.checks`: values against a likelihood's support, before training;
- :mod:`~ppl_vae.data.datasets`: digits, mnist, fashion-mnist, ppca, shapes, array files,
  image folders; :mod:`~ppl_vae.data.standard`: cifar10, svhn, celeba64;
- :mod:`~ppl_vae.data.images`: image layouts, 8-bit values scaled per batch, folders read
  with Pillow; :mod:`~ppl_vae.data.stream`: training rows streamed from disk;
- :mod:`~ppl_vae.data.shapes`, :mod:`~ppl_vae.data.ppca`: the generated data sets.
"""

from ppl_vae.data.arrays import BINARIZATIONS, Binarization, Dataset, binarize, split_dataset
from ppl_vae.data.checks import SUPPORTS, check_data
from ppl_vae.data.datasets import (
    ARRAY_SUFFIXES,
    DATASETS,
    DEFAULT_DATA_DIR,
    IDX_DATASETS,
    IDX_FILES,
    load_array_file,
    load_dataset,
    load_digits,
    load_fashion_mnist,
    load_image_folder,
    load_mnist,
    load_ppca,
    read_idx,
)

__all__ = [
    "ARRAY_SUFFIXES", "BINARIZATIONS", "DATASETS", "DEFAULT_DATA_DIR", "IDX_DATASETS",
    "IDX_FILES", "SUPPORTS", "Binarization",
    "Dataset", "binarize", "check_data", "load_array_file", "load_dataset", "load_digits",
    "load_fashion_mnist", "load_image_folder", "load_mnist", "load_ppca", "read_idx",
    "split_dataset",
]
