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
# # A VAE from scratch, as a Pyro program
#
# This notebook builds a variational autoencoder (VAE) piece by piece and trains it on `digits`,
# the small set of 8×8 handwritten digits that ships with the package. It follows the project's
# theory notes in order:
#
# 1. why a VAE is needed at all (the posterior of a neural-net model cannot be computed);
# 2. the evidence lower bound (ELBO) and its gap, the KL divergence to the true posterior;
# 3. the reparameterization trick, which lets gradients pass through samples of $z$;
# 4. the closed-form KL term, against its Monte Carlo estimate;
# 5. Bernoulli and Gaussian decoders, i.e. what "reconstruction error" means;
# 6. the Pyro `model` and `guide` of `ppl_vae.VAE`, trained with Pyro's `SVI` in a loop you can read;
# 7. the figures of the trained model: reconstructions, samples, the latent space, the ELBO's two
#    terms and the manifold of decoded digits;
# 8. the same training from the command line, and where its outputs go.
#
# **Units and signs.** Every ELBO and log-likelihood is in *nats per example*, and higher is
# better. Pyro reports a *loss*, which is minus the ELBO.
#
# **Quick mode.** Start the kernel with the environment variable `PPL_VAE_QUICK=1` to run
# everything in seconds (2 epochs, far fewer Monte Carlo samples); the tests run the notebook
# that way. The outputs saved with the notebook come from a full run.

# %%
import os
import warnings

QUICK = os.environ.get("PPL_VAE_QUICK") == "1"
EPOCHS = 2 if QUICK else 200           # 200 is also the default of models/vae.toml
MC_SAMPLES = 2_000 if QUICK else 200_000
LOSS_REPEATS = 20 if QUICK else 500

# Pyro imports tqdm.auto, which warns when a Jupyter kernel has no ipywidgets; nothing here
# shows a progress bar.
warnings.filterwarnings("ignore", message="IProgress not found")
print(f"{'quick' if QUICK else 'full'} run: {EPOCHS} epochs, {MC_SAMPLES:,} Monte Carlo samples, "
      f"{LOSS_REPEATS} repeats per loss estimate")

# %%
import csv
import inspect
import math
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Predictive, Trace_ELBO, TraceMeanField_ELBO
from torch.distributions import kl_divergence

import ppl_vae
from ppl_vae.data import binarize, load_dataset
from ppl_vae.evaluation import plots
from ppl_vae.evaluation.likelihood import evaluate_elbo
from ppl_vae.parts.likelihoods import Bernoulli, UnitGaussian
from ppl_vae.vae import VAE, Dims, build_vae

plt.rcParams.update({"figure.dpi": 72})  # keeps the saved notebook small
print(f"torch {torch.__version__}, pyro {pyro.__version__}")

# %% [markdown]
# ## 1. Why a VAE
#
# A latent-variable model explains each data point $x$ through an unobserved cause $z$:
#
# $$p_\theta(x) = \int p_\theta(x \mid z)\, p(z)\, dz .$$
#
# In a Gaussian mixture, $z$ is the index of the component that produced $x$. The posterior
# $p(z \mid x)$ is then a short list of numbers, the responsibilities, and EM can compute it
# exactly: that is its E-step. The M-step then re-fits $\theta$ with $z$ filled in.
#
# A VAE keeps the structure but makes both parts richer: $z$ is a continuous vector with prior
# $p(z) = \mathcal N(0, I)$, and the likelihood is a neural network $f_\theta$,
#
# $$p_\theta(x \mid z) = \mathrm{Bernoulli}\big(x;\ \mathrm{sigmoid}(f_\theta(z))\big)
# \quad\text{or}\quad p_\theta(x \mid z) = \mathcal N\big(x;\ f_\theta(z),\ I\big).$$
#
# Now the posterior
# $p_\theta(z \mid x) = p_\theta(x \mid z)\, p(z) / p_\theta(x)$ needs $p_\theta(x)$, an integral of
# a neural network over all of $z$-space, which has no closed form. **EM's E-step is
# impossible.** What survives is the lower bound that EM climbs (section 2): the VAE keeps it,
# but restricts the approximate posterior to a diagonal Gaussian
# $q_\phi(z \mid x) = \mathcal N\big(z;\ \mu_\phi(x), \operatorname{diag}\sigma^2_\phi(x)\big)$,
# whose mean and scale come from a second network, the *encoder*. One encoder serves every data
# point (amortized inference), instead of a separate $(\mu, \sigma)$ per point.
#
# The comparison on the Gaussian mixture itself, EM vs mean-field VI vs amortized VI, is the
# subject of [03_em_vs_vi_vs_amortized.ipynb](03_em_vs_vi_vs_amortized.ipynb).
#
# The data: 8×8 grey-level digits with pixels in $[0, 1]$. The Bernoulli decoder models black and
# white pixels, so each pixel is binarised by one Bernoulli draw with its grey level as
# probability: afresh for every training minibatch ("dynamic" binarisation), and once, with a
# fixed seed, for the test set, so that test ELBOs stay comparable from epoch to epoch.

