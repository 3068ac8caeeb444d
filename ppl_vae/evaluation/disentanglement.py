"""Disentanglement metrics against known generative factors, and latent traversals.

Given data drawn from discrete factors ``v_1..v_K`` (e.g. :mod:`ppl_vae.data.shapes`) and a
representation ``z = (z_1..z_L)`` of each example (usually the posterior mean E_q[z | x]):

* **Mutual Information Gap** (Chen et al., 2018, "Isolating Sources of Disentanglement
  in VAEs"). For each factor, the mutual information with the best code minus that with
  the second best, as a share of the factor's entropy, averaged over factors:

      MIG = 1/K sum_k (I(z_{j_k}; v_k) - max_{j != j_k} I(z_j; v_k)) / H(v_k),
      j_k = argmax_j I(z_j; v_k).

  1 when each factor is fully captured by one code and by no other; 0 when a factor is
  spread evenly over two codes or captured by none. The paper estimates I from samples
  of q(z | x); here codes are point values, discretised into equal-width histogram bins
  (the estimator of Locatello et al., 2019's large study), and I is the plug-in mutual
  information of the two discrete variables, in nats.

* **FactorVAE score** (Kim & Mnih, 2018, "Disentangling by Factorising"). Fix one factor
  at a random value, draw a batch of examples with the others random, divide each code by
  its standard deviation over the data and take the code of least variance within the
  batch: a vote (code, factor). A majority-vote classifier from code to factor is fit on
  training votes; its accuracy on held-out votes is the score. Codes that have collapsed
  to the prior are left out, as in the paper: those whose standard deviation over the
  data is below 0.05 (disentanglement_lib's threshold). Chance is 1/K.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment

DEFAULT_BINS = 20
COLLAPSED_STD = 0.05
# Examples per call of observe and encode in the FactorVAE score: bounds memory.
_CHUNK = 4096


# --- mutual information gap ---------------------------------------------------------------


def _check_codes_factors(codes: torch.Tensor, factors: torch.Tensor) -> None:
    if codes.ndim != 2 or factors.ndim != 2:
        raise ValueError(
            f"expected codes of shape (N, L) and factors of shape (N, K); got "
            f"{tuple(codes.shape)} and {tuple(factors.shape)}"
        )
    if len(codes) != len(factors):
        raise ValueError(f"codes hold {len(codes)} examples but factors {len(factors)}")
    if len(codes) == 0:
        raise ValueError("need at least one example")
    if factors.is_floating_point() or factors.is_complex():
        raise ValueError(f"factors must be integers (discrete values); got {factors.dtype}")
    if not torch.isfinite(codes).all():
        raise ValueError("codes hold NaN or inf values")


def discretize(codes: torch.Tensor, bins: int = DEFAULT_BINS) -> torch.LongTensor:
    """Bin each code into ``bins`` equal-width bins between its minimum and maximum.

    A value on an inner bin edge goes to the upper bin and the maximum to the last bin,
    as in ``numpy.histogram``. A constant code falls in bin 0.

    Parameters
    ----------
    codes : torch.Tensor
        Shape ``(N, L)``.
    bins : int

    Returns
    -------
    torch.LongTensor
        Shape ``(N, L)``, values in ``0..bins-1``.
    """
    if bins < 2:
        raise ValueError(f"bins must be at least 2; got {bins}")
    codes = codes.detach().cpu().double()
    low, high = codes.min(0).values, codes.max(0).values
    width = (high - low).clamp(min=torch.finfo(torch.float64).tiny)
    return ((codes - low) / width * bins).long().clamp(max=bins - 1)


def _relabel(values: torch.Tensor) -> tuple[torch.LongTensor, int]:
    """Map the distinct values of a 1-D integer tensor to ``0..n-1``; also return n."""
    distinct, labels = torch.unique(values, return_inverse=True)
    return labels, len(distinct)


def _entropy(counts: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of the empirical distributions in the last axis of ``counts``."""
    p = counts / counts.sum(-1, keepdim=True)
    # 0 log 0 = 0: xlogy gives exactly that.
    return -torch.special.xlogy(p, p).sum(-1)


