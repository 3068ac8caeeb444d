import gzip
import math
import struct
import sys
import types

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from ppl_vae.data import (
    DATASETS,
    Dataset,
    binarize,
    check_data,
    load_dataset,
)
from ppl_vae.data.ppca import make_ppca
from ppl_vae.errors import DataError

IDX_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# --- digits ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sklearn_digits():
    return load_digits()


def recover_indices(rows: torch.Tensor, raw: np.ndarray) -> np.ndarray:
    """Index in sklearn's array of each row (digits has no duplicate images)."""
    where = {row.tobytes(): i for i, row in enumerate((raw / 16.0).astype(np.float32))}
    return np.array([where[row.tobytes()] for row in rows.numpy()])


def test_digits_values_sizes_and_labels(sklearn_digits):
    ds = load_dataset("digits")
    assert ds.name == "digits" and ds.image_shape == (8, 8)
    assert ds.data_dim == 64 and ds.num_classes == 10
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert len(ds.x_train) == 1438 and len(ds.x_test) == 359  # round(0.2 * 1797) held out
    x = torch.cat([ds.x_train, ds.x_test])
    assert x.min().item() == 0.0 and x.max().item() == 1.0

    train = recover_indices(ds.x_train, sklearn_digits.data)
    test = recover_indices(ds.x_test, sklearn_digits.data)
    assert not set(train) & set(test)
    assert sorted([*train, *test]) == list(range(1797))
    np.testing.assert_array_equal(ds.y_train.numpy(), sklearn_digits.target[train])
    np.testing.assert_array_equal(ds.y_test.numpy(), sklearn_digits.target[test])


def test_digits_split_is_fixed_by_the_seed(sklearn_digits):
    a, b, c = (load_dataset("digits", seed=s) for s in (3, 3, 4))
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    test_a = set(recover_indices(a.x_test, sklearn_digits.data))
    test_c = set(recover_indices(c.x_test, sklearn_digits.data))
    assert len(test_a) == len(test_c) == 359
    # Two independent random 20% splits share about 20% of their test points, not all.
    assert 30 < len(test_a & test_c) < 120

    half = load_dataset("digits", test_fraction=0.5)
    assert (len(half.x_train), len(half.x_test)) == (899, 898)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1e-6])
def test_bad_test_fraction(fraction):
    with pytest.raises(DataError, match="test_fraction") as excinfo:
        load_dataset("digits", test_fraction=fraction)
    one_line_error(excinfo)


def test_ppca_dataset_is_real_valued_without_labels():
    ds = load_dataset("ppca", seed=1)
    assert ds.image_shape is None and ds.y_train is None and ds.num_classes is None
    assert (len(ds.x_train), len(ds.x_test), ds.data_dim) == (1600, 400, 10)
    x, _ = make_ppca(2000, 10, 2, seed=1)
    assert torch.equal(torch.cat([ds.x_train, ds.x_test]).sort(0).values, x.sort(0).values)
    assert ds.x_train.min() < 0 or ds.x_train.max() > 1
    assert torch.equal(load_dataset("ppca", seed=1).x_test, ds.x_test)


def test_unknown_name_lists_datasets_and_suffixes():
    with pytest.raises(DataError) as excinfo:
        load_dataset("cifar100")
    message = one_line_error(excinfo)
    for expected in (*DATASETS, ".npz", ".npy", "'cifar100'"):
        assert expected in message


def test_dataset_to_and_validation():
    ds = load_dataset("digits")
    moved = ds.to("cpu")
    assert torch.equal(moved.x_train, ds.x_train) and moved.image_shape == (8, 8)
    with pytest.raises(DataError, match="features"):
        Dataset("bad", torch.zeros(3, 4), torch.zeros(2, 5), None, None, None)
    with pytest.raises(DataError, match="both"):
        Dataset("bad", torch.zeros(3, 4), torch.zeros(2, 4), torch.zeros(3).long(), None, None)


@pytest.mark.cuda
def test_dataset_to_cuda():
    ds = load_dataset("digits").to("cuda")
    assert ds.x_train.is_cuda and ds.y_test.is_cuda
    assert torch.equal(ds.x_test.cpu(), load_dataset("digits").x_test)


