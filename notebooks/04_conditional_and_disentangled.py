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
# # Conditional and disentangled VAEs: the family as changes of one part
#
# The VAE of [01_vae_from_scratch.ipynb](01_vae_from_scratch.ipynb) has many descendants (the
# last item of the theory notes). In `ppl_vae` each of them is **one change to one part**, never
# a copy of the VAE:
#
# | variant | the one change |
# |---|---|
# | conditional VAE (Kingma et al. 2014; Sohn et al. 2015) | encoder and decoder see the label |
# | $\beta$-VAE (Higgins et al. 2017) | KL weighted by $\beta$: a `poutine.scale` |
# | KL annealing (Bowman et al. 2016; Fu et al. 2019) | that weight rises: `kl_schedule` |
# | $\beta$-TCVAE (Chen et al. 2018) | objective `tcvae`: minus $(\beta-1)\,$TC |
# | FactorVAE (Kim & Mnih 2018) | objective `factorvae`: a discriminator's TC |
# | DIP-VAE I / II (Kumar et al. 2018) | objectives `dipvae-i`, `dipvae-ii` |
# | JointVAE (Dupont 2018) | prior and guide `joint`: + relaxed categorical |
# | denoising VAE (Im et al. 2017) | `corruption` of the encoder's input |
#
# This notebook trains two of them in detail:
#
# 1. the **conditional VAE** on `digits`: samples of a chosen class, checked by a classifier
#    trained on real digits, and $\log p(x \mid y)$ by importance sampling;
# 2. **$\beta$-VAE and $\beta$-TCVAE** on generated shapes with known factors (shape, scale,
#    rotation, position): the KL term split into mutual information, total correlation and
#    dimension-wise KL, the Mutual Information Gap (MIG), and latent traversals.
#
# `scripts/disentangle.py` runs the whole comparison (every variant, one budget, one table).
#
# **Units.** ELBOs and log-likelihoods are in nats per example; higher is better.
# **Quick mode.** With `PPL_VAE_QUICK=1` everything runs in seconds on tiny budgets (the tests
# run it so); the saved outputs come from a full run of about three minutes on one CPU core.

# %%
import os
import warnings

QUICK = os.environ.get("PPL_VAE_QUICK") == "1"
CVAE_EPOCHS = 2 if QUICK else 60
SHAPES = {"num_data": 600 if QUICK else 8000, "image_size": 32}
SHAPES_EPOCHS = 1 if QUICK else 25
IMPORTANCE_SAMPLES = 20 if QUICK else 500
VOTES = 20 if QUICK else 500

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets
print(f"{'quick' if QUICK else 'full'} run: CVAE {CVAE_EPOCHS} epochs; shapes: "
      f"{SHAPES['num_data']:,} images, {SHAPES_EPOCHS} epochs per variant")

# %%
import functools
import inspect
import tempfile
import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import pyro
import torch
from sklearn.linear_model import LogisticRegression

from ppl_vae.build import build
from ppl_vae.config import load_config
from ppl_vae.data import shapes
from ppl_vae.evaluation import plots
from ppl_vae.evaluation.aggregate import kl_decomposition
from ppl_vae.evaluation.disentanglement import factor_vae_score, latent_traversals, mig
from ppl_vae.evaluation.likelihood import elbo_terms, log_likelihood
from ppl_vae.inference.penalties import PenalizedELBO, TotalCorrelation
from ppl_vae.inference.schedules import KLSchedule
from ppl_vae.vae import VAE

plt.rcParams.update({"figure.dpi": 72})  # keeps the saved notebook small
RUNS = Path(tempfile.mkdtemp(prefix="ppl_vae_04_"))


def train(model_file, name, **overrides):
    # Train models/<model_file>.toml with overrides; the trained run (a
    # ppl_vae.build.Experiment), its VAE in eval mode.
    trainer = build(load_config(model_file, overrides), RUNS / name, progress=False)
    trainer.run(figures=False)
    trainer.program.eval()
    return trainer


print(f"torch {torch.__version__}, pyro {pyro.__version__}; runs go to a temporary folder")

