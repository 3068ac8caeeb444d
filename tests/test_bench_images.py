"""The image benchmarks compute what they claim: the plain loop's loss is the trainer's at
the same parameters and noise, the data file holds what was asked, and the memory probe
sees anonymous memory (never timed here)."""

import numpy as np
import pyro
import torch

from ppl_vae.build import build
from ppl_vae.commands.bench.images import (
    IMAGE_SHAPE,
    PeakSampler,
    image_config,
    plain_image_loss,
    rss_anon,
    write_images,
)


def test_plain_loss_equals_the_trainers_at_the_same_parameters(tmp_path):
    write_images(tmp_path / "x.npy", 40)
    x = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert x.shape == (40, *IMAGE_SHAPE) and x.dtype == np.uint8 and x.max() > 200
    trainer = build(image_config(tmp_path / "x.npy", 8, "cpu", **{"model.hidden": [16]}),
                    progress=False).trainer
    program, data = trainer.program, trainer.data
    idx = torch.arange(8)
    batch = data.x_train[idx]
    assert batch.dtype == torch.uint8
    pyro.set_rng_seed(5)
    ours = trainer.loss(trainer.transform(batch), None, idx)
    pyro.set_rng_seed(5)
    plain = plain_image_loss(program.posterior.encoder, program.decoder, program.likelihood,
                             batch, len(data.x_train), program.posterior.min_scale)
    torch.testing.assert_close(ours, plain, rtol=1e-5, atol=1e-3)


def test_memory_probe_sees_anonymous_memory_and_keeps_its_peak():
    before = rss_anon()
    sampler = PeakSampler(interval=0.01)
    sampler.start()
    block = np.full(2**28, 7, dtype=np.uint8)  # 256 MiB, every page written
    during = rss_anon()
    peak = sampler.stop()
    del block
    assert during - before > 200 * 2**20
    assert peak >= during - 2**20  # a page or two may be freed between the readings
