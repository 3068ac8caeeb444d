# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # EM vs mean-field VI vs amortized VI
#
# One model, the Gaussian mixture, fitted in every way this project knows, on the same data,
# scored on the same held-out points:
#
# | method | what it estimates | how |
# |---|---|---|
# | **EM** | one value of the parameters $\theta = (\pi, \mu, \Sigma)$: the maximum-likelihood one | exact E-step, closed-form M-step |
# | **CAVI** | a distribution over $\theta$: the Bayesian posterior, approximated by a product of factors (mean-field) | coordinate ascent, each factor in closed form |
# | **Pyro SVI** | the same Bayesian mixture written as a Pyro program: a MAP point (`AutoDelta`) or a mean-field Gaussian (`AutoNormal`) | stochastic gradients of the ELBO, the assignments summed out |
# | **NUTS** | the posterior over $\theta$ itself, by Markov chain Monte Carlo | the reference: no family restricts it |
# | **VAE** | a mixture in a *latent* space, pushed through a decoder, with an encoder for $q(z \mid x)$ | SVI on the ELBO, amortized |
#
# The thread, in the project's words:
#
# - **Maximum likelihood or Bayes.** EM returns a point $\hat\theta$; a Bayesian method returns
#   $p(\theta \mid X)$, which can say how sure it is and can hold several explanations at once.
# - **The mixture** $p(x) = \sum_k \pi_k\, \mathcal N(x \mid \mu_k, \Sigma_k)$ has a log-likelihood
#   $\sum_n \log \sum_k \pi_k \mathcal N(x_n \mid \mu_k, \Sigma_k)$ with no closed-form maximiser;
#   the assignment $z_n$ of each point to a component makes the complete-data likelihood easy.
# - **EM**: for any $q(z)$, $\log p(x \mid \theta) = \mathrm{ELBO}(q, \theta) + \mathrm{KL}(q(z)\,\|\,p(z \mid x, \theta))$.
#   The E-step sets $q$ to the exact posterior of the assignments (the responsibilities), closing
#   the gap; the M-step maximises the ELBO in $\theta$. The log-likelihood never decreases.
#   A $q$ appears, but EM is a maximum-likelihood method.
# - **Mean-field VI** (variational Bayes): with priors on $\pi, \mu, \Sigma$ they become latent
#   too; the exact posterior is intractable, so $q$ is restricted to
#   $q(Z)\, q(\pi) \prod_k q(\mu_k, \Lambda_k)$ and each factor is set to its optimum given the
#   others (Bishop, PRML 10.2). The ELBO never decreases.
# - **Amortized VI**: a VAE's decoder is a neural network, so even the posterior of one point's
#   latent code has no closed form; the VAE keeps the ELBO, restricts $q(z \mid x)$ to a
#   diagonal Gaussian and lets an encoder network output it for every $x$.
#
# Section 1 fits the mixture by EM, CAVI and SVI to synthetic blobs, whose answer is known.
# Section 2 runs the whole comparison on digits: the table, the objective curves, the fitted
# ellipses and the posteriors of CAVI, SVI and NUTS side by side with ArviZ.
#
# **Units and signs.** Log-likelihoods and ELBOs are in nats per example; higher is better.
# **Quick mode**: with `PPL_VAE_QUICK=1` everything runs in seconds (the tests run it so);
# the saved outputs come from a full run.

# %%
import os
import warnings

QUICK = os.environ.get("PPL_VAE_QUICK") == "1"
# Pyro imports tqdm.auto, which warns when a Jupyter kernel has no ipywidgets; nothing here
# shows a progress bar.
warnings.filterwarnings("ignore", message="IProgress not found")

import arviz as az
import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Markdown, display

from ppl_vae.evaluation import compare
from ppl_vae.evaluation.likelihood import evaluate_elbo
from ppl_vae.mixture.arviz_export import align_components
from ppl_vae.mixture.plots import plot_ellipses

torch.set_num_threads(1)  # small tensors: on shared cores more threads only add contention
plt.rcParams.update({"figure.dpi": 72})  # keeps the saved notebook small
SETTINGS = compare.Settings.quick() if QUICK else compare.Settings()
print(f"{'quick' if QUICK else 'full'} run: {SETTINGS}")

