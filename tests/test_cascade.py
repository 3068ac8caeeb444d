"""CascadeVAE: the balanced assignment, the per-dimension KL schedule, and the objective
with the assignment fixed, each against an answer computed independently."""

import itertools
import math

import pyro
import pytest
import torch
from pyro import poutine
from torch.nn.functional import binary_cross_entropy_with_logits, softplus

from ppl_vae.build import make_objective
from ppl_vae.errors import ConfigError
from ppl_vae.evaluation.disentanglement import cluster_accuracy
from ppl_vae.inference.schedules import CascadeSchedule
from ppl_vae.parts.cascade import balanced_assignment
from ppl_vae.vae import Dims, build_vae


def brute_force_balanced(cost):
    """The cheapest assignment with at most ceil(B / K) points per category, by enumeration."""
    num_points, num_categories = cost.shape
    capacity = math.ceil(num_points / num_categories)
    best = None
    for labels in itertools.product(range(num_categories), repeat=num_points):
        if max(labels.count(k) for k in range(num_categories)) > capacity:
            continue
        total = sum(float(cost[i, k]) for i, k in enumerate(labels))
        if best is None or total < best[0] - 1e-12:
            best = (total, labels)
    return best


def test_balanced_assignment_returns_the_known_balanced_optimum():
    # Every point prefers category 0 (greedy argmin puts all six there); the balanced
    # optimum must send two to each category, the ones for which the move costs least.
    cost = torch.tensor([[0.0, 5.0, 9.0],
                         [0.0, 1.0, 9.0],
                         [0.0, 9.0, 2.0],
                         [0.0, 1.5, 9.0],
                         [0.0, 9.0, 1.0],
                         [0.0, 4.0, 4.5]])
    assert cost.argmin(-1).tolist() == [0] * 6
    assignment = balanced_assignment(cost)
    assert assignment.tolist() == [0, 1, 2, 1, 2, 0]  # cost 0 + 1 + 2 + 1.5 + 1 + 0
    assert tuple(assignment.tolist()) == brute_force_balanced(cost)[1]


@pytest.mark.parametrize("seed,num_points", [(0, 6), (1, 7), (2, 8)])
def test_balanced_assignment_is_as_cheap_as_enumeration(seed, num_points):
    cost = torch.rand(num_points, 3, generator=torch.Generator().manual_seed(seed),
                      dtype=torch.float64)
    assignment = balanced_assignment(cost)
    total = float(cost[torch.arange(num_points), assignment].sum())
    assert total == pytest.approx(brute_force_balanced(cost)[0], abs=1e-9)
    assert torch.bincount(assignment, minlength=3).max() <= math.ceil(num_points / 3)


def test_per_dimension_schedule_by_hand():
    schedule = CascadeSchedule(beta_max=10.0, beta_min=2.0, stage_steps=5, code_stage=2)
    # step -> dimensions relaxed = step // 5, capped at the 4 dimensions
    expected = {0: [10, 10, 10, 10], 4: [10, 10, 10, 10], 5: [2, 10, 10, 10],
                12: [2, 2, 10, 10], 19: [2, 2, 2, 10], 20: [2, 2, 2, 2], 500: [2, 2, 2, 2]}
    for step, betas in expected.items():
        assert schedule.betas(step, 4).tolist() == betas, step
    assert [schedule.code_on(s) for s in (0, 9, 10, 11)] == [False, False, True, True]


def test_bad_schedule_options_are_refused():
    with pytest.raises(ConfigError, match="beta_max >= beta_min"):
        CascadeSchedule(beta_max=1.0, beta_min=2.0)
    with pytest.raises(ConfigError, match="stage_steps"):
        CascadeSchedule(stage_steps=0)


DIMS = Dims(data_dim=12, latent_dim=5, num_data=30)  # 3 continuous + 2 categories


def cascade_vae(**kw):
    options = {"num_categories": 2}
    return build_vae(DIMS, prior="cascade", guide="cascade", hidden=(16,),
                     prior_options=options, guide_options=options, **kw)


def data():
    return torch.rand(30, 12, generator=torch.Generator().manual_seed(3)).round()


def log_lik(vae, z, x):
    """log p(x | z) of the Bernoulli decoder, from its logits (not the library's part)."""
    return -binary_cross_entropy_with_logits(vae.decoder(z), x, reduction="none").sum(-1)