# %%
data = load_dataset("digits")
N = data.x_train.shape[0]
x_test = binarize(data.x_test, torch.Generator().manual_seed(1))

print(f"digits: {N} training and {len(x_test)} test images of "
      f"{data.image_shape[0]}x{data.image_shape[1]} pixels (D = {data.data_dim})")
fig, axes = plt.subplots(2, 1, figsize=(6, 1.9))
plots.image_grid(data.x_test[:12], data.image_shape, ncols=12, ax=axes[0],
                 title="test digits: grey levels")
plots.image_grid(x_test[:12], data.image_shape, ncols=12, ax=axes[1],
                 title="the same digits, binarised once")
plt.show()

# %% [markdown]
# ## 2. The ELBO and the KL gap
#
# Take any distribution $q(z)$ over the latent variable. Multiplying and dividing by it inside the
# integral, and using Jensen's inequality for the concave logarithm
# ($\log \mathbb E[Y] \ge \mathbb E[\log Y]$):
#
# $$
# \log p_\theta(x) = \log \int q(z)\, \frac{p_\theta(x, z)}{q(z)}\, dz
# \;\ge\; \int q(z) \log \frac{p_\theta(x, z)}{q(z)}\, dz
# = \mathbb E_{q}\big[\log p_\theta(x, z) - \log q(z)\big] \;=:\; \mathrm{ELBO}(q, \theta; x).
# $$
#
# How loose is the bound? Write $p_\theta(x, z) = p_\theta(z \mid x)\, p_\theta(x)$ inside the
# expectation:
#
# $$
# \log p_\theta(x) - \mathrm{ELBO}(q, \theta; x)
# = \mathbb E_q\big[\log q(z) - \log p_\theta(z \mid x)\big]
# = \mathrm{KL}\big(q(z) \,\|\, p_\theta(z \mid x)\big) \;\ge\; 0 .
# $$
#
# The gap is exactly the KL divergence from $q$ to the true posterior. EM closes it completely in
# each E-step by setting $q = p_\theta(z \mid x)$. A VAE cannot, so it maximises the ELBO jointly
# in the decoder's $\theta$ and the encoder's $\phi$: raising the ELBO either raises
# $\log p_\theta(x)$ or shrinks the gap, and both are wanted.
#
# Writing $p_\theta(x, z) = p_\theta(x \mid z)\, p(z)$ instead gives the form that is computed
# in practice:
#
# $$
# \mathrm{ELBO}(\theta, \phi; x)
# = \underbrace{\mathbb E_{q_\phi(z \mid x)}\big[\log p_\theta(x \mid z)\big]}_{\text{reconstruction}}
# \;-\; \underbrace{\mathrm{KL}\big(q_\phi(z \mid x) \,\|\, p(z)\big)}_{\text{regulariser}} .
# $$
#
# The first term rewards codes $z$ that decode back to $x$; the second keeps each $q_\phi(z\mid x)$
# close to the prior, so that codes drawn from the prior decode to plausible data. For a data set,
# the ELBO is the sum of this over all points: $\sum_{n=1}^N \mathrm{ELBO}(\theta, \phi; x_n)$.

