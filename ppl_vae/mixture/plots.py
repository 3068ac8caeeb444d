"""Figures for fitted mixtures: covariance ellipses over the data, and the objective.

Data with one or two features are drawn in their own units; data with more, in their first
two principal components; each component's mean and covariance are projected onto the
same plane, so that an ellipse is the exact marginal of that Gaussian in the plotted
coordinates.
"""

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Ellipse
from scipy.stats import multivariate_normal

# Components lighter than this are drawn dashed: they are (nearly) unused.
FADED_WEIGHT = 0.01


def projection(X):
    """(origin, basis): x -> (x - origin) @ basis maps data onto at most two axes: the data
    as they are with one or two features, their first two principal components (of the
    mean-centred data) with more."""
    X = np.asarray(X, dtype=np.float64)
    if X.shape[1] <= 2:
        return np.zeros(X.shape[1]), np.eye(X.shape[1])
    origin = X.mean(0)
    _, _, vt = np.linalg.svd(X - origin, full_matrices=False)
    return origin, vt[:2].T


def most_probable_component(X, weights, means, covariances):
    """argmax_k of w_k N(x | mean_k, cov_k) for each row of X: the component a point is
    drawn in, so that its colour matches that component's ellipse."""
    log_joint = np.stack([
        np.log(max(w, np.finfo(float).tiny))
        + multivariate_normal.logpdf(X, mean, cov, allow_singular=True)
        for w, mean, cov in zip(weights, means, covariances, strict=True)], axis=-1)
    return log_joint.reshape(len(X), -1).argmax(1)


def _ellipse(ax, mean, cov, n_std, **style):
    values, vectors = np.linalg.eigh(cov)
    values = np.clip(values, 0, None)
    angle = np.degrees(np.arctan2(vectors[1, -1], vectors[0, -1]))
    width, height = 2 * n_std * np.sqrt(values[::-1])
    ax.add_patch(Ellipse(mean, width, height, angle=angle, fill=False, **style))


def plot_ellipses(X, weights, means, covariances, *, labels=None, title=None, ax=None):
    """Scatter X with 1- and 2-sigma ellipses, each point in the colour of its most probable
    component (:func:`most_probable_component`).

    Parameters
    ----------
    X : array of shape (n_samples, n_features)
    weights : array of shape (n_components,)
    means : array of shape (n_components, n_features)
    covariances : array of shape (n_components, n_features, n_features)
        Full matrices (expand diag/spherical/tied ones first).
    labels : array of shape (n_samples,), optional
        Accepted for older callers and not drawn: colours are components, whose numbering
        need not match the labels' (the adjusted Rand index compares the two).
    """
    X = np.asarray(X, dtype=np.float64)
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 5))
    origin, basis = projection(X)
    if basis.shape[1] == 1:  # one feature: a second, empty axis keeps ellipses flat
        basis = np.hstack([basis, np.zeros((basis.shape[0], 1))])
    points = (X - origin) @ basis
    component = most_probable_component(X, weights, means, covariances)
    ax.scatter(points[:, 0], points[:, 1], s=6, alpha=0.5, linewidths=0,
               c=[f"C{k % 10}" for k in component])
    for k, (w, mean, cov) in enumerate(zip(weights, means, covariances, strict=True)):
        centre = (np.asarray(mean) - origin) @ basis
        plane = basis.T @ np.asarray(cov) @ basis
        style = dict(color=f"C{k % 10}", linestyle="--" if w < FADED_WEIGHT else "-")
        for n_std in (1, 2):
            _ellipse(ax, centre, plane, n_std, linewidth=1.5 / n_std, **style)
        ax.plot(*centre, marker="x", color=style["color"], markersize=8)
    ax.set_xlabel("x1" if X.shape[1] <= 2 else "PC 1 (of the mean-centred data)")
    ax.set_ylabel("x2" if X.shape[1] == 2 else ("PC 2" if X.shape[1] > 2 else ""))
    ax.autoscale_view()
    if title:
        ax.set_title(title)
    return ax


def plot_objective(history, *, ylabel, title=None, ax=None):
    """The objective per iteration (or per step / per draw)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    history = np.asarray(history, dtype=np.float64)
    ax.plot(np.arange(1, len(history) + 1), history, marker="." if len(history) < 60 else None)
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    return ax


def save_figures(out_dir, X, weights, means, covariances, history, *, ylabel, labels=None,
                 title=None):
    """Write ``ellipses.png`` and ``objective.png`` into ``out_dir``; returns their paths."""
    paths = []
    fig, ax = plt.subplots(figsize=(6, 5))
    plot_ellipses(X, weights, means, covariances, labels=labels, title=title, ax=ax)
    paths.append(out_dir / "ellipses.png")
    fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    plot_objective(history, ylabel=ylabel, title=title, ax=ax)
    paths.append(out_dir / "objective.png")
    fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
    plt.close(fig)
    return paths
