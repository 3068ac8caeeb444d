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
# # Swapping priors and guides
#
# A VAE here is three swappable parts around two networks: a **prior** $p(z)$, a **guide**
# $q(z \mid x)$ and a **likelihood** $p(x \mid z)$. Changing one is changing a name; the Pyro
# `model` and `guide` programs stay the same (notebook
# [01_vae_from_scratch.ipynb](01_vae_from_scratch.ipynb) reads them line by line). This
# notebook trains five VAEs on `digits` that differ in one part each, and measures them
# honestly:
#
# | prior $p(z)$ | guide $q(z \mid x)$ |
# |---|---|
# | `normal`: $\mathcal N(0, I)$ | `diagonal`: an encoder outputs $\mu(x), \sigma(x)$ of a diagonal Gaussian |
# | `mog`: a learned mixture of 10 diagonal Gaussians | `iaf`: that Gaussian pushed through two inverse autoregressive flows (Kingma et al. 2016) |
# | `vamp`: the VampPrior, $\frac{1}{50}\sum_{k=1}^{50} q(z \mid u_k)$ at 50 learned pseudo-inputs $u_k$ (Tomczak & Welling 2018) | `per-datapoint`: no encoder; a table of $(\mu_n, \sigma_n)$, one row per training point: classical, non-amortized VI |
#
# Three numbers per model, all in nats per example on held-out digits, higher is better:
#
# 1. the **ELBO**, $\mathbb E_q[\log p(x \mid z)] - \mathrm{KL}(q(z \mid x)\,\|\,p(z))$, the training
#    objective;
# 2. **$\log p(x)$ by importance sampling** with $K$ samples from the guide,
#    $\log \frac1K \sum_{k=1}^K p(x, z_k) / q(z_k \mid x)$: a lower bound that rises to $\log p(x)$
#    as $K$ grows (Burda et al. 2016). This, not the ELBO, is the number to compare models by:
#    a model can have a poor ELBO because its guide is poor, not its density;
# 3. the **inference gap** $\log p(x) - \mathrm{ELBO}$, split in two (Cremer, Li & Duvenaud 2018):
#    the **approximation gap** $\log p(x) - \mathrm{ELBO}(q^*)$, where $q^*$ is the best member of
#    the guide's family for each point, found by optimizing that point's parameters
#    directly; and the **amortization gap** $\mathrm{ELBO}(q^*) - \mathrm{ELBO}(q)$, what the encoder
#    loses by predicting the parameters instead of optimizing them.
#
# **Quick mode**: `PPL_VAE_QUICK=1` runs everything in seconds (the tests run it so). The saved
# outputs come from a full run, which trains each model for 100 epochs: a fixed, equal budget
# that keeps the notebook to a few minutes on a CPU, half the 200 epochs of the model zoo, so
# the numbers compare the parts at equal training time rather than at convergence.

# %%
import os
import warnings

QUICK = os.environ.get("PPL_VAE_QUICK") == "1"
EPOCHS = 1 if QUICK else 100
K = 20 if QUICK else 1000            # importance samples per held-out digit for log p(x)
K_LADDER = (1, 10, 100) if QUICK else (1, 10, 100, 1000, 5000)
GAP_POINTS = 10 if QUICK else 100    # held-out digits on which the gaps are computed
GAP_STEPS = 10 if QUICK else 300     # Adam steps of each point's q* fit
ELBO_SAMPLES = 20 if QUICK else 500  # draws per point of the ELBOs inside the gaps
# Pyro imports tqdm.auto, which warns when a Jupyter kernel has no ipywidgets; nothing here
# shows a progress bar.
warnings.filterwarnings("ignore", message="IProgress not found")
print(f"{'quick' if QUICK else 'full'} run: {EPOCHS} epochs per model; log p(x) with K={K}; "
      f"gaps on {GAP_POINTS} held-out digits")

# %%
import math
import tempfile
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import display

from ppl_vae import registry
from ppl_vae.build import build
from ppl_vae.config import load_config
from ppl_vae.evaluation import plots
from ppl_vae.evaluation.likelihood import evaluate_elbo, inference_gaps, log_likelihood

torch.set_num_threads(1)  # small nets: on shared cores more threads only add contention
plt.rcParams.update({"figure.dpi": 72})  # keeps the saved notebook small
for kind in ("prior", "guide", "likelihood"):
    print(f"registered {kind}s: {', '.join(registry.TABLES[kind])}")

