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
# # Maximum likelihood, MAP and Bayes on the linear model
#
# The study notes start here, before the mixture and the VAE: with a model and data, a
# **maximum-likelihood** fit returns one value of the parameters $\theta$; a **MAP** fit adds a
# prior and still returns one value; the **Bayesian** treatment returns a distribution
# $p(\theta \mid X)$. On the linear model all three are known in closed form, so each way of
# fitting the same Pyro program can be checked against the exact answer:
#
# | method | what it returns | closed form | Pyro |
# |---|---|---|---|
# | maximum likelihood | a point $w_{ML}$ | least squares | SVI, `AutoDelta`, flat prior |
# | MAP | a point $w_{MAP}$ | ridge regression | SVI, `AutoDelta`, Gaussian prior |
# | mean-field VI | $q(w) = \prod_j \mathcal N(w_j)$ | mean $m_N$, variances $1/\Lambda_{jj}$ | SVI, `AutoNormal` |
# | the posterior | $p(w \mid X, y)$ | $\mathcal N(m_N, S_N)$ | NUTS |
#
# The model (Bishop, PRML 3.3), with polynomial features $\phi(x) = (1, x, \dots, x^{d})$,
# prior precision $\alpha$ and known noise precision $\beta$:
#
# $$w \sim \mathcal N(0, \alpha^{-1} I), \qquad y_n \mid w \sim \mathcal N\big(\phi(x_n)^\top w,\ \beta^{-1}\big).$$
#
# Closed forms: $w_{ML} = (\Phi^\top\Phi)^{-1}\Phi^\top y$; $w_{MAP} = (\Phi^\top\Phi + \tfrac{\alpha}{\beta} I)^{-1}\Phi^\top y$;
# $S_N^{-1} = \Lambda = \alpha I + \beta\Phi^\top\Phi$, $m_N = \beta S_N\Phi^\top y$; the predictive
# $y_* \sim \mathcal N\big(\phi_*^\top m_N,\ \beta^{-1} + \phi_*^\top S_N \phi_*\big)$. They live in
# `ppl_vae.linear`; `tests/test_linear_regression.py` checks them against scikit-learn's
# `LinearRegression`, `Ridge` and `BayesianRidge`.
#
# **Quick mode.** `PPL_VAE_QUICK=1` cuts the SVI steps and NUTS draws to seconds (the tests run
# it so); the saved outputs come from a full run.

# %%
import os
import warnings

QUICK = os.environ.get("PPL_VAE_QUICK") == "1"
SVI_STEPS = 200 if QUICK else 3000
NUTS_DRAWS, NUTS_WARMUP = (100, 100) if QUICK else (2000, 1000)
warnings.filterwarnings("ignore", message="IProgress not found")
print(f"{'quick' if QUICK else 'full'} run: {SVI_STEPS} SVI steps, {NUTS_DRAWS} NUTS draws")

# %%
import inspect

import matplotlib.pyplot as plt
import pyro
import torch
from pyro.infer.autoguide import AutoDelta, AutoNormal

from ppl_vae.linear import (
    conjugate_posterior,
    fit_svi,
    least_squares,
    mean_field_variances,
    nuts_samples,
    polynomial_features,
    predictive,
    regression_model,
    ridge,
)

plt.rcParams.update({"figure.dpi": 72})
pyro.set_rng_seed(0)
torch.set_default_dtype(torch.float64)
print(f"torch {torch.__version__}, pyro {pyro.__version__}")

# %% [markdown]
# ## The data and the Pyro program
#
# Ten noisy points of $\sin(\pi x)$ on $[-0.7, 0.7]$, fitted with a polynomial of degree 5: six
# weights from ten points, enough freedom for a point estimate to chase the noise. The test
# points cover $[-1, 1]$, so part of them lies outside the data.

# %%
DEGREE, ALPHA, NOISE_STD = 5, 1.0, 0.2
BETA = NOISE_STD ** -2
g = torch.Generator().manual_seed(1)


def truth(x):
    return torch.sin(torch.pi * x)


x = torch.rand(10, generator=g) * 1.4 - 0.7
y = truth(x) + NOISE_STD * torch.randn(10, generator=g)
x_test = torch.rand(500, generator=g) * 2 - 1
y_test = truth(x_test) + NOISE_STD * torch.randn(500, generator=g)
features, test_features = polynomial_features(x, DEGREE), polynomial_features(x_test, DEGREE)
print(inspect.getsource(regression_model))

# %% [markdown]
# ## The closed forms, and the same program fitted by Pyro
#
# `AutoDelta` is a point mass: with a flat prior (`prior_precision=None`, an improper uniform
# density) SVI maximises the likelihood, with the Gaussian prior the posterior density. `AutoNormal`
# is a mean-field Gaussian. NUTS draws from the posterior itself.

# %%
options = {"prior_precision": ALPHA, "noise_precision": BETA}
w_ml, w_map = least_squares(features, y), ridge(features, y, ALPHA / BETA)
mean, cov = conjugate_posterior(features, y, **options)

svi_ml, _ = fit_svi(AutoDelta, features, y, steps=SVI_STEPS, lr=0.05, noise_precision=BETA)
svi_map, _ = fit_svi(AutoDelta, features, y, steps=SVI_STEPS, lr=0.05, **options)
mf_loc, mf_scale = fit_svi(AutoNormal, features, y, steps=SVI_STEPS, lr=0.02, **options)
draws = nuts_samples(features, y, num_samples=NUTS_DRAWS, warmup_steps=NUTS_WARMUP, **options)