# --- IDX files ------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    return header + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def write_idx_set(raw_dir, *, gz, n_train=20, n_test=7, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    raw_dir.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        data = idx_bytes(array)
        if gz:
            (raw_dir / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (raw_dir / stem).write_bytes(data)
    return arrays


def expected_pixels(images: np.ndarray) -> torch.Tensor:
    return torch.tensor(images.reshape(len(images), -1), dtype=torch.float32) / 255


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_reader_returns_the_written_pixels(tmp_path, name, folder, gz):
    arrays = write_idx_set(tmp_path / folder / "raw", gz=gz)
    ds = load_dataset(name, data_dir=tmp_path)
    assert ds.name == name and ds.image_shape == (28, 28) and ds.data_dim == 784
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    torch.testing.assert_close(
        ds.x_train, expected_pixels(arrays["train-images-idx3-ubyte"]), rtol=0, atol=0
    )
    torch.testing.assert_close(
        ds.x_test, expected_pixels(arrays["t10k-images-idx3-ubyte"]), rtol=0, atol=0
    )
    assert ds.y_train.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert ds.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    # Pixels at 0 and 255 map exactly onto the ends of [0, 1].
    assert ds.x_train.min().item() == 0.0 and ds.x_train.max().item() == 1.0


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_idx_file(tmp_path, gz):
    raw_dir = tmp_path / "MNIST" / "raw"
    write_idx_set(raw_dir, gz=gz)
    path = raw_dir / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", data_dir=tmp_path)
    message = one_line_error(excinfo)
    assert str(path) in message
    assert "truncated" in message or "cannot read" in message


def test_bad_magic_number(tmp_path):
    raw_dir = tmp_path / "MNIST" / "raw"
    write_idx_set(raw_dir, gz=False)
    path = raw_dir / "t10k-labels-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x0d\x01" + path.read_bytes()[4:])  # 0x0d: float32 elements
    with pytest.raises(DataError, match="magic number 00000d01") as excinfo:
        load_dataset("mnist", data_dir=tmp_path)
    assert str(path) in one_line_error(excinfo)


def test_images_and_labels_must_agree_in_number(tmp_path):
    raw_dir = tmp_path / "MNIST" / "raw"
    write_idx_set(raw_dir, gz=False)
    (raw_dir / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(19, np.uint8)))
    with pytest.raises(DataError, match="20 images but .* 19 labels"):
        load_dataset("mnist", data_dir=tmp_path)


def test_missing_files_name_folder_files_and_flags(tmp_path):
    with pytest.raises(DataError) as excinfo:
        load_dataset("fashion-mnist", data_dir=tmp_path / "nowhere")
    message = one_line_error(excinfo)
    assert str(tmp_path / "nowhere" / "FashionMNIST" / "raw") in message
    for expected in (*IDX_STEMS, "--download", "--data-dir"):
        assert expected in message