def factor_entropies(factors: torch.Tensor) -> torch.Tensor:
    """Empirical entropy H(v_k) of each factor, in nats.

    Parameters
    ----------
    factors : torch.LongTensor
        Shape ``(N, K)``, any integer values.

    Returns
    -------
    torch.Tensor
        Shape ``(K,)``, float64.
    """
    if factors.ndim != 2 or factors.is_floating_point() or factors.is_complex():
        raise ValueError(
            f"expected integer factors of shape (N, K); got {factors.dtype} of shape "
            f"{tuple(factors.shape)}"
        )
    entropies = []
    for column in factors.cpu().T:
        labels, n = _relabel(column)
        entropies.append(_entropy(torch.bincount(labels, minlength=n).double()))
    return torch.stack(entropies)


def mutual_info_matrix(
    codes: torch.Tensor, factors: torch.Tensor, bins: int = DEFAULT_BINS
) -> torch.Tensor:
    """Plug-in mutual information between each discretised code and each factor.

    ``I(z_j; v_k) = sum_{a,b} p(a, b) log(p(a, b) / (p(a) p(b)))`` over the joint
    histogram of code ``j``'s bin (:func:`discretize`) and factor ``k``'s value.

    Parameters
    ----------
    codes : torch.Tensor
        Shape ``(N, L)``: one representation per example, e.g. posterior means.
    factors : torch.LongTensor
        Shape ``(N, K)``: the true factor values of the same examples.
    bins : int
        Histogram bins per code. The estimate is biased upwards by about
        ``(bins - 1)(n_k - 1) / (2 N)`` nats for a factor with ``n_k`` values.

    Returns
    -------
    torch.Tensor
        Shape ``(L, K)``, float64, nats.
    """
    _check_codes_factors(codes, factors)
    binned = discretize(codes, bins)
    num_codes = binned.shape[1]
    # Joint histograms of all codes with one factor in one bincount: the flat index
    # enumerates (code j, bin a, factor value b).
    code_offsets = torch.arange(num_codes) * bins
    columns = []
    for column in factors.cpu().T:
        labels, n = _relabel(column)
        flat = ((binned + code_offsets) * n + labels[:, None]).flatten()
        joint = torch.bincount(flat, minlength=num_codes * bins * n).double()
        joint = joint.reshape(num_codes, bins, n)
        # I = H(z_j) + H(v_k) - H(z_j, v_k), each from the same counts.
        columns.append(
            _entropy(joint.sum(2)) + _entropy(joint.sum(1)) - _entropy(joint.flatten(1))
        )
    return torch.stack(columns, dim=1).clamp(min=0)


def mig_gaps(codes: torch.Tensor, factors: torch.Tensor, bins: int = DEFAULT_BINS) -> torch.Tensor:
    """Per-factor normalised gap ``(I_top1 - I_top2) / H(v_k)`` of the MIG.

    With a single code the second-best information is taken as 0. A constant factor has
    no entropy to share out, so its gap is NaN (and :func:`mig` leaves it out).

    Parameters
    ----------
    codes : torch.Tensor
        Shape ``(N, L)``.
    factors : torch.LongTensor
        Shape ``(N, K)``.
    bins : int

    Returns
    -------
    torch.Tensor
        Shape ``(K,)``, float64, values in [0, 1] or NaN.
    """
    info = mutual_info_matrix(codes, factors, bins)
    top = info.topk(min(2, info.shape[0]), dim=0).values
    second = top[1] if len(top) > 1 else torch.zeros_like(top[0])
    entropy = factor_entropies(factors)
    gaps = (top[0] - second) / entropy
    return torch.where(entropy > 0, gaps, torch.nan)


def mig(codes: torch.Tensor, factors: torch.Tensor, bins: int = DEFAULT_BINS) -> float:
    """Mutual Information Gap: the mean of :func:`mig_gaps` over non-constant factors.

    Parameters
    ----------
    codes : torch.Tensor
        Shape ``(N, L)``, e.g. posterior means of a test set.
    factors : torch.LongTensor
        Shape ``(N, K)``, the true factors of the same examples.
    bins : int
        Histogram bins per code (20, as in Locatello et al., 2019).

    Returns
    -------
    float
        In [0, 1]; higher is more disentangled.
    """
    gaps = mig_gaps(codes, factors, bins)
    if torch.isnan(gaps).all():
        raise ValueError("every factor is constant over these examples; MIG is undefined")
    return float(gaps.nanmean())


# --- FactorVAE score ------------------------------------------------------------------------


