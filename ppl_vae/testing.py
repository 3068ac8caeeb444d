"""The check kit for parts and programs, as scikit-learn's ``check_estimator`` is for
estimators: :func:`check_part` runs on a part of your own the checks that every registered
part passes (the project's parametrized tests call the same functions).

::

    from ppl_vae.testing import check_part
    check_part("prior", "my_priors.py:FlowPrior")      # or the class itself

or ``ppl-vae check-part prior my_priors.py:FlowPrior``. A failed check raises
:class:`PartCheckError` naming the check and what was wrong.

What is checked, by kind:

- every part inside a small VAE (the kind's registered parts elsewhere): the model's and
  the guide's latent sites agree, the data plate scales a minibatch by N / B, the log
  densities are finite, every parameter gets a finite gradient, a few SVI steps lower the
  loss, and a state dict saved and loaded gives the same numbers;
- priors and guides: event shape (L,), the batch shape promised, log densities finite and
  normalised (importance sampling over z, for a latent in R^L), samples agreeing with the
  density (the mean of the samples against the importance-weighted mean), and the
  analytic KL against its Monte Carlo estimate wherever torch has a closed form;
- likelihoods: event shape (D,) over any batch shape of decoder outputs, normalised
  (a sum over {0, 1}^D for a discrete one, importance sampling for a density);
- nets: output shape (..., out_dim) for one and two batch dimensions;
- objectives: a few steps lower the loss;
- programs: latent sites agree, the data plate scales, the generic ELBO equals Pyro's
  ``Trace_ELBO``, a few steps lower the loss (with ``TraceEnum_ELBO`` where the guide
  has discrete sites), state dict round trip.
"""

import itertools
import math
import warnings

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch.distributions import kl_divergence

from ppl_vae.errors import ConfigError, PplVaeError
from ppl_vae.registry import GUIDES, PRIORS, incompatibility, label, lookup
from ppl_vae.vae import Dims, build_vae

# Small sizes: the whole kit runs in about a second per part on a CPU.
DIMS = Dims(data_dim=64, latent_dim=3, num_data=40, image_shape=(8, 8))
SMALL_DIMS = Dims(data_dim=3, latent_dim=3, num_data=40)  # for integrals over x
HIDDEN = (16,)
NORMALISATION_SAMPLES = 100_000
TRAIN_STEPS, LR = 40, 1e-2


def ppca_vae(true, *, noise_std, num_data=1, guide_shrink=0.1):
    """A linear-Gaussian VAE whose decoder is the PPCA model ``true`` (``W``, ``mu``, from
    :func:`ppl_vae.data.ppca.make_ppca`) and whose untrained guide has its parameters scaled
    by ``guide_shrink``: q(z | x) close to one fixed Gaussian for every x, a proposal that
    ignores the data. The closed forms of :mod:`ppl_vae.data.ppca` hold for its p(x)."""
    data_dim, latent_dim = true["W"].shape
    vae = build_vae(Dims(data_dim, latent_dim, num_data=num_data), likelihood="gaussian-isotropic",
                    hidden=(), likelihood_options={"init_scale": noise_std})
    with torch.no_grad():
        vae.decoder[0].weight.copy_(true["W"])
        vae.decoder[0].bias.copy_(true["mu"])
        for param in vae.posterior.parameters():
            param.mul_(guide_shrink)
    return vae


class PartCheckError(PplVaeError, AssertionError):
    """A part or program failed a check of :func:`check_part`."""


def expect(condition, message):
    """Raise :class:`PartCheckError` with ``message`` unless ``condition``."""
    if not condition:
        raise PartCheckError(message)


