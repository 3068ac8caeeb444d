"""The aggregate posterior q(z) = 1/N sum_n q(z | x_n): its total correlation, and the split
of the KL term into index-code mutual information, total correlation and dimension-wise KL
(Chen et al. 2018). The disentangling penalties (:mod:`ppl_vae.inference.penalties`) and
the evaluation reports both use these estimators."""

import math

import pyro.distributions as dist
import torch

from ppl_vae.errors import ConfigError


def _is_diagonal_normal(q):
    return (isinstance(q, torch.distributions.Independent)
            and isinstance(q.base_dist, torch.distributions.Normal)
            and q.reinterpreted_batch_ndims == 1)


def factor_marginals(q, what="the guide"):
    """The one-dimensional marginals of a Gaussian q over R^L, as a Normal of batch (..., L).

    Raises ConfigError for a distribution without closed-form marginals (flows, mixtures,
    the joint latent of JointVAE).
    """
    if _is_diagonal_normal(q):
        return q.base_dist
    gaussians = (torch.distributions.MultivariateNormal,
                 torch.distributions.LowRankMultivariateNormal)
    if isinstance(q, gaussians):
        return dist.Normal(q.loc, q.variance.sqrt())
    raise ConfigError(f"the total-correlation terms need the one-dimensional marginals of "
                      f"{what}, a Gaussian; {type(q).__name__} has none in closed form")


def posterior_covariance(q):
    """Cov_q[z] of each point's q(z | x), shape (..., L, L)."""
    if _is_diagonal_normal(q):
        return torch.diag_embed(q.base_dist.scale.pow(2))
    try:
        return q.covariance_matrix
    except (AttributeError, NotImplementedError):
        raise ConfigError(f"DIP-VAE II needs the covariance of q(z | x); {type(q).__name__} "
                          "has none in closed form") from None


def pairwise_log_densities(q, z):
    """log q(z_i | x_j) for every code z_i against every point's q(. | x_j).

    Parameters
    ----------
    q : Distribution
        A Gaussian with batch shape (..., M): the posteriors of M points.
    z : Tensor, shape (..., B, L)
        Codes (usually z_i ~ q(. | x_i) of the same points, B = M).

    Returns
    -------
    joint : Tensor, shape (..., B, M)
        log q(z_i | x_j).
    per_dim : Tensor, shape (..., B, M, L)
        log q(z_il | x_j), the one-dimensional marginals.
    """
    marginals = factor_marginals(q)
    z_i = z.unsqueeze(-2)
    per_dim = dist.Normal(marginals.loc.unsqueeze(-3), marginals.scale.unsqueeze(-3)).log_prob(z_i)
    if _is_diagonal_normal(q):
        return per_dim.sum(-1), per_dim
    full = dist.MultivariateNormal(q.loc.unsqueeze(-3),
                                   scale_tril=q.scale_tril.unsqueeze(-4))
    return full.log_prob(z_i), per_dim


def log_importance_weights(batch_size, num_data, estimator="mss", device=None):
    """log w_ij: how much q(z_i | x_j) weighs in the minibatch estimate of the aggregate
    posterior q(z_i) = 1/N sum_n q(z_i | x_n), z_i drawn for the batch's point i.

    - ``"mss"``, minibatch stratified sampling (Chen et al. 2018, appendix C.2, in its
      symmetric form): the point's own posterior weighs 1/N (it is certainly in the data)
      and each of the B - 1 others (N - 1) / (N (B - 1)), an unbiased estimate of the sum
      over the N - 1 other points. With B = N every weight is 1/N and q(z_i) is exact.
    - ``"mws"``, minibatch weighted sampling (Chen et al. 2018, eq. S5): 1 / (N B) each,
      which sum to 1/N, not 1: every log q(z) estimate is about log N too low, and a TC
      estimate carries a constant offset of about (L - 1) log N (no effect on gradients).

    A batch of one point has only its own posterior: weight 1.
    """
    if estimator not in ("mss", "mws"):
        raise ConfigError(f"estimator must be 'mss' or 'mws'; got {estimator!r}")
    if estimator == "mws":
        return torch.full((batch_size, batch_size), -math.log(num_data * batch_size),
                          device=device)
    if batch_size == 1:
        return torch.zeros(1, 1, device=device)
    others = math.log((num_data - 1) / (num_data * (batch_size - 1)))
    weights = torch.full((batch_size, batch_size), others, device=device)
    return weights.fill_diagonal_(-math.log(num_data))