# %% [markdown]
# ## 3. The reparameterization trick
#
# The reconstruction term is an expectation under $q_\phi$, and its gradient in $\phi$ is what the
# encoder learns from. A sample $z \sim q_\phi$ is just a number, though: nothing tells autograd how
# it would move if $\phi$ moved. The trick moves the randomness to a fixed distribution:
#
# $$z = \mu_\phi(x) + \sigma_\phi(x) \odot \varepsilon, \qquad \varepsilon \sim \mathcal N(0, I),$$
#
# so that $\nabla_\phi\, \mathbb E_{\varepsilon}\big[f(\mu_\phi + \sigma_\phi \varepsilon)\big]
# = \mathbb E_{\varepsilon}\big[\nabla_\phi f(\mu_\phi + \sigma_\phi \varepsilon)\big]$, which
# a Monte Carlo average of ordinary gradients estimates without bias.
#
# A check with a known answer: for $z \sim \mathcal N(\mu, \sigma^2)$,
# $\mathbb E[z^2] = \mu^2 + \sigma^2$, so $\partial_\mu \mathbb E[z^2] = 2\mu$ and
# $\partial_\sigma \mathbb E[z^2] = 2\sigma$. The per-sample gradients are $2z$ and
# $2z\varepsilon$, whose spread gives the Monte Carlo standard error printed beside each estimate.

# %%
pyro.set_rng_seed(0)
mu = torch.tensor(1.5, requires_grad=True)
sigma = torch.tensor(0.8, requires_grad=True)

eps = torch.randn(MC_SAMPLES)
z = mu + sigma * eps                      # the reparameterized sample
(z**2).mean().backward()

se_mu = (2 * z).detach().std() / math.sqrt(MC_SAMPLES)
se_sigma = (2 * z * eps).detach().std() / math.sqrt(MC_SAMPLES)
print(f"d/dmu    E[z^2]: {mu.grad.item():.4f} +- {se_mu:.4f}   closed form 2*mu    = "
      f"{2 * mu.item():.4f}")
print(f"d/dsigma E[z^2]: {sigma.grad.item():.4f} +- {se_sigma:.4f}   closed form 2*sigma = "
      f"{2 * sigma.item():.4f}")

q = dist.Normal(mu, sigma)
print(f"requires_grad of q.rsample(): {q.rsample().requires_grad}, "
      f"of q.sample(): {q.sample().requires_grad}")
# The estimates agree with the closed forms to 4 standard errors.
assert abs(mu.grad.item() - 2 * mu.item()) < 4 * se_mu
assert abs(sigma.grad.item() - 2 * sigma.item()) < 4 * se_sigma

# %% [markdown]
# `Normal.rsample` computes exactly `mu + sigma * eps`. Pyro draws every sample site with
# `rsample` when the distribution has one (`has_rsample`), so a VAE's guide needs nothing special
# for its gradients to reach the encoder.
#
# ## 4. The KL term: closed form vs Monte Carlo
#
# For one coordinate,
# $\mathrm{KL}\big(\mathcal N(\mu, \sigma^2) \,\|\, \mathcal N(0, 1)\big)
# = \mathbb E_q\big[\log q(z) - \log p(z)\big]
# = \mathbb E_q\Big[-\log\sigma - \tfrac{(z-\mu)^2}{2\sigma^2} + \tfrac{z^2}{2}\Big]
# = -\log\sigma - \tfrac12 + \tfrac12(\sigma^2 + \mu^2)$,
# and a diagonal Gaussian sums over its $L$ coordinates:
#
# $$\mathrm{KL}\big(q_\phi(z \mid x) \,\|\, \mathcal N(0, I)\big)
# = \frac12 \sum_{j=1}^{L} \big(\sigma_j^2 + \mu_j^2 - 1 - \log \sigma_j^2\big).$$
#
# Below, the formula against torch's `kl_divergence` and against the Monte Carlo average of
# $\log q(z) - \log p(z)$ over samples $z \sim q$.

# %%
pyro.set_rng_seed(0)
L = 5
mu = torch.randn(L)
sigma = 0.3 + torch.rand(L)
q = dist.Normal(mu, sigma).to_event(1)
p = dist.Normal(torch.zeros(L), torch.ones(L)).to_event(1)

closed_form = 0.5 * (sigma**2 + mu**2 - 1 - torch.log(sigma**2)).sum()
z = q.sample((MC_SAMPLES,))
log_ratio = q.log_prob(z) - p.log_prob(z)
print(f"closed form                : {closed_form.item():.4f}")
print(f"torch kl_divergence(q, p)  : {kl_divergence(q, p).item():.4f}")
print(f"Monte Carlo, {MC_SAMPLES:>7,} samples: {log_ratio.mean().item():.4f} "
      f"+- {log_ratio.std().item() / math.sqrt(MC_SAMPLES):.4f}")
