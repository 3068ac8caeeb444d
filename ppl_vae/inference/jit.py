"""The JIT-compiled objectives: Pyro's ``JitTrace*_ELBO`` with the compiled graphs called
directly (the training loop's fast path)."""

import contextlib
import warnings

import pyro
import torch
from pyro.infer import JitTrace_ELBO, JitTraceMeanField_ELBO, Trace_ELBO, TraceMeanField_ELBO

# torch deprecates torch.jit.trace in favour of torch.compile and torch.export, neither of
# which can trace a Pyro program yet. It warns "`torch.jit.trace` is deprecated. ..." (2.13:
# DeprecationWarning; 2.14: FutureWarning) or, on Python 3.14+, "`torch.jit.trace` is not
# supported in Python 3.14+ and may break. ..." (FutureWarning).
_TRACE_DEPRECATED = r"`?torch\.jit\.trace`? is (deprecated|not supported in Python)"


class JitUnavailableWarning(UserWarning):
    """A JIT objective was asked for on a torch without ``torch.jit.trace``: the eager
    objective is used instead."""


def jit_available():
    """Whether this torch has ``torch.jit.trace``, on which Pyro's JIT objectives are built."""
    return callable(getattr(torch.jit, "trace", None))


@contextlib.contextmanager
def quiet_jit():
    """Ignore torch's deprecation warning of ``torch.jit.trace`` (any category, any wording)
    inside the block; every other warning passes."""
    with warnings.catch_warnings():
        for category in (DeprecationWarning, FutureWarning):
            warnings.filterwarnings("ignore", _TRACE_DEPRECATED, category)
        yield


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
            with quiet_jit():
                return pyro_call(model, guide, *args, **kwargs)
        if entry is None:
            function = getattr(objective, attribute, None)
            known = set() if function is None else set(function.compiled)
            with quiet_jit():  # Pyro compiles here
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
