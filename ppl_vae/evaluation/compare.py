"""EM vs mean-field VI vs amortized VI on one data set: one results table, ArviZ export.

:func:`run_comparison` fits, on the same training set and with one seed,

- ``em``: a Gaussian mixture by EM (maximum likelihood);
- ``cavi``: the Bayesian Gaussian mixture by coordinate-ascent mean-field VI;
- ``em-stepwise``, ``svi``: the same two models fitted in mini-batches, by stepwise EM and
  by stochastic VI (natural-gradient steps on the global factors; see
  :mod:`ppl_vae.mixture._stream`);
- ``pyro-map``, ``pyro-meanfield``: the mixture as a Pyro program, by SVI with the
  assignments enumerated (an ``AutoDelta`` and an ``AutoNormal`` guide);
- ``nuts``: the same Pyro program by NUTS (on the training set, or a random subset of it);
- ``vae-linear``, ``vae-mlp``: VAEs whose prior p(z) is a learned mixture of Gaussians,
  trained by SVI with an amortized guide. With a linear decoder, p(x) is itself a Gaussian
  mixture (see :func:`implied_mixture`); an MLP decoder goes beyond it.

and scores each on the same held-out points: log-likelihood per example in nats (how it
is computed differs, and the table says how), the training objective's final value, the
adjusted Rand index of the clustering against the labels, the number of components with
weight above 0.01, and the wall time of the fit. :func:`posterior_exports` turns the
mixture posteriors of CAVI, SVI meanfield and NUTS, fitted on the points NUTS saw, into
ArviZ data aligned component by component.

``ppl-vae compare`` / ``scripts/compare.py`` run it and write ``compare.md``,
``compare.csv``, ``posterior_summary.csv``, ``forest.png``, ``objectives.png``,
``passes.png`` (:func:`plot_passes`: each objective against passes through the data) and
``ellipses.png`` into ``--out``.
"""

import math
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ppl_vae.device import resolve_device
from ppl_vae.errors import ConfigError
from ppl_vae.evaluation import tables
from ppl_vae.mixture import ConvergenceWarning

# Principal components kept of digits' 64 pixels: few enough for NUTS and for a readable
# forest plot, enough for the ten digits to form clusters.
PCA_DIMS = 4
# A component counts as used when its weight exceeds this.
WEIGHT_THRESHOLD = 0.01
# SVI objectives are noisy: their final value is the mean over this many last steps.
FINAL_WINDOW = 50


@dataclass(frozen=True)
class Settings:
    """How long each method runs. ``Settings.quick()`` shrinks everything to seconds.

    ``components`` and ``latent_dim`` default to the number of classes in the labels and
    to the data's dimension.
    """

    components: int | None = None
    max_iter: int = 500  # EM and CAVI iterations (at most; both stop at convergence)
    stream_batch: int = 100  # rows per step of stepwise EM and SVI
    stream_passes: int = 30  # their passes through the training set (at most)
    svi_steps: int = 1000  # Pyro mixture SVI steps
    # NUTS on a random subset of this many training points; None: all. A subset is not
    # cheaper here: its wider posterior needs longer trajectories per draw.
    nuts_points: int | None = None
    nuts_draws: int = 300  # NUTS draws, after as many warm-up steps
    nuts_tree_depth: int = 10  # at most 2**depth - 1 leapfrog steps per draw (Pyro's default)
    vae_steps: int = 3000  # VAE SVI steps of vae_batch points
    vae_batch: int = 256
    vae_lr: float = 1e-2  # Adam's, decayed to 1% of it over the steps
    vae_hidden: tuple = (64, 64)  # of the MLP decoder (and its encoder)
    latent_dim: int | None = None
    num_samples: int = 5000  # K of the importance-sampled log p(x) of the VAEs
    posterior_draws: int = 1000  # draws of the CAVI and SVI posteriors for ArviZ
    seed: int = 0
    device: str = "auto"
    progress: bool = False  # NUTS's progress bar on stderr

    @classmethod
    def quick(cls, **changes):
        """A smoke-test budget: every method runs, in seconds, far from converged."""
        small = dict(max_iter=20, stream_passes=3, svi_steps=30, nuts_points=200, nuts_draws=10,
                     nuts_tree_depth=4, vae_steps=40, num_samples=50, posterior_draws=50)
        return cls(**{**small, **changes})


