"""Benchmarks of 8-bit colour images: a conv VAE's images per second against a plain
PyTorch loop with the same nets, and the streaming path's peak anonymous memory."""

import functools
import os
import statistics
import tempfile
import threading
from pathlib import Path

import numpy as np

from ppl_vae.commands.bench._core import _interleaved, _paired_ratio, benchmark

IMAGE_SHAPE = (3, 32, 32)
GIB = 2**30


def image_config(path, batch_size, device, **overrides):
    """The benchmarks' model: a conv VAE with a discretised logistic, 32-D latent."""
    from ppl_vae.config import load_config

    return load_config("vae", {
        "data.dataset": str(path), "model.latent_dim": 32, "model.hidden": [256],
        "model.encoder": "conv", "model.decoder": "conv",
        "model.likelihood": "discretized-logistic", "train.objective": "meanfield",
        "train.jit": False, "train.batch_size": batch_size, "train.device": device,
        **overrides})


def plain_image_loss(encoder, decoder, likelihood, x, num_data, min_scale):
    """The negative ELBO of a uint8 batch as a user writes it by hand: scale to [0, 1], a
    reparameterised sample, the likelihood's log-probability and the analytic KL against
    N(0, I), scaled to ``num_data`` points; the trainer's ``meanfield`` objective."""
    import torch
    from torch.nn.functional import softplus

    x = x.float() / 255
    loc, rho = encoder(x).chunk(2, dim=-1)
    scale = softplus(rho) + min_scale
    z = loc + scale * torch.randn_like(loc)
    nll = -likelihood(decoder(z)).log_prob(x).sum()
    kl = 0.5 * (scale**2 + loc**2 - 1 - 2 * torch.log(scale)).sum()
    return (nll + kl) * (num_data / x.shape[0])


def plain_image_epoch(encoder, decoder, likelihood, optimizer, x, batch_size, min_scale):
    """Shuffle, :func:`plain_image_loss`, Adam; one host sync per epoch."""
    import torch

    losses = []
    for idx in torch.randperm(x.shape[0], device=x.device).split(batch_size):
        loss = plain_image_loss(encoder, decoder, likelihood, x[idx], x.shape[0], min_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return torch.stack(losses).sum().item()


def write_images(path, n, seed=0, block=2**14):
    """A uint8 .npy of n random 32x32x3 images, written a block at a time (never whole)."""
    x = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, *IMAGE_SHAPE))
    rng = np.random.default_rng(seed)
    for start in range(0, n, block):
        x[start:start + block] = rng.integers(0, 256, x[start:start + block].shape, np.uint8)
    x.flush()
    del x