# %% [markdown]
# ## 1. The conditional VAE
#
# A conditional VAE models $p_\theta(x \mid y) = \int p(z)\, p_\theta(x \mid z, y)\, dz$: the label
# $y$ is given, not inferred, and both the decoder and the encoder $q_\phi(z \mid x, y)$ read it.
# Its ELBO bounds the *conditional* log-likelihood,
#
# $$\log p_\theta(x \mid y) \;\ge\;
# \mathbb E_{q_\phi(z \mid x, y)}\big[\log p_\theta(x \mid z, y)\big]
# - \mathrm{KL}\big(q_\phi(z \mid x, y) \,\|\, p(z)\big).$$
#
# In `ppl_vae` the model and guide are those of the plain VAE: `_condition` appends the one-hot
# label to the encoder's input and to the decoder's input, and does nothing for a VAE without
# classes.

# %%
print(textwrap.dedent(inspect.getsource(VAE._condition)))
cvae = train("cvae", "cvae", **{"train.epochs": CVAE_EPOCHS})
row = cvae.metrics[-1]
print(f"CVAE after {row['epoch']} epochs: test ELBO {row['test_elbo']:.2f} = reconstruction "
      f"{row['test_recon']:.2f} - KL {row['test_kl']:.2f} nats per example (a bound on "
      "log p(x | y))")

# %% [markdown]
# Samples by class: each column decodes one draw $z \sim p(z)$ with every label $y = 0, \dots, 9$,
# each row one class. Because $y$ carries the digit's identity, $z$ is free to carry the rest
# (thickness, slant), which stays the same along a column.

# %%
torch.manual_seed(0)
plots.class_samples(cvae.program, cvae.dataset.image_shape, num_per_class=12)
plt.show()

# %% [markdown]
# Are they the digits asked for? A logistic regression trained on the *real* training digits
# (grey levels) reads the CVAE's samples; the fraction it labels as the requested class is the
# check. Its accuracy on real test digits is the yardstick.

# %%
classifier = LogisticRegression(max_iter=2000).fit(cvae.dataset.x_train.numpy(),
                                                   cvae.dataset.y_train.numpy())
torch.manual_seed(1)
asked = torch.arange(10).repeat_interleave(100)
with torch.no_grad():
    samples = cvae.program.decode(cvae.program.prior().sample((len(asked),)), asked).mean
read = torch.as_tensor(classifier.predict(samples.numpy()))
print(f"classifier accuracy on real test digits: "
      f"{classifier.score(cvae.dataset.x_test.numpy(), cvae.dataset.y_test.numpy()):.3f}")
print(f"CVAE samples read as the class asked for: {(read == asked).float().mean():.3f}")
print("per class:", " ".join(f"{c}: {(read[asked == c] == c).float().mean():.2f}"
                             for c in range(10)))

# %% [markdown]
# The conditional log-likelihood $\log p_\theta(x \mid y)$ by importance sampling,
# $\log \frac1K \sum_k p(z_k)\, p_\theta(x \mid z_k, y) / q_\phi(z_k \mid x, y)$ with
# $z_k \sim q_\phi(z \mid x, y)$: `log_likelihood(vae, x, y)`, the same estimator as for the plain
# VAE, given the labels. It lies above the ELBO (the bound tightens with $K$), and with wrong
# labels the digits become improbable. Scoring every label turns the CVAE into a classifier by
# Bayes' rule with a uniform $p(y)$: $\hat y = \arg\max_y \log p_\theta(x \mid y)$.

# %%
x, y = cvae.data.x_test, cvae.data.y_test
torch.manual_seed(2)
with torch.no_grad():
    elbo = elbo_terms(cvae.program, x, y)["elbo"].mean()
by_label = torch.stack([log_likelihood(cvae.program, x, torch.full_like(y, c),
                                       num_samples=IMPORTANCE_SAMPLES) for c in range(10)], 1)
true = by_label.gather(1, y[:, None]).squeeze(1)
wrong = (by_label.sum(1) - true) / 9
print(f"test ELBO (true labels)               : {elbo:8.2f}")
print(f"log p(x | y), K = {IMPORTANCE_SAMPLES:<4} (true labels) : {true.mean():8.2f}")
print(f"log p(x | y'), average over wrong y'  : {wrong.mean():8.2f}")
print(f"argmax_y log p(x | y) = true label    : {(by_label.argmax(1) == y).float().mean():.3f}")