@dataclass
class Data:
    """A train/test split shared by every method: float64 arrays, integer labels."""

    name: str
    description: str
    x_train: np.ndarray
    x_test: np.ndarray
    y_train: np.ndarray | None  # None: a file of points without labels
    y_test: np.ndarray | None


def _digits(*, pca_dims, seed, quick):
    from sklearn.decomposition import PCA

    from ppl_vae.data import load_dataset

    if not 1 <= pca_dims <= 64:
        raise ConfigError(f"--pca-dims must be between 1 and 64; got {pca_dims}")
    digits = load_dataset("digits", seed=seed)
    pca = PCA(pca_dims, whiten=True, random_state=seed).fit(digits.x_train.double().numpy())
    x_train, x_test = (pca.transform(x.double().numpy()) for x in (digits.x_train,
                                                                   digits.x_test))
    kept = pca.explained_variance_ratio_.sum()
    return Data(f"digits-pca{pca_dims}",
                f"digits, {pca_dims} whitened principal components ({kept:.0%} of the "
                "pixel variance)", x_train, x_test, digits.y_train.numpy(),
                digits.y_test.numpy())


def _blobs(*, pca_dims, seed, quick):
    from ppl_vae.data.points import load_points

    blobs = load_points("blobs", seed=seed, quick=quick)
    return Data("blobs", "blobs: three 2-D Gaussians with known parameters",
                blobs.x_train, blobs.x_test, blobs.y_train, blobs.y_test)


# The comparison's data sets by name.
DATA_SETS = {"digits": _digits, "blobs": _blobs}


def _points_file(path, *, seed, quick):
    from ppl_vae.data.points import load_points

    points = load_points(path, seed=seed, quick=quick)
    return Data(Path(path).stem, f"{path}: {points.x_train.shape[1]}-D points",
                points.x_train, points.x_test, points.y_train, points.y_test)


def load_data(name="digits", *, pca_dims=PCA_DIMS, seed=0, quick=False):
    """``digits`` reduced by PCA to ``pca_dims`` whitened components, ``blobs``, or a
    ``.npy``/``.npz`` file of points read as the gmm command reads it
    (:func:`ppl_vae.data.points.load_points`).

    digits: the project's 80/20 split of the 1,797 images (:func:`ppl_vae.data.load_dataset`),
    PCA fitted on the training images only, each component scaled to unit variance. blobs:
    three 2-D Gaussians with known parameters (:func:`ppl_vae.data.points.make_blobs`),
    1,500 points (300 with ``quick``), split 80/20.
    """
    if Path(name).suffix in (".npy", ".npz"):
        return _points_file(name, seed=seed, quick=quick)
    if name not in DATA_SETS:
        raise ConfigError(f"--dataset must be one of {', '.join(DATA_SETS)}, or a .npy/.npz "
                          f"file; got {name!r}")
    return DATA_SETS[name](pca_dims=pca_dims, seed=seed, quick=quick)


# ---------------------------------------------------------------------------- methods


@dataclass
class Fit:
    """One method's fitted model and its row of the table."""

    method: str
    label: str
    inference: str
    model: object
    n_train: int
    test_loglik: float
    estimator: str
    objective_name: str
    history: np.ndarray
    objective: float | None
    ari: float | None
    components: int
    seconds: float
    device: str
    weights: np.ndarray
    means: np.ndarray | None = None  # the mixture in data space, where there is one
    covariances: np.ndarray | None = None
    notes: list = field(default_factory=list)
    passes_per_entry: float = 1.0  # passes through the training set per entry of history


def _ari(data, predicted):
    from sklearn.metrics import adjusted_rand_score

    return None if data.y_test is None else float(adjusted_rand_score(data.y_test, predicted))


def _mixture_fit(method, model, data, *, n_train, history, objective_name, objective,
                 estimator, seconds, settings, **labels):
    return Fit(method, n_train=n_train, model=model, test_loglik=model.score(data.x_test),
               estimator=estimator, objective_name=objective_name,
               history=np.asarray(history, dtype=float), objective=objective,
               ari=_ari(data, model.predict(data.x_test)),
               components=int((np.asarray(model.weights_) > WEIGHT_THRESHOLD).sum()),
               seconds=seconds, device=str(resolve_device(settings.device)),
               weights=np.asarray(model.weights_), means=np.asarray(model.means_),
               covariances=np.asarray(model.covariances_), **labels)