@dataclass(frozen=True)
class FactorVAEScore:
    """Result of :func:`factor_vae_score`.

    Attributes
    ----------
    score : float
        Accuracy of the majority-vote classifier on the held-out votes, in [0, 1].
    train_accuracy : float
        Its accuracy on the votes it was fit to.
    votes : torch.LongTensor
        Shape ``(L, K)``: training votes per (code, fixed factor); rows of collapsed codes
        are 0.
    active : torch.BoolTensor
        Shape ``(L,)``: codes whose standard deviation over the data is at least the
        threshold, the only ones that can receive votes.
    """

    score: float
    train_accuracy: float
    votes: torch.Tensor
    active: torch.Tensor


@torch.no_grad()
def _codes(encode, observe, factors, chunk):
    """Codes of the examples with the given factors, shape ``(N, L)``, float64, CPU."""
    parts = [
        encode(observe(factors[start : start + chunk])).detach().cpu().double()
        for start in range(0, len(factors), chunk)
    ]
    return torch.cat(parts)


def _votes(encode, sample_factors, observe, num_votes, batch_size, scale, active, generator):
    """``num_votes`` votes as ``(code, factor)`` index pairs, each a LongTensor (num_votes,)."""
    factors = sample_factors(num_votes * batch_size, generator)
    factors = factors.reshape(num_votes, batch_size, -1).clone()
    num_factors = factors.shape[2]
    fixed = torch.randint(num_factors, (num_votes,), generator=generator)
    # The fixed factor takes the value of the batch's first example: a uniform draw.
    value = factors[:, :1, :].gather(2, fixed.view(-1, 1, 1))
    index = fixed.view(-1, 1, 1).expand(-1, batch_size, 1)
    factors.scatter_(2, index, value.expand(-1, batch_size, 1))
    codes = _codes(encode, observe, factors.flatten(0, 1), _CHUNK)
    codes = (codes[:, active] / scale[active]).view(num_votes, batch_size, -1)
    within = codes.var(dim=1)
    # Indices into all L codes, so that votes read in the user's numbering.
    code = active.nonzero().squeeze(1)[within.argmin(dim=1)]
    return code, fixed


def factor_vae_score(
    encode: Callable[[torch.Tensor], torch.Tensor],
    sample_factors: Callable[[int, torch.Generator | None], torch.Tensor],
    observe: Callable[[torch.Tensor], torch.Tensor],
    *,
    num_train: int = 10_000,
    num_eval: int = 5_000,
    batch_size: int = 64,
    num_variance_estimate: int = 10_000,
    collapsed_std: float = COLLAPSED_STD,
    generator: torch.Generator | None = None,
) -> FactorVAEScore:
    """The FactorVAE disentanglement score (Kim & Mnih, 2018).

    The defaults are disentanglement_lib's (Locatello et al., 2019); they encode about a
    million examples, so use smaller ``num_train`` and ``num_eval`` for quick looks.

    Parameters
    ----------
    encode : callable
        Examples ``(n, D)`` to codes ``(n, L)``, e.g. ``lambda x: vae.encode(x).mean``.
        Called under ``torch.no_grad()`` on chunks of at most a few thousand examples.
    sample_factors : callable
        ``sample_factors(n, generator)`` draws ``n`` independent factor settings,
        LongTensor ``(n, K)``, e.g. :func:`ppl_vae.data.shapes.sample_factors`.
    observe : callable
        Factor settings ``(n, K)`` to examples ``(n, D)``, e.g.
        ``functools.partial(shapes.render, image_size=32)``. Examples go to ``encode``
        as they come: move them to the model's device inside ``encode`` if needed.
    num_train, num_eval : int
        Votes that fit the classifier and votes it is scored on.
    batch_size : int
        Examples per vote.
    num_variance_estimate : int
        Examples drawn to estimate each code's standard deviation over the data.
    collapsed_std : float
        Codes with a smaller standard deviation over the data are left out.
    generator : torch.Generator, optional
        CPU generator for the factors and fixed-factor choices.

    Returns
    -------
    FactorVAEScore
        ``score`` is 0 when every code has collapsed.
    """
    counts = {
        "num_train": num_train,
        "num_eval": num_eval,
        "num_variance_estimate": num_variance_estimate,
    }
    for name, value in counts.items():
        if value < 1:
            raise ValueError(f"{name} must be positive; got {value}")
    if batch_size < 2:
        raise ValueError(f"batch_size must be at least 2 to have a variance; got {batch_size}")
    factors = sample_factors(num_variance_estimate, generator)
    codes = _codes(encode, observe, factors, _CHUNK)
    scale = codes.std(dim=0)
    active = scale >= collapsed_std
    num_codes, num_factors = codes.shape[1], factors.shape[1]
    if not active.any():
        votes = torch.zeros(num_codes, num_factors, dtype=torch.long)
        return FactorVAEScore(0.0, 0.0, votes, active)
    args = (encode, sample_factors, observe)
    code, factor = _votes(*args, num_train, batch_size, scale, active, generator)
    votes = torch.bincount(code * num_factors + factor, minlength=num_codes * num_factors)
    votes = votes.view(num_codes, num_factors)
    # Each code predicts the factor it was most often the answer for (ties: the lowest).
    classifier = votes.argmax(dim=1)
    train_accuracy = float(votes.max(dim=1).values.sum()) / num_train
    code, factor = _votes(*args, num_eval, batch_size, scale, active, generator)
    score = float((classifier[code] == factor).double().mean())
    return FactorVAEScore(score, train_accuracy, votes, active)