def check_part(kind, part, *, options=None, dims=DIMS):
    """Run every check of ``kind`` on ``part``.

    Parameters
    ----------
    kind : str
        "prior", "guide", "likelihood", "encoder", "decoder", "objective", "corruption"
        or "program".
    part : str or type
        A registered name, an import path (``module:Class``, ``file.py:Class``) or a class.
    options : dict, optional
        Keyword options of its constructor (a program's ``program_options``).
    dims : Dims
        The sizes the checks build it with.

    Returns
    -------
    list of str
        The names of the checks passed.

    Raises
    ------
    PartCheckError
        At the first check that fails, naming it and what was wrong.
    ConfigError
        If ``part`` cannot be found or is not a part of ``kind``.
    """
    cls = lookup(kind, part)
    passed = []
    for name, check in CHECKS[kind]:
        try:
            check(cls, dict(options or {}), dims)
        except PartCheckError as err:
            raise PartCheckError(f"{label(part)} fails the {kind} check {name!r}: {err}") from None
        except ConfigError:
            raise
        except Exception as err:  # a crash is a failed check too, said as one line
            raise PartCheckError(f"{label(part)} fails the {kind} check {name!r}: "
                                 f"{type(err).__name__}: {err}") from err
        passed.append(name)
    return passed


# ---------------------------------------------------------------- data and VAEs


def data_for(support, n=DIMS.num_data, dims=DIMS, seed=1):
    """Data with structure (a linear map of a 2-D code), binary for ``support`` "unit"."""
    gen = torch.Generator().manual_seed(seed)
    code = torch.randn(n, 2, generator=gen)
    mean = code @ torch.randn(2, dims.data_dim, generator=gen)
    if support == "unit":
        return torch.bernoulli(torch.sigmoid(2 * mean), generator=gen)
    return mean + 0.5 * torch.randn(n, dims.data_dim, generator=gen) + 1.0


def vae_with(dims=DIMS, *, prior="normal", guide="diagonal", likelihood="bernoulli", **kw):
    """A small VAE of these parts, a compatible registered prior or guide where the one
    given is the default and does not fit."""
    if prior == "normal" and incompatibility(prior, guide, likelihood):
        prior = next(p for p in PRIORS if not incompatibility(p, guide, likelihood))
    if guide == "diagonal" and incompatibility(prior, guide, likelihood):
        guide = next(g for g in GUIDES if not incompatibility(prior, g, likelihood))
    return build_vae(dims, prior=prior, guide=guide, likelihood=likelihood,
                     hidden=kw.pop("hidden", HIDDEN), **kw)


def latent_sites(trace):
    return {name for name, site in trace.nodes.items() if site["type"] == "sample"
            and not site["is_observed"] and not site_is_subsample(site)}


def _args(x, y, idx):
    return (x,) if y is None and idx is None else (x, y, idx)


def check_sites(program, x, y=None, *, num_data, batch=10):
    """The model's and the guide's latent sites agree on a minibatch; every observed
    site is scaled by N / B (the data plate of size ``num_data`` subsampled by idx); log
    densities finite."""
    idx = torch.arange(batch, 2 * batch) % len(x)
    args = (x[idx], None if y is None else y[idx], idx)
    guide = poutine.trace(program.guide).get_trace(*args)
    model = poutine.trace(poutine.replay(program.model, trace=guide)).get_trace(*args)
    in_model, in_guide = latent_sites(model), latent_sites(guide)
    expect(in_model == in_guide, f"latent sites differ: the model has {sorted(in_model)}, "
                                 f"the guide {sorted(in_guide)}")
    expect(in_model, "the model has no latent site")
    observed = [s for s in model.nodes.values() if s["type"] == "sample" and s["is_observed"]
                and not site_is_subsample(s)]
    expect(observed, "the model observes nothing")
    for site in observed:
        expect(math.isclose(float(site["scale"]), num_data / batch, rel_tol=1e-5),
               f"site {site['name']!r} is scaled by {float(site['scale']):g}, not N / B = "
               f"{num_data / batch:g}: put it in pyro.plate('data', N, subsample=idx)")
    for trace in (model, guide):
        trace.compute_log_prob()
        expect(torch.isfinite(trace.log_prob_sum()), "a log density is not finite")


