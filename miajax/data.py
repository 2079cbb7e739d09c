"""Datasets for membership-inference experiments, and the membership designs.

``load(name, data_dir=None)`` returns a :class:`Dataset` of numpy arrays:
images are float32 NHWC ``[N, H, W, C]``, tabular data float32 ``[N, features]``,
labels int32 ``[N]``.

=================  ==========================================================
name               source
=================  ==========================================================
``digits``         scikit-learn's bundled ``load_digits`` (offline, the default):
                   1,797 8x8 images scaled to [0, 1], ``[N, 8, 8, 1]``; a fixed
                   stratified split (seed 0) into 1,297 train / 500 test.
``fashion_mnist``  the four IDX files (``train-images-idx3-ubyte.gz``,
                   ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``,
                   ``t10k-labels-idx1-ubyte.gz``; gzipped or not) searched in
                   ``data_dir``, then in ``/usr/share/datasets/fashion-mnist``
                   (Debian/Ubuntu: ``apt-get install dataset-fashion-mnist``),
                   then TFDS as below. 60,000 / 10,000 images ``[N, 28, 28, 1]``.
``mnist``,         ``tfds.data_source(name, data_dir=data_dir)``: reads data
``cifar10``,       already prepared in ArrayRecord format; TensorFlow is not
``cifar100``       imported. Preparing it needs TensorFlow and internet, so do it
                   elsewhere and copy the directory:
                   ``pip install tensorflow tensorflow-datasets &&
                   tfds build cifar10 --file_format=array_record --data_dir=DIR``.
``purchase100``,   ``<data_dir>/<name>.npz`` with arrays ``x`` float32
``texas100``,      ``[N, features]`` and ``y`` int ``[N]`` (labels 0..C-1), and
``location30``     optionally ``x_test``, ``y_test``; without them a fixed
                   stratified split (seed 0) holds out ``N // 5`` examples.
=================  ==========================================================

All image sets except ``digits`` are scaled to [-1, 1] (``u8 / 127.5 - 1``).

Converting the commonly distributed tabular files (labels there are 1-based;
the loader rejects labels outside 0..C-1, so a forgotten ``-1`` is caught)::

    # Purchase100 (Shokri et al.): CSV, label first, 600 binary features
    python -c "import numpy as np; d=np.loadtxt('dataset_purchase', delimiter=','); np.savez('purchase100.npz', x=d[:,1:].astype('float32'), y=d[:,0].astype(int)-1)"
    # Texas100: features and labels in two files
    python -c "import numpy as np; x=np.loadtxt('texas/100/feats', delimiter=','); y=np.loadtxt('texas/100/labels'); np.savez('texas100.npz', x=x.astype('float32'), y=y.astype(int)-1)"
    # Location30 ('bangkok'): CSV, label first, 446 binary features
    python -c "import numpy as np; d=np.loadtxt('bangkok', delimiter=','); np.savez('location30.npz', x=d[:,1:].astype('float32'), y=d[:,0].astype(int)-1)"
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import numbers
import os
import pathlib

import numpy as np

from miajax.designs import SPLIT_NAMES, disjoint_split, lira_keep, paired_keep

__all__ = [
  "Dataset",
  "load",
  "subset",
  "read_idx",
  "DATASETS",
  "lira_keep",
  "paired_keep",
  "disjoint_split",
  "SPLIT_NAMES",
]

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

_FASHION_FILES = {
  "x_train": "train-images-idx3-ubyte",
  "y_train": "train-labels-idx1-ubyte",
  "x_test": "t10k-images-idx3-ubyte",
  "y_test": "t10k-labels-idx1-ubyte",
}


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A train/test split held in host memory.

  Attributes:
    x_train: ``float32[train, ...]`` (images NHWC, tabular ``[train, features]``).
    y_train: ``int32[train]`` in ``[0, num_classes)``.
    x_test: ``float32[test, ...]``.
    y_test: ``int32[test]``.
    num_classes: number of classes.
    name: dataset name.
  """

  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  name: str

  def __post_init__(self):
    for split in ("train", "test"):
      x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
      if x.dtype != np.float32 or y.dtype != np.int32:
        raise TypeError(
          f"{self.name}: x_{split} must be float32 and y_{split} int32, "
          f"got {x.dtype} and {y.dtype}"
        )
      if y.ndim != 1 or len(x) != len(y):
        raise ValueError(
          f"{self.name}: x_{split} {x.shape} and y_{split} {y.shape} "
          "do not describe the same examples"
        )
    if self.x_train.shape[1:] != self.x_test.shape[1:]:
      raise ValueError(
        f"{self.name}: train inputs {self.x_train.shape[1:]} and test "
        f"inputs {self.x_test.shape[1:]} differ in shape"
      )

  def __repr__(self):
    return (
      f"Dataset(name={self.name!r}, num_classes={self.num_classes}, "
      f"x_train={self.x_train.shape}, x_test={self.x_test.shape})"
    )


