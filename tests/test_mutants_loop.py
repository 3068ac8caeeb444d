"""Tests written to kill surviving mutants of ppl_vae/inference/loop.py (issue 17): what
each training step is given, and the train ELBO an epoch reports."""

from pathlib import Path

import torch

from ppl_vae.build import build
from ppl_vae.config import load_config
from ppl_vae.evaluation.likelihood import evaluate_elbo

ROOT = Path(__file__).resolve().parent.parent
FROZEN = {"model.hidden": [16], "model.latent_dim": 2, "train.batch_size": 256,
          "train.epochs": 1, "train.jit": False, "train.device": "cpu", "train.lr": 1e-12,
          "data.binarize": "static"}


def test_steps_see_their_rows_and_labels_and_the_epoch_reports_the_mean_elbo():
    """A conditional VAE whose parameters do not move (lr 1e-12): every step's x and y are
    the training rows idx, the steps cover the training set once, and the reported train
    ELBO is the data set's ELBO per example (evaluate_elbo, within Monte Carlo noise)."""
    torch.manual_seed(0)
    experiment = build(load_config(ROOT / "models" / "cvae.toml", FROZEN), None,
                       progress=False)
    trainer, data, steps = experiment.trainer, experiment.data, []
    trainer.batch_size = len(data.x_train) - 1  # two steps, the second of one row
    loss_fn = trainer.svi.loss_fn

    def recorded(x, y, idx, beta):
        steps.append((x.clone(), y.clone(), idx.clone()))
        return loss_fn(x, y, idx, beta)

    trainer.svi.loss_fn = recorded
    train_elbo = trainer.train_epoch()
    rows = torch.cat([idx for _, _, idx in steps])
    assert [len(idx) for _, _, idx in steps] == [len(data.x_train) - 1, 1]
    assert sorted(rows.tolist()) == list(range(len(data.x_train)))
    for x, y, idx in steps:
        assert torch.equal(x, data.x_train[idx]) and torch.equal(y, data.y_train[idx])
    reference = evaluate_elbo(experiment.program, data.x_train, data.y_train)["elbo"]
    assert abs(train_elbo - reference) < 0.5, (train_elbo, reference)
