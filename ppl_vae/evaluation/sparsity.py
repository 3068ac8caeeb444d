"""Measuring a sparse autoencoder: how active its code units are, and what it reconstructs.

:func:`activation_summary` gives the numbers a sweep over the target rho reports;
:func:`sweep_figure` shows test images above each model's reconstructions, one row per rho.
"""

import torch

from ppl_vae.evaluation.plots import image_grid


@torch.no_grad()
def activation_summary(vae, x, *, threshold=0.5):
    """How active the code units (in (0, 1)) of ``vae`` are on the data ``x``.

    Returns
    -------
    dict of float
        ``mean_activation`` (mean over units and examples: the rho_hat the penalty pulls to
        rho), ``min_unit`` and ``max_unit`` (the extreme per-unit averages), and
        ``units_on`` (the mean number of units above ``threshold`` per example).
    """
    codes = vae.encode(x).mean
    per_unit = codes.mean(0)
    return {"mean_activation": float(per_unit.mean()), "min_unit": float(per_unit.min()),
            "max_unit": float(per_unit.max()),
            "units_on": float((codes > threshold).sum(-1).double().mean())}


@torch.no_grad()
def sweep_figure(vaes, labels, x, image_shape, *, num=12):
    """The first ``num`` rows of ``x`` (top row) above the reconstruction of each model in
    ``vaes`` (one row each, titled by ``labels`` on the left)."""
    x = x[:num]
    rows = [x, *(vae.reconstruct(x) for vae in vaes)]
    fig = image_grid(torch.cat(rows), image_shape, ncols=num)
    ax = fig.axes[0]
    height = image_shape[0] + 1
    for i, label in enumerate(["data", *labels]):
        ax.text(-1.5, i * height + height / 2 - 0.5, label, ha="right", va="center",
                fontsize=8)
    return fig