@benchmark("images", "conv VAE on 32x32x3 uint8 images: images/s, trainer vs plain PyTorch")
def bench_images(args):
    import copy

    import torch

    from ppl_vae.build import build
    from ppl_vae.inference.loop import adam

    torch.set_num_threads(args.threads)
    batch_size, steps = (32, 3) if args.quick else (128, 20)
    repeats = args.repeats or (1 if args.quick else 9)
    n = batch_size * steps
    print(f"images per second of an epoch of {steps} steps of {batch_size}, median of "
          f"{repeats}, interleaved; conv VAE, discretised logistic, latent 32; uint8 data "
          f"on {args.device}; {args.threads} thread(s), load {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        write_images(Path(tmp) / "x.npy", n + 64)
        trainer = build(image_config(Path(tmp) / "x.npy", batch_size, args.device,
                                     **{"data.test_fraction": 64 / (n + 64)}),
                        progress=False).trainer
    program = trainer.program
    encoder, decoder = (copy.deepcopy(m) for m in (program.posterior.encoder, program.decoder))
    optimizer = adam([*encoder.parameters(), *decoder.parameters()], lr=1e-3)
    loops = {"plain PyTorch": functools.partial(
        plain_image_epoch, encoder, decoder, program.likelihood, optimizer,
        trainer.data.x_train, batch_size, program.posterior.min_scale),
        "ppl-vae Trainer": trainer.train_epoch}
    rates = _interleaved(loops, repeats, n)
    rows = {}
    for label, values in rates.items():
        ratio, q1, q3 = _paired_ratio(rates, label, "plain PyTorch")
        rows[label] = {"images_per_s": statistics.median(values), "ratio": ratio,
                       "ratio_quartiles": [q1, q3]}
        print(f"{label:<20}{rows[label]['images_per_s']:>10.1f} images/s  ratio {ratio:.3f} "
              f"({q1:.3f}-{q3:.3f})")
    return rows


def rss_anon(pid="self"):
    """A process's anonymous resident memory in bytes (RssAnon of /proc/PID/status):
    pages of a mapped file are page cache, reclaimable, and not counted."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise OSError(f"no RssAnon in /proc/{pid}/status (Linux only)")


def rss_anon_with_children():
    """:func:`rss_anon` of this process plus its children's (the DataLoader's workers):
    pages the children share copy-on-write with it count twice, so this is an upper
    bound."""
    total = rss_anon()
    for task in Path("/proc/self/task").iterdir():
        try:  # a thread or a child may end between the listing and the read
            children = (task / "children").read_text().split()
            total += sum(rss_anon(child) for child in children)
        except OSError:
            pass
    return total


class PeakSampler(threading.Thread):
    """Samples ``probe`` (:func:`rss_anon`) every ``interval`` seconds until stopped; keeps
    the peak."""

    def __init__(self, interval=0.05, probe=rss_anon):
        super().__init__(daemon=True)
        self.interval, self.probe, self.done = interval, probe, threading.Event()
        self.peak = probe()

    def run(self):
        while not self.done.wait(self.interval):
            self.peak = max(self.peak, self.probe())

    def stop(self):
        self.done.set()
        self.join()
        return max(self.peak, self.probe())


@benchmark("images-memory", "streaming a memory-mapped uint8 .npy: peak RssAnon and images/s")
def bench_images_memory(args):
    import time

    import torch

    from ppl_vae.build import build

    torch.set_num_threads(args.threads)
    bytes_per_image = int(np.prod(IMAGE_SHAPE))
    # The peak must not grow with N: two sizes, the larger over 4 GiB.
    sizes = (2**12, 2**13) if args.quick else (int(1.05 * GIB) // bytes_per_image,
                                               int(4.2 * GIB) // bytes_per_image)
    print(f"one epoch, streamed (data.stream = true), batch 1024, on {args.device}; an MLP "
          f"VAE (hidden 128, latent 16, unit Gaussian on x / 255: the memory is the data's, "
          f"not the model's); peak RssAnon of the process and of it plus its DataLoader workers, "
          f"sampled every 50 ms; files under {tempfile.gettempdir()}, deleted after")
    rows = {}
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "x.npy"
            write_images(path, n)
            experiment = build(image_config(path, 1024, args.device, **{
                "data.stream": True, "data.test_fraction": 512 / n, "model.encoder": "mlp",
                "model.decoder": "mlp", "model.hidden": [128], "model.latent_dim": 16,
                "model.likelihood": "gaussian"}),
                progress=False)
            samplers = [PeakSampler(), PeakSampler(probe=rss_anon_with_children)]
            for sampler in samplers:
                sampler.start()
            started = time.perf_counter()
            experiment.trainer.train_epoch()
            seconds = time.perf_counter() - started
            peak, with_workers = (sampler.stop() for sampler in samplers)
            del experiment
        rows[str(n)] = {"data_gib": n * bytes_per_image / GIB, "peak_rss_anon_gib": peak / GIB,
                        "with_workers_gib": with_workers / GIB, "images_per_s": n / seconds}
        print(f"{n:>10} images ({rows[str(n)]['data_gib']:.2f} GiB): peak RssAnon "
              f"{peak / GIB:.3f} GiB ({with_workers / GIB:.3f} GiB with the workers), "
              f"{n / seconds:,.0f} images/s")
    return rows