# %% [markdown]
# ## 1. Three fits of one mixture, where the answer is known
#
# `blobs` are 1,500 points from three 2-D Gaussians of different weights and shapes, split
# 80/20 into training and held-out points. Every fit below uses $K = 3$ components, the
# same training points and the same seed. `compare.run_comparison` fits the methods it is
# given and returns, for each, the fitted model, its objective per iteration and its row of
# the results table.

# %%
blobs = compare.load_data("blobs", quick=QUICK)
print(f"{blobs.description}: {len(blobs.x_train)} training and {len(blobs.x_test)} held-out points")
blob_fits = compare.run_comparison(blobs, SETTINGS, ["em", "cavi", "pyro-map"], log=print)

# %% [markdown]
# The truth, drawn from the labels (the weight, mean and covariance of each label's training
# points), next to each method's fitted components: the $x$ marks the means, the ellipses
# enclose one and two standard deviations.

# %%
labels = np.unique(blobs.y_train)
members = [blobs.x_train[blobs.y_train == k] for k in labels]
truth = (np.array([len(m) / len(blobs.x_train) for m in members]),
         np.array([m.mean(0) for m in members]), np.array([np.cov(m.T) for m in members]))

fig, axes = plt.subplots(1, 1 + len(blob_fits), figsize=(14, 3.4), sharex=True, sharey=True)
plot_ellipses(blobs.x_train, *truth, labels=blobs.y_train, title="the labels' moments",
              ax=axes[0])
for ax, fit in zip(axes[1:], blob_fits.values(), strict=True):
    plot_ellipses(blobs.x_train, fit.weights, fit.means, fit.covariances,
                  labels=blobs.y_train, title=fit.label, ax=ax)
fig.tight_layout()
plt.show()

print("largest distance of a fitted mean from its label's mean (components matched by the "
      "Hungarian algorithm):")
for fit in blob_fits.values():
    matched = align_components(truth[1], {"means": fit.means, "weights": fit.weights})
    error = np.abs(matched["means"] - truth[1]).max()
    weights = ", ".join(f"{w:.3f}" for w in matched["weights"])
    print(f"  {fit.label:>14}: {error:.3f}; weights {weights}")
print(f"  {'labels':>14}: weights {', '.join(f'{w:.3f}' for w in truth[0])}")

# %% [markdown]
# All three find the three blobs. Their objectives differ, and so do their curves:
#
# - EM's objective is the log-likelihood of the training data per example. Each E-step makes
#   the bound touch the log-likelihood, each M-step raises the bound, so the log-likelihood
#   never decreases;
# - CAVI's is the ELBO, a lower bound on the log *evidence* $\log p(X)$ of the Bayesian model
#   (priors included), per example. Each coordinate update maximises it in one factor, so it
#   never decreases either;
# - Pyro's MAP objective is $\log p(X, \theta) / N$ at the current point: the log-likelihood
#   plus the log prior density, climbed by Adam. A gradient step has no such guarantee.
#
# The check below counts the iterations at which each objective went down.

# %%
compare.plot_objectives(blob_fits)
plt.show()
for fit in blob_fits.values():
    steps = np.diff(fit.history)
    # rounding allowance: 1e-10 of the objective's size
    drops = int((steps < -1e-10 * np.abs(fit.history[:-1])).sum())
    print(f"{fit.label:>14}: {len(fit.history)} values, {drops} decrease(s), "
          f"final {fit.objective:.4f} ({fit.objective_name})")

# %% [markdown]
# ## 2. The comparison on digits
#
# Now real data: the 8×8 digits, reduced to their first 4 principal components, each scaled
# to unit variance (the PCA is fitted on the training images only). Four dimensions keep the
# mixture small enough for NUTS and its posterior readable in a forest plot; the ten digits
# still form clusters there, so $K = 10$ components and the labels give a clustering to check
# against. All methods see the same real-valued data, so their log-likelihoods are
# comparable (whitening shifts every one of them by the same constant).
#
# Besides the four mixture fits, two VAEs whose prior $p(z)$ is a learned mixture of 10
# Gaussians in a 4-dimensional latent space, trained by SVI with an amortized diagonal
# Gaussian guide:
#
# - with a **linear decoder** $x = W z + b + \varepsilon$, $\varepsilon \sim \mathcal N(0, \operatorname{diag}\psi^2)$,
#   integrating $z$ out gives exactly a Gaussian mixture,
#   $p(x) = \sum_k \pi_k\, \mathcal N\big(x;\ W\mu_k + b,\ W \operatorname{diag}(\sigma_k^2) W^\top + \operatorname{diag}\psi^2\big)$:
#   the mixture again, with components that share the directions $W$
#   (`compare.implied_mixture`);
# - with an **MLP decoder** (two hidden layers of 64 units), $p(x)$ is no longer a mixture of
#   Gaussians: each component of the prior can be bent into a curved cluster.
#
# This is the `ppl-vae compare` command's default run (section 3); it takes a few minutes.

