"""The check kit (ppl_vae.testing) fails loudly on deliberately broken parts, and parts of
your own are found by import path, validated, and registered from Python."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from ppl_vae import registry, testing
from ppl_vae.commands import main
from ppl_vae.errors import ConfigError
from ppl_vae.parts.guides import AmortizedDiagonalNormal
from ppl_vae.parts.likelihoods import UnitGaussian
from ppl_vae.parts.priors import StandardNormal
from ppl_vae.testing import PartCheckError, check_part
from ppl_vae.vae import build_vae

# ---------------------------------------------------------------- three broken parts


class OffByOneNatPrior(StandardNormal):
    """N(0, I) whose log_prob is one nat too high: its density integrates to e."""

    def forward(self):
        normal = super().forward()
        normal.log_prob = lambda z: dist.Normal(0.0, 1.0).log_prob(z).sum(-1) + 1.0
        return normal


class ExtraSiteGuide(AmortizedDiagonalNormal):
    """A guide that samples a site of its own ("u"), which the model does not have."""

    def forward(self, inputs, idx=None):
        pyro.sample("u", dist.Normal(torch.zeros(len(inputs)), 1.0))
        return super().forward(inputs, idx)


class RenamedSiteProgram(nn.Module):
    """A program whose guide calls its latent "w" where the model says "z"."""

    def __init__(self, dims):
        super().__init__()
        self.n, self.latent = dims.num_data, dims.latent_dim
        self.decoder = nn.Linear(dims.latent_dim, dims.data_dim)
        self.encoder = nn.Linear(dims.data_dim, dims.latent_dim)

    def plate(self, x, idx):
        return pyro.plate("data", self.n if idx is not None else len(x), subsample=idx)

    def model(self, x, y=None, idx=None):
        with self.plate(x, idx):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([len(x), self.latent]).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x, y=None, idx=None):
        with self.plate(x, idx):
            pyro.sample("w", dist.Normal(self.encoder(x), 1.0).to_event(1))


class FlatEventLikelihood(UnitGaussian):
    """N(f(z), I) left without to_event: event shape () and batch shape (..., D)."""

    def forward(self, out):
        return dist.Normal(out, 1.0)


def test_a_prior_whose_density_is_not_normalised_fails():
    with pytest.raises(PartCheckError, match=r"OffByOneNatPrior fails the prior check "
                                             r"'distribution': .*not normalised.*integrates "
                                             r"to \[2\.7"):
        check_part("prior", OffByOneNatPrior)


def test_a_guide_with_a_site_the_model_lacks_fails():
    with pytest.raises(PartCheckError, match=r"'sites agree': latent sites differ: the model "
                                             r"has \['z'\], the guide \['u', 'z'\]"):
        check_part("guide", ExtraSiteGuide)


def test_a_program_whose_guide_names_its_site_differently_fails():
    with pytest.raises(PartCheckError, match=r"latent sites differ: the model has \['z'\], "
                                             r"the guide \['w'\]"):
        check_part("program", RenamedSiteProgram)


class UnscaledProgram(RenamedSiteProgram):
    """Sites agree, but the data plate ignores idx: a minibatch is not scaled to N."""

    def plate(self, x, idx):
        return pyro.plate("data", len(x))

    def guide(self, x, y=None, idx=None):
        with self.plate(x, idx):
            pyro.sample("z", dist.Normal(self.encoder(x), 1.0).to_event(1))


def test_a_program_whose_plate_ignores_the_minibatch_indices_fails():
    with pytest.raises(PartCheckError, match=r"site 'x' is scaled by 1, not N / B = 4"):
        check_part("program", UnscaledProgram)


def test_a_likelihood_with_the_wrong_event_shape_fails():
    with pytest.raises(PartCheckError, match=r"'distribution': p\(x \| z\) has event shape "
                                             r"\(\); expected \(64,\)"):
        check_part("likelihood", FlatEventLikelihood)


def test_a_sampler_that_does_not_follow_its_density_fails():
    class ShiftedSampler(StandardNormal):
        def forward(self):
            normal = super().forward()
            normal.sample = lambda shape=(): torch.randn(*shape, 3) + 1.0
            return normal

    with pytest.raises(PartCheckError, match="samples do not follow its log_prob"):
        check_part("prior", ShiftedSampler)


# ---------------------------------------------------------------- import paths


PRIOR_FILE = '''
import pyro.distributions as dist
import torch
from torch import nn


class ScaledPrior(nn.Module):
    """N(0, s^2 I) with a learned s."""

    def __init__(self, dims, init_scale=1.0):
        super().__init__()
        self.latent_dim = dims.latent_dim
        self.log_scale = nn.Parameter(torch.tensor(float(init_scale)).log())

    def forward(self):
        scale = self.log_scale.exp().expand(self.latent_dim)
        return dist.Normal(torch.zeros_like(scale), scale).to_event(1)


NOT_A_CLASS = 3
'''


@pytest.fixture
def prior_file(tmp_path):
    path = tmp_path / "my_priors.py"
    path.write_text(PRIOR_FILE)
    return path


def test_a_part_by_file_path_is_built_and_passes_the_kit(prior_file):
    cls = registry.lookup("prior", f"{prior_file}:ScaledPrior")
    assert cls is registry.lookup("prior", f"{prior_file}:ScaledPrior"), "imported once"
    vae = build_vae(testing.DIMS, prior=f"{prior_file}:ScaledPrior",
                    prior_options={"init_scale": 2.0}, hidden=(8,))
    assert vae.prior().base_dist.scale[0].item() == pytest.approx(2.0)
    assert check_part("prior", f"{prior_file}:ScaledPrior")[0] == "distribution"


def test_a_part_by_module_path():
    assert registry.lookup("guide", "ppl_vae.parts.guides:AmortizedFlow").__name__ == \
        "AmortizedFlow"


@pytest.mark.parametrize("path,message", [
    ("{dir}/nowhere.py:ScaledPrior", r"no file .*nowhere\.py .*give an existing \.py file"),
    ("{dir}/my_priors.py:Missing", r"my_priors\.py has no 'Missing'"),
    ("{dir}/my_priors.py:NOT_A_CLASS", r"'.*NOT_A_CLASS' is not a prior: a prior is an "
                                       r"nn\.Module whose forward\(\) returns p\(z\)"),
    ("no_such_package.mod:Prior", r"cannot import 'no_such_package\.mod'"),
    ("ppl_vae.parts.guides:AmortizedFlow", None),  # a guide is an nn.Module: a valid prior
])
def test_wrong_paths_and_kinds_get_one_line_saying_which_and_why(prior_file, path, message):
    path = path.format(dir=prior_file.parent)
    if message is None:
        registry.lookup("prior", path)
        with pytest.raises(ConfigError, match=r"is not a likelihood: .*with a support"):
            registry.lookup("likelihood", path)
        return
    with pytest.raises(ConfigError, match=message) as err:
        registry.lookup("prior", path)
    assert "\n" not in str(err.value)


def test_a_file_that_fails_to_import_says_so(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("import no_such_module_here\n")
    with pytest.raises(ConfigError, match=r"importing .*broken\.py .*failed: "
                                          r"ModuleNotFoundError"):
        registry.lookup("prior", f"{path}:X")


def test_register_adds_a_name_and_refuses_a_taken_one(prior_file):
    cls = registry.lookup("prior", f"{prior_file}:ScaledPrior")
    try:
        assert registry.register("prior", "scaled")(cls) is cls
        vae = build_vae(testing.DIMS, prior="scaled", hidden=(8,))
        assert isinstance(vae.prior, cls)
        with pytest.raises(ConfigError, match="prior 'scaled' is already registered"):
            registry.register("prior", "scaled")(StandardNormal)
        with pytest.raises(ConfigError, match="is not a likelihood"):
            registry.register("likelihood", "scaled")(cls)
    finally:
        registry.PRIORS.pop("scaled", None)


def test_check_part_command(prior_file, capsys):
    assert main(["check-part", "prior", f"{prior_file}:ScaledPrior"]) == 0
    out = capsys.readouterr().out
    assert "passes the prior checks: distribution, analytic KL" in out
    broken = prior_file.parent / "broken_prior.py"
    broken.write_text(PRIOR_FILE.replace("self.latent_dim = dims.latent_dim",
                                         "self.latent_dim = dims.latent_dim + 1"))
    assert main(["check-part", "prior", f"{broken}:ScaledPrior"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "fails the prior check 'distribution': the prior has event shape (4,); expected (3,)" \
        in err