def check_gradients(vae, x):
    """Every parameter of the VAE gets a finite, non-zero gradient from the ELBO."""
    from ppl_vae.build import make_objective

    vae.zero_grad()
    loss = make_objective("elbo").differentiable_loss(vae.model, vae.guide, x,
                                                      idx=torch.arange(len(x)))
    loss.backward()
    for name, p in vae.named_parameters():
        expect(p.grad is not None and torch.isfinite(p.grad).all(),
               f"parameter {name} gets no finite gradient")
        expect(p.grad.abs().sum() > 0, f"parameter {name} gets a zero gradient")


def svi_losses(program, x, y=None, objective="elbo", *, steps=TRAIN_STEPS, lr=LR,
               num_particles=1, batch_size=None):
    """Losses of ``steps`` Adam steps of the objective on minibatches of (x, y), each
    minibatch identified by its indices; the program's parameters change in place."""
    from ppl_vae.build import make_objective

    elbo = make_objective(objective, num_particles=num_particles)
    optimizer = torch.optim.Adam(program.parameters(), lr=lr)
    batch_size = batch_size or len(x)
    losses = []
    for step in range(steps):
        idx = torch.arange(step * batch_size, (step + 1) * batch_size) % len(x)
        loss = elbo.differentiable_loss(program.model, program.guide, x[idx],
                                        None if y is None else y[idx], idx)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def check_trains(program, x, y=None, objective="elbo", **kw):
    """A few SVI steps keep the loss finite and lower it (last 5 against first 5)."""
    losses = svi_losses(program, x, y, objective, **kw)
    expect(all(math.isfinite(v) for v in losses), f"the loss is not finite: {losses[:5]}")
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    expect(last < first, f"{len(losses)} SVI steps did not lower the loss ({first:.4g} at "
                         f"first, {last:.4g} at last)")


def check_round_trip(make, score):
    """A state dict saved and loaded into a fresh instance gives the same ``score``."""
    original, fresh = make(), make()
    with torch.no_grad():
        for p in original.parameters():
            p.add_(0.1 * torch.randn_like(p))
    fresh.load_state_dict(original.state_dict())
    pyro.set_rng_seed(7)
    a = score(original)
    pyro.set_rng_seed(7)
    b = score(fresh)
    expect(torch.allclose(a, b, rtol=1e-5, atol=1e-5),
           "a state dict loaded into a new instance gives other numbers")


# ---------------------------------------------------------------- distributions


def check_distribution(d, batch_shape, event_shape, what):
    """Shapes of ``d``, of its samples and of its finite log densities."""
    expect(tuple(d.event_shape) == tuple(event_shape),
           f"{what} has event shape {tuple(d.event_shape)}; expected {tuple(event_shape)}")
    expect(tuple(d.batch_shape) == tuple(batch_shape),
           f"{what} has batch shape {tuple(d.batch_shape)}; expected {tuple(batch_shape)}")
    with torch.no_grad():
        value = d.sample((5,))
        expect(tuple(value.shape) == (5, *batch_shape, *event_shape),
               f"{what}'s samples have shape {tuple(value.shape)}")
        log_prob = d.log_prob(value)
    expect(tuple(log_prob.shape) == (5, *batch_shape),
           f"{what}'s log_prob has shape {tuple(log_prob.shape)}; expected "
           f"{(5, *batch_shape)}")
    expect(torch.isfinite(log_prob).all(), f"{what}'s log_prob of its own samples is not "
                                           "finite")


@torch.no_grad()
def check_normalised(d, what, *, num_samples=NORMALISATION_SAMPLES, gen_seed=0):
    """exp(log_prob) integrates to 1 over R^n (importance sampling with a normal proposal
    twice as wide as ``d``'s samples) and the mean of ``d``'s samples equals its
    importance-weighted mean: the density is normalised and the sampler draws from it."""
    torch.manual_seed(gen_seed)
    own = d.sample((2000,))
    draws = own.double()
    proposal = torch.distributions.Normal(draws.mean(0), 2 * draws.std(0) + 1e-3)
    z = proposal.sample((num_samples,))
    weights = (d.log_prob(z.to(own.dtype)).double() - proposal.log_prob(z).sum(-1)).exp()
    integral, se = weights.mean(0), weights.std(0) / math.sqrt(num_samples)
    worst = ((integral - 1).abs() - 5 * se).max()
    expect(worst < 0.02, f"{what} is not normalised: its density integrates to "
                         f"{_show(integral)} (± {_show(se)})")
    weighted_mean = (weights[..., None] * z).mean(0) / integral[..., None]
    sample_mean = d.sample((20_000,)).double().mean(0)
    spread = draws.std(0)
    gap = ((weighted_mean - sample_mean).abs() / (spread + 1e-6)).max()
    expect(gap < 0.1, f"{what}'s samples do not follow its log_prob: their mean "
                      f"{_show(sample_mean)} against {_show(weighted_mean)} by its density")