# %%
digits = compare.load_data("digits")
print(f"{digits.description}: {len(digits.x_train)} training and {len(digits.x_test)} "
      "held-out points")
fits = compare.run_comparison(digits, SETTINGS, log=print)

# %% [markdown]
# ### The table
#
# One row per method. The held-out log-likelihood is computed as each method defines it, and
# the `log p(x) estimator` column says how:
#
# - **exact** for EM: $\log p(x \mid \hat\theta)$ in closed form;
# - **posterior predictive** for CAVI and NUTS:
#   $\log \int p(x \mid \theta)\, q(\theta)\, d\theta$, a mixture of Student-t distributions
#   for CAVI (PRML 10.81), an average over the draws for NUTS;
# - **plug-in** for Pyro SVI: the mixture at the MAP point, or at the posterior means of the
#   mean-field guide;
# - **importance-sampled** for the VAEs:
#   $\log \frac1K \sum_k p(x, z_k) / q(z_k \mid x)$ with $z_k \sim q(z \mid x)$, a lower bound
#   on $\log p(x)$ that tightens as $K$ grows.
#
# The objective is each method's own training objective at the end (for the noisy SVI ones,
# the mean of the last 50 steps): comparable within a row over time, not across rows. The
# adjusted Rand index (ARI) compares each method's clustering of the held-out points with the
# digit labels (1 is perfect agreement, 0 is chance); for a VAE a point is assigned to the
# prior component most responsible for its posterior mean $z$.

# %%
rows = compare.table_rows(fits)
display(Markdown(compare.markdown_table(rows)))

# %% [markdown]
# ### The objectives
#
# EM and CAVI rise monotonically again. The SVI curves of the mean-field guide and of the
# VAEs are noisy: each step estimates the ELBO from one draw of the guide (and, for the VAEs,
# one minibatch), and it is this noisy estimate that the optimizer climbs. The MAP curve is
# smooth because its guide is a point and every step sees all the data. (The first 2% of the
# SVI steps, a steep initial rise, are outside the plotted range.)

# %%
compare.plot_objectives(fits)
plt.show()
for method in ("em", "cavi"):
    history = fits[method].history
    drops = int((np.diff(history) < -1e-10 * np.abs(history[:-1])).sum())
    print(f"{fits[method].label}: {len(history)} iterations, {drops} decrease(s)")

# %% [markdown]
# ### Against passes through the data: natural gradients and Adam
#
# The same curves on one axis each, against the number of passes through the training set
# (log scale). An iteration of EM or CAVI reads every point once. Stepwise EM and SVI
# (`em-stepwise`, `svi`: `GaussianMixture` and `BayesianGaussianMixture` with `batch_size`)
# update the same sufficient statistics after every batch of 100 points, with step
# $\rho_t = (t + 1)^{-0.7}$; for the conjugate model this is a *natural-gradient* step on the
# global factors $q(\pi)$, $q(\mu_k, \Lambda_k)$ (Hoffman et al. 2013), and their curves show
# the mean of the batch estimates during each pass. Pyro's SVI on the mixture program takes
# Adam steps on the parameters of an AutoNormal guide, one pass per step; its priors differ a
# little from the conjugate model's, so its ELBO is of a nearby model. A VAE step reads one
# batch. The printout gives the passes each stochastic method needed to come within 0.1% of
# its batch counterpart's final objective.

# %%
compare.plot_passes(fits)
plt.show()


def passes_to_reach(fit, goal):
    passes = np.arange(1, len(fit.history) + 1) * fit.passes_per_entry
    reached = np.nonzero(fit.history >= goal)[0]
    return passes[reached[0]] if len(reached) else None


