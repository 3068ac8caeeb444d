"""KL annealing: which weight of the latent sites each training step uses."""

import torch

from ppl_vae.errors import ConfigError


class KLSchedule:
    """The weight of the latent sites at each training step: beta x w(step), 0 < w <= 1.

    - ``"constant"``: w = 1, the (beta-)ELBO throughout;
    - ``"linear"``: w rises linearly from 1 / warm-up steps to 1 over the first
      ``warmup_epochs`` epochs, then stays at 1 (KL warm-up: Bowman et al. 2016,
      Sonderby et al. 2016);
    - ``"cyclical"``: the linear warm-up, restarted every ``cycle_epochs`` epochs (Fu et al.
      2019; their proportion R of a cycle spent rising is warmup_epochs / cycle_epochs,
      1/2 in the paper).

    w is never 0 (``poutine.scale`` requires a positive scale): the first step of a rise has
    w = 1 / warm-up steps. The weight depends on the step alone, so a resumed run continues
    the schedule exactly. The trainer applies it through the VAE's own ``poutine.scale``.

    Parameters
    ----------
    kind : str
        "constant", "linear" or "cyclical".
    beta : float
        The weight the schedule rises to (``model.beta``).
    steps_per_epoch : int
    warmup_epochs, cycle_epochs : float
        Lengths in epochs (fractions allowed) of a rise and of a cycle.
    """

    KINDS = ("constant", "linear", "cyclical")

    def __init__(self, kind="constant", *, beta=1.0, steps_per_epoch=1, warmup_epochs=10.0,
                 cycle_epochs=20.0):
        if kind not in self.KINDS:
            raise ConfigError(f"kl_schedule must be one of {', '.join(self.KINDS)}; got {kind!r}")
        if kind != "constant" and not warmup_epochs > 0:  # NaN fails too
            raise ConfigError(f"kl_warmup_epochs must be > 0; got {warmup_epochs}")
        if kind == "cyclical" and not cycle_epochs >= warmup_epochs:
            raise ConfigError(f"kl_cycle_epochs ({cycle_epochs}) must be at least "
                              f"kl_warmup_epochs ({warmup_epochs})")
        self.kind, self.beta = kind, beta
        self.warmup_steps = max(1, round(warmup_epochs * steps_per_epoch))
        self.cycle_steps = max(1, round(cycle_epochs * steps_per_epoch))

    @property
    def annealed(self):
        """Whether the weight changes from step to step."""
        return self.kind != "constant"

    def weight(self, step):
        """w(step) in (0, 1]; ``step`` counts optimizer steps from 0."""
        if self.kind == "constant":
            return 1.0
        position = step % self.cycle_steps if self.kind == "cyclical" else step
        return min(1.0, (position + 1) / self.warmup_steps)

    def __call__(self, step):
        """The KL weight beta x w(step) of training step ``step``."""
        return self.beta * self.weight(step)

    def betas(self, first_step, count, device=None):
        """The weights of ``count`` steps from ``first_step``, as one tensor on ``device``."""
        return torch.tensor([self(s) for s in range(first_step, first_step + count)],
                            device=device)


class CascadeSchedule:
    """CascadeVAE's schedule (Jeong & Song 2019): a KL weight per continuous dimension,
    relaxed one dimension at a time, and the step from which the discrete code is inferred.

    At step t (counting optimizer steps from 0) the first ``min(L, t // stage_steps)``
    dimensions have weight ``beta_min`` and the others ``beta_max``: all start high, and
    every ``stage_steps`` steps one more (in index order) drops. The discrete code is on
    from step ``code_stage x stage_steps``, after the first ``code_stage`` stages.

    Parameters
    ----------
    beta_max, beta_min : float
        The weights before and after a dimension is relaxed (> 0).
    stage_steps : int
        P, the steps between two relaxations.
    code_stage : int
        Stages before the discrete code is switched on.
    """

    def __init__(self, *, beta_max=10.0, beta_min=1.0, stage_steps=400, code_stage=2):
        if not beta_max >= beta_min > 0:
            raise ConfigError(f"need beta_max >= beta_min > 0; got beta_max = {beta_max}, "
                              f"beta_min = {beta_min}")
        if not (int(stage_steps) == stage_steps >= 1 and int(code_stage) == code_stage >= 0):
            raise ConfigError(f"stage_steps must be an integer >= 1 and code_stage one >= 0; "
                              f"got {stage_steps} and {code_stage}")
        self.beta_max, self.beta_min = float(beta_max), float(beta_min)
        self.stage_steps, self.code_stage = int(stage_steps), int(code_stage)

    def relaxed(self, step, num_dims):
        """How many dimensions (the first ones) have weight beta_min at ``step``."""
        return min(num_dims, step // self.stage_steps)

    def betas(self, step, num_dims, device=None):
        """The weight of each of ``num_dims`` dimensions at ``step``, a tensor (num_dims,)."""
        betas = torch.full((num_dims,), self.beta_max, device=device)
        betas[:self.relaxed(step, num_dims)] = self.beta_min
        return betas

    def code_on(self, step):
        """Whether the discrete code is inferred at ``step``."""
        return step >= self.code_stage * self.stage_steps
