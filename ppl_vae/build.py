"""The builder: from a resolved configuration (:mod:`ppl_vae.config`) to the objects that
training takes (program, objective, optimizer, data). The training loop itself
(:mod:`ppl_vae.inference.loop`) knows nothing of configurations."""

import warnings

from ppl_vae.errors import ConfigError
from ppl_vae.inference.jit import JIT_VERSIONS, JitUnavailableWarning, jit_available
from ppl_vae.inference.penalties import PenalizedELBO, Penalty
from ppl_vae.registry import lookup


def make_objective(name="meanfield", *, num_particles=1, jit=False, options=None, dims=None):
    """Build the objective named ``name`` with ``num_particles`` vectorized samples per data
    point.

    ``max_plate_nesting=1``: the only plate is the data plate, so particles can be
    vectorized along dimension -2 without Pyro tracing the model first to find out.

    ``jit=True`` compiles model and guide with ``torch.jit.trace`` at the first step and
    replays the compiled graph afterwards, which removes Pyro's per-step Python overhead.
    It needs a model of static structure whose tensor inputs are all positional
    arguments; one graph is compiled per distinct set of keyword arguments. On a torch
    without ``torch.jit.trace`` the objective is built uncompiled, with a
    :class:`JitUnavailableWarning`.

    A penalized objective (a :class:`Penalty` in the registry) takes its ``options``
    (``train.objective_options``: its weights, and ``elbo``, the ELBO it is added to,
    ``"meanfield"`` by default) and the model's ``dims``; the plain ELBOs take none.
    """
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
        if not jit_available():
            warnings.warn(f"this torch has no torch.jit.trace: the {name!r} objective runs "
                          "uncompiled (as with train.jit = false)", JitUnavailableWarning,
                          stacklevel=2)
            jit = False
        else:
            cls = JIT_VERSIONS[cls]
    options = {"ignore_jit_warnings": True} if jit else {}
    return cls(num_particles=num_particles, vectorize_particles=num_particles > 1,
               max_plate_nesting=1, **options)
