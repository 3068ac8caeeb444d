"""The Bayesian Gaussian mixture as a Pyro program: SVI with enumeration, and NUTS.

The same mixture that :mod:`ppl_vae.mixture` fits by EM (maximum likelihood) and by
coordinate-ascent VI (Bishop PRML 10.2) is written here as a Pyro model with a discrete
assignment per point. Pyro sums the assignment out exactly (``TraceEnum_ELBO`` or NUTS
with enumeration), so the only latents left to infer are the parameters:

- ``PyroGaussianMixture(guide="map")``: an ``AutoDelta`` guide, i.e. MAP by SVI, the
  gradient-based analogue of EM (with a weak prior);
- ``PyroGaussianMixture(guide="meanfield")``: an ``AutoNormal`` guide, a mean-field
  Gaussian over the unconstrained parameters;
- :func:`nuts_gmm`: ``MCMC(NUTS)``, the reference posterior on small data.

Mixture posteriors are identified only up to a permutation of the components; see
:func:`ppl_vae.mixture.arviz_export.align_components`.
"""

import contextlib
import itertools
import math
from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import MCMC, NUTS, TraceEnum_ELBO, config_enumerate, infer_discrete
from pyro.infer.autoguide import AutoDelta, AutoNormal
from pyro.infer.autoguide.initialization import init_to_value
from pyro.ops.indexing import Vindex
from sklearn.base import BaseEstimator, DensityMixin
from tqdm.auto import tqdm

from ppl_vae.data import check_data
from ppl_vae.device import resolve_device
from ppl_vae.errors import ConfigError, DataError, NotFittedError
from ppl_vae.inference.svi import SVI
from ppl_vae.mixture._init import kmeans, seed_from
from ppl_vae.mixture._params import POSITIVE, POSITIVE_INT, RANDOM_STATE, Names, validate

GUIDES = {"map": AutoDelta, "meanfield": AutoNormal}

# Factor by which Adam's learning rate decays over the whole run.
_LR_DECAY = 0.01
# Draws of the guide averaged into the meanfield posterior-mean point estimate.
_POINT_DRAWS = 1000
# Seed of those draws, so that the fitted attributes do not depend on the global RNG.
_POINT_SEED = 20240611


@dataclass(frozen=True)
class MixturePrior:
    """Priors of the Pyro mixture, relative to the data's mean ``m`` and per-feature std ``s``.

    With K components and d features, for k = 1..K and feature j::

        weights        ~ Dirichlet(weight_concentration * 1_K)
        means[k, j]    ~ Normal(m_j, mean_scale * s_j)
        scales[k, j]   ~ LogNormal(log s_j, scale_log_sd)
        corr_cholesky[k] ~ LKJCholesky(d, lkj_concentration)        (d >= 2 only)
        Sigma_k = diag(scales[k]) L_k L_k^T diag(scales[k]),  L_k = corr_cholesky[k]

    ``scales[k]`` is therefore the square root of the diagonal of Sigma_k. The defaults are
    weak: a flat Dirichlet (MAP weights equal the maximum-likelihood weights), means within
    ten data standard deviations, scales spread over a factor e^1.5 ~ 4.5 around the data
    std, and the LKJ(1) prior, uniform over correlation matrices. Because every scale in the
    prior comes from (m, s), the posterior is equivariant under per-feature affine changes
    of units, which is what lets SVI run on standardized data.

    The MAP point maximises the density of the sites as sampled (scales and Cholesky
    factors), Jacobians included: for d = 2 and ``lkj_concentration=1`` that density is
    flat in the correlation; for d > 2 it leans mildly towards weaker correlations.
    """

    weight_concentration: float = 1.0
    mean_scale: float = 10.0
    scale_log_sd: float = 1.5
    lkj_concentration: float = 1.0