def cluster_accuracy(codes: torch.Tensor, labels: torch.Tensor) -> float:
    """Accuracy of discrete codes against labels under the best one-to-one matching of
    code values to label values (the Hungarian algorithm on the contingency table, scipy's
    ``linear_sum_assignment``); codes or labels left unmatched count as errors.

    Parameters
    ----------
    codes, labels : LongTensor, shape (N,)
        A discrete code per example (e.g. CascadeVAE's category) and its true factor.
    """
    if codes.shape != labels.shape or codes.ndim != 1 or len(codes) == 0:
        raise ValueError(f"expected codes and labels of one shape (N,), N > 0; got "
                         f"{tuple(codes.shape)} and {tuple(labels.shape)}")
    code_index, num_codes = _relabel(codes)
    label_index, num_labels = _relabel(labels)
    table = torch.zeros(num_codes, num_labels, dtype=torch.int64)
    table.index_put_((code_index, label_index), torch.ones_like(code_index), accumulate=True)
    rows, columns = linear_sum_assignment(table.numpy(), maximize=True)
    return float(table[rows, columns].sum()) / len(codes)


# --- traversals -----------------------------------------------------------------------------


@torch.no_grad()
def latent_traversals(decode, z0, image_shape, *, values=None, dims=None):
    """Decoded images as one code at a time sweeps ``values``, the others held at ``z0``.

    Parameters
    ----------
    decode : callable
        Codes ``(n, L)`` to images ``(n, H * W)`` in [0, 1], e.g.
        ``lambda z: vae.decode(z).mean``.
    z0 : torch.Tensor
        Shape ``(L,)``: the code the sweeps start from, e.g. a posterior mean or zeros.
    image_shape : tuple of int
        ``(H, W)``, or ``(C, H, W)`` for colour.
    values : torch.Tensor, optional
        Shape ``(V,)``: the values each code takes in turn; default ``linspace(-3, 3, 9)``,
        three prior standard deviations either side.
    dims : sequence of int, optional
        The codes to sweep, one row each, in this order; default all L.

    Returns
    -------
    matplotlib.figure.Figure
        One row per swept code, labelled ``z[j]``, one column per value.
    """
    # Imported here so that the metrics need no matplotlib.
    from ppl_vae.evaluation.plots import image_grid, image_sides

    z0 = torch.as_tensor(z0).detach()
    values = torch.linspace(-3, 3, 9) if values is None else torch.as_tensor(values)
    values = values.to(z0)
    dims = list(range(z0.shape[-1])) if dims is None else list(dims)
    codes = z0.expand(len(dims), len(values), -1).clone()
    for row, dim in enumerate(dims):
        codes[row, :, dim] = values
    images = decode(codes.flatten(0, 1))
    fig = image_grid(images, image_shape, ncols=len(values), title="latent traversals")
    ax = fig.axes[0]
    _, height, width = image_sides(image_shape)
    for row, dim in enumerate(dims):
        ax.text(-1, row * (height + 1) + (height - 1) / 2, f"z[{dim}]", ha="right", va="center")
    for col, value in enumerate(values.tolist()):
        centre = col * (width + 1) + (width - 1) / 2
        ax.text(centre, len(dims) * (height + 1) - 0.5, f"{value:g}", ha="center", va="top")
    return fig

