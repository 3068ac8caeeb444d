"""Multi-process training with torch.distributed (gloo on CPU), started as torchrun does.

With the deterministic delta guide and a statically binarised training set there is no
Monte Carlo noise, so 2 processes, each with half of every global minibatch, must end with
the same parameters as one process with whole minibatches: DDP's gradient average of the
two shards' full-data estimates equals the single process's estimate.
"""

import subprocess
import sys
from pathlib import Path

import torch

from ppl_vae.inference.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["--guide", "delta", "--binarize", "static", "--hidden", "32", "--latent-dim", "2",
        "--batch-size", "256", "--epochs", "2", "--quiet"]


def train(out, nproc):
    script = str(ROOT / "scripts" / "train_vae.py")
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 f"--nproc_per_node={nproc}"] if nproc > 1 else [sys.executable])
    result = subprocess.run([*launcher, script, *ARGS, "--out", str(out)],
                            capture_output=True, text=True, timeout=240,
                            env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    return load_checkpoint(out / "checkpoint.pt")


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
