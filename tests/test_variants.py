"""The VAE family as changes of one part: beta and KL annealing (a scale), penalized
objectives (beta-TCVAE, FactorVAE, DIP-VAE), the denoising corruption, the conditional VAE
and JointVAE's latents, checked against hand computations and the plain VAE."""

import csv
import math
import runpy
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO
from sklearn.linear_model import LogisticRegression

from ppl_vae.build import build, make_objective, resume
from ppl_vae.config import load_config
from ppl_vae.errors import ConfigError
from ppl_vae.evaluation import plots
from ppl_vae.evaluation.likelihood import elbo_terms, log_likelihood
from ppl_vae.inference.penalties import DIPVAE, DIPVAEII
from ppl_vae.inference.schedules import KLSchedule
from ppl_vae.parts.corruptions import (
    GaussianCorruption,
    MaskCorruption,
    SaltAndPepperCorruption,
)
from ppl_vae.parts.priors import JointLatent
from ppl_vae.vae import Dims, build_vae

pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.trace` is deprecated:DeprecationWarning")

ROOT = Path(__file__).resolve().parent.parent
SMALL = {"model.hidden": [32], "model.latent_dim": 3, "train.batch_size": 256}


def trainer(tmp_path, epochs=1, model="vae", **overrides):
    config = load_config(model, {**SMALL, "train.epochs": epochs, **overrides})
    return build(config, tmp_path / "run", progress=False)


def plain_vae_loss(vae, x, idx):
    """-ELBO of a VAE written without any scale: the reference for beta = 1."""
    def model(x, idx):
        pyro.module(vae.name, vae)
        with pyro.plate("data", vae.dims.num_data, subsample=idx):
            z = pyro.sample("z", vae.prior().expand(x.shape[:-1]))
            pyro.sample("x", vae.likelihood(vae.decoder(z)), obs=x)

    def guide(x, idx):
        pyro.module(vae.name, vae)
        with pyro.plate("data", vae.dims.num_data, subsample=idx):
            pyro.sample("z", vae.posterior(x, idx))

    return TraceMeanField_ELBO().differentiable_loss(model, guide, x, idx)


# ---------------------------------------------------------------- beta and annealing


@pytest.mark.parametrize("overrides", [
    {},  # constant schedule: the VAE's own beta = 1.0
    {"train.kl_schedule": "linear", "train.kl_warmup_epochs": 0.5},  # weight 1 after warm-up
    {"train.objective": "tcvae", "train.objective_options": {"beta": 1.0}},
    {"train.objective": "dipvae-ii", "train.objective_options": {"lambda_od": 0.0,
                                                                 "lambda_d": 0.0}},
    {"train.objective": "factorvae", "train.objective_options": {"gamma": 0.0}},
], ids=["constant", "linear-warmed-up", "tcvae-beta-1", "dip-zero", "factorvae-gamma-0"])
def test_beta_one_reproduces_the_plain_vae_loss_exactly(tmp_path, overrides):
    run = trainer(tmp_path, **{"train.jit": False, **overrides})
    idx = torch.arange(0, 100)
    x = run.data.x_train[idx]
    step = 10**6  # long after any warm-up
    beta = torch.tensor(run.trainer.schedule(step)) if run.trainer.schedule.annealed else None
    assert beta is None or float(beta) == 1.0
    pyro.set_rng_seed(3)
    ours = run.trainer.loss(x, None, idx, beta)
    pyro.set_rng_seed(3)
    reference = plain_vae_loss(run.program, x, idx)
    assert torch.equal(ours, reference), (float(ours), float(reference))


def beta_loss_by_hand(vae, x, beta):
    """-(N/B) sum_i [log p(x_i | z_i) - beta KL_i] for the Bernoulli VAE with the diagonal
    guide, from its nets alone: z_i = mu + sigma eps with eps drawn as Pyro draws it (so the
    same seed gives the same z), Bernoulli log-density and closed-form KL by hand."""
    mu, rho = vae.posterior.encoder(x).chunk(2, dim=-1)
    sigma = torch.nn.functional.softplus(rho) + vae.posterior.min_scale
    z = mu + sigma * torch.randn(mu.shape)
    logits = vae.decoder(z)
    log_lik = (x * torch.nn.functional.logsigmoid(logits)
               + (1 - x) * torch.nn.functional.logsigmoid(-logits)).sum(-1)
    kl = 0.5 * (sigma**2 + mu**2 - 1 - 2 * sigma.log()).sum(-1)
    return -vae.dims.num_data / len(x) * (log_lik - beta * kl).sum()


@pytest.mark.parametrize("beta", [0.25, 4.0])
def test_beta_vae_loss_is_reconstruction_plus_beta_kl_by_hand(tmp_path, beta):
    run = trainer(tmp_path, **{"train.jit": False, "model.beta": beta})
    idx = torch.arange(0, 100)
    x = run.data.x_train[idx]
    pyro.set_rng_seed(3)
    ours = run.trainer.loss(x, None, idx, None)
    pyro.set_rng_seed(3)
    reference = beta_loss_by_hand(run.program, x, beta)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=0.05)
    pyro.set_rng_seed(3)
    one = beta_loss_by_hand(run.program, x, 1.0)
    assert abs((reference - one).item()) > 100  # beta matters here: KL is not small


def test_annealed_trainer_steps_on_reconstruction_plus_scheduled_beta_kl(tmp_path):
    """Every step of a linearly annealed epoch (beta 2, warm-up 2 epochs) computes its loss
    with weight 2 (step + 1) / warm-up steps on the KL, checked by hand inside the step."""
    run = trainer(tmp_path, **{"train.jit": False, "model.beta": 2.0,
                               "train.kl_schedule": "linear", "train.kl_warmup_epochs": 2.0})
    steps = run.trainer.steps_per_epoch
    loss_fn, seen = run.trainer.svi.loss_fn, []

    def checked_loss(x, y, idx, beta):
        state = torch.get_rng_state()
        weight = 2.0 * (len(seen) + 1) / (2 * steps)
        reference = beta_loss_by_hand(run.program, x, weight)
        torch.set_rng_state(state)
        loss = loss_fn(x, y, idx, beta)
        seen.append((beta.item(), weight, loss.item(), reference.item()))
        return loss

    run.trainer.svi.loss_fn = checked_loss
    run.trainer.train_epoch()
    assert len(seen) == steps
    for beta, weight, loss, reference in seen:
        assert beta == pytest.approx(weight, rel=1e-6)
        assert loss == pytest.approx(reference, rel=1e-5, abs=0.05)


def test_kl_schedules_by_hand():
    linear = KLSchedule("linear", beta=2.0, steps_per_epoch=10, warmup_epochs=2)
    assert [linear(s) for s in (0, 9, 19, 20, 500)] == [0.1, 1.0, 2.0, 2.0, 2.0]
    cyclical = KLSchedule("cyclical", steps_per_epoch=10, warmup_epochs=1, cycle_epochs=2)
    weights = [cyclical.weight(s) for s in range(45)]
    assert weights[:20] == [(s + 1) / 10 for s in range(10)] + [1.0] * 10
    assert weights[20:40] == weights[:20] and weights[40] == 0.1
    assert min(weights) > 0  # poutine.scale needs a positive scale
    assert KLSchedule("constant", beta=3.0)(123) == 3.0
    with pytest.raises(ConfigError, match="kl_cycle_epochs .* must be at least"):
        KLSchedule("cyclical", warmup_epochs=5, cycle_epochs=2)


def test_annealed_beta_is_an_input_of_the_compiled_graph(tmp_path):
    """With JIT the step's KL weight must reach the compiled graph: a frozen first value
    would go unnoticed. The compiled loss at two weights equals the eager one at each."""
    run = trainer(tmp_path, epochs=2, **{"train.kl_schedule": "linear",
                                         "train.kl_warmup_epochs": 2.0})
    assert run.config["train"]["jit"]
    run.trainer.compile()
    compiled = run.trainer.objective._differentiable_loss.compiled
    graphs = len(compiled)
    idx = torch.arange(256)
    x = run.data.x_test[:256]
    eager = make_objective("meanfield")
    losses = {}
    for beta in (0.2, 1.0):
        for name, objective in (("jit", run.trainer.objective), ("eager", eager)):
            pyro.set_rng_seed(4)
            losses[name, beta] = objective.differentiable_loss(
                run.trainer.loss.model, run.trainer.loss.guide, x, idx, torch.tensor(beta),
                batch_size=256, names=("x", "idx", "beta"))
        torch.testing.assert_close(losses["jit", beta], losses["eager", beta],
                                   rtol=1e-5, atol=1e-2)
    assert len(compiled) == graphs  # one graph serves every weight
    # A smaller weight on the KL term gives a smaller loss here (KL > 0).
    assert losses["jit", 0.2].item() < losses["jit", 1.0].item() - 1.0
    run.run(figures=False)
    with open(tmp_path / "run" / "metrics.csv") as f:
        betas = [float(row["beta"]) for row in csv.DictReader(f)]
    schedule, steps = run.trainer.schedule, run.trainer.step
    assert betas == [schedule(steps // 2 - 1), 1.0] and betas[0] == pytest.approx(0.5)


def test_annealed_training_is_the_same_with_and_without_jit(tmp_path):
    params = []
    for jit in (True, False):
        run = trainer(tmp_path / str(jit), epochs=2, **{
            "train.kl_schedule": "cyclical", "train.kl_warmup_epochs": 0.5,
            "train.kl_cycle_epochs": 1.0, "train.jit": jit})
        run.run(figures=False)
        params.append(run.program.state_dict())
    for key in params[0]:
        torch.testing.assert_close(params[0][key], params[1][key], rtol=1e-3, atol=1e-4)


# ---------------------------------------------------------------- penalties


def test_dip_penalties_by_hand():
    dims = Dims(data_dim=4, latent_dim=3, num_data=100)
    gen = torch.Generator().manual_seed(0)
    loc, scale = torch.randn(20, 3, generator=gen), torch.rand(20, 3, generator=gen) + 0.1
    q = dist.Normal(loc, scale).to_event(1)
    cov_mu = np.cov(loc.numpy().T, bias=True)
    cov_z = cov_mu + np.diag((scale.numpy() ** 2).mean(0))
    for penalty, cov, lambda_d in ((DIPVAE(dims, lambda_od=2.0), cov_mu, 20.0),
                                   (DIPVAEII(dims, lambda_od=2.0), cov_z, 2.0)):
        off = cov - np.diag(np.diag(cov))
        expected = 100 * (2.0 * (off**2).sum() + lambda_d * ((np.diag(cov) - 1) ** 2).sum())
        assert float(penalty(q, q.sample(), 100)) == pytest.approx(expected, rel=1e-5)


def test_factorvae_discriminator_trains_alongside_and_resumes_exactly(tmp_path):
    options = {"train.objective": "factorvae",
               "train.objective_options": {"gamma": 5.0, "hidden": [16], "lr": 1e-2}}
    straight = trainer(tmp_path / "straight", epochs=2, **options)
    before = {k: v.clone() for k, v in straight.trainer.auxiliary.state_dict().items()}
    straight.run(figures=False)
    after = straight.trainer.auxiliary.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)
    # The compiled loss sees the trained discriminator (its weights are graph inputs).
    x, idx = straight.data.x_train[:256], torch.arange(256)
    eager = make_objective("factorvae", options={"gamma": 5.0, "hidden": [16]},
                           dims=straight.dims)
    eager.penalty.load_state_dict(after)
    values = []
    for objective in (straight.trainer.objective, eager):
        pyro.set_rng_seed(6)
        loss = straight.trainer.loss
        values.append(objective.differentiable_loss(loss.model, loss.guide, x, idx,
                                                    batch_size=256, names=("x", "idx")))
    torch.testing.assert_close(values[0], values[1], rtol=1e-5, atol=1e-2)

    split = trainer(tmp_path / "split", epochs=1, **options)
    split.run(figures=False)
    resumed = resume(tmp_path / "split" / "run", overrides={"train.epochs": 2},
                             progress=False)
    resumed.run(figures=False)
    for ours, theirs in ((straight.program, resumed.program),
                         (straight.trainer.auxiliary, resumed.trainer.auxiliary)):
        for key, value in ours.state_dict().items():
            assert torch.equal(value, theirs.state_dict()[key]), key
    with open(tmp_path / "split" / "run" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and {"mi", "tc", "dwkl", "tc_discriminator"} <= set(rows[0])
    assert all(math.isfinite(float(row["tc"])) for row in rows)


def test_penalized_objective_is_a_loss_for_pyro_svi():
    dims = Dims(data_dim=16, latent_dim=3, num_data=32)
    vae = build_vae(dims, hidden=(8,))
    x = torch.bernoulli(torch.full((32, 16), 0.3))
    objective = make_objective("dipvae-i", dims=dims)
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), loss=objective)
    before = {k: v.clone() for k, v in vae.named_parameters()}
    pyro.set_rng_seed(1)
    stepped = svi.step(x)
    assert all(not torch.equal(before[k], v) for k, v in vae.named_parameters())
    pyro.set_rng_seed(1)
    with torch.no_grad():
        for k, v in vae.named_parameters():
            v.copy_(before[k])
    assert objective.loss(vae.model, vae.guide, x) == pytest.approx(float(stepped), rel=1e-6)


def test_objective_options_are_checked():
    dims = Dims(data_dim=4, latent_dim=3, num_data=10)
    with pytest.raises(ConfigError, match="'meanfield' objective takes no options"):
        make_objective("meanfield", options={"beta": 2.0})
    with pytest.raises(ConfigError, match="bad options for objective 'tcvae'"):
        make_objective("tcvae", options={"gamma": 2.0}, dims=dims)
    with pytest.raises(ConfigError, match="estimator must be 'mss' or 'mws'"):
        make_objective("tcvae", options={"estimator": "exact"}, dims=dims)
    with pytest.raises(ConfigError, match="must be one of constant, linear, cyclical"):
        load_config("vae", {"train.kl_schedule": "sigmoid"})


# ---------------------------------------------------------------- denoising


@pytest.mark.parametrize("corruption,level", [(MaskCorruption, 0.3),
                                              (SaltAndPepperCorruption, 0.2),
                                              (GaussianCorruption, 0.5)])
def test_corruptions_have_their_stated_strength(corruption, level):
    x = torch.full((200, 100), 0.5)
    noisy = corruption(level=level)(x)
    changed = (noisy != x).double().mean()
    if corruption is GaussianCorruption:
        assert float((noisy - x).std()) == pytest.approx(level, rel=0.03)
    else:
        assert float(changed) == pytest.approx(level, abs=0.01)
        assert set(noisy[noisy != x].unique().tolist()) <= {0.0, 1.0}


def test_denoising_corrupts_only_the_guides_input_and_only_in_training():
    dims = Dims(data_dim=64, latent_dim=2, num_data=50)
    vae = build_vae(dims, hidden=(16,), corruption="mask", corruption_level=0.5)
    x = torch.bernoulli(torch.full((50, 64), 0.5))
    seen = []
    vae.posterior.encoder.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0]))
    trace = pyro.poutine.trace(vae.model).get_trace(x)
    assert torch.equal(trace.nodes["x"]["value"], x)  # the model scores the clean data
    vae.guide(x)
    assert not torch.equal(seen[-1], x) and (seen[-1] <= x).all()  # masked: 1s turned to 0
    vae.eval()
    vae.guide(x)
    elbo_terms(vae, x)
    assert torch.equal(seen[-1], x) and torch.equal(seen[-2], x)  # evaluation: clean


# ---------------------------------------------------------------- conditional VAE


@pytest.mark.slow
def test_cvae_samples_are_the_digits_asked_for(tmp_path):
    """A small budget (20 epochs, one hidden layer of 128): a logistic regression trained
    on the real digits reads >= 90% of the CVAE's samples of class c as c."""
    run = trainer(tmp_path, epochs=20, model="cvae", **{
        "model.hidden": [128], "model.latent_dim": 8, "train.batch_size": 128,
        "train.lr": 3e-3})
    run.run(figures=False)
    classifier = LogisticRegression(max_iter=2000).fit(run.dataset.x_train.numpy(),
                                                       run.dataset.y_train.numpy())
    run.program.eval()
    labels = torch.arange(10).repeat_interleave(50)
    with torch.no_grad():
        samples = run.program.decode(run.program.prior().sample((500,)), labels).mean
    accuracy = (classifier.predict(samples.numpy()) == labels.numpy()).mean()
    assert accuracy >= 0.9, accuracy

    # log p(x | y) by importance sampling: above the ELBO, and lower under wrong labels.
    x, y = run.data.x_test[:100], run.data.y_test[:100]
    log_px = log_likelihood(run.program, x, y, num_samples=200)
    with torch.no_grad():
        elbo = elbo_terms(run.program, x, y)["elbo"]
    assert float(log_px.mean()) > float(elbo.mean())
    wrong = log_likelihood(run.program, x, (y + 1) % 10, num_samples=200)
    assert float(log_px.mean()) > float(wrong.mean()) + 5.0

    paths = plots.save_run_figures(run.program, run.dataset, run.metrics, tmp_path)
    assert tmp_path / "samples.png" in paths  # the run's figures: a grid of rows by class
    fig = plots.class_samples(run.program, run.dataset.image_shape, num_per_class=4)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == [str(c) for c in range(10)]


# ---------------------------------------------------------------- JointVAE


def test_joint_latent_is_a_normal_times_a_relaxed_categorical():
    normal = dist.Normal(torch.zeros(5, 2), torch.ones(5, 2)).to_event(1)
    relaxed = dist.RelaxedOneHotCategorical(torch.tensor(0.67), logits=torch.randn(5, 3))
    joint = JointLatent(normal, relaxed)
    assert joint.batch_shape == (5,) and joint.event_shape == (5,)
    z = joint.sample((7,))
    torch.testing.assert_close(z[..., 2:].sum(-1), torch.ones(7, 5))
    expected = normal.log_prob(z[..., :2]) + relaxed.log_prob(z[..., 2:])
    torch.testing.assert_close(joint.log_prob(z), expected, rtol=1e-4, atol=1e-4)
    assert joint.expand((4, 5)).sample().shape == (4, 5, 5)


def test_joint_parts_go_together_and_agree():
    dims = Dims(data_dim=16, latent_dim=5, num_data=10)
    with pytest.raises(ConfigError, match="'joint' prior is a distribution on real x simplex"):
        build_vae(dims, prior="joint", guide="diagonal")
    with pytest.raises(ConfigError, match="joint guide has 3 categories .* prior 2"):
        build_vae(dims, prior="joint", guide="joint", guide_options={"num_categories": 3})
    vae = build_vae(dims, prior="vamp", guide="joint", hidden=(8,))  # the guide's own family
    assert vae.sample(3).shape == (3, 16)


# ---------------------------------------------------------------- the comparison script


def test_disentangle_script_writes_the_table_and_traversals(tmp_path):
    script = runpy.run_path(str(ROOT / "scripts" / "disentangle.py"), run_name="disentangle")
    out = tmp_path / "out"
    assert script["main"](["--quick", "--variants", "shapes_vae", "beta_tcvae",
                           "--out", str(out)]) == 0
    with open(out / "disentangle.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["variant"] for row in rows] == ["shapes_vae", "beta_tcvae"]
    for row in rows:
        assert 0 <= float(row["mig"]) <= 1 and 0 <= float(row["factor_vae_score"]) <= 1
        assert math.isfinite(float(row["test_elbo"])) and math.isfinite(float(row["tc"]))
    table = (out / "disentangle.md").read_text()
    assert "| MIG |" in table and "Budget: 600 shapes" in table
    assert (out / "beta_tcvae" / "traversals.png").is_file()