def fit_em(data, settings):
    from ppl_vae.mixture import GaussianMixture

    start = time.perf_counter()
    model = GaussianMixture(settings.components, max_iter=settings.max_iter,
                            random_state=settings.seed, device=settings.device)
    model.fit(data.x_train)
    return _mixture_fit("em", model, data, n_train=len(data.x_train),
                        history=model.lower_bounds_, objective=model.lower_bound_,
                        objective_name="log-likelihood / N", estimator="exact",
                        seconds=time.perf_counter() - start, settings=settings,
                        label="EM", inference="maximum likelihood")


def fit_cavi(data, settings, x_train=None):
    from ppl_vae.mixture import BayesianGaussianMixture

    x = data.x_train if x_train is None else x_train
    start = time.perf_counter()
    model = BayesianGaussianMixture(settings.components, max_iter=settings.max_iter,
                                    random_state=settings.seed, device=settings.device)
    model.fit(x)
    history = np.asarray(model.lower_bounds_) / len(x)
    return _mixture_fit("cavi", model, data, n_train=len(x), history=history,
                        objective=history[-1], objective_name="ELBO / N",
                        estimator="posterior predictive (Student-t mixture)",
                        seconds=time.perf_counter() - start, settings=settings,
                        label="CAVI", inference="mean-field VI, coordinate ascent")


def _stream_settings(settings, n):
    return dict(batch_size=min(settings.stream_batch, n), max_iter=settings.stream_passes,
                random_state=settings.seed, device=settings.device)


def fit_em_stepwise(data, settings):
    from ppl_vae.mixture import GaussianMixture

    start = time.perf_counter()
    model = GaussianMixture(settings.components,
                            **_stream_settings(settings, len(data.x_train)))
    model.fit(data.x_train)
    return _mixture_fit("em-stepwise", model, data, n_train=len(data.x_train),
                        history=model.lower_bounds_, objective=model.objective(data.x_train),
                        objective_name="log-likelihood / N", estimator="exact",
                        seconds=time.perf_counter() - start, settings=settings,
                        label=f"stepwise EM, batches of {settings.stream_batch}",
                        inference="maximum likelihood, mini-batch")


def fit_svi(data, settings):
    from ppl_vae.mixture import BayesianGaussianMixture

    x = data.x_train
    start = time.perf_counter()
    model = BayesianGaussianMixture(settings.components, **_stream_settings(settings, len(x)))
    model.fit(x)
    return _mixture_fit("svi", model, data, n_train=len(x),
                        history=np.asarray(model.lower_bounds_) / len(x),
                        objective=model.objective(x) / len(x), objective_name="ELBO / N",
                        estimator="posterior predictive (Student-t mixture)",
                        seconds=time.perf_counter() - start, settings=settings,
                        label=f"SVI natural gradient, batches of {settings.stream_batch}",
                        inference="mean-field VI, stochastic natural gradient")


def _fit_pyro(data, settings, guide, x_train=None):
    from ppl_vae.mixture.pyro_gmm import PyroGaussianMixture

    x = data.x_train if x_train is None else x_train
    start = time.perf_counter()
    model = PyroGaussianMixture(settings.components, guide=guide,
                                num_steps=settings.svi_steps, random_state=settings.seed,
                                device=settings.device).fit(x)
    seconds = time.perf_counter() - start
    history = np.asarray(model.lower_bounds_)
    return _mixture_fit(f"pyro-{guide}", model, data, n_train=len(x), history=history,
                        objective=float(history[-FINAL_WINDOW:].mean()), seconds=seconds,
                        settings=settings, **PYRO_GUIDE_ROWS[guide])


# How the table names each Pyro guide's row (the guides: ppl_vae.mixture.pyro_gmm.GUIDES).
PYRO_GUIDE_ROWS = {
    "map": dict(label="Pyro SVI, MAP", inference="MAP by SVI (AutoDelta)",
                objective_name="log p(X, theta) / N", estimator="plug-in at the MAP"),
    "meanfield": dict(label="Pyro SVI, mean-field", inference="mean-field VI by SVI (AutoNormal)",
                      objective_name=f"ELBO / N, mean of last {FINAL_WINDOW} steps",
                      estimator="plug-in at the posterior mean"),
}


