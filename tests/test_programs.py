"""Programs of your own and parts by import path get the whole toolkit: a program in a file
outside the repository trains through the command line, resumes exactly, evaluates and
loads back with ppl_vae.load_run; the generic evaluation agrees with the built-in VAE's
fast path and with quadrature."""

import math
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Predictive
from torch import nn

import ppl_vae
from ppl_vae import registry, testing
from ppl_vae.build import build, make_objective
from ppl_vae.commands import main
from ppl_vae.config import load_config
from ppl_vae.evaluation import generic
from ppl_vae.evaluation.likelihood import log_likelihood as fast_log_likelihood
from ppl_vae.vae import Dims, build_vae

MODELS = Path(__file__).resolve().parent.parent / "models"

# The program of the README's "Write your own model", as a user writes it.
PROGRAM = '''
import pyro
import pyro.distributions as dist
import torch
from torch import nn


class TinyVAE(nn.Module):
    """z ~ N(0, I), x | z ~ Bernoulli(decoder(z)); q(z | x) = N(mu(x), sigma(x))."""

    def __init__(self, dims, hidden=128):
        super().__init__()
        self.num_data, self.latent_dim = dims.num_data, dims.latent_dim
        self.decoder = nn.Sequential(nn.Linear(dims.latent_dim, hidden), nn.ReLU(),
                                     nn.Linear(hidden, dims.data_dim))
        self.encoder = nn.Sequential(nn.Linear(dims.data_dim, hidden), nn.ReLU(),
                                     nn.Linear(hidden, 2 * dims.latent_dim))

    def plate(self, x, idx):  # a minibatch idx of the N training points, or x itself
        return pyro.plate("data", len(x) if idx is None else self.num_data, subsample=idx)

    def model(self, x, y=None, idx=None):
        pyro.module("tiny_vae", self)
        with self.plate(x, idx):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), self.latent_dim), 1.0)
                            .to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x, y=None, idx=None):
        pyro.module("tiny_vae", self)
        with self.plate(x, idx):
            loc, raw_scale = self.encoder(x).chunk(2, dim=-1)
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw_scale)).to_event(1))

    @torch.no_grad()
    def sample(self, n, y=None):
        z = torch.randn(n, self.latent_dim, device=self.decoder[0].weight.device)
        return torch.sigmoid(self.decoder(z))
'''

PRIOR = '''
import pyro.distributions as dist
import torch
from torch import nn


class LearnedScalePrior(nn.Module):
    """N(0, diag(s^2)) with s learned."""

    def __init__(self, dims):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(dims.latent_dim))

    def forward(self):
        scale = self.log_scale.exp()
        return dist.Normal(torch.zeros_like(scale), scale).to_event(1)
'''

SMALL = ["--hidden", "16", "--latent-dim", "2", "--batch-size", "40", "--quiet"]


@pytest.fixture
def user_dir(tmp_path):
    """A folder outside the repository with the user's files and a small binary data set."""
    (tmp_path / "tiny_vae.py").write_text(PROGRAM)
    (tmp_path / "my_prior.py").write_text(PRIOR)
    rng = np.random.default_rng(0)
    code = rng.normal(size=(150, 2))
    probs = 1 / (1 + np.exp(-2 * code @ rng.normal(size=(2, 16))))
    np.save(tmp_path / "data.npy", (rng.random((150, 16)) < probs).astype(np.float32))
    return tmp_path


def train(*argv):
    assert main(["train", *argv]) == 0


def parameters(run_dir):
    return ppl_vae.load_run(run_dir, device="cpu").program.state_dict()


@pytest.mark.parametrize("flags", [["--program", "tiny_vae.py:TinyVAE"],
                                   ["--prior", "my_prior.py:LearnedScalePrior"]],
                         ids=["program", "prior"])