def subset(
  ds: Dataset, num_examples: int, *, seed: int | None = None
) -> Dataset:
  """Keep ``num_examples`` training examples; the test set is unchanged.

  Args:
    ds: the dataset.
    num_examples: 1 <= num_examples <= ``len(ds.x_train)``.
    seed: None takes the first ``num_examples``; an int draws them uniformly
      without replacement (indices kept in ascending order).

  Returns:
    A Dataset whose ``x_train`` is ``[num_examples, ...]``.
  """
  n = len(ds.x_train)
  if isinstance(num_examples, bool) or not isinstance(
    num_examples, numbers.Integral
  ):
    raise TypeError(
      f"num_examples must be an int, got {type(num_examples).__name__}"
    )
  if not 1 <= num_examples <= n:
    raise ValueError(
      f"num_examples must be in [1, {n}] for {ds.name}, got {num_examples}"
    )
  if seed is None:
    idx = np.arange(num_examples)
  else:
    idx = np.sort(
      np.random.default_rng(seed).choice(n, num_examples, replace=False)
    )
  return dataclasses.replace(
    ds, x_train=ds.x_train[idx], y_train=ds.y_train[idx]
  )


def load(name: str, *, data_dir: str | os.PathLike | None = None) -> Dataset:
  """Load a dataset by name (see the module docstring for sources and formats).

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
    ds = _load_npz(name, data_dir)
  for split in ("train", "test"):
    x = getattr(ds, f"x_{split}")
    if not np.isfinite(x).all():
      raise ValueError(f"{name}: x_{split} holds non-finite values")
  return ds


def _stratified_split(
  y: np.ndarray, num_test: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
  """Exactly ``num_test`` test indices, each class getting its share +-1."""
  order = np.random.RandomState(seed).permutation(len(y))
  order = order[np.argsort(y[order], kind="stable")]
  # Evenly spaced positions along the class-sorted list cut every class
  # block proportionally, and the total is exact.
  pos = np.arange(len(y))
  is_test = (pos + 1) * num_test // len(y) > pos * num_test // len(y)
  return np.sort(order[~is_test]), np.sort(order[is_test])


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


def _scale_images(u8: np.ndarray) -> np.ndarray:
  return u8.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


# ----------------------------------------------------------------- IDX files


def _read_bytes(path: pathlib.Path) -> bytes:
  try:
    raw = path.read_bytes()
  except OSError as err:
    raise ValueError(f"{path}: cannot read ({err})") from err
  if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
    try:
      raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as err:
      raise ValueError(
        f"{path}: gzip data is truncated or corrupt ({err})"
      ) from err
  return raw


def read_idx(path: str | os.PathLike, *, ndim: int) -> np.ndarray:
  """Read an unsigned-byte IDX file (gzipped or not) with numpy alone.

  Args:
    path: the file.
    ndim: 3 for images (magic 0x00000803), 1 for labels (0x00000801).

  Returns:
    ``uint8`` array of the shape the header declares.

  Raises:
    ValueError naming the file: wrong magic number, short header, or a data
    size different from the product of the declared dimensions.
  """
  path = pathlib.Path(path)
  raw = _read_bytes(path)
  expected_magic = 0x0800 | ndim
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise ValueError(
      f"{path}: {len(raw)} bytes, shorter than the {header}-byte IDX header"
    )
  magic = int.from_bytes(raw[:4], "big")
  if magic != expected_magic:
    raise ValueError(
      f"{path}: IDX magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
      f"(unsigned bytes, {ndim} dimension{'s' if ndim > 1 else ''})"
    )
  dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
  size = int(np.prod(dims, dtype=np.int64))
  if len(raw) - header != size:
    raise ValueError(
      f"{path}: header declares shape {dims} = {size} bytes of data but the "
      f"file holds {len(raw) - header} (truncated or corrupt)"
    )
  return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _find_idx_files(directory: pathlib.Path) -> dict[str, pathlib.Path] | None:
  """The four Fashion-MNIST files in ``directory``, None if there are none.

  A directory holding only some of them is an error rather than a miss, so a
  half-copied data_dir is not silently replaced by another source.
  """
  found = {}
  for key, stem in _FASHION_FILES.items():
    for candidate in (directory / f"{stem}.gz", directory / stem):
      if candidate.is_file():
        found[key] = candidate
        break
  if not found:
    return None
  if len(found) < len(_FASHION_FILES):
    missing = [
      _FASHION_FILES[k] + "[.gz]" for k in _FASHION_FILES if k not in found
    ]
    raise ValueError(
      f"fashion_mnist: {directory} holds some IDX files but lacks {missing}"
    )
  return found


def _load_idx_pair(
  images_path: pathlib.Path,
  labels_path: pathlib.Path,
  num_classes: int,
  image_shape: tuple[int, int],
):
  images = read_idx(images_path, ndim=3)
  labels = read_idx(labels_path, ndim=1)
  if images.shape[1:] != image_shape:
    raise ValueError(
      f"{images_path}: images are {images.shape[1:]}, expected {image_shape}"
    )
  if len(images) != len(labels):
    raise ValueError(
      f"{labels_path}: {len(labels)} labels for the {len(images)} images "
      f"of {images_path}"
    )
  if len(labels) and labels.max() >= num_classes:
    raise ValueError(
      f"{labels_path}: label {int(labels.max())} out of range "
      f"[0, {num_classes - 1}]"
    )
  return _scale_images(images)[..., None], labels.astype(np.int32)


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


# ----------------------------------------------------------------------- npz


def _load_npz(name: str, data_dir) -> Dataset:
  num_classes = _NPZ_CLASSES[name]
  recipe = "see the recipes in the miajax.data module docstring"
  if data_dir is None:
    raise ValueError(
      f"{name}: pass data_dir, the directory holding {name}.npz "
      f"(arrays x float32 [N, features], y int [N]); {recipe}"
    )
  path = pathlib.Path(data_dir) / f"{name}.npz"
  if not path.is_file():
    raise ValueError(
      f"{name}: {path} not found. Create it with arrays x float32 "
      f"[N, features] and y int [N] in 0..{num_classes - 1}; {recipe}"
    )
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
  except (OSError, ValueError, EOFError) as err:
    raise ValueError(f"{path}: not a readable npz file ({err})") from err
  if "x" not in arrays or "y" not in arrays:
    raise ValueError(
      f"{path}: needs arrays 'x' and 'y', found {sorted(arrays)}"
    )
  if ("x_test" in arrays) != ("y_test" in arrays):
    raise ValueError(f"{path}: give both x_test and y_test or neither")

  def check(x_key, y_key):
    x, y = arrays[x_key], arrays[y_key]
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
      raise ValueError(
        f"{path}: {x_key} must be numeric [N, features], "
        f"got {x.dtype} {x.shape}"
      )
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
      raise ValueError(
        f"{path}: {y_key} must be int [N], got {y.dtype} {y.shape} "
        "(convert with .astype(int))"
      )
    if len(x) != len(y):
      raise ValueError(
        f"{path}: {x_key} has {len(x)} rows, {y_key} {len(y)} labels"
      )
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
      raise ValueError(
        f"{path}: {y_key} spans [{y.min()}, {y.max()}], expected "
        f"[0, {num_classes - 1}] (1-based labels need -1)"
      )
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
      raise ValueError(f"{path}: {x_key} holds non-finite values")
    return x, y.astype(np.int32)

  x, y = check("x", "y")
  if "x_test" in arrays:
    x_test, y_test = check("x_test", "y_test")
    return Dataset(x, y, x_test, y_test, num_classes=num_classes, name=name)
  train, test = _stratified_split(y, len(y) // 5, seed=0)
  return Dataset(
    x[train], y[train], x[test], y[test], num_classes=num_classes, name=name
  )
