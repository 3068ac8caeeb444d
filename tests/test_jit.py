"""The JIT helpers: torch.jit.trace's deprecation warnings kept quiet, and the eager
objective on a torch without torch.jit.trace."""

import warnings

import pytest
import torch
from pyro.infer import TraceMeanField_ELBO

from ppl_vae.build import make_objective
from ppl_vae.inference.jit import JitUnavailableWarning, jit_available, quiet_jit
from ppl_vae.vae import Dims, build_vae

# torch.jit.trace's deprecation warnings: torch 2.13, 2.14, 2.14 on Python 3.14, and the
# wording of the issue that reported 2.14's.
DEPRECATIONS = [
    (DeprecationWarning, "`torch.jit.trace` is deprecated. Please switch to `torch.compile` "
                         "or `torch.export`."),
    (FutureWarning, "`torch.jit.trace` is deprecated. Please switch to `torch.compile` or "
                    "`torch.export`."),
    (FutureWarning, "`torch.jit.trace` is not supported in Python 3.14+ and may break. "
                    "Please switch to `torch.compile` or `torch.export`."),
    (FutureWarning, "torch.jit.trace is deprecated. Please switch to torch.compile or "
                    "torch.export"),
]


@pytest.fixture
def problem():
    vae = build_vae(Dims(data_dim=12, latent_dim=2, num_data=50), hidden=(8,))
    return vae, torch.bernoulli(torch.full((10, 12), 0.3)), torch.arange(10)


def loss(objective, vae, x, idx):
    """The objective's value at fixed noise; the tensors are the only arguments (a traced
    program takes no None)."""

    def model(x, idx):
        return vae.model(x, None, idx)

    def guide(x, idx):
        return vae.guide(x, None, idx)

    torch.manual_seed(5)
    return objective.differentiable_loss(model, guide, x, idx)


def test_without_torch_jit_trace_the_jit_objective_is_the_eager_one(monkeypatch, problem):
    eager = loss(make_objective("meanfield"), *problem)
    monkeypatch.delattr(torch.jit, "trace")
    assert not jit_available()
    with pytest.warns(JitUnavailableWarning, match="no torch.jit.trace") as record:
        objective = make_objective("meanfield", jit=True)
    assert len(record) == 1
    assert type(objective) is TraceMeanField_ELBO
    torch.testing.assert_close(loss(objective, *problem), eager)


@pytest.mark.parametrize("category, message", DEPRECATIONS,
                         ids=["2.13", "2.14", "2.14-py3.14", "unquoted"])
def test_compiling_under_quiet_jit_warns_nothing(monkeypatch, problem, category, message):
    trace, calls = torch.jit.trace, []

    def deprecated_trace(*args, **kwargs):
        calls.append(1)
        warnings.warn(message, category, stacklevel=2)
        return trace(*args, **kwargs)

    monkeypatch.setattr(torch.jit, "trace", deprecated_trace)
    assert jit_available()
    objective = make_objective("meanfield", jit=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with quiet_jit():
            compiled = loss(objective, *problem)
    assert calls  # Pyro compiled through the warning torch.jit.trace
    assert torch.isfinite(compiled)


def test_quiet_jit_lets_other_warnings_through():
    with pytest.warns(FutureWarning, match="something else"), quiet_jit():
        warnings.warn("something else is deprecated", FutureWarning, stacklevel=1)
