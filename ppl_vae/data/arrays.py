"""The data container: a train/test pair of flattened tensors, its seeded split, and
dynamic binarisation."""

import math
from dataclasses import dataclass, replace

import torch

from ppl_vae.device import resolve_device
from ppl_vae.errors import DataError


@dataclass(frozen=True)
class Dataset:
    """A train/test pair of flattened examples, with optional integer labels.

    Attributes
    ----------
    name : str
        The name or path it was loaded from; ``load_dataset(ds.name)`` loads it again.
    x_train, x_test : torch.Tensor
        Shapes ``(N_train, D)`` and ``(N_test, D)``, float32, or uint8 for 8-bit images
        (channel-major rows, scaled per batch: :mod:`ppl_vae.data.images`); ``x_train``
        may also be rows left on disk to stream (:mod:`ppl_vae.data.stream`).
    y_train, y_test : torch.Tensor or None
        Shapes ``(N_train,)`` and ``(N_test,)``, int64 class labels; None without labels.
    image_shape : tuple of int or None
        Shape of one example before flattening: ``(H, W)`` for one channel, e.g.
        ``(28, 28)``, or ``(C, H, W)`` for colour, e.g. ``(3, 32, 32)``; None for non-image
        data.
    read_as : str
        How the stored values were turned into these, for the user to read (``"uint8 data
        read as 8-bit images, scaled by 1/255"``); empty where they were used as stored.
    """

    name: str
    x_train: torch.Tensor
    x_test: torch.Tensor
    y_train: torch.Tensor | None
    y_test: torch.Tensor | None
    image_shape: tuple[int, ...] | None
    read_as: str = ""

    def __post_init__(self):
        if self.x_train.ndim != 2 or self.x_test.ndim != 2:
            raise DataError(
                f"{self.name}: x_train and x_test must be (N, D); got "
                f"{tuple(self.x_train.shape)} and {tuple(self.x_test.shape)}"
            )
        if self.x_train.shape[1] != self.x_test.shape[1]:
            raise DataError(
                f"{self.name}: x_train has {self.x_train.shape[1]} features but x_test has "
                f"{self.x_test.shape[1]}"
            )
        if (self.y_train is None) != (self.y_test is None):
            raise DataError(f"{self.name}: give labels for both train and test, or for neither")
        for x, y, part in (
            (self.x_train, self.y_train, "train"),
            (self.x_test, self.y_test, "test"),
        ):
            if y is not None and tuple(y.shape) != (len(x),):
                raise DataError(
                    f"{self.name}: y_{part} must have shape ({len(x)},); got {tuple(y.shape)}"
                )
        if self.image_shape is not None and math.prod(self.image_shape) != self.data_dim:
            raise DataError(
                f"{self.name}: image_shape {self.image_shape} does not hold {self.data_dim} values"
            )

    @property
    def data_dim(self) -> int:
        """D, the number of features of one flattened example."""
        return int(self.x_train.shape[1])

    @property
    def num_classes(self) -> int | None:
        """One more than the largest label (train or test); None without labels."""
        if self.y_train is None:
            return None
        labels = torch.cat([self.y_train, self.y_test])
        return int(labels.max()) + 1 if len(labels) else 0

    def to(self, device="auto") -> "Dataset":
        """The same data with every tensor on ``device`` (``"auto"``, ``"cpu"``, ``"cuda"``)."""
        dev = resolve_device(device)

        def move(t):  # streamed rows stay on disk: the trainer moves each minibatch
            return None if t is None or not isinstance(t, torch.Tensor) else t.to(dev)

        return replace(
            self,
            x_train=move(self.x_train) if isinstance(self.x_train, torch.Tensor)
            else self.x_train,
            x_test=move(self.x_test),
            y_train=move(self.y_train),
            y_test=move(self.y_test),
        )



def binarize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One Bernoulli draw per entry, with probabilities ``x``: ``U < x`` with U uniform on
    [0, 1).

    Dynamic binarisation calls this on each minibatch; static binarisation calls it once
    with a seeded ``generator`` (which must live on ``x``'s device). On a CPU the draws are
    the very numbers ``torch.bernoulli(x, generator)`` gives (tested), 3.6 times as fast
    (``ppl-vae bench parts``).

    Parameters
    ----------
    x : torch.Tensor
        Any shape, floating point, values in [0, 1].
    generator : torch.Generator, optional

    Returns
    -------
    torch.Tensor
        Same shape and dtype as ``x``, values in {0, 1}.
    """
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return (u < x).to(x.dtype)


def split_indices(n: int, test_fraction: float, seed: int,
                  name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted train and test indices of a seeded random split of ``range(n)``."""
    if not 0 < test_fraction < 1:
        raise DataError(
            f"{name}: test_fraction must lie strictly between 0 and 1; got {test_fraction}"
        )
    n_test = round(n * test_fraction)
    if not 0 < n_test < n:
        raise DataError(
            f"{name}: test_fraction {test_fraction} of {n} examples leaves an empty train or "
            "test set; give more data or another test_fraction"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_test:].sort().values, perm[:n_test].sort().values


def split_dataset(name, x, y, image_shape, test_fraction, seed, read_as="") -> Dataset:
    train, test = split_indices(len(x), test_fraction, seed, name)
    return Dataset(
        name=name,
        x_train=x[train],
        x_test=x[test],
        y_train=None if y is None else y[train],
        y_test=None if y is None else y[test],
        image_shape=image_shape,
        read_as=read_as,
    )


@dataclass(frozen=True)
class Binarization:
    """When [0, 1] data are binarised for a Bernoulli-type likelihood (``data.binarize``).

    The test set, when binarised, is binarised once with a fixed seed, so that test ELBOs
    are comparable across epochs and runs.
    """

    train_once: bool  # the training set once, before training
    each_batch: bool  # each training minibatch anew (dynamic binarisation)
    test_once: bool = True


# data.binarize -> what it does; the one table the config, the command line and the
# builder read.
BINARIZATIONS = {
    "dynamic": Binarization(train_once=False, each_batch=True),
    "static": Binarization(train_once=True, each_batch=False),
    "none": Binarization(train_once=False, each_batch=False, test_once=False),
}