@config_enumerate
def mixture_model(X, n_components, prior=MixturePrior(), *, center=None, spread=None,
                  batch_size=None):
    """The Bayesian Gaussian mixture of :class:`MixturePrior`, with a discrete assignment per point.

    Parameters
    ----------
    X : torch.Tensor, shape (N, d)
        The data (all of it, also when ``batch_size`` subsamples it).
    n_components : int
        K.
    prior : MixturePrior
    center, spread : torch.Tensor, shape (d,), optional
        The ``m`` and ``s`` of the prior; default: ``X``'s mean and standard deviation.
    batch_size : int, optional
        Subsample size of the ``data`` plate; the plate scales the likelihood by N/B so
        that the ELBO is the full-data ELBO.

    ``config_enumerate`` marks ``assignment`` for parallel enumeration: under
    ``TraceEnum_ELBO`` or NUTS (``max_plate_nesting=1``) it is summed out exactly, giving
    log p(x_n | theta) = logsumexp_k [log weights_k + log N(x_n | means_k, Sigma_k)].
    """
    d = X.shape[-1]
    center = X.mean(0) if center is None else center
    spread = X.std(0) if spread is None else spread
    concentration = X.new_full((n_components,), prior.weight_concentration)
    weights = pyro.sample("weights", dist.Dirichlet(concentration))
    with pyro.plate("components", n_components):
        means = pyro.sample("means", dist.Normal(center, prior.mean_scale * spread).to_event(1))
        scales = pyro.sample("scales", dist.LogNormal(spread.log(), prior.scale_log_sd).to_event(1))
        if d > 1:
            lkj = dist.LKJCholesky(d, X.new_tensor(prior.lkj_concentration))
            scale_tril = scales.unsqueeze(-1) * pyro.sample("corr_cholesky", lkj)
        else:
            scale_tril = scales.unsqueeze(-1)
    with pyro.plate("data", X.shape[0], subsample_size=batch_size, device=X.device) as idx:
        assignment = pyro.sample("assignment", dist.Categorical(weights))
        component = dist.MultivariateNormal(
            Vindex(means)[..., assignment, :], scale_tril=Vindex(scale_tril)[..., assignment, :, :]
        )
        pyro.sample("obs", component, obs=X[idx])


# ----------------------------------------------------------------------------- helpers


def as_data(X, *, device=None, n_features=None, name="X") -> torch.Tensor:
    """``X`` (numpy or torch) as a validated float64 tensor of shape (N, d) on ``device``."""
    if not isinstance(X, torch.Tensor):
        try:
            X = torch.as_tensor(np.asarray(X, dtype=np.float64))
        except (TypeError, ValueError) as exc:
            raise DataError(f"{name}: expected an array of real numbers ({exc})") from None
    check_data(X, support="real", name=name, data_dim=n_features)
    return X.detach().to(device=device, dtype=torch.float64)


def _check_fit_data(X, n_components):
    n = X.shape[0]
    if n < max(2, n_components):
        raise DataError(
            f"X: {n} examples are too few for {n_components} components; need at least "
            f"{max(2, n_components)}"
        )
    constant = (X.std(0) == 0).nonzero().flatten().tolist()
    if constant:
        raise DataError(
            f"X: feature(s) {constant} are constant; the prior's scale is set by each "
            "feature's std, so drop them"
        )


def _seed(random_state):
    """None (leave the RNGs alone) or an int seed from sklearn-style ``random_state``."""
    return None if random_state is None else seed_from(random_state)


def seeded(random_state):
    """Seed Pyro's RNGs for the block and restore the caller's state after
    (``poutine.seed``); None: no change."""
    seed = _seed(random_state)
    return contextlib.nullcontext() if seed is None else poutine.seed(rng_seed=seed)


def kmeans_start(X, n_components):
    """The values of ``mixture_model``'s sites for the k-means clustering of X.

    The clustering is :func:`ppl_vae.mixture._init.kmeans` (as EM's ``init_params="kmeans"``),
    seeded from torch's global RNG (see :func:`seeded`). Returns ``weights``, ``means``,
    ``scales`` and ``corr_cholesky``: cluster frequencies, centres, and the within-cluster
    std per feature (shrunk towards the pooled one for small clusters).
    """
    n, d = X.shape
    generator = torch.Generator().manual_seed(int(torch.randint(2**62, (1,))))
    centers = kmeans(X, n_components, generator)
    labels = torch.cdist(X, centers).argmin(1)
    counts = torch.bincount(labels, minlength=n_components).to(X.dtype)
    sq_dev = (X - centers[labels]).square()
    pooled = sq_dev.mean(0).clamp(min=1e-6 * X.var(0))
    per_cluster = torch.zeros_like(centers).index_add_(0, labels, sq_dev)
    variances = (per_cluster + pooled) / (counts[:, None] + 1)
    init = {
        "weights": (counts + 1) / (n + n_components),
        "means": centers,
        "scales": variances.sqrt(),
    }
    if d > 1:
        init["corr_cholesky"] = torch.eye(d, dtype=X.dtype, device=X.device).expand(
            n_components, d, d).clone()
    return init


