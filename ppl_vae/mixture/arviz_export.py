"""Mixture posteriors from CAVI, SVI and NUTS as ArviZ InferenceData, side by side.

Every export has the same three posterior variables, so that ``az.summary`` and
``az.plot_forest([cavi, svi, nuts], model_names=[...], var_names=["means"])`` compare
them component by component:

- ``weights``  dims (chain, draw, component)
- ``means``    dims (chain, draw, component, feature)
- ``scales``   dims (chain, draw, component, feature): sqrt of the covariance diagonal

A mixture's components are labelled arbitrarily (the posterior is invariant under
permutations), so each export takes ``reference_means`` and relabels every draw to it
with :func:`align_components`; pass the same reference to all three.
"""

import arviz as az
import numpy as np
from scipy.optimize import linear_sum_assignment

from ppl_vae.errors import DataError
from ppl_vae.mixture._covariance import covariance_type
from ppl_vae.mixture._weight_priors import weight_prior

EXPORTED = ("weights", "means", "scales")
DIMS = {"weights": ["component"], "means": ["component", "feature"],
        "scales": ["component", "feature"]}


def align_components(reference_means, samples):
    """Relabel mixture draws so that component k is the one nearest ``reference_means[k]``.

    Parameters
    ----------
    reference_means : array (K, d)
    samples : dict of arrays
        Must hold ``means`` of shape (..., K, d); the leading dims ``...`` index draws
        (none for a point estimate). Every array whose shape starts with ``(..., K)``
        (weights, means, covariances, scales, ...) is permuted along that component axis;
        other entries are returned unchanged.

    Returns
    -------
    dict of numpy arrays, the same keys. For each draw separately, the permutation
    minimises sum_k ||means[perm[k]] - reference_means[k]||^2 (the Hungarian algorithm,
    ``scipy.optimize.linear_sum_assignment``), which also undoes label switching within
    an MCMC chain.
    """
    reference = np.asarray(reference_means, dtype=float)
    means = np.asarray(samples["means"], dtype=float)
    if reference.ndim != 2 or means.shape[-2:] != reference.shape:
        raise DataError(
            f"reference_means of shape {reference.shape} do not match samples['means'] of "
            f"shape {means.shape}; expected (..., K, d) with the reference's (K, d)"
        )
    batch = means.shape[:-2]
    flat = means.reshape(-1, *reference.shape)
    cost = ((flat[:, None, :, :] - reference[None, :, None, :]) ** 2).sum(-1)  # (S, ref, own)
    perm = np.stack([linear_sum_assignment(c)[1] for c in cost]).reshape(*batch, -1)
    axis = len(batch)
    aligned = {}
    for name, value in samples.items():
        value = np.asarray(value)
        if value.shape[:axis + 1] == perm.shape:
            index = perm.reshape(perm.shape + (1,) * (value.ndim - axis - 1))
            aligned[name] = np.take_along_axis(value, index, axis=axis)
        else:
            aligned[name] = value
    return aligned


def _scales(samples):
    if "scales" in samples:
        return samples
    return {**samples, "scales": np.sqrt(np.diagonal(samples["covariances"], axis1=-2, axis2=-1))}


def _posterior(samples, num_chains, reference_means):
    """The exported variables, relabelled, shaped (chain, draw, ...)."""
    samples = _scales(samples)
    if reference_means is not None:
        samples = align_components(reference_means, samples)
    return {name: np.asarray(samples[name]).reshape(num_chains, -1, *samples[name].shape[1:])
            for name in EXPORTED}


def _coords(samples):
    k, d = np.shape(samples["means"])[-2:]
    return {"component": np.arange(k), "feature": np.arange(d)}


def _from_samples(samples, reference_means, num_chains=1):
    return az.from_dict(posterior=_posterior(samples, num_chains, reference_means),
                        coords=_coords(samples), dims=DIMS)