def fit_pyro_map(data, settings):
    return _fit_pyro(data, settings, "map")


def fit_pyro_meanfield(data, settings, x_train=None):
    return _fit_pyro(data, settings, "meanfield", x_train)


def nuts_subset(data, settings):
    """The training points NUTS sees: all, or ``nuts_points`` of them drawn with ``seed``."""
    n = len(data.x_train)
    if settings.nuts_points is None or settings.nuts_points >= n:
        return data.x_train
    rows = np.random.default_rng(settings.seed).choice(n, settings.nuts_points, replace=False)
    return data.x_train[np.sort(rows)]


def fit_nuts(data, settings):
    from ppl_vae.mixture.pyro_gmm import nuts_gmm

    x = nuts_subset(data, settings)
    start = time.perf_counter()
    model = nuts_gmm(x, settings.components, num_samples=settings.nuts_draws,
                     warmup_steps=settings.nuts_draws, random_state=settings.seed,
                     progress=settings.progress, max_tree_depth=settings.nuts_tree_depth,
                     device=settings.device)
    return _mixture_fit("nuts", model, data, n_train=len(x), history=[], objective=None,
                        objective_name="none (a sampler)",
                        estimator=f"posterior predictive, {settings.nuts_draws} draws",
                        seconds=time.perf_counter() - start, settings=settings,
                        label="NUTS", inference="MCMC (NUTS)")


def train_vae(vae, x, *, steps, batch_size, lr, seed):
    """SVI on the VAE's ELBO (``TraceMeanField_ELBO``): ``steps`` Adam steps on random
    minibatches, the learning rate decaying geometrically to 1% of ``lr``.

    Returns the ELBO per example at each step (-loss / N, a noisy estimate).
    """
    import pyro
    from pyro.infer import TraceMeanField_ELBO

    from ppl_vae.inference.svi import SVI

    optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": 0.01 ** (1 / steps)})
    svi = SVI.of(vae.model, vae.guide, optim, TraceMeanField_ELBO(max_plate_nesting=1))
    n = len(x)
    generator = torch.Generator().manual_seed(seed)

    def batches():
        for _ in range(steps):
            idx = torch.randperm(n, generator=generator)[:batch_size].to(x.device)
            yield (x[idx],), {"idx": idx}

    losses = svi.run(batches(), steps, hint="lower the learning rate")
    return -losses.double().cpu().numpy() / n


def implied_mixture(vae):
    """The Gaussian mixture p(x) of a VAE with a mixture-of-Gaussians prior, an affine
    decoder f(z) = W z + b and a Gaussian likelihood N(x; f(z), diag(psi^2)):

        p(x) = sum_k pi_k N(x; W mu_k + b, W diag(sigma_k^2) W^T + diag(psi^2)).

    Every component shares the directions W; this is the exact marginal, so its
    log-likelihood checks the importance-sampled one. Returns numpy weights (K,),
    means (K, D) and covariances (K, D, D).
    """
    with torch.no_grad():
        prior = vae.prior()
        like = next(vae.decoder.parameters())
        eye = torch.eye(vae.dims.latent_dim, dtype=like.dtype, device=like.device)
        zeros = torch.zeros_like(eye[:1])
        b = vae.decoder(zeros)[0]
        W = (vae.decoder(eye) - b).T
        psi = vae.decode(zeros).base_dist.scale[0]
        components = prior.component_distribution.base_dist
        weights = prior.mixture_distribution.probs
        means = components.loc @ W.T + b
        covariances = (W * components.scale.square()[:, None, :]) @ W.T + torch.diag(psi**2)
    return tuple(t.double().cpu().numpy() for t in (weights, means, covariances))


def mixture_log_likelihood(x, weights, means, covariances):
    """log sum_k weights_k N(x_n; means_k, covariances_k) per row of x, in nats."""
    components = torch.distributions.MultivariateNormal(
        torch.as_tensor(means), covariance_matrix=torch.as_tensor(covariances))
    log_joint = components.log_prob(torch.as_tensor(x)[:, None, :]) + torch.log(
        torch.as_tensor(weights))
    return torch.logsumexp(log_joint, -1).numpy()