def _show(t):
    return "[" + ", ".join(f"{v:.3g}" for v in t.flatten()[:4].tolist()) + "]"


@torch.no_grad()
def check_kl(q, p, what):
    """Where torch has a closed-form KL(q || p), it equals the Monte Carlo estimate."""
    try:
        analytic = kl_divergence(q, p)
    except NotImplementedError:
        return
    z = q.sample((20_000,))
    samples = (q.log_prob(z) - p.log_prob(z)).double()
    se = samples.std(0) / math.sqrt(len(samples))
    gap = (samples.mean(0) - analytic.double()).abs() - 5 * se
    expect((gap < 1e-3).all(), f"the closed-form KL of {what} ({_show(analytic)}) differs from "
                               f"its Monte Carlo estimate ({_show(samples.mean(0))})")


# ---------------------------------------------------------------- the checks of each kind


def _prior_vae(cls, options, dims):
    return vae_with(dims, prior=cls, prior_options=options)


def _check_prior_density(cls, options, dims):
    vae = _prior_vae(cls, options, dims)
    check_distribution(vae.prior(), (), (dims.latent_dim,), "the prior")
    if getattr(cls, "latent_support", "real") in ("real", None):  # None: the guide's, real
        check_normalised(vae.prior(), "the prior")


def _check_prior_kl(cls, options, dims):
    vae = _prior_vae(cls, options, dims)
    x = data_for("unit", n=4, dims=dims)
    check_kl(vae.encode(x), vae.prior().expand([4]), "the guide against the prior")


def _in_vae(make_vae):
    """The checks of a part inside a VAE: sites, gradients, training, round trip."""

    def sites(cls, options, dims):
        vae = make_vae(cls, options, dims)
        check_sites(vae, data_for(vae.likelihood.support, dims=dims), num_data=dims.num_data)

    def gradients(cls, options, dims):
        vae = make_vae(cls, options, dims)
        check_gradients(vae, data_for(vae.likelihood.support, dims=dims))

    def trains(cls, options, dims):
        vae = make_vae(cls, options, dims)
        check_trains(vae, data_for(vae.likelihood.support, dims=dims), batch_size=10)

    def round_trip(cls, options, dims):
        x = data_for(make_vae(cls, options, dims).likelihood.support, n=6, dims=dims)
        check_round_trip(lambda: make_vae(cls, options, dims),
                         lambda vae: torch.stack(vae(x, vae.prior().sample((2, 6)))))

    return [("sites agree", sites), ("gradients", gradients), ("SVI lowers the loss", trains),
            ("state dict round trip", round_trip)]


def _guide_vae(cls, options, dims):
    return vae_with(dims, guide=cls, guide_options=options)


def _check_guide_density(cls, options, dims):
    vae = _guide_vae(cls, options, dims)
    x = data_for("unit", n=4, dims=dims)
    q = vae.posterior(x, torch.arange(4))
    check_distribution(q, (4,), (dims.latent_dim,), "q(z | x)")
    if getattr(cls, "has_density", True) and getattr(cls, "latent_support", "real") == "real":
        check_normalised(q, "q(z | x)")
        check_kl(q, vae.prior().expand([4]), "q(z | x) against the prior")


def _likelihood(cls, options, dims):
    likelihood = cls(dims, **options)
    expect(likelihood.support in ("unit", "real"),
           f"support is {likelihood.support!r}; expected 'unit' or 'real'")
    expect(isinstance(getattr(likelihood, "num_outputs", None), int),
           "the likelihood has no integer num_outputs (the decoder's output size)")
    return likelihood