# %% [markdown]
# ## 1. Five VAEs that differ in one part
#
# Every model starts from `models/vae.toml`: a Bernoulli likelihood on dynamically binarised
# digits, an 8-dimensional latent space, MLPs with two hidden layers of 256 units, the
# analytic-KL objective (`TraceMeanField_ELBO`, which falls back to a Monte Carlo KL where no
# closed form exists, as for the mixture priors), Adam at $10^{-3}$, minibatches of 128, seed 0.
# One override changes one part; the command-line equivalent is in the comment.
#
# The per-datapoint guide updates a row of its table only when that point is in the
# minibatch, about one step in eleven here; `step_scale = 11` makes those steps eleven times
# larger (see its docstring). Held-out digits have no row: for them the guide fits a fresh
# $(\mu, \sigma)$ by 200 Adam steps on the point's own ELBO before every number it reports.
# The VampPrior's pseudo-inputs start at 50 training digits drawn at random rather than at
# noise (its option `init = "data"`; the trainer calls `VampPrior.init_from_data`).

# %%
VARIANTS = {
    "normal + diagonal": {},                                           # ppl-vae train
    "mog + diagonal": {"model.prior": "mog",                           # --prior mog
                       "model.prior_options": {"num_components": 10}},
    "vamp + diagonal": {"model.prior": "vamp",                         # --prior vamp
                        "model.prior_options": {"init": "data"}},
    "normal + iaf": {"model.guide": "iaf"},                            # --guide iaf
    "normal + per-datapoint": {"model.guide": "per-datapoint",         # --guide per-datapoint
                               "model.guide_options": {"step_scale": 11.0, "fit_steps": 200}},
}


def train(config, run_dir):
    # The trained run (a ppl_vae.build.Experiment), its VAE in eval mode, and the numbers
    # of its last epoch.
    trainer = build(config, run_dir, progress=False)
    last = trainer.run(figures=False)
    trainer.program.eval()
    return trainer, last


trainers, train_seconds = {}, {}
with tempfile.TemporaryDirectory() as runs:
    for name, overrides in VARIANTS.items():
        config = load_config("vae", {**overrides, "train.epochs": EPOCHS, "train.device": "cpu"})
        start = time.perf_counter()
        trainers[name], last = train(config, os.path.join(runs, name.replace(" + ", "-")))
        train_seconds[name] = time.perf_counter() - start
        print(f"{name:>24}: test ELBO {last['test_elbo']:8.3f} after {last['epoch']} epochs, "
              f"{train_seconds[name]:5.1f} s")

data = trainers["normal + diagonal"].dataset
x_test = trainers["normal + diagonal"].data.x_test   # binarised once, with the run's fixed seed
print(f"{len(x_test)} held-out digits, the same for every model")

# %% [markdown]
# The ELBO printed there is the trainer's own, per epoch. Every number from here on is
# computed by the functions of `ppl_vae.evaluation.likelihood`, from Pyro traces of each model's own
# `model` and `guide`.
#
# ## 2. What each prior learned
#
# Samples from each prior, decoded: the means of $p(x \mid z)$ for $z \sim p(z)$. For the
# mixture prior, the decoded mean of each of its components; for the VampPrior, its learned
# pseudo-inputs $u_k$, which live in the data's own space and can be drawn as images.

# %%
image_shape = data.image_shape
torch.manual_seed(0)
fig, axes = plt.subplots(len(trainers), 1, figsize=(7.5, 1.3 * len(trainers)))
for ax, (name, trainer) in zip(axes, trainers.items(), strict=True):
    plots.image_grid(trainer.program.sample(12), image_shape, ncols=12, ax=ax,
                     title=f"{name}: samples from the prior")
fig.tight_layout()
plt.show()

mog = trainers["mog + diagonal"].program
vamp = trainers["vamp + diagonal"].program
with torch.no_grad():
    prior = mog.prior()
    component_means = mog.decode(prior.component_distribution.base_dist.loc).mean
    order = prior.mixture_distribution.probs.argsort(descending=True)
fig, axes = plt.subplots(2, 1, figsize=(7.5, 2.6))
plots.image_grid(component_means[order], image_shape, ncols=10, ax=axes[0],
                 title="mog prior: each component's mean, decoded (heaviest first)")
