"""Point sets for the mixtures: small tables of points with known labels, split 80/20.

``blobs`` (three 2-D Gaussians with known parameters), ``digits`` (PCA to a few
dimensions), ``iris``, ``wine``, or a file: a ``.npy`` array of shape (N, d), or a ``.npz``
holding it as ``x`` (and, optionally, integer labels of shape (N,) as ``y``).
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ppl_vae.data.checks import as_2d_tensor, check_finite
from ppl_vae.errors import ConfigError, DataError

TEST_FRACTION = 0.2


@dataclass
class Points:
    """A train/test split of points (numpy), with labels where known."""

    name: str
    x_train: np.ndarray
    x_test: np.ndarray
    y_train: np.ndarray | None = None
    y_test: np.ndarray | None = None


def _split(name, X, y, seed):
    order = np.random.default_rng(seed).permutation(len(X))
    n_test = max(1, int(round(TEST_FRACTION * len(X))))
    test, train = order[:n_test], order[n_test:]
    return Points(name, X[train], X[test], None if y is None else y[train],
                None if y is None else y[test])


def make_blobs(n_samples, seed):
    """Three 2-D Gaussians with different shapes and weights: a known truth."""
    rng = np.random.default_rng(seed)
    weights = np.array([0.5, 0.3, 0.2])
    means = np.array([[0.0, 0.0], [5.0, 4.0], [-4.0, 5.0]])
    covariances = np.array([[[2.0, 1.2], [1.2, 1.5]], [[0.6, -0.3], [-0.3, 0.8]],
                            [[1.5, 0.0], [0.0, 0.3]]])
    labels = rng.choice(3, size=n_samples, p=weights)
    noise = rng.standard_normal((n_samples, 2))
    chol = np.linalg.cholesky(covariances)
    X = means[labels] + np.einsum("nij,nj->ni", chol[labels], noise)
    return X, labels


def _sklearn_set(loader, pca_dims=None):
    bunch = loader()
    X = bunch.data.astype(np.float64)
    if pca_dims is not None:
        from sklearn.decomposition import PCA

        X = PCA(n_components=pca_dims, random_state=0).fit_transform(X)
    return X, bunch.target


def _blobs(*, seed, quick, pca_dims):
    return make_blobs(300 if quick else 1500, seed)


def _digits(*, seed, quick, pca_dims):
    from sklearn import datasets

    if not 1 <= pca_dims <= 64:
        raise ConfigError(f"--pca-dims must be between 1 and 64; got {pca_dims}")
    return _sklearn_set(datasets.load_digits, pca_dims)


def _scikit_learn(name):
    def load(*, seed, quick, pca_dims):
        from sklearn import datasets

        return _sklearn_set(getattr(datasets, f"load_{name}"))

    return load


# Name -> loader(seed=, quick=, pca_dims=) -> (X, labels): the point sets by name.
POINT_SETS = {"blobs": _blobs, "digits": _digits, "iris": _scikit_learn("iris"),
              "wine": _scikit_learn("wine")}


def _from_file(spec):
    path = Path(spec)
    if path.suffix not in (".npy", ".npz"):
        raise ConfigError(f"--dataset must be {', '.join(POINT_SETS)} or a .npy/.npz file; "
                          f"got {spec!r}")
    if not path.is_file():
        raise DataError(f"data file {spec!r} does not exist")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return loaded, None
        with loaded:
            if "x" not in loaded.files:
                raise DataError(f"{spec!r} holds arrays {sorted(loaded.files)}; expected the "
                                "points as 'x' (and optional labels 'y')")
            X, y = loaded["x"], loaded["y"] if "y" in loaded.files else None
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {spec!r} as a {path.suffix} file: {exc}") from None
    if y is not None and y.shape != (len(X),):
        raise DataError(f"{spec!r}: expected labels 'y' of shape ({len(X)},); got {y.shape}")
    return X, y


def load_points(spec, *, pca_dims=2, seed=0, quick=False):
    """A named point set (:data:`POINT_SETS`; ``digits`` by PCA to ``pca_dims``) or a
    ``.npy``/``.npz`` path, split 80/20 with ``seed``; ``quick`` keeps at most 400 points."""
    if spec in POINT_SETS:
        X, y = POINT_SETS[spec](seed=seed, quick=quick, pca_dims=pca_dims)
    else:
        X, y = _from_file(spec)
    check_finite(as_2d_tensor(X, name=spec), name=spec)
    if quick and len(X) > 400:
        X, y = X[:400], None if y is None else y[:400]
    return _split(spec, np.asarray(X), y, seed)
