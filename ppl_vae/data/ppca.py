"""Probabilistic PCA (Tipping & Bishop, 1999) in closed form.

The linear-Gaussian model ``z ~ N(0, I_q)``, ``x | z ~ N(W z + mu, sigma^2 I_D)`` has the
marginal ``x ~ N(mu, W W^T + sigma^2 I_D)`` and a maximum-likelihood fit known in closed
form: the reference a linear-Gaussian VAE is checked against (its ELBO can reach the
exact log-likelihood, and its decoder the MLE's subspace).
"""

import math

import torch

from ppl_vae.errors import DataError


def make_ppca(
    num_data: int, data_dim: int, latent_dim: int, *, noise_std: float = 0.5, seed: int = 0
) -> tuple[torch.Tensor, dict]:
    """Draw data from a random probabilistic-PCA model.

    ``W`` and ``mu`` have standard-normal entries; ``z ~ N(0, I)``;
    ``x = W z + mu + noise_std * eps`` with ``eps ~ N(0, I)``.

    Returns
    -------
    x : torch.Tensor
        Shape ``(num_data, data_dim)``, float32.
    params : dict
        The true ``"W"`` ``(data_dim, latent_dim)``, ``"mu"`` ``(data_dim,)`` and
        ``"sigma"`` (0-d tensor, equal to ``noise_std``).
    """
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(data_dim, latent_dim, generator=g)
    mu = torch.randn(data_dim, generator=g)
    z = torch.randn(num_data, latent_dim, generator=g)
    x = z @ W.T + mu + noise_std * torch.randn(num_data, data_dim, generator=g)
    return x, {"W": W, "mu": mu, "sigma": torch.tensor(noise_std, dtype=torch.float32)}


def ppca_log_likelihood(x, W, mu, sigma) -> float:
    """Mean log-density (nats per example) of ``x`` under ``N(mu, W W^T + sigma^2 I)``.

    Parameters
    ----------
    x : torch.Tensor
        Shape ``(N, D)``.
    W : torch.Tensor
        Shape ``(D, q)``.
    mu : torch.Tensor
        Shape ``(D,)``.
    sigma : float or torch.Tensor
        Noise standard deviation, a scalar.
    """
    f64 = {"dtype": torch.float64, "device": x.device}
    x, W, mu = x.to(**f64), torch.as_tensor(W).to(**f64), torch.as_tensor(mu).to(**f64)
    sigma = torch.as_tensor(sigma).to(**f64)
    D = x.shape[1]
    cov = W @ W.T + sigma**2 * torch.eye(D, **f64)
    chol = torch.linalg.cholesky(cov)
    white = torch.linalg.solve_triangular(chol, (x - mu).T, upper=False)
    log_det = 2 * chol.diagonal().log().sum()
    mahalanobis = white.pow(2).sum(0).mean()
    return float(-0.5 * (D * math.log(2 * math.pi) + log_det + mahalanobis))


def ppca_mle(x, latent_dim: int) -> dict:
    """Closed-form maximum-likelihood PPCA fit (Tipping & Bishop, 1999).

    With ``S`` the sample covariance (divided by N) and eigenvalues
    ``l_1 >= ... >= l_D`` with eigenvectors ``U``: ``mu`` is the sample mean,
    ``sigma^2 = mean(l_{q+1}, ..., l_D)`` and ``W = U_q (L_q - sigma^2 I)^{1/2}``
    (up to a rotation, taken as the identity).

    Parameters
    ----------
    x : torch.Tensor
        Shape ``(N, D)``.
    latent_dim : int
        q, with ``0 < q < D``.

    Returns
    -------
    dict
        ``"W"`` ``(D, q)``, ``"mu"`` ``(D,)``, ``"sigma"`` (0-d), in ``x``'s dtype and
        device, and ``"log_likelihood"``, the mean log-likelihood per example at the MLE
        (float, nats).
    """
    N, D = x.shape
    if not 0 < latent_dim < D:
        raise ValueError(
            f"latent_dim must lie in 1..{D - 1} for {D}-dimensional data; got {latent_dim}"
        )
    x64 = x.to(torch.float64)
    mu = x64.mean(0)
    centred = x64 - mu
    evals, evecs = torch.linalg.eigh(centred.T @ centred / N)
    evals, evecs = evals.flip(0), evecs.flip(1)
    noise_var = evals[latent_dim:].mean()
    # Relative to the largest eigenvalue: rank-deficient data leaves rounding noise, not 0.
    if noise_var <= D * torch.finfo(torch.float64).eps * evals[0]:
        raise DataError(
            f"data has rank <= {latent_dim}, so the noise variance MLE is 0; "
            "use a smaller latent_dim"
        )
    W = evecs[:, :latent_dim] * (evals[:latent_dim] - noise_var).clamp(min=0).sqrt()
    # At the MLE, tr(C^-1 S) = D, so the log-likelihood needs only the eigenvalues.
    log_det = evals[:latent_dim].log().sum() + (D - latent_dim) * noise_var.log()
    log_likelihood = -0.5 * (D * math.log(2 * math.pi) + float(log_det) + D)
    return {
        "W": W.to(x.dtype),
        "mu": mu.to(x.dtype),
        "sigma": noise_var.sqrt().to(x.dtype),
        "log_likelihood": log_likelihood,
    }
