"""The SVI training loop: minibatches on the device, a progress bar, per-epoch evaluation,
atomic checkpoints, exact resume and a NaN guard.

Each step is one SVI step on the minibatch ELBO. It is written as Pyro's
``elbo.differentiable_loss(model, guide, ...)`` followed by a plain torch optimizer step,
the form Pyro's own distributed examples use: it is exactly what ``SVI.step`` computes, but
the parameters and optimizer state are ordinary ``state_dict``s, so checkpoints load with
``weights_only=True`` and the same loop runs under DistributedDataParallel.

Randomness is reseeded at the start of every epoch from (seed, epoch, rank): the shuffle
from (seed, epoch), identical on every process; the Monte Carlo draws from
(seed, epoch, rank). A resumed run therefore needs no saved RNG state to continue exactly.
Under ``torchrun`` each process takes every ``world_size``-th example of each global
minibatch (``batch_size`` is the global size); DDP averages the gradients, which equals
the single-process gradient of the whole minibatch when the shards are of equal size.
"""

import csv
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyro
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ppl_vae import distributed
from ppl_vae.build import make_objective
from ppl_vae.config import dump_toml, load_config
from ppl_vae.data import DATASETS, binarize, check_data, load_dataset
from ppl_vae.device import resolve_device
from ppl_vae.errors import CheckpointError, ConfigError, TrainingDiverged
from ppl_vae.evaluation.likelihood import evaluate_elbo
from ppl_vae.inference.checkpoint import load_checkpoint, save_checkpoint
from ppl_vae.inference.jit import quiet_jit
from ppl_vae.inference.penalties import auxiliary
from ppl_vae.inference.schedules import KLSchedule
from ppl_vae.registry import lookup
from ppl_vae.vae import Dims, build_vae

# The columns of metrics.csv. train_elbo is minus the training loss per example: the ELBO
# itself at beta = 1 without a penalty. An annealed run adds "beta" (the KL weight of the
# epoch's last step), and a penalized objective the terms it reports, before "seconds".
METRICS = ("epoch", "step", "train_elbo", "test_elbo", "test_recon", "test_kl", "seconds")
CHECKPOINT = "checkpoint.pt"
# Settings that may differ between a run and its resumption.
RESUMABLE = {"train.epochs", "train.device", "train.jit", "train.eval_every"}