def test_partly_missing_files_name_only_the_missing_one(tmp_path):
    raw_dir = tmp_path / "MNIST" / "raw"
    write_idx_set(raw_dir, gz=True)
    (raw_dir / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte \\(") as excinfo:
        load_dataset("mnist", data_dir=tmp_path)
    assert "train-images" not in one_line_error(excinfo)


def test_download_without_torchvision(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # makes `import torchvision` fail
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", data_dir=tmp_path, download=True)
    message = one_line_error(excinfo)
    assert "torchvision" in message and "import failed" in message
    assert str(tmp_path / "MNIST" / "raw") in message and "by hand" in message
    assert all(stem in message for stem in IDX_STEMS)


def fake_torchvision(monkeypatch, dataset_class):
    module = types.ModuleType("torchvision")
    module.datasets = types.SimpleNamespace(MNIST=dataset_class, FashionMNIST=dataset_class)
    monkeypatch.setitem(sys.modules, "torchvision", module)


def test_download_failure_is_one_clear_line(tmp_path, monkeypatch):
    def offline(root, train, download):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>\nmore")

    fake_torchvision(monkeypatch, offline)
    with pytest.raises(DataError) as excinfo:
        load_dataset("fashion-mnist", data_dir=tmp_path, download=True)
    message = one_line_error(excinfo)
    assert "download failed" in message and "name resolution" in message
    assert str(tmp_path / "FashionMNIST" / "raw") in message


def test_download_writes_torchvisions_layout_then_reads_it(tmp_path, monkeypatch):
    calls = []

    def downloader(root, train, download):
        calls.append(root)
        write_idx_set(tmp_path / "FashionMNIST" / "raw", gz=True, seed=5)

    fake_torchvision(monkeypatch, downloader)
    ds = load_dataset("fashion-mnist", data_dir=tmp_path, download=True)
    assert calls == [str(tmp_path)]
    arrays = write_idx_set(tmp_path / "elsewhere", gz=False, seed=5)
    assert torch.equal(ds.x_train, expected_pixels(arrays["train-images-idx3-ubyte"]))


def test_download_is_skipped_when_the_files_are_there(tmp_path, monkeypatch):
    arrays = write_idx_set(tmp_path / "MNIST" / "raw", gz=False)
    monkeypatch.setitem(sys.modules, "torchvision", None)
    ds = load_dataset("mnist", data_dir=tmp_path, download=True)
    assert ds.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


# --- user files -----------------------------------------------------------------------------


def test_npy_round_trip_values_kept_as_given(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 6)) * 100
    np.save(tmp_path / "x.npy", x)
    ds = load_dataset(str(tmp_path / "x.npy"), seed=2)
    assert ds.name == str(tmp_path / "x.npy") and ds.image_shape is None and ds.y_train is None
    assert (len(ds.x_train), len(ds.x_test)) == (40, 10)
    both = torch.cat([ds.x_train, ds.x_test])
    expected = torch.tensor(x, dtype=torch.float32)
    assert torch.equal(both.sort(0).values, expected.sort(0).values)  # not rescaled
    assert torch.equal(load_dataset(ds.name, seed=2).x_train, ds.x_train)
    assert not torch.equal(load_dataset(ds.name, seed=3).x_train, ds.x_train)


def test_npy_images_are_flattened(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (10, 5, 3)).astype(np.uint8)
    np.save(tmp_path / "img.npy", images)
    ds = load_dataset(tmp_path / "img.npy", test_fraction=0.3)
    assert ds.image_shape == (5, 3) and ds.data_dim == 15
    # uint8 is read as 8-bit images, kept as uint8 (scaled per batch), and says so.
    rows = {r.tobytes() for r in images.reshape(10, 15)}
    assert ds.x_train.dtype == torch.uint8
    assert {r.tobytes() for r in torch.cat([ds.x_train, ds.x_test]).numpy()} == rows
    assert "kept as uint8" in ds.read_as and "(N, H, W)" in ds.read_as


def test_npz_x_and_y_keep_rows_and_labels_together(tmp_path):
    rng = np.random.default_rng(2)
    x, y = rng.random((30, 4)), rng.integers(0, 3, 30)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    ds = load_dataset(tmp_path / "d.npz")
    assert (len(ds.x_train), len(ds.x_test), ds.num_classes) == (24, 6, 3)
    label_of = {row.tobytes(): label for row, label in zip(x.astype(np.float32), y, strict=True)}
    for xs, ys in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        assert [label_of[r.tobytes()] for r in xs.numpy()] == ys.tolist()


def test_npz_with_its_own_split(tmp_path):
    rng = np.random.default_rng(3)
    arrays = {
        "x_train": rng.random((8, 2, 2)),
        "x_test": rng.random((3, 2, 2)),
        "y_train": np.arange(8),
        "y_test": np.array([1, 0, 2]),
    }
    np.savez(tmp_path / "s.npz", **arrays)
    ds = load_dataset(tmp_path / "s.npz")
    assert ds.image_shape == (2, 2)
    assert torch.equal(ds.x_test, torch.tensor(arrays["x_test"].reshape(3, 4), dtype=torch.float32))
    assert ds.y_train.tolist() == list(range(8)) and ds.y_test.tolist() == [1, 0, 2]


def npz_error(tmp_path, **arrays) -> str:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError) as excinfo:
        load_dataset(tmp_path / "bad.npz")
    message = one_line_error(excinfo)
    assert str(tmp_path / "bad.npz") in message
    return message


def test_npz_rejects_bad_contents(tmp_path):
    x = np.zeros((5, 3))
    assert "['data', 'x']" in npz_error(tmp_path, x=x, data=x)
    assert "'x_train' and 'x_test'" in npz_error(tmp_path, x_train=x)
    assert "dtype <U1" in npz_error(tmp_path, x=np.array([["a", "b"]] * 5))
    assert "labels of shape (5,)" in npz_error(tmp_path, x=x, y=np.zeros(4))
    assert "non-negative integers" in npz_error(tmp_path, x=x, y=np.full(5, 0.5))
    assert "shape (2,) but x_test ones (3,)" in npz_error(
        tmp_path, x_train=np.zeros((4, 2)), x_test=x
    )


def test_array_files_reject_nan_object_and_missing(tmp_path):
    x = np.ones((6, 4))
    x[3, 2] = np.nan
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(DataError, match="1 NaN and 0 inf values; the first is at row 3, column 2"):
        load_dataset(tmp_path / "nan.npy")

    np.save(tmp_path / "big.npy", np.full((4, 2), 1e300))  # overflows float32
    with pytest.raises(DataError, match="0 NaN and 8 inf"):
        load_dataset(tmp_path / "big.npy")

    np.save(tmp_path / "obj.npy", np.array([[1, "a"]], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="obj.npy: cannot read"):
        load_dataset(tmp_path / "obj.npy")

    with pytest.raises(DataError, match="file not found") as excinfo:
        load_dataset(tmp_path / "absent.npz")
    one_line_error(excinfo)


# --- check_data -----------------------------------------------------------------------------


def with_nonfinite():
    x = torch.zeros(6, 4)
    x[2, 3] = math.nan
    x[3, 1] = math.inf
    x[4, 0] = math.nan
    return x


@pytest.mark.parametrize(
    "x, kwargs, expected",
    [
        (torch.zeros(0, 64), {}, "x_train: empty data set (shape (0, 64))"),
        (
            torch.zeros(5, 8, 8),
            {"data_dim": 64},
            "x_train: expected data of shape (N, 64); got (N, 8, 8); flatten each example first",
        ),
        (torch.zeros(5, 10), {"data_dim": 64}, "expected data of shape (N, 64); got (N, 10)"),
        (torch.zeros(7), {}, "expected data of shape (N, D); got a 1-D tensor of shape (7,)"),
        (with_nonfinite(), {}, "2 NaN and 1 inf values; the first is at row 2, column 3"),
        (
            torch.tensor([[0.2, -0.5], [2.0, 1.0]]),
            {"support": "unit"},
            "range from -0.5 to 2; for real-valued data choose a likelihood for real values, "
            "e.g. --likelihood gaussian",
        ),
        (torch.zeros(2, 2, dtype=torch.bool), {}, "expected real numbers; got dtype torch.bool"),
    ],
)
def test_check_data_errors(x, kwargs, expected):
    with pytest.raises(DataError) as excinfo:
        check_data(x, **{"support": "real", "name": "x_train", **kwargs})
    assert expected in one_line_error(excinfo)


def test_check_data_accepts_good_data():
    check_data(torch.tensor([[0.0, 1.0], [0.5, 0.25]]), support="unit", data_dim=2)
    check_data(torch.tensor([[-3.0, 1e6]]), support="real")
    check_data(torch.tensor([[0, 1]]), support="unit")  # integers are fine
    with pytest.raises(ValueError, match="support"):
        check_data(torch.zeros(2, 2), support="bernoulli")


# --- binarize -------------------------------------------------------------------------------


@pytest.mark.parametrize("seeded", [True, False], ids=["static", "dynamic"])
def test_binarize_draws_with_probability_x(seeded):
    p = torch.linspace(0, 1, 33)
    torch.manual_seed(0)
    draws = binarize(p.expand(2000, -1), torch.Generator().manual_seed(0) if seeded else None)
    assert set(draws.unique().tolist()) <= {0.0, 1.0} and draws.dtype == torch.float32
    mean = draws.mean(0)
    standard_error = (p * (1 - p) / 2000).sqrt()
    assert torch.all((mean - p).abs() <= 4 * standard_error)  # exact at p = 0 and p = 1
    assert mean[0] == 0 and mean[-1] == 1


def test_binarize_draws_what_torch_bernoulli_draws():
    """On the CPU ``U < x`` reproduces torch.bernoulli's numbers and generator state, so the
    statically binarised data sets of a seed are those of earlier versions."""
    x = torch.rand(300, 64, dtype=torch.float64)
    ours, theirs = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(binarize(x, ours), torch.bernoulli(x, generator=theirs))
    assert torch.equal(torch.rand(5, generator=ours), torch.rand(5, generator=theirs))


def test_binarize_is_reproducible_with_a_seeded_generator():
    x = torch.rand(50, 64, generator=torch.Generator().manual_seed(1))
    a = binarize(x, torch.Generator().manual_seed(7))
    b = binarize(x, torch.Generator().manual_seed(7))
    c = binarize(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
