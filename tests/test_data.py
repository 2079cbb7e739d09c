import gzip
import importlib.util
import os
import pathlib
import sys

import numpy as np
import pytest

from miajax import data
from miajax.data import loaders

FASHION_STEMS = [
  "train-images-idx3-ubyte",
  "train-labels-idx1-ubyte",
  "t10k-images-idx3-ubyte",
  "t10k-labels-idx1-ubyte",
]


# -------------------------------------------------------------------- digits


def test_digits_shapes_range_and_split():
  from sklearn.datasets import load_digits

  ds = data.load("digits")
  assert ds.name == "digits" and ds.num_classes == 10
  assert ds.x_train.shape == (1297, 8, 8, 1) and ds.x_test.shape == (
    500,
    8,
    8,
    1,
  )
  assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
  assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
  # Train + test is exactly scikit-learn's data, each example once.
  ref = load_digits()
  x_all = np.concatenate([ds.x_train, ds.x_test]).reshape(-1, 64) * 16
  y_all = np.concatenate([ds.y_train, ds.y_test])
  key = lambda x, y: sorted(zip(map(bytes, x.astype(np.uint8)), y.tolist()))
  assert key(x_all, y_all) == key(ref.data, ref.target)
  # Stratified: each class's test share is within one example of 500/1797.
  expected = np.bincount(ref.target) * 500 / 1797
  assert np.all(np.abs(np.bincount(ds.y_test, minlength=10) - expected) < 1)
  again = data.load("digits")
  np.testing.assert_array_equal(again.y_test, ds.y_test)
  np.testing.assert_array_equal(again.x_train, ds.x_train)


def test_digits_read_directly_equal_scikit_learns_loader(monkeypatch):
  from sklearn.datasets import load_digits

  ref = load_digits()
  pixels, labels = loaders._digits_arrays()
  np.testing.assert_array_equal(
    pixels, ref.data
  )  # same order: the split depends on it
  np.testing.assert_array_equal(labels, ref.target)
  # Where the file cannot be found, scikit-learn's loader gives the same dataset.
  fast = data.load("digits")
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
  slow = data.load("digits")
  np.testing.assert_array_equal(fast.x_train, slow.x_train)
  np.testing.assert_array_equal(fast.y_test, slow.y_test)


def test_subset_first_and_random():
  ds = data.load("digits")
  first = data.subset(ds, 100)
  np.testing.assert_array_equal(first.x_train, ds.x_train[:100])
  np.testing.assert_array_equal(first.y_train, ds.y_train[:100])
  assert first.x_test is ds.x_test
  rand = data.subset(ds, 100, seed=1)
  assert rand.x_train.shape == (100, 8, 8, 1)
  assert not np.array_equal(rand.y_train, first.y_train)
  np.testing.assert_array_equal(
    rand.y_train, data.subset(ds, 100, seed=1).y_train
  )
  with pytest.raises(ValueError, match="num_examples"):
    data.subset(ds, 1298)
  with pytest.raises(ValueError, match="num_examples"):
    data.subset(ds, 0)
  with pytest.raises(TypeError, match="num_examples"):
    data.subset(ds, 10.0)


def test_unknown_name():
  with pytest.raises(ValueError, match="unknown dataset 'imagenet'.*digits"):
    data.load("imagenet")


# ---------------------------------------------------------------------- TFDS


@pytest.fixture
def mock_tfds(monkeypatch):
  import tensorflow_datasets as tfds
  from tensorflow_datasets.testing import mocking

  # tfds 4.9.10's mock sets `__getitems__` on a MagicMock, which (unlike
  # __getitem__) is not bound, so its `self` argument goes missing. Accept
  # both call forms so a fixed tfds keeps working.
  def getitems(*args, generator, serialized=False):
    assert not serialized
    return [generator[k] for k in args[-1]]

  monkeypatch.setattr(mocking, "_getitems", getitems)
  return tfds


