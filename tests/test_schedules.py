"""ppl_vae.inference.schedules: the KL weight of every step, against hand computations.

Written from the survivors of a mutation run on schedules.py: each test names the wrong line
it catches.
"""

import math

import pytest
import torch

from ppl_vae.errors import ConfigError
from ppl_vae.inference.schedules import CascadeSchedule, KLSchedule


def weights(schedule, steps):
    return [schedule.weight(s) for s in range(steps)]


def test_defaults_are_the_constant_elbo_with_ten_and_twenty_epoch_lengths():
    constant = KLSchedule()  # a wrong default kind raises; a wrong default beta scales
    assert (constant.kind, constant(0), constant(10_000)) == ("constant", 1.0, 1.0)
    assert not constant.annealed
    # Default lengths: a 10-epoch rise in a 20-epoch cycle, one step per epoch.
    cyclical = KLSchedule("cyclical")
    assert weights(cyclical, 21) == [min(1.0, (s % 20 + 1) / 10) for s in range(21)]


def test_constant_weight_is_one_whatever_the_lengths():
    # The constant kind must not fall through to the warm-up formula (1 / 50 at step 0).
    schedule = KLSchedule("constant", beta=3.0, steps_per_epoch=5, warmup_epochs=10)
    assert [schedule(s) for s in (0, 1, 49, 50)] == [3.0, 3.0, 3.0, 3.0]


def test_linear_rises_over_the_warmup_steps_and_never_restarts():
    schedule = KLSchedule("linear", beta=2.0, steps_per_epoch=3, warmup_epochs=2,
                          cycle_epochs=4)
    # 6 warm-up steps: w = (s + 1) / 6, then 1; past the (unused) 12-step cycle it stays 1.
    expected = [(s + 1) / 6 for s in range(6)] + [1.0] * 14
    assert weights(schedule, 20) == pytest.approx(expected, abs=1e-12)
    assert schedule(13) == 2.0 and schedule(2) == pytest.approx(2.0 * 3 / 6)
    # One warm-up step: the first step already has the full weight.
    assert KLSchedule("linear", warmup_epochs=1).weight(0) == 1.0


def test_cyclical_restarts_every_cycle_with_fractional_epochs():
    # 1.5 epochs x 2 steps = 3 warm-up steps; 2.5 x 2 = 5 steps a cycle.
    schedule = KLSchedule("cyclical", steps_per_epoch=2, warmup_epochs=1.5, cycle_epochs=2.5)
    one_cycle = [1 / 3, 2 / 3, 1.0, 1.0, 1.0]
    assert weights(schedule, 12) == pytest.approx(one_cycle * 2 + one_cycle[:2], abs=1e-12)
    # A cycle as long as the rise is allowed: it restarts as soon as it reaches 1.
    equal = KLSchedule("cyclical", warmup_epochs=2, cycle_epochs=2)
    assert weights(equal, 5) == [0.5, 1.0, 0.5, 1.0, 0.5]


def test_betas_are_the_weights_of_the_steps_asked_for_on_the_device_asked_for():
    schedule = KLSchedule("linear", beta=4.0, warmup_epochs=8)
    betas = schedule.betas(5, 3)
    assert betas.tolist() == pytest.approx([4.0 * 6 / 8, 4.0 * 7 / 8, 4.0])
    assert schedule.betas(0, 2, device="meta").device.type == "meta"


@pytest.mark.parametrize("kind, options, message", [
    ("warm", {}, "kl_schedule must be one of constant, linear, cyclical; got 'warm'"),
    ("linear", {"warmup_epochs": 0}, "kl_warmup_epochs must be > 0; got 0"),
    ("cyclical", {"warmup_epochs": math.nan}, "kl_warmup_epochs must be > 0; got nan"),
    ("cyclical", {"warmup_epochs": 3, "cycle_epochs": 2},
     "kl_cycle_epochs (2) must be at least kl_warmup_epochs (3)"),
])
def test_bad_settings_are_refused_with_one_line(kind, options, message):
    with pytest.raises(ConfigError) as error:
        KLSchedule(kind, **options)
    assert str(error.value) == message


def test_a_constant_schedule_ignores_its_unused_warmup_length():
    assert KLSchedule("constant", warmup_epochs=0)(0) == 1.0


def test_cascade_defaults_relax_a_dimension_every_400_steps_and_switch_the_code_at_800():
    schedule = CascadeSchedule()
    assert schedule.betas(0, 3).tolist() == [10.0, 10.0, 10.0]
    assert schedule.betas(399, 3).tolist() == [10.0, 10.0, 10.0]
    assert schedule.betas(400, 3).tolist() == [1.0, 10.0, 10.0]
    assert schedule.betas(800, 3).tolist() == [1.0, 1.0, 10.0]
    assert schedule.betas(10**6, 3).tolist() == [1.0, 1.0, 1.0]
    assert (schedule.code_on(799), schedule.code_on(800)) == (False, True)
    assert schedule.betas(0, 2, device="meta").device.type == "meta"


def test_cascade_accepts_the_edges_of_its_ranges():
    edge = CascadeSchedule(beta_max=2.0, beta_min=2.0, stage_steps=1, code_stage=0)
    assert edge.betas(1, 2).tolist() == [2.0, 2.0] and edge.code_on(0)
    assert [edge.relaxed(s, 4) for s in range(6)] == [0, 1, 2, 3, 4, 4]


@pytest.mark.parametrize("options", [
    {"beta_max": 1.0, "beta_min": 2.0}, {"beta_min": 0.0}, {"stage_steps": 0},
    {"stage_steps": 1.5}, {"code_stage": -1},
])
def test_cascade_refuses_settings_outside_its_ranges(options):
    with pytest.raises(ConfigError, match="beta_max >= beta_min > 0|stage_steps must be"):
        CascadeSchedule(**options)


def test_betas_tensor_is_float():
    assert KLSchedule().betas(0, 1).dtype == torch.get_default_dtype()