plots.image_grid(vamp.prior.pseudo_inputs.detach()[:20], image_shape, ncols=10, ax=axes[1],
                 title="VampPrior: the first 20 of its 50 pseudo-inputs")
fig.tight_layout()
plt.show()
weights = prior.mixture_distribution.probs.detach()
print("mog prior weights, heaviest first: "
      + ", ".join(f"{w:.3f}" for w in weights[order].tolist()))

# %% [markdown]
# ## 3. The ELBO is not the log-likelihood
#
# How many importance samples are enough? For one model, the estimate of $\log p(x)$ on the
# first 100 held-out digits as $K$ grows. With $K = 1$ it is a one-sample ELBO; every larger
# $K$ gives a tighter bound in expectation, and the estimates level off once $q(z \mid x)$
# covers the posterior well enough. The standard error is across digits.

# %%
vae = trainers["normal + diagonal"].program
torch.manual_seed(0)
ladder = {}
for k in K_LADDER:
    start = time.perf_counter()
    values = log_likelihood(vae, x_test[:100], num_samples=k)
    ladder[k] = values.mean().item()
    print(f"K = {k:5d}: log p(x) >= {ladder[k]:8.3f} +- {values.std().item() / 10:.3f}   "
          f"({time.perf_counter() - start:.1f} s)")
print(f"from K = {K_LADDER[-2]} to K = {K_LADDER[-1]}: "
      f"{ladder[K_LADDER[-1]] - ladder[K_LADDER[-2]]:+.3f} nats per example")
# The K-sample bound does not decrease in K (0.02 nats of Monte Carlo slack).
bounds = list(ladder.values())
assert all(b >= a - 0.02 for a, b in zip(bounds, bounds[1:], strict=False)), bounds

# %% [markdown]
# The table below uses $K$ as printed in the setup cell for all held-out digits; the step
# from that $K$ to the largest one above says how much tighter a larger $K$ would be.
#
# ## 4. The table
#
# For each model: the held-out ELBO and its two terms (`evaluate_elbo`), $\log p(x)$
# (`log_likelihood`, with its standard error across digits), and the gaps on the first
# held-out digits (`inference_gaps`: $q^*$ fitted by Adam from the guide's own parameters for
# each point, both ELBOs averaged over many draws of $z$).

# %%
rows, per_digit = [], {}
for name, trainer in trainers.items():
    vae = trainer.program
    torch.manual_seed(0)
    start = time.perf_counter()
    elbo = evaluate_elbo(vae, x_test)
    log_px = log_likelihood(vae, x_test, num_samples=K)
    per_digit[name] = log_px
    gaps = inference_gaps(vae, x_test[:GAP_POINTS], log_px=log_px[:GAP_POINTS],
                          elbo_samples=ELBO_SAMPLES, steps=GAP_STEPS)
    prior, guide = name.split(" + ")
    rows.append({
        "prior": prior, "guide": guide,
        "ELBO": elbo["elbo"], "E_q log p(x|z)": elbo["recon"], "KL": elbo["kl"],
        f"log p(x), K={K}": log_px.mean().item(),
        "± s.e.": log_px.std().item() / math.sqrt(len(log_px)),
        "log p(x) - ELBO": log_px.mean().item() - elbo["elbo"],
        "approximation gap": gaps["approximation_gap"],
        "amortization gap": gaps["amortization_gap"],
        "train s": train_seconds[name], "eval s": time.perf_counter() - start,
    })
table = pd.DataFrame(rows).set_index(["prior", "guide"])
display(table.round(2))
# log p(x) is above every model's ELBO, and q* is at least as good as the guide's q (Monte
# Carlo slack: 0.05 nats).
assert (table["log p(x) - ELBO"] > 0).all(), table["log p(x) - ELBO"]
assert (table["approximation gap"] > -0.05).all() and (table["amortization gap"] > -0.05).all()
print(f"nats per example on {len(x_test)} held-out digits; gaps on the first {GAP_POINTS}")