assert abs(kl_divergence(q, p) - closed_form) < 1e-5
assert abs(log_ratio.mean() - closed_form) < 4 * log_ratio.std() / math.sqrt(MC_SAMPLES)


# %% [markdown]
# Pyro offers both estimators of the ELBO as training objectives. `Trace_ELBO` runs the guide
# once, replays the model on the drawn $z$, and estimates the whole bound by Monte Carlo:
# $\log p_\theta(x \mid z) + \log p(z) - \log q_\phi(z \mid x)$. `TraceMeanField_ELBO` uses the same
# sample for the reconstruction term but the closed-form KL wherever torch knows one (here a
# diagonal normal against a normal). Both are unbiased for the same ELBO; they differ in variance.
#
# To see how much, evaluate both losses many times at *fixed* parameters, on one minibatch of 128
# test digits, with the VAE that section 6 trains, here still at its random initial weights.
# `loss_spread` returns the per-example ELBO estimates; it is used again after training.

# %%
def loss_spread(vae, x, repeats):
    # ELBO per example from `repeats` independent evaluations of each Pyro objective.
    estimates = {}
    for objective in (Trace_ELBO(), TraceMeanField_ELBO()):
        with torch.no_grad():
            losses = [objective.loss(vae.model, vae.guide, x) for _ in range(repeats)]
        estimates[type(objective).__name__] = -torch.tensor(losses) / len(x)
    mc, analytic = estimates["Trace_ELBO"], estimates["TraceMeanField_ELBO"]
    for name, values in estimates.items():
        print(f"{name:>20}: ELBO estimate {values.mean():8.3f}, std over {repeats} "
              f"evaluations {values.std():.4f}")
    # Both estimate the same ELBO: their means agree to 4 standard errors.
    assert abs(mc.mean() - analytic.mean()) < 4 * ((mc.var() + analytic.var()) / repeats).sqrt()
    steadier = "Trace_ELBO" if mc.var() < analytic.var() else "TraceMeanField_ELBO"
    print(f"variance ratio Trace_ELBO / TraceMeanField_ELBO: {mc.var() / analytic.var():.2f}; "
          f"the less noisy here: {steadier}")
    return estimates


pyro.clear_param_store()
pyro.set_rng_seed(0)
dims = Dims(data_dim=data.data_dim, latent_dim=2, num_data=N, image_shape=data.image_shape)
untrained = build_vae(dims, likelihood="bernoulli", hidden=(256, 256))
spread_before = loss_spread(untrained, x_test[:128], LOSS_REPEATS)

# %% [markdown]
# ## 5. Bernoulli vs Gaussian decoder
#
# The reconstruction term $\log p_\theta(x \mid z)$ is where the familiar losses come from.
# With decoder output $\hat x = \mathrm{sigmoid}(f_\theta(z))$ and binary pixels,
#
# $$\log \mathrm{Bernoulli}(x; \hat x)
# = \sum_{d=1}^{D} \big[x_d \log \hat x_d + (1 - x_d)\log(1-\hat x_d)\big]
# = -\mathrm{BCE}(\hat x, x),$$
#
# minus the binary cross-entropy. With a unit-variance Gaussian and $\hat x = f_\theta(z)$,
#
# $$\log \mathcal N(x; \hat x, I) = -\tfrac12 \lVert x - \hat x \rVert^2 - \tfrac D2 \log(2\pi),$$
#
# minus half the squared error plus a constant. Below, one test digit and a made-up decoder output
# $\hat x = 0.05 + 0.9 \times$ (its grey levels): the project's `Bernoulli` and `UnitGaussian`
# likelihood parts against the two formulas.

# %%
x_one, grey = x_test[0], data.x_test[0]
x_hat = 0.05 + 0.9 * grey          # never certain: 0.05 <= x_hat <= 0.95
D = data.data_dim

bernoulli = Bernoulli(dims)(torch.logit(x_hat))    # this part's decoder output is the logits
gaussian = UnitGaussian(dims)(x_hat)               # this part's decoder output is the mean
minus_bce = -F.binary_cross_entropy(x_hat, x_one, reduction="sum")
minus_half_sq = -0.5 * ((x_one - x_hat) ** 2).sum() - 0.5 * D * math.log(2 * math.pi)
print(f"Bernoulli: log p(x|z) = {bernoulli.log_prob(x_one).item():9.4f}   "
      f"-BCE                        = {minus_bce.item():9.4f}")
