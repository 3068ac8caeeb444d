"""Training by epochs: minibatches on the device, a progress bar, per-epoch evaluation,
checkpoints and exact resume, over the one SVI loop of :mod:`ppl_vae.inference.svi`.

:class:`Trainer` takes objects, as Pyro's ``SVI(model, guide, optim, loss)`` does: the
program (an ``nn.Module`` with ``model`` and ``guide``), the objective, a torch optimizer,
the data, and optionally a :class:`~ppl_vae.inference.runs.RunFolder` to write to. It
knows nothing of configuration files; :mod:`ppl_vae.build` turns one into these objects.

Randomness is reseeded at the start of every epoch from (seed, epoch, rank): the shuffle
from (seed, epoch), identical on every process; the Monte Carlo draws from
(seed, epoch, rank). A resumed run therefore needs no saved RNG state to continue exactly.
Under ``torchrun`` each process takes every ``world_size``-th example of each global
minibatch (``batch_size`` is the global size); DDP averages the gradients, which equals
the single-process gradient of the whole minibatch when the shards are of equal size.
"""

import math
import time

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ppl_vae import distributed
from ppl_vae.data.stream import minibatches
from ppl_vae.errors import CheckpointError, ConfigError, TrainingDiverged
from ppl_vae.inference.jit import quiet_jit
from ppl_vae.inference.penalties import auxiliary
from ppl_vae.inference.schedules import KLSchedule
from ppl_vae.inference.svi import SVI

# The columns of metrics.csv. train_elbo is minus the training loss per example: the ELBO
# itself at beta = 1 without a penalty. An annealed run adds "beta" (the KL weight of the
# epoch's last step), and a penalized objective the terms it reports, before "seconds".
METRICS = ("epoch", "step", "train_elbo", "test_elbo", "test_recon", "test_kl", "seconds")
TEST_TERMS = ("elbo", "recon", "kl")