for method, batch in (("em-stepwise", "em"), ("svi", "cavi"), ("pyro-meanfield", "cavi")):
    final = fits[batch].history[-1]
    needed = passes_to_reach(fits[method], final - 1e-3 * abs(final))
    print(f"{fits[method].label}: "
          + (f"within 0.1% of {fits[batch].label}'s final objective after {needed:g} passes"
             if needed is not None else f"not within 0.1% of {fits[batch].label}'s final "
             f"objective in {len(fits[method].history) * fits[method].passes_per_entry:g} "
             "passes"))

# %% [markdown]
# ### The fitted mixtures
#
# Each mixture's components over the training points, in the plane of the data's first two
# principal components (the ellipses are the exact projections of the 4-D Gaussians); the
# colours are the digit labels. The last panel is the Gaussian mixture that the
# linear-decoder VAE implies. The MLP-decoder VAE has no ellipses to draw.

# %%
compare.plot_mixtures(digits, fits)
plt.show()

# %% [markdown]
# ### Posteriors side by side, with ArviZ
#
# CAVI, the mean-field SVI guide and NUTS each give a distribution over the weights and means,
# not one value. `compare.posterior_exports` turns each into ArviZ `InferenceData` with the
# same variables: `weights` (component), `means` and `scales` (component, feature). A
# mixture's components are labelled arbitrarily, so every draw of every method is relabelled
# to NUTS's posterior means first (Hungarian matching on the means). The forest plot shows
# each posterior's mean and 94% highest-density interval, for the weights and for the means
# in the first two features.

# %%
exports = compare.posterior_exports(digits, fits, SETTINGS)
compare.plot_forest(exports)
plt.show()

# %% [markdown]
# `az.summary` gives the same numbers as a table; below, the weights, with each method's
# posterior mean and standard deviation. NUTS's effective sample sizes say how many
# independent draws its correlated chain is worth.

# %%
summary = compare.posterior_summary(exports)
weights = summary[summary.index.str.startswith("weights")]
display(weights.loc[:, (slice(None), ["mean", "sd"])].round(3))
ess = az.ess(exports["NUTS"], var_names=["weights", "means"])
print(f"NUTS: {exports['NUTS'].posterior.sizes['draw']} draws; effective sample size of the "
      f"weights and means from {float(min(ess[v].min() for v in ess)):.0f} to "
      f"{float(max(ess[v].max() for v in ess)):.0f}")
agree = {}
for name in ("CAVI", "SVI meanfield"):
    gap = np.abs(exports[name].posterior["means"].mean(("chain", "draw"))
                 - exports["NUTS"].posterior["means"].mean(("chain", "draw")))
    sd = exports["NUTS"].posterior["means"].std(("chain", "draw"))
    agree[name] = int((gap < 2 * sd).sum())
total = exports["NUTS"].posterior["means"].size // exports["NUTS"].posterior.sizes["draw"]
for name, count in agree.items():
    print(f"{name}: {count} of {total} posterior means within two NUTS standard deviations "
          "of NUTS's")

# %% [markdown]
# Where the rows agree, the three methods found the same component and similar uncertainty
# about it. Where they do not, they found different clusterings: a mixture's posterior has
# many modes (different ways of splitting the digits into ten groups), and a method started
# from k-means climbs the one nearest its start. Mean-field posteriors are also known to be
# too narrow where parameters are correlated, since the factorisation drops the correlations.
# NUTS is the reference only as far as its chain has explored: where its effective sample
# size is small, its intervals are rough too.
#
# ### The linear-decoder VAE is a Gaussian mixture
#
# Its exact log-likelihood is that of the implied mixture, so it checks the importance-sampled
# estimate in the table. For both VAEs the ELBO on the held-out points is below
# $\log p(x)$: the gap is $\mathrm{KL}(q(z \mid x)\,\|\,p(z \mid x))$ averaged over the points,
# what the diagonal Gaussian guide and its encoder cannot capture (notebook 02 splits it
# into its two parts).

# %%
linear = fits["vae-linear"]
exact = compare.mixture_log_likelihood(digits.x_test, linear.weights, linear.means,
                                       linear.covariances).mean()
print(f"linear-decoder VAE, held-out log p(x): importance-sampled {linear.test_loglik:.3f} "
      f"(K={SETTINGS.num_samples}), exact {exact:.3f}")
