"""Multi-process training with torch.distributed (gloo on CPU), started as torchrun does.

With the deterministic delta guide and a statically binarised training set there is no
Monte Carlo noise, so 2 processes, each with half of every global minibatch, must end with
the same parameters as one process with whole minibatches: DDP's gradient average of the
two shards' full-data estimates equals the single process's estimate.

With the diagonal guide there is noise: each rank's rows and random state are recorded at
every step, checked (the ranks' rows partition each global minibatch, the minibatches
partition the training set, the ranks draw different noise), and the run is replayed in one
process by averaging the two shards' gradients by hand.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ppl_vae.build import build
from ppl_vae.config import load_config
from ppl_vae.inference.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["--guide", "delta", "--binarize", "static", "--hidden", "32", "--latent-dim", "2",
        "--batch-size", "256", "--epochs", "2", "--quiet"]
# The subprocesses import this checkout, whatever the installed package points at.
ENV = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}


def train(out, nproc):
    script = str(ROOT / "scripts" / "train_vae.py")
    result = subprocess.run([*launcher(nproc), script, *ARGS, "--out", str(out)],
                            capture_output=True, text=True, timeout=240, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    return load_checkpoint(out / "checkpoint.pt")


def launcher(nproc):
    return ([sys.executable, "-m", "torch.distributed.run", "--standalone",
             f"--nproc_per_node={nproc}"] if nproc > 1 else [sys.executable])


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    one = train(tmp_path / "one", 1)
    two = train(tmp_path / "two", 2)
    assert one["step"] == two["step"] == 2 * 6
    for key, value in one["model"].items():
        torch.testing.assert_close(two["model"][key], value, rtol=1e-4, atol=1e-5)
    for a, b in zip(one["metrics"], two["metrics"], strict=True):
        assert abs(a["test_elbo"] - b["test_elbo"]) < 1e-3
        assert abs(a["train_elbo"] - b["train_elbo"]) < 1e-3
    # Only rank 0 wrote the run folder.
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir())


# ------------------------------------------------- sharding and noise, seen step by step

NOISY = {"model.hidden": [16], "model.latent_dim": 2, "train.batch_size": 256,
         "train.epochs": 2, "train.jit": False, "train.device": "cpu",
         "data.binarize": "static"}


def record_run(out):
    """Run in each torchrun process: train NOISY, recording each step's rows and random
    state as the loss sees them; save them with the initial and final parameters."""
    experiment = build(load_config(None, NOISY), None, progress=False)
    trainer, steps = experiment.trainer, []
    initial = {k: v.clone() for k, v in experiment.program.state_dict().items()}
    loss_fn = trainer.svi.loss_fn

    def recorded(x, y, idx, beta):
        steps.append({"x": x.clone(), "idx": idx.clone(), "rng": torch.get_rng_state()})
        return loss_fn(x, y, idx, beta)

    trainer.svi.loss_fn = recorded
    experiment.run(figures=False)
    torch.save({"initial": initial, "final": experiment.program.state_dict(), "steps": steps,
                "world": torch.distributed.get_world_size()},
               Path(out) / f"rank{torch.distributed.get_rank()}.pt")
    torch.distributed.destroy_process_group()


def test_ranks_take_their_shard_and_their_own_noise(tmp_path):
    result = subprocess.run([*launcher(2), __file__, str(tmp_path)], capture_output=True,
                            text=True, timeout=240, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert ranks[0]["world"] == 2
    experiment = build(load_config(None, NOISY), None, progress=False)
    x_train, n = experiment.data.x_train, experiment.data.x_train.shape[0]
    steps_per_epoch = -(-n // 256)
    pairs = list(zip(ranks[0]["steps"], ranks[1]["steps"], strict=True))
    assert len(pairs) == 2 * steps_per_epoch
    epochs = []
    for first in range(0, len(pairs), steps_per_epoch):
        rows = []
        for a, b in pairs[first : first + steps_per_epoch]:
            # The two shards: disjoint, equal halves of one global minibatch, the data's rows.
            assert not set(a["idx"].tolist()) & set(b["idx"].tolist())
            assert abs(len(a["idx"]) - len(b["idx"])) <= 1
            for step in (a, b):
                assert torch.equal(step["x"], x_train[step["idx"]])
            assert not torch.equal(a["rng"], b["rng"])  # each rank its own noise
            rows += a["idx"].tolist() + b["idx"].tolist()
        assert sorted(rows) == list(range(n))  # an epoch sees every row once
        epochs.append(rows)
    assert epochs[0] != epochs[1]  # a new shuffle each epoch
    assert not torch.equal(pairs[0][0]["rng"], pairs[steps_per_epoch][0]["rng"])
    for key, value in ranks[0]["final"].items():
        torch.testing.assert_close(ranks[1]["final"][key], value)  # DDP kept them equal
    replayed = replay(experiment, ranks[0]["initial"], pairs)
    for key, value in ranks[0]["final"].items():
        torch.testing.assert_close(replayed[key], value, rtol=1e-4, atol=1e-5)


def replay(experiment, initial, pairs):
    """One process, by hand: each step's gradient is the mean of the two shards' gradients,
    each computed from that rank's rows and random state; then the optimizer's step."""
    program, loss = experiment.program, experiment.trainer.loss
    program.load_state_dict(initial)
    optimizer = torch.optim.Adam(program.parameters(), lr=experiment.config["train"]["lr"])
    for shards in pairs:
        optimizer.zero_grad()
        for step in shards:
            torch.set_rng_state(step["rng"])
            (loss(step["x"], None, step["idx"]) / len(shards)).backward()
        optimizer.step()
    return program.state_dict()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    record_run(sys.argv[1])