# %%
names = [f"{p} + {g}" for p, g in table.index]
y = np.arange(len(names))[::-1]
fig, ax = plt.subplots(figsize=(8, 3.2))
ax.scatter(table["ELBO"], y, marker="|", s=200, color="C0", label="ELBO (all held-out digits)")
ax.scatter(table[f"log p(x), K={K}"], y, marker="o", color="C1", label=f"log p(x), K={K}")
ax.set_yticks(y, names)
ax.set_xlabel("nats per example (higher is better)")
ax.legend(loc="lower right", fontsize=8)
ax.grid(alpha=0.3, axis="x")
ax.set_title("the ELBO and the log-likelihood of each model")
fig.tight_layout()
plt.show()

fig, ax = plt.subplots(figsize=(8, 3.2))
ax.barh(y, table["approximation gap"], color="C2", label="approximation gap")
ax.barh(y, table["amortization gap"], left=table["approximation gap"], color="C3",
        label="amortization gap")
ax.set_yticks(y, names)
ax.set_xlabel(f"nats per example, first {GAP_POINTS} held-out digits")
ax.legend(loc="lower right", fontsize=8)
ax.set_title("log p(x) - ELBO, in two parts")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 5. What the numbers say
#
# The cell below reads the table and prints the comparisons; the text after it says what
# they mean.

# %%
column = f"log p(x), K={K}"
base = per_digit["normal + diagonal"]
print(f"log p(x) against the baseline (normal prior, diagonal guide, {base.mean():.2f}), "
      "with the standard error of the difference over the same digits:")
for name, values in per_digit.items():
    if name != "normal + diagonal":
        difference = values - base
        se = difference.std().item() / math.sqrt(len(difference))
        print(f"  {name:>24}: {difference.mean().item():+.2f} +- {se:.2f}")
best = table[column].idxmax()
print(f"highest log p(x): {' + '.join(best)}; highest ELBO: {' + '.join(table['ELBO'].idxmax())}")
print("largest amortization gap: " + " + ".join(table["amortization gap"].idxmax())
      + f" ({table['amortization gap'].max():.2f}); smallest: "
      + " + ".join(table["amortization gap"].idxmin())
      + f" ({table['amortization gap'].min():.2f})")
print("largest approximation gap: " + " + ".join(table["approximation gap"].idxmax())
      + f" ({table['approximation gap'].max():.2f}); smallest: "
      + " + ".join(table["approximation gap"].idxmin())
      + f" ({table['approximation gap'].min():.2f})")
print("training seconds: " + ", ".join(f"{' + '.join(i)} {s:.0f}"
                                       for i, s in table["train s"].items()))

# %% [markdown]
# How to read them:
#
# - **Compare models by $\log p(x)$, not by the ELBO.** The ELBO charges each model for its
#   guide's shortfall, $\mathrm{KL}(q \,\|\, p(z \mid x))$, and that shortfall differs between
#   guides; the importance-sampled estimate removes most of it. The standard errors in the
#   table are across digits, and large, because digits differ; all models are scored on the
#   same digits, so their differences are known better, as the paired errors above show.
# - **The amortization gap is the price of the encoder.** For the amortized guides it is
#   what one network's prediction of $(\mu, \sigma)$ loses against optimizing each held-out
#   point's own parameters. The per-datapoint guide has no encoder: on held-out points its
#   $q$ *is* such an optimization (200 steps from the prior), so its amortization gap only
#   measures the extra steps of the $q^*$ fit, and it pays instead in time, at every
#   evaluation.
# - **The approximation gap is the price of the family.** It is what even the best diagonal
#   Gaussian (or the best flow, for `iaf`) misses of the true posterior. A richer guide can
#   shrink it; a richer prior changes the posterior itself.
# - **At this budget**, the lines above say which swaps paid off: the VampPrior raises
#   $\log p(x)$ above the baseline's by several paired standard errors; the flow guide has the
#   smallest approximation gap but a lower $\log p(x)$ (it has more to learn in the same
#   epochs); and the per-datapoint guide, whose rows move only when their point is in the
#   minibatch, ends furthest behind, with the decoder it trained.
#
# To train any of these from the command line: `ppl-vae train --prior vamp`,
# `ppl-vae train --guide iaf`, and `ppl-vae eval RUN_DIR` for the same numbers with
# $K = 5000$ (see the README's model zoo for every model trained to convergence).
# [03_em_vs_vi_vs_amortized.ipynb](03_em_vs_vi_vs_amortized.ipynb) compares amortized VI with
# EM and mean-field VI on the Gaussian mixture.
