"""Data for the mixtures: checked once at the boundary, then streamed in chunks.

The E-step never holds an N x K array: :class:`ChunkedData` yields the data a block of
rows at a time, already centred on the training mean and cast to the compute dtype, so
that the estimators see float32 numbers of order one even when the user's data sit far
from the origin. The source array is not copied on the CPU (a numpy array is wrapped
with ``torch.from_numpy``); only on another device is one centred copy made there.

Under ``torch.distributed`` each process holds a *shard* of the rows: the centre, the
moments and the row count are then those of all shards together, and
:meth:`ChunkedData.sum_over_shards` sums any statistic of the rows over the processes.
"""

import math
import warnings

import torch

from ppl_vae import distributed
from ppl_vae.data.checks import as_2d_tensor, check_finite  # noqa: F401 (used by the mixtures)
from ppl_vae.errors import ConfigError, DataError

# Bytes that one chunk's largest E-step intermediate may take, per device type: small
# enough to stay in the CPU's cache, large enough to keep a GPU busy.
CHUNK_BYTES = {"cpu": 4 * 2**20, "cuda": 256 * 2**20}
MIN_CHUNK, MAX_CHUNK = 256, 2**20
DTYPES = {"float32": torch.float32, "float64": torch.float64}


class DegenerateDataWarning(UserWarning):
    """The data leave part of the model undetermined (constant features, duplicate points,
    empty or collapsed components); ``reg_covar`` keeps the fit finite."""


class ConvergenceWarning(UserWarning):
    """The best restart stopped at ``max_iter`` before its objective changed by less than
    ``tol``."""


def resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if dtype in DTYPES:
        return DTYPES[dtype]
    raise ConfigError(f"dtype must be 'float32' or 'float64'; got {dtype!r}")


def default_chunk_size(row_floats: int, device: torch.device, itemsize: int) -> int:
    """Rows per chunk such that a ``(rows, row_floats)`` intermediate fills CHUNK_BYTES."""
    rows = CHUNK_BYTES.get(device.type, CHUNK_BYTES["cpu"]) // max(1, row_floats * itemsize)
    return int(min(MAX_CHUNK, max(MIN_CHUNK, rows)))


