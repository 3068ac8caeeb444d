"""The one SVI loop of the project: steps of stochastic variational inference, with a
progress bar, losses kept on the device and a NaN guard that names the step.

A step is Pyro's ``SVI.step``: the ELBO's loss and gradients for one minibatch, then an
optimizer step. :class:`SVI` takes the optimizer in either of Pyro's two forms:

- a ``torch.optim.Optimizer`` over a module's parameters (:meth:`SVI.of` with a module's
  model and guide): the loss is ``elbo.differentiable_loss(model, guide, ...)`` and the step
  a plain torch step, the form Pyro's distributed examples use. Parameters and optimizer
  state are ordinary ``state_dict``\\ s (checkpoints load with ``weights_only=True``), the
  loss function may be a DistributedDataParallel module, and the loss stays on the device;
- a ``pyro.optim.PyroOptim`` (the param store's parameters, created on first use, as
  autoguides do): the step is ``pyro.infer.SVI.step`` itself.

Every trainer in the project (``ppl-vae train``, the comparison's VAEs, the Pyro mixture)
runs its steps through :meth:`SVI.run`.
"""

import functools

import pyro
import torch
from pyro.optim import PyroOptim

from ppl_vae import distributed
from ppl_vae.errors import TrainingDiverged


class SVI:
    """Stochastic variational inference on a differentiable loss and a torch optimizer.

    Parameters
    ----------
    loss_fn : callable
        ``loss_fn(*args, **kwargs)`` -> the minibatch loss (-ELBO), differentiable.
    optimizer : torch.optim.Optimizer
    after_step : callable, optional
        Called as ``after_step(*args, **kwargs)`` after every optimizer step (a penalty's
        own modules train here: FactorVAE's discriminator).
    """

    def __init__(self, loss_fn, optimizer, *, after_step=None):
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.after_step = after_step

    @classmethod
    def of(cls, model, guide, optimizer, loss):
        """Pyro's signature, ``SVI(model, guide, optim, loss)``, for either optimizer form."""
        if isinstance(optimizer, PyroOptim):
            return _ParamStoreSVI(model, guide, optimizer, loss)
        return cls(functools.partial(loss.differentiable_loss, model, guide), optimizer)

    def step(self, *args, **kwargs):
        """One step on one minibatch; returns the loss as a 0-d tensor on the device."""
        loss = self.loss_fn(*args, **kwargs)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.after_step is not None:
            self.after_step(*args, **kwargs)
        return loss.detach()

    def run(self, batches, num_steps, *, first_step=1, bar=None, sync_every=25, hint="",
            device=None):
        """Take one step per item of ``batches`` (``(args, kwargs)`` pairs), ``num_steps`` in all.

        The losses are written into one device tensor and looked at every ``sync_every``
        steps and at the end: no host-device round trip per step.

        Parameters
        ----------
        first_step : int
            The number of the first step, for messages (steps count from 1).
        bar : tqdm, optional
            Advanced as the steps are looked at; its postfix shows the running mean loss.
        hint : str
            What a diverged run should try, appended to the error message.

        Returns
        -------
        Tensor, shape (num_steps,)
            The loss of each step.

        Raises
        ------
        TrainingDiverged
            If a loss is NaN or infinite; the message names the first such step.
        """
        losses = torch.empty(num_steps, device=device)
        checked = 0  # losses[:checked] are known to be finite
        i = -1
        for i, (args, kwargs) in enumerate(batches):
            try:
                losses[i] = self.step(*args, **kwargs)
            except ValueError:
                # Distribution arguments that validation rejects (NaN locs, say) follow a
                # NaN loss at an earlier step that has not been looked at yet: report that.
                check_finite(losses[checked:i], first_step + checked, hint)
                raise
            if (i + 1) % sync_every == 0 or i + 1 == num_steps:
                check_finite(losses[checked : i + 1], first_step + checked, hint)
                if bar is not None:
                    bar.update(i + 1 - checked)
                    bar.set_postfix(loss=f"{losses[: i + 1].mean().item():.4g}")
                checked = i + 1
        if i + 1 != num_steps:
            raise ValueError(f"expected {num_steps} batches; got {i + 1}")
        return losses


class _ParamStoreSVI(SVI):
    """Pyro's own ``SVI.step`` for programs whose parameters live in the param store."""

    def __init__(self, model, guide, optimizer, loss):
        super().__init__(None, optimizer)
        self._svi = pyro.infer.SVI(model, guide, optimizer, loss)

    def step(self, *args, **kwargs):
        return torch.tensor(self._svi.step(*args, **kwargs))


def check_finite(losses, first_step, hint=""):
    """Raise :class:`TrainingDiverged` if one of ``losses``, the losses of steps
    ``first_step``, ``first_step + 1``, ..., is NaN or infinite, naming the first such step.

    Under torch.distributed every process takes part, so that all stop together.
    """
    never = torch.iinfo(torch.long).max
    bad = ~torch.isfinite(losses)
    step = (torch.where(bad.any(), bad.long().argmax() + first_step, never) if len(bad)
            else torch.tensor(never, device=losses.device))
    if distributed.is_distributed():
        torch.distributed.all_reduce(step, op=torch.distributed.ReduceOp.MIN)
    bad_step = int(step)
    if bad_step != never:
        raise TrainingDiverged(f"the loss became NaN or infinite at step {bad_step}"
                               + (f"; {hint}" if hint else ""), step=bad_step)
