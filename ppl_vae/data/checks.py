"""Checks of data at the boundary, once, before any work starts: :func:`check_data` against
a likelihood's support (the VAE), :func:`as_2d_tensor` and :func:`check_finite` for arrays
of points (the mixtures: no float copy of the data, NaN and inf found a block at a time)."""

import numpy as np
import torch

from ppl_vae.errors import DataError

SUPPORTS = ("real", "unit")


def _shape_text(shape) -> str:
    # Writes the batch dimension as N so that the message compares like with like.
    if len(shape) == 0:
        return "a scalar"
    if len(shape) == 1:
        return f"a 1-D tensor of shape ({shape[0]},)"
    return "(" + ", ".join(["N", *(str(s) for s in shape[1:])]) + ")"


def check_data(
    x: torch.Tensor, *, support: str, name: str = "data", data_dim: int | None = None
) -> None:
    """Raise :class:`DataError` with one line if ``x`` cannot be used as a data set.

    Parameters
    ----------
    x : torch.Tensor
        Shape ``(N, D)``: N flattened examples.
    support : {"real", "unit"}
        The likelihood's support: any finite value, or values in [0, 1]
        (Bernoulli-type likelihoods).
    name : str
        What to call ``x`` in the message (e.g. ``"x_train"`` or a file name).
    data_dim : int, optional
        The number of features D the model expects.

    Raises
    ------
    DataError
        For an empty set, a shape other than ``(N, data_dim)``, NaN or inf values, or
        values outside [0, 1] when ``support == "unit"``.
    """
    if support not in SUPPORTS:
        raise ValueError(f"support must be one of {SUPPORTS}; got {support!r}")
    if not isinstance(x, torch.Tensor):
        raise DataError(f"{name}: expected a torch.Tensor; got {type(x).__name__}")
    if x.is_complex() or x.dtype == torch.bool:
        raise DataError(f"{name}: expected real numbers; got dtype {x.dtype}")
    want = f"(N, {data_dim if data_dim is not None else 'D'})"
    if x.ndim != 2:
        hint = "; flatten each example first" if x.ndim > 2 else ""
        raise DataError(f"{name}: expected data of shape {want}; got {_shape_text(x.shape)}{hint}")
    if x.shape[0] == 0:
        raise DataError(
            f"{name}: empty data set (shape {tuple(x.shape)}); need at least one example"
        )
    if x.shape[1] == 0:
        raise DataError(f"{name}: examples with zero features (shape {tuple(x.shape)}); "
                        "need at least one value per example")
    if data_dim is not None and x.shape[1] != data_dim:
        raise DataError(f"{name}: expected data of shape {want}; got {_shape_text(x.shape)}")
    if x.dtype == torch.uint8:  # 8-bit images: every value scales into [0, 1]
        return
    if not x.is_floating_point():
        x = x.double()
    nonfinite = ~torch.isfinite(x)
    if nonfinite.any():
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(nonfinite.sum()) - n_nan
        row, col = (int(i) for i in nonfinite.nonzero()[0])
        raise DataError(
            f"{name}: {n_nan} NaN and {n_inf} inf values; the first is at row {row}, "
            f"column {col} (value {x[row, col].item()})"
        )
    if support == "unit":
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 1:
            raise DataError(
                f"{name}: this likelihood needs values in [0, 1] but they range from {lo:g} "
                f"to {hi:g}; for real-valued data choose a likelihood for real values, "
                "e.g. --likelihood gaussian, or rescale the data to [0, 1]"
            )


def as_2d_tensor(X, *, name="X") -> torch.Tensor:
    """``X`` (numpy array, torch tensor or nested lists) as a 2-D real CPU/GPU tensor.

    Wraps numpy memory without copying it. Raises :class:`DataError` with one line for
    non-numeric values, a shape other than (n_samples, n_features), or an empty array.
    """
    if isinstance(X, torch.Tensor):
        tensor = X.detach()
    else:
        try:
            array = np.asarray(X)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{name}: expected an array of real numbers ({exc})") from None
        if array.dtype.kind not in "biuf":
            raise DataError(f"{name}: expected an array of real numbers; got dtype {array.dtype}")
        if array.dtype.kind in "bc" or not array.dtype.isnative or array.dtype == np.float16:
            array = array.astype(np.float64)
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tensor.is_complex() or tensor.dtype == torch.bool:
        raise DataError(f"{name}: expected an array of real numbers; got dtype {tensor.dtype}")
    if tensor.ndim != 2:
        raise DataError(
            f"{name}: expected 2-D data of shape (n_samples, n_features); "
            f"got shape {tuple(tensor.shape)}"
        )
    if tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise DataError(f"{name}: expected at least one sample and one feature; "
                        f"got shape {tuple(tensor.shape)}")
    return tensor


def check_finite(tensor, name="X", block=2**16):
    """Raise :class:`DataError` naming the first NaN or inf in a 2-D tensor."""
    if not tensor.is_floating_point():
        return
    for start in range(0, len(tensor), block):
        rows = tensor[start:start + block]
        # A finite sum is the fast proof; NaN and inf always make the sum non-finite.
        if bool(torch.isfinite(rows.sum())):
            continue
        bad = ~torch.isfinite(rows)
        if bool(bad.any()):
            row, col = (int(i) for i in bad.nonzero()[0])
            raise DataError(
                f"{name}: contains NaN or inf (first at row {start + row}, column {col}: "
                f"{rows[row, col].item()}); remove or impute those values"
            )