@pytest.mark.parametrize(
  "name,shape,classes",
  [
    ("cifar10", (32, 32, 3), 10),
    ("mnist", (28, 28, 1), 10),
    ("cifar100", (32, 32, 3), 100),
  ],
)
def test_tfds_data_source_under_mock(mock_tfds, tmp_path, name, shape, classes):
  with mock_tfds.testing.mock_data(num_examples=11):
    ds = data.load(name, data_dir=tmp_path)
    raw = mock_tfds.data_source(name, split="train", data_dir=tmp_path)
    raw_x = np.stack([raw[i]["image"] for i in range(len(raw))])
    raw_y = np.array([raw[i]["label"] for i in range(len(raw))])
  assert ds.name == name and ds.num_classes == classes
  assert ds.x_train.shape == (11, *shape) and ds.x_test.shape == (11, *shape)
  assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
  assert ds.x_train.min() >= -1.0 and ds.x_train.max() <= 1.0
  np.testing.assert_allclose(
    ds.x_train, raw_x.astype(np.float64) / 127.5 - 1, atol=1e-6
  )
  np.testing.assert_array_equal(ds.y_train, raw_y)
  assert ((0 <= ds.y_test) & (ds.y_test < classes)).all()
  # No TensorFlow anywhere on the data_source path.
  assert "tensorflow" not in sys.modules


def test_tfds_chunked_read_matches_single_read(mock_tfds, tmp_path):
  with mock_tfds.testing.mock_data(num_examples=10):
    src = mock_tfds.data_source("mnist", split="train", data_dir=tmp_path)
    x_chunked, y_chunked = loaders._read_source(src, chunk=3)
    x_one, y_one = loaders._read_source(src, chunk=100)
  np.testing.assert_array_equal(x_chunked, x_one)
  np.testing.assert_array_equal(y_chunked, y_one)
  assert x_one.shape == (10, 28, 28, 1)


def test_tfds_missing_data_says_how_to_prepare(tmp_path):
  with pytest.raises(ValueError) as info:
    data.load("cifar10", data_dir=tmp_path)
  msg = str(info.value)
  assert (
    str(tmp_path) in msg
    and "tfds build cifar10 --file_format=array_record" in msg
  )
  assert not any(tmp_path.iterdir())  # looking must not create anything


# ----------------------------------------------------------------------- npz


def _write_npz(path, rng, n=203, d=12, classes=30, **extra):
  x = rng.normal(size=(n, d)).astype(np.float32)
  y = np.arange(n) % classes
  np.savez(path, x=x, y=y, **extra)
  return x, y


def test_npz_fixed_split(tmp_path):
  rng = np.random.default_rng(0)
  x, y = _write_npz(tmp_path / "location30.npz", rng)
  ds = data.load("location30", data_dir=tmp_path)
  assert ds.num_classes == 30 and ds.name == "location30"
  assert ds.x_test.shape == (203 // 5, 12) and ds.x_train.shape == (
    203 - 203 // 5,
    12,
  )
  assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
  # The split is a partition of the rows, labels travel with their rows.
  rows = {r.tobytes(): lab for r, lab in zip(x, y)}
  got = list(
    zip(
      np.concatenate([ds.x_train, ds.x_test]),
      np.concatenate([ds.y_train, ds.y_test]),
    )
  )
  assert len(got) == len(rows) and all(
    rows[r.tobytes()] == lab for r, lab in got
  )
  again = data.load("location30", data_dir=tmp_path)
  np.testing.assert_array_equal(again.x_test, ds.x_test)


def test_npz_explicit_test_arrays(tmp_path):
  rng = np.random.default_rng(1)
  x_test = rng.normal(size=(7, 5)).astype(np.float32)
  x, y = _write_npz(
    tmp_path / "purchase100.npz",
    rng,
    n=40,
    d=5,
    classes=100,
    x_test=x_test,
    y_test=np.arange(7),
  )
  ds = data.load("purchase100", data_dir=str(tmp_path))
  np.testing.assert_array_equal(ds.x_train, x)
  np.testing.assert_array_equal(ds.y_train, y)
  np.testing.assert_array_equal(ds.x_test, x_test)
  assert ds.num_classes == 100