rows = {
    "MLE, closed form": w_ml, "MLE, AutoDelta": svi_ml,
    "MAP, closed form (ridge)": w_map, "MAP, AutoDelta": svi_map,
    "posterior mean, exact": mean, "mean-field VI (AutoNormal)": mf_loc,
    "posterior mean, NUTS": draws.mean(0),
}
print(f"{'weights':28s}" + "".join(f"{f'w{j}':>8s}" for j in range(DEGREE + 1)))
for name, w in rows.items():
    print(f"{name:28s}" + "".join(f"{float(v):8.2f}" for v in w.detach()))
print("\nposterior standard deviations")
sds = {"exact": cov.diagonal().sqrt(), "NUTS": draws.std(0), "mean-field VI": mf_scale,
       "mean-field optimum 1/sqrt(Lambda_jj)": mean_field_variances(cov).sqrt()}
for name, sd in sds.items():
    print(f"{name:36s}" + "".join(f"{float(v):8.3f}" for v in sd))

# %% [markdown]
# The maximum-likelihood weights are large and of alternating sign (the polynomial bends to
# pass near every point). SVI with `AutoDelta` and a flat prior stops far from them, yet at
# almost the same training log-likelihood: the likelihood is nearly flat along those directions
# (the high powers of $x$ are almost collinear on the data), so the MLE itself is barely
# determined by the data. The prior removes that freedom: the MAP weights are small, SVI finds
# them, and they equal the posterior mean, since the posterior is Gaussian. NUTS recovers the
# posterior's mean and spread. Mean-field VI gets the mean right, but its standard deviations
# are those of the mean-field optimum, $1/\sqrt{\Lambda_{jj}}$, below the posterior's (half of it
# for $w_1$): the weights of a polynomial are correlated, and a factorised $q$ that minimises
# $\mathrm{KL}(q \,\|\, p)$ fits inside the narrow direction of the posterior (Bishop, PRML
# 10.1.2).

# %%
def train_log_lik(w):
    return float(torch.distributions.Normal(features @ w, NOISE_STD).log_prob(y).sum())


print(f"training log-likelihood: closed-form MLE {train_log_lik(w_ml):.3f}, "
      f"AutoDelta with a flat prior {train_log_lik(svi_ml):.3f}, MAP {train_log_lik(w_map):.3f}")

# %% [markdown]
# ## The predictive bands, and what a point estimate loses

# %%
def predictives(phi):
    """Each method's predictive mean and standard deviation at the rows of phi."""
    nuts_loc = phi @ draws.T
    return {
        "MLE": predictive(phi, w_ml, noise_precision=BETA),
        "MAP": predictive(phi, w_map, noise_precision=BETA),
        "mean-field VI": predictive(phi, mf_loc, torch.diag(mf_scale ** 2), noise_precision=BETA),
        "NUTS": (nuts_loc.mean(1), (nuts_loc.var(1) + 1 / BETA).sqrt()),
        "exact posterior": predictive(phi, mean, cov, noise_precision=BETA),
    }


grid = torch.linspace(-1, 1, 200)
bands = predictives(polynomial_features(grid, DEGREE))
fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
for ax, names in zip(axes, (["MLE", "MAP"], ["mean-field VI", "NUTS", "exact posterior"]),
                     strict=True):
    for name in names:
        loc, std = bands[name]
        line, = ax.plot(grid, loc, label=name)
        ax.fill_between(grid, loc - 2 * std, loc + 2 * std, color=line.get_color(), alpha=0.15)
    ax.plot(grid, truth(grid), "k--", lw=1, label="sin(pi x)")
    ax.plot(x, y, "ko", ms=4, label="data")
    ax.axvspan(-1, -0.7, color="grey", alpha=0.08)
    ax.axvspan(0.7, 1, color="grey", alpha=0.08)
    ax.set_ylim(-3, 3)
    ax.set_xlabel("x")
    ax.legend(loc="upper left", fontsize=8)
axes[0].set_title("point estimates: mean ± 2 sd of the noise alone")
axes[1].set_title("distributions over w: mean ± 2 sd of the predictive")
plt.tight_layout()
plt.show()

# %% [markdown]
# The held-out log-likelihood (nats per test point, higher is better) inside the data's range
# and outside it (shaded above), where the weights are least pinned down:

# %%
inside = x_test.abs() <= 0.7
test_bands = predictives(test_features)
print(f"{'':18s}{'inside':>10s}{'outside':>10s}")
for name, (loc, std) in test_bands.items():
    log_lik = torch.distributions.Normal(loc, std).log_prob(y_test)
    print(f"{name:18s}{float(log_lik[inside].mean()):10.2f}{float(log_lik[~inside].mean()):10.2f}")

# %% [markdown]
# **What a point estimate loses.** MLE and MAP predict with the noise alone: the same band
# everywhere, as sure of themselves at $x = 1$, where no data were seen, as among the data.
# Where the polynomial extrapolates, their errors are many noise standard deviations and the
# held-out log-likelihood collapses (the MLE's by thousands of nats, the MAP's by tens); the
# posterior's band widens there instead (its predictive variance $\phi_*^\top S_N \phi_*$ grows
# away from the data), so its log-likelihood degrades gracefully. Even inside the data's range
# the MAP point, which *is* the posterior mean, scores worse than the posterior: between
# sparse points the weights' uncertainty is not negligible beside the noise. Mean-field VI,
# with the right mean and too little spread, sits in between, close to the posterior here. This
# is the thread of the notes: EM and the VAE fit point estimates of $\theta$, and treat only
# the latent $z$ as uncertain (notebooks 01 and 03).
