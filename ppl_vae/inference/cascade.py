"""CascadeVAE's objective (Jeong & Song 2019): the information bottleneck relaxed one
continuous dimension at a time.

The ELBO weighs the KL term of every dimension by the VAE's beta (1); CascadeVAE weighs
dimension j by its own beta_j(t) (:class:`~ppl_vae.inference.schedules.CascadeSchedule`).
The difference is a penalty on the guide's q(z | x),

    N mean_i sum_j (beta_j(t) - 1) KL(q(z_j | x_i) || N(0, 1)),

added as a ``pyro.factor`` by :class:`~ppl_vae.inference.penalties.PenalizedELBO`, so the
objective is the ELBO with per-dimension KL weights beta_j(t). The penalty counts the
training steps (kept in checkpoints) and switches the ``cascade`` guide's discrete code on
after the first stages (:mod:`ppl_vae.parts.cascade`).
"""

import torch

from ppl_vae.errors import ConfigError
from ppl_vae.inference.penalties import Penalty
from ppl_vae.inference.schedules import CascadeSchedule
from ppl_vae.parts.priors import kl_normal_unit_normal


def continuous_normal(q):
    """The diagonal normal of q's continuous part: q itself (a diagonal normal guide) or
    q.continuous (the cascade guide); ConfigError for any other q."""
    q = getattr(q, "continuous", q)
    base = getattr(q, "base_dist", None)
    if not isinstance(base, torch.distributions.Normal):
        raise ConfigError("the cascade objective weighs the KL of each dimension of a "
                          "diagonal normal q(z | x); use guide 'diagonal' or 'cascade'")
    return base


class CascadeBottleneck(Penalty):
    """The ``cascade`` objective: per-dimension KL weights, relaxed one at a time.

    With guide ``cascade`` it also turns the inferred discrete code on at step
    ``code_stage x stage_steps``. The prior's continuous part must be N(0, I) and the
    VAE's beta 1, so that dimension j's KL weight is exactly beta_j(t).

    Parameters
    ----------
    dims : Dims
    beta_max, beta_min, stage_steps, code_stage
        As in :class:`~ppl_vae.inference.schedules.CascadeSchedule`.
    """

    extra_metrics = ("relaxed_dims",)

    def __init__(self, dims, *, beta_max=10.0, beta_min=1.0, stage_steps=400, code_stage=2):
        super().__init__()
        self.schedule = CascadeSchedule(beta_max=beta_max, beta_min=beta_min,
                                        stage_steps=stage_steps, code_stage=code_stage)
        self.register_buffer("step", torch.tensor(0))

    def check(self, vae, x, y=None):
        if vae.beta != 1.0:
            raise ConfigError(f"the cascade objective sets each dimension's KL weight itself; "
                              f"leave model.beta at 1 (got {vae.beta})")
        if type(vae.prior).__name__ not in ("StandardNormal", "CascadePrior"):
            raise ConfigError("the cascade objective needs a N(0, I) prior on the continuous "
                              "codes: prior 'normal' or 'cascade'")
        with torch.no_grad():
            continuous_normal(vae.encode(x[:2], None if y is None else y[:2]))
        self._sync(vae)

    def kl_per_dimension(self, q):
        """KL(q(z_j | x_i) || N(0, 1)), shape q's batch shape + (L_c,)."""
        return kl_normal_unit_normal(continuous_normal(q), None)

    def forward(self, q, z, num_data):
        if torch.jit.is_tracing():
            raise ConfigError("the cascade objective's weights change every stage, which a "
                              "JIT trace would freeze; train with --no-jit")
        kl = self.kl_per_dimension(q)
        betas = self.schedule.betas(int(self.step), kl.shape[-1], device=kl.device)
        penalty = num_data * ((betas - 1) * kl).sum(-1).mean(-1)
        return penalty.expand(z.shape[:-2])

    def after_step(self, vae, x, y, idx):
        self.step += 1
        self._sync(vae)

    def _sync(self, vae):
        """Set the cascade guide's code switch for the next step (no-op for other guides)."""
        switch = getattr(vae.posterior, "code_on", None)
        if switch is not None:
            switch.fill_(self.schedule.code_on(int(self.step)))

    @torch.no_grad()
    def evaluate_terms(self, vae, x, y=None):
        num_dims = continuous_normal(vae.encode(x[:1], None if y is None else y[:1])).loc.shape[-1]
        return {"relaxed_dims": self.schedule.relaxed(int(self.step), num_dims)}