def _check_likelihood_density(cls, options, dims):
    likelihood = _likelihood(cls, options, dims)
    for batch in ((4,), (3, 4)):
        out = torch.randn(*batch, likelihood.num_outputs)
        check_distribution(likelihood(out), batch, (dims.data_dim,), "p(x | z)")
    x = data_for(likelihood.support, n=4, dims=dims)
    expect(torch.isfinite(likelihood(torch.randn(4, likelihood.num_outputs)).log_prob(x)).all(),
           "log p(x | z) of data in its support is not finite")


LEVEL_DIMS = Dims(data_dim=2, latent_dim=3, num_data=40)  # 256^2 points to sum over


@torch.no_grad()
def _check_likelihood_normalised(cls, options, dims):
    if getattr(cls, "log_bin_width", None) == 0.0:  # discrete over the 256 levels of x * 255
        likelihood = _likelihood(cls, options, LEVEL_DIMS)
        d = likelihood(torch.randn(2, likelihood.num_outputs))
        levels = torch.arange(256.0) / 255
        grid = torch.cartesian_prod(levels, levels)
        total = d.log_prob(grid[:, None, :]).double().logsumexp(0).exp()
        expect(torch.allclose(total, torch.ones(2, dtype=total.dtype), atol=1e-4),
               f"p(x | z) sums to {_show(total)} over the 256 levels of 2 dimensions")
        return
    likelihood = _likelihood(cls, options, SMALL_DIMS)
    d = likelihood(torch.randn(2, likelihood.num_outputs))
    if d.support.is_discrete:
        grid = torch.tensor(list(itertools.product([0.0, 1.0], repeat=SMALL_DIMS.data_dim)))
        total = d.log_prob(grid[:, None, :]).logsumexp(0).exp()
        expect(torch.allclose(total, torch.ones(2), atol=1e-4),
               f"p(x | z) sums to {_show(total)} over {{0, 1}}^{SMALL_DIMS.data_dim}")
    elif likelihood.support == "unit":  # uniform proposal on [0, 1]^D
        x = torch.rand(NORMALISATION_SAMPLES, 1, SMALL_DIMS.data_dim)
        density = d.log_prob(x).double().exp()
        integral, se = density.mean(0), density.std(0) / math.sqrt(len(x))
        expect(((integral - 1).abs() - 5 * se < 0.02).all(),
               f"p(x | z) integrates to {_show(integral)} over [0, 1]^{SMALL_DIMS.data_dim}")
    else:
        check_normalised(d, "p(x | z)")


def _net(kind):
    def check(cls, options, dims):
        in_dim, out_dim = ((dims.data_dim, 2 * dims.latent_dim) if kind == "encoder"
                           else (dims.latent_dim, dims.data_dim))
        net = cls(in_dim, out_dim, hidden=HIDDEN, image_shape=dims.image_shape, **options)
        for batch in ((4,), (3, 4)):
            out = net(torch.randn(*batch, in_dim))
            expect(tuple(out.shape) == (*batch, out_dim),
                   f"maps ({', '.join(map(str, (*batch, in_dim)))}) to {tuple(out.shape)}; "
                   f"expected {(*batch, out_dim)}")
    return check


def _net_vae(kind):
    return lambda cls, options, dims: vae_with(dims, **{kind: cls})


