"""Local variational inference: each data point's own variational parameters, optimised
on its own ELBO with the model held fixed.

An amortized guide maps x to local parameters lambda(x) (for a diagonal normal, the mean
and the raw scale) and builds q(z | x) = family(lambda). Optimising lambda per data point
instead of predicting it is the classic, non-amortized VI of THEORY.md item 8. It serves
three parts of the project:

- :func:`fit_local` (Adam, no gradient to the model): the optimal q* of the inference-gap
  decomposition (Cremer, Li & Duvenaud 2018), and the per-datapoint guide on data it was
  not trained on;
- :func:`refine_local` (unrolled gradient ascent): the semi-amortized guide (Kim et al.
  2018), whose refinement is part of the training objective.

Pyro's SVI optimises global parameters; it has no inner, per-datapoint optimisation that
the outer loss differentiates through, hence the few lines here.
"""

import torch
from torch.func import functional_call


def local_elbo(log_joint, q, num_samples=1, beta=1.0):
    """Monte Carlo ELBO per data point: mean over samples of
    log p(x | z) + beta * (log p(z) - log q(z)), z ~ q reparameterized.

    Parameters
    ----------
    log_joint : callable
        ``log_joint(z) -> (log p(z), log p(x | z))`` for z of shape (S, B, L); the VAE
        itself is one (``vae(x, z, y)``, see :meth:`ppl_vae.vae.VAE.forward`).
    q : Distribution
        Batch shape (B,), event shape (L,), with ``rsample``.

    Returns
    -------
    Tensor, shape (B,)
    """
    z = q.rsample((num_samples,))
    log_prior, log_lik = log_joint(z)
    return (log_lik + beta * (log_prior - q.log_prob(z))).mean(0)


def fit_local(vae, x, y, family, init, *, steps=300, lr=0.05, num_samples=4, progress=None):
    """Maximise every data point's ELBO over its local parameters with Adam.

    The learning rate decays linearly from ``lr`` to 0 over the steps, so that the result
    is not left jittering by the last noisy gradients. The model's parameters are left
    alone: only ``lambda`` is differentiated
    (``torch.autograd.grad`` with respect to it), so no gradient is accumulated into any
    module's ``.grad``. Adam works coordinate-wise, so each point's parameters follow
    their own ELBO: the batch is only for speed.

    Parameters
    ----------
    vae : VAE
    x : Tensor, shape (B, D)
    y : LongTensor, shape (B,), or None
    family : callable
        ``family(lambda) -> q`` with batch shape (B,).
    init : Tensor, shape (B, P)
        The starting local parameters (e.g. the encoder's output).
    steps, lr, num_samples : int, float, int
        Adam steps, learning rate and Monte Carlo samples per step and point.
    progress : callable, optional
        Called after each step with the point-samples it scored, ``B * num_samples``.

    Returns
    -------
    Tensor, shape (B, P)
        The optimised local parameters, detached.
    """
    local = init.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([local], lr=lr)
    with torch.enable_grad():
        for step in range(steps):
            # Linear decay to 0: the last steps average out the Monte Carlo noise.
            optimizer.param_groups[0]["lr"] = lr * (1 - step / steps)
            elbo = local_elbo(lambda z: vae(x, z, y), family(local), num_samples).sum()
            (local.grad,) = torch.autograd.grad(-elbo, local)
            optimizer.step()
            if progress:
                progress(len(x) * num_samples)
    return local.detach()


def refine_local(vae, x, y, family, init, *, steps=5, step_size=0.1, num_samples=1,
                 max_grad_norm=5.0):
    """Semi-amortized refinement: ``steps`` steps of gradient ascent on each point's ELBO,
    lambda_{k+1} = lambda_k + step_size * clip(grad_lambda ELBO(lambda_k)).

    What is differentiated (Kim et al. 2018, Algorithm 1): inside the steps every model
    and guide parameter is a constant (``functional_call`` with detached copies), so the
    result lambda_K depends on the parameters only through ``init`` = lambda_0. When
    ``init`` carries gradients (training), the steps are kept in the graph
    (``create_graph=True``): a loss on lambda_K then reaches the encoder through
    d lambda_K / d lambda_0 (Hessian-vector products), and every other parameter only
    through the loss's own dependence on it, with lambda_K held fixed. No ``.grad`` is
    touched here. Without gradients (evaluation), the result is detached.

    Each point's gradient is clipped to norm ``max_grad_norm`` (as Kim et al. do), which
    keeps a large first step from throwing q far from the encoder's guess.

    Parameters and returns as for :func:`fit_local`, with ``beta`` read from the VAE so
    that the refinement ascends the objective the VAE is trained on.
    """
    differentiable = torch.is_grad_enabled() and init.requires_grad
    frozen = {name: p.detach() for name, p in vae.named_parameters()}

    def log_joint(z):
        return functional_call(vae, frozen, (x, z, y))

    local = init
    with torch.enable_grad():
        for _ in range(steps):
            if not differentiable:
                local = local.detach().requires_grad_(True)
            elbo = local_elbo(log_joint, family(local), num_samples, vae.beta).sum()
            (grad,) = torch.autograd.grad(elbo, local, create_graph=differentiable)
            norm = grad.norm(dim=-1, keepdim=True).clamp(min=1e-12)
            local = local + step_size * grad * (max_grad_norm / norm).clamp(max=1.0)
    return local if differentiable else local.detach()
