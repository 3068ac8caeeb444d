"""Initial responsibilities: k-means, k-means++ seeds, random, or the user's own.

As in scikit-learn, an initialisation is a set of responsibilities from which one M-step
computes the first parameters. Here each is a *provider*: a function ``(start, x) ->
resp`` that returns the responsibilities of the chunk of rows starting at ``start``,
shape ``(rows, R, K)`` for R restarts, so that no N x K array is ever held.

On data sharded over processes (see :class:`~ppl_vae.mixture._data.ChunkedData`) every
process must start from the same parameters, i.e. the same summed statistics: seeds are
drawn by rank 0 among its own rows (the others hold none), k-means centres are broadcast
from rank 0 and refined by Lloyd's iterations over all shards, and "random" draws each
process's rows from its own stream of the shared seed.
"""

import math
import warnings

import numpy as np
import torch

from ppl_vae import distributed
from ppl_vae.errors import ConfigError, DataError
from ppl_vae.mixture._data import ChunkedData, DegenerateDataWarning

# Lloyd's algorithm stops when the centres move (in squared distance, summed) by less
# than this fraction of the mean feature variance, as scikit-learn's KMeans does.
KMEANS_TOL = 1e-4
KMEANS_MAX_ITER = 100


def seed_from(random_state) -> int:
    """An integer seed from None, an int, or a numpy Generator/RandomState."""
    if random_state is None:
        return int(np.random.SeedSequence().generate_state(1)[0])
    if isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool):
        return int(random_state)
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(2**31))
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(2**31))
    raise ConfigError(
        f"random_state must be None, an int or a numpy random generator; got {random_state!r}"
    )


def _sq_dist(x, centres):
    """Squared distances from rows x (n, d) to centres (m, d), computed in x's dtype."""
    c = centres.to(x.dtype)
    return torch.addmm(c.square().sum(-1), x, c.T, alpha=-2.0).add_(
        x.square().sum(-1, keepdim=True)).clamp_(min=0)


def _sample_proportional(data, weights, n, generator):
    """n row indices drawn with probability proportional to weights (N,), chunk by chunk."""
    size = data.chunk_size
    totals = torch.stack([weights[s:s + size].double().sum()
                          for s in range(0, len(weights), size)])
    cum = totals.cumsum(0)
    if float(cum[-1]) <= 0:
        return None
    u = torch.rand(n, generator=generator, dtype=torch.float64).to(cum.device) * cum[-1]
    picked = []
    for value in u:
        block = int(torch.searchsorted(cum, value, right=True).clamp(max=len(cum) - 1))
        before = cum[block - 1] if block > 0 else 0.0
        within = weights[block * size:(block + 1) * size].double().cumsum(0)
        row = int(torch.searchsorted(within, value - before, right=True).clamp(max=len(within) - 1))
        picked.append(block * size + row)
    return torch.tensor(picked)


def distinct_indices(n, count, generator):
    """``count`` distinct indices below n, uniformly, without an O(n) permutation."""
    chosen = []
    while len(chosen) < count:
        draws = torch.randint(n, (2 * count,), generator=generator).tolist()
        chosen = list(dict.fromkeys(chosen + draws))
    return torch.tensor(chosen[:count])


def kmeans_plusplus(data, n_clusters, n_restarts, generator):
    """Greedy k-means++ seeds (Arthur & Vassilvitskii, 2007): indices of shape (R, K).

    Each new seed is the best of ``2 + log K`` candidates drawn with probability
    proportional to the squared distance to the nearest seed so far.
    """
    n = data.n_samples
    trials = 2 + int(math.log(n_clusters))
    indices = torch.empty((n_restarts, n_clusters), dtype=torch.long)
    warned = False
    for r in range(n_restarts):
        indices[r, 0] = int(torch.randint(n, (1,), generator=generator))
        d2 = torch.cat([_sq_dist(x, data.rows(indices[r, :1])).squeeze(-1)
                        for _, x in data.chunks()])
        for k in range(1, n_clusters):
            candidates = _sample_proportional(data, d2, trials, generator)
            if candidates is None:  # every point sits on a seed already
                if not warned:
                    warnings.warn(
                        f"X has fewer distinct points than n_components={n_clusters}; "
                        "some components start on duplicate points",
                        DegenerateDataWarning, stacklevel=8)
                    warned = True
                indices[r, k] = int(torch.randint(n, (1,), generator=generator))
                continue
            centres = data.rows(candidates)
            potential = torch.zeros(len(candidates), dtype=torch.float64)
            for start, x in data.chunks():
                near = torch.minimum(_sq_dist(x, centres), d2[start:start + len(x), None])
                potential += near.double().sum(0).cpu()
            best = int(potential.argmin())
            indices[r, k] = candidates[best]
            for start, x in data.chunks():
                block = d2[start:start + len(x)]
                torch.minimum(block, _sq_dist(x, centres[best:best + 1]).squeeze(-1), out=block)
    return indices