def nuts_to_arviz(result, reference_means=None):
    """InferenceData of a :func:`~ppl_vae.mixture.pyro_gmm.nuts_gmm` result.

    ``az.from_pyro(result.mcmc)`` supplies the chain structure and the sampler
    statistics (``sample_stats``: divergences, tree depth, ...). Its posterior group is
    replaced by the exported variables of ``result.samples`` (already relabelled to the
    chain's start), relabelled to ``reference_means`` when given.
    """
    mcmc = result.mcmc
    idata = az.from_pyro(mcmc, log_likelihood=False)
    posterior = az.from_dict(
        posterior=_posterior(result.samples, mcmc.num_chains, reference_means),
        coords=_coords(result.samples), dims=DIMS,
    ).posterior
    posterior.attrs.update(idata.posterior.attrs)
    idata.posterior = posterior
    return idata


def svi_to_arviz(model, num_draws=1000, *, random_state=None, reference_means=None):
    """InferenceData of ``num_draws`` draws from a fitted PyroGaussianMixture's guide.

    For ``guide="map"`` every draw is the MAP point (zero posterior spread).
    """
    samples = model.posterior_samples(num_draws, random_state=random_state)
    return _from_samples(samples, reference_means)


# ----------------------------------------------------------------------------- CAVI


def _numpy(value):
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=float)


def cavi_posterior_samples(bgm, num_draws=1000, random_state=None):
    """Draws from the mean-field posterior q(weights) q(means, precisions) of a fitted BGM.

    ``bgm`` is a fitted ``BayesianGaussianMixture`` (ours or scikit-learn's, full
    covariances) with scikit-learn's attribute names. With m = ``means_``,
    beta = ``mean_precision_``, nu = ``degrees_of_freedom_`` and
    E[Lambda_k] = ``precisions_`` = nu_k W_k (from ``precisions_cholesky_``)::

        weights ~ Dirichlet(weight_concentration_)        ("dirichlet_distribution")
                  or truncated stick-breaking, v_k ~ Beta(weight_concentration_[0][k],
                  weight_concentration_[1][k]), v_K = 1   ("dirichlet_process")
        Lambda_k ~ Wishart(nu_k, W_k)
        means_k | Lambda_k ~ Normal(m_k, (beta_k Lambda_k)^-1)

    Returns ``{"weights", "means", "precisions", "covariances", "scales"}`` as numpy
    arrays with a leading draw axis.

    The stick-breaking draws set v_K = 1 (the truncated variational family); scikit-learn
    instead renormalises E[weights], so its ``weights_[K-1]`` differs slightly from the
    draws' mean when the last stick holds mass.
    """
    m = _numpy(bgm.means_)
    k, d = m.shape
    cov = covariance_type(getattr(bgm, "covariance_type", "full"), d)
    rng = np.random.default_rng(random_state)
    beta, nu = _numpy(bgm.mean_precision_), _numpy(bgm.degrees_of_freedom_)
    weights = weight_prior(bgm.weight_concentration_prior_type).draw(
        bgm.weight_concentration_, num_draws, rng)
    precisions = cov.wishart_precisions(_numpy(bgm.precisions_cholesky_), nu, num_draws, rng)
    # means = m + L^-T eps with L L^T = beta Lambda: covariance (beta Lambda)^-1.
    lower = np.linalg.cholesky(beta[:, None, None] * precisions)
    eps = rng.standard_normal((num_draws, k, d, 1))
    means = m + np.linalg.solve(np.swapaxes(lower, -1, -2), eps)[..., 0]
    covariances = np.linalg.inv(precisions)
    return {"weights": weights, "means": means, "precisions": precisions,
            "covariances": covariances,
            "scales": np.sqrt(np.diagonal(covariances, axis1=-2, axis2=-1))}


def cavi_to_arviz(bgm, num_draws=1000, random_state=None, *, reference_means=None):
    """InferenceData of :func:`cavi_posterior_samples` draws from a fitted BGM."""
    return _from_samples(cavi_posterior_samples(bgm, num_draws, random_state), reference_means)