def test_npz_missing_file_message(tmp_path):
  with pytest.raises(ValueError) as info:
    data.load("texas100", data_dir=tmp_path)
  msg = str(info.value)
  assert (
    str(tmp_path / "texas100.npz") in msg
    and "x float32" in msg
    and "y int" in msg
  )
  with pytest.raises(ValueError, match="data_dir"):
    data.load("texas100")


@pytest.mark.parametrize(
  "arrays,match",
  [
    (
      dict(x=np.zeros((4, 3), np.float32), y=np.arange(1, 5)),
      r"\[1, 4\].*\[0, 2\]",
    ),
    (
      dict(x=np.full((4, 3), np.nan, np.float32), y=np.zeros(4, int)),
      "non-finite",
    ),
    (dict(features=np.zeros((4, 3)), y=np.zeros(4, int)), "'x' and 'y'"),
    (dict(x=np.zeros((4, 3)), y=np.zeros(4)), "int"),
    (dict(x=np.zeros((4, 3)), y=np.zeros(3, int)), "4 rows"),
    (
      dict(x=np.zeros((4, 3)), y=np.zeros(4, int), x_test=np.zeros((1, 3))),
      "both",
    ),
  ],
)
def test_npz_bad_contents(tmp_path, monkeypatch, arrays, match):
  monkeypatch.setitem(loaders._NPZ_CLASSES, "location30", 3)
  path = tmp_path / "location30.npz"
  np.savez(path, **arrays)
  with pytest.raises(ValueError, match=match) as info:
    data.load("location30", data_dir=tmp_path)
  assert str(path) in str(info.value)


# ----------------------------------------------------------------------- IDX


def _idx_bytes(array, magic=None):
  array = np.asarray(array, np.uint8)
  magic = (0x0800 | array.ndim) if magic is None else magic
  head = magic.to_bytes(4, "big") + b"".join(
    d.to_bytes(4, "big") for d in array.shape
  )
  return head + array.tobytes()


def _write_fashion(
  directory, rng, n_train=20, n_test=8, gz=True, overrides=None
):
  arrays = {
    "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
    "train-labels-idx1-ubyte": np.arange(n_train) % 10,
    "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
    "t10k-labels-idx1-ubyte": np.arange(n_test)[::-1] % 10,
  }
  contents = {stem: _idx_bytes(a) for stem, a in arrays.items()}
  contents.update(overrides or {})
  for stem, raw in contents.items():
    if gz:
      (directory / f"{stem}.gz").write_bytes(gzip.compress(raw))
    else:
      (directory / stem).write_bytes(raw)
  return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_fashion_mnist_from_data_dir(tmp_path, gz):
  arrays = _write_fashion(tmp_path, np.random.default_rng(0), gz=gz)
  ds = data.load("fashion_mnist", data_dir=tmp_path)
  assert ds.x_train.shape == (20, 28, 28, 1) and ds.x_test.shape == (
    8,
    28,
    28,
    1,
  )
  assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
  expected = arrays["train-images-idx3-ubyte"].astype(np.float64) / 127.5 - 1
  np.testing.assert_allclose(ds.x_train[..., 0], expected, atol=1e-6)
  np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte"])
  assert (
    ds.x_train.min() >= -1 and ds.x_train.max() <= 1 and ds.num_classes == 10
  )


def _corrupt_cases():
  img = _idx_bytes(np.zeros((20, 28, 28)))
  lab = _idx_bytes(np.arange(20) % 10)
  return {
    "truncated": ("train-images-idx3-ubyte", img[:-100], "truncated"),
    "short header": ("train-images-idx3-ubyte", img[:10], "header"),
    "trailing bytes": (
      "train-labels-idx1-ubyte",
      lab + b"\x00",
      "truncated or corrupt",
    ),
    "wrong magic": (
      "train-images-idx3-ubyte",
      _idx_bytes(np.zeros((20, 28, 28)), 0x0802),
      "magic number 0x00000802, expected 0x00000803",
    ),
    "labels as images": ("train-labels-idx1-ubyte", img, "magic"),
    "label out of range": (
      "train-labels-idx1-ubyte",
      _idx_bytes(np.full(20, 10)),
      "label 10 out of range",
    ),
    "count mismatch": (
      "train-labels-idx1-ubyte",
      _idx_bytes(np.zeros(19)),
      "19 labels",
    ),
    "wrong image size": (
      "train-images-idx3-ubyte",
      _idx_bytes(np.zeros((20, 27, 28))),
      r"\(28, 28\)",
    ),
  }