# %% [markdown]
# ## 2. $\beta$ and its annealing are a scale
#
# $\beta$-VAE maximises
# $\mathbb E_q[\log p_\theta(x \mid z)] - \beta\,\mathrm{KL}(q_\phi(z\mid x)\,\|\,p(z))$.
# Both halves of the KL term sit at the latent site `"z"`, $\log p(z)$ in the model and
# $\log q_\phi(z \mid x)$ in the guide, so one `poutine.scale` around that site in each program
# weighs the whole KL term and nothing else:

# %%
print(textwrap.dedent(inspect.getsource(VAE.guide)))

# %% [markdown]
# KL annealing lets the weight rise during training, so that the decoder learns to use $z$ before
# the KL term pulls every $q_\phi(z \mid x)$ to the prior. The trainer passes each step's weight
# as the `beta` argument: a tensor, so that a JIT-compiled objective takes it as an input (a
# constant would be frozen into the compiled graph at its first value). The weight is never 0,
# because `poutine.scale` needs a positive scale.

# %%
steps = torch.arange(200 * 12)  # 200 epochs of 12 minibatches, as for digits
schedules = {
    "linear warm-up over 20 epochs": KLSchedule("linear", steps_per_epoch=12, warmup_epochs=20),
    "cyclical: 4 cycles of 50 epochs, rising over 25": KLSchedule(
        "cyclical", steps_per_epoch=12, warmup_epochs=25, cycle_epochs=50),
}
fig, ax = plt.subplots(figsize=(7, 2.6))
for label, schedule in schedules.items():
    ax.plot(steps / 12, [schedule(int(s)) for s in steps], label=label)
ax.set(xlabel="epoch", ylabel=r"KL weight $\beta_t$", title="KL annealing schedules")
ax.legend()
plt.show()

# %% [markdown]
# ## 3. Disentangling on shapes with known factors
#
# `ppl_vae.data.shapes` draws dSprites-like images from five independent factors: shape (3 values),
# scale (6), rotation (40), horizontal and vertical position (32 each). A representation is
# *disentangled* when each factor is captured by one latent coordinate and by no other.

# %%
examples = shapes.sample_factors(12, torch.Generator().manual_seed(0))
plots.image_grid(shapes.render(examples, 32), (32, 32), ncols=12,
                 title="shapes: " + ", ".join(shapes.FACTORS))
plt.show()

# %% [markdown]
# ### The KL term in three parts
#
# Averaged over the data, the KL term splits exactly into three parts (Chen et al. 2018), with
# $q(z) = \frac1N \sum_n q_\phi(z \mid x_n)$ the *aggregate posterior*:
#
# $$\mathbb E_x\, \mathrm{KL}\big(q_\phi(z\mid x) \,\|\, p(z)\big)
# = \underbrace{I_q(x; z)}_{\text{index-code MI}}
# + \underbrace{\mathrm{KL}\Big(q(z) \,\Big\|\, \prod_l q(z_l)\Big)}_{\text{total correlation}}
# + \underbrace{\sum_l \mathrm{KL}\big(q(z_l) \,\|\, p(z_l)\big)}_{\text{dimension-wise KL}} .$$
#
# $\beta$-VAE multiplies all three by $\beta$, and so also squeezes the information the code
# keeps about $x$. $\beta$-TCVAE penalises only the total correlation, the dependence between
# latent coordinates:
# $\mathrm{ELBO} - (\beta - 1)\,\mathrm{TC}$. The TC of a minibatch is estimated by minibatch
# stratified sampling, and the penalty enters the guide as a `pyro.factor` (a factor in the guide
# is subtracted from the ELBO), so that Pyro's own estimator optimises it, JIT-compiled or not:

# %%
print(textwrap.dedent(inspect.getsource(TotalCorrelation.forward)))
print(textwrap.dedent(inspect.getsource(PenalizedELBO._penalized)))

# %% [markdown]
# Three runs with the same data, nets (MLP 256-256, 10 latent coordinates), seed and budget: the
# plain VAE, $\beta$-VAE with $\beta = 4$ and $\beta$-TCVAE with $\beta = 6$ (the model files
# `shapes_vae`, `beta_vae` and `beta_tcvae`). For each: the test ELBO, the KL term's three parts
# on the test set (exact aggregate over the test images), the MIG of the posterior means against
# the true factors, and the FactorVAE score.