print(f"Gaussian : log p(x|z) = {gaussian.log_prob(x_one).item():9.4f}   "
      f"-|x - x_hat|^2/2 - D/2 log 2pi = {minus_half_sq.item():9.4f}")
assert abs(bernoulli.log_prob(x_one) - minus_bce) < 1e-3
assert abs(gaussian.log_prob(x_one) - minus_half_sq) < 1e-3

panels = [
    ("binarised digit x", x_one, "gray_r"),
    (r"decoder output $\hat x$", x_hat, "gray_r"),
    (r"Bernoulli: $\log p(x_d \mid z)$", bernoulli.base_dist.log_prob(x_one), "viridis"),
    (r"Gaussian: $-(x_d - \hat x_d)^2 / 2$", -0.5 * (x_one - x_hat) ** 2, "viridis"),
]
fig, axes = plt.subplots(1, 4, figsize=(10, 2.6))
for ax, (title, values, cmap) in zip(axes, panels, strict=True):
    image = ax.imshow(values.reshape(data.image_shape), cmap=cmap)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    fig.colorbar(image, ax=ax, shrink=0.8)
fig.tight_layout()
plt.show()
print(f"costliest pixel: {-panels[2][1].min().item():.2f} nats under the Bernoulli, "
      f"{-panels[3][1].min().item():.2f} under the Gaussian (minus its constant)")

# %% [markdown]
# A pixel where the decoder is confidently wrong (black where the grey level was light) can cost
# up to $-\log 0.05 \approx 3$ nats under this Bernoulli, but never more than
# $\tfrac12 (0.95)^2 \approx 0.45$ under the unit Gaussian. On data in $[0, 1]$ the unit-variance
# Gaussian's squared error separates a good reconstruction from a poor one only weakly, which is
# one reason why such decoders tend to give blurry images. The Bernoulli numbers are
# log-*probabilities* of binary data and the Gaussian ones log-*densities* of real data, so the two
# totals are not comparable with each other. The project's default model (`models/vae.toml`) uses
# the Bernoulli; `models/gaussian_vae.toml` is the textbook Gaussian one.
#
# ## 6. The Pyro model and guide
#
# `ppl_vae.VAE` writes the generative model and the approximate posterior as two Pyro programs.
# Here is their source, with the helper that opens the data plate:

# %%
for method in (VAE.model, VAE.guide, VAE._data_plate):
    print(textwrap.dedent(inspect.getsource(method)))

# %% [markdown]
# Line by line:
#
# - **`pyro.module(self.name, self)`** registers the nets' weights in Pyro's parameter store, so
#   that `SVI` finds and optimises them. Both programs call it: the guide uses the encoder, the
#   model the decoder. Each VAE has its own name (`vae0`, `vae1`, ...), so that two VAEs in one
#   process never share weights.
# - **`with self._data_plate(x, idx)`** opens `pyro.plate("data", N, subsample=idx)`: the rows of
#   `x` are conditionally independent given the parameters, and they are a minibatch of $B$ of the
#   $N$ training points. Pyro multiplies every log density inside the plate by $N / B$, so each
#   minibatch loss is an unbiased estimate of minus the *full-data* ELBO
#   $\sum_{n=1}^N \mathrm{ELBO}(x_n)$, in nats, the quantity EM would monitor. Without `idx` (at
#   evaluation) the plate is just the batch.
# - **`with poutine.scale(scale=self.beta)`** weights the latent site: $\beta = 1$ (used here)
#   gives the ELBO, $\beta \ne 1$ the $\beta$-VAE objective, with no change to the loss code.
# - **`pyro.sample("z", self.prior().expand(...))`** in the model is $z \sim p(z) = \mathcal N(0, I)$,
#   one code per data point. During inference the guide's value of the site `"z"` is replayed here,
#   so this line contributes $\log p(z)$ (or, under `TraceMeanField_ELBO`, the prior's half of the
#   closed-form KL).
# - **`out = self.decoder(...)`** is $f_\theta(z)$: 64 logits, one per pixel.
# - **`pyro.sample("x", self.likelihood(out), obs=x)`** is an *observed* site: it does not draw,
#   it scores the data, contributing the reconstruction term $\log p_\theta(x \mid z)$.
# - In the guide, **`pyro.sample("z", self.posterior(x, idx))`** draws $z \sim q_\phi(z \mid x)
#   = \mathcal N(\mu_\phi(x), \operatorname{diag}\sigma_\phi^2(x))$ from the encoder's output, with
#   `rsample` (section 3). The site name `"z"` is what pairs it with the model's prior site; the
#   guide opens the same plate and scale so that both sides of the KL are weighted alike.
#
# `SVI(model, guide, optimizer, loss)` then does the rest: each `svi.step(x, idx=idx)` runs the
# guide, replays the model on the guide's $z$, computes the loss (minus the ELBO estimate),
# backpropagates, and takes one optimizer step on every registered parameter.
#
# Now the VAE to train: a 2-dimensional latent space, so that it can be drawn directly, with
# encoder and decoder MLPs of two hidden layers of 256 units. It is built with the seed that
# `ppl-vae train` uses (section 8) after clearing Pyro's parameter store, so that the store
# holds this VAE's weights alone.

