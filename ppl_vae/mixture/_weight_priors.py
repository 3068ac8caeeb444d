"""Priors on the mixture weights for the variational mixture: Dirichlet or stick-breaking.

Each class turns the counts N_k into the variational posterior's concentration, and
gives E[log pi_k], the point weights, the predictive weights E[pi_k], and
KL(q(pi) || p(pi)) for the lower bound. Concentrations carry a leading restart axis R:
(R, K) for the Dirichlet, (R, 2, K) for the K Beta sticks (a_k, b_k).
"""

import numpy as np
import torch

from ppl_vae.errors import ConfigError


def _log_dirichlet_norm(alpha):
    """log C(alpha) = log Gamma(sum alpha) - sum log Gamma(alpha_k), over the last axis."""
    return torch.lgamma(alpha.sum(-1)) - torch.lgamma(alpha).sum(-1)


def _log_beta(a, b):
    return torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)


class DirichletDistribution:
    r"""pi ~ Dirichlet(alpha_0 1_K): a finite mixture (Bishop, PRML 10.39).

    q(pi) = Dirichlet(alpha) with alpha_k = alpha_0 + N_k.
    """

    name = "dirichlet_distribution"

    def posterior(self, nk, prior):
        return prior + nk

    def expected_log_weights(self, alpha):
        return torch.special.digamma(alpha) - torch.special.digamma(alpha.sum(-1, keepdim=True))

    def weights(self, alpha):
        return alpha / alpha.sum(-1, keepdim=True)

    def predictive_weights(self, alpha):
        """E[pi_k] under q, and the mass left to components beyond K (none here)."""
        return self.weights(alpha), torch.zeros(alpha.shape[:-1], dtype=alpha.dtype,
                                                device=alpha.device)

    def kl(self, alpha, prior):
        """KL(q(pi) || p(pi)) per restart."""
        alpha0 = torch.full_like(alpha, prior)
        return (_log_dirichlet_norm(alpha) - _log_dirichlet_norm(alpha0)
                + ((alpha - prior) * self.expected_log_weights(alpha)).sum(-1))

    def export(self, alpha):
        return alpha.cpu().numpy()

    def draw(self, exported, num_draws, rng):
        """num_draws weight vectors from q(pi), given :meth:`export`'s concentration (numpy)."""
        return rng.dirichlet(np.asarray(exported, dtype=float), size=num_draws)


class DirichletProcess:
    r"""Stick-breaking prior, truncated in q: v_k ~ Beta(1, gamma), pi_k = v_k prod_{j<k}
    (1 - v_j) (Blei & Jordan, 2006), with q(z_n) supported on the first K components and
    q(v_k) = Beta(a_k, b_k), a_k = 1 + N_k, b_k = gamma + sum_{j>k} N_j.

    The sticks beyond K keep their prior, so the K weights sum to less than one; the rest
    of the mass belongs to components that no data point is assigned to.
    """

    name = "dirichlet_process"

    def posterior(self, nk, prior):
        after = nk.flip(-1).cumsum(-1).flip(-1) - nk
        return torch.stack([1.0 + nk, prior + after], dim=-2)

    def _expected_logs(self, ab):
        a, b = ab.unbind(-2)
        total = torch.special.digamma(a + b)
        return torch.special.digamma(a) - total, torch.special.digamma(b) - total

    def expected_log_weights(self, ab):
        log_v, log_1mv = self._expected_logs(ab)
        return log_v + log_1mv.cumsum(-1) - log_1mv

    def predictive_weights(self, ab):
        """E[pi_k] = E[v_k] prod_{j<k} E[1 - v_j], and the mass prod_k E[1 - v_k] left over."""
        a, b = ab.unbind(-2)
        rest = b / (a + b)
        kept = torch.cumprod(rest, -1)
        before = torch.cat([torch.ones_like(kept[..., :1]), kept[..., :-1]], -1)
        return a / (a + b) * before, kept[..., -1]

    def weights(self, ab):
        """scikit-learn's weights_: E[pi_k], renormalised over the K components."""
        mean, _ = self.predictive_weights(ab)
        return mean / mean.sum(-1, keepdim=True)

    def kl(self, ab, prior):
        """sum_k KL(Beta(a_k, b_k) || Beta(1, gamma)) per restart."""
        a, b = ab.unbind(-2)
        log_v, log_1mv = self._expected_logs(ab)
        prior_t = torch.as_tensor(prior, dtype=ab.dtype)
        terms = (-_log_beta(a, b) + _log_beta(torch.ones_like(a), prior_t)
                 + (a - 1) * log_v + (b - prior) * log_1mv)
        return terms.sum(-1)

    def export(self, ab):
        a, b = ab.cpu().unbind(-2)
        return a.numpy(), b.numpy()

    def draw(self, exported, num_draws, rng):
        """Truncated stick-breaking draws from q: v_k ~ Beta(a_k, b_k) for k < K, v_K = 1."""
        a, b = (np.asarray(c, dtype=float) for c in exported)
        v = rng.beta(a, b, size=(num_draws, len(a)))
        v[:, -1] = 1.0
        remaining = np.cumprod(np.concatenate([np.ones((num_draws, 1)), 1.0 - v[:, :-1]], 1), 1)
        return v * remaining


WEIGHT_PRIORS = {cls.name: cls for cls in (DirichletDistribution, DirichletProcess)}


def weight_prior(name):
    if name not in WEIGHT_PRIORS:
        raise ConfigError(f"weight_concentration_prior_type must be one of "
                          f"{sorted(WEIGHT_PRIORS)}; got {name!r}")
    return WEIGHT_PRIORS[name]()