def _check_objective(cls, options, dims):
    from ppl_vae.build import make_objective

    vae = vae_with(dims)
    x = data_for("unit", dims=dims)
    objective = make_objective(cls, options=options, dims=dims)
    optimizer = torch.optim.Adam(vae.parameters(), lr=LR)
    losses = []
    for _ in range(TRAIN_STEPS):
        with warnings.catch_warnings():  # the enum objective on a VAE with nothing to sum
            warnings.filterwarnings("ignore", "TraceEnum_ELBO found no sample sites")
            loss = objective.differentiable_loss(vae.model, vae.guide, x,
                                                 idx=torch.arange(len(x)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    expect(all(math.isfinite(v) for v in losses), "the loss is not finite")
    expect(sum(losses[-5:]) < sum(losses[:5]), f"{TRAIN_STEPS} steps did not lower the loss")


def _check_corruption(cls, options, dims):
    corruption = cls(**{"level": 0.1, **options})
    x = data_for("unit", n=8, dims=dims)
    corruption.train()
    expect(corruption(x).shape == x.shape, "the corrupted x has another shape")
    corruption.eval()
    expect(torch.equal(corruption(x), x), "in eval mode the input must pass unchanged")


# ---------------------------------------------------------------- programs


def _program(cls, options, dims):
    return cls(dims, **options)


def _program_data(cls, dims):
    x = data_for(getattr(cls, "support", "unit"), dims=dims)
    y = torch.arange(len(x)) % dims.num_classes if dims.num_classes else None
    return x, y


def _program_objective(program, x, y):
    guide = poutine.trace(program.guide).get_trace(*_args(x[:2], _head(y), None))
    discrete = any(site["fn"].has_enumerate_support for name, site in guide.nodes.items()
                   if name in latent_sites(guide))
    return "enum" if discrete else "elbo"


def _head(y):
    return None if y is None else y[:2]


def _check_program_sites(cls, options, dims):
    program = _program(cls, options, dims)
    x, y = _program_data(cls, dims)
    check_sites(program, x, y, num_data=dims.num_data)


def _check_program_elbo(cls, options, dims):
    """The generic ELBO (evaluation's) equals Pyro's Trace_ELBO (training's) on a batch."""
    from ppl_vae.build import make_objective
    from ppl_vae.evaluation.generic import log_weight_terms

    program = _program(cls, options, dims)
    x, y = _program_data(cls, dims)
    x, y, k = x[:8], None if y is None else y[:8], 2000
    with torch.no_grad():
        log_w = sum(log_weight_terms(program, x, y, num_particles=k)).double()
        pyro_elbo = -make_objective("elbo", num_particles=k).loss(
            program.model, program.guide, *_args(x, y, None))
    ours = float(log_w.mean(0).sum())
    se = math.sqrt(2 * float(log_w.var(0).sum()) / k)  # of the difference of two estimates
    expect(abs(ours - pyro_elbo) < 5 * se + 1e-3 * abs(ours),
           f"the ELBO of evaluation ({ours:.3f}) differs from Trace_ELBO's ({pyro_elbo:.3f}, "
           f"s.e. {se:.3f}): are all its sites in pyro.plate('data', ...)?")


def _check_program_trains(cls, options, dims):
    program = _program(cls, options, dims)
    x, y = _program_data(cls, dims)
    check_trains(program, x, y, _program_objective(program, x, y), batch_size=10)


def _check_program_round_trip(cls, options, dims):
    from ppl_vae.evaluation.generic import log_weight_terms

    x, y = _program_data(cls, dims)
    check_round_trip(lambda: _program(cls, options, dims),
                     lambda p: torch.stack(log_weight_terms(p, x[:6], _rows(y), num_particles=3)))


def _rows(y):
    return None if y is None else y[:6]


CHECKS = {
    "prior": [("distribution", _check_prior_density), ("analytic KL", _check_prior_kl),
              *_in_vae(_prior_vae)],
    "guide": [("distribution", _check_guide_density), *_in_vae(_guide_vae)],
    "likelihood": [("distribution", _check_likelihood_density),
                   ("normalised", _check_likelihood_normalised),
                   *_in_vae(lambda cls, options, dims: vae_with(
                       dims, likelihood=cls, likelihood_options=options))],
    "encoder": [("shapes", _net("encoder")), *_in_vae(_net_vae("encoder"))],
    "decoder": [("shapes", _net("decoder")), *_in_vae(_net_vae("decoder"))],
    "objective": [("SVI lowers the loss", _check_objective)],
    "corruption": [("shapes and eval mode", _check_corruption)],
    "program": [("sites agree", _check_program_sites), ("ELBO", _check_program_elbo),
                ("SVI lowers the loss", _check_program_trains),
                ("state dict round trip", _check_program_round_trip)],
}
