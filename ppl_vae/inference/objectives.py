"""Training objectives: which ELBO estimator SVI optimises, and what is added to it.

The objectives are Pyro's own ``ELBO`` classes, chosen by name from the registry.
``TraceMeanField_ELBO`` uses the closed-form KL(q(z|x) || p(z)) where torch knows it
(a diagonal normal guide against a normal prior) and falls back to Monte Carlo elsewhere;
``Trace_ELBO`` estimates the whole bound by Monte Carlo; :class:`IWAE` is Pyro's
``RenyiELBO`` at alpha = 0, the importance-weighted bound.

Scaling the KL term (beta-VAE, annealing) is done with ``poutine.scale`` inside the model
and guide, not here: :class:`~ppl_vae.inference.schedules.KLSchedule` only says which
weight each training step uses. The JIT-compiled versions are in :mod:`ppl_vae.inference.jit`.

The disentangling objectives (beta-TCVAE, FactorVAE, DIP-VAE) are one of these ELBOs plus
a penalty on the guide's codes: :mod:`ppl_vae.inference.penalties`.
:func:`ppl_vae.build.make_objective` builds either kind by name.
"""

import math

import torch
from pyro.infer import RenyiELBO, TraceEnum_ELBO, config_enumerate
from pyro.infer.util import get_dependent_plate_dims, is_identically_zero, torch_sum

from ppl_vae.errors import ConfigError


class IWAE(RenyiELBO):
    """The importance-weighted bound (Burda, Grosse & Salakhutdinov 2016), per data point

        log (1/K) sum_k p(x, z_k) / q(z_k | x),   z_1..z_K ~ q(z | x),

    with K = ``num_particles``; K = 1 is the ELBO, and the bound tightens as K grows.

    Pyro's ``RenyiELBO(alpha=0)`` computes this bound in ``loss``; this subclass adds the
    ``differentiable_loss`` that the trainer calls (``RenyiELBO`` has none), and applies a
    subsampled data plate's scale N/B *after* the average over particles: scaling each
    particle's log weight by N/B before the log-mean-exp, as ``RenyiELBO`` does, is only
    right without subsampling. Factors from ``poutine.scale`` (beta) stay inside the
    weights. Guide sites must be reparameterized.
    """

    def __init__(self, **kwargs):
        super().__init__(alpha=0, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        log_weights, data_scales = [], set()
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
            log_weight = 0.0
            for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
                for site in trace.nodes.values():
                    if site["type"] != "sample":
                        continue
                    if sign < 0 and not is_identically_zero(site["score_parts"].score_function):
                        raise ConfigError("the iwae objective needs a reparameterized guide; "
                                          f"site {site['name']!r} is not")
                    plate_scale = _plate_scale(site)
                    data_scales.add(plate_scale)
                    log_prob = torch_sum(site["unscaled_log_prob"], sum_dims)
                    log_weight = log_weight + sign * site["scale"] / plate_scale * log_prob
            log_weights.append(log_weight)
        if len(data_scales) > 1:
            raise ConfigError("the iwae objective needs every site in the same data plate")
        vectorized = self.vectorize_particles and self.num_particles > 1
        log_weights = log_weights[0] if vectorized else torch.stack(log_weights)
        bound = torch.logsumexp(log_weights, dim=0) - math.log(self.num_particles)
        return -data_scales.pop() * bound.sum()


def _plate_scale(site):
    """The product of N / B over the subsampled plates a site sits in."""
    scale = 1.0
    for frame in site["cond_indep_stack"]:
        if frame.full_size is not None and frame.size:
            scale *= frame.full_size / frame.size
    return scale


class EnumELBO(TraceEnum_ELBO):
    """``TraceEnum_ELBO`` with the guide's discrete sites enumerated in parallel.

    The guide is wrapped in ``config_enumerate`` at each call, so a program need not mark
    its discrete sites: each is summed over its values instead of sampled (the
    semi-supervised VAE's class where the label is missing; Pyro's GMM's assignments).
    Continuous sites are sampled as by ``Trace_ELBO``.
    """

    def differentiable_loss(self, model, guide, *args, **kwargs):
        return super().differentiable_loss(model, config_enumerate(guide, "parallel"),
                                           *args, **kwargs)

    def loss(self, model, guide, *args, **kwargs):
        return super().loss(model, config_enumerate(guide, "parallel"), *args, **kwargs)