def total_correlation(q, z, num_data, estimator="mss"):
    """Minibatch estimate of the total correlation of the aggregate posterior,

        TC = E_q(z)[log q(z) - sum_l log q(z_l)],   q(z) = 1/N sum_n q(z | x_n),

    from a batch's posteriors q(z | x_i) (batch shape (..., B)) and codes z_i ~ q(z | x_i)
    (shape (..., B, L)): the mean over i of log q^(z_i) - sum_l log q^(z_il), with q^ the
    estimate of :func:`log_importance_weights`. Returns shape (...,), nats.

    Bias: log q^ is the log of an unbiased estimate, so E[log q^] <= log q (Jensen), for
    the joint and each marginal alike; the difference, TC's estimate, is biased either
    way by an amount that vanishes as B approaches N (exact but for Monte Carlo noise at
    B = N). It is not clipped at 0 and can be slightly negative when TC is near 0.
    """
    joint, per_dim = pairwise_log_densities(q, z)
    log_w = log_importance_weights(z.shape[-2], num_data, estimator, device=z.device)
    log_qz = (joint + log_w).logsumexp(-1)
    log_qz_dims = (per_dim + log_w.unsqueeze(-1)).logsumexp(-2)
    return (log_qz - log_qz_dims.sum(-1)).mean(-1)


def kl_decomposition_terms(q, z, prior, *, chunk=256):
    """Per code, the three parts of log q(z | x) - log p(z) (Chen et al. 2018):

        mi   = log q(z | x) - log q(z)                  (index-code mutual information)
        tc   = log q(z) - sum_l log q(z_l)              (total correlation)
        dwkl = sum_l log q(z_l) - log p(z_l)            (dimension-wise KL)

    with q(z) = 1/M sum_j q(z | x_j) the aggregate posterior of the M points of ``q``,
    computed exactly (``chunk`` codes at a time), and p factorised. Their means over codes
    z_i ~ q(z | x_i) estimate I(x; z), TC and sum_l KL(q(z_l) || p(z_l)), and add up exactly
    to the mean of ``kl`` = log q(z | x) - log p(z), the KL term's Monte Carlo estimate.
    With the aggregate exact, the only error is Monte Carlo noise (no bias from q(z)'s
    estimate, as minibatch estimates have); means near 0 can come out slightly negative.

    Parameters
    ----------
    q : Distribution
        Gaussian, batch shape (M,).
    z : Tensor, shape (M, L)
        z_i ~ q(z | x_i).
    prior : Distribution
        p(z), with closed-form one-dimensional marginals.

    Returns
    -------
    dict of Tensor, each of shape (M,)
        ``mi``, ``tc``, ``dwkl``, ``kl``.
    """
    m = z.shape[0]
    log_pz_dims = factor_marginals(prior, "the prior").log_prob(z)
    log_qz, log_qz_dims = [], []
    for start in range(0, m, chunk):
        joint, per_dim = pairwise_log_densities(q, z[start : start + chunk])
        log_qz.append(joint.logsumexp(-1) - math.log(m))
        log_qz_dims.append(per_dim.logsumexp(-2) - math.log(m))
    log_qz, log_qz_dims = torch.cat(log_qz), torch.cat(log_qz_dims)
    own = q.log_prob(z)
    return {"mi": own - log_qz, "tc": log_qz - log_qz_dims.sum(-1),
            "dwkl": (log_qz_dims - log_pz_dims).sum(-1), "kl": own - log_pz_dims.sum(-1)}


@torch.no_grad()
def kl_decomposition(vae, x, y=None):
    """The ELBO's KL term, averaged over the rows of ``x``, split into three parts (Chen
    et al. 2018, "Isolating Sources of Disentanglement in VAEs"):

        E_x KL(q(z | x) || p(z)) = I(x; z) + TC + sum_l KL(q(z_l) || p(z_l)),

    the index-code mutual information, the total correlation and the dimension-wise KL of
    the aggregate posterior q(z) = 1/N sum_n q(z | x_n) of the N rows, computed exactly over
    all rows at one code z_n ~ q(z | x_n) per row (see
    :func:`kl_decomposition_terms`): the three add up exactly to ``kl``,
    the Monte Carlo KL at the same codes.

    They describe the aggregate posterior of these N rows. I is at most log N, and when it
    comes close (posteriors that barely overlap, as a well-trained encoder gives), q(z) is a
    set of N narrow bumps: its TC then reflects the finite sample as much as the model, and
    exceeds the TC of the aggregate over the data distribution. Compare TCs at equal N.

    Needs a Gaussian guide and a prior with closed-form one-dimensional marginals (the
    ``normal`` prior); raises ConfigError otherwise.

    Returns
    -------
    dict of float
        ``mi``, ``tc``, ``dwkl`` and their sum ``kl``, nats per example.
    """
    q = vae.encode(x, y)
    terms = kl_decomposition_terms(q, q.sample(), vae.prior())
    return {key: float(value.mean()) for key, value in terms.items()}