def lloyd(data, centres, variance_scale, *, max_iter=KMEANS_MAX_ITER, tol=KMEANS_TOL):
    """Lloyd iterations for R restarts at once; centres (R, K, d) float64 -> refined."""
    r, k, d = centres.shape
    for _ in range(max_iter):
        counts = torch.zeros((r, k), dtype=torch.float64, device=centres.device)
        sums = torch.zeros((r, k, d), dtype=torch.float64, device=centres.device)
        for _, x in data.chunks():
            one_hot = _nearest_one_hot(x, centres)
            counts += one_hot.sum(0).double()
            sums += (one_hot.reshape(len(x), r * k).T @ x).reshape(r, k, d).double()
        counts, sums = data.sum_over_shards(counts, sums)
        new = torch.where(counts[..., None] > 0, sums / counts.clamp(min=1)[..., None], centres)
        shift = (new - centres).square().sum((-2, -1))
        centres = new
        if bool((shift <= tol * variance_scale).all()):
            break
    return centres


def _nearest_one_hot(x, centres):
    r, k, d = centres.shape
    dist = _sq_dist(x, centres.reshape(r * k, d)).reshape(len(x), r, k)
    return torch.nn.functional.one_hot(dist.argmin(-1), k).to(x.dtype)


def nearest_centre(centres):
    """Provider: one-hot responsibilities of the nearest centre (hard k-means labels)."""
    return lambda start, x: _nearest_one_hot(x, centres)


def seed_points(indices, n_clusters):
    """Provider: responsibility 1 at each seed point for its component, 0 elsewhere."""
    r = indices.shape[0]  # an index of -1 is no row of this process

    def provider(start, x):
        resp = torch.zeros((len(x), r, n_clusters), dtype=x.dtype, device=x.device)
        local = indices - start
        inside = (local >= 0) & (local < len(x))
        rr, kk = inside.nonzero(as_tuple=True)
        resp[local[rr, kk].to(x.device), rr.to(x.device), kk.to(x.device)] = 1
        return resp

    return provider


def uniform_random(seed, n_restarts, n_clusters, block=4096, stream=0):
    """Provider: uniform random responsibilities, normalised per row (scikit-learn's
    'random'). Rows are drawn in fixed blocks, each with its own seed, so that the
    responsibilities do not depend on the chunk size and repeated passes agree; each
    ``stream`` (a process's rank) has its own seeds (``seed + index < 2**32``)."""

    def draw(index):
        gen = torch.Generator().manual_seed(seed + index + stream * 2**32)
        return torch.rand((block, n_restarts, n_clusters), generator=gen, dtype=torch.float64)

    def provider(start, x):
        first, last = start // block, (start + len(x) - 1) // block
        rows = torch.cat([draw(i) for i in range(first, last + 1)])
        resp = rows[start - first * block:start - first * block + len(x)]
        return (resp / resp.sum(-1, keepdim=True)).to(x.device, x.dtype)

    return provider


def given(resp_init, n_samples, n_clusters):
    """Provider: the user's (n_samples, n_components) responsibilities, rows normalised."""
    resp = torch.as_tensor(np.asarray(resp_init, dtype=np.float64))
    if tuple(resp.shape) != (n_samples, n_clusters):
        raise ConfigError(f"resp_init must have shape ({n_samples}, {n_clusters}); "
                          f"got {tuple(resp.shape)}")
    rows = resp.sum(-1, keepdim=True)
    if not bool(torch.isfinite(resp).all()) or bool((resp < 0).any()) or bool((rows <= 0).any()):
        raise ConfigError("resp_init must be finite, non-negative, and positive in every row")
    resp = resp / rows
    return lambda start, x: resp[start:start + len(x)].to(x.device, x.dtype).unsqueeze(1)