def prior_assignments(vae, x):
    """The MoG prior's most responsible component at each point's posterior mean z."""
    with torch.no_grad():
        prior = vae.prior()
        z = vae.encode(x).mean
        log_joint = (prior.component_distribution.log_prob(z[:, None, :])
                     + prior.mixture_distribution.logits.log_softmax(-1))
    return log_joint.argmax(-1).cpu().numpy()


def _fit_vae(data, settings, hidden, method, label):
    from ppl_vae.evaluation.likelihood import log_likelihood
    from ppl_vae.mixture.pyro_gmm import seeded
    from ppl_vae.vae import Dims, build_vae

    device = resolve_device(settings.device)
    x_train, x_test = (torch.as_tensor(x, dtype=torch.float32, device=device)
                       for x in (data.x_train, data.x_test))
    d = x_train.shape[1]
    latent = settings.latent_dim or d
    start = time.perf_counter()
    with seeded(settings.seed):
        # Noise well below the data's spread at the start, so that the decoder uses z
        # rather than explaining the data as noise (posterior collapse).
        init_scale = 0.2 * float(x_train.std(0).mean())
        vae = build_vae(Dims(data_dim=d, latent_dim=latent, num_data=len(x_train)),
                        prior="mog", guide="diagonal", likelihood="gaussian-diagonal",
                        hidden=hidden, prior_options={"num_components": settings.components},
                        likelihood_options={"init_scale": init_scale}).to(device)
        history = train_vae(vae, x_train, steps=settings.vae_steps,
                            batch_size=min(settings.vae_batch, len(x_train)),
                            lr=settings.vae_lr, seed=settings.seed)
        seconds = time.perf_counter() - start
        vae.eval()
        test_loglik = float(log_likelihood(vae, x_test, num_samples=settings.num_samples).mean())
    weights = vae.prior().mixture_distribution.probs.detach().cpu().numpy()
    fit = Fit(method, label, "amortized VI by SVI", vae, len(x_train), test_loglik,
              f"importance-sampled, K={settings.num_samples}",
              f"ELBO / N, mean of last {FINAL_WINDOW} steps", history,
              float(history[-FINAL_WINDOW:].mean()), _ari(data, prior_assignments(vae, x_test)),
              int((weights > WEIGHT_THRESHOLD).sum()), seconds, str(device), weights,
              passes_per_entry=min(settings.vae_batch, len(x_train)) / len(x_train))
    if not hidden:
        fit.weights, fit.means, fit.covariances = implied_mixture(vae)
        exact = mixture_log_likelihood(data.x_test, fit.weights, fit.means, fit.covariances)
        fit.notes.append(f"exact log p(x) of the implied mixture: {exact.mean():.3f}")
    return fit


def fit_vae_linear(data, settings):
    return _fit_vae(data, settings, (), "vae-linear", "VAE, MoG prior, linear decoder")


def fit_vae_mlp(data, settings):
    label = f"VAE, MoG prior, MLP decoder {'-'.join(map(str, settings.vae_hidden))}"
    return _fit_vae(data, settings, tuple(settings.vae_hidden), "vae-mlp", label)


# One entry per method: a function (data, settings) -> Fit.
METHODS = {"em": fit_em, "cavi": fit_cavi, "em-stepwise": fit_em_stepwise, "svi": fit_svi,
           "pyro-map": fit_pyro_map,
           "pyro-meanfield": fit_pyro_meanfield, "nuts": fit_nuts,
           "vae-linear": fit_vae_linear, "vae-mlp": fit_vae_mlp}