@pytest.mark.parametrize("case", sorted(_corrupt_cases()))
def test_idx_corrupt_files_name_the_file(tmp_path, case):
  stem, raw, match = _corrupt_cases()[case]
  _write_fashion(tmp_path, np.random.default_rng(0), overrides={stem: raw})
  with pytest.raises(ValueError, match=match) as info:
    data.load("fashion_mnist", data_dir=tmp_path)
  assert str(tmp_path / f"{stem}.gz") in str(info.value)


def test_idx_truncated_gzip_stream(tmp_path):
  _write_fashion(tmp_path, np.random.default_rng(0))
  path = tmp_path / "t10k-images-idx3-ubyte.gz"
  path.write_bytes(path.read_bytes()[:-50])
  with pytest.raises(ValueError, match="gzip") as info:
    data.load("fashion_mnist", data_dir=tmp_path)
  assert str(path) in str(info.value)


def test_idx_partial_directory_is_an_error(tmp_path):
  _write_fashion(tmp_path, np.random.default_rng(0))
  (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
  with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte"):
    data.load("fashion_mnist", data_dir=tmp_path)


def test_read_idx_direct(tmp_path):
  path = tmp_path / "x.idx"
  path.write_bytes(_idx_bytes(np.arange(24).reshape(2, 3, 4)))
  np.testing.assert_array_equal(
    data.read_idx(path, ndim=3), np.arange(24).reshape(2, 3, 4)
  )


def test_fashion_mnist_search_order_and_missing_message(tmp_path, monkeypatch):
  debian = tmp_path / "debian"
  debian.mkdir()
  _write_fashion(debian, np.random.default_rng(1), n_train=10, n_test=3)
  monkeypatch.setattr(loaders, "DEBIAN_FASHION_MNIST_DIR", str(debian))
  own = tmp_path / "own"
  own.mkdir()
  # An empty data_dir falls through to the Debian directory ...
  assert data.load("fashion_mnist", data_dir=own).x_train.shape[0] == 10
  # ... and files in data_dir take precedence.
  _write_fashion(own, np.random.default_rng(2), n_train=12, n_test=3)
  assert data.load("fashion_mnist", data_dir=own).x_train.shape[0] == 12

  empty = tmp_path / "empty"
  empty.mkdir()
  monkeypatch.setattr(
    loaders, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "nowhere")
  )
  with pytest.raises(ValueError) as info:
    data.load("fashion_mnist", data_dir=empty)
  msg = str(info.value)
  assert "apt-get install dataset-fashion-mnist" in msg
  assert str(empty) in msg and str(tmp_path / "nowhere") in msg
  assert "train-images-idx3-ubyte.gz" in msg


def test_fashion_mnist_real_files():
  directory = pathlib.Path(data.DEBIAN_FASHION_MNIST_DIR)
  present = all((directory / f"{s}.gz").is_file() for s in FASHION_STEMS)
  if not present and os.environ.get("CI") != "true":
    pytest.skip(
      f"{directory} not installed (apt-get install dataset-fashion-mnist)"
    )
  ds = data.load("fashion_mnist")
  assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (
    10000,
    28,
    28,
    1,
  )
  assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
  np.testing.assert_array_equal(np.bincount(ds.y_train), np.full(10, 6000))
  np.testing.assert_array_equal(np.bincount(ds.y_test), np.full(10, 1000))
  assert ds.x_train.min() == -1.0 and ds.x_train.max() == 1.0