def _seeds(pick, data, n_clusters, n_restarts, generator):
    """Row indices (R, K) from ``pick``; on sharded data only rank 0 picks, among its own
    rows, and the other processes get -1 (none of their rows)."""
    if not data.shard:
        return pick(data, n_clusters, n_restarts, generator)
    if data.shard_sizes[0] < n_clusters:
        raise DataError(f"process 0 draws the initial seeds among its own rows, but holds "
                        f"{data.shard_sizes[0]}, fewer than n_components={n_clusters}; give "
                        "it more rows or pass initial parameters")
    if distributed.rank() == 0:
        return pick(data, n_clusters, n_restarts, generator)
    return torch.full((n_restarts, n_clusters), -1, dtype=torch.long)


def _distinct_seeds(data, n_clusters, n_restarts, generator):
    return torch.stack([distinct_indices(data.n_samples, n_clusters, generator)
                        for _ in range(n_restarts)])


def _kmeans_centres(data, n_clusters, n_restarts, generator, variance_scale):
    """k-means++ seeds refined by Lloyd's iterations: centred centres (R, K, d), float64."""
    seeds = _seeds(kmeans_plusplus, data, n_clusters, n_restarts, generator)
    if not data.shard:
        centres = data.rows(seeds.flatten()).reshape(n_restarts, n_clusters, -1)
    else:  # rank 0 holds the seed rows
        mine = data.rows(seeds.flatten()).cpu() if distributed.rank() == 0 else None
        centres = distributed.broadcast_object(mine).to(data.device).reshape(
            n_restarts, n_clusters, -1)
    return lloyd(data, centres, variance_scale)


def kmeans(X, n_clusters, generator):
    """The k-means centres (K, d) of the rows of a tensor X (n, d), in X's coordinates,
    dtype and device: the same k-means++ seeding and Lloyd's iterations as
    ``init_params="kmeans"``."""
    data = ChunkedData(X, device=X.device, dtype=X.dtype)
    variance = float(X.double().var(0).mean())
    centres = _kmeans_centres(data, n_clusters, 1, generator, variance)[0]
    return (centres + data.center).to(X.dtype)


def _kmeans(data, n_clusters, n_restarts, generator, variance_scale):
    return nearest_centre(_kmeans_centres(data, n_clusters, n_restarts, generator,
                                          variance_scale))


def _kmeans_plusplus(data, n_clusters, n_restarts, generator, variance_scale):
    return seed_points(_seeds(kmeans_plusplus, data, n_clusters, n_restarts, generator),
                       n_clusters)


def _random_from_data(data, n_clusters, n_restarts, generator, variance_scale):
    return seed_points(_seeds(_distinct_seeds, data, n_clusters, n_restarts, generator),
                       n_clusters)


def _random(data, n_clusters, n_restarts, generator, variance_scale):
    seed = int(torch.randint(2**31, (1,), generator=generator))
    return uniform_random(seed, n_restarts, n_clusters,
                          stream=distributed.rank() if data.shard else 0)


# scikit-learn's names; "kmeans++" is accepted for "k-means++".
INITIALISATIONS = {"kmeans": _kmeans, "k-means++": _kmeans_plusplus,
                   "kmeans++": _kmeans_plusplus, "random": _random,
                   "random_from_data": _random_from_data}
INIT_PARAMS = tuple(INITIALISATIONS)


def responsibilities(init_params, data, n_clusters, n_restarts, generator, variance_scale):
    """The provider for ``init_params`` (one of :data:`INIT_PARAMS`)."""
    if init_params not in INITIALISATIONS:
        raise ConfigError(f"init_params must be one of {list(INIT_PARAMS)}; "
                          f"got {init_params!r}")
    return INITIALISATIONS[init_params](data, n_clusters, n_restarts, generator,
                                        variance_scale)
