"""Figures of a trained VAE: reconstructions, prior samples, the latent space, curves.

Every function takes a matplotlib ``Axes`` or makes its own figure and returns the figure,
so notebooks can show them and scripts can save them.
"""

import math

import matplotlib.pyplot as plt
import torch

from ppl_vae.data.images import to_unit

# Distinct colours for up to 20 classes (tab10, then tab20's lighter halves).
CLASS_COLOURS = [*plt.get_cmap("tab10").colors, *plt.get_cmap("tab20").colors[1::2]]


def image_sides(image_shape):
    """(C, H, W) of ``(H, W)`` (one channel) or ``(C, H, W)``."""
    return (1, *image_shape) if len(image_shape) == 2 else tuple(image_shape)


def image_grid(images, image_shape, *, ncols=10, title=None, ax=None):
    """Show rows of flat images (N, C*H*W), channel-major, as one grid image: grey levels
    for one channel (dark on light, as digits are drawn), colour for three. uint8 rows are
    read as 8-bit values."""
    images = torch.as_tensor(images).detach().cpu()
    images = (images.float() / 255 if images.dtype == torch.uint8 else images.float()).clamp(0, 1)
    n = images.shape[0]
    nrows = math.ceil(n / ncols)
    c, h, w = image_sides(image_shape)
    canvas = torch.full((nrows * (h + 1) - 1, ncols * (w + 1) - 1, c), 0.2)  # grey gaps
    for i in range(n):
        r, col = divmod(i, ncols)
        top, left = r * (h + 1), col * (w + 1)
        canvas[top : top + h, left : left + w] = images[i].reshape(c, h, w).permute(1, 2, 0)
    if ax is None:
        _, ax = plt.subplots(figsize=(ncols * 0.6, nrows * 0.6 + 0.4))
    if c == 1:
        ax.imshow(canvas[..., 0].numpy(), cmap="gray_r", vmin=0, vmax=1,
                  interpolation="nearest")
    else:
        ax.imshow(canvas.numpy(), interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax.figure


def reconstructions(vae, x, image_shape, *, num=10, y=None):
    """Data (top row) above the means of p(x | z) at the posterior mean of z (bottom row)."""
    x = x[:num]
    recon = vae.reconstruct(x, None if y is None else y[:num])
    return image_grid(torch.cat([x, recon]), image_shape, ncols=num,
                      title="data (top) and reconstructions (bottom)")


def prior_samples(vae, image_shape, *, num=50, y=None):
    """Means of p(x | z) for z drawn from the prior."""
    return image_grid(vae.sample(num, y), image_shape, ncols=10,
                      title="means of p(x | z), z ~ p(z)")


def class_samples(vae, image_shape, *, num_per_class=10, class_names=None, ax=None):
    """A conditional VAE's samples, one row per class y: the means of p(x | z, y).

    Column k decodes the same prior draw z_k in every row, so a column shows one "style"
    across the classes and a row the spread within one.
    """
    num_classes = vae.dims.num_classes
    if not num_classes:
        raise ValueError("class_samples needs a conditional VAE (num_classes > 0)")
    with torch.no_grad():
        z = vae.prior().sample((num_per_class,))
        z = z.repeat(num_classes, 1)
        y = torch.arange(num_classes, device=z.device).repeat_interleave(num_per_class)
        images = vae.decode(z, y).mean
    fig = image_grid(images, image_shape, ncols=num_per_class, ax=ax,
                     title="means of p(x | z, y), z ~ p(z): one row per class y")
    ax = fig.axes[0] if ax is None else ax
    h = image_sides(image_shape)[1]
    names = class_names or [str(c) for c in range(num_classes)]
    ax.set_axis_on()
    ax.set_xticks([])
    ax.set_yticks([c * (h + 1) + (h - 1) / 2 for c in range(num_classes)], names)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return fig


def latent_space(vae, x, labels=None, *, y=None, ax=None):
    """Posterior means E_q[z | x], one colour per label; projected on 2 principal axes if
    L > 2."""
    with torch.no_grad():
        z = vae.encode(x, y).mean.detach().cpu().double()
    xlabel, ylabel = "z[0]", "z[1]"
    if z.shape[1] > 2:
        z = z - z.mean(0)
        _, _, v = torch.linalg.svd(z, full_matrices=False)
        z = z @ v[:2].T  # fewer than two axes where there are fewer than two points
        xlabel, ylabel = "principal axis 1 of E[z|x]", "principal axis 2 of E[z|x]"
    if z.shape[1] < 2:  # one latent dimension, or one point: a flat second axis
        z = torch.cat([z, torch.zeros(len(z), 2 - z.shape[1], dtype=z.dtype)], 1)
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 4.5))
    z = z.numpy()
    if labels is None:
        ax.scatter(z[:, 0], z[:, 1], s=6, alpha=0.8)
    else:
        _scatter_by_label(ax, z, labels.detach().cpu().numpy())
    ax.set(xlabel=xlabel, ylabel=ylabel, title="latent space: posterior means of test data")
    return ax.figure


