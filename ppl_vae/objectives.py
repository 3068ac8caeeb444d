"""Training objectives: which ELBO estimator SVI optimises.

The objectives are Pyro's own ``ELBO`` classes, chosen by name from the registry.
``TraceMeanField_ELBO`` uses the closed-form KL(q(z|x) || p(z)) where torch knows it
(a diagonal normal guide against a normal prior) and falls back to Monte Carlo elsewhere;
``Trace_ELBO`` estimates the whole bound by Monte Carlo; :class:`IWAE` is Pyro's
``RenyiELBO`` at alpha = 0, the importance-weighted bound. Scaling the KL term (beta-VAE,
annealing) is done with ``poutine.scale`` inside the model and guide, not here.
"""

import math

import torch
from pyro.infer import (
    JitTrace_ELBO,
    JitTraceMeanField_ELBO,
    RenyiELBO,
    Trace_ELBO,
    TraceMeanField_ELBO,
)
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


class CachedJitTraceMeanField_ELBO(JitTraceMeanField_ELBO):
    """Pyro's ``JitTraceMeanField_ELBO`` with its compiled loss kept between calls.

    In Pyro 1.9 its ``differentiable_loss`` tests for the wrong attribute and so traces and
    compiles the model again at every step, which makes it slower than no JIT at all.
    """

    def differentiable_loss(self, model, guide, *args, **kwargs):
        if getattr(self, "_differentiable_loss", None) is None:
            return super().differentiable_loss(model, guide, *args, **kwargs)
        kwargs["_pyro_model_id"] = id(model)
        kwargs["_pyro_guide_id"] = id(guide)
        return self._differentiable_loss(*args, **kwargs)


class SurrogateJitTrace_ELBO(JitTrace_ELBO):
    """Pyro's ``JitTrace_ELBO`` with a ``differentiable_loss`` whose gradient is right.

    In Pyro 1.9 it returns ``loss + (surrogate - surrogate.detach())`` with ``loss`` not
    detached, so reparameterized terms are differentiated twice (their gradients doubled).
    Here the value is the loss and the gradient the surrogate's alone, as in ``Trace_ELBO``.
    """

    def differentiable_loss(self, model, guide, *args, **kwargs):
        loss, surrogate = self.loss_and_surrogate_loss(model, guide, *args, **kwargs)
        return loss.detach() + (surrogate - surrogate.detach())


# The compiled (TorchScript) version of each objective that has one.
JIT_VERSIONS = {
    Trace_ELBO: SurrogateJitTrace_ELBO,
    TraceMeanField_ELBO: CachedJitTraceMeanField_ELBO,
}


def make_objective(name="meanfield", *, num_particles=1, jit=False):
    """Build the ELBO named ``name`` with ``num_particles`` vectorized samples per data point.

    ``max_plate_nesting=1``: the only plate is the data plate, so particles can be
    vectorized along dimension -2 without Pyro tracing the model first to find out.

    ``jit=True`` compiles model and guide with ``torch.jit.trace`` at the first step and
    replays the compiled graph afterwards, which removes Pyro's per-step Python overhead.
    It needs a model of static structure whose tensor inputs are all positional
    arguments; one graph is compiled per distinct set of keyword arguments.
    """
    from ppl_vae.registry import lookup  # the registry imports IWAE from here

    cls = lookup("objective", name)
    if jit:
        if cls not in JIT_VERSIONS:
            raise ConfigError(f"the {name!r} objective has no JIT-compiled version; "
                              "set train.jit = false (or pass --no-jit)")
        cls = JIT_VERSIONS[cls]
    options = {"ignore_jit_warnings": True} if jit else {}
    return cls(num_particles=num_particles, vectorize_particles=num_particles > 1,
               max_plate_nesting=1, **options)