def test_a_users_file_trains_resumes_exactly_evaluates_and_loads(user_dir, monkeypatch, flags,
                                                                  capsys):
    monkeypatch.chdir(user_dir)
    common = [*flags, "--dataset", "data.npy", *SMALL]
    train(*common, "--epochs", "3", "--out", "straight")
    train(*common, "--epochs", "1", "--out", "split")
    monkeypatch.chdir(user_dir.parent)  # resumed from elsewhere: the file's path is absolute
    train("--resume", str(user_dir / "split"), "--epochs", "3", "--quiet")
    a, b = parameters(user_dir / "straight"), parameters(user_dir / "split")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    capsys.readouterr()
    assert main(["eval", str(user_dir / "split"), "--num-samples", "300", "--gap-points", "5",
                 "--gap-steps", "5", "--quiet"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines()
               if line.startswith("| vae"))
    cells = [c.strip() for c in row.split("|")]
    elbo, log_px = float(cells[6]), float(cells[9])
    assert math.isfinite(elbo) and math.isfinite(log_px) and elbo <= log_px

    run = ppl_vae.load_run(user_dir / "split")
    assert not run.program.training and len(run.metrics) == 3
    assert run.config["train"]["epochs"] == 3
    x = run.data.x_test[:7]
    samples = Predictive(run.program.model, guide=run.program.guide, num_samples=4)(x)
    assert samples["z"].shape == (4, 7, 2)
    assert samples["x"].shape == (4, 7, 16) and torch.equal(samples["x"][0], x)


def test_program_figures_follow_its_methods(user_dir, monkeypatch):
    monkeypatch.chdir(user_dir)
    np.save(user_dir / "images.npy", np.load(user_dir / "data.npy").reshape(150, 4, 4))
    train("--program", "tiny_vae.py:TinyVAE", "--dataset", "images.npy", *SMALL,
          "--epochs", "1", "--out", "run")
    figures = sorted(p.name for p in (user_dir / "run").glob("*.png"))
    assert figures == ["elbo.png", "samples.png"]  # no encode or reconstruct methods


def test_settings_of_the_builtin_vae_are_refused_for_a_program(user_dir, monkeypatch, capsys):
    monkeypatch.chdir(user_dir)
    code = main(["train", "--program", "tiny_vae.py:TinyVAE", "--dataset", "data.npy",
                 "--kl-schedule", "linear", "--out", "run", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "kl_schedule anneals the built-in VAE's KL term" in err
    code = main(["train", "--program", "my_prior.py:LearnedScalePrior", "--dataset",
                 "data.npy", "--out", "run2", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "is not a program: a program is an nn.Module with model" in err
    code = main(["train", "--model", str(MODELS / "m2.toml"), "--no-conditional", "--out",
                 "run3", "--quiet"])  # the program's own ValueError, as one line
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "cannot build program" in err and "M2 needs labelled data" in err


# ---------------------------------------------------------------- generic evaluation


def test_generic_log_px_agrees_with_the_fast_path_on_the_builtin_vae():
    dims = Dims(data_dim=16, latent_dim=2, num_data=60)
    vae = build_vae(dims, hidden=(16,), guide="full")
    with torch.no_grad():
        vae.decoder[0].weight.mul_(3.0)  # a posterior far from the prior
    vae.eval()
    x = torch.bernoulli(torch.full((60, 16), 0.3), generator=torch.Generator().manual_seed(0))
    fast = fast_log_likelihood(vae, x, num_samples=1000)
    ours = generic.log_likelihood(vae, x, num_samples=1000, max_rows=4096)
    diff = (ours - fast.double())
    se = float(diff.std() / math.sqrt(len(diff)))
    assert abs(float(diff.mean())) < 3 * se
    assert float(diff.abs().max()) > 0  # independent draws, not the same numbers
    elbo = generic.monte_carlo_elbo(vae, x, num_samples=1000)
    assert (elbo < ours).all()


class Toy2D(nn.Module):
    """z ~ N(0, I_2), x | z ~ N(tanh(A z) + b, 0.5^2 I_3): a posterior that is not normal,
    and p(x) a 2-D integral; the guide a broad normal that ignores x."""

    def __init__(self, dims):
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        self.a = nn.Parameter(torch.randn(2, 3, generator=gen, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(3, generator=gen, dtype=torch.float64))
        self.loc = nn.Parameter(torch.zeros(2, dtype=torch.float64))

    def likelihood(self, z):
        return dist.Normal(torch.tanh(z @ self.a) + self.b, 0.5).to_event(1)

    def model(self, x, y=None, idx=None):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), 2), 1.0).to_event(1))
            pyro.sample("x", self.likelihood(z), obs=x)

    def guide(self, x, y=None, idx=None):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(self.loc.expand(len(x), 2), 1.5).to_event(1))


def test_generic_log_px_agrees_with_quadrature_on_a_2d_toy():
    toy = Toy2D(None)
    with torch.no_grad():  # five draws of x from the model
        gen = torch.Generator().manual_seed(5)
        z0 = torch.randn(5, 2, generator=gen, dtype=torch.float64)
        x = toy.likelihood(z0).base_dist.loc + 0.5 * torch.randn(5, 3, generator=gen,
                                                                  dtype=torch.float64)
    grid = torch.linspace(-7, 7, 561, dtype=torch.float64)
    z = torch.cartesian_prod(grid, grid)  # (G, 2)
    with torch.no_grad():
        log_joint = (dist.Normal(0.0, 1.0).log_prob(z).sum(-1)[:, None]
                     + toy.likelihood(z[:, None, :]).log_prob(x))  # (G, 5)
    cell = math.log(float(grid[1] - grid[0]) ** 2)
    quadrature = log_joint.logsumexp(0) + cell
    estimate = generic.log_likelihood(toy, x, num_samples=100_000, max_rows=2**20)
    assert (estimate - quadrature).abs().max() < 0.03


# ---------------------------------------------------------------- the programs in models/


def model_class(kind, path):
    return registry.lookup(kind, str(MODELS / path))


def test_the_users_programs_and_prior_in_models_pass_the_kit():
    assert testing.check_part("prior", str(MODELS / "flow_prior.py:FlowPrior"),
                              options={"hidden": 16})
    assert testing.check_part("program", str(MODELS / "hierarchical_vae.py:HierarchicalVAE"),
                              options={"hidden": [16]})
    dims = Dims(data_dim=64, latent_dim=3, num_data=40, num_classes=4, image_shape=(8, 8))
    assert testing.check_part("program", str(MODELS / "m2.py:M2"), dims=dims,
                              options={"hidden": [16], "num_labelled": 10})


def test_m2_objective_is_the_sum_over_classes_by_hand():
    """Where no label is kept, TraceEnum_ELBO's bound is sum_y q(y|x) [ELBO(x, y) -
    log q(y|x)], ELBO(x, y) = E_q(z|x,y)[log p(x|y,z) + log p(z) - log q(z|x,y)] + log p(y)."""
    dims = Dims(data_dim=64, latent_dim=2, num_data=20, num_classes=3)
    m2 = model_class("program", "m2.py:M2")(dims, num_labelled=5, hidden=(16,))
    with torch.no_grad():
        m2.decoder[0].weight.mul_(3.0)
    x = torch.bernoulli(torch.full((6, 64), 0.3), generator=torch.Generator().manual_seed(2))
    k = 4000
    with torch.no_grad():
        loss = make_objective("enum", num_particles=k).loss(m2.model, m2.guide, x)
        log_q_y = m2.classifier(x).log_softmax(-1)
        total, variance = torch.zeros(6), torch.zeros(6)
        for c in range(3):
            onehot = torch.nn.functional.one_hot(torch.full((6,), c), 3).float()
            loc, raw = m2.encoder(torch.cat([x, onehot], -1)).chunk(2, -1)
            q_z = dist.Normal(loc, torch.nn.functional.softplus(raw) + 1e-4).to_event(1)
            z = q_z.sample((k,))
            logits = m2.decoder(torch.cat([z, onehot.expand(k, 6, 3)], -1))
            terms = (dist.Bernoulli(logits=logits).to_event(1).log_prob(x)
                     + dist.Normal(0.0, 1.0).log_prob(z).sum(-1) - q_z.log_prob(z))
            weight = log_q_y[:, c].exp()
            total += weight * (terms.mean(0) + math.log(1 / 3) - log_q_y[:, c])
            variance += weight**2 * terms.var(0) / k
    se = math.sqrt(2 * float(variance.sum()))
    assert abs(-loss - float(total.sum())) < 5 * se


def test_m2_learns_to_classify_from_few_labels_and_bounds_log_px():
    config = load_config(MODELS / "m2.toml", {
        "train.epochs": 8, "model.program_options": {"num_labelled": 300, "hidden": [64]}})
    experiment = build(config, None, progress=False)
    experiment.run(figures=False)
    program, data = experiment.program, experiment.data
    accuracy = float((program.classify(data.x_test) == data.y_test).float().mean())
    assert accuracy > 0.5  # chance is 0.1
    row = generic.evaluate_program(program, data.x_test[:50], num_samples=200)
    assert row["test_elbo"] <= row["log_px"] and math.isfinite(row["log_px"])


def test_hierarchical_vae_trains_and_its_bound_holds():
    config = load_config(MODELS / "hierarchical_vae.toml", {
        "train.epochs": 4, "model.program_options": {"hidden": [64], "top_dim": 2}})
    experiment = build(config, None, progress=False)
    experiment.run(figures=False)
    elbos = [row["test_elbo"] for row in experiment.metrics]
    assert elbos[-1] > elbos[0]
    program, x = experiment.program, experiment.data.x_test[:50]
    log_px = generic.log_likelihood(program, x, num_samples=500)
    elbo = generic.monte_carlo_elbo(program, x, num_samples=500)
    assert (elbo.mean() < log_px.mean()) and torch.isfinite(log_px).all()
    # Both layers are latent sites drawn from the guide and scored by the model.
    observed, latent = generic.log_weight_terms(program, x[:3], num_particles=2)
    assert observed.shape == latent.shape == (2, 3)