class Trainer:
    """Train a program with SVI, epoch by epoch.

    Parameters
    ----------
    program : nn.Module
        With ``model(x, y=None, idx=None, beta=None)`` and ``guide(...)`` written in Pyro,
        the data plate subsampled by ``idx`` (the built-in :class:`~ppl_vae.vae.VAE`).
    objective : pyro.infer.ELBO or PenalizedELBO
        What SVI optimises (``differentiable_loss(model, guide, ...)``).
    optimizer : torch.optim.Optimizer
        Over ``program``'s parameters (and nothing else).
    data : ppl_vae.data.Dataset
        On the training device, test set already binarised where the likelihood needs it;
        labels only for a conditional program. ``x_train`` may be uint8 (8-bit images,
        scaled by ``transform``) or rows streamed from disk (:mod:`ppl_vae.data.stream`):
        both are cut into the same minibatches.
    batch_size, epochs, seed : int
    schedule : KLSchedule, optional
        The KL weight of each step (constant beta = the program's own by default).
    transform : callable, optional
        Applied to each training minibatch (dynamic binarisation).
    evaluate : callable, optional
        ``evaluate(program, x, y)`` -> dict with ``elbo``, ``recon``, ``kl`` (nats per
        example): the test-set row of each scored epoch. None leaves them NaN.
    eval_every : int
        Score the test set every ``eval_every`` epochs and after the last.
    run : RunFolder, optional
        Where metrics and checkpoints go after every epoch; None writes nothing.
    compile : bool
        Trace a JIT objective's graphs before the first epoch (see :meth:`compile`).
    progress : bool
        Show a tqdm progress bar (on the main process).
    """

    def __init__(self, program, objective, optimizer, data, *, batch_size, epochs, seed,
                 schedule=None, transform=None, evaluate=None, eval_every=1, run=None,
                 compile=False, progress=True):
        self.program, self.objective, self.optimizer, self.data = (program, objective,
                                                                   optimizer, data)
        self.batch_size, self.epochs, self.seed = batch_size, epochs, seed
        self.schedule = schedule or KLSchedule()
        self.transform, self.evaluate_fn, self.eval_every = transform, evaluate, eval_every
        self.run_folder, self.jit, self.progress = run, compile, progress
        self.device = data.x_test.device  # x_train may be rows streamed from disk
        # What a penalized objective trains or reports besides the program (FactorVAE's
        # discriminator, the total-correlation terms); nothing for a plain ELBO.
        self.auxiliary = auxiliary(objective).to(self.device)
        self.auxiliary.check(program, data.x_test, data.y_test)
        self.metric_names = (*METRICS[:-1], *(("beta",) if self.schedule.annealed else ()),
                             *self.auxiliary.extra_metrics, METRICS[-1])
        self.loss = ProgramLoss(program, objective)
        if distributed.is_distributed():
            self.loss = DistributedDataParallel(
                self.loss, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.svi = SVI(self.loss, optimizer, after_step=self._after_step)
        self.epoch, self.step, self.metrics = 0, 0, []

    @property
    def steps_per_epoch(self):
        return -(-self.data.x_train.shape[0] // self.batch_size)

    # ---------------------------------------------------------------- state

    def state_dict(self):
        """Everything a resumed run needs (plain values and tensors only)."""
        return {"epoch": self.epoch, "step": self.step, "model": self.program.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "objective": self.auxiliary.checkpoint_state(), "metrics": self.metrics}

    def load_state_dict(self, state):
        try:
            self.program.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            # torch's message is a header line and then the mismatches, one per line
            reason = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
            where = self.run_folder.path if self.run_folder else "the checkpoint"
            raise CheckpointError(f"the checkpoint in {where} does not fit the model of its "
                                  f"config.toml: {reason[:400]}") from None
        if "objective" in state:
            self.auxiliary.load_checkpoint_state(state["objective"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.metrics = list(state["metrics"])

    # ---------------------------------------------------------------- training

    def run(self):
        """Train until ``epochs``, evaluating, logging and checkpointing every epoch.

        Returns the last row of metrics (a dict).
        """
        main = distributed.is_main()
        if self.jit and self.epoch < self.epochs:
            self.compile()
        bar = tqdm(total=self.epochs * self.steps_per_epoch,
                   initial=self.epoch * self.steps_per_epoch,
                   disable=not (self.progress and main), unit="step", dynamic_ncols=True)
        try:
            while self.epoch < self.epochs:
                start = time.perf_counter()
                train_elbo = self.train_epoch(bar)
                self.epoch += 1
                row = self._epoch_row(train_elbo, main)
                row["seconds"] = time.perf_counter() - start
                self.metrics.append(row)
                bar.set_postfix(epoch=self.epoch, train_elbo=f"{train_elbo:.2f}",
                                test_elbo=f"{row['test_elbo']:.2f}")
                if main and self.run_folder is not None:
                    self.run_folder.save(self.state_dict(), self.metrics, self.metric_names)
        finally:
            bar.close()
        return self.metrics[-1] if self.metrics else None

    def _epoch_row(self, train_elbo, main):
        # The test set is scored every eval_every epochs and after the last one; the other
        # rows hold NaN there.
        scored = self.epoch % self.eval_every == 0 or self.epoch == self.epochs
        test = self.evaluate() if scored else dict.fromkeys(TEST_TERMS, math.nan)
        row = {"epoch": self.epoch, "step": self.step, "train_elbo": train_elbo,
               **{f"test_{key}": test[key] for key in TEST_TERMS}}
        if self.schedule.annealed:
            row["beta"] = self.schedule(self.step - 1)
        if main:  # the extra terms are not sums over shards: rank 0 scores all
            row.update(self._evaluate_extra() if scored else
                       dict.fromkeys(self.auxiliary.extra_metrics, math.nan))
        return row

    def compile(self):
        """Trace the JIT objective's graphs (one per batch size) before any epoch is seeded.

        Tracing runs the model and guide and so draws random numbers; doing it here, and not
        at an epoch's first step, keeps a resumed run identical to an uninterrupted one.
        The loss is computed and discarded: no gradient step is taken.
        """
        loss = getattr(self.loss, "module", self.loss)  # the module inside DDP, if any
        n = self.data.x_train.shape[0]
        full = min(self.batch_size, n)  # a batch size above n makes one batch of all n
        for size in {full, n % full or full}:
            # This process's share of a global batch of that size; any indices will do.
            idx = distributed.shard(torch.arange(size, device=self.device))
            y = None if self.data.y_train is None else self.data.y_train[idx]
            # An annealed KL weight is an input of the graph, so it is never frozen in it.
            beta = self.schedule.betas(0, 1, self.device)[0] if self.schedule.annealed else None
            try:
                with quiet_jit():  # torch.jit.trace's deprecation warning
                    x = self.data.x_train[idx].to(self.device)
                    loss(x if self.transform is None else self.transform(x), y, idx, beta)
            except RuntimeError as err:  # torch.jit's way of refusing a part
                first = str(err).strip().splitlines()[0]
                raise ConfigError(f"this model cannot be JIT-compiled ({first}); train it "
                                  "with --no-jit (train.jit = false)") from None

    def train_epoch(self, bar=None):
        """One pass over the shuffled training set. Returns the mean train ELBO per example."""
        n = self.data.x_train.shape[0]
        order = self._seed_epoch(n)
        num_steps = self.steps_per_epoch
        betas = (self.schedule.betas(self.step, num_steps, self.device)
                 if self.schedule.annealed else None)
        batches = self._batches(order, betas)
        first_step = self.step + 1
        where = (f"the checkpoint of epoch {self.epoch} in {self.run_folder.checkpoint} is "
                 "intact" if self.epoch and self.run_folder else "no checkpoint was written")
        try:
            losses = self.svi.run(batches, num_steps, first_step=first_step, bar=bar,
                                  device=self.device)
        except TrainingDiverged as err:
            raise TrainingDiverged(f"{err} (epoch {self.epoch + 1}); {where}; lower --lr or "
                                   "check the data", step=err.step) from None
        self.step += num_steps
        # Each process's loss estimates the full-data -ELBO; report their mean.
        total = distributed.all_reduce_sum(losses.sum()) / distributed.world_size()
        return -float(total) / num_steps / n

    def _batches(self, order, betas):
        # In memory or streamed from disk (ppl_vae.data.stream), the same index lists.
        y_train = self.data.y_train
        indices = [distributed.shard(order[start : start + self.batch_size])
                   for start in range(0, order.shape[0], self.batch_size)]
        rows = minibatches(self.data.x_train, indices, self.device)
        for i, (idx, x) in enumerate(zip(indices, rows, strict=True)):
            x = x if self.transform is None else self.transform(x)
            y = None if y_train is None else y_train[idx]
            yield (x, y, idx, None if betas is None else betas[i]), {}

    def _after_step(self, x, y, idx, beta):
        self.auxiliary.after_step(self.program, x, y, idx)

    def _seed_epoch(self, n):
        """Reseed for this epoch; returns its shuffle of range(n), the same on every process."""
        shuffle_seed = np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0]
        draw_seed = np.random.SeedSequence(
            [self.seed, self.epoch, distributed.rank()]).generate_state(1)[0]
        torch.manual_seed(int(draw_seed))
        gen = torch.Generator().manual_seed(int(shuffle_seed))
        return torch.randperm(n, generator=gen).to(self.device)

    # ---------------------------------------------------------------- evaluation

    def evaluate(self):
        """Test ELBO and its terms (nats per example), each process scoring its shard."""
        if self.evaluate_fn is None:
            return dict.fromkeys(TEST_TERMS, math.nan)
        shard = slice(distributed.rank(), None, distributed.world_size())
        y = None if self.data.y_test is None else self.data.y_test[shard]
        x = self.data.x_test[shard]
        self.program.eval()
        try:
            means = self.evaluate_fn(self.program, x, y)
        finally:
            self.program.train()
        sums = torch.tensor([means[k] * x.shape[0] for k in TEST_TERMS], dtype=torch.float64,
                            device=self.device)
        sums = distributed.all_reduce_sum(sums) / self.data.x_test.shape[0]
        return dict(zip(TEST_TERMS, sums.tolist(), strict=True))

    def _evaluate_extra(self):
        """The objective's own per-epoch terms on the whole test set (none for an ELBO)."""
        if not self.auxiliary.extra_metrics:
            return {}
        self.program.eval()
        try:
            return self.auxiliary.evaluate_terms(self.program, self.data.x_test,
                                                 self.data.y_test)
        finally:
            self.program.train()


class ProgramLoss(nn.Module):
    """The minibatch loss of a program as a module, so DistributedDataParallel can wrap it.

    Only tensors reach the objective as positional arguments (no ``y=None``): x, then y
    and beta where given, then idx; their names and the batch size go as keywords, so that
    a JIT-compiled objective traces one graph per batch size (the last, smaller batch of an
    epoch gets its own) and takes the annealed KL weight ``beta`` as an input.
    """

    def __init__(self, program, objective):
        super().__init__()
        self.program = program
        self.objective = objective
        # Bound once: a JIT objective keys its compiled graphs on id(model) and id(guide).
        self.model, self.guide = self._model, self._guide

    def forward(self, x, y, idx, beta=None):
        given = {"x": x, "y": y, "idx": idx, "beta": beta}
        names = tuple(name for name, value in given.items() if value is not None)
        return self.objective.differentiable_loss(self.model, self.guide,
                                                  *(given[name] for name in names),
                                                  batch_size=x.shape[0], names=names)

    def _model(self, *args, batch_size, names):
        return self.program.model(**dict(zip(names, args, strict=True)))

    def _guide(self, *args, batch_size, names):
        return self.program.guide(**dict(zip(names, args, strict=True)))


def adam(params, lr):
    """torch's Adam in its fused form (one kernel for every parameter; ``ppl-vae bench
    parts`` times it against the default for-loop form) where the parameters allow it."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except RuntimeError:  # a device or dtype without a fused kernel
        return torch.optim.Adam(params, lr=lr)