def _with_notes(fit_fn, *args):
    """Run a fit; its user warnings (say, no convergence in max_iter) become notes of the
    row, and any other warning is issued again."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = fit_fn(*args)
    for w in caught:
        if issubclass(w.category, (ConvergenceWarning, UserWarning)):
            fit.notes.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return fit


def resolve_settings(data, settings):
    """``settings`` with the defaults that depend on the data filled in."""
    if settings.components is None and data.y_train is None:
        raise ConfigError(f"{data.name} has no labels to count classes in: give --components")
    if settings.components is None:
        settings = replace(settings, components=len(np.unique(data.y_train)))
    if settings.components < 1:
        raise ConfigError(f"--components must be a positive integer; got {settings.components}")
    return settings


def check_methods(methods):
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ConfigError(f"unknown method(s) {', '.join(unknown) or '(none given)'}; "
                          f"known: {', '.join(METHODS)}")


def run_comparison(data, settings=Settings(), methods=tuple(METHODS), *, log=None):
    """Fit every method of ``methods`` to ``data``; returns ``{method: Fit}``.

    ``log`` (a callable taking a line of text) hears about each method as it finishes.
    """
    check_methods(methods)
    settings = resolve_settings(data, settings)
    fits = {}
    for method in methods:
        fits[method] = fit = _with_notes(METHODS[method], data, settings)
        if log:
            log(f"{fit.label}: held-out log-likelihood {fit.test_loglik:.3f} nats per "
                f"example, {fit.seconds:.1f} s")
    return fits


# ---------------------------------------------------------------------------- table

# (CSV column, markdown header, decimals); None: written as is.
COLUMNS = [
    ("method", "method", None),
    ("inference", "inference", None),
    ("n_train", "N train", None),
    ("test_loglik", "held-out log p(x)", 3),
    ("estimator", "log p(x) estimator", None),
    ("objective", "final objective", 3),
    ("objective_name", "objective", None),
    ("ari", "ARI (test)", 3),
    ("components", "components > 0.01", None),
    ("seconds", "fit s", 2),
    ("device", "device", None),
    ("notes", "notes", None),
]


def table_rows(fits):
    """The table as a list of dicts, one per fit, keyed by the CSV columns."""
    return [{"method": f.label, "inference": f.inference, "n_train": f.n_train,
             "test_loglik": f.test_loglik, "estimator": f.estimator, "objective": f.objective,
             "objective_name": f.objective_name, "ari": f.ari, "components": f.components,
             "seconds": f.seconds, "device": f.device, "notes": "; ".join(f.notes)}
            for f in fits.values()]


def markdown_table(rows):
    """The comparison table in markdown; "n/a" where a number does not apply."""
    return tables.markdown_table(rows, COLUMNS, missing="n/a")


def write_table(rows, out, preamble=""):
    """``compare.md`` (``preamble`` then the table) and ``compare.csv`` in ``out``."""
    return tables.write_table(rows, COLUMNS, out / "compare.md", out / "compare.csv",
                              preamble=preamble, missing="n/a")


# ---------------------------------------------------------------------------- ArviZ


def posterior_exports(data, fits, settings=Settings()):
    """The posteriors of CAVI, SVI meanfield and NUTS as ArviZ InferenceData.

    All three are fitted on NUTS's subset of the training set (the fits in ``fits`` are
    reused when that subset is the whole set), and every draw is relabelled to NUTS's
    posterior means. Returns ``{"CAVI": ..., "SVI meanfield": ..., "NUTS": ...}``.
    """
    from ppl_vae.mixture.arviz_export import cavi_to_arviz, nuts_to_arviz, svi_to_arviz

    settings = resolve_settings(data, settings)
    nuts = fits["nuts"] if "nuts" in fits else _with_notes(fit_nuts, data, settings)
    x = nuts_subset(data, settings)
    same = len(x) == len(data.x_train)
    cavi = fits["cavi"] if same and "cavi" in fits else _with_notes(fit_cavi, data, settings, x)
    svi = (fits["pyro-meanfield"] if same and "pyro-meanfield" in fits
           else _with_notes(fit_pyro_meanfield, data, settings, x))
    ref = nuts.model.means_
    draws, seed = settings.posterior_draws, settings.seed
    return {"CAVI": cavi_to_arviz(cavi.model, draws, random_state=seed, reference_means=ref),
            "SVI meanfield": svi_to_arviz(svi.model, draws, random_state=seed,
                                          reference_means=ref),
            "NUTS": nuts_to_arviz(nuts.model, reference_means=ref)}


def _forest_coords(exports):
    features = exports["NUTS"].posterior.sizes["feature"]
    return {"feature": [0, 1]} if features > 2 else None


def posterior_summary(exports):
    """``az.summary`` (mean, sd, 94% HDI) of weights and means, the methods side by side."""
    import arviz as az
    import pandas as pd

    coords = _forest_coords(exports)
    tables = {name: az.summary(idata, var_names=["weights", "means"], coords=coords,
                               kind="stats") for name, idata in exports.items()}
    return pd.concat(tables, axis=1)


def plot_forest(exports):
    """``az.plot_forest`` of the weights and means (the first two features when d > 2)."""
    import arviz as az

    coords = _forest_coords(exports)
    axes = az.plot_forest(list(exports.values()), model_names=list(exports),
                          var_names=["weights", "means"], coords=coords, combined=True,
                          hdi_prob=0.94, figsize=(7, 9))
    axes[0].set_title("posterior mean and 94% HDI" + (", features 0-1" if coords else ""))
    return axes[0].figure


# ---------------------------------------------------------------------------- figures


def _grid(count, width, height, ncols=3):
    import matplotlib.pyplot as plt

    ncols = min(ncols, count)
    nrows = math.ceil(count / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows),
                             squeeze=False)
    for ax in axes.flat[count:]:
        ax.set_axis_off()
    return fig, axes.flat[:count]


def plot_objectives(fits):
    """The objective of each method per iteration or step, one panel per method; the
    first 2% of the SVI steps (the fast initial rise) are left out of the y range."""
    curves = [f for f in fits.values() if len(f.history)]
    fig, axes = _grid(len(curves), 3.2, 2.5)
    for ax, fit in zip(axes, curves, strict=True):
        steps = np.arange(1, len(fit.history) + 1)
        ax.plot(steps, fit.history, linewidth=0.8, marker="." if len(steps) < 60 else None)
        iterative = fit.method in ("em", "cavi", "em-stepwise", "svi")
        if not iterative:
            tail = fit.history[len(steps) // 50:]
            pad = 0.05 * (tail.max() - tail.min()) + 1e-9
            ax.set_ylim(tail.min() - pad, tail.max() + pad)
        ax.set(title=fit.label, xlabel="iteration or pass" if iterative else "SVI step",
               ylabel=fit.objective_name.split(", mean of")[0])
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# Which panel of plot_passes each method's objective belongs to.
_LIKELIHOOD_PANEL = ("em", "em-stepwise", "pyro-map")


def plot_passes(fits):
    """Each iterative method's objective against passes through the training set (log
    scale): maximum likelihood (EM, stepwise EM, Pyro MAP) on the left, ELBOs (CAVI, SVI
    with natural gradients, Pyro SVI with Adam on AutoNormal, the VAEs) on the right.

    An iteration of EM or CAVI and a step of the Pyro mixture's SVI read all the data (one
    pass); stepwise EM and SVI record once a pass (the mean of the pass's batch
    estimates); a VAE step reads one batch. The Pyro mixture's priors differ from the
    conjugate model's (``ppl_vae.mixture.pyro_gmm.MixturePrior``), so its ELBO is of a
    nearby model, not the same one.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for fit in fits.values():
        if not len(fit.history):
            continue
        passes = np.arange(1, len(fit.history) + 1) * fit.passes_per_entry
        ax = axes[0] if fit.method in _LIKELIHOOD_PANEL else axes[1]
        ax.plot(passes, fit.history, linewidth=1.0, label=fit.label,
                marker="." if len(passes) < 40 else None)
    for ax, title in zip(axes, ("maximum likelihood: log p(X | theta) / N",
                                "variational: ELBO / N"), strict=True):
        lines = [line.get_ydata() for line in ax.get_lines()]
        if lines:
            top = max(float(np.max(y)) for y in lines)
            low = min(float(np.percentile(y, 10)) for y in lines)
            ax.set_ylim(low - 0.05 * (top - low + 1e-9), top + 0.05 * (top - low + 1e-9))
            ax.legend(fontsize=7, loc="lower right")
        ax.set(xscale="log", xlabel="passes through the training set", title=title)
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_mixtures(data, fits):
    """Each fitted mixture's ellipses over the training data (the first two principal
    components when d > 2)."""
    from ppl_vae.mixture.plots import plot_ellipses

    shown = [f for f in fits.values() if f.means is not None]
    fig, axes = _grid(len(shown), 3.0, 2.8)
    for ax, fit in zip(axes, shown, strict=True):
        plot_ellipses(data.x_train, fit.weights, fit.means, fit.covariances,
                      labels=data.y_train, title=fit.label, ax=ax)
        ax.title.set_fontsize(9)
    fig.tight_layout()
    return fig


def save_figure(fig, path):
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path