x_test = torch.as_tensor(digits.x_test, dtype=torch.float32)
for method in ("vae-linear", "vae-mlp"):
    fit = fits[method]
    torch.manual_seed(0)
    elbo = evaluate_elbo(fit.model, x_test)["elbo"]
    print(f"{fit.label}: held-out ELBO {elbo:.3f}, log p(x) {fit.test_loglik:.3f}, "
          f"gap {fit.test_loglik - elbo:.3f}")


# %% [markdown]
# ### What the numbers say
#
# The cell below reads the table back and prints the comparisons the text relies on.

# %%
def row(method):
    return next(r for r in rows if r["method"] == fits[method].label)


print("held-out log-likelihood, best first (nats per example):")
for r in sorted(rows, key=lambda r: -r["test_loglik"]):
    print(f"  {r['test_loglik']:7.3f}  {r['method']}  [{r['estimator']}]")
gains = [("NUTS posterior predictive minus EM's maximum likelihood", "nuts", "em"),
         ("CAVI posterior predictive minus EM", "cavi", "em"),
         ("Pyro SVI MAP plug-in minus EM", "pyro-map", "em"),
         ("linear-decoder VAE minus EM", "vae-linear", "em"),
         ("MLP-decoder VAE minus EM", "vae-mlp", "em"),
         ("MLP-decoder VAE minus linear-decoder VAE", "vae-mlp", "vae-linear")]
for text, a, b in gains:
    print(f"{text}: {row(a)['test_loglik'] - row(b)['test_loglik']:+.3f}")
best_ari = max(rows, key=lambda r: r["ari"])
print(f"best agreement with the digit labels: {best_ari['method']} (ARI {best_ari['ari']:.3f}); "
      f"lowest: {min(rows, key=lambda r: r['ari'])['method']} "
      f"(ARI {min(r['ari'] for r in rows):.3f})")
print("fit seconds: " + ", ".join(f"{r['method']} {r['seconds']:.1f}" for r in rows))

# %% [markdown]
# Read with the estimators in mind:
#
# - **Bayes helps a little, at a price.** Averaging over the posterior (NUTS's predictive
#   density) scores the held-out digits better than EM's single maximum-likelihood point,
#   and CAVI's closed-form predictive sits near EM. NUTS costs by far the most time of all
#   the fits, and its one chain is short for a posterior with this many modes; CAVI costs
#   about what EM costs.
# - **Gradient-based fits of the same model land close by, not on the same answer.** Pyro's
#   SVI optimizes the same kind of objective as EM and CAVI, but by Adam from the same
#   k-means start, in a fixed number of steps. Here its held-out density ends within 0.01
#   nats of EM's (slightly above it), while its clusters agree least with the digit labels
#   (the lowest ARI): same model, different inference, a different optimum.
# - **The linear-decoder VAE is a constrained mixture**, with components that share the
#   directions $W$, and it scores below EM's unconstrained mixture; the exact likelihood
#   confirms that the gap is the model's, not the estimator's.
# - **The MLP decoder goes beyond the mixture**: with the same prior it scores best of all,
#   because its clusters need not be ellipsoids. A better density is not a better
#   clustering, though: its ARI is not the best.
#
# ## 3. The same from the command line
#
# `ppl-vae compare` (or `python scripts/compare.py`) runs section 2 with these settings and
# writes `compare.md` and `compare.csv` (the table), `objectives.png`, `ellipses.png`,
# `forest.png` and `posterior_summary.csv` into `--out` (default `runs/compare`, or
# `runs/compare-2`, ... when taken: a run never writes into another):
#
# ```bash
# ppl-vae compare                        # digits, 4 principal components, every method
# ppl-vae compare --dataset blobs        # the synthetic blobs of section 1
# ppl-vae compare --methods em,cavi,nuts --nuts-draws 1000
# ppl-vae compare --quick                # seconds: a smoke test
# ```
#
# [01_vae_from_scratch.ipynb](01_vae_from_scratch.ipynb) builds the VAE used here piece by
# piece; [02_swapping_priors_and_guides.ipynb](02_swapping_priors_and_guides.ipynb) swaps its
# prior and guide and measures what each choice costs in log-likelihood.