def test_loss_with_the_assignment_fixed_against_an_independent_computation():
    vae, x = cascade_vae(), data()
    batch, idx = x[:6], torch.arange(6)
    objective = make_objective("cascade", dims=DIMS,
                               options={"stage_steps": 3, "code_stage": 0, "beta_max": 8.0})
    objective.penalty.check(vae, x)
    objective.penalty.step.fill_(4)  # one dimension relaxed: betas (1, 8, 8)
    pyro.set_rng_seed(5)
    loss = objective.differentiable_loss(vae.model, vae.guide, batch, idx=idx)
    pyro.set_rng_seed(5)  # the same draw of z: the guide runs first in both
    z = poutine.trace(vae.guide).get_trace(batch, idx=idx).nodes["z"]["value"]

    loc, rho = vae.posterior.encoder(batch).chunk(2, dim=-1)
    scale = softplus(rho) + 1e-4
    with torch.no_grad():  # the code: balanced over the 2 categories, by enumeration
        costs = torch.stack([-log_lik(vae, torch.cat([loc, torch.eye(2)[k].expand(6, 2)], -1),
                                      batch) for k in range(2)], dim=-1)
    code = torch.tensor(brute_force_balanced(costs)[1])
    assert torch.equal(z[:, 3:], torch.eye(2)[code])
    kl = 0.5 * (scale**2 + loc**2 - 1) - scale.log()
    betas = torch.tensor([1.0, 8.0, 8.0])
    elbo = log_lik(vae, z, batch) - (betas * kl).sum(-1) - math.log(2)  # KL(delta || 1/2)
    assert loss.item() == pytest.approx(-elbo.sum().item() * 30 / 6, rel=1e-5)


def test_outside_training_each_point_takes_its_cheapest_category():
    vae, x = cascade_vae(), data()
    vae.eval()
    with torch.no_grad():
        loc = vae.posterior.encoder(x).chunk(2, dim=-1)[0]
        costs = torch.stack([-log_lik(vae, torch.cat([loc, torch.eye(2)[k].expand(30, 2)], -1),
                                      x) for k in range(2)], dim=-1)
        assert torch.equal(vae.encode(x).mean[:, 3:].argmax(-1), costs.argmin(-1))


def test_the_code_switches_on_after_code_stage_stages():
    vae = cascade_vae()
    penalty = make_objective("cascade", dims=DIMS,
                             options={"stage_steps": 2, "code_stage": 2}).penalty
    penalty.check(vae, data())
    states = []
    for _ in range(5):
        states.append(bool(vae.posterior.code_on))
        penalty.after_step(vae, None, None, None)
    assert states == [False, False, False, False, True]
    with torch.no_grad():  # off: every point in category 0
        vae.posterior.code_on.fill_(False)
        assert (vae.encode(data()).mean[:, 3:].argmax(-1) == 0).all()


def test_cascade_objective_refuses_a_beta_and_mismatched_parts():
    with pytest.raises(ConfigError, match="model.beta"):
        make_objective("cascade", dims=DIMS).penalty.check(cascade_vae(beta=2.0), data())
    with pytest.raises(ConfigError, match="categories"):
        build_vae(DIMS, prior="cascade", guide="cascade", hidden=(16,),
                  prior_options={"num_categories": 2}, guide_options={"num_categories": 3})


def test_cluster_accuracy_is_the_best_matching_of_codes_to_labels():
    gen = torch.Generator().manual_seed(4)
    labels = torch.randint(3, (40,), generator=gen)
    codes = torch.where(torch.rand(40, generator=gen) < 0.7, (labels + 1) % 3,
                        torch.randint(3, (40,), generator=gen)) * 10  # any code values
    best = max(float((torch.tensor(perm)[codes // 10] == labels).double().mean())
               for perm in itertools.permutations(range(3)))
    assert cluster_accuracy(codes, labels) == pytest.approx(best)
    assert cluster_accuracy(labels * 7 + 1, labels) == 1.0
    # Four codes, three labels: the fourth code's points are errors.
    assert cluster_accuracy(torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 2, 2])) == 0.75
    with pytest.raises(ValueError, match="one shape"):
        cluster_accuracy(codes, labels[:5])


def test_a_resumed_run_continues_the_schedule_and_the_code_exactly(tmp_path):
    from ppl_vae.build import build, resume
    from ppl_vae.config import load_config

    overrides = {"data.dataset": "digits", "data.options": {}, "data.binarize": "dynamic",
                 "model.hidden": [16], "train.epochs": 2,
                 "train.objective_options": {"stage_steps": 5, "code_stage": 2}}
    whole = build(load_config("cascade_vae", overrides), tmp_path / "a", progress=False)
    whole.run(figures=False)
    half = build(load_config("cascade_vae", {**overrides, "train.epochs": 1}), tmp_path / "b",
                 progress=False)
    half.run(figures=False)  # 12 steps: the code went on at step 10
    resumed = resume(tmp_path / "b", overrides={"train.epochs": 2}, progress=False)
    assert bool(resumed.program.posterior.code_on) and int(resumed.trainer.auxiliary.step) == 12
    resumed.run(figures=False)
    for key, value in whole.program.state_dict().items():
        assert torch.equal(value, resumed.program.state_dict()[key]), key
    assert [row["relaxed_dims"] for row in whole.metrics] == [2, 4]  # 12 // 5, 24 // 5