class ChunkedData:
    """A validated (n_samples, n_features) array, streamed in centred chunks.

    Parameters
    ----------
    X : array-like or torch.Tensor of shape (n_samples, n_features)
    device : torch.device
        Where the chunks are computed.
    dtype : torch.dtype
        Compute dtype of the chunks (statistics are accumulated in float64 by callers).
    center : torch.Tensor of shape (n_features,), optional
        The origin of the chunks' coordinates (float64). Default: the mean of ``X``.
    n_features : int, optional
        The number of features the caller expects (checked).
    name : str
        What to call ``X`` in error messages.
    shard : bool
        X is this process's share of the rows of data spread over the processes of
        ``torch.distributed`` (ignored when it is not initialised).
    resident : bool
        On another device than X's, copy X there once (default); if False, move each
        chunk there as it is used, so that the device never holds more than a chunk
        (streaming data larger than the device's memory).

    Attributes
    ----------
    n_samples : int
        Rows of X (this process's).
    shard_sizes : list of int
        Rows held by each process (``[n_samples]`` without sharding).
    n_total : int
        Rows of all shards together.
    """

    def __init__(self, X, *, device, dtype, center=None, n_features=None, name="X",
                 shard=False, resident=True):
        source = as_2d_tensor(X, name=name)
        self.n_samples, self.n_features = source.shape
        self.shard = bool(shard) and distributed.is_distributed()
        if n_features is not None and self.n_features != n_features:
            raise DataError(
                f"{name}: expected {n_features} features, as in the data the model was "
                f"fitted on; got shape {tuple(source.shape)}"
            )
        self.device, self.dtype, self.name = device, dtype, name
        self.chunk_size = MAX_CHUNK
        self._source = source
        self._resident = False
        self._check_finite()
        self.shard_sizes = self._shard_sizes() if self.shard else [self.n_samples]
        self.n_total = sum(self.shard_sizes)
        self.center = self._mean() if center is None else center.to(device, torch.float64)
        self._check_magnitude()
        self._center_c = self.center.to(dtype)
        if source.device != device and resident:
            self._source = self._resident_copy()

    def _raw_chunks(self, size=None):
        size = size or self.chunk_size
        for start in range(0, self.n_samples, size):
            yield start, self._source[start:start + size]

    def _check_finite(self):
        check_finite(self._source, self.name)

    def _check_magnitude(self):
        # Squares of the centred data enter the covariances in the compute dtype; beyond
        # sqrt(its largest value) they overflow to inf, and the Cholesky fails far from here.
        limit = torch.finfo(self.dtype).max ** 0.5
        center = self.center.to(self._source.device)
        largest = max((float((block.to(torch.float64) - center).abs().max())
                       for _, block in self._raw_chunks(2**16)), default=0.0)
        if largest > limit:
            name = str(self.dtype).removeprefix("torch.")
            raise DataError(
                f"{self.name}: values reach {largest:.3g} from the mean, and their squares "
                f"overflow {name} (beyond {limit:.3g}); fit with dtype='float64' or rescale "
                "the data (e.g. standardise each feature)")

    def _shard_sizes(self):
        # Every process checks the same gathered shapes, so all of them raise together.
        shapes = distributed.all_gather(torch.tensor(
            [self.n_samples, self.n_features], device=self.device)).tolist()
        if any(d != self.n_features for _, d in shapes):
            raise DataError(f"{self.name}: the processes' shards have different numbers of "
                            f"features: {[d for _, d in shapes]}")
        return [n for n, _ in shapes]

    def sum_over_shards(self, *tensors):
        """The tensors summed over the processes' shards, with one collective (``None``
        passes through); without sharding, the tensors themselves."""
        return distributed.all_reduce_sum_many(*tensors) if self.shard else tensors

    def _mean(self) -> torch.Tensor:
        total = torch.zeros(self.n_features, dtype=torch.float64, device=self._source.device)
        for _, block in self._raw_chunks(2**16):
            total += block.to(torch.float64).sum(0)
        (total,) = self.sum_over_shards(total.to(self.device))
        return (total / self.n_total).to(self.device)

    def _resident_copy(self) -> torch.Tensor:
        # One centred copy on the compute device; chunks are then views of it.
        copy = torch.empty((self.n_samples, self.n_features), dtype=self.dtype,
                           device=self.device)
        for start, block in self._raw_chunks(2**16):
            centred = block.to(self.device, torch.float64) - self.center
            copy[start:start + len(block)] = centred.to(self.dtype)
        self._center_c = torch.zeros_like(self._center_c)
        self._resident = True
        return copy

    def chunks(self):
        """Yield ``(start, x)``: x has shape (rows, n_features), centred, compute dtype."""
        for start, block in self._raw_chunks():
            if block.dtype == self.dtype:
                yield start, block.to(self.device) - self._center_c
            else:
                yield start, (block.to(torch.float64) - self.center.to(block.device)).to(
                    self.device, self.dtype)

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """Centred float64 rows ``index`` (a 1-D integer tensor)."""
        block = self._source[index.to(self._source.device)].to(self.device, torch.float64)
        return block if self._resident else block - self.center

    def moments(self, full=True):
        """Second moment ``sum_n (x_n - c)(x_n - c)^T`` about the centre ``c`` (only its
        diagonal, as a diagonal matrix, when ``full`` is False) and the offset of the data
        mean from ``c`` (zero up to rounding when ``c`` is the mean); float64, computed
        from the float64 data."""
        d = self.n_features
        second = torch.zeros((d, d) if full else (d,), dtype=torch.float64, device=self.device)
        total = torch.zeros(d, dtype=torch.float64, device=self.device)
        for _, block in self._raw_chunks():
            x = block.to(self.device, torch.float64)
            if not self._resident:
                x = x - self.center
            second += x.T @ x if full else x.square().sum(0)
            total += x.sum(0)
        second, total = self.sum_over_shards(second, total)
        return (second if full else torch.diag(second)), total / self.n_total


def warn_constant_features(variances: torch.Tensor, scale: float):
    """Warn when features have (numerically) zero variance."""
    constant = (variances <= 1e-12 * max(scale, 1e-300)).nonzero().flatten().tolist()
    if constant:
        shown = constant[:10] + (["..."] if len(constant) > 10 else [])
        warnings.warn(
            f"feature(s) {shown} have zero variance; their variance in every component is "
            "reg_covar alone, which dominates the log-likelihood; drop or rescale them",
            DegenerateDataWarning, stacklevel=5,
        )


def check_n_samples(n_samples: int, n_components: int, name="X"):
    if n_samples < max(2, n_components):
        raise DataError(
            f"{name}: {n_samples} samples are too few for n_components={n_components}; "
            f"need at least {max(2, n_components)}"
        )


def log_2pi(d: int) -> float:
    return d * math.log(2 * math.pi)
