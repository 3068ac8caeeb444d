"""Bayesian linear regression: maximum likelihood, MAP and the exact posterior in closed
form, and the same model as a Pyro program for SVI and NUTS (notebook 00).

The model, with features phi(x) (P columns, a constant one among them), a Gaussian prior of
precision ``alpha`` on the weights and Gaussian noise of precision ``beta``:

    w ~ N(0, alpha^-1 I),   y_n | w ~ N(phi(x_n)^T w, beta^-1).

- maximum likelihood: w_ML = (Phi^T Phi)^-1 Phi^T y, least squares (a flat prior);
- MAP: w_MAP = (Phi^T Phi + lambda I)^-1 Phi^T y with lambda = alpha / beta: ridge;
- the posterior (Bishop, PRML 3.3): N(w | m_N, S_N), S_N^-1 = alpha I + beta Phi^T Phi,
  m_N = beta S_N Phi^T y, and the predictive y* ~ N(phi*^T m_N, 1/beta + phi*^T S_N phi*).

The mean-field Gaussian closest in KL(q || p) to the posterior N(m, Lambda^-1) has the mean m
and variances 1 / Lambda_jj (Bishop, PRML 10.1.2): :func:`mean_field_variances`.
"""

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.infer import MCMC, NUTS, SVI, Trace_ELBO

from ppl_vae.errors import DataError


def polynomial_features(x, degree):
    """Columns 1, x, x^2, ..., x^degree of a 1-d tensor x: shape (N, degree + 1)."""
    x = torch.as_tensor(x)
    if x.dim() != 1:
        raise DataError(f"expected x of shape (N,); got {tuple(x.shape)}")
    return x.unsqueeze(-1) ** torch.arange(degree + 1, dtype=x.dtype, device=x.device)


def least_squares(features, y):
    """w_ML: the least-squares weights, shape (P,)."""
    return torch.linalg.lstsq(features, y.unsqueeze(-1)).solution.squeeze(-1)


def ridge(features, y, penalty):
    """w_MAP = (Phi^T Phi + penalty I)^-1 Phi^T y: ridge regression on every weight (the
    constant column included), the MAP weights for penalty = alpha / beta."""
    gram = features.T @ features
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(gram + penalty * eye, features.T @ y)


def conjugate_posterior(features, y, *, prior_precision, noise_precision):
    """The exact posterior N(w | mean, covariance) of the weights.

    Returns
    -------
    mean : Tensor, shape (P,)
    covariance : Tensor, shape (P, P)
    """
    gram = features.T @ features
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    precision = prior_precision * eye + noise_precision * gram
    chol = torch.linalg.cholesky(precision)
    covariance = torch.cholesky_inverse(chol)
    mean = noise_precision * covariance @ features.T @ y
    return mean, covariance


def predictive(features, mean, covariance=None, *, noise_precision):
    """The predictive distribution of y at the rows of ``features``: its mean and standard
    deviation, sqrt(1/beta + phi^T S phi). A point estimate has ``covariance=None``: only
    the noise is left in its spread."""
    loc = features @ mean
    var = torch.full_like(loc, 1 / noise_precision)
    if covariance is not None:
        var = var + ((features @ covariance) * features).sum(-1)
    return loc, var.sqrt()


def mean_field_variances(covariance):
    """Variances of the mean-field Gaussian that minimises KL(q || p) for p = N(m, covariance):
    1 / Lambda_jj, Lambda the precision. They never exceed the marginal variances."""
    return 1 / torch.linalg.inv(covariance).diagonal()


def regression_model(features, y=None, *, prior_precision=None, noise_precision=1.0):
    """The Pyro program: w ~ N(0, alpha^-1 I) (a flat, improper prior when
    ``prior_precision`` is None), y ~ N(Phi w, beta^-1). Returns Phi w."""
    num_features = features.shape[-1]
    if prior_precision is None:
        prior = dist.ImproperUniform(constraints.real, (), (num_features,))
    else:
        scale = features.new_tensor(prior_precision) ** -0.5
        prior = dist.Normal(features.new_zeros(num_features), scale).to_event(1)
    w = pyro.sample("w", prior)
    mean = features @ w
    with pyro.plate("data", features.shape[0]):
        pyro.sample("y", dist.Normal(mean, features.new_tensor(noise_precision) ** -0.5),
                    obs=y)
    return mean


def fit_svi(guide_class, features, y, *, steps=2000, lr=0.05, **model_options):
    """Fit an autoguide (``AutoDelta``, ``AutoNormal``, ...) of :func:`regression_model`
    by SVI with Adam (learning rate decayed tenfold), from w = 0.

    The fit runs in a param-store scope of its own, so that two fits do not share the
    autoguide's parameter names. Returns ``(loc, scale)`` of w, detached; ``scale`` is None
    for a guide without one (``AutoDelta``).
    """
    from pyro.infer.autoguide.initialization import init_to_value

    def model(features, y):
        return regression_model(features, y, **model_options)

    init = init_to_value(values={"w": features.new_zeros(features.shape[-1])})
    with pyro.get_param_store().scope():
        guide = guide_class(model, init_loc_fn=init)
        optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": 0.1 ** (1 / steps)})
        svi = SVI(model, guide, optim, Trace_ELBO())
        for _ in range(steps):
            svi.step(features, y)
        loc = guide.median()["w"].detach()
        scale = guide.scales.w.detach() if hasattr(guide, "scales") else None
    return loc, scale


def nuts_samples(features, y, *, num_samples=1000, warmup_steps=500, **model_options):
    """Posterior draws of w by NUTS, shape (num_samples, P)."""
    def model(features, y):
        return regression_model(features, y, **model_options)

    mcmc = MCMC(NUTS(model), num_samples=num_samples, warmup_steps=warmup_steps,
                disable_progbar=True)
    mcmc.run(features, y)
    return mcmc.get_samples()["w"]
