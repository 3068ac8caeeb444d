"""Training objectives: which ELBO estimator SVI optimises, and what is added to it.

The objectives are Pyro's own ``ELBO`` classes, chosen by name from the registry.
``TraceMeanField_ELBO`` uses the closed-form KL(q(z|x) || p(z)) where torch knows it
(a diagonal normal guide against a normal prior) and falls back to Monte Carlo elsewhere;
``Trace_ELBO`` estimates the whole bound by Monte Carlo; :class:`IWAE` is Pyro's
``RenyiELBO`` at alpha = 0, the importance-weighted bound.

Scaling the KL term (beta-VAE, annealing) is done with ``poutine.scale`` inside the model
and guide, not here: :class:`KLSchedule` only says which weight each training step uses.

The disentangling objectives (beta-TCVAE, FactorVAE, DIP-VAE) are one of these ELBOs plus
a penalty on the guide's codes: :mod:`ppl_vae.penalties`. :func:`make_objective` builds
either kind by name.
"""

import math

import pyro
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
from ppl_vae.penalties import PenalizedELBO, Penalty


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


class _GraphReplay:
    """Calls the TorchScript graphs that Pyro's JIT objectives compile, without Pyro's
    per-call wrapper: the fast path of :class:`CachedJitTraceMeanField_ELBO` and
    :class:`SurrogateJitTrace_ELBO`.

    ``pyro.ops.jit.trace`` compiles one graph per model, guide and set of keyword
    arguments, and at every later call wraps it in two poutine handlers and looks each
    parameter up with ``pyro.param`` (an effectful call). The graph itself runs no Python
    (no ``pyro.param``, no sample statements), so here, once Pyro has compiled a graph,
    it is called directly with the param store's unconstrained tensors, in the order Pyro
    traced them (``ppl-vae bench parts`` times both calls).
    """

    def __init__(self):
        self.graphs = {}  # (id(model), id(guide), len(args), kwargs) -> (graph, param names)

    def __call__(self, objective, attribute, pyro_call, model, guide, args, kwargs):
        """The compiled value of ``pyro_call(model, guide, *args, **kwargs)``, where
        ``pyro_call`` builds ``objective.<attribute>`` (a ``CompiledFunction``) and calls
        it; it is used the first time for each key, which is when Pyro compiles."""
        try:
            key = (id(model), id(guide), len(args), tuple(sorted(kwargs.items())))
            entry = self.graphs.get(key)
        except TypeError:  # keyword arguments that cannot be hashed: Pyro's own path
            return pyro_call(model, guide, *args, **kwargs)
        if entry is None:
            function = getattr(objective, attribute, None)
            known = set() if function is None else set(function.compiled)
            result = pyro_call(model, guide, *args, **kwargs)
            function = getattr(objective, attribute)
            new = set(function.compiled) - known
            if len(new) == 1:
                self.graphs[key] = (function.compiled[new.pop()],
                                    tuple(function._param_names))
            return result
        graph, names = entry
        params = dict(pyro.get_param_store().named_parameters())
        return graph(*(params[name] for name in names), *args)