# %%
data, _, factors_test = shapes.load_shapes_with_factors(**SHAPES)
common = {"data.options": SHAPES, "train.epochs": SHAPES_EPOCHS}
runs = {name: train(name, name, **common) for name in ("shapes_vae", "beta_vae", "beta_tcvae")}

observe = functools.partial(shapes.render, image_size=SHAPES["image_size"])
print(f"{'variant':>11} | {'test ELBO':>9} | {'recon':>7} | {'KL':>5} = {'MI':>5} + {'TC':>5} + "
      f"{'dimKL':>5} | {'MIG':>5} | FactorVAE score")
results = {}
for name, run in runs.items():
    assert torch.equal(run.dataset.x_test, data.x_test)  # the factors belong to these images
    torch.manual_seed(0)
    with torch.no_grad():
        codes = run.program.encode(run.data.x_test).mean
    terms = kl_decomposition(run.program, run.data.x_test)
    score = factor_vae_score(lambda images, vae=run.program: vae.encode(images).mean,
                             shapes.sample_factors, observe, num_train=VOTES,
                             num_eval=VOTES // 2, generator=torch.Generator().manual_seed(0))
    results[name] = mig(codes, factors_test)
    row = run.metrics[-1]
    print(f"{name:>11} | {row['test_elbo']:9.1f} | {row['test_recon']:7.1f} | "
          f"{terms['kl']:5.2f} = {terms['mi']:5.2f} + {terms['tc']:5.2f} + {terms['dwkl']:5.2f} "
          f"| {results[name]:5.3f} | {score.score:.3f}")

# %% [markdown]
# Reading the table: $\beta$-VAE pays for its larger $\beta$ with all three parts, including the
# mutual information, and so with reconstruction. $\beta$-TCVAE keeps more of the information
# and drives the total correlation towards 0. The MIG rewards a factor's information being in one
# coordinate and no other (1 is perfect, 0 none). The budget here is small (a few thousand
# steps, against the $10^5$ of the papers), so the numbers are those of short runs, and
# differences of a few hundredths between single seeds are within the noise; the full table of
# `scripts/disentangle.py` lists every variant.
#
# ### Latent traversals
#
# Each row sweeps one latent coordinate from $-2.5$ to $2.5$ with the others held at a test
# image's code, and decodes. Rows are ordered by how much that coordinate's posterior mean varies
# over the test set; coordinates that have collapsed to the prior change nothing.

# %%
for name in ("shapes_vae", "beta_tcvae"):
    run = runs[name]
    with torch.no_grad():
        means = run.program.encode(run.data.x_test).mean
    order = means.var(0).argsort(descending=True).tolist()
    fig = latent_traversals(lambda z, vae=run.program: vae.decode(z).mean, means[0], (32, 32),
                            values=torch.linspace(-2.5, 2.5, 9), dims=order)
    fig.axes[0].set_title(f"{name}: latent traversals (MIG {results[name]:.3f})")
    plt.show()

# %% [markdown]
# ## 4. The rest of the family
#
# Every variant is a model file; `ppl-vae train --model NAME` trains it, and the flags of
# section 2 apply to all of them:
#
# ```bash
# ppl-vae train --model cvae                  # conditional VAE on digits
# ppl-vae train --model annealed_vae          # linear KL warm-up (--kl-schedule cyclical ...)
# ppl-vae train --model factor_vae            # FactorVAE: a discriminator trains alongside
# ppl-vae train --model dip_vae               # DIP-VAE I (objective dipvae-ii for II)
# ppl-vae train --model joint_vae             # continuous + relaxed categorical latents
# ppl-vae train --model denoising_vae         # masking noise on the encoder's input
# python scripts/disentangle.py               # all disentangling variants, one table
# ```
#
# - **FactorVAE** estimates the total correlation with a classifier between codes
#   $z \sim q(z)$ and codes whose coordinates were shuffled across the batch; the classifier is
#   the objective's own module with its own optimizer, stepped after each VAE step, and saved in
#   the checkpoint.
# - **DIP-VAE** pulls the covariance of the encoder's means (I) or of the aggregate posterior
#   (II) towards the identity.
# - **JointVAE** adds a discrete latent: a relaxed one-hot categorical (Gumbel-softmax) beside
#   the normal coordinates, one sample site for both.
# - **Denoising**: the guide encodes a corrupted copy of $x$ (Gaussian, salt-and-pepper or
#   masking noise) while the model scores the clean $x$; evaluation encodes clean data.