def _covariances(draws):
    """Sigma = diag(scales) L L^T diag(scales) for site draws with leading batch dims."""
    scales = draws["scales"]
    if "corr_cholesky" not in draws:
        return scales.square().unsqueeze(-1)
    tril = scales.unsqueeze(-1) * draws["corr_cholesky"]
    return tril @ tril.transpose(-1, -2)


def _sites_from_covariances(covariances):
    """Inverse of :func:`_covariances`: the (scales, corr_cholesky) sites of Sigma."""
    scales = covariances.diagonal(dim1=-2, dim2=-1).sqrt()
    sites = {"scales": scales}
    if covariances.shape[-1] > 1:
        corr = covariances / (scales.unsqueeze(-1) * scales.unsqueeze(-2))
        sites["corr_cholesky"] = torch.linalg.cholesky(corr)
    return sites


def to_numpy(samples):
    return {name: value.detach().cpu().numpy() for name, value in samples.items()}


# ----------------------------------------------------------------------------- scoring


class _MixtureScoring:
    """sklearn's predict_proba / predict / score_samples / score from S parameter draws.

    Subclasses provide ``_draws``: torch tensors ``weights`` (S, K), ``means`` (S, K, d),
    ``covariances`` (S, K, d, d) in the data's units. With S = 1 this is the plug-in
    mixture density; with S posterior draws it is the posterior predictive
    p(x | X) ~ (1/S) sum_s p(x | theta_s), in log space with logsumexp.
    """

    # At most this many (point, draw, component) log densities are held at once.
    _chunk_elements = 2**20

    def _check_fitted(self):
        if getattr(self, "_draws", None) is None:
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet; call fit(X) first"
            )

    def _validate(self, X):
        self._check_fitted()
        return as_data(X, device=self._draws["means"].device, n_features=self.n_features_in_)

    def _log_joint_chunks(self, X):
        """Yield log[weights_sk N(x_n | means_sk, Sigma_sk)], shape (n, S, K), chunk by chunk."""
        draws = self._draws
        log_weights = draws["weights"].log()
        components = dist.MultivariateNormal(
            draws["means"], scale_tril=torch.linalg.cholesky(draws["covariances"])
        )
        rows = max(1, self._chunk_elements // log_weights.numel())
        for start in range(0, X.shape[0], rows):
            x = X[start:start + rows, None, None, :]
            yield log_weights + components.log_prob(x)

    def score_samples(self, X):
        """log p(x_n) per row of X, in nats (see the class docstring for which density)."""
        X = self._validate(X)
        log_s = math.log(self._draws["weights"].shape[0])
        parts = [torch.logsumexp(lj.flatten(1), dim=1) - log_s for lj in self._log_joint_chunks(X)]
        return torch.cat(parts).cpu().numpy()

    def score(self, X, y=None):
        """Mean of :meth:`score_samples`: log-likelihood in nats per example (higher is better)."""
        return float(self.score_samples(X).mean())

    def predict_proba(self, X):
        """p(assignment_n = k | x_n), shape (N, K); rows sum to 1."""
        X = self._validate(X)
        parts = [torch.softmax(torch.logsumexp(lj, dim=1), dim=-1)
                 for lj in self._log_joint_chunks(X)]
        return torch.cat(parts).cpu().numpy()

    def predict(self, X):
        """The most probable component of each row of X (argmax of :meth:`predict_proba`)."""
        return self.predict_proba(X).argmax(1)

    def _set_attributes(self):
        draws = self._draws
        self.weights_ = draws["weights"].mean(0).cpu().numpy()
        self.means_ = draws["means"].mean(0).cpu().numpy()
        self.covariances_ = draws["covariances"].mean(0).cpu().numpy()


# ----------------------------------------------------------------------------- SVI


class PyroGaussianMixture(_MixtureScoring, DensityMixin, BaseEstimator):
    """The Bayesian Gaussian mixture fit by Pyro's SVI, the assignments summed out exactly.

    Parameters
    ----------
    n_components : int
        Number of mixture components K.
    guide : {"map", "meanfield"}
        ``"map"``: ``AutoDelta`` (MAP; with the weak default prior close to EM's maximum
        likelihood). ``"meanfield"``: ``AutoNormal``, independent Gaussians over the
        unconstrained parameters.
    num_steps : int
        SVI steps (Adam).
    lr : float
        Adam's learning rate, in standardized units (see Notes).
    batch_size : int, optional
        Minibatch size of the ``data`` plate; None uses all N points per step.
    random_state : int, optional
        Seeds the k-means++ start, the minibatches and the guide's draws; the global RNG
        state is restored afterwards.
    device : str or torch.device
        ``"auto"`` (CUDA if available, else CPU), ``"cpu"`` or ``"cuda"``.
    prior : MixturePrior, optional
        The priors (default: :class:`MixturePrior`'s weak defaults).
    progress : bool
        Show a tqdm progress bar with the running ELBO.

    Attributes
    ----------
    weights_ : ndarray (K,)
    means_ : ndarray (K, d)
    covariances_ : ndarray (K, d, d)
        The point estimate: the MAP values for ``"map"``; for ``"meanfield"`` the
        posterior means E_q[weights], E_q[means], E_q[Sigma], each averaged over 1000 guide
        draws with a fixed seed. ``predict``, ``predict_proba``, ``score_samples`` and
        ``score`` use the mixture at these values (a plug-in density, not a posterior
        predictive; for that, see :func:`nuts_gmm`).
    lower_bounds_ : ndarray (num_steps,)
        The ELBO at each step in nats per example, -loss / N (higher is better), for the
        model on the data in their original units. For ``"meanfield"`` it is a lower bound
        on log p(X) / N; for ``"map"`` it is log p(X, theta) / N at the current point, with
        the prior density of theta taken in standardized coordinates (a constant offset of
        2 K sum_j log s_j / N from the original ones).
    n_iter_ : int
        Number of SVI steps taken.
    guide_ : AutoDelta or AutoNormal
        The fitted guide, over ``poutine.block(mixture_model, hide=["assignment"])``, on the
        standardized data; use it through :meth:`posterior_samples`.

    Notes
    -----
    SVI runs on standardized data (per-feature mean 0, std 1) so that one learning rate
    suits data in any units; the prior is defined relative to the data's mean and std, so
    the posterior is equivariant and the results are mapped back exactly.
    """

    _parameter_constraints = {
        "n_components": [POSITIVE_INT],
        "guide": [Names(GUIDES, "guide")],
        "num_steps": [POSITIVE_INT],
        "lr": [POSITIVE],
        "batch_size": [POSITIVE_INT, None],
        "random_state": RANDOM_STATE,
        "device": [str, torch.device],
        "prior": [MixturePrior, None],
        "progress": ["boolean"],
    }

    def __init__(self, n_components=1, *, guide="map", num_steps=1000, lr=0.05,
                 batch_size=None, random_state=None, device="auto", prior=None,
                 progress=False):
        self.n_components = n_components
        self.guide = guide
        self.num_steps = num_steps
        self.lr = lr
        self.batch_size = batch_size
        self.random_state = random_state
        self.device = device
        self.prior = prior
        self.progress = progress

    # -- fitting

    def _check_params(self, n):
        validate(self.get_params(deep=False), self._parameter_constraints, type(self).__name__)
        if self.batch_size is not None and self.batch_size > n:
            raise ConfigError(f"batch_size must be None or in [1, N={n}]; got {self.batch_size!r}")
        return int(self.n_components)

    def fit(self, X, y=None):
        """Fit the mixture to X (numpy or torch, shape (N, d)); returns self."""
        X = as_data(X, device=resolve_device(self.device))
        k = self._check_params(X.shape[0])
        _check_fit_data(X, k)
        self.n_features_in_ = X.shape[1]
        self._center, self._spread = X.mean(0), X.std(0)
        Z = (X - self._center) / self._spread
        self._model_kwargs = {
            "prior": self.prior or MixturePrior(),
            "center": torch.zeros_like(self._center),
            "spread": torch.ones_like(self._spread),
        }
        # Each estimator keeps its own param store, so several can live in one process.
        self._param_state, self._draws = None, None
        with seeded(self.random_state), self._params():
            blocked = poutine.block(mixture_model, hide=["assignment"])
            self.guide_ = GUIDES[self.guide](blocked, init_loc_fn=init_to_value(
                values=kmeans_start(Z, k)))
            self.lower_bounds_ = self._run_svi(Z, k)
            fit_draws = self._guide_draws(Z, k, _POINT_DRAWS, seed=_POINT_SEED)
        self.n_iter_ = len(self.lower_bounds_)
        mean = {"weights": fit_draws["weights"].mean(0),
                "means": fit_draws["means"].mean(0),
                "covariances": _covariances(fit_draws).mean(0)}
        self._point = {"weights": mean["weights"], "means": mean["means"],
                       **_sites_from_covariances(mean["covariances"])}
        standardized = {name: value.unsqueeze(0) for name, value in mean.items()}
        self._draws = self._to_data_units(standardized)
        self._set_attributes()
        return self

    @contextlib.contextmanager
    def _params(self):
        with pyro.get_param_store().scope(self._param_state) as state:
            yield
        self._param_state = state

    def _run_svi(self, Z, k):
        # lr decays geometrically to lr * _LR_DECAY at the last step: Adam's steps keep
        # their size under noisy gradients, so a constant lr leaves the meanfield locs
        # jittering by about lr, more than the posterior std on a few hundred points.
        optim = pyro.optim.ClippedAdam({"lr": self.lr, "lrd": _LR_DECAY ** (1 / self.num_steps)})
        svi = SVI.of(mixture_model, self.guide_, optim, TraceEnum_ELBO(max_plate_nesting=1))
        n = Z.shape[0]
        # The data's change of units: log p(x) = log p(z) - sum_j log s_j.
        log_jacobian = float(self._spread.log().sum())
        batch = ((Z, k), {"batch_size": self.batch_size, **self._model_kwargs})
        with tqdm(total=self.num_steps, disable=not self.progress,
                  desc=f"SVI ({self.guide})") as bar:
            losses = svi.run(itertools.repeat(batch, self.num_steps), self.num_steps, bar=bar,
                             hint=f"lower lr (now {self.lr})")
        return -losses.double().cpu().numpy() / n - log_jacobian

    def _guide_draws(self, Z, k, num_samples, seed=None):
        """num_samples draws of the guide's sites, vectorized; standardized units."""
        with seeded(seed), pyro.plate("draws", num_samples, dim=-2):
            trace = poutine.trace(self.guide_).get_trace(Z, k, **self._model_kwargs)
        names = ["weights", "means", "scales"] + (["corr_cholesky"] if Z.shape[1] > 1 else [])
        draws = {name: trace.nodes[name]["value"].detach() for name in names}
        # weights sit in no plate, so the draws plate leaves a singleton dim: (S, 1, K).
        draws["weights"] = draws["weights"].squeeze(-2)
        return draws

    def _to_data_units(self, draws):
        center, spread = self._center, self._spread
        covariances = draws.get("covariances")
        covariances = _covariances(draws) if covariances is None else covariances
        return {
            "weights": draws["weights"],
            "means": center + spread * draws["means"],
            "covariances": covariances * spread.unsqueeze(-1) * spread.unsqueeze(-2),
        }

    # -- using the fit

    def posterior_samples(self, num_samples=1000, random_state=None):
        """Draws from the fitted guide, in the data's units, as numpy arrays.

        Returns ``{"weights": (S, K), "means": (S, K, d), "covariances": (S, K, d, d),
        "scales": (S, K, d)}``; ``scales`` is the square root of the covariances' diagonal.
        For ``guide="map"`` every draw is the MAP point.
        """
        self._check_fitted()
        Z = torch.zeros(1, self.n_features_in_, dtype=self._center.dtype,
                        device=self._center.device)
        with self._params():
            draws = self._to_data_units(self._guide_draws(
                Z, self._draws["weights"].shape[-1], num_samples, seed=_seed(random_state)))
        draws["scales"] = draws["covariances"].diagonal(dim1=-2, dim2=-1).sqrt()
        return to_numpy(draws)

    def predict(self, X):
        """MAP assignments by ``infer_discrete`` at the point estimate.

        Equal to the argmax of :meth:`predict_proba`; decoded by Pyro from the model itself.
        """
        X = self._validate(X)
        Z = (X - self._center) / self._spread
        k = self._draws["weights"].shape[-1]
        conditioned = poutine.condition(mixture_model, data=self._point)
        decode = infer_discrete(conditioned, first_available_dim=-2, temperature=0)
        rows = max(1, self._chunk_elements // k)
        labels = [
            poutine.trace(decode).get_trace(Z[start:start + rows], k, **self._model_kwargs)
            .nodes["assignment"]["value"]
            for start in range(0, Z.shape[0], rows)
        ]
        return torch.cat(labels).cpu().numpy()


# ----------------------------------------------------------------------------- NUTS


class NUTSMixture(_MixtureScoring):
    """The result of :func:`nuts_gmm`.

    Attributes
    ----------
    mcmc : pyro.infer.MCMC
        The sampler (for ``az.from_pyro``, diagnostics).
    samples : dict of ndarray
        ``weights`` (S, K), ``means`` (S, K, d), ``covariances`` (S, K, d, d), ``scales``
        (S, K, d), all chains concatenated, each draw relabelled to the k-means start of the
        chain (Hungarian matching on the means) so that a label switch within a chain does
        not average components together.
    weights_, means_, covariances_ : ndarray
        Posterior means of the relabelled draws.

    ``score_samples`` is the posterior predictive log density,
    log (1/S) sum_s p(x | theta_s); ``predict_proba`` the posterior predictive
    responsibilities, sum_s weights_sk N(x | theta_sk) / sum_s p(x | theta_s).
    """

    def __init__(self, mcmc, draws, n_features):
        self.mcmc = mcmc
        self.n_features_in_ = n_features
        self._draws = draws
        self.samples = to_numpy(draws)
        self.samples["scales"] = np.sqrt(np.diagonal(self.samples["covariances"], axis1=-2,
                                                     axis2=-1))
        self._set_attributes()


def nuts_gmm(X, n_components, *, num_samples=500, warmup_steps=500, num_chains=1,
             random_state=None, device="auto", progress=False, prior=None, max_tree_depth=10):
    """Sample the mixture's posterior with NUTS, the assignments enumerated out.

    A reference posterior for small data: each NUTS step sums the assignments of all N
    points over K components. Runs in the data's own units (NUTS adapts a diagonal mass
    matrix), starting every chain at the k-means++ clustering. ``max_tree_depth`` caps a
    draw's trajectory at 2**depth - 1 leapfrog steps (Pyro's default: 10); a smoke test
    lowers it, since a short warm-up leaves a small step size and the longest trajectories.

    Returns
    -------
    NUTSMixture
    """
    from ppl_vae.mixture.arviz_export import align_components

    validate({"n_components": n_components}, {"n_components": [POSITIVE_INT]}, "nuts_gmm")
    k = int(n_components)
    X = as_data(X, device=resolve_device(device))
    _check_fit_data(X, k)
    prior = prior or MixturePrior()
    center, spread = X.mean(0), X.std(0)
    with seeded(random_state):
        start = kmeans_start((X - center) / spread, k)
        start = {"weights": start["weights"], "means": center + spread * start["means"],
                 **_sites_from_covariances(_covariances(start)
                                           * spread.unsqueeze(-1) * spread.unsqueeze(-2))}
        kernel = NUTS(mixture_model, max_plate_nesting=1, max_tree_depth=max_tree_depth,
                      init_strategy=init_to_value(values=start))
        mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=warmup_steps,
                    num_chains=num_chains, disable_progbar=not progress)
        mcmc.run(X, k, prior, center=center, spread=spread)
    draws = {name: value.detach() for name, value in mcmc.get_samples().items()}
    draws = {"weights": draws["weights"], "means": draws["means"],
             "covariances": _covariances(draws)}
    aligned = align_components(start["means"].cpu().numpy(), to_numpy(draws))
    draws = {name: torch.as_tensor(value, device=X.device) for name, value in aligned.items()}
    return NUTSMixture(mcmc, draws, X.shape[1])
