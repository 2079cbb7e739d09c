"""``load(name)``: where each dataset comes from (see :mod:`miajax.data`)."""

from __future__ import annotations

import importlib.util
import os
import pathlib

import numpy as np

from miajax.data.dataset import Dataset, _scale_images, _stratified_split
from miajax.data.formats import (
  _FASHION_FILES,
  _find_idx_files,
  _load_idx_pair,
  _load_npz,
)

__all__ = ["load", "DATASETS", "DEBIAN_FASHION_MNIST_DIR"]

DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

_TFDS_CLASSES = {
  "mnist": 10,
  "fashion_mnist": 10,
  "cifar10": 10,
  "cifar100": 100,
}
_NPZ_CLASSES = {"purchase100": 100, "texas100": 100, "location30": 30}
DATASETS = (
  "digits",
  "fashion_mnist",
  *[k for k in _TFDS_CLASSES if k != "fashion_mnist"],
  *_NPZ_CLASSES,
)


def load(name: str, *, data_dir: str | os.PathLike | None = None) -> Dataset:
  """Load a dataset by name (see :mod:`miajax.data` for sources and formats).

  Args:
    name: one of ``DATASETS``.
    data_dir: where to look for files (IDX, npz, or a TFDS data directory).

  Returns:
    A :class:`Dataset`.

  Raises:
    ValueError: unknown name, missing or malformed files, non-finite inputs.
  """
  if not isinstance(name, str) or name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
  if name == "digits":
    ds = _load_digits()
  elif name == "fashion_mnist":
    ds = _load_fashion_mnist(data_dir)
  elif name in _TFDS_CLASSES:
    ds = _load_tfds(name, data_dir)
  else:
    ds = _load_npz(name, data_dir, _NPZ_CLASSES[name])
  for split in ("train", "test"):
    x = getattr(ds, f"x_{split}")
    if not np.isfinite(x).all():
      raise ValueError(f"{name}: x_{split} holds non-finite values")
  return ds


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's bundled digits: pixels ``float64[1797, 64]`` in 0..16, labels ``int[1797]``.

  Read from the CSV that scikit-learn ships (``datasets/data/digits.csv.gz``:
  64 pixel columns, then the label), found without importing scikit-learn,
  whose import takes ~1.5 s, longer than the rest of a digits run's start.
  ``load_digits`` reads the same file; it is the fallback if the file moved.
  """
  spec = importlib.util.find_spec("sklearn")
  if spec is not None and spec.origin:
    path = (
      pathlib.Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    )
    if path.is_file():
      table = np.loadtxt(path, delimiter=",")
      if table.shape == (1797, 65):
        return table[:, :-1], table[:, -1].astype(np.int64)
  from sklearn.datasets import load_digits

  bunch = load_digits()
  return bunch.data, bunch.target


def _load_digits() -> Dataset:
  pixels, labels = _digits_arrays()
  x = (pixels.astype(np.float32) / 16.0).reshape(-1, 8, 8, 1)
  y = labels.astype(np.int32)
  train, test = _stratified_split(y, 500, seed=0)
  return Dataset(
    x[train], y[train], x[test], y[test], num_classes=10, name="digits"
  )


# ----------------------------------------------------------- Fashion-MNIST


def _load_fashion_mnist(data_dir) -> Dataset:
  searched = []
  for directory in ([data_dir] if data_dir is not None else []) + [
    DEBIAN_FASHION_MNIST_DIR
  ]:
    directory = pathlib.Path(directory)
    searched.append(str(directory))
    files = _find_idx_files(directory) if directory.is_dir() else None
    if files is not None:
      x_train, y_train = _load_idx_pair(
        files["x_train"], files["y_train"], 10, (28, 28)
      )
      x_test, y_test = _load_idx_pair(
        files["x_test"], files["y_test"], 10, (28, 28)
      )
      return Dataset(
        x_train, y_train, x_test, y_test, num_classes=10, name="fashion_mnist"
      )
  try:
    return _load_tfds("fashion_mnist", data_dir)
  except ValueError as err:
    raise ValueError(
      f"fashion_mnist not found: no IDX files in {' or '.join(searched)}. Install Debian's "
      f"package (`apt-get install dataset-fashion-mnist`) or put "
      f"{', '.join(s + '.gz' for s in _FASHION_FILES.values())} in data_dir. "
      f"TFDS fallback: {_tfds_hint('fashion_mnist', data_dir)}."
    ) from err


# ---------------------------------------------------------------------- TFDS


def _read_source(source, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
  """All (image, label) pairs of a TFDS data source, read in batches."""
  n = len(source)
  images, labels = [], []
  # Batched reads let ArrayRecord fetch records in parallel; decoding is
  # per example inside TFDS either way.
  for start in range(0, n, chunk):
    keys = list(range(start, min(start + chunk, n)))
    batch = (
      source.__getitems__(keys)
      if hasattr(source, "__getitems__")
      else [source[k] for k in keys]
    )
    images.extend(ex["image"] for ex in batch)
    labels.extend(ex["label"] for ex in batch)
  return np.stack(images), np.asarray(labels)


def _tfds_hint(name: str, data_dir) -> str:
  where = (
    data_dir
    if data_dir is not None
    else "TFDS's default data dir (TFDS_DATA_DIR or ~/tensorflow_datasets)"
  )
  return (
    f"no TFDS data prepared in ArrayRecord format under {where}. Prepare it on a machine "
    f"with internet and TensorFlow (`pip install tensorflow tensorflow-datasets && "
    f"tfds build {name} --file_format=array_record --data_dir=DIR`), copy DIR here "
    f"and pass data_dir=DIR"
  )


def _load_tfds(name: str, data_dir) -> Dataset:
  # Imported here so that `import miajax.data` stays cheap for digits/npz users.
  import tensorflow_datasets as tfds

  try:
    train_src, test_src = tfds.data_source(
      name, split=["train", "test"], data_dir=data_dir, download=False
    )
  except Exception as err:  # noqa: BLE001 -- tfds raises many types for "not prepared"
    raise ValueError(f"{name}: {_tfds_hint(name, data_dir)}") from err
  num_classes = _TFDS_CLASSES[name]
  arrays = []
  for split, src in (("train", train_src), ("test", test_src)):
    images, labels = _read_source(src)
    if images.dtype != np.uint8 or images.ndim != 4:
      raise ValueError(
        f"{name}/{split}: expected uint8 images [N, H, W, C], "
        f"got {images.dtype} {images.shape}"
      )
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
      raise ValueError(f"{name}/{split}: labels outside [0, {num_classes - 1}]")
    arrays += [_scale_images(images), labels.astype(np.int32)]
  return Dataset(*arrays, num_classes=num_classes, name=name)