def _scatter_by_label(ax, z, labels):
    # One colour and one legend entry per label present; a continuous scale only where
    # there are too many classes to tell apart.
    classes = sorted(set(labels.tolist()))
    if len(classes) > len(CLASS_COLOURS):
        points = ax.scatter(z[:, 0], z[:, 1], c=labels, cmap="viridis", s=6, alpha=0.8)
        ax.figure.colorbar(points, ax=ax, label="label")
        return
    for i, label in enumerate(classes):
        mine = labels == label
        ax.scatter(z[mine, 0], z[mine, 1], color=CLASS_COLOURS[i], s=6, alpha=0.8,
                   label=str(label))
    ax.legend(title="label", loc="center left", bbox_to_anchor=(1.02, 0.5),
              markerscale=2, frameon=False)


def elbo_curves(metrics):
    """The train and test ELBO per epoch, and the test ELBO's two terms (test values at the
    epochs that scored the test set: the others hold NaN, see ``train.eval_every``)."""
    epochs = [row["epoch"] for row in metrics]
    scored = [row for row in metrics if not math.isnan(row["test_elbo"])]
    test_epochs = [row["epoch"] for row in scored]
    marker = "o" if len(scored) < len(metrics) else None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(epochs, [row["train_elbo"] for row in metrics], label="train")
    left.plot(test_epochs, [row["test_elbo"] for row in scored], marker=marker, label="test")
    left.set(xlabel="epoch", ylabel="ELBO (nats per example)", title="ELBO")
    left.legend()
    right.plot(test_epochs, [row["test_recon"] for row in scored], marker=marker,
               label="E_q[log p(x|z)]")
    right.plot(test_epochs, [-row["test_kl"] for row in scored], marker=marker,
               label="-KL(q(z|x) || p(z))")
    right.set(xlabel="epoch", ylabel="nats per example", title="test ELBO = sum of the two")
    right.legend()
    fig.tight_layout()
    return fig


def save_run_figures(vae, data, metrics, run_dir):
    """Write the standard figures of a run into ``run_dir``; returns their paths."""
    vae.eval()
    y_test = data.y_test if vae.conditional else None
    x_test = to_unit(data.x_test)  # 8-bit images as values in [0, 1]
    figures = {"elbo.png": elbo_curves(metrics),
               "latent.png": latent_space(vae, x_test, data.y_test, y=y_test)}
    if data.image_shape is not None:
        figures["reconstructions.png"] = reconstructions(vae, x_test, data.image_shape,
                                                         y=y_test)
        figures["samples.png"] = (class_samples(vae, data.image_shape) if vae.conditional
                                  else prior_samples(vae, data.image_shape))
    paths = []
    for name, fig in figures.items():
        path = run_dir / name
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths


def save_program_figures(program, data, metrics, run_dir):
    """The figures a program of your own supports, into ``run_dir``: the ELBO curves
    always; reconstructions if it has ``reconstruct(x)``, samples if ``sample(n)``, the
    latent space if ``encode(x)`` (image data for the first two). Returns their paths."""
    program.eval()
    figures = {"elbo.png": elbo_curves(metrics)}
    if hasattr(program, "encode"):
        figures["latent.png"] = latent_space(program, data.x_test, data.y_test)
    if data.image_shape is not None and hasattr(program, "reconstruct"):
        figures["reconstructions.png"] = reconstructions(program, data.x_test, data.image_shape)
    if data.image_shape is not None and hasattr(program, "sample"):
        figures["samples.png"] = prior_samples(program, data.image_shape)
    paths = []
    for name, fig in figures.items():
        fig.savefig(run_dir / name, dpi=120, bbox_inches="tight")
        plt.close(fig)
        paths.append(run_dir / name)
    return paths