class Trainer:
    """Train a VAE from a configuration (see :mod:`ppl_vae.config`) into a run folder.

    The run folder receives ``config.toml`` (the resolved configuration),
    ``metrics.csv`` (one row per epoch), ``checkpoint.pt`` (after every epoch) and, from
    :meth:`run`, the figures.

    Parameters
    ----------
    config : dict
        A resolved configuration from :func:`ppl_vae.config.load_config`.
    run_dir : str or Path
        The run folder; it must not already hold a run (resume with :meth:`resume`).
    progress : bool
        Show a tqdm progress bar.
    """

    def __init__(self, config, run_dir, *, progress=True, _state=None):
        self.config = config
        self.run_dir = Path(run_dir)
        self.progress = progress
        data_cfg, model_cfg, train_cfg = config["data"], config["model"], config["train"]
        self.device = distributed.init_from_environment(resolve_device(train_cfg["device"]))

        self.data = _load_data(data_cfg, seed=train_cfg["seed"])
        support = lookup("likelihood", model_cfg["likelihood"]).support
        for x, split in ((self.data.x_train, "training"), (self.data.x_test, "test")):
            check_data(x, support=support, name=f"{self.data.name} {split} data")
        if model_cfg["conditional"] and self.data.y_train is None:
            raise ConfigError(f"a conditional VAE needs labels; {self.data.name} has none")
        self.dims = Dims(
            data_dim=self.data.data_dim,
            latent_dim=model_cfg["latent_dim"],
            num_data=self.data.x_train.shape[0],
            num_classes=self.data.num_classes if model_cfg["conditional"] else 0,
            image_shape=self.data.image_shape,
        )

        pyro.set_rng_seed(train_cfg["seed"])
        self.vae = build_vae(self.dims, **{k: v for k, v in model_cfg.items()
                                           if k not in ("latent_dim", "conditional")})
        self.vae.to(self.device)
        self.objective = make_objective(train_cfg["objective"],
                                        num_particles=train_cfg["num_particles"],
                                        jit=train_cfg["jit"],
                                        options=train_cfg["objective_options"], dims=self.dims)
        # What a penalized objective trains or reports besides the VAE (FactorVAE's
        # discriminator, the total-correlation terms); nothing for a plain ELBO.
        self.auxiliary = auxiliary(self.objective).to(self.device)
        y_check = self.data.y_test.to(self.device) if self.vae.conditional else None
        self.auxiliary.check(self.vae, self.data.x_test.to(self.device), y_check)
        steps_per_epoch = -(-self.data.x_train.shape[0] // train_cfg["batch_size"])
        self.schedule = KLSchedule(train_cfg["kl_schedule"], beta=model_cfg["beta"],
                                   steps_per_epoch=steps_per_epoch,
                                   warmup_epochs=train_cfg["kl_warmup_epochs"],
                                   cycle_epochs=train_cfg["kl_cycle_epochs"])
        self.metric_names = (*METRICS[:-1], *(("beta",) if self.schedule.annealed else ()),
                             *self.auxiliary.extra_metrics, METRICS[-1])
        self.optimizer = adam(self.vae.parameters(), lr=train_cfg["lr"])
        self.loss = _Objective(self.vae, self.objective)
        if distributed.is_distributed():
            self.loss = DistributedDataParallel(
                self.loss, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self._prepare_data(data_cfg["binarize"] if support == "unit" else "none",
                           seed=train_cfg["seed"])
        self.epoch, self.step, self.metrics = 0, 0, []
        if _state is not None:
            self._restore(_state)
        else:
            self.vae.init_from_data(self.x_train)  # the same rows on every process (seeded)

    # ---------------------------------------------------------------- construction

    @classmethod
    def resume(cls, run_dir, *, overrides=None, progress=True):
        """Continue the run in ``run_dir`` from its checkpoint.

        Only the settings in ``RESUMABLE`` (the number of epochs and the device) may be
        overridden; the result equals that of a run that was never interrupted.
        """
        run_dir = Path(run_dir)
        config_path = run_dir / "config.toml"
        if not config_path.is_file():
            raise CheckpointError(f"{run_dir} is not a run folder: it has no config.toml")
        overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        frozen = sorted(set(overrides) - RESUMABLE)
        if frozen:
            raise ConfigError(f"cannot change {', '.join(frozen)} when resuming; only "
                              f"{', '.join(sorted(RESUMABLE))} may change")
        config = load_config(config_path, overrides)
        state = load_checkpoint(run_dir / CHECKPOINT)
        return cls(config, run_dir, progress=progress, _state=state)

    def _prepare_data(self, binarization, *, seed):
        data = self.data.to(self.device)
        self.dynamic_binarize = binarization == "dynamic"
        x_train, x_test = data.x_train, data.x_test
        if binarization != "none":
            # The test set is binarised once, with a fixed seed, so that test ELBOs are
            # comparable across epochs and runs; the training set once too when "static".
            gen = torch.Generator(device=self.device).manual_seed(seed + 1)
            x_test = binarize(x_test, gen)
            if binarization == "static":
                x_train = binarize(x_train, gen)
        self.x_train, self.x_test = x_train, x_test
        conditional = self.vae.conditional
        self.y_train = data.y_train if conditional else None
        self.y_test = data.y_test if conditional else None

    def _restore(self, state):
        saved = Dims(**{**state["dims"], "image_shape": _as_tuple(state["dims"]["image_shape"])})
        if saved.data_dim != self.dims.data_dim:
            raise CheckpointError(
                f"the checkpoint in {self.run_dir} was trained on data of dimension "
                f"{saved.data_dim}, but {self.data.name} has dimension {self.dims.data_dim}")
        try:
            self.vae.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            first = str(err).strip().splitlines()[0]
            raise CheckpointError(f"the checkpoint in {self.run_dir} does not fit the model "
                                  f"of its config.toml: {first}") from None
        if "objective" in state:
            self.auxiliary.load_checkpoint_state(state["objective"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.metrics = list(state["metrics"])

    # ---------------------------------------------------------------- training

    def run(self, *, figures=True):
        """Train until ``train.epochs``, evaluating, logging and checkpointing every epoch.

        Returns the last row of metrics (a dict).
        """
        main = distributed.is_main()
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.toml").write_text(dump_toml(self.config))
        epochs = self.config["train"]["epochs"]
        steps_per_epoch = -(-self.x_train.shape[0] // self.config["train"]["batch_size"])
        if self.config["train"]["jit"] and self.epoch < epochs:
            self._compile()
        bar = tqdm(total=epochs * steps_per_epoch, initial=self.epoch * steps_per_epoch,
                   disable=not (self.progress and main), unit="step", dynamic_ncols=True)
        try:
            while self.epoch < epochs:
                start = time.perf_counter()
                train_elbo = self.train_epoch(bar)
                self.epoch += 1
                # The test set is scored every eval_every epochs and after the last one;
                # the other rows hold NaN there.
                scored = self.epoch % self.config["train"]["eval_every"] == 0 or \
                    self.epoch == epochs
                test = self.evaluate() if scored else dict.fromkeys(("elbo", "recon", "kl"),
                                                                     math.nan)
                row = {"epoch": self.epoch, "step": self.step, "train_elbo": train_elbo,
                       "test_elbo": test["elbo"], "test_recon": test["recon"],
                       "test_kl": test["kl"]}
                if self.schedule.annealed:
                    row["beta"] = self.schedule(self.step - 1)
                if main:  # the extra terms are not sums over shards: rank 0 scores all
                    row.update(self._evaluate_extra() if scored else
                               dict.fromkeys(self.auxiliary.extra_metrics, math.nan))
                row["seconds"] = time.perf_counter() - start
                self.metrics.append(row)
                bar.set_postfix(epoch=self.epoch, train_elbo=f"{train_elbo:.2f}",
                                test_elbo=f"{test['elbo']:.2f}")
                if main:
                    self.save()
        finally:
            bar.close()
        if figures and main:
            from ppl_vae.evaluation.plots import save_run_figures

            save_run_figures(self.vae, self.data.to(self.device), self.metrics, self.run_dir)
        return self.metrics[-1] if self.metrics else None

    def _compile(self):
        """Trace the JIT objective's graphs (one per batch size) before any epoch is seeded.

        Tracing runs the model and guide and so draws random numbers; doing it here, and not
        at an epoch's first step, keeps a resumed run identical to an uninterrupted one.
        The loss is computed and discarded: no gradient step is taken.
        """
        loss = getattr(self.loss, "module", self.loss)  # the module inside DDP, if any
        n, batch_size = self.x_train.shape[0], self.config["train"]["batch_size"]
        for size in {batch_size, n % batch_size or batch_size}:
            # This process's share of a global batch of that size; any indices will do.
            idx = distributed.shard(torch.arange(size, device=self.device))
            y = None if self.y_train is None else self.y_train[idx]
            # An annealed KL weight is an input of the graph, so it is never frozen in it.
            beta = self.schedule.betas(0, 1, self.device)[0] if self.schedule.annealed else None
            try:
                with quiet_jit():  # torch.jit.trace's deprecation warning
                    loss(self.x_train[idx], y, idx, beta)
            except RuntimeError as err:  # torch.jit's way of refusing a part
                first = str(err).strip().splitlines()[0]
                raise ConfigError(f"this model cannot be JIT-compiled ({first}); train it "
                                  "with --no-jit (train.jit = false)") from None

    def evaluate(self):
        """Test ELBO and its terms (nats per example), each process scoring its shard."""
        self.vae.eval()
        shard = slice(distributed.rank(), None, distributed.world_size())
        y = None if self.y_test is None else self.y_test[shard]
        x = self.x_test[shard]
        means = evaluate_elbo(self.vae, x, y)
        self.vae.train()
        keys = sorted(means)
        sums = torch.tensor([means[k] * x.shape[0] for k in keys], dtype=torch.float64,
                            device=self.device)
        sums = distributed.all_reduce_sum(sums) / self.x_test.shape[0]
        return dict(zip(keys, sums.tolist(), strict=True))

    def _evaluate_extra(self):
        """The objective's own per-epoch terms on the whole test set (none for an ELBO)."""
        if not self.auxiliary.extra_metrics:
            return {}
        self.vae.eval()
        try:
            return self.auxiliary.evaluate_terms(self.vae, self.x_test, self.y_test)
        finally:
            self.vae.train()

    def train_epoch(self, bar=None, sync_every=25):
        """One pass over the shuffled training set. Returns the mean train ELBO per example.

        Each step's loss is written into a tensor on the device and looked at every
        ``sync_every`` steps and at the end of the epoch: no host-device round trip per step.
        """
        batch_size = self.config["train"]["batch_size"]
        n = self.x_train.shape[0]
        order = self._seed_epoch(n)
        num_steps = -(-n // batch_size)
        betas = (self.schedule.betas(self.step, num_steps, self.device)
                 if self.schedule.annealed else None)
        losses = torch.empty(num_steps, device=self.device)
        first_step = self.step + 1  # the number of this epoch's first step
        checked = 0  # losses[:checked] are known to be finite
        for i, start in enumerate(range(0, n, batch_size)):
            idx = distributed.shard(order[start : start + batch_size])
            x = self.x_train[idx]
            if self.dynamic_binarize:
                x = binarize(x)
            y = None if self.y_train is None else self.y_train[idx]
            beta = None if betas is None else betas[i]
            try:
                loss = self.loss(x, y, idx, beta)
            except ValueError:
                # Distribution arguments that validation rejects (NaN locs, say) follow a
                # NaN loss at an earlier step that has not been looked at yet: report that.
                self._check_finite(losses[checked:i], first_step + checked)
                raise
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.auxiliary.after_step(self.vae, x, y, idx)
            self.step += 1
            losses[i] = loss.detach()
            if (i + 1) % sync_every == 0 or i + 1 == num_steps:
                self._check_finite(losses[checked : i + 1], first_step + checked)
                if bar is not None:
                    bar.update(i + 1 - checked)
                    elbo = -losses[: i + 1].sum().item() / (i + 1) / n
                    bar.set_postfix(epoch=self.epoch + 1, elbo=f"{elbo:.2f}")
                checked = i + 1
        # Each process's loss estimates the full-data -ELBO; report their mean.
        total = distributed.all_reduce_sum(losses.sum()) / distributed.world_size()
        return -float(total) / num_steps / n

    def _seed_epoch(self, n):
        """Reseed for this epoch; returns its shuffle of range(n), the same on every process."""
        seed = self.config["train"]["seed"]
        shuffle_seed = np.random.SeedSequence([seed, self.epoch]).generate_state(1)[0]
        draw_seed = np.random.SeedSequence(
            [seed, self.epoch, distributed.rank()]).generate_state(1)[0]
        torch.manual_seed(int(draw_seed))
        gen = torch.Generator().manual_seed(int(shuffle_seed))
        return torch.randperm(n, generator=gen).to(self.device)

    def _check_finite(self, losses, first_step):
        """Raise TrainingDiverged if one of ``losses``, the losses of steps ``first_step``,
        ``first_step + 1``, ..., is NaN or infinite, naming the first such step."""
        never = torch.iinfo(torch.long).max
        bad = ~torch.isfinite(losses)
        step = (torch.where(bad.any(), bad.long().argmax() + first_step, never) if len(bad)
                else torch.tensor(never, device=losses.device))
        # Every process must agree to stop, or the others would wait for it forever.
        if distributed.is_distributed():
            torch.distributed.all_reduce(step, op=torch.distributed.ReduceOp.MIN)
        bad_step = int(step)
        if bad_step == never:
            return
        where = (f"the checkpoint of epoch {self.epoch} in {self.run_dir / CHECKPOINT} is "
                 "intact" if self.epoch else "no checkpoint was written")
        raise TrainingDiverged(f"the loss became NaN or infinite at step {bad_step} "
                               f"(epoch {self.epoch + 1}); {where}; lower --lr or check the data")

    def save(self):
        """Write ``metrics.csv`` and the checkpoint (atomically)."""
        with open(self.run_dir / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.metric_names)
            writer.writeheader()
            writer.writerows(self.metrics)
        save_checkpoint(self.run_dir / CHECKPOINT, {
            "epoch": self.epoch,
            "step": self.step,
            "dims": asdict(self.dims),
            "config": dump_toml(self.config),
            "model": self.vae.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "objective": self.auxiliary.checkpoint_state(),
            "metrics": self.metrics,
        })


class _Objective(nn.Module):
    """The minibatch loss as a module, so DistributedDataParallel can wrap it.

    Only tensors reach the objective as positional arguments (no ``y=None``): x, then y
    and beta where given, then idx; their names and the batch size go as keywords, so that
    a JIT-compiled objective traces one graph per batch size (the last, smaller batch of an
    epoch gets its own) and takes the annealed KL weight ``beta`` as an input.
    """

    def __init__(self, vae, objective):
        super().__init__()
        self.vae = vae
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
        return self.vae.model(**dict(zip(names, args, strict=True)))

    def _guide(self, *args, batch_size, names):
        return self.vae.guide(**dict(zip(names, args, strict=True)))


def adam(params, lr):
    """torch's Adam in its fused form (one kernel for every parameter; ``ppl-vae bench
    parts`` times it against the default for-loop form) where the parameters allow it."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except RuntimeError:  # a device or dtype without a fused kernel
        return torch.optim.Adam(params, lr=lr)


def _load_data(data_cfg, *, seed):
    """The data set of ``[data]``; ``data.options`` go to a built-in data set's loader
    (``num_data`` and ``image_size`` of ``shapes``)."""
    common = {"data_dir": data_cfg["data_dir"], "download": data_cfg["download"],
              "test_fraction": data_cfg["test_fraction"], "seed": seed}
    options, name = data_cfg["options"], str(data_cfg["dataset"])
    if not options:
        return load_dataset(name, **common)
    if name.lower() not in DATASETS:
        raise ConfigError(f"data.options apply to the built-in data sets "
                          f"({', '.join(DATASETS)}); {name!r} takes none")
    try:
        return DATASETS[name.lower()](**common, **options)
    except TypeError as err:
        raise ConfigError(f"bad data.options for {name!r}: {err}") from None


def _as_tuple(value):
    return None if value is None else tuple(value)


def new_run_dir(out, name, *, root="runs"):
    """The folder a new run writes to.

    An explicit ``out`` must be new or empty: an existing run is never written over. Without
    ``out`` the run goes to ``runs/<name>``, or ``runs/<name>-2``, ``-3``, ... if taken.
    """
    if out is not None:
        out = Path(out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ConfigError(f"{out} already exists and is not empty; choose another --out, "
                              f"or continue that run with --resume {out}")
        return out
    base = Path(root) / name
    candidate, k = base, 1
    while candidate.exists():
        k += 1
        candidate = base.with_name(f"{base.name}-{k}")
    return candidate