class CachedJitTraceMeanField_ELBO(JitTraceMeanField_ELBO):
    """Pyro's ``JitTraceMeanField_ELBO`` with its compiled loss kept between calls, and
    called without Pyro's per-call wrapper (:class:`_GraphReplay`).

    In Pyro 1.9 its ``differentiable_loss`` tests for the wrong attribute and so traces and
    compiles the model again at every step, which makes it slower than no JIT at all.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._replay = _GraphReplay()

    def differentiable_loss(self, model, guide, *args, **kwargs):
        return self._replay(self, "_differentiable_loss", self._compiled_loss, model, guide,
                            args, kwargs)

    def _compiled_loss(self, model, guide, *args, **kwargs):
        if getattr(self, "_differentiable_loss", None) is None:
            return super().differentiable_loss(model, guide, *args, **kwargs)
        kwargs["_pyro_model_id"] = id(model)
        kwargs["_pyro_guide_id"] = id(guide)
        return self._differentiable_loss(*args, **kwargs)


class SurrogateJitTrace_ELBO(JitTrace_ELBO):
    """Pyro's ``JitTrace_ELBO`` with a ``differentiable_loss`` whose gradient is right, and
    its compiled graph called without Pyro's per-call wrapper (:class:`_GraphReplay`).

    In Pyro 1.9 it returns ``loss + (surrogate - surrogate.detach())`` with ``loss`` not
    detached, so reparameterized terms are differentiated twice (their gradients doubled).
    Here the value is the loss and the gradient the surrogate's alone, as in ``Trace_ELBO``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._replay = _GraphReplay()

    def differentiable_loss(self, model, guide, *args, **kwargs):
        loss, surrogate = self._replay(self, "_loss_and_surrogate_loss",
                                       super().loss_and_surrogate_loss, model, guide, args,
                                       kwargs)
        return loss.detach() + (surrogate - surrogate.detach())


# The compiled (TorchScript) version of each objective that has one.
JIT_VERSIONS = {
    Trace_ELBO: SurrogateJitTrace_ELBO,
    TraceMeanField_ELBO: CachedJitTraceMeanField_ELBO,
}


def make_objective(name="meanfield", *, num_particles=1, jit=False, options=None, dims=None):
    """Build the objective named ``name`` with ``num_particles`` vectorized samples per data
    point.

    ``max_plate_nesting=1``: the only plate is the data plate, so particles can be
    vectorized along dimension -2 without Pyro tracing the model first to find out.

    ``jit=True`` compiles model and guide with ``torch.jit.trace`` at the first step and
    replays the compiled graph afterwards, which removes Pyro's per-step Python overhead.
    It needs a model of static structure whose tensor inputs are all positional
    arguments; one graph is compiled per distinct set of keyword arguments.

    A penalized objective (a :class:`Penalty` in the registry) takes its ``options``
    (``train.objective_options``: its weights, and ``elbo``, the ELBO it is added to,
    ``"meanfield"`` by default) and the model's ``dims``; the plain ELBOs take none.
    """
    from ppl_vae.registry import lookup  # the registry imports the objectives from here

    cls = lookup("objective", name)
    options = dict(options or {})
    if isinstance(cls, type) and issubclass(cls, Penalty):
        base = options.pop("elbo", "meanfield")
        if base not in ("meanfield", "elbo"):
            raise ConfigError(f"the {name!r} objective adds its penalty to elbo = 'meanfield' "
                              f"or 'elbo'; got {base!r}")
        if dims is None:
            raise ConfigError(f"the {name!r} objective needs the model's Dims (dims=...)")
        try:
            penalty = cls(dims, **options)
        except TypeError as err:
            raise ConfigError(f"bad options for objective {name!r}: {err}") from None
        return PenalizedELBO(make_objective(base, num_particles=num_particles, jit=jit), penalty)
    if options:
        raise ConfigError(f"the {name!r} objective takes no options; got "
                          f"{', '.join(sorted(options))}")
    if jit:
        if cls not in JIT_VERSIONS:
            raise ConfigError(f"the {name!r} objective has no JIT-compiled version; "
                              "set train.jit = false (or pass --no-jit)")
        cls = JIT_VERSIONS[cls]
    options = {"ignore_jit_warnings": True} if jit else {}
    return cls(num_particles=num_particles, vectorize_particles=num_particles > 1,
               max_plate_nesting=1, **options)


# ---------------------------------------------------------------- KL annealing


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
        if kind != "constant" and warmup_epochs <= 0:
            raise ConfigError(f"kl_warmup_epochs must be > 0; got {warmup_epochs}")
        if kind == "cyclical" and cycle_epochs < warmup_epochs:
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