# %%
pyro.clear_param_store()
pyro.set_rng_seed(0)
vae = build_vae(dims, prior="normal", guide="diagonal", likelihood="bernoulli", hidden=(256, 256))
print(vae)

# %% [markdown]
# The training loop: Adam with learning rate $10^{-3}$, minibatches of 128, the analytic-KL
# objective. After each epoch, `evaluate_elbo` computes the test ELBO and its two terms,
# $\mathbb E_q[\log p_\theta(x\mid z)]$ and $\mathrm{KL}(q_\phi(z\mid x)\,\|\,p(z))$, from Pyro traces
# of this same model and guide.

# %%
BATCH_SIZE = 128
svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), loss=TraceMeanField_ELBO())
num_batches = math.ceil(N / BATCH_SIZE)
metrics = []
for epoch in range(1, EPOCHS + 1):
    order = torch.randperm(N)
    total_loss = 0.0
    for start in range(0, N, BATCH_SIZE):
        idx = order[start : start + BATCH_SIZE]
        xb = binarize(data.x_train[idx])          # dynamic binarisation: new pixels every time
        total_loss += svi.step(xb, idx=idx)       # minus the full-data ELBO, estimated
    test = evaluate_elbo(vae, x_test)
    metrics.append({"epoch": epoch, "train_elbo": -total_loss / num_batches / N,
                    "test_elbo": test["elbo"], "test_recon": test["recon"], "test_kl": test["kl"]})
    if epoch == 1 or epoch % max(1, EPOCHS // 10) == 0:
        row = metrics[-1]
        print(f"epoch {epoch:3d}: train ELBO {row['train_elbo']:8.3f} | test ELBO "
              f"{row['test_elbo']:8.3f} = reconstruction {row['test_recon']:8.3f} "
              f"- KL {row['test_kl']:6.3f}  (nats per example)")

# %% [markdown]
# ## 7. What the trained VAE learned
#
# The ELBO over training, and the test ELBO split into its two terms. The reconstruction term
# rises as the decoder learns to use the code. The KL term is the price of that code in nats: it
# stays near zero for the first few epochs, while the decoder mostly learns the average digit, and
# grows once the encoder moves each $q_\phi(z \mid x)$ away from the prior and the reconstruction
# term climbs with it.

# %%
plots.elbo_curves(metrics)
plt.show()
first, last = metrics[0], metrics[-1]
print(f"test reconstruction term: {first['test_recon']:.3f} after epoch 1 -> "
      f"{last['test_recon']:.3f} after epoch {last['epoch']}")
print(f"test KL term:             {first['test_kl']:.3f} after epoch 1 -> "
      f"{last['test_kl']:.3f} after epoch {last['epoch']}")

# %% [markdown]
# Reconstructions of test digits: each is the mean of $p_\theta(x \mid z)$ (the pixel
# probabilities) at the posterior mean $z = \mu_\phi(x)$. With only two latent numbers per image,
# the VAE keeps the digit's identity and rough shape, not its details.

# %%
vae.eval()
plots.reconstructions(vae, x_test, data.image_shape, num=12)
plt.show()

# %% [markdown]
# New digits: $z \sim p(z) = \mathcal N(0, I)$, decoded to pixel probabilities. These never were
# training points; that they look like digits is what the KL term buys.

# %%
pyro.set_rng_seed(1)
plots.prior_samples(vae, data.image_shape, num=40)
plt.show()

# %% [markdown]
# The latent space: the posterior mean $\mu_\phi(x)$ of every test digit, coloured by its label,
# which the VAE never saw. Digits of one class gather in regions of $z$-space, and the cloud as a
# whole stays near the prior's scale.

# %%
plots.latent_space(vae, x_test, data.y_test)
plt.show()

# %% [markdown]
# The manifold of the decoder, as in Kingma & Welling's figure: a regular grid of
# probabilities in $(0, 1)^2$ is mapped through the inverse CDF of the standard normal, so that
# the grid covers the prior evenly in probability, and each point is decoded. Neighbouring codes
# decode to similar digits, and one digit morphs into another along the way.

# %%
GRID = 15
levels = torch.linspace(0.05, 0.95, GRID)
z_axis = dist.Normal(0.0, 1.0).icdf(levels)
z0, z1 = torch.meshgrid(z_axis, z_axis.flip(0), indexing="xy")  # z[1] grows upwards
z_grid = torch.stack([z0.reshape(-1), z1.reshape(-1)], dim=-1)
with torch.no_grad():
    images = vae.decode(z_grid).mean
fig, ax = plt.subplots(figsize=(5.5, 5.5))
plots.image_grid(images, data.image_shape, ncols=GRID, ax=ax,
                 title=f"decoded means on a {GRID}x{GRID} grid of z")
plt.show()
print("z[0] grows from left to right, z[1] from bottom to top, through the values")
print(", ".join(f"{v:.2f}" for v in z_axis.tolist()))

# %% [markdown]
# Back to the two objectives of section 4, now at the trained parameters, to compare with the
# numbers before training. The Monte Carlo integrand of `Trace_ELBO` is
#
# $$\log p_\theta(x, z) - \log q_\phi(z \mid x)
# = \log p_\theta(x) - \log \frac{q_\phi(z \mid x)}{p_\theta(z \mid x)},$$
#
# which would be the constant $\log p_\theta(x)$ for every sample of $z$ if $q_\phi$ were the exact
# posterior: the smaller the KL gap of section 2, the less noisy the all-Monte-Carlo estimate.
# `TraceMeanField_ELBO` removes the KL term's noise but keeps all of the reconstruction term's,
# which does not shrink that way. So which objective gives the steadier loss depends on how well
# $q_\phi$ fits the posterior, and can change during training; the last line says which one it is
# here.

# %%
spread_after = loss_spread(vae, x_test[:128], LOSS_REPEATS)

# %% [markdown]
# ## 8. The same from the command line
#
# Everything above, the data, the binarisation, the model, the objective and the training loop,
# is what `ppl-vae train` runs. Its defaults come from `models/vae.toml` (an 8-dimensional latent
# space, 200 epochs); `--latent-dim 2` gives the VAE trained above: the same data, model, objective,
# optimizer, batch size and seed. The cell below runs the command in a temporary folder with this
# kernel's Python (`python -m ppl_vae.commands` is the `ppl-vae` command) and compares its last epoch
# with the notebook's.

# %%
command = [sys.executable, "-m", "ppl_vae.commands", "train", "--latent-dim", "2", "--quiet"]
if QUICK:
    command += ["--epochs", str(EPOCHS)]
print("$ ppl-vae " + " ".join(command[3:]))
workdir = tempfile.mkdtemp()  # removed after the next cell has read the run back
result = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
print(result.stderr + result.stdout)
if result.returncode != 0:
    raise RuntimeError(f"ppl-vae train failed with exit status {result.returncode}")
# The one run folder: runs/vae followed by what the command line changed.
(run_dir,) = Path(workdir, "runs").iterdir()
print("the run folder:")
for path in sorted(run_dir.iterdir()):
    print(f"  {path.relative_to(workdir)}  ({path.stat().st_size:,} bytes)")
with open(run_dir / "metrics.csv", newline="") as f:
    cli_last = list(csv.DictReader(f))[-1]

notebook_last = metrics[-1]
difference = float(cli_last["test_elbo"]) - notebook_last["test_elbo"]
recent = torch.tensor([row["test_elbo"] for row in metrics[-20:]])
print(f"\nafter epoch {notebook_last['epoch']}, test ELBO (nats per example):")
print(f"  SVI loop in this notebook: {notebook_last['test_elbo']:.4f}")
print(f"  ppl-vae train            : {float(cli_last['test_elbo']):.4f}  "
      f"(difference {difference:+.4f})")
if len(recent) > 1:
    print(f"  epoch-to-epoch spread of the notebook's test ELBO over its last {len(recent)} "
          f"epochs: std {recent.std():.4f}")
# The same model and settings: within 0.5 nats after 200 epochs, 2 nats after a quick run's 2.
assert abs(difference) < (2.0 if QUICK else 0.5), difference
assert notebook_last["test_elbo"] > metrics[0]["test_elbo"]  # training raised the ELBO

# %% [markdown]
# **The run back in Python.** `ppl_vae.load_run` restores a run folder without building a
# trainer: the trained program in eval mode, its resolved configuration and metrics, and the
# data on first use. Any Pyro inference runs on the program's `model` and `guide`; here
# `Predictive` draws $z \sim q(z \mid x)$ for five test digits and replays the model on them.

# %%
run = ppl_vae.load_run(run_dir)
print(f"{type(run.program).__name__}, eval mode: {not run.program.training}; latent_dim "
      f"{run.config['model']['latent_dim']}; last epoch's test ELBO "
      f"{float(run.metrics[-1]['test_elbo']):.4f}")
x_five = run.data.x_test[:5]
with torch.no_grad():
    draws = Predictive(run.program.model, guide=run.program.guide, num_samples=200,
                       return_sites=["z"])(x_five)
    guide_mean = run.program.posterior(x_five).mean
print("mean of 200 draws of z for each digit, against the guide's mean:")
for drawn, exact in zip(draws["z"].mean(0), guide_mean, strict=True):
    print(f"  {drawn.numpy().round(3)}  {exact.numpy().round(3)}")
assert not run.program.training
assert float(run.metrics[-1]["test_elbo"]) == float(cli_last["test_elbo"])
assert torch.allclose(draws["z"].mean(0), guide_mean, atol=0.5)  # 200 draws: a few s.e.
shutil.rmtree(workdir)

# %% [markdown]
# The command line's `Trainer` computes the same steps as `SVI.step`, written as Pyro's
# `elbo.differentiable_loss` and a torch optimizer so that its checkpoints are plain
# `state_dict`s. It manages its own random numbers (minibatch order, binarisation, samples of
# $z$), so the two runs need not take identical steps; the same model, objective and settings
# should give test ELBOs that agree to about the epoch-to-epoch spread printed above.
#
# **Where the outputs go.** Without `--out`, a run writes to `runs/<model name>` in the current
# folder, followed by the settings the command line changed (`runs/vae`,
# `runs/vae-prior=vamp-lr=0.003`, with `-2`, `-3`, ... if taken); `--out DIR` names a new or
# empty folder instead. The folder holds
#
# - `config.toml`: the resolved configuration, every setting written out;
# - `metrics.csv`: one row per epoch with the train ELBO, the test ELBO and its two terms;
# - `checkpoint.pt`: weights, optimizer state, epoch and step after the last epoch, written
#   atomically; random numbers are reseeded from the seed and the epoch, so
#   `ppl-vae train --resume runs/vae --epochs 300` continues the run exactly;
# - `elbo.png`, `latent.png`, `reconstructions.png`, `samples.png`: the figures of section 7.
#
# Other parts are a flag or a model file away: `ppl-vae train --model gaussian_vae` trains the
# Gaussian decoder of section 5, `--objective elbo` the Monte Carlo objective of section 4, and
# `--beta 4` a $\beta$-VAE; `ppl-vae train --help` lists them all.
#
# ## Where next
#
# - [02_swapping_priors_and_guides.ipynb](02_swapping_priors_and_guides.ipynb) swaps the prior
#   (a mixture of Gaussians, the VampPrior) and the guide (a normalizing flow, one
#   $(\mu, \sigma)$ per data point) of this VAE, and measures each choice honestly: the ELBO,
#   $\log p(x)$ by importance sampling, and the amortization gap.
# - [03_em_vs_vi_vs_amortized.ipynb](03_em_vs_vi_vs_amortized.ipynb) goes back to the Gaussian
#   mixture of section 1 and fits it by EM, by mean-field variational inference, by Pyro's SVI
#   and NUTS, and as a VAE with a mixture prior, on the same data, in one table.
