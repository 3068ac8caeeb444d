"""Images: the layout of an array of images, 8-bit values read per batch, image folders.

Images are stored flat, channel-major: one example is C x H x W values (C = 1 or 3) in
that order, and ``image_shape`` is ``(H, W)`` for one channel (as it always was) or
``(C, H, W)`` for colour. 8-bit data stay ``uint8`` on the host and on the device (a
quarter of float32's memory) and become floats one minibatch at a time
(:class:`ImageBatches`): ``x / 255`` for the likelihoods of values in [0, 1] and the
discretised ones (levels k / 255), ``(x + u) / 256`` with ``u ~ U[0, 1)`` for a density
on uniformly dequantised data.

A folder of PNG/JPEG files (:func:`load_image_folder`) is read with Pillow, as
torchvision's ``ImageFolder`` lays it out: class sub-folders give labels (in sorted order),
or images directly in the folder have none.
"""

import math
from pathlib import Path

import numpy as np
import torch

from ppl_vae.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
UINT8_LEVELS = 255
# The rule for images of other sizes than the first (or the given one), for the user.
RESIZE_RULE = "resized to {h}x{w} with Pillow's bilinear filter (aspect ratio not kept)"


def read_layout(shape):
    """How an array of examples of ``shape`` (batch axis first) holds images.

    Returns
    -------
    image_shape : tuple of int or None
        ``(H, W)`` for one channel, ``(C, H, W)`` for three; None for flat (N, D) data.
    channels_last : bool
        Whether the stored axes are (N, H, W, C) and must be moved to (N, C, H, W).
    layout : str
        What was read, for the user: ``"(N, H, W, C) channels-last"`` etc.
    """
    shape = tuple(shape)
    if len(shape) == 2:
        return None, False, "(N, D)"
    if len(shape) == 3:
        return shape[1:], False, "(N, H, W)"
    if len(shape) == 4 and shape[1] in (1, 3):
        return _image_shape(shape[1], shape[2:]), False, "(N, C, H, W)"
    if len(shape) == 4 and shape[3] in (1, 3):
        return _image_shape(shape[3], shape[1:3]), True, "(N, H, W, C) channels-last"
    # Not an image layout (C other than 1 or 3, or more axes): flattened as stored.
    return shape[1:], False, f"(N, {', '.join(map(str, shape[1:]))}) flattened"


def _image_shape(channels, sides):
    return tuple(sides) if channels == 1 else (channels, *sides)


def channels_first(array, channels_last):
    """``array`` (N, ...) as (N, C*H*W) rows, channel-major, without copying a flat one."""
    if channels_last:
        array = np.moveaxis(array, -1, 1)
    return array.reshape(len(array), math.prod(array.shape[1:]))


def to_unit(x, *, dequantize=False, generator=None):
    """A minibatch as floats: uint8 ``x / 255``, or ``(x + u) / 256`` with u uniform on
    [0, 1) when ``dequantize`` (drawn from ``generator``, or torch's global state); float
    data as they are."""
    if x.dtype != torch.uint8:
        return x
    x = x.to(torch.float32)
    if dequantize:
        u = torch.rand(x.shape, device=x.device, generator=generator)
        return (x + u) / (UINT8_LEVELS + 1)
    return x / UINT8_LEVELS


class ImageBatches:
    """The per-batch transform of training: 8-bit values to floats (:func:`to_unit`), then
    an optional further step (dynamic binarisation)."""

    def __init__(self, *, dequantize=False, then=None):
        self.dequantize, self.then = dequantize, then

    def __call__(self, x):
        x = to_unit(x, dequantize=self.dequantize)
        return x if self.then is None else self.then(x)


class ConvertedRows:
    """Rows of ``x`` (a tensor or streamed rows) read through ``convert``: what a part's
    setup sees (the VampPrior's pseudo-inputs drawn from 8-bit data, as floats)."""

    def __init__(self, x, convert):
        self.x, self.convert = x, convert
        self.shape, self.device = x.shape, x.device

    def __getitem__(self, idx):
        return self.convert(self.x[idx])


# --- image folders --------------------------------------------------------------------------


def image_files(root):
    """(files, labels, class names) of an image folder: class sub-folders, sorted, give
    labels 0, 1, ...; without sub-folders the images in ``root`` have no labels (None)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; expected a folder of PNG/JPEG images")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and _images_in(p))
    if classes:
        groups = [(label, _images_in(root / name)) for label, name in enumerate(classes)]
        files = [f for _, fs in groups for f in fs]
        labels = np.concatenate([np.full(len(fs), label, np.int64) for label, fs in groups])
        return files, labels, classes
    files = _images_in(root)
    if not files:
        raise DataError(f"{root}: no {'/'.join(IMAGE_SUFFIXES)} images in it or in its "
                        "sub-folders")
    return files, None, None


def _images_in(folder):
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def folder_geometry(files, image_size=None):
    """(mode, (H, W)) of a folder: the first image's colour mode (grey "L" if it is grey,
    else "RGB") and size, or ``image_size`` (S or (H, W)) where given."""
    from PIL import Image

    with Image.open(files[0]) as first:
        mode = "L" if first.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"
        size = (first.height, first.width)
    if image_size is not None:
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if len(size) != 2 or min(size) < 1:
            raise DataError(f"image_size must be a side S or [H, W] of positive ints; got "
                            f"{image_size}")
    return mode, size


def read_image(path, mode, size, *, crop=None):
    """One image as uint8 (C, H, W): converted to ``mode``, cropped to its centre
    ``crop`` x ``crop`` square where given, resized to ``size`` (H, W) by
    :data:`RESIZE_RULE` where it differs."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert(mode)
            if crop is not None:
                left, top = (image.width - crop) // 2, (image.height - crop) // 2
                image = image.crop((left, top, left + crop, top + crop))
            if (image.height, image.width) != tuple(size):
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"{path}: cannot read as an image ({exc})") from None
    return array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)


def read_folder(root, image_size=None):
    """An image folder read whole: uint8 rows (N, C*H*W), labels or None, image_shape, and a
    note of how it was read."""
    files, labels, classes = image_files(root)
    mode, size = folder_geometry(files, image_size)
    x = np.stack([read_image(f, mode, size).reshape(-1) for f in files])
    channels = 1 if mode == "L" else 3
    note = (f"{len(files)} {'grey' if channels == 1 else 'colour'} images read as "
            f"(N, C, H, W) = (N, {channels}, {size[0]}, {size[1]}) uint8, other sizes "
            + RESIZE_RULE.format(h=size[0], w=size[1])
            + (f"; {len(classes)} classes from sub-folders" if classes else "; no labels"))
    return torch.from_numpy(x), (None if labels is None else torch.from_numpy(labels)), \
        _image_shape(channels, size), note
